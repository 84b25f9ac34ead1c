//! Any bytes that are UTF-8 go through the crisis-language detector: it must not panic, and
//! every span it reports must be a slice of the text.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let detection = tandem_clinical::detect(text);
    for finding in &detection.findings {
        assert_eq!(text.get(finding.span.clone()), Some(finding.matched.as_str()));
    }
    for item in &detection.suppressed {
        assert_eq!(text.get(item.span.clone()), Some(item.matched.as_str()));
    }
    assert_eq!(detection.level, detection.findings.iter().map(|f| f.level).max().unwrap_or_default());
});
