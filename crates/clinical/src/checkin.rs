//! The patient-entered fields of a check-in besides instrument answers: mood and journal,
//! and the rules that span instruments (each instrument at most once per check-in).

use serde::{Deserialize, Serialize};

use crate::error::ValidationErrors;
use crate::instrument::Instrument;
use crate::responses::{Responses, parse_responses_at};

/// Lowest mood on the check-in scale (worst).
pub const MOOD_MIN: u8 = 0;

/// Highest mood on the check-in scale (best).
pub const MOOD_MAX: u8 = 10;

/// Most characters (Unicode scalar values) a journal entry may hold; the API contract says 20,000.
pub const JOURNAL_MAX_CHARS: usize = 20_000;

/// Self-rated mood, 0 (worst) to 10 (best).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "i32", into = "i32")]
pub struct Mood(u8);

impl Mood {
    /// The rating, 0-10.
    pub fn value(self) -> u8 {
        self.0
    }
}

impl TryFrom<i32> for Mood {
    type Error = ValidationErrors;

    fn try_from(value: i32) -> Result<Self, Self::Error> {
        match u8::try_from(value) {
            Ok(rating) if (MOOD_MIN..=MOOD_MAX).contains(&rating) => Ok(Self(rating)),
            _ => Err(ValidationErrors::single("mood", format!("mood is {MOOD_MIN}-{MOOD_MAX}, got {value}"))),
        }
    }
}

impl From<Mood> for i32 {
    fn from(mood: Mood) -> Self {
        i32::from(mood.0)
    }
}

/// Checks the optional mood (field `mood`): absent is fine, present must be 0-10.
pub fn validate_mood(mood: Option<i32>) -> Result<Option<Mood>, ValidationErrors> {
    mood.map(Mood::try_from).transpose()
}

/// Journal text the patient wrote, kept verbatim: valid UTF-8, at most 20,000 characters,
/// no NUL characters (PostgreSQL `text` cannot store them).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(transparent)]
pub struct Journal(String);

impl Journal {
    /// The text, as written.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// True when the patient wrote nothing.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The text, by value.
    pub fn into_string(self) -> String {
        self.0
    }
}

/// Checks journal text (field `journal`) and keeps it verbatim.
pub fn validate_journal(text: &str) -> Result<Journal, ValidationErrors> {
    let mut errors = ValidationErrors::new();
    // Bytes bound characters from above, so short text skips the count.
    if text.len() > JOURNAL_MAX_CHARS {
        let chars = text.chars().count();
        if chars > JOURNAL_MAX_CHARS {
            errors.push("journal", format!("journal is at most 20,000 characters, got {chars}"));
        }
    }
    if text.contains('\0') {
        errors.push("journal", "journal must not contain NUL (U+0000) characters");
    }
    errors.into_result(Journal(text.to_owned()))
}

/// Checks journal text that arrived as bytes: it must be valid UTF-8, then as [`validate_journal`].
pub fn journal_from_bytes(bytes: &[u8]) -> Result<Journal, ValidationErrors> {
    match std::str::from_utf8(bytes) {
        Ok(text) => validate_journal(text),
        Err(error) => Err(ValidationErrors::single(
            "journal",
            format!("journal must be valid UTF-8; invalid byte at offset {}", error.valid_up_to()),
        )),
    }
}

