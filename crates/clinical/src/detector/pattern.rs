//! The vocabulary's pattern language and a matcher that runs many patterns over tokens.
//!
//! A pattern is words separated by spaces, matched token by token within one sentence:
//! `a|b` is either word, `word*` any word starting with `word`, `word?` an optional word,
//! `#num` a number, `#many` a number of ten or more, `~N` (N = 1-8) up to N words of anything. Sets (`{self}`) are expanded
//! before parsing, in `vocabulary.rs`.
//!
//! Typing slips are forgiven on long words: a token the vocabulary does not know, within one
//! edit (a letter added, dropped, changed, or two swapped) of a vocabulary word of at least
//! [`FUZZY_MIN`] letters, also reads as that word ("overdoes" is not corrected, it is a word
//! the vocabulary knows; "suicdie" reads as "suicide"). Prefixes of that length forgive a
//! changed, swapped or added letter ("sucicidal" for `suicid*`). Found with a deletion index
//! (SymSpell's idea), so the cost per token is a handful of hash look-ups.

use std::collections::HashMap;

use super::text::{Token, normalize_word};

/// One way a token may match.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Alt {
    Exact(Box<str>),
    Prefix(Box<str>),
    Number,
    /// A number of ten or more ("took 30"): a count that is a dose, not a dosage.
    Many,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Elem {
    Word { alts: Vec<Alt>, optional: bool },
    Gap(usize),
}

/// A parsed pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Pattern {
    elems: Vec<Elem>,
}

/// Longest gap a pattern may skip; wider gaps start matching across unrelated phrases.
const MAX_GAP: usize = 8;

/// Shortest vocabulary word (or prefix) that a misspelt token may be read as: shorter words
/// are one letter away from too many other words.
pub(crate) const FUZZY_MIN: usize = 6;

/// Word ids of a token: as written, its two squeezed forms, and the vocabulary word it is a
/// slip of.
pub(crate) type Ids = [u32; 4];

impl Pattern {
    /// Parses one expanded pattern; the error says what to fix, in a reviewer's words.
    pub(crate) fn parse(source: &str) -> Result<Self, String> {
        let mut elems = Vec::new();
        for piece in source.split_whitespace() {
            if let Some(count) = piece.strip_prefix('~') {
                let gap = count.parse::<usize>().ok().filter(|gap| (1..=MAX_GAP).contains(gap)).ok_or_else(|| {
                    format!("`{piece}`: a gap is ~1 to ~{MAX_GAP} (up to that many words of anything)")
                })?;
                if matches!(elems.last(), Some(Elem::Gap(_))) {
                    return Err(format!("`{piece}`: two gaps in a row; write one wider gap"));
                }
                elems.push(Elem::Gap(gap));
                continue;
            }
            let (body, optional) = match piece.strip_suffix('?') {
                Some(body) => (body, true),
                None => (piece, false),
            };
            let mut alts = Vec::new();
            for alt in body.split('|') {
                alts.push(parse_alt(alt).map_err(|problem| format!("`{piece}`: {problem}"))?);
            }
            elems.push(Elem::Word { alts, optional });
        }
        match elems.first() {
            None => return Err("empty pattern".to_owned()),
            Some(Elem::Word { optional: false, .. }) => {}
            Some(_) => return Err("a pattern must start with a required word (not `~N` or `word?`)".to_owned()),
        }
        if matches!(elems.last(), Some(Elem::Gap(_))) {
            return Err("a pattern must not end with a gap".to_owned());
        }
        Ok(Self { elems })
    }
}

