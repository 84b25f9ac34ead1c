//! Parsing a patient's answers from the wire (`repeated int32 answers`) into typed responses.
//! A value of these types is valid by construction: scoring never re-checks it.

use serde::{Deserialize, Serialize};

use crate::error::ValidationErrors;
use crate::instrument::{Instrument, SKIPPED, parse_instrument};

/// How often a PHQ-9 or GAD-7 problem bothered the patient over the last 2 weeks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Frequency {
    /// "Not at all", scored 0.
    NotAtAll,
    /// "Several days", scored 1.
    SeveralDays,
    /// "More than half the days", scored 2.
    MoreThanHalfTheDays,
    /// "Nearly every day", scored 3.
    NearlyEveryDay,
}

impl Frequency {
    /// Every option, from 0 to 3.
    pub const ALL: [Frequency; 4] =
        [Self::NotAtAll, Self::SeveralDays, Self::MoreThanHalfTheDays, Self::NearlyEveryDay];

    /// The option for a wire value 0-3, or `None` for anything else.
    pub fn from_value(value: i32) -> Option<Self> {
        match value {
            0 => Some(Self::NotAtAll),
            1 => Some(Self::SeveralDays),
            2 => Some(Self::MoreThanHalfTheDays),
            3 => Some(Self::NearlyEveryDay),
            _ => None,
        }
    }

    /// The item score, 0-3.
    pub fn value(self) -> u8 {
        match self {
            Self::NotAtAll => 0,
            Self::SeveralDays => 1,
            Self::MoreThanHalfTheDays => 2,
            Self::NearlyEveryDay => 3,
        }
    }

    /// The label the patient saw.
    pub fn label(self) -> &'static str {
        match self {
            Self::NotAtAll => "Not at all",
            Self::SeveralDays => "Several days",
            Self::MoreThanHalfTheDays => "More than half the days",
            Self::NearlyEveryDay => "Nearly every day",
        }
    }
}

/// A complete PHQ-9: all nine items answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Phq9Responses {
    /// Items 1-9 in order.
    pub items: [Frequency; 9],
}

impl Phq9Responses {
    /// Item 9: thoughts of being better off dead or of hurting oneself.
    pub fn item9(&self) -> Frequency {
        let [.., item9] = self.items;
        item9
    }

    /// The total score, 0-27.
    pub fn total(&self) -> u8 {
        sum(&self.items)
    }
}

/// A complete GAD-7: all seven items answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Gad7Responses {
    /// Items 1-7 in order.
    pub items: [Frequency; 7],
}

impl Gad7Responses {
    /// The total score, 0-21.
    pub fn total(&self) -> u8 {
        sum(&self.items)
    }
}

fn sum(items: &[Frequency]) -> u8 {
    // At most 9 items of at most 3: cannot overflow a u8.
    items.iter().map(|item| item.value()).sum()
}

/// The C-SSRS follow-up questions, asked only after a yes to Q2.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub struct ActiveIdeation {
    /// Q3: thought about how (a method), without a specific plan or intent.
    pub method: bool,
    /// Q4: some intention of acting on the thoughts, without a specific plan.
    pub intent: bool,
    /// Q5: worked out details of a plan and intends to carry it out.
    pub plan_with_intent: bool,
}

/// A complete C-SSRS screener. Q3-Q5 exist exactly when Q2 was yes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub struct CssrsResponses {
    /// Q1 (past month): wished to be dead, or to go to sleep and not wake up.
    pub wish_to_be_dead: bool,
    /// Q2 (past month) yes, with the answers to Q3-Q5; `None` when Q2 was no.
    pub suicidal_thoughts: Option<ActiveIdeation>,
    /// Q6: did, started or prepared anything to end their life in the past 3 months.
    pub behaviour_past_3_months: bool,
}

/// One instrument's answers, parsed and valid.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "instrument", content = "responses")]
pub enum Responses {
    /// PHQ-9 answers.
    #[serde(rename = "44249-1")]
    Phq9(Phq9Responses),
    /// GAD-7 answers.
    #[serde(rename = "69737-5")]
    Gad7(Gad7Responses),
    /// C-SSRS screener answers.
    #[serde(rename = "cssrs-screener")]
    CssrsScreener(CssrsResponses),
}

