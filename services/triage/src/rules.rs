//! The triage rules: every check-in and missed measure is assessed with the
//! patient's history, and each rule that fires says why (rule, evidence,
//! level). Pure: the clinical facts come from tandem-clinical.

use tandem_clinical::{CrisisTrigger, CssrsRisk, Instrument, Responses, TextRiskLevel};
use tandem_proto::checkins::v1::InstrumentResponse;
use tandem_proto::events::v1::RefusedCrisisSignal;
use tandem_proto::triage::v1::{RiskLevel, RuleFiring, TriageRules};

/// What one assessment looks at.
#[derive(Debug, Clone, Default)]
pub struct Input<'a> {
    /// Crisis triggers checkins reported at submission.
    pub crisis_triggers: &'a [String],
    /// The instrument answers as submitted.
    pub instruments: &'a [InstrumentResponse],
    /// Earlier PHQ-9 totals, oldest first, as (unix micros, total).
    pub phq9_history: &'a [(i64, u8)],
    /// When this check-in was submitted (unix micros).
    pub at: i64,
    /// Measures missed in a row, counting this event if it is a miss.
    pub missed_in_a_row: u32,
    /// The journal text, for the crisis-language detector.
    pub journal: &'a str,
}

fn firing(rule: &str, level: RiskLevel, evidence: String) -> RuleFiring {
    RuleFiring { rule: rule.to_owned(), level: level as i32, evidence }
}

