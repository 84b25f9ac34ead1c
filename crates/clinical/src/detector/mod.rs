//! Crisis-language detection in free text (journal entries, check-in notes).
//!
//! [`detect`] finds the C-SSRS ideation and behaviour levels (wish to be dead, active
//! thoughts, method, intent, plan, preparatory behaviour, attempt), self-injury, harm to
//! others, not being able to stay safe, and entrapment or burden, in English and Spanish, and
//! returns a [`TextRiskLevel`] with the evidence spans that justify it. What counts is
//! decided by a reviewed data file, `crates/clinical/data/crisis_vocabulary.toml`, compiled
//! into the build; this module holds only the mechanics: tokenizing, matching, and the
//! rules that suppress a match (negation, someone else's words, idioms) or lower it
//! (resolved past). Everything is documented beside the vocabulary it reads.
//!
//! A learned stage reads the text after the vocabulary (a linear model over word and
//! character n-grams and the vocabulary's own reading, `data/detector_model.bin`, trained
//! by `scripts/train-detector`; see [`LearnedModel`]). It catches phrasings the vocabulary
//! does not hold, and it may only add: one finding at moderate, marked `learned`, on a text
//! the vocabulary left below moderate, never on a sentence whose match the vocabulary set
//! aside as negated, reported or an idiom. [`Vocabulary::detect_vocabulary_only`] reads
//! without it.
//!
//! The detector only ever raises risk. Callers take the highest of its level and any
//! structured trigger (PHQ-9 item 9, C-SSRS); a `None` here never lowers those (DESIGN.md,
//! clinical facts: free text). It is a screen for a human to read, not a diagnosis: it
//! misses what its vocabulary does not say and it reports spans so a clinician can judge.
//!
//! ```
//! use tandem_clinical::{Category, TextRiskLevel, detect};
//!
//! let text = "i want to kill myself tonight";
//! let detection = detect(text);
//! assert_eq!(detection.level, TextRiskLevel::Imminent);
//! let ideation = detection.findings.iter().find(|f| f.category == Category::ActiveThoughts).unwrap();
//! assert_eq!(&text[ideation.span.clone()], "kill myself");
//!
//! assert_eq!(detect("I'm not going to hurt myself").level, TextRiskLevel::None);
//! assert_eq!(detect("this homework is killing me").level, TextRiskLevel::None);
//! assert_eq!(detect("ya compré la soga").level, TextRiskLevel::High);
//! ```

mod analysis;
mod learned;
mod pattern;
mod text;
mod vocabulary;

use std::fmt;
use std::ops::Range;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

pub use learned::{
    BUCKETS as MODEL_BUCKETS, CLASSES as MODEL_CLASSES, CRISIS_CLASSES as MODEL_CRISIS_CLASSES, LearnedModel,
    Passage as ModelPassage, Prediction, Reading as ModelReading, features as model_features,
};
pub use vocabulary::Vocabulary;

/// How urgent what the text says is, lowest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TextRiskLevel {
    /// Nothing found.
    #[default]
    None,
    /// Worth a clinician's eye, not an alert: a bare mention, a resolved past, distress.
    Low,
    /// Passive ideation ("wish I were dead"), entrapment or burden, self-injury named.
    /// The lowest level that is a crisis: check-ins answer it with the safety response.
    Moderate,
    /// Active ideation, a method thought through, preparatory acts, a recent attempt,
    /// self-injury acts or urges, harm to others, not being able to stay safe.
    High,
    /// Intent, a plan, an attempt in progress, or ideation with a plan, means or a
    /// timeframe: act now.
    Imminent,
}

impl TextRiskLevel {
    /// Every level, lowest first.
    pub const ALL: [Self; 5] = [Self::None, Self::Low, Self::Moderate, Self::High, Self::Imminent];

    /// Stable lowercase name: `none`, `low`, `moderate`, `high` or `imminent`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Low => "low",
            Self::Moderate => "moderate",
            Self::High => "high",
            Self::Imminent => "imminent",
        }
    }
}

impl fmt::Display for TextRiskLevel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A name that is not a [`TextRiskLevel`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown risk level `{0}`: one of none, low, moderate, high, imminent")]
pub struct UnknownLevel(String);

impl FromStr for TextRiskLevel {
    type Err = UnknownLevel;

    fn from_str(name: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|level| level.as_str().eq_ignore_ascii_case(name.trim()))
            .ok_or_else(|| UnknownLevel(name.to_owned()))
    }
}