impl Responses {
    /// Which instrument was answered.
    pub fn instrument(&self) -> Instrument {
        match self {
            Self::Phq9(_) => Instrument::Phq9,
            Self::Gad7(_) => Instrument::Gad7,
            Self::CssrsScreener(_) => Instrument::CssrsScreener,
        }
    }

    /// The answers in wire form, as [`parse_answers`] accepts them (for storage and replay).
    pub fn to_wire(&self) -> Vec<i32> {
        match self {
            Self::Phq9(responses) => frequencies_to_wire(&responses.items),
            Self::Gad7(responses) => frequencies_to_wire(&responses.items),
            Self::CssrsScreener(responses) => {
                let yes_no = |answer: bool| i32::from(answer);
                let (q2, [q3, q4, q5]) = match responses.suicidal_thoughts {
                    Some(ideation) => {
                        (1, [yes_no(ideation.method), yes_no(ideation.intent), yes_no(ideation.plan_with_intent)])
                    }
                    None => (0, [SKIPPED; 3]),
                };
                vec![yes_no(responses.wish_to_be_dead), q2, q3, q4, q5, yes_no(responses.behaviour_past_3_months)]
            }
        }
    }
}

fn frequencies_to_wire(items: &[Frequency]) -> Vec<i32> {
    items.iter().map(|item| i32::from(item.value())).collect()
}

/// Parses one instrument's answers as the API sends them. Field paths in errors are
/// relative to the instrument message (`instrument`, `answers`, `answers[3]`); nest them with
/// [`ValidationErrors::nested_under`] or use [`parse_responses_at`].
pub fn parse_responses(instrument_code: &str, answers: &[i32]) -> Result<Responses, ValidationErrors> {
    let instrument = parse_instrument(instrument_code)?;
    parse_answers(instrument, answers)
}

/// [`parse_responses`] for the check-in's `instruments[index]`, with full field paths.
pub fn parse_responses_at(index: usize, instrument_code: &str, answers: &[i32]) -> Result<Responses, ValidationErrors> {
    parse_responses(instrument_code, answers).map_err(|errors| errors.nested_under(&format!("instruments[{index}]")))
}

/// Parses the answers to a known instrument; errors name `answers` or `answers[i]`.
pub fn parse_answers(instrument: Instrument, answers: &[i32]) -> Result<Responses, ValidationErrors> {
    match instrument {
        Instrument::Phq9 => {
            parse_frequencies(instrument, answers).map(|items| Responses::Phq9(Phq9Responses { items }))
        }
        Instrument::Gad7 => {
            parse_frequencies(instrument, answers).map(|items| Responses::Gad7(Gad7Responses { items }))
        }
        Instrument::CssrsScreener => parse_cssrs(answers).map(Responses::CssrsScreener),
    }
}

fn item_count_error(instrument: Instrument, expected: usize, got: usize) -> ValidationErrors {
    ValidationErrors::single("answers", format!("{instrument} has {expected} items, got {got}"))
}

fn parse_frequencies<const N: usize>(
    instrument: Instrument,
    answers: &[i32],
) -> Result<[Frequency; N], ValidationErrors> {
    if answers.len() != N {
        return Err(item_count_error(instrument, N, answers.len()));
    }
    let mut items = [Frequency::NotAtAll; N];
    let mut errors = ValidationErrors::new();
    for (index, (slot, &raw)) in items.iter_mut().zip(answers).enumerate() {
        match Frequency::from_value(raw) {
            Some(frequency) => *slot = frequency,
            None => errors.push(format!("answers[{index}]"), format!("answers are 0-3, got {raw}")),
        }
    }
    errors.into_result(items)
}

const CSSRS_ITEM_COUNT: usize = 6;

