//! A check-in assessed once, at submission, and the risk rules read from what that found.
//!
//! Check-ins calls [`assess_check_in`] when a patient submits: every instrument is scored and
//! the journal is read by the crisis-language detector, once. What that found travels to
//! triage as [`CheckInFacts`](events::CheckInFacts) on the `CheckInSubmitted` event: scores,
//! bands, the item answers, the triggers, and the detector's levels, rules and byte spans,
//! never the journal's words. Triage then weighs those facts with the patient's history by
//! [`rule_firings`]; a submission check-ins refused is weighed from its signal alone by
//! [`refused_signal_firings`]. Which trigger fires at which level, which detector level is a
//! crisis ([`TextRiskLevel::is_crisis`]) and the names of the triggers all live here.

use tandem_proto::checkins::v1::InstrumentResponse;
use tandem_proto::events::v1 as events;
use tandem_proto::triage::v1::{RiskLevel, RuleFiring, TriageRules};

use crate::detector::TextRiskLevel;
use crate::instrument::Instrument;
use crate::long_text::detect_long_text;
use crate::responses::{Responses, parse_responses};
use crate::score::{CrisisTrigger, CssrsRisk, Score, crisis_triggers_in_unparsed, score};
use crate::trend::phq9_trend;

/// The trigger id of the crisis-language detector, as `SafetyResponse.triggers` and the
/// rule of a [`RuleFiring`] name it.
pub const CRISIS_LANGUAGE_TRIGGER: &str = "crisis-language";

/// The rule id of a C-SSRS screener at moderate risk (a positive answer short of high risk).
pub const CSSRS_MODERATE_RULE: &str = "cssrs-moderate";

/// The rule id of a PHQ-9 total in the severe band.
pub const PHQ9_SEVERE_RULE: &str = "phq9-severe";

/// The rule id of a reliable rise of the PHQ-9 total over the patient's baseline.
pub const RELIABLE_DETERIORATION_RULE: &str = "reliable-deterioration";

/// The rule id of scheduled measures missed in a row.
pub const DISENGAGEMENT_RULE: &str = "disengagement";

/// Most detector findings carried in a check-in's facts; the level counts them all.
const MAX_FINDINGS: usize = 20;

impl TextRiskLevel {
    /// True from `moderate` up: the level at which what a patient wrote is a crisis signal,
    /// answered with the safety response and escalated to a human. Passive ideation in
    /// words ("wish I were dead") counts, as PHQ-9 item 9, which asks about exactly that,
    /// does (DESIGN.md).
    pub fn is_crisis(self) -> bool {
        self >= Self::Moderate
    }
}

/// A check-in assessed at submission: each instrument's score (in request order) and the
/// facts that travel to triage.
#[derive(Debug, Clone, PartialEq)]
pub struct CheckInAssessment {
    /// The scores, one per instrument, in request order.
    pub scores: Vec<Score>,
    /// What travels on the `CheckInSubmitted` event.
    pub facts: events::CheckInFacts,
}

impl CheckInAssessment {
    /// The crisis triggers that fired, each once, instruments first: non-empty means the
    /// patient is shown the safety response and a human is alerted.
    pub fn crisis_triggers(&self) -> Vec<String> {
        crisis_triggers(&self.facts)
    }
}

/// Scores every instrument and reads the journal (of any length, within the detector's
/// bounded cost) with the crisis-language detector: the one assessment of a check-in.
pub fn assess_check_in(responses: &[Responses], journal: &str) -> CheckInAssessment {
    let scores: Vec<Score> = responses.iter().map(score).collect();
    let instruments =
        responses.iter().zip(&scores).map(|(responses, score)| instrument_facts(responses, score)).collect();
    CheckInAssessment { scores, facts: events::CheckInFacts { instruments, journal: journal_facts(journal) } }
}

