//! The rules that turn vocabulary matches into findings: most specific match wins, then
//! idioms, negation, someone else's words and other people's risk suppress a match,
//! echoes reinstate it, a resolved past lowers it, and timeframes, plans, means and
//! preparation near another finding raise it.
//! The data each rule reads is in the vocabulary file, documented there.

use std::ops::Range;

use super::pattern;
use super::text::{Boundary, QuoteSpan, Token, Tokenized, tokenize};
use super::vocabulary::{About, CLAUSE_WORD, Entry, FIRST_PERSON, FIRST_PERSON_VERB, List, RESTART_WORD, Vocabulary};

/// A match in one list of the vocabulary, with its index in that list.
type Hit = pattern::Hit<usize>;
use super::{Category, Detection, Finding, Qualifier, Suppressed, SuppressionReason, TextRiskLevel};

/// A negation cue, indexed by its last token.
/// The writer as a subject: what starts a new statement after a negation cue.
const SUBJECT_PRONOUNS: [&str; 9] = ["i", "im", "ive", "id", "ill", "imma", "ima", "yo", "we"];

#[derive(Debug, Clone, Copy)]
struct Cue {
    first: usize,
    /// "don't think", "not that": the negation reaches past a new "I".
    raising: bool,
}

/// A text with everything the rules look up, computed once.
struct Doc<'a> {
    text: &'a str,
    vocabulary: &'a Vocabulary,
    tokens: Vec<Token>,
    quotes: Vec<QuoteSpan>,
    clause: Vec<usize>,
    /// The writer named: a pronoun, a first-person verb, a first-person clitic.
    first_person: Vec<bool>,
    /// The writer named by a pronoun ("i", "yo"): what starts a new statement.
    pronoun: Vec<bool>,
    /// A clause starts here that the writer speaks in ("..., and I ..."): ends a "she said".
    restart: Vec<bool>,
    /// For the last token of an other-person subject ("she", "my friend"), its first token.
    other_person_end: Vec<Option<usize>>,
    negation: Vec<Option<Cue>>,
    negation_after: Vec<Hit>,
    negation_answers: Vec<Hit>,
    /// Matches of vocabulary entries.
    entries: Vec<Hit>,
    idioms: Vec<Hit>,
    frames: Vec<Hit>,
    self_attribution: Vec<Hit>,
    echo: Vec<Hit>,
    past: Vec<bool>,
    past_resolving: Vec<bool>,
    resolution: Vec<bool>,
    relapse: Vec<bool>,
}

/// A Spanish verb with the first-person clitic attached ("matarme", "cortándome"): the writer
/// speaks of themselves, as "myself" says in English.
fn spanish_first_person(token: &Token) -> bool {
    let word = token.norm.as_str();
    word.len() > 5 && (word.ends_with("rme") || word.ends_with("ndome") || word.ends_with("rmela"))
}

fn overlaps(a: &Hit, b: &Hit) -> bool {
    a.first <= b.last && b.first <= a.last
}

/// `hits` less those overlapping any of `exclusions`.
fn without(hits: Vec<Hit>, exclusions: &[Hit]) -> Vec<Hit> {
    hits.into_iter().filter(|hit| !exclusions.iter().any(|exclusion| overlaps(hit, exclusion))).collect()
}