fn parse_cssrs(answers: &[i32]) -> Result<CssrsResponses, ValidationErrors> {
    let Ok([q1, q2, q3, q4, q5, q6]) = <[i32; CSSRS_ITEM_COUNT]>::try_from(answers) else {
        return Err(item_count_error(Instrument::CssrsScreener, CSSRS_ITEM_COUNT, answers.len()));
    };
    let mut errors = ValidationErrors::new();
    let wish_to_be_dead = always_asked(0, q1, &mut errors);
    let thoughts = always_asked(1, q2, &mut errors);
    let behaviour_past_3_months = always_asked(5, q6, &mut errors);
    let follow_ups = [(2, q3), (3, q4), (4, q5)];
    let suicidal_thoughts = match thoughts {
        Some(true) => {
            let [method, intent, plan_with_intent] =
                follow_ups.map(|(index, raw)| required_by_q2(index, raw, &mut errors));
            Some(ActiveIdeation {
                method: method.unwrap_or_default(),
                intent: intent.unwrap_or_default(),
                plan_with_intent: plan_with_intent.unwrap_or_default(),
            })
        }
        Some(false) => {
            for (index, raw) in follow_ups {
                if raw != SKIPPED {
                    errors
                        .push(format!("answers[{index}]"), format!("must be skipped (-1) because Q2 is no, got {raw}"));
                }
            }
            None
        }
        // Q2 itself is invalid, so which branch applies is unknown: check only the range.
        None => {
            for (index, raw) in follow_ups {
                if !(SKIPPED..=1).contains(&raw) {
                    errors.push(
                        format!("answers[{index}]"),
                        format!("answers are 0 (no), 1 (yes) or -1 (skipped), got {raw}"),
                    );
                }
            }
            None
        }
    };
    errors.into_result(CssrsResponses {
        wish_to_be_dead: wish_to_be_dead.unwrap_or_default(),
        suicidal_thoughts,
        behaviour_past_3_months: behaviour_past_3_months.unwrap_or_default(),
    })
}

/// Q1, Q2 and Q6 are asked of everyone: only 0 or 1.
fn always_asked(index: usize, raw: i32, errors: &mut ValidationErrors) -> Option<bool> {
    let answer = yes_no(raw);
    if answer.is_none() {
        errors.push(
            format!("answers[{index}]"),
            format!("Q{} is always asked; answers are 0 (no) or 1 (yes), got {raw}", index + 1),
        );
    }
    answer
}

/// Q3-Q5 after a yes to Q2: must be answered.
fn required_by_q2(index: usize, raw: i32, errors: &mut ValidationErrors) -> Option<bool> {
    let answer = yes_no(raw);
    if answer.is_none() {
        errors.push(
            format!("answers[{index}]"),
            format!("required because Q2 is yes; answers are 0 (no) or 1 (yes), got {raw}"),
        );
    }
    answer
}

