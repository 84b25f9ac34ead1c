//! The learned stage: a linear model (multinomial logistic regression) over hashed word and
//! character n-grams, trained by `scripts/train-detector` on the training portions of the
//! evaluation sets (never their dev portions, never the frozen holdout) and shipped as
//! `crates/clinical/data/detector_model.bin`, compiled into the build.
//!
//! It reads the whole text and each sentence on its own, and takes the passage it reads as
//! most of a crisis, so a crisis said in one sentence of a long
//! everyday entry is not diluted by the rest (it was trained on whole texts, and on every
//! sentence of the benign ones as benign). It only ever adds: when that passage's
//! probability of a crisis passes the threshold the trainer chose on the dev split, and the
//! vocabulary found nothing of moderate or above, it adds one finding at moderate (the level
//! that answers with the safety response and reaches a human) on that passage (for the whole
//! text, on its sentence that scores highest), marked as coming from the model; not where the
//! vocabulary set a match aside as negated, reported, someone else's or an idiom, which a bag
//! of words cannot read. It never removes, lowers or suppresses a vocabulary finding. It
//! cannot weigh urgency the way the vocabulary's rules do, so it never claims more than
//! moderate; a clinician reads the evidence.
//!
//! Features are the tokens the vocabulary reads (lowercase, accents folded, apostrophes
//! dropped, stretched letters squeezed): words, word pairs, words after a negation
//! (marked), character 3- to 5-grams of each word and 4- and 5-grams across the space
//! between two words, so an inflection, a typo or a run-together phrase shares most of its
//! features with the spelling seen in training; and what the vocabulary read (each
//! finding's category, level and rule, each match it set aside and why), so the model
//! builds on the rules' structure (negation, someone else's words, a resolved past) rather
//! than relearning it from a few thousand texts.

use std::ops::Range;
use std::sync::OnceLock;

use super::text::{Boundary, Token, tokenize};
use super::{Category, Detection, Finding, Qualifier, SuppressionReason, TextRiskLevel};

/// Feature buckets (a power of two); the model holds one weight per bucket and class.
pub const BUCKETS: usize = 1 << 17;

/// The model's classes: the crisis categories then the benign ones of
/// `data/eval/CATEGORIES.md`, by their stable names.
pub const CLASSES: [&str; 16] = [
    "wish_dead",
    "active_thoughts",
    "method",
    "intent",
    "plan",
    "preparatory",
    "attempt",
    "nssi",
    "harm_others",
    "cannot_stay_safe",
    "entrapment_burden",
    "idiom",
    "negation",
    "reported",
    "past_resolved",
    "everyday",
];

/// How many of [`CLASSES`] (the first ones) are crisis categories.
pub const CRISIS_CLASSES: usize = 11;

/// Longest quotation, in words, the tokenizer marks (the features ignore quotes).
const MAX_QUOTE_WORDS: usize = 60;

/// How many words after a negation are read as negated.
const NEGATION_SCOPE: usize = 4;

const MAGIC: &str = "tandem-detector-model 1";

const BUILTIN: &[u8] = include_bytes!("../../data/detector_model.bin");

/// Words that negate what follows them in the same clause (English and Spanish).
const NEGATORS: [&str; 15] = [
    "not", "no", "never", "dont", "didnt", "wont", "wouldnt", "cant", "isnt", "nunca", "jamas", "ni", "nada",
    "tampoco", "sin",
];

/// FNV-1a over the parts of a feature, each part closed by a separator byte.
#[derive(Clone, Copy)]
struct Hasher(u64);

impl Hasher {
    fn new() -> Self {
        Self(0xcbf2_9ce4_8422_2325)
    }

