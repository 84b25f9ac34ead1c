//! Fuzzes the parser of instrument answers as they arrive over gRPC, then scoring.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tandem_clinical::{Instrument, crisis_triggers_in_unparsed, parse_responses_at, score};

/// Codes worth hitting often; anything else comes from the input bytes.
const CODES: [&str; 8] = [
    "44249-1",
    "69737-5",
    "cssrs-screener",
    "PHQ-9",
    "gad7",
    "CSSRS-SCREENER",
    "44261-6",
    "",
];

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    // Low 3 bits pick a known code (or, for 7, read one from the input); bit 3 picks how
    // answers are read: small values near the valid range, or full 32-bit integers.
    let (code, answer_bytes) = match CODES.get(usize::from(selector & 0b111)) {
        Some(&known) if selector & 0b111 != 7 => (known.to_owned(), rest),
        _ => {
            let (code_len, tail) = rest
                .split_first()
                .map_or((0, rest), |(&len, tail)| (usize::from(len % 32), tail));
            let split = code_len.min(tail.len());
            let (code_bytes, answers) = tail.split_at(split);
            (String::from_utf8_lossy(code_bytes).into_owned(), answers)
        }
    };
    let answers: Vec<i32> = if selector & 0b1000 == 0 {
        answer_bytes
            .iter()
            .map(|&byte| i32::from(byte % 6) - 1)
            .collect()
    } else {
        answer_bytes
            .chunks_exact(4)
            .filter_map(|chunk| <[u8; 4]>::try_from(chunk).ok())
            .map(i32::from_le_bytes)
            .collect()
    };

    match parse_responses_at(0, &code, &answers) {
        Ok(responses) => {
            let instrument = responses.instrument();
            assert_eq!(Instrument::from_code(&code), Some(instrument));
            let result = score(&responses);
            let max_total = instrument.definition().max_total;
            assert_eq!(result.total.is_some(), max_total.is_some());
            assert!(
                result.total <= max_total,
                "total {:?} above {max_total:?}",
                result.total
            );
            assert!(!result.band.as_str().is_empty());
            assert_eq!(responses.to_wire(), answers, "wire form must round-trip");
            assert_eq!(
                crisis_triggers_in_unparsed(&code, &answers),
                result.crisis_triggers,
                "the rescue path must agree with scoring on valid input"
            );
        }
        Err(errors) => {
            assert!(!errors.is_empty());
            for violation in errors.violations() {
                assert!(
                    violation.field.starts_with("instruments[0]."),
                    "{}",
                    violation.field
                );
                assert!(!violation.description.is_empty());
            }
            // Must not panic on the same input either.
            let _ = crisis_triggers_in_unparsed(&code, &answers);
        }
    }
});