/// The facts of instruments and a journal that were never validated: an event written before
/// check-ins sent facts, which carried the raw answers and the journal. Each instrument that
/// parses is scored as at submission; one that does not still reports the crisis triggers
/// its raw answers show, so nothing there can hide a crisis.
pub fn assess_unvalidated(instruments: &[InstrumentResponse], journal: &str) -> events::CheckInFacts {
    let instruments = instruments
        .iter()
        .map(|raw| match parse_responses(&raw.instrument, &raw.answers) {
            Ok(responses) => instrument_facts(&responses, &score(&responses)),
            Err(_) => events::InstrumentFacts {
                instrument: raw.instrument.clone(),
                items: items(&raw.answers),
                crisis_triggers: crisis_triggers_in_unparsed(&raw.instrument, &raw.answers)
                    .iter()
                    .map(|trigger| trigger.id().to_owned())
                    .collect(),
                ..Default::default()
            },
        })
        .collect();
    events::CheckInFacts { instruments, journal: journal_facts(journal) }
}

fn items(answers: &[i32]) -> Vec<events::ItemAnswer> {
    (1..).zip(answers).map(|(item, &answer)| events::ItemAnswer { item, answer }).collect()
}

fn instrument_facts(responses: &Responses, score: &Score) -> events::InstrumentFacts {
    events::InstrumentFacts {
        instrument: score.instrument.code().to_owned(),
        items: items(&responses.to_wire()),
        total: score.total.map(i32::from),
        band: score.band.as_str().to_owned(),
        cssrs_risk: score.cssrs_risk.map(|risk| risk.as_str().to_owned()).unwrap_or_default(),
        crisis_triggers: score.crisis_triggers.iter().map(|trigger| trigger.id().to_owned()).collect(),
    }
}

fn offset(at: usize) -> u64 {
    u64::try_from(at).unwrap_or(u64::MAX)
}

/// What the crisis-language detector finds in `journal`, without its words; `None` for an
/// empty journal. Reads a journal of any length within a bounded cost (the first
/// [`LONG_TEXT_MAX_BYTES`](crate::LONG_TEXT_MAX_BYTES)).
pub fn journal_facts(journal: &str) -> Option<events::JournalFacts> {
    if journal.is_empty() {
        return None;
    }
    let read = detect_long_text(journal);
    // The most urgent findings first, then in text order.
    let mut findings = read.detection.findings;
    findings.sort_by_key(|finding| std::cmp::Reverse(finding.level));
    findings.truncate(MAX_FINDINGS);
    findings.sort_by_key(|finding| finding.span.start);
    Some(events::JournalFacts {
        level: read.detection.level.as_str().to_owned(),
        findings: findings
            .iter()
            .map(|finding| events::TextFinding {
                category: finding.category.as_str().to_owned(),
                level: finding.level.as_str().to_owned(),
                rule: finding.rule.clone(),
                start: offset(finding.span.start),
                end: offset(finding.span.end),
            })
            .collect(),
        bytes_read: offset(read.bytes_read),
        bytes: offset(journal.len()),
    })
}

/// The level in journal facts; an unreadable one reads as high, so it still reaches a human.
fn journal_level(journal: &events::JournalFacts) -> TextRiskLevel {
    journal.level.parse().unwrap_or(TextRiskLevel::High)
}

/// The crisis triggers in `facts`, each once, instruments first, then crisis language when
/// the journal's level is a crisis.
pub fn crisis_triggers(facts: &events::CheckInFacts) -> Vec<String> {
    let mut triggers: Vec<String> = Vec::new();
    for trigger in facts.instruments.iter().flat_map(|instrument| &instrument.crisis_triggers) {
        if !triggers.contains(trigger) {
            triggers.push(trigger.clone());
        }
    }
    if facts.journal.as_ref().is_some_and(|journal| journal_level(journal).is_crisis()) {
        triggers.push(CRISIS_LANGUAGE_TRIGGER.to_owned());
    }
    triggers
}

/// The PHQ-9 total in `facts`, if a PHQ-9 was answered.
pub fn phq9_total(facts: &events::CheckInFacts) -> Option<u8> {
    facts
        .instruments
        .iter()
        .find(|instrument| Instrument::from_code(&instrument.instrument) == Some(Instrument::Phq9))
        .and_then(|instrument| instrument.total)
        .and_then(|total| u8::try_from(total).ok())
}

