//! Measures the crisis-language detector (the vocabulary alone, and with the learned stage
//! that may only add to it), on these sets:
//!
//! - `data/eval/tuning.jsonl` (560 texts, English and Spanish, one writer, written from
//!   `data/eval/CATEGORIES.md` alone): the set the vocabulary is tuned on. Its report lists
//!   every miss and false alarm with its text: it is the working loop
//!   (`cargo test -p tandem-clinical --test detector_eval tuning -- --nocapture`).
//! - `data/eval/train_a.jsonl` to `train_e.jsonl` (five more writers, the same way) and
//!   `holdout.jsonl`, the first holdout, retired after it had been looked at six times and
//!   now one more writer's training set: three quarters of each (category, language) group
//!   train the learned stage; the other quarter, fixed by a seed (`support/eval_sets.rs`), is
//!   the dev split, never trained or tuned on, reported as counts only. The training report
//!   lists the vocabulary's misses of train_c, train_d and train_e only: the vocabulary is
//!   edited from those, so the other writers stay a clean cross-writer estimate
//!   (`cargo run --release -p tandem-clinical --example detector_cv`).
//! - `data/eval/holdout2.jsonl` (992 texts, two more writers, the same definitions, frozen
//!   before any tuning): never read by anyone working on the detector, only by
//!   [`frozen_holdout2_reports_the_gap_to_the_targets_and_never_regresses`], which prints
//!   counts only, never a text, prints the gap to the targets (recall >= 0.95 in every
//!   crisis category, languages pooled, and a benign false-alarm rate <= 0.05; not met: see
//!   `HOLDOUT2_FIRST_LOOK`), and fails when the file is not the frozen one (SHA-256 in
//!   `holdout2.jsonl.sha256`) or when a category falls below what its first look measured.
//!   Running it spends a look at the holdout: while working, skip it
//!   (`-- --skip frozen_holdout`).
//! - `data/crisis_labelled.jsonl`: the older labelled set with expected minimum levels.
//!
//! A text is flagged when the detector's level is moderate or above: that is what fires the
//! safety response in check-ins (`CRISIS_LANGUAGE_LEVEL` in services/checkins). A benign text
//! flagged is a false alarm; a benign text at `low` is not (a clinician sees it, nobody is
//! paged).

#[path = "support/eval_sets.rs"]
mod eval_sets;

use std::collections::BTreeMap;
use std::fmt::Write as _;

use eval_sets::{BENIGN_CATEGORIES, CRISIS_CATEGORIES, EvalText, TUNING, eval_texts, train_and_dev};
use sha2::{Digest, Sha256};
use tandem_clinical::{TextRiskLevel, Vocabulary, detect};

/// The level from which a text is a crisis for the check-in's safety response.
const FLAG: TextRiskLevel = TextRiskLevel::Moderate;

// ---------------------------------------------------------------------------------------
// Tuning set, training portions, dev split and frozen holdout, per category and language
// ---------------------------------------------------------------------------------------

const HOLDOUT_PATH: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/data/eval/holdout2.jsonl");
const HOLDOUT_SHA256_PATH: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/data/eval/holdout2.jsonl.sha256");

/// Targets on the frozen holdout (issue 8), and the floors its test holds the detector to.
const HOLDOUT_MIN_RECALL: f64 = 0.95;
const HOLDOUT_MAX_FALSE_ALARM_RATE: f64 = 0.05;

/// What the tuning set is held to, so a vocabulary edit cannot quietly lose what it had. At
/// the rebuild (2026-12) it stood at recall 0.94-1.00 per category (wish_dead lowest: two
/// texts say it across sentences or inside reported speech) and false alarms 0.00-0.01; the
/// bar sits just under, per category, not at the holdout target.
const TUNING_MIN_RECALL: f64 = 0.90;
const TUNING_MAX_FALSE_ALARM_RATE: f64 = 0.03;

/// Which stages read the texts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stages {
    /// The vocabulary alone.
    Vocabulary,
    /// The vocabulary, then the learned model (what `detect` does).
    WithModel,
}

