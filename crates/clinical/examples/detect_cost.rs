//! How long the crisis-language detector takes on long text, for BENCHMARKS.md. Check-ins
//! reads every journal, including one refused for being over the length limit (up to the
//! 4 MiB gRPC message limit), with `detect_long_text`; `detect` on the whole text is shown
//! beside it. Measured, never asserted:
//! `cargo run --release -p tandem-clinical --example detect_cost`.

use std::time::Instant;

fn text_of(size: usize, unit: &str) -> String {
    unit.repeat(size / unit.len() + 1)
}

fn main() {
    let prose = "Today was long. I went to work, came home and made dinner; my sister called and we \
                 talked about the weekend. I did the breathing exercise twice. ";
    // Matches on every line, none of them imminent, so nothing ends the reading early.
    let moderate = "Some days I wish I were dead. Other days are better and I go for a walk. ";
    let imminent = "I want to kill myself, I have the pills saved. ";
    let dense = "kill myself not \"kill myself\" i want to die killing me ";
    // Warm up: the vocabulary is compiled on first use.
    let _ = tandem_clinical::detect("warm up");
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