// ---------------------------------------------------------------------------------------
// The signal of a refused submission
// ---------------------------------------------------------------------------------------

/// The items whose answers fired `trigger`, numbered from 1.
fn items_of(trigger: &CrisisTrigger) -> Vec<events::ItemAnswer> {
    match trigger {
        CrisisTrigger::Phq9Item9 { answer } => vec![events::ItemAnswer { item: 9, answer: i32::from(answer.value()) }],
        CrisisTrigger::CssrsHighRisk { intent, plan_with_intent, behaviour_past_3_months } => {
            [(4, *intent), (5, *plan_with_intent), (6, *behaviour_past_3_months)]
                .into_iter()
                .filter(|(_, yes)| *yes)
                .map(|(item, _)| events::ItemAnswer { item, answer: 1 })
                .collect()
        }
    }
}

/// The crisis-language signal of a journal of any length, if its level is a crisis.
pub fn journal_signal(journal: &str) -> Option<events::CrisisSignal> {
    let facts = journal_facts(journal)?;
    if !journal_level(&facts).is_crisis() {
        return None;
    }
    Some(events::CrisisSignal {
        trigger: CRISIS_LANGUAGE_TRIGGER.to_owned(),
        field: "journal".to_owned(),
        text_level: facts.level,
        findings: facts.findings,
        text_bytes_read: facts.bytes_read,
        text_bytes: facts.bytes,
        ..Default::default()
    })
}

/// The crisis signal of a journal the detector could not read: it goes to a human at high
/// as if it held crisis language, rather than not at all.
pub fn unread_journal_signal(journal: &str) -> events::CrisisSignal {
    events::CrisisSignal {
        trigger: CRISIS_LANGUAGE_TRIGGER.to_owned(),
        field: "journal".to_owned(),
        text_level: TextRiskLevel::High.as_str().to_owned(),
        text_bytes: offset(journal.len()),
        ..Default::default()
    }
}

/// Every crisis signal in a submission that is refused, read from the raw request so that
/// nothing it failed validation on can hide one: the answers where a trigger's item sits,
/// and the journal.
pub fn crisis_signals(instruments: &[InstrumentResponse], journal: &str) -> Vec<events::CrisisSignal> {
    let mut signals: Vec<events::CrisisSignal> = instruments
        .iter()
        .enumerate()
        .flat_map(|(index, instrument)| {
            crisis_triggers_in_unparsed(&instrument.instrument, &instrument.answers).into_iter().map(move |trigger| {
                events::CrisisSignal {
                    trigger: trigger.id().to_owned(),
                    field: format!("instruments[{index}]"),
                    instrument: instrument.instrument.clone(),
                    items: items_of(&trigger),
                    ..Default::default()
                }
            })
        })
        .collect();
    signals.extend(journal_signal(journal));
    signals
}

// ---------------------------------------------------------------------------------------
// The risk rules
// ---------------------------------------------------------------------------------------

/// What triage weighs for one event: the facts of a check-in (empty for a missed measure)
/// with the patient's history.
#[derive(Debug, Clone, Copy, Default)]
pub struct RiskInput<'a> {
    /// What check-ins found at submission.
    pub facts: Option<&'a events::CheckInFacts>,
    /// Crisis triggers check-ins reported at submission.
    pub reported_triggers: &'a [String],
    /// Earlier PHQ-9 totals, oldest first, as (unix micros, total).
    pub phq9_history: &'a [(i64, u8)],
    /// When this check-in was submitted (unix micros).
    pub at: i64,
    /// Measures missed in a row, counting this event if it is a miss.
    pub missed_in_a_row: u32,
}

fn firing(rule: &str, level: RiskLevel, evidence: String) -> RuleFiring {
    RuleFiring { rule: rule.to_owned(), level: level as i32, evidence }
}