impl Stages {
    fn level(self, text: &str) -> TextRiskLevel {
        match self {
            Self::WithModel => detect(text).level,
            Self::Vocabulary => Vocabulary::builtin()
                .map_or(TextRiskLevel::High, |vocabulary| vocabulary.detect_vocabulary_only(text).level),
        }
    }
}

/// How many texts of one category and language were flagged.
#[derive(Debug, Default, Clone, Copy)]
struct Tally {
    texts: usize,
    flagged: usize,
}

impl Tally {
    fn add(&mut self, other: Tally) {
        self.texts += other.texts;
        self.flagged += other.flagged;
    }

    fn rate(self) -> f64 {
        self.flagged as f64 / self.texts.max(1) as f64
    }

    fn cell(self) -> String {
        if self.texts == 0 {
            "-".to_owned()
        } else {
            format!("{:.2} {:>3}/{:<3}", self.rate(), self.flagged, self.texts)
        }
    }
}

/// One set's results: per (category, language), and the texts it got wrong.
#[derive(Debug, Default)]
struct Evaluation {
    tallies: BTreeMap<(String, String), Tally>,
    /// (id, category, lang, level, text) of every miss and false alarm.
    wrong: Vec<(String, String, String, TextRiskLevel, String)>,
}

impl Evaluation {
    fn of(texts: &[EvalText], stages: Stages) -> Self {
        let mut evaluation = Self::default();
        for text in texts {
            let level = stages.level(&text.text);
            let flagged = level >= FLAG;
            let tally = evaluation.tallies.entry((text.category.clone(), text.lang.clone())).or_default();
            tally.texts += 1;
            tally.flagged += usize::from(flagged);
            if flagged != text.crisis {
                evaluation.wrong.push((
                    text.id.clone(),
                    text.category.clone(),
                    text.lang.clone(),
                    level,
                    text.text.clone(),
                ));
            }
        }
        evaluation
    }

    fn tally(&self, category: &str, lang: Option<&str>) -> Tally {
        let mut total = Tally::default();
        for ((at_category, at_lang), tally) in &self.tallies {
            if at_category == category && lang.is_none_or(|lang| lang == at_lang) {
                total.add(*tally);
            }
        }
        total
    }

    fn pooled(&self, categories: &[&str], lang: Option<&str>) -> Tally {
        let mut total = Tally::default();
        for category in categories {
            total.add(self.tally(category, lang));
        }
        total
    }

    /// Crisis categories whose pooled recall is below `min`, and the pooled benign
    /// false-alarm rate when above `max`, as readable failures.
    fn failures(&self, min_recall: f64, max_false_alarms: f64) -> Vec<String> {
        let mut failures = Vec::new();
        for &category in CRISIS_CATEGORIES {
            let tally = self.tally(category, None);
            if tally.rate() < min_recall {
                failures.push(format!("recall in {category} is {:.3}, below {min_recall}", tally.rate()));
            }
        }
        let benign = self.pooled(BENIGN_CATEGORIES, None);
        if benign.rate() > max_false_alarms {
            failures.push(format!("benign false-alarm rate is {:.3}, above {max_false_alarms}", benign.rate()));
        }
        failures
    }
}

/// A table of recall (crisis categories) and false-alarm rate (benign categories) per
/// language and pooled, one column group per named evaluation.
fn table(columns: &[(&str, &Evaluation)]) -> String {
    let mut out = String::new();
    let mut header = format!("{:<22}", "");
    for (name, _) in columns {
        header += &format!("| {:<44}", format!("{name}: en / es / all"));
    }
    let row = |out: &mut String, label: &str, cell: &dyn Fn(&Evaluation, Option<&str>) -> Tally| {
        let mut line = format!("{label:<22}");
        for (_, evaluation) in columns {
            let cells: Vec<String> =
                [Some("en"), Some("es"), None].into_iter().map(|lang| cell(evaluation, lang).cell()).collect();
            line += &format!("| {:<44}", cells.join("  "));
        }
        let _ = writeln!(out, "{}", line.trim_end());
    };
    let _ = writeln!(out, "{}", header.trim_end());
    let _ = writeln!(out, "recall (flagged / crisis texts)");
    for &category in CRISIS_CATEGORIES {
        row(&mut out, &format!("  {category}"), &|evaluation, lang| evaluation.tally(category, lang));
    }
    row(&mut out, "  all crisis", &|evaluation, lang| evaluation.pooled(CRISIS_CATEGORIES, lang));
    let _ = writeln!(out, "false alarms (flagged / benign texts)");
    for &category in BENIGN_CATEGORIES {
        row(&mut out, &format!("  {category}"), &|evaluation, lang| evaluation.tally(category, lang));
    }
    row(&mut out, "  all benign", &|evaluation, lang| evaluation.pooled(BENIGN_CATEGORIES, lang));
    out
}

