//! Property tests over the public API: scoring bounds, band order, C-SSRS risk rules,
//! and that no input — however malformed — makes parsing panic or lose a crisis signal.

use proptest::prelude::*;
use tandem_clinical::{
    Band, CrisisTrigger, CssrsRisk, Instrument, JOURNAL_MAX_CHARS, crisis_triggers_in_unparsed, gad7_band,
    parse_instruments, parse_responses, parse_responses_at, phq9_band, phq9_trend, score, validate_journal,
    validate_mood,
};

fn likert(items: usize) -> impl Strategy<Value = Vec<i32>> {
    prop::collection::vec(0..=3i32, items)
}

/// Any C-SSRS answers the branching allows.
fn valid_cssrs() -> impl Strategy<Value = Vec<i32>> {
    (0..=1i32, prop::option::of((0..=1i32, 0..=1i32, 0..=1i32)), 0..=1i32).prop_map(|(q1, follow_ups, q6)| {
        match follow_ups {
            Some((q3, q4, q5)) => vec![q1, 1, q3, q4, q5, q6],
            None => vec![q1, 0, -1, -1, -1, q6],
        }
    })
}

/// Codes that hit an instrument, its aliases, near misses and noise.
fn any_code() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("44249-1".to_owned()),
        Just("69737-5".to_owned()),
        Just("cssrs-screener".to_owned()),
        Just("PHQ9".to_owned()),
        Just("gad-7".to_owned()),
        Just("44261-6".to_owned()),
        any::<String>(),
    ]
}

fn trigger_ids(triggers: &[CrisisTrigger]) -> Vec<&'static str> {
    triggers.iter().map(CrisisTrigger::id).collect()
}