impl<'a> Doc<'a> {
    fn new(vocabulary: &'a Vocabulary, text: &'a str, tokenized: Tokenized) -> Self {
        let Tokenized { tokens, quotes } = tokenized;
        let count = tokens.len();
        let ids = vocabulary.matcher.word_ids(&tokens);
        let flags: Vec<u8> = ids.iter().map(|token_ids| vocabulary.matcher.flags(token_ids)).collect();
        let has = |index: usize, flag: u8| flags.get(index).is_some_and(|flags| flags & flag != 0);
        let mut clause = Vec::with_capacity(count);
        let mut current = 0;
        for (index, token) in tokens.iter().enumerate() {
            if index > 0 && (token.boundary_before != Boundary::None || has(index, CLAUSE_WORD)) {
                current += 1;
            }
            clause.push(current);
        }
        let pronoun: Vec<bool> = (0..count).map(|index| has(index, FIRST_PERSON)).collect();
        let first_person: Vec<bool> = (0..count)
            .map(|index| {
                has(index, FIRST_PERSON)
                    || has(index, FIRST_PERSON_VERB)
                    || tokens.get(index).is_some_and(spanish_first_person)
            })
            .collect();
        let mut restart = vec![false; count];
        for (index, token) in tokens.iter().enumerate() {
            // Only a comma-like boundary or a coordinator ("and", "but") starts a new statement;
            // "asked if I ..." and "said that I ..." stay inside what was reported.
            let starts_clause =
                matches!(token.boundary_before, Boundary::Clause | Boundary::Sentence) || has(index, RESTART_WORD);
            if index == 0 || !starts_clause {
                continue;
            }
            let speaks = (index..count.min(index + 3))
                .take_while(|&k| clause.get(k) == clause.get(index))
                .any(|k| first_person.get(k).copied().unwrap_or(false));
            if let Some(slot) = restart.get_mut(index) {
                *slot = speaks;
            }
        }
        let all = vocabulary.matcher.find_with(&tokens, &ids);
        let of = |wanted: List| -> Vec<Hit> {
            all.iter()
                .filter(|hit| hit.owner.0 == wanted)
                .map(|hit| Hit { owner: hit.owner.1, first: hit.first, last: hit.last })
                .collect()
        };
        let mut other_person_end = vec![None; count];
        for hit in of(List::OtherPerson) {
            if let Some(slot) = other_person_end.get_mut(hit.last) {
                *slot = Some(slot.map_or(hit.first, |first: usize| first.min(hit.first)));
            }
        }
        let raising = of(List::Raising);
        let mut negation = vec![None; count];
        for cue in without(of(List::NegationCue), &of(List::NotNegation)) {
            let raising = raising.iter().any(|phrase| overlaps(phrase, &cue));
            if let Some(slot) = negation.get_mut(cue.last) {
                *slot = Some(Cue { first: cue.first, raising });
            }
        }
        let sentences = tokens.last().map_or(0, |token| token.sentence + 1);
        let per_sentence = |hits: Vec<Hit>| {
            let mut flags = vec![false; sentences];
            for hit in hits {
                if let Some(flag) = tokens.get(hit.first).and_then(|token| flags.get_mut(token.sentence)) {
                    *flag = true;
                }
            }
            flags
        };
        let not_past = of(List::NotPast);
        let past = per_sentence(without(of(List::Past), &not_past));
        let past_resolving = per_sentence(without(of(List::PastResolving), &not_past));
        let resolution = per_sentence(of(List::Resolution));
        let relapse = per_sentence(of(List::Relapse));
        Self {
            text,
            vocabulary,
            idioms: of(List::Idiom),
            negation_after: of(List::NegationAfter),
            negation_answers: of(List::NegationAnswer),
            frames: of(List::Frame),
            self_attribution: of(List::SelfAttribution),
            echo: of(List::Echo),
            entries: of(List::Entry),
            tokens,
            quotes,
            clause,
            first_person,
            pronoun,
            restart,
            other_person_end,
            negation,
            past,
            past_resolving,
            resolution,
            relapse,
        }
    }

    fn sentence(&self, token: usize) -> usize {
        self.tokens.get(token).map_or(0, |token| token.sentence)
    }

    fn clause(&self, token: usize) -> Option<usize> {
        self.clause.get(token).copied()
    }

    fn is_first_person(&self, token: usize) -> bool {
        self.first_person.get(token).copied().unwrap_or(false)
    }

    fn bytes(&self, first: usize, last: usize) -> Range<usize> {
        let start = self.tokens.get(first).map_or(0, |token| token.start);
        let end = self.tokens.get(last).map_or(start, |token| token.end);
        start..end
    }

