//! The evaluation sets and the fixed dev split, shared by the evaluation test
//! (`tests/detector_eval.rs`) and the trainer (`examples/train_detector.rs`), so both read
//! the same texts and hold out the same ones. The frozen holdout (`holdout2.jsonl`) is not
//! read here; the first holdout (`holdout.jsonl`), retired after it had been looked at six
//! times, is one more writer's training set.

use std::collections::{BTreeMap, BTreeSet};

use tandem_clinical::{MODEL_CLASSES, MODEL_CRISIS_CLASSES};

/// The crisis categories of `data/eval/CATEGORIES.md`: the learned model's first classes,
/// so the evaluation, the trainer and the model name the same categories.
pub const CRISIS_CATEGORIES: &[&str] = MODEL_CLASSES.split_at(MODEL_CRISIS_CLASSES).0;
/// The benign categories of `data/eval/CATEGORIES.md`: the model's other classes.
pub const BENIGN_CATEGORIES: &[&str] = MODEL_CLASSES.split_at(MODEL_CRISIS_CLASSES).1;
/// The languages of the sets.
pub const LANGUAGES: [&str; 2] = ["en", "es"];

/// The tuning set (one writer).
pub const TUNING: &str = include_str!("../../data/eval/tuning.jsonl");
/// Training set A (a second writer).
pub const TRAIN_A: &str = include_str!("../../data/eval/train_a.jsonl");
/// Training set B (a third writer).
pub const TRAIN_B: &str = include_str!("../../data/eval/train_b.jsonl");
/// Training set C (a fourth writer).
pub const TRAIN_C: &str = include_str!("../../data/eval/train_c.jsonl");
/// Training set D (a fifth writer, Spanish first).
pub const TRAIN_D: &str = include_str!("../../data/eval/train_d.jsonl");
/// Training set E (a sixth writer: indirect crisis texts and hard near misses).
pub const TRAIN_E: &str = include_str!("../../data/eval/train_e.jsonl");
/// The first holdout (a seventh writer), retired: looked at six times while the learned
/// stage was developed, it measures nothing any more and trains like the others.
pub const RETIRED_HOLDOUT: &str = include_str!("../../data/eval/holdout.jsonl");

/// Every written set, by writer: (writer, file name, texts source). The writer is the id
/// prefix of its texts ("t-0001", "a-en-0001").
pub const WRITERS: [(&str, &str, &str); 7] = [
    ("t", "tuning.jsonl", TUNING),
    ("a", "train_a.jsonl", TRAIN_A),
    ("b", "train_b.jsonl", TRAIN_B),
    ("c", "train_c.jsonl", TRAIN_C),
    ("d", "train_d.jsonl", TRAIN_D),
    ("e", "train_e.jsonl", TRAIN_E),
    ("h", "holdout.jsonl", RETIRED_HOLDOUT),
];

/// Plain everyday texts generated from templates (`scripts/generate-everyday-texts`): they
/// train the learned stage only, never measure it.
#[allow(dead_code)]
pub const EVERYDAY_GENERATED: &str = include_str!("../../data/eval/everyday_generated.jsonl");

/// The seed of the dev split: changing it changes which texts are dev, so it never changes.
pub const DEV_SEED: &str = "tandem-detector-dev-split-2026-12-01";
/// The share of each (category, language) group of a training set held out as dev.
pub const DEV_SHARE: f64 = 0.25;

/// One labelled text.
#[derive(Debug, Clone)]
pub struct EvalText {
    pub id: String,
    pub lang: String,
    pub category: String,
    pub crisis: bool,
    pub text: String,
}

/// Parses a JSONL set, checking every line's schema. Errors name the line, never its text.
pub fn eval_texts(source: &str, name: &str) -> Vec<EvalText> {
    source
        .lines()
        .enumerate()
        .filter(|(_, line)| !line.trim().is_empty())
        .map(|(index, line)| {
            let value: serde_json::Value =
                serde_json::from_str(line).unwrap_or_else(|e| panic!("{name} line {}: not JSON: {e}", index + 1));
            let field = |key: &str| {
                value
                    .get(key)
                    .and_then(serde_json::Value::as_str)
                    .unwrap_or_else(|| panic!("{name} line {}: no string `{key}`", index + 1))
                    .to_owned()
            };
            let (lang, category, label) = (field("lang"), field("category"), field("label"));
            let crisis = CRISIS_CATEGORIES.contains(&category.as_str());
            assert!(
                crisis || BENIGN_CATEGORIES.contains(&category.as_str()),
                "{name} line {}: unknown category",
                index + 1
            );
            assert!(LANGUAGES.contains(&lang.as_str()), "{name} line {}: unknown language", index + 1);
            assert_eq!(label, if crisis { "crisis" } else { "benign" }, "{name} line {}: label", index + 1);
            EvalText { id: field("id"), lang, category, crisis, text: field("text") }
        })
        .collect()
}

fn fnv(text: &str) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in DEV_SEED.bytes().chain([0]).chain(text.bytes()) {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

/// Splits texts into (train, dev): in every (category, language) group, the quarter whose
/// seeded hash of the id is lowest is dev. Fixed by the seed and the ids alone.
pub fn split(texts: Vec<EvalText>) -> (Vec<EvalText>, Vec<EvalText>) {
    let mut groups: BTreeMap<(String, String), Vec<(u64, String)>> = BTreeMap::new();
    for text in &texts {
        groups.entry((text.category.clone(), text.lang.clone())).or_default().push((fnv(&text.id), text.id.clone()));
    }
    let mut dev_ids = BTreeSet::new();
    for members in groups.values_mut() {
        members.sort();
        let take = (members.len() as f64 * DEV_SHARE).round() as usize;
        dev_ids.extend(members.iter().take(take).map(|(_, id)| id.clone()));
    }
    texts.into_iter().partition(|text| !dev_ids.contains(&text.id))
}

/// A writer's texts as (train, dev): the tuning set trains whole (the vocabulary was tuned
/// on it from the start, so it measures nothing); every other set is [`split`].
pub fn writer_train_and_dev(writer: &str) -> (Vec<EvalText>, Vec<EvalText>) {
    let Some((_, name, source)) = WRITERS.iter().find(|(id, _, _)| *id == writer) else {
        panic!("unknown writer {writer}");
    };
    let texts = eval_texts(source, name);
    if writer == "t" { (texts, Vec::new()) } else { split(texts) }
}

/// (train, dev) over every writer: the tuning set and three quarters of each other set to
/// train on; the other quarter of each, never trained or tuned on, to measure.
pub fn train_and_dev() -> (Vec<EvalText>, Vec<EvalText>) {
    let mut train = Vec::new();
    let mut dev = Vec::new();
    for (writer, _, _) in WRITERS {
        let (more_train, more_dev) = writer_train_and_dev(writer);
        train.extend(more_train);
        dev.extend(more_dev);
    }
    (train, dev)
}
