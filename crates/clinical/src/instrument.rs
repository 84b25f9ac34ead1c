//! The instruments Tandem administers between sessions, with everything a client needs to
//! render them (wording, options, branching) and the codes an EHR needs to file them.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::{ValidationErrors, excerpt};

/// The code system URI for LOINC, as FHIR and our `Coding` message spell it.
pub const LOINC_SYSTEM: &str = "http://loinc.org";

/// API code of the C-SSRS screener, which has no LOINC panel code we use.
pub const CSSRS_SCREENER_CODE: &str = "cssrs-screener";

/// LOINC code of PHQ-9 item 9 (thoughts of being better off dead or of self-harm).
pub const PHQ9_ITEM9_LOINC: &str = "44260-8";

/// Wire value of a C-SSRS item skipped by the branching.
pub const SKIPPED: i32 = -1;

/// A questionnaire Tandem can administer and score.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Instrument {
    /// Patient Health Questionnaire, 9 items (depression).
    #[serde(rename = "44249-1")]
    Phq9,
    /// Generalized Anxiety Disorder, 7 items.
    #[serde(rename = "69737-5")]
    Gad7,
    /// Columbia Suicide Severity Rating Scale, screen version.
    #[serde(rename = "cssrs-screener")]
    CssrsScreener,
}

impl Instrument {
    /// Every instrument, in a stable order.
    pub const ALL: [Instrument; 3] = [Self::Phq9, Self::Gad7, Self::CssrsScreener];

    /// The code the API uses for this instrument: the LOINC panel code, or `cssrs-screener`.
    pub fn code(self) -> &'static str {
        self.definition().code
    }

    /// The short name clinicians use, e.g. `PHQ-9`.
    pub fn short_name(self) -> &'static str {
        self.definition().short_name
    }

    /// How many items the instrument has, i.e. how many answers the API expects.
    pub fn item_count(self) -> usize {
        self.definition().items.len()
    }

    /// The full definition: wording, options, codes.
    pub fn definition(self) -> &'static InstrumentDefinition {
        definition(self)
    }

    /// Looks up an API code: `44249-1`, `69737-5`, `cssrs-screener`, or the aliases
    /// `phq-9`/`phq9` and `gad-7`/`gad7`; case-insensitive, surrounding spaces ignored.
    pub fn from_code(code: &str) -> Option<Instrument> {
        let code = code.trim();
        let matches = |candidate: &str| code.eq_ignore_ascii_case(candidate);
        if matches("44249-1") || matches("phq-9") || matches("phq9") {
            return Some(Self::Phq9);
        }
        if matches("69737-5") || matches("gad-7") || matches("gad7") {
            return Some(Self::Gad7);
        }
        if matches(CSSRS_SCREENER_CODE) {
            return Some(Self::CssrsScreener);
        }
        None
    }
}

impl fmt::Display for Instrument {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.short_name())
    }
}

/// An instrument code no instrument answers to.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown instrument {code:?}; use 44249-1 (PHQ-9), 69737-5 (GAD-7) or cssrs-screener")]
pub struct UnknownInstrument {
    /// The code as received, shortened if long.
    pub code: String,
}

impl FromStr for Instrument {
    type Err = UnknownInstrument;

    fn from_str(code: &str) -> Result<Self, Self::Err> {
        Self::from_code(code).ok_or_else(|| UnknownInstrument { code: excerpt(code) })
    }
}

/// Looks up an API code, reporting an unknown one as a violation of field `instrument`.
pub fn parse_instrument(code: &str) -> Result<Instrument, ValidationErrors> {
    code.parse().map_err(|unknown: UnknownInstrument| ValidationErrors::single("instrument", unknown.to_string()))
}

/// A code from a code system, as in FHIR's `Coding`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub struct Coding {
    /// The code system URI, e.g. `http://loinc.org`.
    pub system: &'static str,
    /// The code within the system, e.g. `44261-6`.
    pub code: &'static str,
    /// The code's human-readable display text.
    pub display: &'static str,
}

impl Coding {
    const fn loinc(code: &'static str, display: &'static str) -> Self {
        Self { system: LOINC_SYSTEM, code, display }
    }
}

