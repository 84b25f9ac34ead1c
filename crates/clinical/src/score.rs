//! Scoring: totals, severity bands, C-SSRS risk, and the fixed crisis triggers.

use serde::{Deserialize, Serialize};

use crate::instrument::{Coding, Instrument, definition};
use crate::responses::{CssrsResponses, Frequency, Responses};

/// Severity band of a scored instrument; C-SSRS uses the three `*Risk` bands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Band {
    /// PHQ-9 / GAD-7 0-4.
    Minimal,
    /// PHQ-9 / GAD-7 5-9.
    Mild,
    /// PHQ-9 / GAD-7 10-14.
    Moderate,
    /// PHQ-9 15-19.
    ModeratelySevere,
    /// PHQ-9 20-27, GAD-7 15-21.
    Severe,
    /// C-SSRS screener: no positive answer.
    LowRisk,
    /// C-SSRS screener: a positive answer that is not high risk.
    ModerateRisk,
    /// C-SSRS screener: intent, plan with intent, or behaviour in the past 3 months.
    HighRisk,
}

impl Band {
    /// Stable lowercase name used on the wire and in storage, e.g. `moderately_severe`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Minimal => "minimal",
            Self::Mild => "mild",
            Self::Moderate => "moderate",
            Self::ModeratelySevere => "moderately_severe",
            Self::Severe => "severe",
            Self::LowRisk => "low_risk",
            Self::ModerateRisk => "moderate_risk",
            Self::HighRisk => "high_risk",
        }
    }

    /// Position on its own instrument's scale, 0 for the least severe band.
    pub fn rank(self) -> u8 {
        match self {
            Self::Minimal | Self::LowRisk => 0,
            Self::Mild | Self::ModerateRisk => 1,
            Self::Moderate | Self::HighRisk => 2,
            Self::ModeratelySevere => 3,
            Self::Severe => 4,
        }
    }
}

/// PHQ-9 severity for a total; totals above 27 cannot come from a parsed PHQ-9 and read as severe.
pub fn phq9_band(total: u8) -> Band {
    // Bands 5/10/15/20: Kroenke, Spitzer & Williams 2001, J Gen Intern Med 16:606-613.
    match total {
        0..=4 => Band::Minimal,
        5..=9 => Band::Mild,
        10..=14 => Band::Moderate,
        15..=19 => Band::ModeratelySevere,
        _ => Band::Severe,
    }
}

/// GAD-7 severity for a total; totals above 21 cannot come from a parsed GAD-7 and read as severe.
pub fn gad7_band(total: u8) -> Band {
    // Bands 5/10/15: Spitzer, Kroenke, Williams & Löwe 2006, Arch Intern Med 166:1092-1097.
    match total {
        0..=4 => Band::Minimal,
        5..=9 => Band::Mild,
        10..=14 => Band::Moderate,
        _ => Band::Severe,
    }
}

/// Risk level from the C-SSRS screener.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CssrsRisk {
    /// Every answer no: no risk identified by the screener (not proof of no risk).
    Low,
    /// A positive answer short of high risk: a risk signal for the clinician, not a crisis trigger.
    Moderate,
    /// Intent, a plan with intent, or suicidal behaviour in the past 3 months: a crisis trigger.
    High,
}

impl CssrsRisk {
    /// Stable lowercase name: `low`, `moderate` or `high`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Low => "low",
            Self::Moderate => "moderate",
            Self::High => "high",
        }
    }

    /// The band this risk level is reported as.
    pub fn band(self) -> Band {
        match self {
            Self::Low => Band::LowRisk,
            Self::Moderate => Band::ModerateRisk,
            Self::High => Band::HighRisk,
        }
    }
}

impl CssrsResponses {
    /// The screener's risk level.
    pub fn risk(&self) -> CssrsRisk {
        // DESIGN.md clinical facts (Columbia screener triage): yes to Q4 or Q5, or
        // behaviour in the past 3 months, is high risk; any other yes is moderate.
        if self.high_risk_evidence().is_some() {
            return CssrsRisk::High;
        }
        // Q3 (method) is asked only after a yes to Q2, so Q1 or Q2 covers every other yes.
        if self.wish_to_be_dead || self.suicidal_thoughts.is_some() {
            return CssrsRisk::Moderate;
        }
        CssrsRisk::Low
    }

    /// The answers that make the screener high risk, or `None` when it is not.
    fn high_risk_evidence(&self) -> Option<CrisisTrigger> {
        let intent = self.suicidal_thoughts.is_some_and(|ideation| ideation.intent);
        let plan_with_intent = self.suicidal_thoughts.is_some_and(|ideation| ideation.plan_with_intent);
        if !(intent || plan_with_intent || self.behaviour_past_3_months) {
            return None;
        }
        Some(CrisisTrigger::CssrsHighRisk {
            intent,
            plan_with_intent,
            behaviour_past_3_months: self.behaviour_past_3_months,
        })
    }
}

