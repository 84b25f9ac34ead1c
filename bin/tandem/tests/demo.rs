//! `tandem demo` as the README shows it: it plays the whole story (the
//! primary paged at moderate level, then again at the raised level) and
//! exits 0 only because a human acknowledged the alert.

use std::process::Command;

#[test]
fn the_demo_plays_the_crisis_path_to_a_human_acknowledgement() {
    let output = Command::new(env!("CARGO_BIN_EXE_tandem"))
        .arg("demo")
        .env_remove("TANDEM_LOG")
        .output()
        .expect("run tandem demo");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "demo failed:\n{stdout}\n{}", String::from_utf8_lossy(&output.stderr));
    for expected in [
        "Call or text 988",
        "Not sleeping, pacing at night",
        "generated text: none",
        "→ Dr. Rivera: moderate escalation",
        "→ Dr. Rivera again: RAISED from moderate to ",
        "(signature verified)",
        "passed: Dr. Rivera did not acknowledge",
        "→ Dr. Chen",
        "Dr. Chen      acknowledged",
        "resolved",
        "demo ok: a human acknowledged the alert",
    ] {
        assert!(stdout.contains(expected), "`{expected}` missing from the demo's output:\n{stdout}");
    }
    assert!(!stdout.contains("INVALID"), "{stdout}");
}