    fn bytes(mut self, bytes: &[u8]) -> Self {
        for byte in bytes {
            self.0 ^= u64::from(*byte);
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
        self.0 ^= 0xff;
        self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        self
    }

    fn bucket(self) -> u32 {
        // Fold the high bits in: the low bits of FNV alone collide more.
        let folded = (self.0 ^ (self.0 >> 29) ^ (self.0 >> 47)) as usize;
        (folded & (BUCKETS - 1)) as u32
    }
}

fn fnv(parts: &[&[u8]]) -> u32 {
    parts.iter().fold(Hasher::new(), |hasher, part| hasher.bytes(part)).bucket()
}

fn word(token: &Token) -> &str {
    token.squeezed.as_ref().map_or(token.norm.as_str(), |(_, two)| two.as_str())
}

/// What the vocabulary read inside `within`, as features: each finding's category, level
/// and qualifier, and each match it set aside with the reason ("suicide" negated, a wish to
/// die someone else said, a resolved past), so the model weighs the structure the rules see.
fn vocabulary_features(vocabulary: &Detection, within: &Range<usize>, out: &mut Vec<u32>) {
    let inside = |span: &Range<usize>| within.start <= span.start && span.end <= within.end;
    for finding in vocabulary.findings.iter().filter(|finding| inside(&finding.span)) {
        let category = finding.category.as_str().as_bytes();
        out.push(fnv(&[b"vf", category, finding.level.as_str().as_bytes(), finding.qualifier.as_str().as_bytes()]));
        out.push(fnv(&[b"vr", finding.rule.as_bytes()]));
    }
    for item in vocabulary.suppressed.iter().filter(|item| inside(&item.span)) {
        out.push(fnv(&[b"vs", item.category.as_str().as_bytes(), item.reason.as_str().as_bytes()]));
        out.push(fnv(&[b"vq", item.rule.as_bytes(), item.reason.as_str().as_bytes()]));
    }
}

/// Character 4- and 5-grams across the space between two words, so a phrase shares features
/// with its inflections and its run-together or split spellings ("to die", "todie", "to diee").
fn joined_grams(before: &str, current: &str, out: &mut Vec<u32>) {
    let joined = format!("{before} {current}");
    let space = before.len();
    let bounds: Vec<usize> = joined.char_indices().map(|(at, _)| at).chain([joined.len()]).collect();
    let tag = Hasher::new().bytes(b"j");
    for n in [4usize, 5] {
        for window in bounds.windows(n + 1) {
            if let (Some(&from), Some(&to)) = (window.first(), window.last())
                && from < space
                && to > space + 1
                && let Some(gram) = joined.get(from..to)
            {
                out.push(tag.bytes(gram.as_bytes()).bucket());
            }
        }
    }
}

/// Feature buckets of a run of tokens, sorted and without repeats.
fn features_of(tokens: &[Token], vocabulary: &Detection) -> Vec<u32> {
    let mut out = Vec::with_capacity(tokens.len() * 16);
    if let (Some(first), Some(last)) = (tokens.first(), tokens.last()) {
        vocabulary_features(vocabulary, &(first.start..last.end), &mut out);
    }
    let mut negated_until = 0usize;
    let mut previous: Option<&Token> = None;
    for (index, token) in tokens.iter().enumerate() {
        let current = word(token);
        let new_sentence = previous.is_none_or(|p| p.sentence != token.sentence);
        if token.boundary_before >= Boundary::Clause {
            negated_until = 0;
        }
        out.push(fnv(&[b"w", current.as_bytes()]));
        if index < negated_until {
            out.push(fnv(&[b"n", current.as_bytes()]));
        }
        match previous {
            Some(before) if !new_sentence => {
                out.push(fnv(&[b"b", word(before).as_bytes(), current.as_bytes()]));
                joined_grams(word(before), current, &mut out);
            }
            _ => out.push(fnv(&[b"s", current.as_bytes()])),
        }
        if NEGATORS.contains(&current) {
            negated_until = index + 1 + NEGATION_SCOPE;
        }
        // Character n-grams of "<word>", hashed straight from the text's bytes.
        let padded = format!("<{current}>");
        let bounds: Vec<usize> = padded.char_indices().map(|(at, _)| at).chain([padded.len()]).collect();
        let tag = Hasher::new().bytes(b"c");
        for n in 3..=5 {
            for window in bounds.windows(n + 1) {
                if let (Some(&from), Some(&to)) = (window.first(), window.last())
                    && let Some(gram) = padded.get(from..to)
                {
                    out.push(tag.bytes(gram.as_bytes()).bucket());
                }
            }
        }
        previous = Some(token);
    }
    out.sort_unstable();
    out.dedup();
    out
}

/// Feature buckets of a text and the vocabulary's reading of it (`vocabulary`, from
/// [`super::Vocabulary::detect_vocabulary_only`]), sorted and without repeats: what the
/// trainer and the model read.
pub fn features(text: &str, vocabulary: &Detection) -> Vec<u32> {
    features_of(&tokenize(text, MAX_QUOTE_WORDS).tokens, vocabulary)
}

/// A trained model: per class a bias and one weight per feature bucket.
#[derive(Debug, Clone)]
pub struct LearnedModel {
    /// Crisis probability at or above which a text is flagged, chosen on the dev split.
    pub threshold: f32,
    /// [`super::Vocabulary::fingerprint`] of the vocabulary it was trained against.
    pub vocabulary: String,
    bias: Vec<f32>,
    scale: f32,
    /// `weights[bucket * CLASSES.len() + class]`, times `scale`.
    weights: Vec<i8>,
}

/// What the model says about one text.
#[derive(Debug, Clone, PartialEq)]
pub struct Prediction {
    /// Probability of each of [`CLASSES`].
    pub probabilities: Vec<f32>,
}

impl Prediction {
    /// The probability that the text is a crisis: the sum over the crisis classes.
    pub fn crisis(&self) -> f32 {
        self.probabilities.iter().take(CRISIS_CLASSES).sum()
    }

