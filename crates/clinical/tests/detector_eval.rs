//! Measures the crisis-language detector on the labelled set in
//! `crates/clinical/data/crisis_labelled.jsonl` and fails below recall 0.95 or above a
//! false-alarm rate of 0.10.
//!
//! Recall: crisis texts detected at or above their `expected_min_level`. False alarm: a
//! negated, quoted, idiom or benign text above `none`, or a resolved one above `low`.
//! Run with `--nocapture` to see the table and every miss.
//!
//! The set was written in rounds, each before the vocabulary saw it, and its first-sight
//! numbers are kept here because they, not the tuned ones, estimate how the detector does
//! on text nobody has tuned it for:
//! - round 1 (no `set` field), first sight: recall 0.786 (66/84), false alarms 0.045 (5/110);
//!   then tuned on.
//! - round 2 (`"set": "round2"`), first sight: recall 0.682 (15/22), false alarms 0.087
//!   (2/23); then tuned on.
//! - round 3 (`"set": "round3"`), first sight: recall 0.520 (13/25), false alarms 0.040
//!   (1/25); then tuned on.
//!
//! So on phrasing the vocabulary has not seen, expect it to find roughly half to two thirds
//! of crisis texts: it is a second net under the structured triggers, not the first.
//! Lines marked `"set": "holdout"` are never tuned on: their numbers are printed apart and
//! are not held to the bar, since a bar on them would force tuning on them. Add reviewed
//! texts there (a clinician's, ideally); when a fix covers one, move it into a round.

use std::collections::BTreeMap;

use tandem_clinical::{TextRiskLevel, detect};

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
fn the_labelled_set_is_big_and_varied_enough_to_mean_something() {
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
fn recall_and_false_alarm_rate_meet_the_bar() {
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
        println!("holdout (never tuned on): {}", holdout.summary());
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