proptest! {
    #[test]
    fn phq9_total_is_the_item_sum_within_0_to_27(answers in likert(9)) {
        let responses = parse_responses("44249-1", &answers).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let result = score(&responses);
        let expected: i32 = answers.iter().sum();
        prop_assert_eq!(result.total.map(i32::from), Some(expected));
        prop_assert!(result.total.is_some_and(|total| total <= 27));
        prop_assert_eq!(result.band, phq9_band(result.total.unwrap_or_default()));
    }

    #[test]
    fn gad7_total_is_the_item_sum_within_0_to_21(answers in likert(7)) {
        let responses = parse_responses("69737-5", &answers).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let result = score(&responses);
        let expected: i32 = answers.iter().sum();
        prop_assert_eq!(result.total.map(i32::from), Some(expected));
        prop_assert!(result.total.is_some_and(|total| total <= 21));
        prop_assert!(result.crisis_triggers.is_empty());
    }

    #[test]
    fn bands_never_get_milder_as_the_total_rises(low in 0u8..=27, high in 0u8..=27) {
        let (low, high) = (low.min(high), low.max(high));
        prop_assert!(phq9_band(low).rank() <= phq9_band(high).rank());
        let (gad_low, gad_high) = (low.min(21), high.min(21));
        prop_assert!(gad7_band(gad_low).rank() <= gad7_band(gad_high).rank());
    }

    #[test]
    fn phq9_item9_triggers_exactly_when_it_is_1_or_more(answers in likert(9)) {
        let responses = parse_responses("44249-1", &answers).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let result = score(&responses);
        let item9 = answers.get(8).copied().unwrap_or_default();
        let expected: Vec<&str> = if item9 >= 1 { vec!["phq9-item9"] } else { vec![] };
        prop_assert_eq!(trigger_ids(&result.crisis_triggers), expected);
    }

    #[test]
    fn cssrs_intent_or_plan_after_q2_yes_is_always_high(
        q1 in 0..=1i32, q3 in 0..=1i32, q4 in 0..=1i32, q5 in 0..=1i32, q6 in 0..=1i32,
    ) {
        prop_assume!(q4 == 1 || q5 == 1);
        let responses = parse_responses("cssrs-screener", &[q1, 1, q3, q4, q5, q6])
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        let result = score(&responses);
        prop_assert_eq!(result.cssrs_risk, Some(CssrsRisk::High));
        prop_assert_eq!(result.band, Band::HighRisk);
        prop_assert_eq!(trigger_ids(&result.crisis_triggers), vec!["cssrs-high-risk"]);
    }

    #[test]
    fn cssrs_risk_follows_the_screener_rules(answers in valid_cssrs()) {
        let responses = parse_responses("cssrs-screener", &answers).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let result = score(&responses);
        let yes = |index: usize| answers.get(index) == Some(&1);
        let expected = if yes(3) || yes(4) || yes(5) {
            CssrsRisk::High
        } else if answers.contains(&1) {
            CssrsRisk::Moderate
        } else {
            CssrsRisk::Low
        };
        prop_assert_eq!(result.cssrs_risk, Some(expected));
        prop_assert_eq!(result.total, None);
        // Only high risk is an immediate crisis trigger; moderate is a signal for the clinician.
        prop_assert_eq!(result.is_crisis(), expected == CssrsRisk::High);
    }

    #[test]
    fn cssrs_follow_ups_after_q2_no_are_rejected_at_their_index(
        q1 in 0..=1i32, q6 in 0..=1i32, answered in 2usize..=4, value in 0..=1i32,
    ) {
        let mut answers = vec![q1, 0, -1, -1, -1, q6];
        if let Some(slot) = answers.get_mut(answered) {
            *slot = value;
        }
        let Err(errors) = parse_responses_at(4, "cssrs-screener", &answers) else {
            return Err(TestCaseError::fail("follow-up after Q2 no must be rejected"));
        };
        let fields: Vec<&str> = errors.violations().iter().map(|v| v.field.as_str()).collect();
        let expected = format!("instruments[4].answers[{answered}]");
        prop_assert_eq!(fields, vec![expected.as_str()]);
    }

    #[test]
    fn parse_never_panics_and_parsed_input_is_always_in_bounds(
        code in any_code(),
        answers in prop_oneof![
            likert(9),
            likert(7),
            valid_cssrs(),
            prop::collection::vec(prop_oneof![-2..=4i32, any::<i32>()], 0..12),
        ],
        index in 0usize..8,
    ) {
        match parse_responses_at(index, &code, &answers) {
            Ok(responses) => {
                let result = score(&responses);
                let max = responses.instrument().definition().max_total;
                prop_assert_eq!(result.total.is_some(), max.is_some());
                prop_assert!(result.total <= max);
                prop_assert_eq!(responses.to_wire(), answers.clone());
                // The rescue path for rejected input agrees with scoring on valid input.
                prop_assert_eq!(crisis_triggers_in_unparsed(&code, &answers), result.crisis_triggers);
            }
            Err(errors) => {
                prop_assert!(!errors.is_empty());
                let prefix = format!("instruments[{index}].");
                for violation in errors.violations() {
                    prop_assert!(violation.field.starts_with(&prefix), "{}", violation.field);
                    prop_assert!(!violation.description.is_empty());
                }
            }
        }
    }

    #[test]
    fn a_check_in_never_accepts_an_instrument_twice(
        codes in prop::collection::vec(prop_oneof![
            Just("44249-1"), Just("phq-9"), Just("69737-5"), Just("GAD7"), Just("cssrs-screener"),
        ], 0..6),
    ) {
        let phq9 = [0; 9];
        let gad7 = [0; 7];
        let cssrs = [0, 0, -1, -1, -1, 0];
        let submissions: Vec<(&str, &[i32])> = codes
            .iter()
            .map(|&code| match Instrument::from_code(code) {
                Some(Instrument::Phq9) => (code, &phq9[..]),
                Some(Instrument::Gad7) => (code, &gad7[..]),
                _ => (code, &cssrs[..]),
            })
            .collect();
        let mut distinct: Vec<Option<Instrument>> = codes.iter().map(|code| Instrument::from_code(code)).collect();
        distinct.sort();
        distinct.dedup();
        let result = parse_instruments(submissions);
        prop_assert_eq!(result.is_ok(), distinct.len() == codes.len());
    }

    #[test]
    fn trend_flags_follow_their_definitions(
        scores in prop::collection::vec((any::<i64>(), 0u8..=27), 1..20),
    ) {
        let Some(trend) = phq9_trend(&scores) else {
            return Err(TestCaseError::fail("non-empty input has a trend"));
        };
        let baseline = i16::from(trend.baseline.total);
        let latest = i16::from(trend.latest.total);
        prop_assert!(scores.iter().all(|(at, _)| trend.baseline.at <= *at && *at <= trend.latest.at));
        prop_assert_eq!(trend.change_from_baseline, latest - baseline);
        prop_assert_eq!(trend.reliable_deterioration, latest - baseline >= 5);
        prop_assert_eq!(trend.response, baseline > 0 && latest * 2 <= baseline);
        prop_assert_eq!(trend.remission, latest < 5);
        prop_assert!(!(trend.reliable_deterioration && trend.response));
        prop_assert_eq!(trend.observations, scores.len());
    }

    #[test]
    fn mood_is_valid_exactly_from_0_to_10(mood in any::<i32>()) {
        let parsed = validate_mood(Some(mood));
        prop_assert_eq!(parsed.is_ok(), (0..=10).contains(&mood));
        if let Ok(Some(valid)) = parsed {
            prop_assert_eq!(i32::from(valid.value()), mood);
        }
    }

    #[test]
    fn journal_within_the_limit_is_kept_verbatim(text in "[^\u{0}]{0,300}") {
        let journal = validate_journal(&text).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(journal.as_str(), text.as_str());
    }
}

#[test]
fn journal_limit_is_exact_for_multibyte_text() {
    let emoji_at_limit = "🙂".repeat(JOURNAL_MAX_CHARS);
    assert!(validate_journal(&emoji_at_limit).is_ok());
    let emoji_over = "🙂".repeat(JOURNAL_MAX_CHARS + 1);
    assert!(validate_journal(&emoji_over).is_err());
}