/// The revision of the built-in vocabulary, so a report says which vocabulary it measured.
fn revision() -> &'static str {
    Vocabulary::builtin().map_or("(invalid built-in vocabulary)", Vocabulary::revision)
}

#[test]
fn tuning_set_report_lists_every_miss_and_meets_the_targets() {
    let texts = eval_texts(TUNING, "tuning.jsonl");
    assert_eq!(texts.len(), 560, "the tuning set has 560 texts");
    let vocabulary = Evaluation::of(&texts, Stages::Vocabulary);
    let tuning = Evaluation::of(&texts, Stages::WithModel);
    println!("crisis-language detector, tuning set (flagged = level >= {FLAG}), vocabulary {}", revision());
    print!("{}", table(&[("tuning, vocabulary alone", &vocabulary), ("tuning, with the model", &tuning)]));
    if !vocabulary.wrong.is_empty() {
        println!("misses and false alarms of the vocabulary alone:");
        for (id, category, lang, level, text) in &vocabulary.wrong {
            println!("  {id} [{category} {lang}] got {level}: {text}");
        }
    }
    // The vocabulary is held to the bar on its own, so the model cannot hide its regressions
    // on the set it was tuned on; the model only adds.
    for (name, evaluation) in [("vocabulary alone", &vocabulary), ("with the model", &tuning)] {
        let failures = evaluation.failures(TUNING_MIN_RECALL, TUNING_MAX_FALSE_ALARM_RATE);
        assert!(failures.is_empty(), "tuning set, {name}: {}", failures.join("; "));
    }
}

/// The training portions of every written set but the tuning set: counts per category and
/// language, and every miss and false alarm of the vocabulary alone in train_c, train_d and
/// train_e with its text, the working loop for the vocabulary
/// (`cargo test -p tandem-clinical --test detector_eval training -- --nocapture`). The other
/// writers' texts are not listed, so the cross-writer estimate on them stays clean.
#[test]
fn training_portions_report_lists_the_vocabularys_misses() {
    let (train, _) = train_and_dev();
    let train: Vec<EvalText> = train.into_iter().filter(|text| !text.id.starts_with("t-")).collect();
    let vocabulary = Evaluation::of(&train, Stages::Vocabulary);
    let with_model = Evaluation::of(&train, Stages::WithModel);
    println!("training portions of train_a to train_e and the retired holdout (flagged = level >= {FLAG})");
    print!("{}", table(&[("train, vocabulary alone", &vocabulary), ("train, with the model", &with_model)]));
    println!("misses and false alarms of the vocabulary alone in train_c, train_d and train_e:");
    for (id, category, lang, level, text) in &vocabulary.wrong {
        if ["c-", "d-", "e-"].iter().any(|writer| id.starts_with(writer)) {
            println!("  {id} [{category} {lang}] got {level}: {text}");
        }
    }
    // The model was trained on these texts: it must at least have learned them.
    let failures = with_model.failures(TRAIN_MIN_RECALL, TRAIN_MAX_FALSE_ALARM_RATE);
    assert!(failures.is_empty(), "training portions, with the model: {}", failures.join("; "));
}

/// What the training portions are held to with the model, just under what was reached at
/// branch detector3's last commit (recall 0.95 in its weakest category, method; false alarms
/// 0.053, all of them the vocabulary's).
const TRAIN_MIN_RECALL: f64 = 0.92;
const TRAIN_MAX_FALSE_ALARM_RATE: f64 = 0.06;

