//! How long the crisis-language detector takes on long text, for BENCHMARKS.md. Check-ins
//! reads every journal, including one refused for being over the length limit (up to the
//! 4 MiB gRPC message limit), with `detect_long_text`; `detect` on the whole text is shown
//! beside it; first, an ordinary check-in journal, with and without the learned stage.
//! Measured, never asserted:
//! `cargo run --release -p tandem-clinical --example detect_cost`.

use std::time::Instant;

fn text_of(size: usize, unit: &str) -> String {
    unit.repeat(size / unit.len() + 1)
}

/// A check-in's journal, as most are: per text, the vocabulary alone and with the learned
/// stage (what `detect` does), the mean of many runs.
fn check_in_journals() {
    let vocabulary = tandem_clinical::Vocabulary::builtin().expect("the built-in vocabulary");
    let short = "rough day. slept badly, skipped lunch, argued with my sister about mom's birthday. \
                 did the breathing thing before bed and it helped a bit";
    let flagged = "work was fine i guess. honestly i keep thinking everyone would be better off without me \
                   and i cant see a way out of this";
    let long = format!("{short}. ").repeat(12);
    // The longest journal a check-in accepts (20,000 characters), below moderate, so the
    // model reads all of it.
    let longest = format!("{short}. ").repeat(150);
    let longest = longest.get(..20_000).unwrap_or(&longest);
    println!("| check-in journal | chars | vocabulary alone ms | with the model ms | level |");
    println!("|---|---|---|---|---|");
    for (name, text) in [
        ("a few lines", short),
        ("a few lines, flagged", flagged),
        ("a long entry", long.as_str()),
        ("the longest journal", longest),
    ] {
        let runs = 200;
        let started = Instant::now();
        for _ in 0..runs {
            std::hint::black_box(vocabulary.detect_vocabulary_only(text));
        }
        let alone = started.elapsed().as_secs_f64() * 1000.0 / f64::from(runs);
        let started = Instant::now();
        let mut level = tandem_clinical::TextRiskLevel::None;
        for _ in 0..runs {
            level = std::hint::black_box(tandem_clinical::detect(text)).level;
        }
        let with_model = started.elapsed().as_secs_f64() * 1000.0 / f64::from(runs);
        println!("| {name} | {} | {alone:.3} | {with_model:.3} | {level} |", text.chars().count());
    }
    println!();
}

fn main() {
    let prose = "Today was long. I went to work, came home and made dinner; my sister called and we \
                 talked about the weekend. I did the breathing exercise twice. ";
    // Matches on every line, none of them imminent, so nothing ends the reading early.
    let moderate = "Some days I wish I were dead. Other days are better and I go for a walk. ";
    let imminent = "I want to kill myself, I have the pills saved. ";
    let dense = "kill myself not \"kill myself\" i want to die killing me ";
    // Warm up: the vocabulary is compiled and the model read on first use.
    let _ = tandem_clinical::detect("warm up");
    check_in_journals();
    println!("| text | size | detect ms | detect_long_text ms | level (detect / long) | bytes read |");
    println!("|---|---|---|---|---|---|");
    for (name, unit) in [
        ("ordinary prose", prose),
        ("passive ideation every other sentence", moderate),
        ("imminent throughout", imminent),
        ("dense matches and quotes", dense),
    ] {
        for mib in [1usize, 4] {
            let text = text_of(mib << 20, unit);
            let text = &text[..mib << 20];
            let started = Instant::now();
            let whole = tandem_clinical::detect(text);
            let whole_ms = started.elapsed().as_secs_f64() * 1000.0;
            let started = Instant::now();
            let long = tandem_clinical::detect_long_text(text);
            let long_ms = started.elapsed().as_secs_f64() * 1000.0;
            println!(
                "| {name} | {mib} MiB | {whole_ms:.0} | {long_ms:.0} | {} / {} | {} |",
                whole.level, long.detection.level, long.bytes_read
            );
        }
    }
}