    /// The most probable crisis category.
    pub fn category(&self) -> Category {
        let mut best = 0;
        for (index, probability) in self.probabilities.iter().enumerate().take(CRISIS_CLASSES) {
            if *probability > self.probabilities.get(best).copied().unwrap_or_default() {
                best = index;
            }
        }
        CLASSES.get(best).and_then(|name| Category::from_name(name)).unwrap_or(Category::WishDead)
    }
}

impl LearnedModel {
    /// Builds a model from float weights (`weights[bucket * CLASSES.len() + class]`),
    /// quantized to one byte each.
    pub fn from_weights(threshold: f32, vocabulary: String, bias: Vec<f32>, weights: &[f32]) -> Self {
        debug_assert_eq!(weights.len(), BUCKETS * CLASSES.len());
        let largest = weights.iter().fold(0f32, |largest, weight| largest.max(weight.abs()));
        let scale = if largest > 0.0 { largest / 127.0 } else { 1.0 };
        let weights = weights.iter().map(|weight| (weight / scale).round().clamp(-127.0, 127.0) as i8).collect();
        Self { threshold, vocabulary, bias, scale, weights }
    }

    /// The model file: a text header, then the weights, one signed byte each.
    pub fn to_bytes(&self) -> Vec<u8> {
        let bias: Vec<String> = self.bias.iter().map(|bias| format!("{bias:e}")).collect();
        let mut out = format!(
            "{MAGIC}\nbuckets {BUCKETS}\nclasses {}\nvocabulary {}\nthreshold {:e}\nscale {:e}\nbias {}\n\n",
            CLASSES.join(","),
            self.vocabulary,
            self.threshold,
            self.scale,
            bias.join(",")
        )
        .into_bytes();
        out.extend(self.weights.iter().map(|weight| weight.to_le_bytes()[0]));
        out
    }

    /// Reads a model file written by [`LearnedModel::to_bytes`].
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, String> {
        let split = bytes.windows(2).position(|pair| pair == b"\n\n").ok_or("no header")?;
        let header = std::str::from_utf8(bytes.get(..split).ok_or("no header")?).map_err(|_| "header not utf-8")?;
        let body = bytes.get(split + 2..).ok_or("no weights")?;
        let mut lines = header.lines();
        if lines.next() != Some(MAGIC) {
            return Err("not a tandem detector model".to_owned());
        }
        let mut field = |name: &str| -> Result<String, String> {
            let line = lines.next().ok_or_else(|| format!("no {name}"))?;
            line.strip_prefix(name)
                .and_then(|rest| rest.strip_prefix(' '))
                .map(str::to_owned)
                .ok_or_else(|| format!("expected {name}"))
        };
        let float = |value: &str| value.parse::<f32>().map_err(|e| format!("{value}: {e}"));
        if field("buckets")? != BUCKETS.to_string() {
            return Err("bucket count differs from the code's".to_owned());
        }
        if field("classes")? != CLASSES.join(",") {
            return Err("classes differ from the code's".to_owned());
        }
        let vocabulary = field("vocabulary")?;
        let threshold = float(&field("threshold")?)?;
        let scale = float(&field("scale")?)?;
        let bias = field("bias")?.split(',').map(float).collect::<Result<Vec<f32>, String>>()?;
        if bias.len() != CLASSES.len() || body.len() != BUCKETS * CLASSES.len() {
            return Err("weights are not buckets x classes".to_owned());
        }
        let weights = body.iter().map(|byte| i8::from_le_bytes([*byte])).collect();
        Ok(Self { threshold, vocabulary, bias, scale, weights })
    }