/// The dev split: a quarter of every (category, language) group of each written set but the
/// tuning set, fixed by a seed, never trained or tuned on. Counts only, never a text, so it stays a
/// measure: it is how generalisation is read without spending the frozen holdout.
#[test]
fn dev_split_meets_its_floor_and_reports_both_stages() {
    let (_, dev) = train_and_dev();
    let vocabulary = Evaluation::of(&dev, Stages::Vocabulary);
    let with_model = Evaluation::of(&dev, Stages::WithModel);
    println!("dev split of train_a to train_e and the retired holdout, never trained on (flagged = level >= {FLAG})");
    print!("{}", table(&[("dev, vocabulary alone", &vocabulary), ("dev, with the model", &with_model)]));
    let gap = with_model.failures(HOLDOUT_MIN_RECALL, HOLDOUT_MAX_FALSE_ALARM_RATE);
    if !gap.is_empty() {
        println!("dev gap to the issue's targets: {}", gap.join("; "));
    }
    let failures = with_model.failures(DEV_MIN_RECALL, DEV_MAX_FALSE_ALARM_RATE);
    assert!(failures.is_empty(), "dev split: {}", failures.join("; "));
}

/// What the dev split is held to (vocabulary and model): just under what was reached, raised
/// as it improves and never lowered. Since branch detector3 the dev split is a quarter of
/// six writers (train_a to train_e and the retired holdout), not two, and harder: at its last
/// commit, recall 0.59 in its weakest category (preparatory), 0.79 pooled; false alarms 24 of
/// 530, 0.045.
const DEV_MIN_RECALL: f64 = 0.55;
const DEV_MAX_FALSE_ALARM_RATE: f64 = 0.05;

/// Reads the frozen holdout, refusing a file whose SHA-256 is not the frozen one.
fn frozen_holdout() -> String {
    let bytes = std::fs::read(HOLDOUT_PATH).expect("data/eval/holdout2.jsonl is readable");
    let frozen = std::fs::read_to_string(HOLDOUT_SHA256_PATH).expect("data/eval/holdout2.jsonl.sha256 is readable");
    let frozen = frozen.split_whitespace().next().expect("a hash in holdout2.jsonl.sha256").to_ascii_lowercase();
    let actual: String = Sha256::digest(&bytes).iter().map(|byte| format!("{byte:02x}")).collect();
    assert_eq!(
        actual, frozen,
        "holdout2.jsonl is not the frozen holdout: a new holdout is a new file, never an edit of this one"
    );
    String::from_utf8(bytes).expect("holdout2.jsonl is UTF-8")
}

#[test]
fn frozen_holdout2_reports_the_gap_to_the_targets_and_never_regresses() {
    // Counts only: never a holdout text, nor an id, so nobody tunes to it by reading this.
    let holdout_texts = eval_texts(&frozen_holdout(), "holdout2.jsonl");
    let holdout_vocabulary = Evaluation::of(&holdout_texts, Stages::Vocabulary);
    let holdout = Evaluation::of(&holdout_texts, Stages::WithModel);
    let tuning = Evaluation::of(&eval_texts(TUNING, "tuning.jsonl"), Stages::WithModel);
    let (_, dev_texts) = train_and_dev();
    let dev = Evaluation::of(&dev_texts, Stages::WithModel);
    println!(
        "crisis-language detector, tuning set and dev split beside the frozen holdout (flagged = level >= {FLAG}), \
         vocabulary {}",
        revision()
    );
    print!(
        "{}",
        table(&[
            ("tuning", &tuning),
            ("dev", &dev),
            ("holdout2, vocabulary alone", &holdout_vocabulary),
            ("holdout2", &holdout)
        ])
    );
    let gap = holdout.failures(HOLDOUT_MIN_RECALL, HOLDOUT_MAX_FALSE_ALARM_RATE);
    if !gap.is_empty() {
        println!(
            "GAP TO THE TARGETS (recall >= {HOLDOUT_MIN_RECALL} per category, false alarms <= \
             {HOLDOUT_MAX_FALSE_ALARM_RATE}), not met: {}",
            gap.join("; ")
        );
    }
    let mut regressions = Vec::new();
    for &(category, floor) in &HOLDOUT2_FIRST_LOOK {
        let rate = holdout.tally(category, None).rate();
        if rate < floor {
            regressions.push(format!("recall in {category} is {rate:.3}, below its first look's {floor}"));
        }
    }
    let false_alarms = holdout.pooled(BENIGN_CATEGORIES, None).rate();
    if false_alarms > HOLDOUT2_FIRST_LOOK_FALSE_ALARMS {
        regressions.push(format!(
            "benign false-alarm rate is {false_alarms:.3}, above its first look's {HOLDOUT2_FIRST_LOOK_FALSE_ALARMS}"
        ));
    }
    assert!(regressions.is_empty(), "frozen holdout2 regressed: {}", regressions.join("; "));
}

