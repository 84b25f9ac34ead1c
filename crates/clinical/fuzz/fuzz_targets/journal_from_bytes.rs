//! Fuzzes journal text as it arrives: arbitrary bytes, valid UTF-8 or not.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tandem_clinical::{JOURNAL_MAX_CHARS, journal_from_bytes};

fuzz_target!(|data: &[u8]| {
    match journal_from_bytes(data) {
        Ok(journal) => {
            // Accepted text is kept byte for byte and within the limit.
            assert_eq!(journal.as_str().as_bytes(), data);
            assert!(journal.as_str().chars().count() <= JOURNAL_MAX_CHARS);
            assert!(!journal.as_str().contains('\0'));
        }
        Err(errors) => {
            assert!(!errors.is_empty());
            assert!(
                errors
                    .violations()
                    .iter()
                    .all(|violation| violation.field == "journal")
            );
        }
    }
});