    fn excerpt(&self, span: &Range<usize>) -> String {
        self.text.get(span.clone()).unwrap_or_default().to_owned()
    }

    /// A negation cue shortly before `first` in the same clause, unless the writer starts a
    /// new statement in between ("I don't know why I want to die" is not negated).
    fn negation_before(&self, first: usize) -> Option<Range<usize>> {
        let clause = self.clause(first)?;
        let low = first.saturating_sub(self.vocabulary.negation_window);
        for index in (low..first).rev() {
            if self.clause(index) != Some(clause) {
                break;
            }
            let Some(cue) = self.negation.get(index).copied().flatten() else {
                continue;
            };
            // Only the writer as a subject starts one: "zero part of me wants to die" and "no me
            // quiero morir" are still negated.
            let subject = |k: usize| {
                self.pronoun.get(k).copied().unwrap_or(false)
                    && self.tokens.get(k).is_some_and(|token| SUBJECT_PRONOUNS.contains(&token.norm.as_str()))
            };
            let new_statement = !cue.raising && (index + 1..=first).any(subject);
            if !new_statement {
                return Some(self.bytes(cue.first, index));
            }
        }
        None
    }

    /// A negation right after the match in the same clause ("suicidal thoughts are gone"), or
    /// an answer that denies it, ending its sentence right after it ("Do I want to die? No.").
    fn negation_after(&self, hit: &Hit) -> Option<Range<usize>> {
        let clause = self.clause(hit.last)?;
        let after = self
            .negation_after
            .iter()
            .find(|cue| cue.first > hit.last && cue.first <= hit.last + 3 && self.clause(cue.first) == Some(clause));
        let ends_sentence =
            |cue: &&Hit| self.tokens.get(cue.last + 1).is_none_or(|next| next.boundary_before == Boundary::Sentence);
        let answer = || self.negation_answers.iter().filter(ends_sentence).find(|cue| cue.first == hit.last + 1);
        after.or_else(answer).map(|cue| self.bytes(cue.first, cue.last))
    }

    /// The match is a whole sentence on its own ("Tonight."), an afterthought to the one before.
    fn is_fragment(&self, hit: &Hit) -> bool {
        let sentence = self.sentence(hit.first);
        let before = hit.first.checked_sub(1).map(|index| self.sentence(index));
        let after = self.tokens.get(hit.last + 1).map(|token| token.sentence);
        before.is_some_and(|at| at != sentence) && after.is_none_or(|at| at != sentence)
    }

    /// The quotation `first` is in, unless the writer says the words are theirs
    /// ("I told her “...”", "“...” I wrote").
    fn quoted(&self, first: usize) -> Option<Range<usize>> {
        let quote = self.quotes.get(self.tokens.get(first)?.quote?)?;
        let own = self.self_attribution.iter().any(|said| {
            (said.last < quote.first && quote.first - said.last <= 4)
                || (said.first > quote.last && said.first - quote.last <= 3)
        });
        if own {
            return None;
        }
        Some(quote.start_byte..quote.end_byte)
    }

    /// A reporting frame ("my friend said", "in the movie") earlier in the sentence, unless
    /// a clause the writer speaks in comes between.
    fn framed(&self, first: usize) -> Option<Range<usize>> {
        let sentence = self.sentence(first);
        let frame = self
            .frames
            .iter()
            .filter(|frame| frame.last < first && self.sentence(frame.first) == sentence)
            .max_by_key(|frame| frame.last)?;
        if (frame.last + 1..=first).any(|k| self.restart.get(k).copied().unwrap_or(false)) {
            return None;
        }
        Some(self.bytes(frame.first, frame.last))
    }