fn parse_alt(alt: &str) -> Result<Alt, String> {
    if alt == "#num" {
        return Ok(Alt::Number);
    }
    if alt == "#many" {
        return Ok(Alt::Many);
    }
    let (stem, prefix) = match alt.strip_suffix('*') {
        Some(stem) => (stem, true),
        None => (alt, false),
    };
    if stem.contains('-') {
        return Err(format!(
            "`{alt}` has a hyphen; hyphens split words in text, so write `{}`",
            stem.replace('-', " ")
        ));
    }
    let word = normalize_word(stem);
    if word.is_empty() {
        return Err("an empty word (check for `||` or a stray `|`, `*` or `?`)".to_owned());
    }
    if !word.chars().all(char::is_alphanumeric) {
        return Err(format!("`{alt}` has characters other than letters, digits and apostrophes"));
    }
    if prefix && word.chars().count() < 3 {
        return Err(format!("`{alt}`: a prefix needs at least 3 letters, or it matches too much"));
    }
    Ok(if prefix { Alt::Prefix(word.into()) } else { Alt::Exact(word.into()) })
}

/// The value of a word id slot that holds no word.
const NO_WORD: u32 = u32::MAX;

/// A pattern element compiled against the matcher's word table.
#[derive(Debug, Clone)]
enum Step {
    Word {
        /// Ids of the exact words, sorted for binary search.
        exact: Vec<u32>,
        prefixes: Vec<Box<str>>,
        number: bool,
        many: bool,
        optional: bool,
    },
    Gap(usize),
}

/// A match of one pattern: the owner it was registered for and its inclusive token range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Hit<O> {
    pub owner: O,
    pub first: usize,
    pub last: usize,
}

/// Many patterns, indexed by their first word so a text is scanned once whatever the
/// number of lists: each token is looked up once, and hits say which list they belong to.
/// Words are interned, so matching compares integers, not strings.
#[derive(Debug, Clone)]
pub(crate) struct Matcher<O> {
    words: HashMap<Box<str>, u32>,
    word_list: Vec<Box<str>>,
    /// Per word id, the word classes it belongs to (see [`Matcher::mark`]).
    word_flags: Vec<u8>,
    patterns: Vec<(Vec<Step>, O)>,
    /// Patterns by the id of a word their first element accepts.
    by_first: Vec<Vec<usize>>,
    /// Patterns whose first element accepts a prefix, by the prefix's first three letters.
    by_prefix: HashMap<Box<str>, Vec<usize>>,
    /// Patterns whose first element accepts a number.
    by_number: Vec<usize>,
    /// Every long word, and each of its one-letter deletions, to the ids of the words.
    fuzzy: HashMap<Box<str>, Vec<u32>>,
}

impl<O> Default for Matcher<O> {
    fn default() -> Self {
        Self {
            words: HashMap::new(),
            word_list: Vec::new(),
            word_flags: Vec::new(),
            patterns: Vec::new(),
            by_first: Vec::new(),
            by_prefix: HashMap::new(),
            by_number: Vec::new(),
            fuzzy: HashMap::new(),
        }
    }
}

impl<O: Copy + PartialEq> Matcher<O> {
    fn intern(&mut self, word: &str) -> u32 {
        if let Some(&id) = self.words.get(word) {
            return id;
        }
        let id = u32::try_from(self.word_list.len()).unwrap_or(NO_WORD - 1);
        self.words.insert(word.into(), id);
        self.word_list.push(word.into());
        self.word_flags.push(0);
        self.by_first.push(Vec::new());
        id
    }

    /// Puts `word` in the word classes `flags` (first person, clause word, ...), so a token's
    /// classes are read from its id instead of looked up again.
    pub(crate) fn mark(&mut self, word: &str, flags: u8) {
        let id = self.intern(word);
        if let Some(slot) = usize::try_from(id).ok().and_then(|id| self.word_flags.get_mut(id)) {
            *slot |= flags;
        }
    }

    /// Makes `word` known, so a token spelt so is never read as a slip of another word
    /// ("fridge" is not a misspelt "bridge").
    pub(crate) fn know(&mut self, word: &str) {
        self.intern(word);
    }

    /// Indexes every long word for slips; call once every pattern and word is added.
    pub(crate) fn index_slips(&mut self) {
        self.fuzzy.clear();
        for (id, word) in self.word_list.iter().enumerate() {
            if word.chars().count() < FUZZY_MIN {
                continue;
            }
            let Ok(id) = u32::try_from(id) else {
                continue;
            };
            for key in std::iter::once(word.to_string()).chain(deletions(word)) {
                let ids = self.fuzzy.entry(key.into()).or_default();
                if !ids.contains(&id) {
                    ids.push(id);
                }
            }
        }
    }

