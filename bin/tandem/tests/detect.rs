//! `tandem detect` as a reviewer runs it: texts in on stdin, one JSON line out per text.

use std::io::Write;
use std::process::{Command, Output, Stdio};

use serde_json::Value;

const TANDEM: &str = env!("CARGO_BIN_EXE_tandem");

fn run(args: &[&str], stdin: &str) -> Output {
    let mut child = Command::new(TANDEM)
        .arg("detect")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start tandem detect");
    child.stdin.take().expect("stdin").write_all(stdin.as_bytes()).expect("write stdin");
    child.wait_with_output().expect("tandem detect runs")
}

fn lines(output: &Output) -> Vec<Value> {
    assert!(output.status.success(), "exit {:?}: {}", output.status, String::from_utf8_lossy(&output.stderr));
    String::from_utf8(output.stdout.clone())
        .expect("utf-8 stdout")
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}")))
        .collect()
}

#[test]
fn plain_lines_give_one_json_line_each_with_spans() {
    let out = lines(&run(&[], "i want to kill myself tonight\n\n   \nthis homework is killing me\r\n"));
    assert_eq!(out.len(), 2, "blank lines are skipped: {out:?}");
    assert_eq!(out[0]["line"], 1);
    assert_eq!(out[0]["level"], "imminent");
    assert!(out[0].get("id").is_none());
    let ideation = out[0]["findings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["category"] == "active_thoughts")
        .expect("an ideation finding");
    assert_eq!((ideation["start"].as_u64(), ideation["end"].as_u64()), (Some(10), Some(21)));
    assert_eq!(ideation["matched"], "kill myself");
    assert_eq!(ideation["level"], "high");
    assert_eq!(ideation["rule"], "active-end-life");
    assert_eq!(out[1]["line"], 4);
    assert_eq!(out[1]["level"], "none");
    assert_eq!(out[1]["findings"], Value::Array(vec![]));
}

#[test]
fn json_lines_use_the_text_field_and_echo_the_id() {
    let input = concat!(
        "{\"id\": 7, \"text\": \"I wish I were dead\", \"patient\": \"x\"}\n",
        "{\"id\": \"b\", \"text\": \"I'm not going to hurt myself\"}\n",
        "{\"note\": \"no text field, so this whole line is the text\"}\n",
        "{\"text\": \"kms\"}\n",
    );
    let out = lines(&run(&[], input));
    assert_eq!(out.len(), 4);
    assert_eq!((&out[0]["id"], &out[0]["level"]), (&Value::from(7), &Value::from("moderate")));
    assert_eq!(out[0]["findings"][0]["matched"], "wish I were dead");
    assert_eq!((&out[1]["id"], &out[1]["level"]), (&Value::from("b"), &Value::from("none")));
    assert!(out[2].get("id").is_none());
    assert_eq!(out[2]["level"], "none");
    assert!(out[3].get("id").is_none());
    assert_eq!(out[3]["level"], "high");
}

#[test]
fn min_level_filters_and_explain_shows_what_was_set_aside() {
    let input = "I want to die\nI want to kill myself\nI'm not going to hurt myself\n";
    let high = lines(&run(&["--min-level", "high"], input));
    assert_eq!(high.len(), 1);
    assert_eq!(high[0]["line"], 2);
    let explained = lines(&run(&["--explain"], input));
    assert!(explained[0]["suppressed"].as_array().unwrap().is_empty());
    let negated = &explained[2]["suppressed"][0];
    assert_eq!(negated["reason"], "negated");
    assert_eq!(negated["cue"], "not");
    assert!(lines(&run(&[], input))[2].get("suppressed").is_none(), "only with --explain");
    let bad = run(&["--min-level", "severe"], input);
    assert!(!bad.status.success());
}

#[test]
fn an_edited_vocabulary_can_be_backtested_without_rebuilding() {
    let dir = tempfile::tempdir().unwrap();
    let builtin = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../crates/clinical/data/crisis_vocabulary.toml"
    ))
    .expect("the built-in vocabulary");
    let edited = dir.path().join("edited.toml");
    let added = concat!(
        "\n[[entry]]\nid = \"si-test-phrase\"\ncategory = \"wish_dead\"\nlevel = \"moderate\"\n",
        "patterns = [\"want to be a cloud\"]\nexamples = [\"i want to be a cloud\", \"an example that cannot fire\"]\n",
    );
    let insert_at = builtin.find("\n[[entry]]").expect("an entry");
    std::fs::write(&edited, format!("{}{added}{}", &builtin[..insert_at], &builtin[insert_at..])).unwrap();
    let text = "some days i want to be a cloud\n";
    assert_eq!(lines(&run(&[], text))[0]["level"], "none");
    let backtest = run(&["--vocabulary", edited.to_str().unwrap()], text);
    let out = lines(&backtest);
    assert_eq!(
        (&out[0]["level"], &out[0]["findings"][0]["rule"]),
        (&Value::from("moderate"), &Value::from("si-test-phrase"))
    );
    // An example the edit does not satisfy is reported, and the backtest still runs.
    let stderr = String::from_utf8_lossy(&backtest.stderr);
    assert!(stderr.contains("warning:") && stderr.contains("an example that cannot fire"), "{stderr}");

    let broken = dir.path().join("broken.toml");
    std::fs::write(&broken, builtin.replacen("level = \"low\"", "level = \"lowish\"", 1)).unwrap();
    let rejected = run(&["--vocabulary", broken.to_str().unwrap()], text);
    assert!(!rejected.status.success());
    let stderr = String::from_utf8_lossy(&rejected.stderr);
    assert!(stderr.contains("entry[0].level"), "{stderr}");
}