/// A fixed rule that demands the immediate safety response and an escalation to a human.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "id")]
pub enum CrisisTrigger {
    /// PHQ-9 item 9 answered "Several days" or more.
    #[serde(rename = "phq9-item9")]
    Phq9Item9 {
        /// The answer given to item 9.
        answer: Frequency,
    },
    /// C-SSRS screener high risk, with which answers made it so.
    #[serde(rename = "cssrs-high-risk")]
    CssrsHighRisk {
        /// Q4 yes: some intention of acting on suicidal thoughts.
        intent: bool,
        /// Q5 yes: worked out a plan and intends to carry it out.
        plan_with_intent: bool,
        /// Q6 yes: suicidal behaviour in the past 3 months.
        behaviour_past_3_months: bool,
    },
}

impl CrisisTrigger {
    /// Stable id of the rule, as sent in `SafetyResponse.triggers`: `phq9-item9` or `cssrs-high-risk`.
    pub fn id(&self) -> &'static str {
        match self {
            Self::Phq9Item9 { .. } => PHQ9_ITEM9_TRIGGER,
            Self::CssrsHighRisk { .. } => CSSRS_HIGH_RISK_TRIGGER,
        }
    }

    /// What the patient answered that fired the rule, in words for the clinician's worklist.
    pub fn evidence(&self) -> String {
        match self {
            Self::Phq9Item9 { answer } => format!(
                "PHQ-9 item 9 (thoughts of being better off dead or of self-harm) answered \"{}\"",
                answer.label()
            ),
            Self::CssrsHighRisk { intent, plan_with_intent, behaviour_past_3_months } => {
                let reasons: Vec<&str> = [
                    (*intent, "Q4 yes (intent to act on suicidal thoughts)"),
                    (*plan_with_intent, "Q5 yes (suicide plan with intent)"),
                    (*behaviour_past_3_months, "Q6 yes (suicidal behaviour in the past 3 months)"),
                ]
                .into_iter()
                .filter_map(|(answered_yes, reason)| answered_yes.then_some(reason))
                .collect();
                format!("C-SSRS screener high risk: {}", reasons.join(", "))
            }
        }
    }
}

/// Id of the PHQ-9 item 9 crisis trigger.
pub const PHQ9_ITEM9_TRIGGER: &str = "phq9-item9";

/// Id of the C-SSRS high-risk crisis trigger.
pub const CSSRS_HIGH_RISK_TRIGGER: &str = "cssrs-high-risk";

/// The result of scoring one instrument.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Score {
    /// The instrument scored.
    pub instrument: Instrument,
    /// The total score; `None` for the C-SSRS screener, which has no total.
    pub total: Option<u8>,
    /// The severity band (or risk band for the C-SSRS screener).
    pub band: Band,
    /// The LOINC coding of the total, if the instrument has a total.
    pub total_coding: Option<Coding>,
    /// The C-SSRS risk level; `None` for other instruments.
    pub cssrs_risk: Option<CssrsRisk>,
    /// Fixed crisis rules that fired; non-empty means the safety response and an escalation.
    pub crisis_triggers: Vec<CrisisTrigger>,
}

impl Score {
    /// True when any crisis trigger fired.
    pub fn is_crisis(&self) -> bool {
        !self.crisis_triggers.is_empty()
    }
}

/// Scores parsed responses. Total over any input: parsed responses are always valid.
#[must_use]
pub fn score(responses: &Responses) -> Score {
    match responses {
        Responses::Phq9(phq9) => {
            let total = phq9.total();
            let item9 = phq9.item9();
            // DESIGN.md clinical facts: PHQ-9 item 9 >= 1 is a crisis trigger.
            let crisis_triggers = if item9 >= Frequency::SeveralDays {
                vec![CrisisTrigger::Phq9Item9 { answer: item9 }]
            } else {
                Vec::new()
            };
            Score {
                instrument: Instrument::Phq9,
                total: Some(total),
                band: phq9_band(total),
                total_coding: definition(Instrument::Phq9).total,
                cssrs_risk: None,
                crisis_triggers,
            }
        }
        Responses::Gad7(gad7) => {
            let total = gad7.total();
            Score {
                instrument: Instrument::Gad7,
                total: Some(total),
                band: gad7_band(total),
                total_coding: definition(Instrument::Gad7).total,
                cssrs_risk: None,
                crisis_triggers: Vec::new(),
            }
        }
        Responses::CssrsScreener(cssrs) => {
            let risk = cssrs.risk();
            Score {
                instrument: Instrument::CssrsScreener,
                total: None,
                band: risk.band(),
                total_coding: None,
                cssrs_risk: Some(risk),
                crisis_triggers: cssrs.high_risk_evidence().into_iter().collect(),
            }
        }
    }
}