/// The rules that fire for `input` under `rules`.
pub fn assess(input: &Input<'_>, rules: &TriageRules) -> Vec<RuleFiring> {
    let mut fired = Vec::new();
    let mut phq9_total = None;
    for response in input.instruments {
        // checkins validated these answers; one that does not parse here is
        // skipped, and the trigger it reported is still honoured below.
        let Ok(parsed) = tandem_clinical::parse_responses(&response.instrument, &response.answers) else {
            continue;
        };
        let score = tandem_clinical::score(&parsed);
        for trigger in &score.crisis_triggers {
            fired.push(firing(trigger.id(), trigger_level(trigger), trigger.evidence()));
        }
        if score.cssrs_risk == Some(CssrsRisk::Moderate) {
            fired.push(firing(
                "cssrs-moderate",
                RiskLevel::Moderate,
                "C-SSRS screener moderate risk: a positive answer without intent, plan or recent behaviour".to_owned(),
            ));
        }
        if let Responses::Phq9(phq9) = &parsed {
            phq9_total = Some(phq9.total());
            if phq9.total() >= 20 {
                // PHQ-9 20-27 is severe depression (Kroenke et al. 2001).
                fired.push(firing(
                    "phq9-severe",
                    RiskLevel::Low,
                    format!("PHQ-9 total {} is in the severe band (20-27)", phq9.total()),
                ));
            }
        }
        debug_assert!(parsed.instrument() != Instrument::Phq9 || phq9_total.is_some());
    }
    if let Some(total) = phq9_total {
        let mut scores: Vec<(i64, u8)> = input.phq9_history.to_vec();
        scores.push((input.at, total));
        if let Some(trend) = tandem_clinical::phq9_trend(&scores) {
            let rise = trend.change_from_baseline;
            let threshold = i16::try_from(rules.deterioration_points.max(1)).unwrap_or(i16::MAX);
            if trend.observations > 1 && rise >= threshold {
                fired.push(firing(
                    "reliable-deterioration",
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
            "disengagement",
            RiskLevel::Moderate,
            format!("{} scheduled measures missed in a row (threshold {needed})", input.missed_in_a_row),
        ));
    }
    fired.extend(detector_firings(input.journal));
    // Triggers checkins reported that the answers above did not reproduce
    // (a newer rule, say) still count: triage never drops a crisis signal.
    for trigger in input.crisis_triggers {
        if !fired.iter().any(|f| &f.rule == trigger) {
            fired.push(firing(trigger, RiskLevel::High, format!("crisis trigger {trigger} fired at check-in")));
        }
    }
    fired
}

/// The level of a crisis trigger.
fn trigger_level(trigger: &CrisisTrigger) -> RiskLevel {
    match trigger {
        // C-SSRS: a plan with intent, or behaviour in the past 3
        // months, is the most urgent screener result (Posner et al. 2011).
        CrisisTrigger::CssrsHighRisk { plan_with_intent: true, .. }
        | CrisisTrigger::CssrsHighRisk { behaviour_past_3_months: true, .. } => RiskLevel::Imminent,
        _ => RiskLevel::High,
    }
}

/// The level of what the crisis-language detector found; `None` for nothing.
fn text_level(level: TextRiskLevel) -> Option<RiskLevel> {
    match level {
        TextRiskLevel::None => None,
        TextRiskLevel::Low => Some(RiskLevel::Low),
        // Passive ideation in words weighs like PHQ-9 item 9, which asks about
        // exactly that and is a crisis trigger (DESIGN.md).
        TextRiskLevel::Moderate | TextRiskLevel::High => Some(RiskLevel::High),
        TextRiskLevel::Imminent => Some(RiskLevel::Imminent),
    }
}

/// Firings of the crisis-language detector on journal text. It only ever
/// adds findings: it never lowers a structured trigger.
fn detector_firings(journal: &str) -> Vec<RuleFiring> {
    if journal.trim().is_empty() {
        return Vec::new();
    }
    let detection = tandem_clinical::detect(journal);
    let Some(level) = text_level(detection.level) else { return Vec::new() };
    vec![firing(CRISIS_LANGUAGE_TRIGGER, level, detection.evidence().join("; "))]
}

/// The rules that fire for a crisis signal check-ins found in a submission
/// it refused: the same triggers at the same levels as for an accepted
/// check-in, read from the signal alone (the refused input never reaches
/// triage). A signal that cannot be read fires at High: triage never drops
/// a crisis signal.
pub fn refused_signal_firings(refused: &RefusedCrisisSignal) -> Vec<RuleFiring> {
    let why = format!("in a check-in refused as {}", refused.refusal);
    let mut fired = Vec::new();
    for signal in &refused.signals {
        if signal.trigger == CRISIS_LANGUAGE_TRIGGER {
            let detected = signal.text_level.parse::<TextRiskLevel>().ok().and_then(text_level);
            let findings = signal
                .findings
                .iter()
                .map(|f| {
                    format!(
                        "{} {} (rule {}) at bytes {}-{}",
                        f.level,
                        f.category.replace('_', " "),
                        f.rule,
                        f.start,
                        f.end
                    )
                })
                .collect::<Vec<_>>()
                .join("; ");
            let read = if signal.text_bytes_read < signal.text_bytes {
                format!(", first {} of {} bytes read", signal.text_bytes_read, signal.text_bytes)
            } else {
                String::new()
            };
            let evidence =
                format!("crisis language {} in the {} {why}{read}: {findings}", signal.text_level, signal.field);
            fired.push(firing(CRISIS_LANGUAGE_TRIGGER, detected.unwrap_or(RiskLevel::High), evidence));
            continue;
        }
        // The answers of the items that fired, at their places; every other
        // item reads as 0, which fires nothing.
        let size = signal.items.iter().map(|item| item.item as usize).max().unwrap_or(0);
        let mut answers = vec![0; size];
        for item in &signal.items {
            if let Some(answer) = (item.item as usize).checked_sub(1).and_then(|at| answers.get_mut(at)) {
                *answer = item.answer;
            }
        }
        let triggers = tandem_clinical::crisis_triggers_in_unparsed(&signal.instrument, &answers);
        let matching: Vec<_> = triggers.iter().filter(|trigger| trigger.id() == signal.trigger).collect();
        if matching.is_empty() {
            fired.push(firing(
                &signal.trigger,
                RiskLevel::High,
                format!("crisis trigger {} in {} {why}", signal.trigger, signal.field),
            ));
        }
        for trigger in matching {
            fired.push(firing(
                trigger.id(),
                trigger_level(trigger),
                format!("{} ({} {why})", trigger.evidence(), signal.field),
            ));
        }
    }
    fired
}

/// The trigger id of the crisis-language detector, as checkins reports it.
pub const CRISIS_LANGUAGE_TRIGGER: &str = "crisis-language";

/// The overall level: the highest of the rules that fired.
pub fn overall(fired: &[RuleFiring]) -> RiskLevel {
    fired.iter().map(RuleFiring::level).max_by_key(|level| *level as i32).unwrap_or(RiskLevel::None)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules() -> TriageRules {
        crate::config::TriageSettings::default().default_rules()
    }

    fn phq9(answers: [i32; 9]) -> InstrumentResponse {
        InstrumentResponse { instrument: "44249-1".into(), answers: answers.to_vec() }
    }

    #[test]
    fn item_nine_is_high_with_its_evidence() {
        let instruments = [phq9([0, 0, 0, 0, 0, 0, 0, 0, 1])];
        let triggers = ["phq9-item9".to_owned()];
        let fired =
            assess(&Input { instruments: &instruments, crisis_triggers: &triggers, ..Default::default() }, &rules());
        assert_eq!(fired.len(), 1, "{fired:?}");
        assert_eq!(fired[0].rule, "phq9-item9");
        assert_eq!(overall(&fired), RiskLevel::High);
        assert!(fired[0].evidence.contains("item 9"));
    }

    #[test]
    fn cssrs_plan_with_intent_is_imminent_and_intent_alone_high() {
        let plan = [InstrumentResponse { instrument: "cssrs-screener".into(), answers: vec![1, 1, 1, 1, 1, 0] }];
        assert_eq!(
            overall(&assess(&Input { instruments: &plan, ..Default::default() }, &rules())),
            RiskLevel::Imminent
        );
        let intent = [InstrumentResponse { instrument: "cssrs-screener".into(), answers: vec![1, 1, 1, 1, 0, 0] }];
        assert_eq!(overall(&assess(&Input { instruments: &intent, ..Default::default() }, &rules())), RiskLevel::High);
        let wish = [InstrumentResponse { instrument: "cssrs-screener".into(), answers: vec![1, 0, -1, -1, -1, 0] }];
        assert_eq!(
            overall(&assess(&Input { instruments: &wish, ..Default::default() }, &rules())),
            RiskLevel::Moderate
        );
    }

    #[test]
    fn a_rise_of_five_over_baseline_is_reliable_deterioration() {
        let history = [(1, 6u8), (2, 8)];
        let instruments = [phq9([1, 1, 1, 1, 1, 1, 1, 1, 0])]; // 8? no: 8 ones = 8
        let fired =
            assess(&Input { instruments: &instruments, phq9_history: &history, at: 3, ..Default::default() }, &rules());
        assert!(fired.iter().all(|f| f.rule != "reliable-deterioration"), "8 - 6 = 2: {fired:?}");
        let instruments = [phq9([2, 2, 1, 1, 1, 1, 1, 2, 0])]; // 11 = 6 + 5
        let fired =
            assess(&Input { instruments: &instruments, phq9_history: &history, at: 3, ..Default::default() }, &rules());
        let rule = fired.iter().find(|f| f.rule == "reliable-deterioration").expect("fires at +5");
        assert_eq!(rule.level(), RiskLevel::Moderate);
        assert!(rule.evidence.contains("baseline of 6 to 11"), "{}", rule.evidence);
        // A per-patient override of 6 points does not fire at +5.
        let mut strict = rules();
        strict.deterioration_points = 6;
        let fired =
            assess(&Input { instruments: &instruments, phq9_history: &history, at: 3, ..Default::default() }, &strict);
        assert!(fired.iter().all(|f| f.rule != "reliable-deterioration"));
    }

    #[test]
    fn missed_measures_in_a_row_are_disengagement() {
        assert!(assess(&Input { missed_in_a_row: 2, ..Default::default() }, &rules()).is_empty());
        let fired = assess(&Input { missed_in_a_row: 3, ..Default::default() }, &rules());
        assert_eq!(fired[0].rule, "disengagement");
    }

    #[test]
    fn a_reported_trigger_is_never_dropped() {
        let triggers = ["some-future-rule".to_owned()];
        let fired = assess(&Input { crisis_triggers: &triggers, ..Default::default() }, &rules());
        assert_eq!(overall(&fired), RiskLevel::High);
    }

    #[test]
    fn crisis_language_in_the_journal_raises_and_negation_does_not() {
        let fired = assess(
            &Input { journal: "i want to kill myself tonight, i have the pills", ..Default::default() },
            &rules(),
        );
        assert_eq!(overall(&fired), RiskLevel::Imminent, "{fired:?}");
        assert!(fired[0].evidence.contains("kill myself"));
        let calm = assess(
            &Input { journal: "I'm not going to hurt myself. This homework is killing me.", ..Default::default() },
            &rules(),
        );
        assert_eq!(overall(&calm), RiskLevel::None, "{calm:?}");
    }

    #[test]
    fn text_never_lowers_a_structured_trigger() {
        let instruments = [phq9([0, 0, 0, 0, 0, 0, 0, 0, 2])];
        let fired =
            assess(&Input { instruments: &instruments, journal: "feeling fine today", ..Default::default() }, &rules());
        assert_eq!(overall(&fired), RiskLevel::High);
    }

    #[test]
    fn a_refused_signal_fires_as_the_accepted_check_in_would() {
        use tandem_proto::events::v1::{CrisisSignal, ItemAnswer, TextFinding};
        let signal = |trigger: &str, instrument: &str, items: &[(u32, i32)]| CrisisSignal {
            trigger: trigger.into(),
            field: "instruments[0]".into(),
            instrument: instrument.into(),
            items: items.iter().map(|&(item, answer)| ItemAnswer { item, answer }).collect(),
            ..Default::default()
        };
        let refused = |signals: Vec<CrisisSignal>| RefusedCrisisSignal {
            refusal: "invalid_argument".into(),
            signals,
            ..Default::default()
        };
        let phq9 = refused_signal_firings(&refused(vec![signal("phq9-item9", "44249-1", &[(9, 2)])]));
        assert_eq!(overall(&phq9), RiskLevel::High);
        assert!(phq9[0].evidence.contains("item 9") && phq9[0].evidence.contains("refused"), "{phq9:?}");
        let plan = refused_signal_firings(&refused(vec![signal("cssrs-high-risk", "cssrs-screener", &[(5, 1)])]));
        assert_eq!(overall(&plan), RiskLevel::Imminent, "{plan:?}");
        let intent = refused_signal_firings(&refused(vec![signal("cssrs-high-risk", "cssrs-screener", &[(4, 1)])]));
        assert_eq!(overall(&intent), RiskLevel::High);
        // A trigger this version cannot re-read still fires.
        let unknown = refused_signal_firings(&refused(vec![signal("some-future-rule", "x", &[])]));
        assert_eq!(overall(&unknown), RiskLevel::High);
        let text = CrisisSignal {
            trigger: CRISIS_LANGUAGE_TRIGGER.into(),
            field: "journal".into(),
            text_level: "imminent".into(),
            findings: vec![TextFinding {
                category: "suicidal_ideation".into(),
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
        let moderate =
            refused_signal_firings(&refused(vec![CrisisSignal { text_level: "moderate".into(), ..text.clone() }]));
        assert_eq!(overall(&moderate), RiskLevel::High, "passive ideation weighs like item 9");
        let garbled = refused_signal_firings(&refused(vec![CrisisSignal { text_level: "??".into(), ..text }]));
        assert_eq!(overall(&garbled), RiskLevel::High, "an unreadable level still fires");
    }

    #[test]
    fn nothing_fires_for_a_calm_check_in() {
        let instruments = [phq9([0, 1, 0, 1, 0, 0, 0, 0, 0])];
        assert_eq!(
            overall(&assess(&Input { instruments: &instruments, ..Default::default() }, &rules())),
            RiskLevel::None
        );
    }
}