/// What the first look at `holdout2.jsonl` measured (2026-12-01, the merge of branch
/// detector3; recall 597/682 = 0.88 pooled, English 0.89, Spanish 0.86; false alarms 13/310
/// = 0.042), rounded down: the test fails if a change falls below it, and prints the gap to
/// the targets, which this detector does NOT meet (only `attempt` reaches 0.95).
/// Raise a floor when a category improves; never lower one.
const HOLDOUT2_FIRST_LOOK: [(&str, f64); 11] = [
    ("wish_dead", 0.88),
    ("active_thoughts", 0.93),
    ("method", 0.85),
    ("intent", 0.90),
    ("plan", 0.93),
    ("preparatory", 0.85),
    ("attempt", 0.96),
    ("nssi", 0.72),
    ("harm_others", 0.80),
    ("cannot_stay_safe", 0.82),
    ("entrapment_burden", 0.93),
];
const HOLDOUT2_FIRST_LOOK_FALSE_ALARMS: f64 = 0.045;

// ---------------------------------------------------------------------------------------
// The older labelled set, with expected minimum levels
// ---------------------------------------------------------------------------------------

const LABELLED: &str = include_str!("../data/crisis_labelled.jsonl");
const MIN_RECALL: f64 = 0.95;
const MAX_FALSE_ALARM_RATE: f64 = 0.10;

const LABELS: [&str; 6] = ["crisis", "negated", "quoted", "idiom", "benign", "resolved"];

#[derive(Debug)]
struct Item {
    line: usize,
    text: String,
    label: String,
    expected: TextRiskLevel,
    holdout: bool,
}

fn items() -> Vec<Item> {
    LABELLED
        .lines()
        .enumerate()
        .filter(|(_, line)| !line.trim().is_empty())
        .map(|(index, line)| {
            let value: serde_json::Value =
                serde_json::from_str(line).unwrap_or_else(|e| panic!("line {}: not JSON: {e}", index + 1));
            let field = |name: &str| {
                value
                    .get(name)
                    .and_then(serde_json::Value::as_str)
                    .unwrap_or_else(|| panic!("line {}: no string `{name}`", index + 1))
                    .to_owned()
            };
            let label = field("label");
            assert!(LABELS.contains(&label.as_str()), "line {}: unknown label {label}", index + 1);
            let expected: TextRiskLevel =
                field("expected_min_level").parse().unwrap_or_else(|e| panic!("line {}: {e}", index + 1));
            let set = value.get("set").and_then(serde_json::Value::as_str);
            assert!(
                matches!(set, None | Some("round2" | "round3" | "holdout")),
                "line {}: unknown set {set:?}",
                index + 1
            );
            let holdout = set == Some("holdout");
            Item { line: index + 1, text: field("text"), label, expected, holdout }
        })
        .collect()
}

/// The highest level a non-crisis item may come out at without being a false alarm.
fn allowed(label: &str) -> TextRiskLevel {
    if label == "resolved" { TextRiskLevel::Low } else { TextRiskLevel::None }
}

