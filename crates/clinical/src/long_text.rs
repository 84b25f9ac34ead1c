//! Reading text of any length for crisis language at a cost linear in its length.
//!
//! A journal over the length limit is refused, but a crisis it states must still reach a
//! human (DESIGN.md, the crisis path), so the detector reads it anyway. [`detect`] on a
//! whole text costs more than linear time when matches are dense (measured in
//! BENCHMARKS.md: 4 MiB of dense matches took 18 s), so [`detect_long_text`] reads long
//! text in windows of [`WINDOW_BYTES`], cut after a sentence end where there is one, each
//! starting [`OVERLAP_BYTES`] back into the one before, so a sentence cut at a window's end
//! is read whole, with the context before it, in the next. Findings are the union over the
//! windows: a match suppressed in one window by a cue the cut separated from it, but kept
//! in another, counts (the safe direction). Reading stops at [`MAX_BYTES_READ`] (the gRPC
//! message limit) and once the level is `Imminent`, the highest there is.

use std::collections::HashMap;

use crate::detector::{Detection, Finding, Suppressed, TextRiskLevel, detect};

/// Bytes the detector reads at once.
pub const WINDOW_BYTES: usize = 32 * 1024;

/// Bytes each window re-reads of the one before.
pub const OVERLAP_BYTES: usize = 2 * 1024;

/// Most bytes read of one text: 4 MiB, the gRPC message limit, so every journal that
/// reaches the service is read whole.
pub const MAX_BYTES_READ: usize = 4 * 1024 * 1024;

/// Most findings kept; the level counts every finding.
const MAX_FINDINGS: usize = 1000;

/// The result of reading a text that may be long.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LongTextDetection {
    /// What was found, spans as byte offsets into the whole text.
    pub detection: Detection,
    /// Bytes read from the start of the text: all of it, unless it is over
    /// [`MAX_BYTES_READ`] or an imminent finding ended the reading early.
    pub bytes_read: usize,
}

/// The largest character boundary of `text` at or below `at`.
fn floor_boundary(text: &str, at: usize) -> usize {
    let mut at = at.min(text.len());
    while !text.is_char_boundary(at) {
        at -= 1;
    }
    at
}

fn ends_sentence(byte: u8) -> bool {
    matches!(byte, b'.' | b'!' | b'?' | b'\n')
}

/// Where a window starting at `start` ends: just after the last sentence end in its second
/// half, else after its last whitespace there, else at a character boundary.
fn window_end(text: &str, start: usize, limit: usize) -> usize {
    let hard = start + WINDOW_BYTES;
    if hard >= limit {
        return limit;
    }
    let bytes = text.as_bytes();
    let half = start + WINDOW_BYTES / 2;
    let after = |test: fn(u8) -> bool| (half..hard).rev().find(|&i| bytes.get(i).copied().is_some_and(test));
    if let Some(i) = after(ends_sentence) {
        return i + 1;
    }
    if let Some(i) = after(|byte| byte.is_ascii_whitespace()) {
        return i + 1;
    }
    floor_boundary(text, hard)
}

/// Where the window after one ending at `end` starts: [`OVERLAP_BYTES`] back, moved on to
/// the start of a sentence (or word) if one begins before `end`.
fn next_start(text: &str, end: usize) -> usize {
    let back = floor_boundary(text, end.saturating_sub(OVERLAP_BYTES));
    let bytes = text.as_bytes();
    let after = |test: fn(u8) -> bool| {
        (back..end).find(|&i| i > 0 && bytes.get(i - 1).copied().is_some_and(test) && text.is_char_boundary(i))
    };
    after(ends_sentence).or_else(|| after(|byte| byte.is_ascii_whitespace())).unwrap_or(back)
}

/// Reads `text`, of any length, for crisis language at a bounded cost (see the module
/// documentation). Text up to [`WINDOW_BYTES`] is read exactly as [`detect`] reads it.
pub fn detect_long_text(text: &str) -> LongTextDetection {
    detect_within(text, MAX_BYTES_READ)
}

