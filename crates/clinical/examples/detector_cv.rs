//! Leave-one-writer-out evaluation of the crisis-language detector: for each writer of the
//! written sets (tuning, train_a to train_e, the retired first holdout), the learned stage is
//! trained exactly as `scripts/train-detector` trains it (training portions, threshold on the
//! dev split, generated everyday texts) but without that writer, and the detector
//! (vocabulary, then that model) reads the writer's whole file. Pooled over the folds, it
//! estimates how the shipped recipe does on people it never saw, without spending the
//! frozen holdout (which it never opens).
//!
//! The vocabulary is not retrained per fold: where it was edited by reading a writer's texts
//! (train_c, train_d and train_e on branch detector3), that writer's fold flatters it. The
//! report therefore pools the other writers apart (the clean estimate), as well as all.
//!
//! Counts only, never a text:
//! `cargo run --release -p tandem-clinical --example detector_cv`
//! (`TANDEM_CV_WRITERS=a,b` reads only those folds).

#[path = "../tests/support/eval_sets.rs"]
#[allow(dead_code)]
mod eval_sets;
#[allow(dead_code)]
mod support;

use std::collections::BTreeMap;

use eval_sets::{BENIGN_CATEGORIES, CRISIS_CATEGORIES, EVERYDAY_GENERATED, WRITERS, eval_texts, writer_train_and_dev};
use support::training::{self, Read};
use tandem_clinical::Vocabulary;

/// The folds of writers whose texts no vocabulary edit on this branch was made from.
const CLEAN: &str = "clean estimate: writers t, a, b, h (no vocabulary edit on branch detector3 read them)";
/// The folds of writers whose misses the vocabulary edits on this branch were made from.
const CDE: &str = "writers c, d, e (vocabulary edits on branch detector3 read their misses: flattered)";

/// (flagged, texts) per (category, language).
type Cells = BTreeMap<(String, String), (usize, usize)>;

fn add(into: &mut Cells, cells: &Cells) {
    for (key, cell) in cells {
        let sum = into.entry(key.clone()).or_default();
        sum.0 += cell.0;
        sum.1 += cell.1;
    }
}

fn sum(cells: &Cells, categories: &[&str], lang: Option<&str>) -> (usize, usize) {
    cells
        .iter()
        .filter(|((category, at), _)| categories.contains(&category.as_str()) && lang.is_none_or(|lang| lang == at))
        .fold((0, 0), |sum, (_, cell)| (sum.0 + cell.0, sum.1 + cell.1))
}

fn cell((flagged, texts): (usize, usize)) -> String {
    if texts == 0 {
        return "-".to_owned();
    }
    format!("{:.3} {flagged:>4}/{texts:<4}", flagged as f64 / texts as f64)
}

/// Recall per crisis category and false alarms per language and pooled, with the model and
/// the vocabulary alone.
fn table(name: &str, with_model: &Cells, alone: &Cells) {
    println!("{name}");
    println!("  {:<20} | {:<16} {:<16} {:<16} | vocabulary alone (all)", "", "en", "es", "all");
    let row = |label: &str, categories: &[&str]| {
        let cells: Vec<String> =
            [Some("en"), Some("es"), None].into_iter().map(|lang| cell(sum(with_model, categories, lang))).collect();
        println!(
            "  {label:<20} | {:<16} {:<16} {:<16} | {}",
            cells[0],
            cells[1],
            cells[2],
            cell(sum(alone, categories, None))
        );
    };
    for &category in CRISIS_CATEGORIES {
        row(category, &[category]);
    }
    row("all crisis (recall)", CRISIS_CATEGORIES);
    for &category in BENIGN_CATEGORIES {
        row(category, &[category]);
    }
    row("all benign (alarms)", BENIGN_CATEGORIES);
}

