//! Measures the crisis-language detector, on three sets:
//!
//! - `data/eval/tuning.jsonl` (560 texts, English and Spanish, one writer, written from
//!   `data/eval/CATEGORIES.md` alone): the set the vocabulary is tuned on. Its report lists
//!   every miss and false alarm with its text: it is the working loop
//!   (`cargo test -p tandem-clinical --test detector_eval tuning -- --nocapture`).
//! - `data/eval/holdout.jsonl` (483 texts, another writer, the same definitions, frozen
//!   before any tuning): never read by anyone working on the vocabulary, only by
//!   [`frozen_holdout_never_regresses_and_reports_the_gap_to_the_targets`], which prints
//!   counts only, never a text, and fails when the file is not the frozen one (SHA-256 in
//!   `holdout.jsonl.sha256`) or when any category falls below its first-sight count.
//!   Target (issue 8, not yet met): recall >= 0.95 in every crisis category (languages
//!   pooled) and a benign false-alarm rate <= 0.05; the gap is printed on every run.
//! - `data/crisis_labelled.jsonl`: the older labelled set with expected minimum levels.
//!
//! A text is flagged when the detector's level is moderate or above: that is what fires the
//! safety response in check-ins (`CRISIS_LANGUAGE_LEVEL` in services/checkins). A benign text
//! flagged is a false alarm; a benign text at `low` is not (a clinician sees it, nobody is
//! paged).

use std::collections::BTreeMap;
use std::fmt::Write as _;

use sha2::{Digest, Sha256};
use tandem_clinical::{TextRiskLevel, Vocabulary, detect};

/// The level from which a text is a crisis for the check-in's safety response.
const FLAG: TextRiskLevel = TextRiskLevel::Moderate;

// ---------------------------------------------------------------------------------------
// Tuning set and frozen holdout, per category and language
// ---------------------------------------------------------------------------------------

const TUNING: &str = include_str!("../data/eval/tuning.jsonl");
const HOLDOUT_PATH: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/data/eval/holdout.jsonl");
const HOLDOUT_SHA256_PATH: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/data/eval/holdout.jsonl.sha256");

/// Targets on the frozen holdout (issue 8).
const HOLDOUT_MIN_RECALL: f64 = 0.95;
const HOLDOUT_MAX_FALSE_ALARM_RATE: f64 = 0.05;

/// What the tuning set is held to, so a vocabulary edit cannot quietly lose what it had. At
/// the rebuild (2026-12) it stood at recall 0.94-1.00 per category (wish_dead lowest: two
/// texts say it across sentences or inside reported speech) and false alarms 0.00-0.01; the
/// bar sits just under, per category, not at the holdout target.
const TUNING_MIN_RECALL: f64 = 0.90;
const TUNING_MAX_FALSE_ALARM_RATE: f64 = 0.03;

const CRISIS_CATEGORIES: [&str; 11] = [
    "wish_dead",
    "active_thoughts",
    "method",
    "intent",
    "plan",
    "preparatory",
    "attempt",
    "nssi",
    "harm_others",
    "cannot_stay_safe",
    "entrapment_burden",
];
const BENIGN_CATEGORIES: [&str; 5] = ["idiom", "negation", "reported", "past_resolved", "everyday"];
const LANGUAGES: [&str; 2] = ["en", "es"];

#[derive(Debug)]
struct EvalText {
    id: String,
    lang: String,
    category: String,
    crisis: bool,
    text: String,
}

