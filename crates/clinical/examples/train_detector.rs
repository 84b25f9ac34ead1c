//! Trains the crisis-language detector's learned stage and writes
//! `crates/clinical/data/detector_model.bin`. Run it through `scripts/train-detector`.
//!
//! Reproducible: the same sets give the same file (fixed seed, fixed order, no threads).
//! It trains on the tuning set and the training portions of every other written set
//! (`support/eval_sets.rs`: train_a to train_e and the retired first holdout), never on their
//! dev portions and never on the frozen holdout (it does not open that file). The threshold
//! is the lowest crisis probability at which the vocabulary and the model together flag at
//! most `MAX_DEV_FALSE_ALARM_RATE` of the dev split's benign texts. It prints counts only,
//! never a text. How well this recipe does on writers it never saw:
//! `cargo run --release -p tandem-clinical --example detector_cv`.

#[path = "../tests/support/eval_sets.rs"]
#[allow(dead_code)]
mod eval_sets;
#[allow(dead_code)]
mod support;

use eval_sets::{CRISIS_CATEGORIES, EVERYDAY_GENERATED, eval_texts, train_and_dev};
use support::training::{self, Read};
use tandem_clinical::Vocabulary;

fn report(name: &str, texts: &[&Read], crisis: &[f32], threshold: f32) {
    let cells = training::tally(texts, crisis, threshold);
    let alone = training::tally(texts, crisis, f32::INFINITY);
    println!("{name} (vocabulary alone -> with the model at {threshold:.3}):");
    let pooled = |cells: &std::collections::BTreeMap<(String, String), (usize, usize)>, category: &str| {
        cells
            .iter()
            .filter(|((at, _), _)| at == category)
            .fold((0, 0), |sum, (_, cell)| (sum.0 + cell.0, sum.1 + cell.1))
    };
    for &category in CRISIS_CATEGORIES {
        let ((flagged, total), (before, _)) = (pooled(&cells, category), pooled(&alone, category));
        println!(
            "  {category:<18} {before:>4} -> {flagged:>4} / {total:<4} recall {:.2}",
            flagged as f64 / total.max(1) as f64
        );
    }
    let ((flagged, total), (before, _)) = (training::benign(&cells), training::benign(&alone));
    println!(
        "  {:<18} {before:>4} -> {flagged:>4} / {total:<4} rate {:.3}",
        "benign flagged",
        flagged as f64 / total.max(1) as f64
    );
}

fn main() {
    let vocabulary = Vocabulary::builtin().expect("the built-in vocabulary");
    let (mut train_texts, dev_texts) = train_and_dev();
    train_texts.extend(eval_texts(EVERYDAY_GENERATED, "everyday_generated.jsonl"));
    println!("training on {} texts; dev {} texts", train_texts.len(), dev_texts.len());
    let (train, dev) = (training::read(vocabulary, train_texts), training::read(vocabulary, dev_texts));
    let (train, dev): (Vec<&Read>, Vec<&Read>) = (train.iter().collect(), dev.iter().collect());
    let model = training::train_with_threshold(vocabulary, &train, &dev);
    report("train", &train, &training::crisis(&model, &train), model.threshold);
    report("dev", &dev, &training::crisis(&model, &dev), model.threshold);
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/data/detector_model.bin");
    std::fs::write(path, model.to_bytes()).expect("write the model file");
    println!("wrote {path} (threshold {:.3})", model.threshold);
}