#[test]
fn labelled_set_is_big_and_varied_enough_to_mean_something() {
    let items = items();
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for item in &items {
        *counts.entry(item.label.as_str()).or_default() += 1;
    }
    assert!(items.len() >= 150, "{} texts", items.len());
    assert!(counts["crisis"] >= 60, "{counts:?}");
    for label in LABELS {
        assert!(counts.get(label).copied().unwrap_or(0) >= 10, "too few {label}: {counts:?}");
    }
    for item in items.iter().filter(|item| item.label == "crisis") {
        assert!(
            item.expected >= TextRiskLevel::Moderate,
            "line {}: a crisis item expects moderate or above",
            item.line
        );
    }
    for item in items.iter().filter(|item| item.label != "crisis") {
        assert_eq!(item.expected, allowed(&item.label), "line {}: expected_min_level of a {}", item.line, item.label);
    }
}

/// Recall and false-alarm rate over some items, with the lines that missed.
#[derive(Debug, Default)]
struct Score {
    crisis: usize,
    detected: usize,
    non_crisis: usize,
    false_alarms: usize,
    misses: Vec<String>,
}

impl Score {
    fn recall(&self) -> f64 {
        self.detected as f64 / self.crisis.max(1) as f64
    }

    fn false_alarm_rate(&self) -> f64 {
        self.false_alarms as f64 / self.non_crisis.max(1) as f64
    }

    fn summary(&self) -> String {
        format!(
            "recall {:.3} ({}/{}), false-alarm rate {:.3} ({}/{})",
            self.recall(),
            self.detected,
            self.crisis,
            self.false_alarm_rate(),
            self.false_alarms,
            self.non_crisis
        )
    }
}

#[test]
fn labelled_set_recall_and_false_alarm_rate_meet_the_bar() {
    let items = items();
    let mut per_label: BTreeMap<&str, (usize, usize)> = BTreeMap::new();
    let (mut tuned, mut holdout) = (Score::default(), Score::default());
    let mut resolved_shown = 0;
    for item in &items {
        let detection = detect(&item.text);
        let crisis = item.label == "crisis";
        let ok = if crisis { detection.level >= item.expected } else { detection.level <= allowed(&item.label) };
        if item.label == "resolved" && detection.level == TextRiskLevel::Low {
            resolved_shown += 1;
        }
        let score = if item.holdout { &mut holdout } else { &mut tuned };
        if crisis {
            score.crisis += 1;
            score.detected += usize::from(ok);
        } else {
            score.non_crisis += 1;
            score.false_alarms += usize::from(!ok);
        }
        if !ok {
            let kind = if crisis { "missed" } else { "false alarm" };
            score.misses.push(format!(
                "  line {:>3} [{}] {kind}: got {} want {}: {}",
                item.line, item.label, detection.level, item.expected, item.text
            ));
        }
        let entry = per_label.entry(item.label.as_str()).or_default();
        entry.0 += 1;
        entry.1 += usize::from(ok);
    }
    println!("crisis-language detector on {} labelled texts", items.len());
    for label in LABELS {
        let (total, ok) = per_label.get(label).copied().unwrap_or_default();
        println!("  {label:<9} {ok:>3}/{total:<3} as expected");
    }
    println!(
        "  resolved shown at low (not dropped): {resolved_shown}/{}",
        per_label.get("resolved").map_or(0, |c| c.0)
    );
    println!("tuned rounds: {}", tuned.summary());
    if holdout.crisis + holdout.non_crisis > 0 {
        println!("holdout lines (never tuned on): {}", holdout.summary());
    }
    for (name, score) in [("tuned", &tuned), ("holdout", &holdout)] {
        if !score.misses.is_empty() {
            println!("{name} misses and false alarms:\n{}", score.misses.join("\n"));
        }
    }
    assert!(tuned.recall() >= MIN_RECALL, "recall {:.3} is below {MIN_RECALL}", tuned.recall());
    assert!(
        tuned.false_alarm_rate() <= MAX_FALSE_ALARM_RATE,
        "false-alarm rate {:.3} is above {MAX_FALSE_ALARM_RATE}",
        tuned.false_alarm_rate()
    );
}