    /// The vocabulary word `word` is one edit away from, if any (the first in the table).
    fn slip_of(&self, word: &str) -> u32 {
        if self.fuzzy.is_empty() || word.chars().count() + 1 < FUZZY_MIN {
            return NO_WORD;
        }
        let mut best = NO_WORD;
        for key in std::iter::once(word.to_owned()).chain(deletions(word)) {
            for &id in self.fuzzy.get(key.as_str()).into_iter().flatten() {
                let known = usize::try_from(id).ok().and_then(|id| self.word_list.get(id));
                if id < best && known.is_some_and(|known| within_one_edit(word, known)) {
                    best = id;
                }
            }
        }
        best
    }

    /// The word classes of a token, from the ids of its written form.
    pub(crate) fn flags(&self, ids: &Ids) -> u8 {
        let [written, ..] = *ids;
        usize::try_from(written).ok().and_then(|id| self.word_flags.get(id)).copied().unwrap_or(0)
    }

    /// Adds a pattern whose hits report `owner`.
    pub(crate) fn add(&mut self, pattern: Pattern, owner: O) {
        let index = self.patterns.len();
        let mut steps = Vec::with_capacity(pattern.elems.len());
        for elem in &pattern.elems {
            match elem {
                Elem::Gap(width) => steps.push(Step::Gap(*width)),
                Elem::Word { alts, optional } => {
                    let mut exact = Vec::new();
                    let mut prefixes = Vec::new();
                    let mut number = false;
                    let mut many = false;
                    for alt in alts {
                        match alt {
                            Alt::Exact(word) => exact.push(self.intern(word)),
                            Alt::Prefix(stem) => prefixes.push(stem.clone()),
                            Alt::Number => number = true,
                            Alt::Many => many = true,
                        }
                    }
                    exact.sort_unstable();
                    exact.dedup();
                    steps.push(Step::Word { exact, prefixes, number, many, optional: *optional });
                }
            }
        }
        if let Some(Step::Word { exact, prefixes, number, many, .. }) = steps.first() {
            for &id in exact {
                if let Some(patterns) = usize::try_from(id).ok().and_then(|id| self.by_first.get_mut(id)) {
                    patterns.push(index);
                }
            }
            for stem in prefixes {
                self.by_prefix.entry(prefix_key(stem).into()).or_default().push(index);
            }
            if *number || *many {
                self.by_number.push(index);
            }
        }
        self.patterns.push((steps, owner));
    }

    /// The word ids of every token's forms, for [`Matcher::find`] and [`Matcher::flags`].
    pub(crate) fn word_ids(&self, tokens: &[Token]) -> Vec<Ids> {
        tokens.iter().map(|token| self.ids_of(token)).collect()
    }

    /// The word ids of a token's forms (as written, squeezed, and the word it is a slip of).
    fn ids_of(&self, token: &Token) -> Ids {
        let id = |form: &str| self.words.get(form).copied().unwrap_or(NO_WORD);
        let [written, one, two] = match &token.squeezed {
            None => [id(&token.norm), NO_WORD, NO_WORD],
            Some((one, two)) => [id(&token.norm), id(one), id(two)],
        };
        let unknown = written == NO_WORD && one == NO_WORD && two == NO_WORD;
        let slip = if unknown && !token.censored && !token.numeric { self.slip_of(&token.norm) } else { NO_WORD };
        [written, one, two, slip]
    }