    /// The subject before a match that says nothing of who, when it is someone else
    /// ("she wants to die"); `None` when it is the writer or unknown.
    fn other_subject(&self, hit: &Hit) -> Option<Range<usize>> {
        // Spanish "se" right before a verb makes it third person ("se quería morir", she
        // wanted to die), even when the verb form alone could be the writer's ("quería").
        let reflexive = hit.first.checked_sub(1).filter(|&before| {
            self.tokens.get(before).is_some_and(|token| token.norm == "se")
                && self.clause(before) == self.clause(hit.first)
                && !self.pronoun.get(hit.first).copied().unwrap_or(false)
        });
        if let Some(before) = reflexive {
            return Some(self.bytes(before, before));
        }
        if (hit.first..=hit.last).any(|k| self.is_first_person(k)) {
            return None;
        }
        let clause = self.clause(hit.first)?;
        let low = hit.first.saturating_sub(self.vocabulary.subject_window);
        for index in (low..hit.first).rev() {
            if self.clause(index) != Some(clause) || self.is_first_person(index) {
                return None;
            }
            if let Some(start) = self.other_person_end.get(index).copied().flatten() {
                return Some(self.bytes(start, index));
            }
        }
        None
    }

    /// An idiom overlapping the match that the match does not strictly contain:
    /// "killing myself studying" covers "killing myself", while "called the suicide hotline"
    /// is more than the idiom "suicide hotline" and stands.
    fn idiom(&self, hit: &Hit) -> Option<(Range<usize>, String)> {
        self.idioms
            .iter()
            .find(|idiom| {
                let strictly_contains = hit.first <= idiom.first
                    && idiom.last <= hit.last
                    && (hit.first, hit.last) != (idiom.first, idiom.last);
                overlaps(hit, idiom) && !strictly_contains
            })
            .map(|idiom| {
                let id = self.vocabulary.idiom_ids.get(idiom.owner).cloned().unwrap_or_default();
                (self.bytes(idiom.first, idiom.last), id)
            })
    }

    fn suppression(&self, hit: &Hit, entry: &Entry) -> Option<Suppression> {
        if let Some((cue, idiom)) = self.idiom(hit) {
            return Some(Suppression { reason: SuppressionReason::Idiom, cue: Some(cue), idiom: Some(idiom) });
        }
        let (reason, cue) = if let Some(cue) = self.negation_before(hit.first).or_else(|| self.negation_after(hit)) {
            (SuppressionReason::Negated, Some(cue))
        } else if let Some(cue) = self.quoted(hit.first).or_else(|| self.framed(hit.first)) {
            (SuppressionReason::Reported, Some(cue))
        } else if entry.about == About::Other {
            (SuppressionReason::OtherPerson, None)
        } else if entry.about == About::Any {
            return None;
        } else {
            (SuppressionReason::OtherPerson, Some(self.other_subject(hit)?))
        };
        Some(Suppression { reason, cue, idiom: None })
    }

    /// The writer takes someone else's words as theirs, later in the sentence or the next
    /// ("she said she wants to die. same tbh").
    fn echoed(&self, hit: &Hit) -> bool {
        let sentence = self.sentence(hit.last);
        self.echo.iter().any(|echo| {
            let at = self.sentence(echo.first);
            echo.first > hit.last
                && (at == sentence || at == sentence + 1)
                && self.negation_before(echo.first).is_none()
        })
    }

    /// Described as past and over: a past marker in the sentence (or the one before) and a
    /// resolution near it, or a marker that implies one ("used to"); no relapse nearby.
    fn resolved(&self, hit: &Hit) -> bool {
        let sentence = self.sentence(hit.first);
        let flag = |flags: &[bool], at: usize| flags.get(at).copied().unwrap_or(false);
        let previous = sentence.checked_sub(1);
        if flag(&self.relapse, sentence) || flag(&self.relapse, sentence + 1) {
            return false;
        }
        if flag(&self.past_resolving, sentence) {
            return true;
        }
        // The resolution may come a sentence later than the past ("... he was kind about it.
        // it's all in the past").
        let resolution_after = (sentence..=sentence + 2).any(|at| flag(&self.resolution, at));
        if flag(&self.past, sentence) {
            return resolution_after || previous.is_some_and(|at| flag(&self.resolution, at));
        }
        if flag(&self.past, sentence + 1) && flag(&self.resolution, sentence + 1) {
            // "I wanted to die every day. That was so long ago, a different person."
            return true;
        }
        previous.is_some_and(|at| flag(&self.past, at)) && resolution_after
    }
}