fn detect_within(text: &str, max_bytes: usize) -> LongTextDetection {
    if text.len() <= WINDOW_BYTES {
        return LongTextDetection { detection: detect(text), bytes_read: text.len() };
    }
    let limit = floor_boundary(text, max_bytes.max(WINDOW_BYTES));
    let mut detection = Detection::default();
    let mut findings: HashMap<(usize, usize, String), usize> = HashMap::new();
    let mut suppressed: HashMap<(usize, usize, String), ()> = HashMap::new();
    let mut start = 0;
    loop {
        let end = window_end(text, start, limit);
        let window = text.get(start..end).unwrap_or_default();
        let read = detect(window);
        detection.degraded |= read.degraded;
        detection.level = detection.level.max(read.level);
        for finding in read.findings {
            let finding = Finding { span: finding.span.start + start..finding.span.end + start, ..finding };
            let key = (finding.span.start, finding.span.end, finding.rule.clone());
            match findings.get(&key) {
                // The same match read again in the overlap: keep the higher reading.
                Some(&index) => {
                    if let Some(kept) = detection.findings.get_mut(index)
                        && kept.level < finding.level
                    {
                        *kept = finding;
                    }
                }
                None if detection.findings.len() < MAX_FINDINGS => {
                    findings.insert(key, detection.findings.len());
                    detection.findings.push(finding);
                }
                None => {}
            }
        }
        for entry in read.suppressed {
            let entry = Suppressed {
                span: entry.span.start + start..entry.span.end + start,
                cue: entry.cue.map(|cue| cue.start + start..cue.end + start),
                ..entry
            };
            let key = (entry.span.start, entry.span.end, entry.rule.clone());
            if detection.suppressed.len() < MAX_FINDINGS && suppressed.insert(key, ()).is_none() {
                detection.suppressed.push(entry);
            }
        }
        if end >= limit || detection.level == TextRiskLevel::Imminent {
            detection.findings.sort_by_key(|finding| (finding.span.start, finding.span.end));
            detection.suppressed.sort_by_key(|entry| (entry.span.start, entry.span.end));
            // A match kept in one window and suppressed in another counts: drop the
            // suppression record of what was found.
            detection
                .suppressed
                .retain(|entry| !findings.contains_key(&(entry.span.start, entry.span.end, entry.rule.clone())));
            return LongTextDetection { detection, bytes_read: end };
        }
        start = next_start(text, end);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filler(bytes: usize) -> String {
        let sentence = "Today I went to work and made dinner with my sister. ";
        sentence.repeat(bytes / sentence.len() + 1)
    }

    #[test]
    fn short_text_reads_as_detect_reads_it() {
        let text = "i want to kill myself tonight";
        let long = detect_long_text(text);
        assert_eq!(long.detection, detect(text));
        assert_eq!(long.bytes_read, text.len());
    }

    #[test]
    fn crisis_language_deep_in_a_long_text_is_found_at_its_offset() {
        let mut text = filler(200 * 1024);
        let at = text.len();
        text.push_str("I wish I were dead. ");
        text.push_str(&filler(100 * 1024));
        let long = detect_long_text(&text);
        assert!(long.detection.level >= TextRiskLevel::Moderate, "{:?}", long.detection.level);
        let finding = long.detection.findings.first().expect("a finding");
        assert!(finding.span.start >= at && finding.span.end <= at + 20, "{:?}", finding.span);
        assert_eq!(text.get(finding.span.clone()), Some(finding.matched.as_str()));
        assert_eq!(long.bytes_read, text.len());
    }

    #[test]
    fn a_statement_across_every_possible_cut_is_found() {
        // The crisis sentence sits at each offset around the first window's end.
        for shift in (0..200).step_by(7) {
            let mut text = filler(WINDOW_BYTES - 100 + shift);
            text.truncate(WINDOW_BYTES - 100 + shift);
            text.push_str(" i want to kill myself. ");
            text.push_str(&filler(WINDOW_BYTES));
            let long = detect_long_text(&text);
            assert!(long.detection.level >= TextRiskLevel::High, "shift {shift}: {:?}", long.detection.level);
        }
    }

    #[test]
    fn text_without_spaces_or_ascii_still_ends() {
        let text = "é".repeat(3 * WINDOW_BYTES);
        let long = detect_long_text(&text);
        assert_eq!(long.detection.level, TextRiskLevel::None);
        assert_eq!(long.bytes_read, text.len());
    }

    #[test]
    fn reading_stops_at_the_bound_and_at_imminent() {
        let bound = 5 * WINDOW_BYTES;
        let text = filler(bound + 1024);
        let long = detect_within(&text, bound);
        assert_eq!(long.bytes_read, bound);
        let mut urgent = String::from("i want to kill myself tonight, i have the pills. ");
        urgent.push_str(&filler(WINDOW_BYTES * 4));
        let long = detect_long_text(&urgent);
        assert_eq!(long.detection.level, TextRiskLevel::Imminent);
        assert!(long.bytes_read < urgent.len());
    }
}