    fn step_accepts(&self, step: &Step, ids: &Ids, token: &Token) -> bool {
        let Step::Word { exact, prefixes, number, many, .. } = step else {
            return false;
        };
        if ids.iter().any(|id| *id != NO_WORD && exact.binary_search(id).is_ok()) || (*number && token.numeric) {
            return true;
        }
        if *many && token.numeric && token.norm.parse::<f64>().is_ok_and(|count| count >= 10.0) {
            return true;
        }
        let forms = || {
            std::iter::once(token.norm.as_str())
                .chain(token.squeezed.iter().flat_map(|(one, two)| [one.as_str(), two.as_str()]))
        };
        if !prefixes.is_empty() && forms().any(|form| prefixes.iter().any(|stem| form.starts_with(&**stem))) {
            return true;
        }
        let [written, ..] = *ids;
        if written == NO_WORD && !token.censored && prefixes.iter().any(|stem| prefix_slip(&token.norm, stem)) {
            return true;
        }
        if !token.censored {
            return false;
        }
        let words = exact.iter().filter_map(|id| usize::try_from(*id).ok().and_then(|id| self.word_list.get(id)));
        words.into_iter().any(|word| wildcard_eq(&token.norm, word, false))
            || prefixes.iter().any(|stem| wildcard_eq(&token.norm, stem, true))
    }

    /// The index of the last token of the longest match of `steps` from `pos`, if any.
    fn match_steps(
        &self,
        steps: &[Step],
        tokens: &[Token],
        ids: &[Ids],
        pos: usize,
        sentence: usize,
        last: Option<usize>,
    ) -> Option<usize> {
        let Some((step, rest)) = steps.split_first() else {
            return last;
        };
        let in_sentence = |index: usize| tokens.get(index).is_some_and(|token| token.sentence == sentence);
        match step {
            Step::Word { optional, .. } => {
                let mut best = None;
                let accepted = match (tokens.get(pos), ids.get(pos)) {
                    (Some(token), Some(token_ids)) => {
                        token.sentence == sentence && self.step_accepts(step, token_ids, token)
                    }
                    _ => false,
                };
                if accepted {
                    best = self.match_steps(rest, tokens, ids, pos + 1, sentence, Some(pos));
                }
                if *optional {
                    best = best.max(self.match_steps(rest, tokens, ids, pos, sentence, last));
                }
                best
            }
            Step::Gap(width) => {
                let mut best = None;
                for skip in 0..=*width {
                    if skip > 0 && !in_sentence(pos + skip - 1) {
                        break;
                    }
                    best = best.max(self.match_steps(rest, tokens, ids, pos + skip, sentence, last));
                }
                best
            }
        }
    }

    /// Every match in `tokens`; for one owner and start, only the longest.
    pub(crate) fn find(&self, tokens: &[Token]) -> Vec<Hit<O>> {
        self.find_with(tokens, &self.word_ids(tokens))
    }

    /// [`Matcher::find`] with the tokens' word ids already looked up.
    pub(crate) fn find_with(&self, tokens: &[Token], ids: &[Ids]) -> Vec<Hit<O>> {
        let mut hits: Vec<Hit<O>> = Vec::new();
        let mut candidates: Vec<usize> = Vec::new();
        for (start, (token, token_ids)) in tokens.iter().zip(ids).enumerate() {
            candidates.clear();
            if token.censored {
                candidates.extend(0..self.patterns.len());
            } else {
                for id in token_ids.iter().filter(|id| **id != NO_WORD) {
                    if let Some(indices) = usize::try_from(*id).ok().and_then(|id| self.by_first.get(id)) {
                        candidates.extend(indices);
                    }
                }
                if !self.by_prefix.is_empty() {
                    let forms = std::iter::once(token.norm.as_str())
                        .chain(token.squeezed.iter().flat_map(|(one, two)| [one.as_str(), two.as_str()]));
                    for form in forms {
                        if let Some(indices) = self.by_prefix.get(prefix_key(form)) {
                            candidates.extend(indices);
                        }
                    }
                }
                if token.numeric {
                    candidates.extend(&self.by_number);
                }
                // A pattern can be reached through two forms or two kinds of first word.
                candidates.sort_unstable();
                candidates.dedup();
            }
            let first_hit = hits.len();
            for &index in &candidates {
                let Some((steps, owner)) = self.patterns.get(index) else {
                    continue;
                };
                let Some(last) = self.match_steps(steps, tokens, ids, start, token.sentence, None) else {
                    continue;
                };
                let owner = *owner;
                match hits.iter_mut().skip(first_hit).find(|hit| hit.owner == owner) {
                    Some(hit) => hit.last = hit.last.max(last),
                    None => hits.push(Hit { owner, first: start, last }),
                }
            }
        }
        hits
    }