/// One question of an instrument.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct ItemDefinition {
    /// Position in the answers list, from 0 (the API's `answers[index]`).
    pub index: usize,
    /// Short label clinicians use, e.g. `Q9` or `Q3`.
    pub label: &'static str,
    /// The question as shown to the patient.
    pub text: &'static str,
    /// The item's LOINC code, if it has one.
    pub loinc: Option<&'static str>,
    /// Asked only when the item at this index was answered yes; otherwise skipped (-1).
    pub asked_only_if_yes_to: Option<usize>,
}

/// One answer a patient can pick.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct ResponseOption {
    /// The value sent on the wire and used for scoring.
    pub value: i32,
    /// The label shown to the patient.
    pub label: &'static str,
    /// The LOINC answer code (`LA…`), if it has one.
    pub loinc_answer: Option<&'static str>,
}

/// Everything needed to render, answer and file one instrument.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct InstrumentDefinition {
    /// Which instrument this is.
    pub instrument: Instrument,
    /// The API code, e.g. `44249-1` or `cssrs-screener`.
    pub code: &'static str,
    /// Short name, e.g. `PHQ-9`.
    pub short_name: &'static str,
    /// Full title.
    pub title: &'static str,
    /// The LOINC panel coding, if the instrument has one we use.
    pub panel: Option<Coding>,
    /// The LOINC coding of the total score, if the instrument has a total.
    pub total: Option<Coding>,
    /// The highest possible total, if the instrument has a total.
    pub max_total: Option<u8>,
    /// The stem shown above the items, including the recall period.
    pub prompt: &'static str,
    /// The items, in answer order.
    pub items: &'static [ItemDefinition],
    /// The options every item offers.
    pub options: &'static [ResponseOption],
    /// Where the instrument and its scoring come from.
    pub source: &'static str,
}

/// The definition of `instrument`: title, codes, items and options.
pub fn definition(instrument: Instrument) -> &'static InstrumentDefinition {
    match instrument {
        Instrument::Phq9 => &PHQ9,
        Instrument::Gad7 => &GAD7,
        Instrument::CssrsScreener => &CSSRS_SCREENER,
    }
}

/// The 0-3 frequency options shared by PHQ-9 and GAD-7, with their LOINC answer codes.
const FREQUENCY_OPTIONS: [ResponseOption; 4] = [
    ResponseOption { value: 0, label: "Not at all", loinc_answer: Some("LA6568-5") },
    ResponseOption { value: 1, label: "Several days", loinc_answer: Some("LA6569-3") },
    ResponseOption { value: 2, label: "More than half the days", loinc_answer: Some("LA6570-1") },
    ResponseOption { value: 3, label: "Nearly every day", loinc_answer: Some("LA6571-9") },
];

const YES_NO_OPTIONS: [ResponseOption; 2] = [
    ResponseOption { value: 0, label: "No", loinc_answer: Some("LA32-8") },
    ResponseOption { value: 1, label: "Yes", loinc_answer: Some("LA33-6") },
];

const fn item(index: usize, label: &'static str, text: &'static str, loinc: Option<&'static str>) -> ItemDefinition {
    ItemDefinition { index, label, text, loinc, asked_only_if_yes_to: None }
}

const fn branched_item(index: usize, label: &'static str, text: &'static str) -> ItemDefinition {
    ItemDefinition {
        index,
        label,
        text,
        loinc: None,
        // Q3-Q5 follow up on Q2 (index 1), as the Columbia screener's flow prescribes.
        asked_only_if_yes_to: Some(1),
    }
}

const PHQ9_ITEMS: [ItemDefinition; 9] = [
    item(0, "Q1", "Little interest or pleasure in doing things", Some("44250-9")),
    item(1, "Q2", "Feeling down, depressed, or hopeless", Some("44255-8")),
    item(2, "Q3", "Trouble falling or staying asleep, or sleeping too much", Some("44259-0")),
    item(3, "Q4", "Feeling tired or having little energy", Some("44254-1")),
    item(4, "Q5", "Poor appetite or overeating", Some("44251-7")),
    item(
        5,
        "Q6",
        "Feeling bad about yourself, or that you are a failure or have let yourself or your family down",
        Some("44258-2"),
    ),
    item(
        6,
        "Q7",
        "Trouble concentrating on things, such as reading the newspaper or watching television",
        Some("44252-5"),
    ),
    item(
        7,
        "Q8",
        "Moving or speaking so slowly that other people could have noticed, or the opposite: being so fidgety or restless that you have been moving around a lot more than usual",
        Some("44253-3"),
    ),
    item(
        8,
        "Q9",
        "Thoughts that you would be better off dead, or of hurting yourself in some way",
        Some(PHQ9_ITEM9_LOINC),
    ),
];