impl Responses {
    /// Scores these responses; same as [`score`].
    #[must_use]
    pub fn score(&self) -> Score {
        score(self)
    }
}

/// Crisis triggers visible in answers that failed validation, so a malformed submission
/// never hides a crisis signal (DESIGN.md, "The one invariant").
///
/// Reads the raw wire values where the item would sit, ignoring every other problem: PHQ-9
/// `answers[8]` in 1..=3, or C-SSRS `answers[3]` (Q4), `answers[4]` (Q5) or `answers[5]` (Q6)
/// equal to 1. It may over-call on garbage; that is the safe direction. Unknown codes give none.
#[must_use]
pub fn crisis_triggers_in_unparsed(instrument_code: &str, answers: &[i32]) -> Vec<CrisisTrigger> {
    let yes_at = |index: usize| answers.get(index) == Some(&1);
    match Instrument::from_code(instrument_code) {
        Some(Instrument::Phq9) => answers
            .get(8)
            .copied()
            .and_then(Frequency::from_value)
            .filter(|answer| *answer >= Frequency::SeveralDays)
            .map(|answer| CrisisTrigger::Phq9Item9 { answer })
            .into_iter()
            .collect(),
        Some(Instrument::CssrsScreener) => {
            let (intent, plan_with_intent, behaviour_past_3_months) = (yes_at(3), yes_at(4), yes_at(5));
            if !(intent || plan_with_intent || behaviour_past_3_months) {
                return Vec::new();
            }
            vec![CrisisTrigger::CssrsHighRisk { intent, plan_with_intent, behaviour_past_3_months }]
        }
        Some(Instrument::Gad7) | None => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::responses::parse_responses;

    fn scored(code: &str, answers: &[i32]) -> Score {
        match parse_responses(code, answers) {
            Ok(responses) => score(&responses),
            Err(errors) => panic!("{code} {answers:?} should parse: {errors}"),
        }
    }

    #[test]
    fn phq9_all_nearly_every_day_is_27_severe_with_item9_trigger() {
        let result = scored("44249-1", &[3; 9]);
        assert_eq!(result.total, Some(27));
        assert_eq!(result.band, Band::Severe);
        assert_eq!(result.band.as_str(), "severe");
        let ids: Vec<&str> = result.crisis_triggers.iter().map(CrisisTrigger::id).collect();
        assert_eq!(ids, ["phq9-item9"]);
    }

    #[test]
    fn phq9_total_coding_is_loinc_44261_6() {
        let result = scored("44249-1", &[0; 9]);
        let coding = result.total_coding.map(|coding| (coding.system, coding.code));
        assert_eq!(coding, Some(("http://loinc.org", "44261-6")));
        assert_eq!(result.total, Some(0));
        assert_eq!(result.band, Band::Minimal);
        assert!(!result.is_crisis());
    }

    #[test]
    fn phq9_band_edges_match_kroenke_2001() {
        let expected = [
            (0, "minimal"),
            (4, "minimal"),
            (5, "mild"),
            (9, "mild"),
            (10, "moderate"),
            (14, "moderate"),
            (15, "moderately_severe"),
            (19, "moderately_severe"),
            (20, "severe"),
            (27, "severe"),
        ];
        for (total, band) in expected {
            assert_eq!(phq9_band(total).as_str(), band, "PHQ-9 total {total}");
        }
    }

    #[test]
    fn gad7_band_edges_match_spitzer_2006() {
        let expected = [
            (4, "minimal"),
            (5, "mild"),
            (9, "mild"),
            (10, "moderate"),
            (14, "moderate"),
            (15, "severe"),
            (21, "severe"),
        ];
        for (total, band) in expected {
            assert_eq!(gad7_band(total).as_str(), band, "GAD-7 total {total}");
        }
    }

    #[test]
    fn phq9_item9_several_days_triggers_even_with_a_minimal_total() {
        let result = scored("44249-1", &[0, 0, 0, 0, 0, 0, 0, 0, 1]);
        assert_eq!(result.total, Some(1));
        assert_eq!(result.band, Band::Minimal);
        assert_eq!(result.crisis_triggers, [CrisisTrigger::Phq9Item9 { answer: Frequency::SeveralDays }]);
        assert_eq!(
            result.crisis_triggers.first().map(CrisisTrigger::evidence).as_deref(),
            Some("PHQ-9 item 9 (thoughts of being better off dead or of self-harm) answered \"Several days\"")
        );
    }

    #[test]
    fn phq9_high_total_without_item9_is_not_a_crisis_trigger() {
        let result = scored("44249-1", &[3, 3, 3, 3, 3, 3, 3, 3, 0]);
        assert_eq!(result.total, Some(24));
        assert_eq!(result.band, Band::Severe);
        assert!(result.crisis_triggers.is_empty());
    }

    #[test]
    fn gad7_scores_and_never_triggers() {
        let result = scored("69737-5", &[2, 2, 2, 2, 2, 2, 2]);
        assert_eq!(result.total, Some(14));
        assert_eq!(result.band, Band::Moderate);
        assert_eq!(result.total_coding.map(|coding| coding.code), Some("70274-6"));
        assert!(result.crisis_triggers.is_empty());
    }

    #[test]
    fn cssrs_all_no_is_low_risk_without_a_total() {
        let result = scored("cssrs-screener", &[0, 0, -1, -1, -1, 0]);
        assert_eq!(result.total, None);
        assert_eq!(result.total_coding, None);
        assert_eq!(result.cssrs_risk, Some(CssrsRisk::Low));
        assert_eq!(result.band.as_str(), "low_risk");
        assert!(!result.is_crisis());
    }

    #[test]
    fn cssrs_wish_to_be_dead_alone_is_moderate_not_a_crisis() {
        let result = scored("cssrs-screener", &[1, 0, -1, -1, -1, 0]);
        assert_eq!(result.cssrs_risk, Some(CssrsRisk::Moderate));
        assert_eq!(result.band, Band::ModerateRisk);
        assert!(!result.is_crisis());
    }

    #[test]
    fn cssrs_thoughts_with_method_but_no_intent_is_moderate() {
        let result = scored("cssrs-screener", &[1, 1, 1, 0, 0, 0]);
        assert_eq!(result.cssrs_risk, Some(CssrsRisk::Moderate));
        assert!(!result.is_crisis());
    }

    #[test]
    fn cssrs_intent_or_plan_is_high_risk_and_a_crisis_trigger() {
        for answers in [[0, 1, 0, 1, 0, 0], [0, 1, 0, 0, 1, 0]] {
            let result = scored("cssrs-screener", &answers);
            assert_eq!(result.cssrs_risk, Some(CssrsRisk::High), "{answers:?}");
            assert_eq!(result.band.as_str(), "high_risk");
            let ids: Vec<&str> = result.crisis_triggers.iter().map(CrisisTrigger::id).collect();
            assert_eq!(ids, ["cssrs-high-risk"], "{answers:?}");
        }
    }

    #[test]
    fn cssrs_recent_behaviour_alone_is_high_risk() {
        let result = scored("cssrs-screener", &[0, 0, -1, -1, -1, 1]);
        assert_eq!(result.cssrs_risk, Some(CssrsRisk::High));
        assert_eq!(
            result.crisis_triggers.first().map(CrisisTrigger::evidence).as_deref(),
            Some("C-SSRS screener high risk: Q6 yes (suicidal behaviour in the past 3 months)")
        );
    }

    #[test]
    fn unparsed_input_still_surfaces_crisis_signals() {
        // Q5 "yes" sent although Q2 is "no": rejected, but the plan must not be lost.
        assert!(parse_responses("cssrs-screener", &[0, 0, -1, -1, 1, 0]).is_err());
        let triggers = crisis_triggers_in_unparsed("cssrs-screener", &[0, 0, -1, -1, 1, 0]);
        assert_eq!(triggers.iter().map(CrisisTrigger::id).collect::<Vec<_>>(), ["cssrs-high-risk"]);

        // A tenth PHQ-9 answer makes the submission invalid, not item 9 any less alarming.
        let triggers = crisis_triggers_in_unparsed("phq-9", &[0, 0, 0, 0, 0, 0, 0, 0, 2, 0]);
        assert_eq!(triggers, [CrisisTrigger::Phq9Item9 { answer: Frequency::MoreThanHalfTheDays }]);

        assert!(crisis_triggers_in_unparsed("phq-9", &[3; 8]).is_empty());
        assert!(crisis_triggers_in_unparsed("gad-7", &[3; 7]).is_empty());
        assert!(crisis_triggers_in_unparsed("nonsense", &[1; 9]).is_empty());
    }

    #[test]
    fn band_names_are_stable_wire_strings() {
        let all = [
            (Band::Minimal, "minimal"),
            (Band::Mild, "mild"),
            (Band::Moderate, "moderate"),
            (Band::ModeratelySevere, "moderately_severe"),
            (Band::Severe, "severe"),
            (Band::LowRisk, "low_risk"),
            (Band::ModerateRisk, "moderate_risk"),
            (Band::HighRisk, "high_risk"),
        ];
        for (band, name) in all {
            assert_eq!(band.as_str(), name);
        }
        assert_eq!(CssrsRisk::High.as_str(), "high");
    }
}