/// Among matches of the same role (signals, modifiers), one inside another is dropped, and
/// of two with the same span the higher level stays: a reviewer writes a longer pattern to
/// say what the longer phrase means ("could kill him" is low, "kill him" high).
fn most_specific(mut hits: Vec<Hit>, entries: &[Entry]) -> Vec<Hit> {
    let level = |hit: &Hit| entries.get(hit.owner).map_or(TextRiskLevel::None, |entry| entry.level);
    hits.sort_by(|a, b| {
        a.first.cmp(&b.first).then(b.last.cmp(&a.last)).then(level(b).cmp(&level(a))).then(a.owner.cmp(&b.owner))
    });
    let mut reach: [Option<usize>; 2] = [None, None];
    let mut kept = Vec::with_capacity(hits.len());
    for hit in hits {
        let role = usize::from(level(&hit) == TextRiskLevel::None);
        let Some(slot) = reach.get_mut(role) else {
            continue;
        };
        if slot.is_some_and(|furthest| furthest >= hit.last) {
            continue;
        }
        *slot = Some(hit.last);
        kept.push(hit);
    }
    kept
}

/// The level a combining finding of `modifier` reaches beside a finding of `category` at
/// `level`.
fn combined(modifier: Category, category: Category, level: TextRiskLevel) -> TextRiskLevel {
    // C-SSRS: ideation with a plan or intent is the highest screener risk (Posner et al. 2011);
    // self-injury with means is urgent but is not suicidal intent, so it stops at high; a
    // timeframe alone lifts passive ideation one level, active ideation to imminent.
    if category.is_self_injury() || modifier.is_self_injury() {
        return TextRiskLevel::High;
    }
    match modifier {
        Category::Intent if level < TextRiskLevel::High => TextRiskLevel::High,
        _ => TextRiskLevel::Imminent,
    }
}

/// Why a match does not count, and what said so.
struct Suppression {
    reason: SuppressionReason,
    cue: Option<Range<usize>>,
    idiom: Option<String>,
}

struct Live<'v> {
    hit: Hit,
    entry: &'v Entry,
    level: TextRiskLevel,
    qualifier: Qualifier,
}

pub(crate) fn analyze(vocabulary: &Vocabulary, text: &str) -> Detection {
    analyze_with_idioms(vocabulary, text).0
}