/// Parses every `instruments[i]` of a check-in, given as (instrument code, answers) in
/// request order, reporting all violations at once, including an instrument sent twice.
pub fn parse_instruments<'a, I>(submissions: I) -> Result<Vec<Responses>, ValidationErrors>
where
    I: IntoIterator<Item = (&'a str, &'a [i32])>,
{
    let mut errors = ValidationErrors::new();
    let mut parsed = Vec::new();
    let mut seen: Vec<(Instrument, usize)> = Vec::new();
    for (index, (code, answers)) in submissions.into_iter().enumerate() {
        if let Some(instrument) = Instrument::from_code(code) {
            if let Some((_, first)) = seen.iter().find(|(earlier, _)| *earlier == instrument) {
                errors.push(
                    format!("instruments[{index}].instrument"),
                    format!(
                        "{instrument} is already in instruments[{first}]; send each instrument at most once per check-in"
                    ),
                );
                continue;
            }
            seen.push((instrument, index));
        }
        match parse_responses_at(index, code, answers) {
            Ok(responses) => parsed.push(responses),
            Err(violations) => errors.append(violations),
        }
    }
    errors.into_result(parsed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields_and_descriptions(errors: ValidationErrors) -> Vec<(String, String)> {
        errors.into_violations().into_iter().map(|violation| (violation.field, violation.description)).collect()
    }

    #[test]
    fn mood_is_optional_and_0_to_10() {
        assert_eq!(validate_mood(None), Ok(None));
        assert_eq!(validate_mood(Some(0)).map(|mood| mood.map(Mood::value)), Ok(Some(0)));
        assert_eq!(validate_mood(Some(10)).map(|mood| mood.map(Mood::value)), Ok(Some(10)));
        for bad in [-1, 11, i32::MIN, i32::MAX, 256] {
            let Err(errors) = validate_mood(Some(bad)) else {
                panic!("mood {bad} must be rejected");
            };
            assert_eq!(fields_and_descriptions(errors), [("mood".to_owned(), format!("mood is 0-10, got {bad}"))]);
        }
    }

    #[test]
    fn journal_limit_counts_characters_not_bytes() {
        // 20,000 two-byte characters is 40,000 bytes and still within the limit.
        let at_limit = "é".repeat(JOURNAL_MAX_CHARS);
        assert!(validate_journal(&at_limit).is_ok());
        let over = "a".repeat(JOURNAL_MAX_CHARS + 1);
        let Err(errors) = validate_journal(&over) else {
            panic!("20,001 characters must be rejected");
        };
        assert_eq!(
            fields_and_descriptions(errors),
            [("journal".to_owned(), "journal is at most 20,000 characters, got 20001".to_owned())]
        );
    }

    #[test]
    fn journal_is_kept_verbatim() {
        let text = "  Slept badly.\nTalked to Sam — felt better.  ";
        assert_eq!(validate_journal(text).map(Journal::into_string).as_deref(), Ok(text));
        assert!(validate_journal("").is_ok_and(|journal| journal.is_empty()));
    }

    #[test]
    fn journal_rejects_nul_which_storage_cannot_hold() {
        let Err(errors) = validate_journal("before\0after") else {
            panic!("NUL must be rejected");
        };
        assert_eq!(errors.violations().first().map(|v| v.field.as_str()), Some("journal"));
    }

    #[test]
    fn journal_bytes_must_be_utf8() {
        assert_eq!(journal_from_bytes("fine".as_bytes()).map(Journal::into_string).as_deref(), Ok("fine"));
        let Err(errors) = journal_from_bytes(&[b'o', b'k', 0xff, b'!']) else {
            panic!("invalid UTF-8 must be rejected");
        };
        assert_eq!(
            fields_and_descriptions(errors),
            [("journal".to_owned(), "journal must be valid UTF-8; invalid byte at offset 2".to_owned())]
        );
    }

    #[test]
    fn check_in_instruments_parse_in_order() {
        let phq9 = [1; 9];
        let gad7 = [0; 7];
        let cssrs = [0, 0, -1, -1, -1, 0];
        let parsed =
            parse_instruments([("44249-1", &phq9[..]), ("69737-5", &gad7[..]), ("cssrs-screener", &cssrs[..])]);
        let instruments: Option<Vec<Instrument>> =
            parsed.ok().map(|all| all.iter().map(Responses::instrument).collect());
        assert_eq!(instruments, Some(vec![Instrument::Phq9, Instrument::Gad7, Instrument::CssrsScreener]));
        assert_eq!(parse_instruments([]), Ok(Vec::new()));
    }

    #[test]
    fn the_same_instrument_twice_is_rejected_even_under_an_alias() {
        let phq9 = [0; 9];
        let Err(errors) = parse_instruments([("44249-1", &phq9[..]), ("phq9", &phq9[..])]) else {
            panic!("a duplicate PHQ-9 must be rejected");
        };
        assert_eq!(
            fields_and_descriptions(errors),
            [(
                "instruments[1].instrument".to_owned(),
                "PHQ-9 is already in instruments[0]; send each instrument at most once per check-in".to_owned()
            )]
        );
    }

    #[test]
    fn every_bad_instrument_is_reported_with_its_index() {
        let phq9 = [0, 0, 0, 4, 0, 0, 0, 0, 0];
        let cssrs = [0, 0, 1, -1, -1, 0];
        let Err(errors) =
            parse_instruments([("44249-1", &phq9[..]), ("beck", &[1, 2][..]), ("cssrs-screener", &cssrs[..])])
        else {
            panic!("three bad instruments must be rejected");
        };
        let fields: Vec<String> = errors.into_violations().into_iter().map(|v| v.field).collect();
        assert_eq!(fields, ["instruments[0].answers[3]", "instruments[1].instrument", "instruments[2].answers[2]"]);
    }
}