/// What kind of risk a finding is about: the C-SSRS ideation and behaviour levels, then
/// non-suicidal self-injury, harm to others, and the 988 Lifeline / AAS warning signs
/// (`crates/clinical/data/eval/CATEGORIES.md` defines each).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Category {
    /// Wish to be dead, not to wake up, not to exist (C-SSRS 1, passive ideation).
    WishDead,
    /// Thoughts of killing oneself without a method, plan or intent named (C-SSRS 2).
    ActiveThoughts,
    /// Having thought about, imagined or looked up how (C-SSRS 3).
    Method,
    /// Saying they will act, have decided, or will if something happens (C-SSRS 4), or a
    /// timeframe ("tonight") beside ideation.
    Intent,
    /// When, where or how worked out (C-SSRS 5).
    Plan,
    /// Acquiring or holding means, a note, giving things away, settling affairs, goodbyes,
    /// rehearsing (C-SSRS preparatory behaviour).
    Preparatory,
    /// An attempt: recent, interrupted, aborted, or in progress.
    Attempt,
    /// Cutting, burning, hitting oneself, or the urge to, without wanting to die.
    SelfInjury,
    /// Planning, intending or strongly wanting to hurt or kill someone.
    HarmToOthers,
    /// Cannot keep oneself safe; the safety plan is not working.
    CannotStaySafe,
    /// Trapped with no way out, unbearable pain, a burden, no reason to live.
    EntrapmentBurden,
}

impl Category {
    /// Every category, in C-SSRS order then the others.
    pub const ALL: [Self; 11] = [
        Self::WishDead,
        Self::ActiveThoughts,
        Self::Method,
        Self::Intent,
        Self::Plan,
        Self::Preparatory,
        Self::Attempt,
        Self::SelfInjury,
        Self::HarmToOthers,
        Self::CannotStaySafe,
        Self::EntrapmentBurden,
    ];

    /// Stable snake_case name, as in the vocabulary file and the evaluation sets:
    /// `wish_dead`, `active_thoughts`, `method`, ...
    pub fn as_str(self) -> &'static str {
        match self {
            Self::WishDead => "wish_dead",
            Self::ActiveThoughts => "active_thoughts",
            Self::Method => "method",
            Self::Intent => "intent",
            Self::Plan => "plan",
            Self::Preparatory => "preparatory",
            Self::Attempt => "attempt",
            Self::SelfInjury => "nssi",
            Self::HarmToOthers => "harm_others",
            Self::CannotStaySafe => "cannot_stay_safe",
            Self::EntrapmentBurden => "entrapment_burden",
        }
    }

    /// Words for a clinician: `wish to be dead`, `active suicidal thoughts`, ...
    pub fn label(self) -> &'static str {
        match self {
            Self::WishDead => "wish to be dead",
            Self::ActiveThoughts => "active suicidal thoughts",
            Self::Method => "method",
            Self::Intent => "intent",
            Self::Plan => "plan",
            Self::Preparatory => "preparatory behaviour",
            Self::Attempt => "attempt",
            Self::SelfInjury => "self-injury",
            Self::HarmToOthers => "harm to others",
            Self::CannotStaySafe => "cannot stay safe",
            Self::EntrapmentBurden => "entrapment or burden",
        }
    }

    fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|category| category.as_str() == name)
    }

    /// Self-injury without suicidal intent: a plan or means beside it is urgent but is not
    /// suicidal intent, so combining stops at high.
    fn is_self_injury(self) -> bool {
        self == Self::SelfInjury
    }
}

impl fmt::Display for Category {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a finding has the level it has, beyond its vocabulary entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Qualifier {
    /// As the vocabulary entry says.
    Current,
    /// Described as past and resolved ("used to", "two years clean"): lowered to low, not
    /// dropped, so a clinician still sees the history.
    ResolvedPast,
    /// Someone else's words the writer said applied to them too ("... and honestly same").
    Echoed,
    /// A timeframe, plan, means or preparation next to another finding: raised by the combination.
    Combined,
    /// Found by the learned model, not by a vocabulary rule: the span is the sentence it
    /// read as most of a crisis, and the level is never above moderate.
    Learned,
}

impl Qualifier {
    /// Stable snake_case name: `current`, `resolved_past`, `echoed`, `combined` or `learned`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Current => "current",
            Self::ResolvedPast => "resolved_past",
            Self::Echoed => "echoed",
            Self::Combined => "combined",
            Self::Learned => "learned",
        }
    }
}

/// One piece of evidence: what matched, where, and how urgent it is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    /// What the evidence is about.
    pub category: Category,
    /// The level this finding contributes.
    pub level: TextRiskLevel,
    /// The level its vocabulary entry gives it on its own (`none` for a modifier).
    pub vocabulary_level: TextRiskLevel,
    /// Why `level` differs from `vocabulary_level`, if it does.
    pub qualifier: Qualifier,
    /// Byte offsets into the text, on character boundaries.
    pub span: Range<usize>,
    /// The text of the span, verbatim.
    pub matched: String,
    /// The id of the vocabulary entry that matched.
    pub rule: String,
}

/// Why a vocabulary match does not count.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SuppressionReason {
    /// A negation shortly before it in the same clause ("I'm not going to ...").
    Negated,
    /// Inside quotation marks, or after "she said", "in the movie", and not echoed.
    Reported,
    /// About someone else ("she wants to die", "kill herself").
    OtherPerson,
    /// Part of an idiom or an accident ("killing myself studying", "cut myself shaving").
    Idiom,
    /// A modifier ("tonight", "I have the pills") with no finding near it to combine with.
    NoContext,
}

