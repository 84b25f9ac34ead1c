//! Tandem's clinical rules: instruments, scoring, risk rules and trends; pure, no I/O.
//!
//! The flow a check-in follows: [`parse_responses`] (or [`parse_instruments`] for a whole
//! check-in) turns wire answers into [`Responses`], which are valid by construction;
//! [`score`] turns them into a [`Score`] with its band and any [`CrisisTrigger`]s.
//! Every invalid input is a [`ValidationErrors`] with field paths; nothing here panics.
//! A whole check-in is assessed once, at submission, by [`assess_check_in`]: the scores and
//! the crisis-language detector's reading of the journal, as facts that travel to triage
//! without the journal's words; triage weighs them with the patient's history by
//! [`rule_firings`]. Trigger names, their levels and the crisis policy live here alone.
//!
//! ```
//! use tandem_clinical::{parse_responses_at, score};
//!
//! let responses = parse_responses_at(0, "44249-1", &[1, 2, 1, 2, 1, 1, 2, 1, 1])?;
//! let result = score(&responses);
//! assert_eq!(result.total, Some(12));
//! assert_eq!(result.band.as_str(), "moderate");
//! let triggers: Vec<&str> = result.crisis_triggers.iter().map(|t| t.id()).collect();
//! assert_eq!(triggers, ["phq9-item9"]);
//!
//! let rejected = parse_responses_at(1, "44249-1", &[0, 0, 0, 4, 0, 0, 0, 0, 0]).unwrap_err();
//! assert_eq!(rejected.violations()[0].field, "instruments[1].answers[3]");
//! # Ok::<(), tandem_clinical::ValidationErrors>(())
//! ```
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing))]
#![warn(missing_docs)]

mod assessment;
mod checkin;
mod detector;
mod error;
mod instrument;
mod long_text;
mod responses;
mod schedule;
mod score;
mod trend;

pub use assessment::{
    CRISIS_LANGUAGE_TRIGGER, CSSRS_MODERATE_RULE, CheckInAssessment, DISENGAGEMENT_RULE, PHQ9_SEVERE_RULE,
    RELIABLE_DETERIORATION_RULE, RiskInput, assess_check_in, assess_unvalidated, crisis_signals, crisis_triggers,
    journal_facts, journal_signal, overall, phq9_total, refused_signal_firings, rule_firings, unread_journal_signal,
};
pub use checkin::{
    JOURNAL_MAX_CHARS, Journal, MOOD_MAX, MOOD_MIN, Mood, journal_from_bytes, parse_instruments, validate_journal,
    validate_mood,
};
pub use chrono_tz::Tz;
pub use detector::{
    Category, Detection, Finding, LearnedModel, MODEL_BUCKETS, MODEL_CLASSES, MODEL_CRISIS_CLASSES, ModelPassage,
    ModelReading, Prediction, Qualifier, Suppressed, SuppressionReason, TextRiskLevel, UnknownLevel, Vocabulary,
    detect, model_features,
};
pub use error::{FieldViolation, ValidationErrors};
pub use instrument::{
    CSSRS_SCREENER_CODE, Coding, Instrument, InstrumentDefinition, ItemDefinition, LOINC_SYSTEM, PHQ9_ITEM9_LOINC,
    ResponseOption, SKIPPED, UnknownInstrument, definition, parse_instrument,
};
pub use long_text::{LongTextDetection, MAX_BYTES_READ as LONG_TEXT_MAX_BYTES, detect_long_text};
pub use responses::{
    ActiveIdeation, CssrsResponses, Frequency, Gad7Responses, Phq9Responses, Responses, parse_answers, parse_responses,
    parse_responses_at,
};
pub use schedule::Schedule;
pub use score::{
    Band, CSSRS_HIGH_RISK_TRIGGER, CrisisTrigger, CssrsRisk, PHQ9_ITEM9_TRIGGER, Score, crisis_triggers_in_unparsed,
    gad7_band, phq9_band, score,
};
pub use trend::{Observation, RELIABLE_DETERIORATION_POINTS, REMISSION_BELOW, Trend, phq9_trend, phq9_trend_since};