/// The level of a crisis trigger.
fn trigger_level(trigger: &CrisisTrigger) -> RiskLevel {
    match trigger {
        // C-SSRS: a plan with intent, or behaviour in the past 3 months, is the most urgent
        // screener result (Posner et al. 2011).
        CrisisTrigger::CssrsHighRisk { plan_with_intent: true, .. }
        | CrisisTrigger::CssrsHighRisk { behaviour_past_3_months: true, .. } => RiskLevel::Imminent,
        _ => RiskLevel::High,
    }
}

/// The risk level of what the crisis-language detector found; `None` for nothing.
fn text_risk(level: TextRiskLevel) -> Option<RiskLevel> {
    match level {
        TextRiskLevel::None => None,
        TextRiskLevel::Low => Some(RiskLevel::Low),
        // Passive ideation in words weighs like PHQ-9 item 9, which asks about exactly
        // that and is a crisis trigger (DESIGN.md).
        TextRiskLevel::Moderate | TextRiskLevel::High => Some(RiskLevel::High),
        TextRiskLevel::Imminent => Some(RiskLevel::Imminent),
    }
}

/// The answers in `items`, at their places; an item not given reads as 0, which fires
/// nothing.
fn answers_of(items: &[events::ItemAnswer]) -> Vec<i32> {
    let size = items.iter().map(|item| item.item as usize).max().unwrap_or(0);
    let mut answers = vec![0; size];
    for item in items {
        if let Some(answer) = (item.item as usize).checked_sub(1).and_then(|at| answers.get_mut(at)) {
            *answer = item.answer;
        }
    }
    answers
}

/// The detector's findings in words for a clinician: level, category, rule and byte span,
/// never the text.
fn findings_evidence(findings: &[events::TextFinding]) -> String {
    findings
        .iter()
        .map(|f| {
            format!("{} {} (rule {}) at bytes {}-{}", f.level, f.category.replace('_', " "), f.rule, f.start, f.end)
        })
        .collect::<Vec<_>>()
        .join("; ")
}

fn bytes_read(read: u64, of: u64) -> String {
    if read < of { format!(", first {read} of {of} bytes read") } else { String::new() }
}

/// The firings of crisis trigger `id`, at the level the answers in `items` of `instrument`
/// give it; a trigger they do not reproduce (a newer rule, say) fires at high: a crisis
/// signal is never dropped. `place` says where it was found and `why` (empty for an accepted
/// check-in) how the submission ended.
fn trigger_firings(
    id: &str,
    instrument: &str,
    items: &[events::ItemAnswer],
    place: &str,
    why: &str,
    fired: &mut Vec<RuleFiring>,
) {
    let triggers = crisis_triggers_in_unparsed(instrument, &answers_of(items));
    let matching: Vec<&CrisisTrigger> = triggers.iter().filter(|trigger| trigger.id() == id).collect();
    let suffix = if why.is_empty() { String::new() } else { format!(" {why}") };
    if matching.is_empty() {
        fired.push(firing(id, RiskLevel::High, format!("crisis trigger {id} in {place}{suffix}")));
    }
    for trigger in matching {
        let evidence =
            if why.is_empty() { trigger.evidence() } else { format!("{} ({place}{suffix})", trigger.evidence()) };
        fired.push(firing(trigger.id(), trigger_level(trigger), evidence));
    }
}

/// The firings of one instrument's facts: its crisis triggers at their levels, and a C-SSRS
/// screener at moderate risk. A trigger its items do not reproduce (a newer rule, say) fires
/// at high: a crisis signal is never dropped.
fn instrument_firings(instrument: &events::InstrumentFacts, fired: &mut Vec<RuleFiring>) {
    for id in &instrument.crisis_triggers {
        trigger_firings(id, &instrument.instrument, &instrument.items, &instrument.instrument, "", fired);
    }
    if instrument.cssrs_risk == CssrsRisk::Moderate.as_str() {
        fired.push(firing(
            CSSRS_MODERATE_RULE,
            RiskLevel::Moderate,
            "C-SSRS screener moderate risk: a positive answer without intent, plan or recent behaviour".to_owned(),
        ));
    }
}

