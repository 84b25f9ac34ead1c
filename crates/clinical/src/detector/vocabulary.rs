//! The reviewed vocabulary file: its shape, its validation (every problem reported with a
//! field path, like the rest of this crate), and its compiled form.

use std::collections::{BTreeMap, HashSet};
use std::sync::LazyLock;

use serde::Deserialize;

use super::pattern::{Matcher, Pattern};
use super::{Category, TextRiskLevel};
use crate::error::ValidationErrors;

/// The built-in vocabulary source, compiled into the binary so detection does no I/O.
pub(crate) const BUILTIN_SOURCE: &str = include_str!("../../data/crisis_vocabulary.toml");

static BUILTIN: LazyLock<Result<Vocabulary, ValidationErrors>> = LazyLock::new(|| Vocabulary::parse(BUILTIN_SOURCE));

/// The only format version this code reads.
const FORMAT_VERSION: u32 = 1;

/// Most set expansions one pattern may produce; more is a typo, not a vocabulary.
const MAX_EXPANSIONS: usize = 4096;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct VocabularyFile {
    format: u32,
    revision: String,
    settings: SettingsFile,
    #[serde(default)]
    sets: BTreeMap<String, Vec<String>>,
    words: WordsFile,
    #[serde(default, rename = "entry")]
    entries: Vec<EntryFile>,
    #[serde(default, rename = "idiom")]
    idioms: Vec<IdiomFile>,
    negation: NegationFile,
    reported: ReportedFile,
    resolved: ResolvedFile,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SettingsFile {
    negation_window: usize,
    subject_window: usize,
    max_quote_words: usize,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct WordsFile {
    clause: Vec<String>,
    restart: Vec<String>,
    first_person: Vec<String>,
    /// Verbs in the first person where the pronoun is left out ("quiero", "tengo").
    #[serde(default)]
    first_person_verbs: Vec<String>,
    other_person: Vec<String>,
    /// Real words one letter away from a vocabulary word, never read as its misspelling.
    #[serde(default)]
    not_slips: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EntryFile {
    id: String,
    category: String,
    level: String,
    #[serde(default)]
    about: Option<String>,
    #[serde(default)]
    window: Option<usize>,
    #[serde(default)]
    role: Option<String>,
    #[serde(default)]
    pairs_with: Vec<String>,
    #[serde(default)]
    paired_level: Option<String>,
    patterns: Vec<String>,
    #[serde(default)]
    examples: Vec<String>,
    #[serde(default)]
    note: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct IdiomFile {
    id: String,
    patterns: Vec<String>,
    #[serde(default)]
    examples: Vec<String>,
    #[serde(default)]
    note: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NegationFile {
    cues: Vec<String>,
    after: Vec<String>,
    answers: Vec<String>,
    not_negation: Vec<String>,
    raising: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ReportedFile {
    frames: Vec<String>,
    self_attribution: Vec<String>,
    echo: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ResolvedFile {
    past: Vec<String>,
    past_resolving: Vec<String>,
    not_past: Vec<String>,
    resolution: Vec<String>,
    relapse: Vec<String>,
}

/// Which list of the vocabulary a pattern came from; with an index, the owner of a hit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum List {
    Entry,
    Idiom,
    OtherPerson,
    NegationCue,
    NegationAfter,
    NegationAnswer,
    NotNegation,
    Raising,
    Frame,
    SelfAttribution,
    Echo,
    Past,
    PastResolving,
    NotPast,
    Resolution,
    Relapse,
}

/// Word class: the writer ("i", "me", "my").
pub(crate) const FIRST_PERSON: u8 = 1;
/// Word class: starts a clause for negation and subjects ("and", "because").
pub(crate) const CLAUSE_WORD: u8 = 2;
/// Word class: a coordinator after which the writer may speak inside a report ("and", "but").
pub(crate) const RESTART_WORD: u8 = 4;
/// Word class: a first-person verb whose pronoun is left out ("quiero"): the writer, but not
/// a new statement after a negation ("no estoy pensando en ..." stays negated).
pub(crate) const FIRST_PERSON_VERB: u8 = 8;

/// The owner of a pattern: its list, and its index in the list (entries and idioms).
pub(crate) type Owner = (List, usize);

/// Whose risk an entry describes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum About {
    /// The writer's own (the default).
    Writer,
    /// Someone else's ("kill herself"): always suppressed unless the writer echoes it.
    Other,
    /// Whoever's: access to means counts whoever owns them ("my dad has a gun").
    Any,
}

/// One compiled vocabulary entry.
#[derive(Debug, Clone)]
pub(crate) struct Entry {
    pub id: String,
    pub category: Category,
    /// Level on its own; `None` for a modifier that only counts beside another finding.
    pub level: TextRiskLevel,
    pub about: About,
    /// Sentences either side in which a modifier looks for a finding to combine with.
    pub window: usize,
    /// Combines with findings nearby (a modifier, level `none`, or an entry with a window).
    pub combines: bool,
    /// The role this entry's findings play in a pairing ("means", "imagining").
    pub role: Option<String>,
    /// Roles whose findings, within `window` sentences, pair with this entry's: both are
    /// raised to `paired_level` ("thinking about" beside "the rope").
    pub pairs_with: Vec<String>,
    /// The level a pairing reaches.
    pub paired_level: TextRiskLevel,
    /// Texts this entry must fire on.
    pub examples: Vec<String>,
}

/// A parsed, validated crisis-language vocabulary, ready to match.
#[derive(Debug, Clone)]
pub struct Vocabulary {
    pub(crate) revision: String,
    /// FNV-1a of the file's text: which vocabulary the learned stage was trained against.
    pub(crate) fingerprint: u64,
    pub(crate) negation_window: usize,
    pub(crate) subject_window: usize,
    pub(crate) max_quote_words: usize,
    pub(crate) entries: Vec<Entry>,
    pub(crate) idiom_ids: Vec<String>,
    pub(crate) idiom_examples: Vec<Vec<String>>,
    /// Every pattern of every list, so a text is scanned once.
    pub(crate) matcher: Matcher<Owner>,
}

impl Vocabulary {
    /// The vocabulary compiled into this build (`crates/clinical/data/crisis_vocabulary.toml`).
    pub fn builtin() -> Result<&'static Vocabulary, &'static ValidationErrors> {
        BUILTIN.as_ref()
    }

    /// Parses and validates a vocabulary file's text, reporting every problem with its
    /// path (`entry[3].patterns[1]`), so a reviewer can backtest an edited copy.
    pub fn parse(source: &str) -> Result<Self, ValidationErrors> {
        let file: VocabularyFile = toml::from_str(source)
            .map_err(|error| ValidationErrors::single("vocabulary", error.to_string().trim_end().to_owned()))?;
        let mut vocabulary = compile(file)?;
        vocabulary.fingerprint = source
            .bytes()
            .fold(0xcbf2_9ce4_8422_2325u64, |hash, byte| (hash ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3));
        Ok(vocabulary)
    }

    /// A fingerprint of the file's text (FNV-1a, hex): the learned stage reads the
    /// vocabulary's findings, so its model records the vocabulary it was trained against.
    pub fn fingerprint(&self) -> String {
        format!("{:016x}", self.fingerprint)
    }

    /// The `revision` string of the file, for recording which vocabulary judged a text.
    pub fn revision(&self) -> &str {
        &self.revision
    }

    /// The entry ids, in file order.
    pub fn rule_ids(&self) -> impl Iterator<Item = &str> {
        self.entries.iter().map(|entry| entry.id.as_str())
    }

    /// How many patterns the entries expand to, after sets.
    pub fn pattern_count(&self) -> usize {
        self.matcher.count(|(list, _)| list == List::Entry)
    }

    /// Every `examples` text that does not do what its entry or idiom promises: an entry
    /// example that yields no finding of that entry; an idiom example the idiom does not
    /// match, or where a finding still overlaps it. Empty for a sound vocabulary; a test
    /// holds the built-in one to that.
    pub fn check_examples(&self) -> Vec<String> {
        let mut failures = Vec::new();
        for (index, entry) in self.entries.iter().enumerate() {
            for (example_index, example) in entry.examples.iter().enumerate() {
                if !self.detect_vocabulary_only(example).findings.iter().any(|finding| finding.rule == entry.id) {
                    failures.push(format!(
                        "entry[{index}].examples[{example_index}]: `{}` did not fire on {example:?}",
                        entry.id
                    ));
                }
            }
        }
        for (index, (id, examples)) in self.idiom_ids.iter().zip(&self.idiom_examples).enumerate() {
            for (example_index, example) in examples.iter().enumerate() {
                let tokens = super::text::tokenize(example, self.max_quote_words).tokens;
                let spans: Vec<std::ops::Range<usize>> = self
                    .matcher
                    .find(&tokens)
                    .into_iter()
                    .filter(|hit| hit.owner == (List::Idiom, index))
                    .filter_map(|hit| Some(tokens.get(hit.first)?.start..tokens.get(hit.last)?.end))
                    .collect();
                let path = format!("idiom[{index}].examples[{example_index}]");
                if spans.is_empty() {
                    failures.push(format!("{path}: `{id}` does not match {example:?}"));
                    continue;
                }
                let detection = self.detect_vocabulary_only(example);
                let overlapping = detection.findings.iter().find(|finding| {
                    spans.iter().any(|span| finding.span.start < span.end && span.start < finding.span.end)
                });
                if let Some(finding) = overlapping {
                    failures.push(format!("{path}: `{}` still fires through `{id}` in {example:?}", finding.rule));
                }
            }
        }
        failures
    }
}

/// Expands `{set}` references and `(phrase one|phrase two)` groups (`(...)?` also allows
/// nothing) into plain patterns, for [`Pattern::parse`].
fn expand(source: &str, sets: &BTreeMap<String, Vec<String>>) -> Result<Vec<String>, String> {
    let mut done = Vec::new();
    let mut pending = vec![(source.to_owned(), 0usize)];
    while let Some((pattern, depth)) = pending.pop() {
        if depth > 16 {
            return Err("sets or groups nest too deep (a set that refers to itself?)".to_owned());
        }
        let alternatives = match (pattern.find('{'), pattern.find('(')) {
            (Some(brace), Some(paren)) if paren < brace => group_members(&pattern, paren)?,
            (Some(brace), _) => set_members(&pattern, brace, sets)?,
            (None, Some(paren)) => group_members(&pattern, paren)?,
            (None, None) => {
                if pattern.contains('}') || pattern.contains(')') {
                    return Err("a `}` or `)` without its opening bracket".to_owned());
                }
                done.push(pattern);
                continue;
            }
        };
        for alternative in alternatives {
            pending.push((alternative, depth + 1));
        }
        if done.len() + pending.len() > MAX_EXPANSIONS {
            return Err(format!("expands to more than {MAX_EXPANSIONS} patterns; split it"));
        }
    }
    done.reverse();
    Ok(done)
}

/// `pattern` with the `{set}` opening at byte `open` replaced by each member in turn.
fn set_members(pattern: &str, open: usize, sets: &BTreeMap<String, Vec<String>>) -> Result<Vec<String>, String> {
    let after = pattern.get(open + 1..).unwrap_or_default();
    let close = after.find('}').ok_or("a `{` without its `}`")?;
    let name = after.get(..close).unwrap_or_default();
    let members = sets.get(name).ok_or_else(|| format!("unknown set `{{{name}}}`"))?;
    let head = pattern.get(..open).unwrap_or_default();
    let tail = after.get(close + 1..).unwrap_or_default();
    Ok(merge_words(members.iter().map(String::as_str))
        .into_iter()
        .map(|member| format!("{head}{member}{tail}"))
        .collect())
}

/// `pattern` with the group opening at byte `open` replaced by each of its phrases in turn;
/// a phrase may hold sets and groups of its own, expanded after.
fn group_members(pattern: &str, open: usize) -> Result<Vec<String>, String> {
    let after = pattern.get(open + 1..).unwrap_or_default();
    let mut depth = 0usize;
    let mut close = None;
    let mut splits = Vec::new();
    for (at, c) in after.char_indices() {
        match c {
            '(' | '{' => depth += 1,
            '}' => depth = depth.saturating_sub(1),
            ')' if depth == 0 => {
                close = Some(at);
                break;
            }
            ')' => depth -= 1,
            '|' if depth == 0 => splits.push(at),
            _ => {}
        }
    }
    let close = close.ok_or("a `(` without its `)`")?;
    let inner = after.get(..close).unwrap_or_default();
    let head = pattern.get(..open).unwrap_or_default();
    let mut tail = after.get(close + 1..).unwrap_or_default();
    let mut phrases = Vec::new();
    let mut start = 0;
    for split in splits.into_iter().chain(std::iter::once(close)) {
        phrases.push(inner.get(start..split).unwrap_or_default().trim());
        start = split + 1;
    }
    if phrases.iter().any(|phrase| phrase.is_empty()) {
        return Err(format!("an empty phrase in `({inner})`; write `(...)?` for an optional group"));
    }
    let optional = match tail.strip_prefix('?') {
        Some(rest) => {
            tail = rest;
            true
        }
        None => false,
    };
    let mut alternatives = merge_words(phrases);
    if optional {
        alternatives.push(String::new());
    }
    Ok(alternatives.into_iter().map(|phrase| format!("{head}{phrase}{tail}")).collect())
}

/// Alternatives that are single words (or `a|b` alternations, or prefixes) become one
/// alternation, so `{self}` is one pattern step rather than a pattern per spelling; the
/// rest (phrases, optional words) stay alternatives of their own. Same meaning, fewer
/// patterns to try at each word.
fn merge_words<'s>(alternatives: impl IntoIterator<Item = &'s str>) -> Vec<String> {
    let is_word = |alternative: &str| {
        !alternative.is_empty() && !alternative.contains(|c: char| c.is_whitespace() || "?(){}~".contains(c))
    };
    let mut words: Vec<&str> = Vec::new();
    let mut others = Vec::new();
    for alternative in alternatives {
        let alternative = alternative.trim();
        if is_word(alternative) {
            words.push(alternative);
        } else {
            others.push(alternative.to_owned());
        }
    }
    if !words.is_empty() {
        others.insert(0, words.join("|"));
    }
    others
}

/// Parses every pattern of a list into `matcher` under `owner`, recording problems at `path[i]`.
fn add_patterns(
    matcher: &mut Matcher<Owner>,
    sources: &[String],
    owner: Owner,
    sets: &BTreeMap<String, Vec<String>>,
    path: &str,
    errors: &mut ValidationErrors,
) {
    if sources.is_empty() {
        errors.push(path, "needs at least one pattern");
    }
    for (index, source) in sources.iter().enumerate() {
        let expanded = match expand(source, sets) {
            Ok(expanded) => expanded,
            Err(problem) => {
                errors.push(format!("{path}[{index}]"), problem);
                continue;
            }
        };
        for pattern in expanded {
            match Pattern::parse(&pattern) {
                Ok(parsed) => matcher.add(parsed, owner),
                Err(problem) => errors.push(format!("{path}[{index}]"), format!("in `{pattern}`: {problem}")),
            }
        }
    }
}

fn word_set(words: &[String], path: &str, errors: &mut ValidationErrors) -> HashSet<String> {
    let mut set = HashSet::new();
    for (index, word) in words.iter().enumerate() {
        let norm = super::text::normalize_word(word);
        if norm.is_empty() || !norm.chars().all(char::is_alphanumeric) {
            errors.push(format!("{path}[{index}]"), format!("`{word}` is not a single word"));
            continue;
        }
        set.insert(norm);
    }
    set
}

fn is_rule_id(id: &str) -> bool {
    !id.is_empty() && id.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

fn compile(file: VocabularyFile) -> Result<Vocabulary, ValidationErrors> {
    let mut errors = ValidationErrors::new();
    if file.format != FORMAT_VERSION {
        errors.push("format", format!("this build reads format {FORMAT_VERSION}, the file is format {}", file.format));
    }
    if file.revision.trim().is_empty() {
        errors.push("revision", "name the reviewed revision, e.g. 2025-01-clinical-review");
    }
    let settings = &file.settings;
    if !(1..=8).contains(&settings.negation_window) {
        errors.push("settings.negation_window", "a negation window is 1-8 words");
    }
    if !(1..=12).contains(&settings.subject_window) {
        errors.push("settings.subject_window", "a subject window is 1-12 words");
    }
    if !(1..=200).contains(&settings.max_quote_words) {
        errors.push("settings.max_quote_words", "a quotation is at most 1-200 words");
    }
    for (name, members) in &file.sets {
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_lowercase() || c == '_') {
            errors.push(format!("sets.{name}"), "a set name is lowercase letters and `_`");
        }
        if members.is_empty() {
            errors.push(format!("sets.{name}"), "a set needs at least one member");
        }
    }
    let sets = &file.sets;
    let mut entries = Vec::new();
    let mut matcher = Matcher::default();
    let mut ids = HashSet::new();
    for (index, entry) in file.entries.iter().enumerate() {
        let path = format!("entry[{index}]");
        if !is_rule_id(&entry.id) {
            errors.push(format!("{path}.id"), format!("`{}`: an id is lowercase letters, digits and `-`", entry.id));
        }
        if !ids.insert(entry.id.clone()) {
            errors.push(format!("{path}.id"), format!("`{}` is already the id of another entry", entry.id));
        }
        let category = Category::from_name(&entry.category);
        if category.is_none() {
            errors.push(
                format!("{path}.category"),
                format!("`{}`: one of {}", entry.category, Category::ALL.map(Category::as_str).join(", ")),
            );
        }
        let level = entry.level.parse::<TextRiskLevel>().ok();
        if level.is_none() {
            errors.push(
                format!("{path}.level"),
                format!("`{}`: one of none, low, moderate, high, imminent", entry.level),
            );
        }
        if entry.role.as_deref().is_some_and(|role| !is_rule_id(role)) {
            errors.push(format!("{path}.role"), "a role is lowercase letters, digits and `-`");
        }
        let paired_level = match entry.paired_level.as_deref().map(str::parse::<TextRiskLevel>) {
            None => TextRiskLevel::High,
            Some(Ok(level)) if level >= TextRiskLevel::Moderate => level,
            Some(_) => {
                errors.push(format!("{path}.paired_level"), "one of moderate, high, imminent");
                TextRiskLevel::High
            }
        };
        if entry.paired_level.is_some() && entry.pairs_with.is_empty() {
            errors.push(format!("{path}.paired_level"), "only an entry that pairs_with a role has a paired_level");
        }
        let about = match entry.about.as_deref() {
            None | Some("writer") => About::Writer,
            Some("other") => About::Other,
            Some("any") => About::Any,
            Some(other) => {
                errors.push(format!("{path}.about"), format!("`{other}`: `writer` (the default), `other` or `any`"));
                About::Writer
            }
        };
        if entry.note.as_deref().is_some_and(|note| note.trim().is_empty()) {
            errors.push(format!("{path}.note"), "an empty note; remove it or say why the entry exists");
        }
        if entry.examples.is_empty() {
            errors.push(format!("{path}.examples"), "give at least one text the entry must fire on");
        }
        add_patterns(
            &mut matcher,
            &entry.patterns,
            (List::Entry, entries.len()),
            sets,
            &format!("{path}.patterns"),
            &mut errors,
        );
        if let (Some(category), Some(level)) = (category, level) {
            let window = entry.window.unwrap_or(0);
            let combines = entry.role.is_none() && (level == TextRiskLevel::None || entry.window.is_some());
            entries.push(Entry {
                id: entry.id.clone(),
                category,
                level,
                about,
                window,
                combines,
                role: entry.role.clone(),
                pairs_with: entry.pairs_with.clone(),
                paired_level,
                examples: entry.examples.clone(),
            });
        }
    }
    let roles: HashSet<&str> = entries.iter().filter_map(|entry| entry.role.as_deref()).collect();
    for (index, entry) in entries.iter().enumerate() {
        for role in &entry.pairs_with {
            if !roles.contains(role.as_str()) {
                errors.push(format!("entry[{index}].pairs_with"), format!("no entry has the role `{role}`"));
            }
        }
    }
    if entries.is_empty() && errors.is_empty() {
        errors.push("entry", "a vocabulary needs at least one entry");
    }
    let mut idiom_ids = Vec::new();
    let mut idiom_examples = Vec::new();
    for (index, idiom) in file.idioms.iter().enumerate() {
        let path = format!("idiom[{index}]");
        if !is_rule_id(&idiom.id) {
            errors.push(format!("{path}.id"), format!("`{}`: an id is lowercase letters, digits and `-`", idiom.id));
        }
        if idiom.note.as_deref().is_some_and(|note| note.trim().is_empty()) {
            errors.push(format!("{path}.note"), "an empty note; remove it or say why the idiom exists");
        }
        let owner = (List::Idiom, idiom_ids.len());
        add_patterns(&mut matcher, &idiom.patterns, owner, sets, &format!("{path}.patterns"), &mut errors);
        idiom_ids.push(idiom.id.clone());
        idiom_examples.push(idiom.examples.clone());
    }
    let lists = [
        (List::OtherPerson, &file.words.other_person, "words.other_person"),
        (List::NegationCue, &file.negation.cues, "negation.cues"),
        (List::NegationAfter, &file.negation.after, "negation.after"),
        (List::NegationAnswer, &file.negation.answers, "negation.answers"),
        (List::NotNegation, &file.negation.not_negation, "negation.not_negation"),
        (List::Raising, &file.negation.raising, "negation.raising"),
        (List::Frame, &file.reported.frames, "reported.frames"),
        (List::SelfAttribution, &file.reported.self_attribution, "reported.self_attribution"),
        (List::Echo, &file.reported.echo, "reported.echo"),
        (List::Past, &file.resolved.past, "resolved.past"),
        (List::PastResolving, &file.resolved.past_resolving, "resolved.past_resolving"),
        (List::NotPast, &file.resolved.not_past, "resolved.not_past"),
        (List::Resolution, &file.resolved.resolution, "resolved.resolution"),
        (List::Relapse, &file.resolved.relapse, "resolved.relapse"),
    ];
    for (list, sources, path) in lists {
        add_patterns(&mut matcher, sources, (list, 0), sets, path, &mut errors);
    }
    let classes = [
        (&file.words.clause, "words.clause", CLAUSE_WORD),
        (&file.words.restart, "words.restart", RESTART_WORD),
        (&file.words.first_person, "words.first_person", FIRST_PERSON),
        (&file.words.first_person_verbs, "words.first_person_verbs", FIRST_PERSON_VERB),
    ];
    for (words, path, flag) in classes {
        for word in word_set(words, path, &mut errors) {
            matcher.mark(&word, flag);
        }
    }
    for word in word_set(&file.words.not_slips, "words.not_slips", &mut errors) {
        matcher.know(&word);
    }
    matcher.index_slips();
    let vocabulary = Vocabulary {
        revision: file.revision.clone(),
        fingerprint: 0,
        negation_window: settings.negation_window,
        subject_window: settings.subject_window,
        max_quote_words: settings.max_quote_words,
        entries,
        idiom_ids,
        idiom_examples,
        matcher,
    };
    errors.into_result(vocabulary)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sets_expand_into_every_combination_in_order() {
        let sets = BTreeMap::from([
            ("self".to_owned(), vec!["myself".to_owned(), "my self".to_owned()]),
            ("kill".to_owned(), vec!["kill".to_owned(), "end {self}".to_owned()]),
        ]);
        assert_eq!(expand("want to {kill} {self}", &sets).unwrap().len(), 6);
        let spaced: Vec<String> = expand("a {self}", &sets)
            .unwrap()
            .iter()
            .map(|p| p.split_whitespace().collect::<Vec<_>>().join(" "))
            .collect();
        assert_eq!(spaced, ["a myself", "a my self"]);
        assert!(expand("a {nope}", &sets).unwrap_err().contains("unknown set"));
        assert!(expand("a {self", &sets).is_err());
        let looping = BTreeMap::from([("x".to_owned(), vec!["{x}".to_owned()])]);
        assert!(expand("{x}", &looping).is_err());
    }

    #[test]
    fn groups_expand_into_whole_phrases() {
        let sets = BTreeMap::new();
        let spaced = |pattern: &str| -> Vec<String> {
            expand(pattern, &sets).unwrap().iter().map(|p| p.split_whitespace().collect::<Vec<_>>().join(" ")).collect()
        };
        let mut phrases = spaced("think about (being dead|dying)");
        phrases.sort();
        assert_eq!(phrases, ["think about being dead", "think about dying"]);
        assert_eq!(spaced("kill (myself|meself|my self)"), ["kill myself|meself", "kill my self"]);
        assert_eq!(spaced("want to (just)? die"), ["want to just die", "want to die"]);
        assert!(expand("(a|b", &sets).is_err());
        assert!(expand("a (b||c) d", &sets).is_err());
        let mut nested = spaced("a (b (c|e)|f) d");
        nested.sort();
        assert_eq!(nested, ["a b c|e d", "a f d"], "groups nest");
        assert!(expand("a (b (c) d", &sets).is_err());
    }
}
