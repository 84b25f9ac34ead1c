//! Crisis signals in a submission that is refused (malformed, over a limit,
//! an idempotency key reused with a different body). The submission is not
//! stored, but its crisis signal is, and is escalated: a typo, a journal one
//! character too long or a changed retry must never hide a patient in danger
//! (DESIGN.md, the crisis path). Only the signal is kept: trigger ids, the
//! answers of the items that fired, the detector's levels, rule ids and byte
//! spans, never the journal's words.

use tandem_proto::checkins::v1 as pb;
use tandem_proto::events::v1 as events;

/// Why a submission was refused, as recorded with its signal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The request did not validate.
    InvalidArgument,
    /// The idempotency key was used before for a different request.
    KeyReused,
}

impl Refusal {
    /// The stable name in `RefusedCrisisSignal.refusal`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::InvalidArgument => "invalid_argument",
            Self::KeyReused => "idempotency_key_reused",
        }
    }
}

/// Every crisis signal in a submission, read from the raw request so that
/// nothing it failed validation on can hide one (`tandem_clinical` decides
/// what a signal is).
pub fn crisis_signals(request: &pb::SubmitCheckInRequest) -> Vec<events::CrisisSignal> {
    tandem_clinical::crisis_signals(&request.instruments, &request.journal)
}

/// Journals up to this many bytes are read on the calling task; a longer
/// one (over the limit, so refused) on a blocking thread.
const READ_INLINE_BYTES: usize = 32 * 1024;

/// As [`crisis_signals`], reading a long journal on a blocking thread: a
/// 4 MiB journal takes seconds to read (BENCHMARKS.md), which must not hold
/// up the server's other calls.
pub async fn crisis_signals_off_runtime(request: &pb::SubmitCheckInRequest) -> Vec<events::CrisisSignal> {
    if request.journal.len() <= READ_INLINE_BYTES {
        return crisis_signals(request);
    }
    let owned = request.clone();
    match tokio::task::spawn_blocking(move || crisis_signals(&owned)).await {
        Ok(signals) => signals,
        Err(error) => {
            // The detector failed on this text: the answers still count, and
            // the journal goes to a human as if it held crisis language
            // rather than not at all.
            tracing::error!(%error, "the crisis-language detector failed on a long journal; escalating it unread");
            let mut signals = crisis_signals(&pb::SubmitCheckInRequest { journal: String::new(), ..request.clone() });
            signals.push(tandem_clinical::unread_journal_signal(&request.journal));
            signals
        }
    }
}

/// The distinct trigger ids of `signals`, in order.
pub fn trigger_ids(signals: &[events::CrisisSignal]) -> Vec<String> {
    let mut ids: Vec<String> = Vec::new();
    for signal in signals {
        if !ids.contains(&signal.trigger) {
            ids.push(signal.trigger.clone());
        }
    }
    ids
}

#[cfg(test)]
mod tests {
    use super::*;
    use tandem_clinical::CRISIS_LANGUAGE_TRIGGER;

    fn phq9_code() -> &'static str {
        tandem_clinical::Instrument::Phq9.code()
    }

    fn request(instruments: Vec<pb::InstrumentResponse>, journal: &str) -> pb::SubmitCheckInRequest {
        pb::SubmitCheckInRequest { instruments, journal: journal.to_owned(), ..Default::default() }
    }

    #[test]
    fn a_malformed_phq9_with_item_nine_positive_is_a_signal_with_only_that_answer() {
        let phq9 = pb::InstrumentResponse { instrument: phq9_code().into(), answers: vec![0, 0, 0, 0, 0, 0, 0, 9, 2] };
        let signals = crisis_signals(&request(vec![phq9], ""));
        assert_eq!(signals.len(), 1);
        assert_eq!(signals[0].trigger, tandem_clinical::PHQ9_ITEM9_TRIGGER);
        assert_eq!(signals[0].field, "instruments[0]");
        assert_eq!(signals[0].items, vec![events::ItemAnswer { item: 9, answer: 2 }]);
    }

    #[test]
    fn a_cssrs_high_risk_answer_keeps_which_items_fired() {
        let cssrs = pb::InstrumentResponse {
            instrument: tandem_clinical::CSSRS_SCREENER_CODE.into(),
            answers: vec![1, 1, 0, -1, 1, 7],
        };
        let signals = crisis_signals(&request(vec![cssrs], ""));
        assert_eq!(signals[0].trigger, tandem_clinical::CSSRS_HIGH_RISK_TRIGGER);
        assert_eq!(signals[0].items, vec![events::ItemAnswer { item: 5, answer: 1 }]);
    }

    #[test]
    fn an_over_long_journal_is_read_and_only_offsets_are_kept() {
        let filler = "Went for a walk and cooked dinner. ".repeat(2000);
        let journal = format!("{filler}I want to kill myself. {filler}");
        assert!(journal.chars().count() > tandem_clinical::JOURNAL_MAX_CHARS);
        let signals = crisis_signals(&request(Vec::new(), &journal));
        assert_eq!(trigger_ids(&signals), [CRISIS_LANGUAGE_TRIGGER]);
        let signal = &signals[0];
        assert!(signal.text_level == "high" || signal.text_level == "imminent", "{}", signal.text_level);
        assert_eq!(signal.text_bytes, journal.len() as u64);
        assert_eq!(signal.text_bytes_read, journal.len() as u64);
        let finding = &signal.findings[0];
        let span = &journal[finding.start as usize..finding.end as usize];
        assert!(span.contains("kill myself"), "{span}");
        let encoded = format!("{signal:?}");
        assert!(!encoded.contains("kill"), "no words of the journal travel with the signal: {encoded}");
    }

    #[tokio::test]
    async fn a_long_journal_is_read_off_the_runtime_with_the_same_result() {
        let filler = "Went for a walk and cooked dinner. ".repeat(3000);
        let phq9 = pb::InstrumentResponse { instrument: phq9_code().into(), answers: vec![0, 0, 0, 0, 0, 0, 0, 1] };
        let long = request(vec![phq9], &format!("{filler}I want to kill myself. {filler}"));
        assert!(long.journal.len() > READ_INLINE_BYTES);
        let signals = crisis_signals_off_runtime(&long).await;
        assert_eq!(signals, crisis_signals(&long));
        assert_eq!(trigger_ids(&signals), [CRISIS_LANGUAGE_TRIGGER], "an 8-answer PHQ-9 has no item 9");
    }

    #[test]
    fn calm_or_negated_text_and_calm_answers_are_no_signal() {
        let phq9 =
            pb::InstrumentResponse { instrument: phq9_code().into(), answers: vec![3, 3, 3, 3, 3, 3, 3, 3, 0, 1] };
        assert!(crisis_signals(&request(vec![phq9], "I'm not going to hurt myself.")).is_empty());
    }
}