/// The rules that fire for `input` under `rules`, each with its level and its evidence in
/// words a clinician can check (no patient text).
pub fn rule_firings(input: &RiskInput<'_>, rules: &TriageRules) -> Vec<RuleFiring> {
    let mut fired = Vec::new();
    let empty = events::CheckInFacts::default();
    let facts = input.facts.unwrap_or(&empty);
    for instrument in &facts.instruments {
        instrument_firings(instrument, &mut fired);
    }
    if let Some(total) = phq9_total(facts) {
        if total >= 20 {
            // PHQ-9 20-27 is severe depression (Kroenke et al. 2001).
            fired.push(firing(
                PHQ9_SEVERE_RULE,
                RiskLevel::Low,
                format!("PHQ-9 total {total} is in the severe band (20-27)"),
            ));
        }
        let mut scores: Vec<(i64, u8)> = input.phq9_history.to_vec();
        scores.push((input.at, total));
        if let Some(trend) = phq9_trend(&scores) {
            let rise = trend.change_from_baseline;
            let threshold = i16::try_from(rules.deterioration_points.max(1)).unwrap_or(i16::MAX);
            if trend.observations > 1 && rise >= threshold {
                fired.push(firing(
                    RELIABLE_DETERIORATION_RULE,
                    RiskLevel::Moderate,
                    format!(
                        "PHQ-9 rose {rise} points from a baseline of {} to {} (threshold {threshold})",
                        trend.baseline.total, trend.latest.total
                    ),
                ));
            }
        }
    }
    let needed = rules.disengagement_missed.max(1);
    if input.missed_in_a_row >= needed {
        fired.push(firing(
            DISENGAGEMENT_RULE,
            RiskLevel::Moderate,
            format!("{} scheduled measures missed in a row (threshold {needed})", input.missed_in_a_row),
        ));
    }
    if let Some(journal) = &facts.journal {
        let level = journal_level(journal);
        if let Some(risk) = text_risk(level) {
            let evidence = format!(
                "crisis language {level} in the journal{}: {}",
                bytes_read(journal.bytes_read, journal.bytes),
                findings_evidence(&journal.findings)
            );
            fired.push(firing(CRISIS_LANGUAGE_TRIGGER, risk, evidence));
        }
    }
    // Triggers check-ins reported that the facts above do not show (a newer rule, say)
    // still count: triage never drops a crisis signal.
    for trigger in input.reported_triggers {
        if !fired.iter().any(|f| &f.rule == trigger) {
            fired.push(firing(trigger, RiskLevel::High, format!("crisis trigger {trigger} fired at check-in")));
        }
    }
    fired
}

/// The rules that fire for a crisis signal check-ins found in a submission it refused: the
/// same triggers at the same levels as for an accepted check-in, read from the signal alone
/// (the refused input never reaches triage). A signal that cannot be read fires at high:
/// triage never drops a crisis signal.
pub fn refused_signal_firings(refused: &events::RefusedCrisisSignal) -> Vec<RuleFiring> {
    let why = format!("in a check-in refused as {}", refused.refusal);
    let mut fired = Vec::new();
    for signal in &refused.signals {
        if signal.trigger == CRISIS_LANGUAGE_TRIGGER {
            let detected = signal.text_level.parse::<TextRiskLevel>().ok().and_then(text_risk);
            let evidence = format!(
                "crisis language {} in the {} {why}{}: {}",
                signal.text_level,
                signal.field,
                bytes_read(signal.text_bytes_read, signal.text_bytes),
                findings_evidence(&signal.findings)
            );
            fired.push(firing(CRISIS_LANGUAGE_TRIGGER, detected.unwrap_or(RiskLevel::High), evidence));
            continue;
        }
        trigger_firings(&signal.trigger, &signal.instrument, &signal.items, &signal.field, &why, &mut fired);
    }
    fired
}