/// Pooled recall at the one threshold (over all folds' models) that lets the model add a
/// given share of false alarms to the vocabulary's: compares recipes whatever their
/// per-fold thresholds did.
fn curve(scored: &[(f32, bool, bool)]) {
    let benign = scored.iter().filter(|(_, _, crisis)| !crisis).count().max(1) as f64;
    let crisis = scored.iter().filter(|(_, _, crisis)| *crisis).count().max(1) as f64;
    let alone = scored.iter().filter(|(_, vocabulary, crisis)| *vocabulary && !crisis).count() as f64 / benign;
    let mut line =
        format!("pooled operating curve (vocabulary alone {alone:.3} false alarms): added false alarms -> recall");
    for added in [0.005, 0.01, 0.015, 0.02, 0.03] {
        let mut threshold = 1.0f32;
        for step in (1..1000).rev() {
            let candidate = step as f32 * 0.001;
            let alarms =
                scored.iter().filter(|(p, vocabulary, crisis)| !crisis && (*vocabulary || *p >= candidate)).count();
            if alarms as f64 / benign > alone + added {
                break;
            }
            threshold = candidate;
        }
        let found = scored.iter().filter(|(p, vocabulary, crisis)| *crisis && (*vocabulary || *p >= threshold)).count();
        line += &format!("  +{added:.3}: {:.3}", found as f64 / crisis);
    }
    println!("{line}");
}

fn main() {
    let vocabulary = Vocabulary::builtin().expect("the built-in vocabulary");
    let only: Option<Vec<String>> =
        std::env::var("TANDEM_CV_WRITERS").ok().map(|list| list.split(',').map(str::to_owned).collect());
    let everyday = training::read(vocabulary, eval_texts(EVERYDAY_GENERATED, "everyday_generated.jsonl"));
    let writers: Vec<(&str, Vec<Read>, Vec<Read>)> = WRITERS
        .iter()
        .map(|(writer, _, _)| {
            let (train, dev) = writer_train_and_dev(writer);
            (*writer, training::read(vocabulary, train), training::read(vocabulary, dev))
        })
        .collect();
    let (mut all, mut all_alone) = (Cells::new(), Cells::new());
    // (crisis probability, flagged by the vocabulary, crisis) of every text read, for the
    // operating curve of the pooled folds.
    let mut scored: Vec<(f32, bool, bool)> = Vec::new();
    let mut pools: BTreeMap<&str, (Cells, Cells)> = BTreeMap::new();
    println!("fold (held-out writer): threshold, crisis recall, benign false alarms");
    for (held, _, _) in &writers {
        if only.as_ref().is_some_and(|only| !only.iter().any(|writer| writer == held)) {
            continue;
        }
        let mut train: Vec<&Read> = everyday.iter().collect();
        let mut dev: Vec<&Read> = Vec::new();
        let mut read: Vec<&Read> = Vec::new();
        for (writer, writer_train, writer_dev) in &writers {
            if writer == held {
                read.extend(writer_train.iter().chain(writer_dev));
            } else {
                train.extend(writer_train);
                dev.extend(writer_dev);
            }
        }
        let model = training::train_with_threshold(vocabulary, &train, &dev);
        let crisis = training::crisis(&model, &read);
        let cells = training::tally(&read, &crisis, model.threshold);
        let alone = training::tally(&read, &crisis, f32::INFINITY);
        println!(
            "  {held}: {:.3}, {}, {}",
            model.threshold,
            cell(sum(&cells, CRISIS_CATEGORIES, None)),
            cell(sum(&cells, BENIGN_CATEGORIES, None))
        );
        scored
            .extend(read.iter().zip(&crisis).map(|(read, p)| (*p, read.reading.vocabulary_flagged, read.text.crisis)));
        add(&mut all, &cells);
        add(&mut all_alone, &alone);
        let pool = if ["c", "d", "e"].contains(held) { CDE } else { CLEAN };
        let entry = pools.entry(pool).or_default();
        add(&mut entry.0, &cells);
        add(&mut entry.1, &alone);
    }
    println!();
    curve(&scored);
    println!();
    table("all folds", &all, &all_alone);
    for (name, (cells, alone)) in &pools {
        println!();
        table(name, cells, alone);
    }
}