fn eval_texts(source: &str, name: &str) -> Vec<EvalText> {
    source
        .lines()
        .enumerate()
        .filter(|(_, line)| !line.trim().is_empty())
        .map(|(index, line)| {
            // Errors name the line, never its text: the holdout is read by this code alone.
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
    fn of(texts: &[EvalText]) -> Self {
        let mut evaluation = Self::default();
        for text in texts {
            let level = detect(&text.text).level;
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
        for category in CRISIS_CATEGORIES {
            let tally = self.tally(category, None);
            if tally.rate() < min_recall {
                failures.push(format!("recall in {category} is {:.3}, below {min_recall}", tally.rate()));
            }
        }
        let benign = self.pooled(&BENIGN_CATEGORIES, None);
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
    for category in CRISIS_CATEGORIES {
        row(&mut out, &format!("  {category}"), &|evaluation, lang| evaluation.tally(category, lang));
    }
    row(&mut out, "  all crisis", &|evaluation, lang| evaluation.pooled(&CRISIS_CATEGORIES, lang));
    let _ = writeln!(out, "false alarms (flagged / benign texts)");
    for category in BENIGN_CATEGORIES {
        row(&mut out, &format!("  {category}"), &|evaluation, lang| evaluation.tally(category, lang));
    }
    row(&mut out, "  all benign", &|evaluation, lang| evaluation.pooled(&BENIGN_CATEGORIES, lang));
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
    let tuning = Evaluation::of(&texts);
    println!("crisis-language detector, tuning set (flagged = level >= {FLAG}), vocabulary {}", revision());
    print!("{}", table(&[("tuning", &tuning)]));
    if !tuning.wrong.is_empty() {
        println!("misses and false alarms:");
        for (id, category, lang, level, text) in &tuning.wrong {
            println!("  {id} [{category} {lang}] got {level}: {text}");
        }
    }
    let failures = tuning.failures(TUNING_MIN_RECALL, TUNING_MAX_FALSE_ALARM_RATE);
    assert!(failures.is_empty(), "tuning set: {}", failures.join("; "));
}

/// Reads the frozen holdout, refusing a file whose SHA-256 is not the frozen one.
fn frozen_holdout() -> String {
    let bytes = std::fs::read(HOLDOUT_PATH).expect("data/eval/holdout.jsonl is readable");
    let frozen = std::fs::read_to_string(HOLDOUT_SHA256_PATH).expect("data/eval/holdout.jsonl.sha256 is readable");
    let frozen = frozen.split_whitespace().next().expect("a hash in holdout.jsonl.sha256").to_ascii_lowercase();
    let actual: String = Sha256::digest(&bytes).iter().map(|byte| format!("{byte:02x}")).collect();
    assert_eq!(
        actual, frozen,
        "holdout.jsonl is not the frozen holdout: a new holdout is a new file, never an edit of this one"
    );
    String::from_utf8(bytes).expect("holdout.jsonl is UTF-8")
}

#[test]
fn frozen_holdout_never_regresses_and_reports_the_gap_to_the_targets() {
    // Counts only: never a holdout text, nor an id, so nobody tunes to it by reading this.
    let holdout_texts = eval_texts(&frozen_holdout(), "holdout.jsonl");
    let holdout = Evaluation::of(&holdout_texts);
    let tuning = Evaluation::of(&eval_texts(TUNING, "tuning.jsonl"));
    println!(
        "crisis-language detector, tuning set beside the frozen holdout (flagged = level >= {FLAG}), vocabulary {}",
        revision()
    );
    print!("{}", table(&[("tuning", &tuning), ("holdout", &holdout)]));
    // The targets are NOT met yet (first and only sight of the holdout at the
    // rebuild: recall 0.55, false alarms 0.057). They are reported here, every run, and the
    // test holds the detector to what it reached on first sight, per category, so that no
    // change can lose ground while the gap is closed by a better approach. Reaching the
    // targets is measured on a NEW holdout written the same way, never by tuning to this one.
    let gap = holdout.failures(HOLDOUT_MIN_RECALL, HOLDOUT_MAX_FALSE_ALARM_RATE);
    if !gap.is_empty() {
        println!(
            "gap to the targets (recall >= {HOLDOUT_MIN_RECALL} per category, false alarms <= {HOLDOUT_MAX_FALSE_ALARM_RATE}): {}",
            gap.join("; ")
        );
    }
    let mut regressions = Vec::new();
    for (category, floor) in HOLDOUT_FIRST_SIGHT_FLAGGED {
        let tally = holdout.tally(category, None);
        if tally.flagged < floor {
            regressions.push(format!("{category}: {} flagged, {floor} at first sight", tally.flagged));
        }
    }
    let benign = holdout.pooled(&BENIGN_CATEGORIES, None);
    if benign.flagged > HOLDOUT_FIRST_SIGHT_FALSE_ALARMS {
        regressions.push(format!(
            "benign: {} false alarms, {HOLDOUT_FIRST_SIGHT_FALSE_ALARMS} at first sight",
            benign.flagged
        ));
    }
    assert!(regressions.is_empty(), "the detector lost ground on the frozen holdout: {}", regressions.join("; "));
}

/// Crisis texts flagged per category (of 28 each) on the holdout's first sight, 2026-12-01.
const HOLDOUT_FIRST_SIGHT_FLAGGED: [(&str, usize); 11] = [
    ("wish_dead", 19),
    ("active_thoughts", 23),
    ("method", 11),
    ("intent", 20),
    ("plan", 7),
    ("preparatory", 12),
    ("attempt", 13),
    ("nssi", 20),
    ("harm_others", 9),
    ("cannot_stay_safe", 19),
    ("entrapment_burden", 16),
];

/// Benign texts flagged (of 175) on the holdout's first sight.
const HOLDOUT_FIRST_SIGHT_FALSE_ALARMS: usize = 10;

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