    /// How many patterns are registered for owners that `wanted` accepts.
    pub(crate) fn count(&self, wanted: impl Fn(O) -> bool) -> usize {
        self.patterns.iter().filter(|(_, owner)| wanted(*owner)).count()
    }
}

/// The first three characters of a word, the key prefixes are indexed by (a prefix has at
/// least three letters, so every word a prefix accepts shares its key).
fn prefix_key(word: &str) -> &str {
    let end = word.char_indices().nth(3).map_or(word.len(), |(index, _)| index);
    word.get(..end).unwrap_or(word)
}

/// `word` with one character removed, at each position in turn.
fn deletions(word: &str) -> impl Iterator<Item = String> + '_ {
    word.char_indices().map(move |(at, c)| {
        let mut shorter = String::with_capacity(word.len());
        shorter.push_str(word.get(..at).unwrap_or_default());
        shorter.push_str(word.get(at + c.len_utf8()..).unwrap_or_default());
        shorter
    })
}

/// At most one edit apart: a character added, dropped or changed, or two neighbours swapped.
pub(crate) fn within_one_edit(a: &str, b: &str) -> bool {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let (short, long) = if a.len() <= b.len() { (&a, &b) } else { (&b, &a) };
    if long.len() - short.len() > 1 {
        return false;
    }
    let first = short.iter().zip(long.iter()).position(|(x, y)| x != y).unwrap_or(short.len());
    let (Some(short_rest), Some(long_rest)) = (short.get(first..), long.get(first..)) else {
        return false;
    };
    if short.len() < long.len() {
        // One added character: the rest after it must agree.
        return long_rest.get(1..) == Some(short_rest);
    }
    if first == short.len() {
        return true;
    }
    let changed = short_rest.get(1..) == long_rest.get(1..);
    let swapped = short_rest.len() >= 2
        && short_rest.first() == long_rest.get(1)
        && short_rest.get(1) == long_rest.first()
        && short_rest.get(2..) == long_rest.get(2..);
    changed || swapped
}

/// A token that starts with a slip of a long prefix: its first characters, as many as the
/// prefix has or one more, are one changed, swapped or added character away from it.
/// (Not one fewer: "overdo" would then read as `overdos*`.) The last character must agree.
fn prefix_slip(token: &str, stem: &str) -> bool {
    let length = stem.chars().count();
    if length < FUZZY_MIN {
        return false;
    }
    let head = |count: usize| token.char_indices().nth(count).map_or(token, |(at, _)| token.get(..at).unwrap_or(token));
    // The slip is inside the prefix, not at its end: "overdoing" is not `overdos*`.
    let same_end = |head: &str| head.chars().last() == stem.chars().last();
    let chars = token.chars().count();
    let changed = chars >= length && {
        let head = head(length);
        head != stem && same_end(head) && within_one_edit(head, stem)
    };
    let added = chars > length && {
        let head = head(length + 1);
        same_end(head) && within_one_edit(head, stem)
    };
    changed || added
}