/// [`analyze`], and the byte spans of the idioms found ("this commute is killing me"),
/// whether or not they covered a match.
pub(crate) fn analyze_with_idioms(vocabulary: &Vocabulary, text: &str) -> (Detection, Vec<Range<usize>>) {
    let tokenized = tokenize(text, vocabulary.max_quote_words);
    if tokenized.tokens.is_empty() {
        return (Detection::default(), Vec::new());
    }
    let doc = Doc::new(vocabulary, text, tokenized);
    let hits = most_specific(doc.entries.clone(), &vocabulary.entries);
    let mut live: Vec<Live<'_>> = Vec::new();
    let mut suppressed = Vec::new();
    for hit in hits {
        let Some(entry) = vocabulary.entries.get(hit.owner) else {
            continue;
        };
        let qualifier = match doc.suppression(&hit, entry) {
            None => Qualifier::Current,
            Some(Suppression { reason: SuppressionReason::Reported | SuppressionReason::OtherPerson, .. })
                if doc.echoed(&hit) =>
            {
                Qualifier::Echoed
            }
            Some(Suppression { reason, cue, idiom }) => {
                let span = doc.bytes(hit.first, hit.last);
                suppressed.push(Suppressed {
                    category: entry.category,
                    vocabulary_level: entry.level,
                    matched: doc.excerpt(&span),
                    span,
                    rule: entry.id.clone(),
                    reason,
                    cue,
                    idiom,
                });
                continue;
            }
        };
        live.push(Live { hit, entry, level: entry.level, qualifier });
    }
    for finding in &mut live {
        if doc.resolved(&finding.hit) {
            finding.level = finding.level.min(TextRiskLevel::Low);
            finding.qualifier = Qualifier::ResolvedPast;
        }
    }
    // Pairing: a finding whose entry pairs with a role raises itself and every finding of
    // that role within its window ("thinking about" beside "the rope").
    let mut raised: Vec<(usize, TextRiskLevel)> = Vec::new();
    for (index, finding) in live.iter().enumerate() {
        if finding.entry.pairs_with.is_empty() || finding.qualifier == Qualifier::ResolvedPast {
            continue;
        }
        let sentence = doc.sentence(finding.hit.first);
        for (other_index, other) in live.iter().enumerate() {
            let pairs = other_index != index
                && other.qualifier != Qualifier::ResolvedPast
                && other.entry.role.as_ref().is_some_and(|role| finding.entry.pairs_with.contains(role))
                && doc.sentence(other.hit.first).abs_diff(sentence) <= finding.entry.window;
            if pairs {
                raised.push((index, finding.entry.paired_level));
                raised.push((other_index, finding.entry.paired_level));
            }
        }
    }
    for (index, level) in raised {
        if let Some(finding) = live.get_mut(index).filter(|finding| finding.level < level) {
            finding.level = level;
            finding.qualifier = Qualifier::Combined;
        }
    }
    // Context for modifiers: current findings that stand at moderate or above.
    let context: Vec<(usize, usize, Category, TextRiskLevel)> = live
        .iter()
        .enumerate()
        // A finding raised by a pairing is not context: it would lift its own partner again.
        .filter(|(_, finding)| {
            !matches!(finding.qualifier, Qualifier::ResolvedPast | Qualifier::Combined)
                && finding.level >= TextRiskLevel::Moderate
        })
        .map(|(index, finding)| (index, doc.sentence(finding.hit.first), finding.entry.category, finding.level))
        .collect();
    for (index, finding) in live.iter_mut().enumerate() {
        if !finding.entry.combines || finding.qualifier == Qualifier::ResolvedPast {
            continue;
        }
        let sentence = doc.sentence(finding.hit.first);
        let window = if doc.is_fragment(&finding.hit) { finding.entry.window.max(1) } else { finding.entry.window };
        let reached = context
            .iter()
            .filter(|(other, at, _, _)| *other != index && at.abs_diff(sentence) <= window)
            .map(|&(_, _, category, level)| combined(finding.entry.category, category, level))
            .max();
        if let Some(reached) = reached.filter(|reached| *reached > finding.level) {
            finding.level = reached;
            finding.qualifier = Qualifier::Combined;
        }
    }
    let mut findings = Vec::new();
    for finding in live {
        let span = doc.bytes(finding.hit.first, finding.hit.last);
        if finding.level == TextRiskLevel::None {
            let reason = SuppressionReason::NoContext;
            suppressed.push(Suppressed {
                category: finding.entry.category,
                vocabulary_level: finding.entry.level,
                matched: doc.excerpt(&span),
                span,
                rule: finding.entry.id.clone(),
                reason,
                cue: None,
                idiom: None,
            });
            continue;
        }
        findings.push(Finding {
            category: finding.entry.category,
            level: finding.level,
            vocabulary_level: finding.entry.level,
            qualifier: finding.qualifier,
            matched: doc.excerpt(&span),
            span,
            rule: finding.entry.id.clone(),
        });
    }
    findings.sort_by_key(|finding| (finding.span.start, finding.span.end));
    suppressed.sort_by_key(|item| (item.span.start, item.span.end));
    let level = findings.iter().map(|finding| finding.level).max().unwrap_or_default();
    let idioms = doc.idioms.iter().map(|idiom| doc.bytes(idiom.first, idiom.last)).collect();
    (Detection { level, findings, suppressed, degraded: false }, idioms)
}