fn yes_no(raw: i32) -> Option<bool> {
    match raw {
        0 => Some(false),
        1 => Some(true),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::FieldViolation;

    fn violations(result: Result<Responses, ValidationErrors>) -> Vec<(String, String)> {
        match result {
            Ok(responses) => panic!("expected a validation error, parsed {responses:?}"),
            Err(errors) => errors
                .into_violations()
                .into_iter()
                .map(|FieldViolation { field, description }| (field, description))
                .collect(),
        }
    }

    fn pair(field: &str, description: &str) -> (String, String) {
        (field.to_owned(), description.to_owned())
    }

    #[test]
    fn phq9_parses_nine_answers_in_item_order() {
        let parsed = parse_responses("44249-1", &[0, 1, 2, 3, 0, 1, 2, 3, 1]);
        let Ok(Responses::Phq9(phq9)) = parsed else {
            panic!("expected a PHQ-9, got {parsed:?}");
        };
        assert_eq!(phq9.items[3], Frequency::NearlyEveryDay);
        assert_eq!(phq9.item9(), Frequency::SeveralDays);
        assert_eq!(phq9.total(), 13);
    }

    #[test]
    fn phq9_with_ten_answers_names_the_count() {
        assert_eq!(
            violations(parse_responses_at(0, "44249-1", &[0; 10])),
            [pair("instruments[0].answers", "PHQ-9 has 9 items, got 10")]
        );
    }

    #[test]
    fn out_of_range_answers_are_reported_each_at_its_index() {
        assert_eq!(
            violations(parse_responses_at(0, "44249-1", &[0, 0, 0, 4, 0, 0, 0, 0, -1])),
            [
                pair("instruments[0].answers[3]", "answers are 0-3, got 4"),
                pair("instruments[0].answers[8]", "answers are 0-3, got -1"),
            ]
        );
    }

    #[test]
    fn gad7_needs_exactly_seven_answers() {
        assert!(parse_responses("69737-5", &[3; 7]).is_ok());
        assert_eq!(violations(parse_responses("gad-7", &[1; 9])), [pair("answers", "GAD-7 has 7 items, got 9")]);
    }

    #[test]
    fn unknown_instrument_is_reported_on_the_instrument_field() {
        assert_eq!(
            violations(parse_responses_at(1, "phq-2", &[0, 0])),
            [pair(
                "instruments[1].instrument",
                "unknown instrument \"phq-2\"; use 44249-1 (PHQ-9), 69737-5 (GAD-7) or cssrs-screener"
            )]
        );
    }

    #[test]
    fn cssrs_q2_no_skips_q3_to_q5() {
        let parsed = parse_responses("cssrs-screener", &[1, 0, -1, -1, -1, 0]);
        assert_eq!(
            parsed,
            Ok(Responses::CssrsScreener(CssrsResponses {
                wish_to_be_dead: true,
                suicidal_thoughts: None,
                behaviour_past_3_months: false,
            }))
        );
    }

    #[test]
    fn cssrs_q2_yes_records_q3_to_q5() {
        let parsed = parse_responses("cssrs-screener", &[1, 1, 1, 0, 1, 1]);
        assert_eq!(
            parsed,
            Ok(Responses::CssrsScreener(CssrsResponses {
                wish_to_be_dead: true,
                suicidal_thoughts: Some(ActiveIdeation { method: true, intent: false, plan_with_intent: true }),
                behaviour_past_3_months: true,
            }))
        );
    }

    #[test]
    fn cssrs_q3_answered_after_q2_no_is_an_error() {
        assert_eq!(
            violations(parse_responses_at(2, "cssrs-screener", &[0, 0, 0, -1, -1, 0])),
            [pair("instruments[2].answers[2]", "must be skipped (-1) because Q2 is no, got 0")]
        );
    }

    #[test]
    fn cssrs_q3_to_q5_are_required_after_q2_yes() {
        assert_eq!(
            violations(parse_responses_at(2, "cssrs-screener", &[0, 1, -1, 0, -1, 0])),
            [
                pair("instruments[2].answers[2]", "required because Q2 is yes; answers are 0 (no) or 1 (yes), got -1"),
                pair("instruments[2].answers[4]", "required because Q2 is yes; answers are 0 (no) or 1 (yes), got -1"),
            ]
        );
    }

    #[test]
    fn cssrs_q1_q2_and_q6_cannot_be_skipped() {
        assert_eq!(
            violations(parse_responses("cssrs-screener", &[-1, 0, -1, -1, -1, -1])),
            [
                pair("answers[0]", "Q1 is always asked; answers are 0 (no) or 1 (yes), got -1"),
                pair("answers[5]", "Q6 is always asked; answers are 0 (no) or 1 (yes), got -1"),
            ]
        );
    }

    #[test]
    fn cssrs_with_invalid_q2_still_checks_the_range_of_q3_to_q5() {
        assert_eq!(
            violations(parse_responses("cssrs-screener", &[0, 2, 1, 7, -1, 0])),
            [
                pair("answers[1]", "Q2 is always asked; answers are 0 (no) or 1 (yes), got 2"),
                pair("answers[3]", "answers are 0 (no), 1 (yes) or -1 (skipped), got 7"),
            ]
        );
    }

    #[test]
    fn cssrs_needs_six_answers() {
        assert_eq!(
            violations(parse_responses("cssrs-screener", &[0, 0, 0])),
            [pair("answers", "C-SSRS screener has 6 items, got 3")]
        );
    }

    #[test]
    fn wire_form_round_trips() {
        let inputs: [(&str, &[i32]); 4] = [
            ("44249-1", &[3, 2, 1, 0, 3, 2, 1, 0, 1]),
            ("69737-5", &[0, 1, 2, 3, 2, 1, 0]),
            ("cssrs-screener", &[1, 0, -1, -1, -1, 1]),
            ("cssrs-screener", &[0, 1, 0, 1, 0, 0]),
        ];
        for (code, answers) in inputs {
            let parsed = parse_responses(code, answers);
            assert_eq!(parsed.as_ref().map(Responses::to_wire).ok().as_deref(), Some(answers));
        }
    }
}