const GAD7_ITEMS: [ItemDefinition; 7] = [
    item(0, "Q1", "Feeling nervous, anxious, or on edge", Some("69725-0")),
    item(1, "Q2", "Not being able to stop or control worrying", Some("68509-9")),
    item(2, "Q3", "Worrying too much about different things", Some("69733-4")),
    item(3, "Q4", "Trouble relaxing", Some("69734-2")),
    item(4, "Q5", "Being so restless that it is hard to sit still", Some("69735-9")),
    item(5, "Q6", "Becoming easily annoyed or irritable", Some("69689-8")),
    item(6, "Q7", "Feeling afraid, as if something awful might happen", Some("69736-7")),
];

// Wording paraphrases the public C-SSRS Screen Version (Posner et al., Columbia University).
const CSSRS_ITEMS: [ItemDefinition; 6] = [
    item(
        0,
        "Q1",
        "In the past month, have you wished you were dead or wished you could go to sleep and not wake up?",
        None,
    ),
    item(1, "Q2", "In the past month, have you actually had any thoughts about killing yourself?", None),
    branched_item(2, "Q3", "Have you been thinking about how you might do this?"),
    branched_item(3, "Q4", "Have you had these thoughts and had some intention of acting on them?"),
    branched_item(
        4,
        "Q5",
        "Have you started to work out or worked out the details of how to kill yourself? Do you intend to carry out this plan?",
    ),
    item(
        5,
        "Q6",
        "In the past 3 months, have you done anything, started to do anything, or prepared to do anything to end your life? For example: collected pills, obtained a weapon, gave away valuables, wrote a will or suicide note, or took out pills but did not swallow them.",
        None,
    ),
];

const PHQ9: InstrumentDefinition = InstrumentDefinition {
    instrument: Instrument::Phq9,
    code: "44249-1",
    short_name: "PHQ-9",
    title: "Patient Health Questionnaire (PHQ-9)",
    panel: Some(Coding::loinc("44249-1", "PHQ-9 quick depression assessment panel [Reported.PHQ]")),
    total: Some(Coding::loinc("44261-6", "Patient Health Questionnaire 9 item (PHQ-9) total score [Reported]")),
    max_total: Some(27),
    prompt: "Over the last 2 weeks, how often have you been bothered by any of the following problems?",
    items: &PHQ9_ITEMS,
    options: &FREQUENCY_OPTIONS,
    source: "Kroenke K, Spitzer RL, Williams JBW. The PHQ-9. J Gen Intern Med 2001;16:606-613.",
};

const GAD7: InstrumentDefinition = InstrumentDefinition {
    instrument: Instrument::Gad7,
    code: "69737-5",
    short_name: "GAD-7",
    title: "Generalized Anxiety Disorder 7-item scale (GAD-7)",
    panel: Some(Coding::loinc("69737-5", "Generalized anxiety disorder 7 item (GAD-7)")),
    total: Some(Coding::loinc("70274-6", "Generalized anxiety disorder 7 item (GAD-7) total score [Reported.PHQ]")),
    max_total: Some(21),
    prompt: "Over the last 2 weeks, how often have you been bothered by the following problems?",
    items: &GAD7_ITEMS,
    options: &FREQUENCY_OPTIONS,
    source: "Spitzer RL, Kroenke K, Williams JBW, Löwe B. The GAD-7. Arch Intern Med 2006;166:1092-1097.",
};