/// The overall level: the highest of the rules that fired.
pub fn overall(fired: &[RuleFiring]) -> RiskLevel {
    fired.iter().map(RuleFiring::level).max_by_key(|level| *level as i32).unwrap_or(RiskLevel::None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::responses::parse_responses;
    use crate::{CSSRS_SCREENER_CODE, PHQ9_ITEM9_TRIGGER};

    const PHQ9: &str = "44249-1";

    fn rules() -> TriageRules {
        TriageRules { deterioration_points: 5, disengagement_missed: 3, ..Default::default() }
    }

    fn facts(instruments: &[(&str, &[i32])], journal: &str) -> events::CheckInFacts {
        let responses: Vec<Responses> = instruments
            .iter()
            .map(|(code, answers)| parse_responses(code, answers).unwrap_or_else(|e| panic!("{code}: {e:?}")))
            .collect();
        assess_check_in(&responses, journal).facts
    }

    fn assess(facts: &events::CheckInFacts) -> Vec<RuleFiring> {
        rule_firings(&RiskInput { facts: Some(facts), ..Default::default() }, &rules())
    }

    #[test]
    fn item_nine_is_high_with_its_evidence() {
        let facts = facts(&[(PHQ9, &[0, 0, 0, 0, 0, 0, 0, 0, 1])], "");
        assert_eq!(crisis_triggers(&facts), [PHQ9_ITEM9_TRIGGER]);
        let fired = assess(&facts);
        assert_eq!(fired.len(), 1, "{fired:?}");
        assert_eq!(fired[0].rule, PHQ9_ITEM9_TRIGGER);
        assert_eq!(overall(&fired), RiskLevel::High);
        assert!(fired[0].evidence.contains("item 9"));
    }

    #[test]
    fn the_facts_carry_every_item_the_total_and_the_band() {
        let facts = facts(&[(PHQ9, &[1, 2, 1, 2, 1, 1, 2, 1, 1])], "");
        let phq9 = &facts.instruments[0];
        assert_eq!(phq9.instrument, PHQ9);
        assert_eq!(phq9.items.len(), 9);
        assert_eq!((phq9.items[8].item, phq9.items[8].answer), (9, 1));
        assert_eq!((phq9.total, phq9.band.as_str()), (Some(12), "moderate"));
        assert_eq!(phq9_total(&facts), Some(12));
        assert!(facts.journal.is_none());
    }

    #[test]
    fn cssrs_plan_with_intent_is_imminent_intent_alone_high_and_a_wish_moderate() {
        let level = |answers: &[i32]| overall(&assess(&facts(&[(CSSRS_SCREENER_CODE, answers)], "")));
        assert_eq!(level(&[1, 1, 1, 1, 1, 0]), RiskLevel::Imminent);
        assert_eq!(level(&[1, 1, 1, 1, 0, 0]), RiskLevel::High);
        assert_eq!(level(&[1, 0, -1, -1, -1, 0]), RiskLevel::Moderate);
    }

    #[test]
    fn a_rise_of_five_over_baseline_is_reliable_deterioration() {
        let history = [(1, 6u8), (2, 8)];
        let at = |facts: &events::CheckInFacts, rules: &TriageRules| {
            rule_firings(&RiskInput { facts: Some(facts), phq9_history: &history, at: 3, ..Default::default() }, rules)
        };
        let eight = facts(&[(PHQ9, &[1, 1, 1, 1, 1, 1, 1, 1, 0])], "");
        assert!(at(&eight, &rules()).iter().all(|f| f.rule != RELIABLE_DETERIORATION_RULE), "8 - 6 = 2");
        let eleven = facts(&[(PHQ9, &[2, 2, 1, 1, 1, 1, 1, 2, 0])], "");
        let fired = at(&eleven, &rules());
        let rule = fired.iter().find(|f| f.rule == RELIABLE_DETERIORATION_RULE).expect("fires at +5");
        assert_eq!(rule.level(), RiskLevel::Moderate);
        assert!(rule.evidence.contains("baseline of 6 to 11"), "{}", rule.evidence);
        // A per-patient override of 6 points does not fire at +5.
        let strict = TriageRules { deterioration_points: 6, ..rules() };
        assert!(at(&eleven, &strict).iter().all(|f| f.rule != RELIABLE_DETERIORATION_RULE));
    }

    #[test]
    fn missed_measures_in_a_row_are_disengagement() {
        assert!(rule_firings(&RiskInput { missed_in_a_row: 2, ..Default::default() }, &rules()).is_empty());
        let fired = rule_firings(&RiskInput { missed_in_a_row: 3, ..Default::default() }, &rules());
        assert_eq!(fired[0].rule, DISENGAGEMENT_RULE);
    }

    #[test]
    fn a_reported_trigger_is_never_dropped() {
        let triggers = ["some-future-rule".to_owned()];
        let fired = rule_firings(&RiskInput { reported_triggers: &triggers, ..Default::default() }, &rules());
        assert_eq!(overall(&fired), RiskLevel::High);
        // Nor one the facts name but their items do not reproduce.
        let mut facts = facts(&[(PHQ9, &[0; 9])], "");
        facts.instruments[0].crisis_triggers.push("phq9-item10".to_owned());
        assert_eq!(overall(&assess(&facts)), RiskLevel::High);
    }

    #[test]
    fn crisis_language_fires_with_its_spans_and_never_its_words() {
        let journal = "Long day at work. i want to kill myself tonight, i have the pills";
        let facts = facts(&[], journal);
        assert_eq!(crisis_triggers(&facts), [CRISIS_LANGUAGE_TRIGGER]);
        let read = facts.journal.as_ref().expect("a journal was read");
        assert_eq!(read.bytes, journal.len() as u64);
        assert!(!read.findings.is_empty());
        let fired = assess(&facts);
        assert_eq!(overall(&fired), RiskLevel::Imminent, "{fired:?}");
        assert!(fired[0].evidence.contains("at bytes"), "{}", fired[0].evidence);
        for words in ["kill myself", "pills", "tonight", "work"] {
            assert!(!format!("{facts:?}{fired:?}").contains(words), "{words} travelled");
        }
        let calm = facts_of("I'm not going to hurt myself. This homework is killing me.");
        assert!(crisis_triggers(&calm).is_empty());
        assert_eq!(overall(&assess(&calm)), RiskLevel::None);
    }

    fn facts_of(journal: &str) -> events::CheckInFacts {
        facts(&[], journal)
    }

    #[test]
    fn text_never_lowers_a_structured_trigger() {
        let facts = facts(&[(PHQ9, &[0, 0, 0, 0, 0, 0, 0, 0, 2])], "feeling fine today");
        assert_eq!(overall(&assess(&facts)), RiskLevel::High);
    }

    #[test]
    fn an_unreadable_journal_level_still_fires_at_high() {
        let mut facts = facts_of("i want to kill myself");
        if let Some(journal) = facts.journal.as_mut() {
            journal.level = "??".to_owned();
        }
        assert_eq!(crisis_triggers(&facts), [CRISIS_LANGUAGE_TRIGGER]);
        assert_eq!(overall(&assess(&facts)), RiskLevel::High);
    }

    #[test]
    fn unvalidated_input_is_assessed_as_at_submission_and_garbage_keeps_its_triggers() {
        let raw = |instrument: &str, answers: &[i32]| InstrumentResponse {
            instrument: instrument.to_owned(),
            answers: answers.to_vec(),
        };
        let journal = "i want to kill myself";
        let valid = assess_unvalidated(&[raw(PHQ9, &[0, 0, 0, 0, 0, 0, 0, 0, 1])], journal);
        assert_eq!(valid, facts(&[(PHQ9, &[0, 0, 0, 0, 0, 0, 0, 0, 1])], journal));
        let garbled = assess_unvalidated(&[raw(PHQ9, &[9, 0, 0, 0, 0, 0, 0, 0, 2])], "");
        assert_eq!(crisis_triggers(&garbled), [PHQ9_ITEM9_TRIGGER]);
        assert_eq!(garbled.instruments[0].total, None);
        assert_eq!(overall(&assess(&garbled)), RiskLevel::High);
    }

    #[test]
    fn a_refused_signal_fires_as_the_accepted_check_in_would() {
        let signal = |trigger: &str, instrument: &str, items: &[(u32, i32)]| events::CrisisSignal {
            trigger: trigger.into(),
            field: "instruments[0]".into(),
            instrument: instrument.into(),
            items: items.iter().map(|&(item, answer)| events::ItemAnswer { item, answer }).collect(),
            ..Default::default()
        };
        let refused = |signals: Vec<events::CrisisSignal>| events::RefusedCrisisSignal {
            refusal: "invalid_argument".into(),
            signals,
            ..Default::default()
        };
        let phq9 = refused_signal_firings(&refused(vec![signal(PHQ9_ITEM9_TRIGGER, PHQ9, &[(9, 2)])]));
        assert_eq!(overall(&phq9), RiskLevel::High);
        assert!(phq9[0].evidence.contains("item 9") && phq9[0].evidence.contains("refused"), "{phq9:?}");
        let high = crate::CSSRS_HIGH_RISK_TRIGGER;
        let plan = refused_signal_firings(&refused(vec![signal(high, CSSRS_SCREENER_CODE, &[(5, 1)])]));
        assert_eq!(overall(&plan), RiskLevel::Imminent, "{plan:?}");
        let intent = refused_signal_firings(&refused(vec![signal(high, CSSRS_SCREENER_CODE, &[(4, 1)])]));
        assert_eq!(overall(&intent), RiskLevel::High);
        // A trigger this version cannot re-read still fires.
        let unknown = refused_signal_firings(&refused(vec![signal("some-future-rule", "x", &[])]));
        assert_eq!(overall(&unknown), RiskLevel::High);
        let text = events::CrisisSignal {
            trigger: CRISIS_LANGUAGE_TRIGGER.into(),
            field: "journal".into(),
            text_level: "imminent".into(),
            findings: vec![events::TextFinding {
                category: "active_thoughts".into(),
                level: "high".into(),
                rule: "kill-self".into(),
                start: 40_000,
                end: 40_011,
            }],
            text_bytes_read: 32_000,
            text_bytes: 90_000,
            ..Default::default()
        };
        let fired = refused_signal_firings(&refused(vec![text.clone()]));
        assert_eq!(overall(&fired), RiskLevel::Imminent);
        assert!(fired[0].evidence.contains("bytes 40000-40011"), "{}", fired[0].evidence);
        assert!(fired[0].evidence.contains("first 32000 of 90000 bytes read"), "{}", fired[0].evidence);
        let moderate = refused_signal_firings(&refused(vec![events::CrisisSignal {
            text_level: "moderate".into(),
            ..text.clone()
        }]));
        assert_eq!(overall(&moderate), RiskLevel::High, "passive ideation weighs like item 9");
        let garbled = refused_signal_firings(&refused(vec![events::CrisisSignal { text_level: "??".into(), ..text }]));
        assert_eq!(overall(&garbled), RiskLevel::High, "an unreadable level still fires");
    }

    #[test]
    fn refused_signals_come_from_the_raw_answers_and_the_journal() {
        let raw = |instrument: &str, answers: &[i32]| InstrumentResponse {
            instrument: instrument.to_owned(),
            answers: answers.to_vec(),
        };
        let signals = crisis_signals(&[raw(PHQ9, &[0, 0, 0, 0, 0, 0, 0, 9, 2])], "i want to kill myself");
        let triggers: Vec<&str> = signals.iter().map(|s| s.trigger.as_str()).collect();
        assert_eq!(triggers, [PHQ9_ITEM9_TRIGGER, CRISIS_LANGUAGE_TRIGGER]);
        assert_eq!(signals[0].field, "instruments[0]");
        assert_eq!((signals[0].items[0].item, signals[0].items[0].answer), (9, 2));
        assert!(crisis_signals(&[], "a calm day").is_empty());
        assert_eq!(unread_journal_signal("abc").text_bytes, 3);
    }

    #[test]
    fn a_calm_check_in_fires_nothing() {
        let facts = facts(&[(PHQ9, &[0, 1, 0, 1, 0, 0, 0, 0, 0])], "went for a walk with my sister");
        assert!(crisis_triggers(&facts).is_empty());
        assert_eq!(overall(&assess(&facts)), RiskLevel::None);
    }
}