impl SuppressionReason {
    /// Stable snake_case name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Negated => "negated",
            Self::Reported => "reported",
            Self::OtherPerson => "other_person",
            Self::Idiom => "idiom",
            Self::NoContext => "no_context",
        }
    }
}

/// A vocabulary match that was set aside, kept so reviewers can see what the rules did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Suppressed {
    /// What the match would have been about.
    pub category: Category,
    /// The level its entry would have given it.
    pub vocabulary_level: TextRiskLevel,
    /// Byte offsets of the match.
    pub span: Range<usize>,
    /// The text of the match.
    pub matched: String,
    /// The id of the vocabulary entry that matched.
    pub rule: String,
    /// Why it does not count.
    pub reason: SuppressionReason,
    /// Byte offsets of what suppressed it (the negation, the quotation, "she said", the idiom).
    pub cue: Option<Range<usize>>,
    /// The id of the idiom that suppressed it, for `Idiom`.
    pub idiom: Option<String>,
}

/// The result of reading one text.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Detection {
    /// The highest level among the findings; `None` when there are none.
    pub level: TextRiskLevel,
    /// The evidence, in text order.
    pub findings: Vec<Finding>,
    /// Matches that did not count, and why, in text order.
    pub suppressed: Vec<Suppressed>,
    /// True only if the built-in vocabulary failed to load (a build defect its tests
    /// prevent); the level is then `High` so every text reaches a human rather than none.
    pub degraded: bool,
}

impl Detection {
    /// One line per finding for a clinician: level, category, the matched words (and
    /// nothing more of the text), the rule, and any qualifier; for a finding of the learned
    /// model, whose span is a sentence, its byte range instead of its words.
    pub fn evidence(&self) -> Vec<String> {
        if self.degraded {
            return vec!["crisis-language vocabulary unavailable; text needs a human read".to_owned()];
        }
        self.findings
            .iter()
            .map(|finding| {
                // A learned finding's span is a whole sentence: the evidence names where it
                // is, never quotes it, so no more of the text travels than for a rule.
                if finding.qualifier == Qualifier::Learned {
                    return format!(
                        "{} {}: the sentence at bytes {}..{} (rule {}; found by the learned model, not a vocabulary rule: read the text)",
                        finding.level,
                        finding.category.label(),
                        finding.span.start,
                        finding.span.end,
                        finding.rule
                    );
                }
                let qualifier = match finding.qualifier {
                    Qualifier::Current => String::new(),
                    Qualifier::ResolvedPast => {
                        format!("; described as past and resolved, lowered from {}", finding.vocabulary_level)
                    }
                    Qualifier::Echoed => "; someone else's words the writer said apply to them".to_owned(),
                    Qualifier::Combined => "; raised by another finding nearby".to_owned(),
                    Qualifier::Learned => String::new(),
                };
                format!(
                    "{} {}: \"{}\" (rule {}{qualifier})",
                    finding.level,
                    finding.category.label(),
                    finding.matched,
                    finding.rule
                )
            })
            .collect()
    }
}

/// Reads `text` with the built-in vocabulary.
pub fn detect(text: &str) -> Detection {
    match Vocabulary::builtin() {
        Ok(vocabulary) => vocabulary.detect(text),
        Err(_) => Detection { level: TextRiskLevel::High, degraded: true, ..Detection::default() },
    }
}

impl Vocabulary {
    /// Reads `text` with this vocabulary, then the built-in learned model, which may only add
    /// a finding (see [`LearnedModel`]).
    pub fn detect(&self, text: &str) -> Detection {
        // The model is compiled in and checked by its tests; were it ever unreadable the
        // vocabulary's reading stands on its own.
        match LearnedModel::builtin() {
            Ok(model) => self.detect_with_model(text, model),
            Err(_) => self.detect_vocabulary_only(text),
        }
    }

    /// Reads `text` with this vocabulary, then `model`, which may only add a finding: what
    /// [`Vocabulary::detect`] does with the built-in model, for measuring another.
    pub fn detect_with_model(&self, text: &str, model: &LearnedModel) -> Detection {
        let (mut detection, idioms) = analysis::analyze_with_idioms(self, text);
        if let Some(finding) = model.finding(text, &detection, &idioms) {
            detection.level = detection.level.max(finding.level);
            let at = detection.findings.partition_point(|other| other.span.start <= finding.span.start);
            detection.findings.insert(at, finding);
        }
        detection
    }

    /// What a learned model reads of `text` after this vocabulary (see [`ModelReading`]):
    /// for training one and choosing its threshold.
    pub fn model_reading(&self, text: &str) -> ModelReading {
        let (detection, idioms) = analysis::analyze_with_idioms(self, text);
        ModelReading::new(text, &detection, &idioms)
    }

    /// Reads `text` with this vocabulary alone, without the learned model: for measuring
    /// what each stage adds.
    pub fn detect_vocabulary_only(&self, text: &str) -> Detection {
        analysis::analyze(self, text)
    }
}

#[cfg(test)]
mod tests;