/// A censored token ("k*ll") against a vocabulary word: each `*` stands for one letter, and
/// at least half the letters must be shown, so "****" matches nothing.
fn wildcard_eq(censored: &str, word: &str, prefix: bool) -> bool {
    let shown = censored.chars().filter(|&c| c != '*').count();
    let total = censored.chars().count();
    if shown * 2 < total {
        return false;
    }
    let word_len = word.chars().count();
    if (!prefix && total != word_len) || (prefix && total < word_len) {
        return false;
    }
    censored.chars().zip(word.chars()).all(|(seen, wanted)| seen == '*' || seen == wanted)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detector::text::tokenize;

    fn matches(pattern: &str, text: &str) -> Vec<String> {
        let mut matcher = Matcher::default();
        matcher.add(Pattern::parse(pattern).unwrap(), 0usize);
        found(&matcher, text)
    }

    /// The text of each match of `matcher` in `text`.
    fn found(matcher: &Matcher<usize>, text: &str) -> Vec<String> {
        let tokens = tokenize(text, 60).tokens;
        matcher
            .find(&tokens)
            .into_iter()
            .map(|hit| text[tokens[hit.first].start..tokens[hit.last].end].to_owned())
            .collect()
    }

    #[test]
    fn alternatives_prefixes_optionals_and_gaps_match_as_documented() {
        assert_eq!(matches("want|wanna to? die", "I wanna die"), ["wanna die"]);
        assert_eq!(matches("want|wanna to? die", "I want to die"), ["want to die"]);
        assert_eq!(matches("suicid*", "feeling Suicidal"), ["Suicidal"]);
        assert_eq!(matches("have ~2 pills", "I have all my pills"), ["have all my pills"]);
        assert_eq!(matches("have ~2 pills", "I have all of my pills"), Vec::<String>::new());
        assert_eq!(matches("#num kms", "ran 5 kms"), ["5 kms"]);
        assert_eq!(matches("die today?", "die today"), ["die today"]);
        assert_eq!(matches("took #many pills", "took 2 pills, then took 30 pills"), ["took 30 pills"]);
    }

    #[test]
    fn matches_never_cross_a_sentence() {
        assert_eq!(matches("want to die", "I want to. Die hard is a film"), Vec::<String>::new());
        assert_eq!(matches("want to die", "I want to... die"), ["want to... die"]);
    }

    #[test]
    fn censored_and_stretched_words_match() {
        assert_eq!(matches("kill myself", "k*ll myself"), ["k*ll myself"]);
        assert_eq!(matches("kill myself", "killll myselfff"), ["killll myselfff"]);
        assert!(matches("kill", "****").is_empty());
    }

    fn matches_indexed(pattern: &str, text: &str) -> Vec<String> {
        let mut matcher = Matcher::default();
        matcher.add(Pattern::parse(pattern).unwrap(), 0usize);
        matcher.know("fridge");
        matcher.index_slips();
        found(&matcher, text)
    }

    #[test]
    fn one_slip_in_a_long_word_is_forgiven_and_short_or_known_words_are_not() {
        assert_eq!(matches_indexed("thinking about suicide", "thinkng about suicdie"), ["thinkng about suicdie"]);
        assert_eq!(matches_indexed("overdose", "overdosse"), ["overdosse"]);
        assert_eq!(matches_indexed("the bridge", "the brigde"), ["the brigde"]);
        assert!(matches_indexed("the bridge", "the fridge").is_empty(), "a known word is no slip");
        assert!(matches_indexed("pills", "polls").is_empty(), "short words are not corrected");
        assert_eq!(matches_indexed("suicid*", "suiciidal"), ["suiciidal"]);
        assert_eq!(matches_indexed("suicid*", "suicjdal"), ["suicjdal"]);
        assert_eq!(matches_indexed("overdos*", "overrdosing"), ["overrdosing"]);
        assert!(matches_indexed("overdos*", "overdoing it").is_empty());
        assert!(within_one_edit("abc", "acb") && within_one_edit("abc", "abxc") && within_one_edit("abc", "abd"));
        assert!(!within_one_edit("abc", "cab") && !within_one_edit("abc", "a") && !within_one_edit("abcd", "abdc1"));
    }

    #[test]
    fn malformed_patterns_are_rejected_with_a_reason() {
        for bad in ["", "~2 die", "die?", "die ~2", "die ~9 now", "self-harm", "a||b", "ab*", "kill ~1 ~1 me", "die!"] {
            assert!(Pattern::parse(bad).is_err(), "{bad:?} should be rejected");
        }
    }
}