    /// The model compiled into the build, or why it did not load (a build defect its tests
    /// catch).
    pub fn builtin() -> Result<&'static Self, &'static str> {
        static MODEL: OnceLock<Result<LearnedModel, String>> = OnceLock::new();
        MODEL.get_or_init(|| Self::from_bytes(BUILTIN)).as_ref().map_err(String::as_str)
    }

    fn predict_features(&self, features: &[u32]) -> Prediction {
        let classes = CLASSES.len();
        let mut scores: Vec<f32> = vec![0.0; classes];
        for feature in features {
            let start = *feature as usize * classes;
            if let Some(row) = self.weights.get(start..start + classes) {
                for (score, weight) in scores.iter_mut().zip(row) {
                    *score += f32::from(*weight);
                }
            }
        }
        let norm = self.scale / (features.len().max(1) as f32).sqrt();
        for (score, bias) in scores.iter_mut().zip(&self.bias) {
            *score = *score * norm + bias;
        }
        Prediction { probabilities: softmax(&scores) }
    }

    /// What the model says about `text` as a whole, given the vocabulary's reading of it.
    pub fn predict(&self, text: &str, vocabulary: &Detection) -> Prediction {
        self.predict_features(&features(text, vocabulary))
    }

    /// The passage of `reading` the model reads as most of a crisis, with its prediction and
    /// the sentence it names as evidence; `None` where it may add nothing at any threshold:
    /// the vocabulary already found a crisis, or set a match aside in that sentence.
    fn strongest(&self, reading: &Reading) -> Option<(Prediction, Range<usize>)> {
        if reading.vocabulary_flagged {
            return None;
        }
        let mut best: Option<(f32, Prediction, usize)> = None;
        let mut best_sentence: Option<(f32, usize)> = None;
        for (index, passage) in reading.passages.iter().enumerate() {
            let prediction = self.predict_features(&passage.features);
            let crisis = prediction.crisis();
            if passage.sentence && best_sentence.is_none_or(|(top, _)| crisis > top) {
                best_sentence = Some((crisis, index));
            }
            if best.as_ref().is_none_or(|(top, _, _)| crisis > *top) {
                best = Some((crisis, prediction, index));
            }
        }
        let (_, prediction, index) = best?;
        // The whole text names its strongest sentence; a sentence names itself.
        let evidence = match reading.passages.get(index) {
            Some(passage) if passage.whole => best_sentence.and_then(|(_, at)| reading.passages.get(at)),
            other => other,
        }?;
        // The vocabulary's negation, quotation, other-person and idiom rules read what a bag
        // of words cannot: where they set a match aside there, the model adds nothing ("I
        // would never kill myself", "she said she wants to die").
        if evidence.set_aside {
            return None;
        }
        Some((prediction, evidence.span.clone()))
    }

    /// The crisis probability the model weighs against its threshold for the text of
    /// `reading` (the highest of its passages), or `None` where it may add nothing at any
    /// threshold: what the trainer chooses the threshold from.
    pub fn crisis(&self, reading: &Reading) -> Option<f32> {
        self.strongest(reading).map(|(prediction, _)| prediction.crisis())
    }