const CSSRS_SCREENER: InstrumentDefinition = InstrumentDefinition {
    instrument: Instrument::CssrsScreener,
    code: CSSRS_SCREENER_CODE,
    short_name: "C-SSRS screener",
    title: "Columbia Suicide Severity Rating Scale, screen version",
    panel: None,
    total: None,
    max_total: None,
    prompt: "Answer yes or no. Questions 3 to 5 are asked only if you answered yes to question 2.",
    items: &CSSRS_ITEMS,
    options: &YES_NO_OPTIONS,
    source: "Posner K et al. Columbia-Suicide Severity Rating Scale, screen version. Columbia University.",
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_codes_and_aliases_find_the_instrument_case_insensitively() {
        assert_eq!(Instrument::from_code("44249-1"), Some(Instrument::Phq9));
        assert_eq!(Instrument::from_code("PHQ-9"), Some(Instrument::Phq9));
        assert_eq!(Instrument::from_code(" phq9 "), Some(Instrument::Phq9));
        assert_eq!(Instrument::from_code("69737-5"), Some(Instrument::Gad7));
        assert_eq!(Instrument::from_code("Gad7"), Some(Instrument::Gad7));
        assert_eq!(Instrument::from_code("CSSRS-Screener"), Some(Instrument::CssrsScreener));
        assert_eq!(Instrument::from_code("44261-6"), None, "a total code is not a panel");
        assert_eq!(Instrument::from_code(""), None);
    }

    #[test]
    fn unknown_code_is_a_violation_on_instrument_that_names_the_valid_codes() {
        let Err(errors) = parse_instrument("phq-8") else {
            panic!("phq-8 is not an instrument we score");
        };
        let [violation] = errors.violations() else {
            panic!("expected one violation, got {errors:?}");
        };
        assert_eq!(violation.field, "instrument");
        assert_eq!(
            violation.description,
            "unknown instrument \"phq-8\"; use 44249-1 (PHQ-9), 69737-5 (GAD-7) or cssrs-screener"
        );
    }

    #[test]
    fn every_code_round_trips() {
        for instrument in Instrument::ALL {
            assert_eq!(Instrument::from_code(instrument.code()), Some(instrument));
            assert_eq!(instrument.definition().instrument, instrument);
        }
    }

    #[test]
    fn definitions_carry_the_published_loinc_codes() {
        let phq9 = definition(Instrument::Phq9);
        assert_eq!(phq9.panel.map(|coding| coding.code), Some("44249-1"));
        assert_eq!(phq9.total.map(|coding| coding.code), Some("44261-6"));
        assert_eq!(phq9.items.len(), 9);
        assert_eq!(phq9.items.get(8).and_then(|item| item.loinc), Some("44260-8"));
        assert!(
            phq9.items
                .get(8)
                .is_some_and(|item| { item.text.starts_with("Thoughts that you would be better off dead") })
        );

        let gad7 = definition(Instrument::Gad7);
        assert_eq!(gad7.panel.map(|coding| coding.code), Some("69737-5"));
        assert_eq!(gad7.total.map(|coding| coding.code), Some("70274-6"));
        assert_eq!(gad7.items.len(), 7);

        let cssrs = definition(Instrument::CssrsScreener);
        assert_eq!(cssrs.panel, None);
        assert_eq!(cssrs.total, None);
        assert_eq!(cssrs.items.len(), 6);
        for coding in [phq9.panel, phq9.total, gad7.panel, gad7.total].into_iter().flatten() {
            assert_eq!(coding.system, "http://loinc.org");
        }
    }

    #[test]
    fn items_are_numbered_in_answer_order() {
        for instrument in Instrument::ALL {
            for (position, item) in instrument.definition().items.iter().enumerate() {
                assert_eq!(item.index, position, "{instrument} item {}", item.label);
                assert_eq!(item.label, format!("Q{}", position + 1));
            }
        }
    }

    #[test]
    fn frequency_options_read_as_on_the_paper_form() {
        let labels: Vec<(i32, &str)> =
            definition(Instrument::Phq9).options.iter().map(|option| (option.value, option.label)).collect();
        assert_eq!(
            labels,
            [(0, "Not at all"), (1, "Several days"), (2, "More than half the days"), (3, "Nearly every day")]
        );
        assert_eq!(definition(Instrument::Gad7).options, definition(Instrument::Phq9).options);
    }

    #[test]
    fn only_cssrs_q3_to_q5_branch_on_q2() {
        let branched: Vec<&str> = definition(Instrument::CssrsScreener)
            .items
            .iter()
            .filter(|item| item.asked_only_if_yes_to == Some(1))
            .map(|item| item.label)
            .collect();
        assert_eq!(branched, ["Q3", "Q4", "Q5"]);
        for instrument in [Instrument::Phq9, Instrument::Gad7] {
            assert!(instrument.definition().items.iter().all(|item| item.asked_only_if_yes_to.is_none()));
        }
    }
}