    /// The finding the model adds for `text`, if any: see the module docs.
    pub(crate) fn finding(&self, text: &str, vocabulary: &Detection, idioms: &[Range<usize>]) -> Option<Finding> {
        // It only raises: a text the vocabulary already answers with the safety response
        // gains nothing from a second opinion that stops at moderate.
        if vocabulary.level >= TextRiskLevel::Moderate {
            return None;
        }
        let (prediction, span) = self.strongest(&Reading::new(text, vocabulary, idioms))?;
        let crisis = prediction.crisis();
        if crisis < self.threshold {
            return None;
        }
        let category = prediction.category();
        let matched = text.get(span.clone()).unwrap_or_default().to_owned();
        Some(Finding {
            category,
            level: TextRiskLevel::Moderate,
            vocabulary_level: TextRiskLevel::None,
            qualifier: Qualifier::Learned,
            span,
            matched,
            rule: format!("model:{}:p{:02}", category.as_str(), (crisis * 100.0).floor() as u32),
        })
    }
}

/// One passage of a text the model reads: the whole text or one sentence.
#[derive(Debug, Clone)]
pub struct Passage {
    /// Its feature buckets, sorted and without repeats.
    pub features: Vec<u32>,
    /// Its byte range in the text.
    pub span: Range<usize>,
    /// The whole text.
    pub whole: bool,
    /// A single sentence.
    pub sentence: bool,
    /// The vocabulary set a match aside in it as negated, reported, someone else's or an idiom.
    pub set_aside: bool,
}

/// What the learned stage reads of one text, computed once: whether the vocabulary already
/// flagged it, and its passages. The whole text is read, and each sentence on its own, so a
/// crisis said in one sentence of a long everyday entry is not diluted by the rest.
#[derive(Debug, Clone, Default)]
pub struct Reading {
    /// The vocabulary found something of moderate or above: the model adds nothing.
    pub vocabulary_flagged: bool,
    /// The whole text first, then its sentences in text order (none when it is one sentence).
    pub passages: Vec<Passage>,
}

impl Reading {
    /// Reads `text` given the vocabulary's reading of it and the idioms it found.
    pub(crate) fn new(text: &str, vocabulary: &Detection, idioms: &[Range<usize>]) -> Self {
        let vocabulary_flagged = vocabulary.level >= TextRiskLevel::Moderate;
        let tokens = tokenize(text, MAX_QUOTE_WORDS).tokens;
        let set_aside = |span: &Range<usize>| {
            let overlaps = |other: &Range<usize>| other.start < span.end && span.start < other.end;
            idioms.iter().any(overlaps)
                || vocabulary
                    .suppressed
                    .iter()
                    .any(|item| item.reason != SuppressionReason::NoContext && overlaps(&item.span))
        };
        let span_of =
            |slice: &[Token]| slice.first().map_or(0, |token| token.start)..slice.last().map_or(0, |token| token.end);
        let mut sentences: Vec<Range<usize>> = Vec::new();
        for (index, token) in tokens.iter().enumerate() {
            match sentences.last_mut() {
                Some(last) if tokens.get(last.start).is_some_and(|first| first.sentence == token.sentence) => {
                    last.end = index + 1;
                }
                _ => sentences.push(index..index + 1),
            }
        }
        if tokens.is_empty() {
            return Self { vocabulary_flagged, passages: Vec::new() };
        }
        // Every feature lies within one sentence, so the whole text reads as the union of its
        // sentences' features: each sentence is read once.
        let read: Vec<(Vec<u32>, Range<usize>)> = sentences
            .iter()
            .map(|range| {
                let slice = tokens.get(range.clone()).unwrap_or_default();
                (features_of(slice, vocabulary), span_of(slice))
            })
            .collect();
        let run = |parts: &[(Vec<u32>, Range<usize>)], whole: bool, sentence: bool| {
            let mut features: Vec<u32> = parts.iter().flat_map(|(features, _)| features.iter().copied()).collect();
            features.sort_unstable();
            features.dedup();
            let start = parts.first().map_or(0, |(_, span)| span.start);
            let span = start..parts.last().map_or(start, |(_, span)| span.end);
            Passage { features, set_aside: set_aside(&span), span, whole, sentence }
        };
        let mut passages = vec![run(&read, true, read.len() == 1)];
        if read.len() > 1 {
            passages.extend(read.chunks(1).map(|one| run(one, false, true)));
        }
        Self { vocabulary_flagged, passages }
    }
}

fn softmax(scores: &[f32]) -> Vec<f32> {
    let top = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let exps: Vec<f32> = scores.iter().map(|score| (score - top).exp()).collect();
    let total: f32 = exps.iter().sum();
    exps.iter().map(|e| e / total).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn features_tolerate_case_accents_apostrophes_and_stretching() {
        let features = |text: &str| features(text, &Detection::default());
        assert_eq!(features("I DON'T want to be here"), features("i dont want to be here"));
        assert_eq!(features("ya no quiero vivir más"), features("ya no quiero vivir mas"));
        assert_eq!(features("i want to diiiiie"), features("i want to diie"));
        let shared = |a: &str, b: &str| {
            let (a, b) = (features(a), features(b));
            a.iter().filter(|feature| b.contains(feature)).count() as f64 / a.len().max(b.len()) as f64
        };
        // An inflection keeps most character n-grams.
        assert!(shared("bought a rope", "buying a rope") > 0.4);
    }

    #[test]
    fn the_whole_text_reads_as_the_union_of_its_sentences() {
        // Reading builds the whole text's features from its sentences'; that must be what
        // reading all its tokens at once gives, or the model would not read what it was
        // trained on.
        let text = "rough day at work. i dont want to be here anymore, honestly. \"she said\" whatever; going to bed";
        let vocabulary = Detection::default();
        let reading = Reading::new(text, &vocabulary, &[]);
        let whole = reading.passages.first().expect("the whole text");
        assert!(whole.whole);
        assert_eq!(whole.features, features(text, &vocabulary));
        for passage in &reading.passages {
            let slice = text.get(passage.span.clone()).expect("a span on character boundaries");
            assert_eq!(passage.features, features(slice, &vocabulary), "{slice}");
        }
        assert_eq!(reading.passages.iter().filter(|passage| passage.sentence).count(), 3);
    }

    #[test]
    fn the_built_in_model_loads_and_round_trips() {
        let model = LearnedModel::builtin().expect("the built-in model loads");
        assert!(model.threshold > 0.0 && model.threshold < 1.0);
        let again = LearnedModel::from_bytes(&model.to_bytes()).expect("round trip");
        assert_eq!(again.weights, model.weights);
        let prediction = model.predict("anything at all", &Detection::default());
        assert!((prediction.probabilities.iter().sum::<f32>() - 1.0).abs() < 1e-4);
    }

    #[test]
    fn the_built_in_model_was_trained_against_the_built_in_vocabulary() {
        // The model reads the vocabulary's findings and rule ids, and its threshold was
        // chosen beside the vocabulary's own false alarms: after a vocabulary edit, run
        // scripts/train-detector.
        let model = LearnedModel::builtin().expect("the built-in model loads");
        let vocabulary = super::super::Vocabulary::builtin().expect("the built-in vocabulary");
        assert_eq!(model.vocabulary, vocabulary.fingerprint(), "retrain: scripts/train-detector");
    }

    #[test]
    fn a_learned_finding_is_marked_and_its_evidence_does_not_quote_the_sentence() {
        let model = LearnedModel::builtin().expect("the built-in model loads");
        let text = "rough week. honestly everyone would be so much better off if i just wasnt around anymore";
        let vocabulary = Detection::default();
        // Read as if the vocabulary had found nothing, so the model's own finding shows.
        let finding = model.finding(text, &vocabulary, &[]).expect("a burden statement reads as a crisis");
        assert_eq!(finding.qualifier, Qualifier::Learned);
        assert_eq!(finding.level, TextRiskLevel::Moderate);
        assert_eq!(text.get(finding.span.clone()), Some(finding.matched.as_str()));
        let detection = Detection { level: finding.level, findings: vec![finding], ..Detection::default() };
        let evidence = detection.evidence().join("\n");
        assert!(evidence.contains("learned model"), "{evidence}");
        assert!(!evidence.contains("better off"), "{evidence}");
    }

    #[test]
    fn a_malformed_model_file_is_rejected() {
        assert!(LearnedModel::from_bytes(b"hello").is_err());
        assert!(LearnedModel::from_bytes(b"tandem-detector-model 1\nbuckets 3\n\n").is_err());
    }
}
