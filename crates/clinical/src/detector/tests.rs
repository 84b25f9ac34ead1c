//! One test per handling rule, asserting levels and exact evidence spans.

use super::*;

fn level(text: &str) -> TextRiskLevel {
    detect(text).level
}

/// The matched text of each finding, in order.
fn found(text: &str) -> Vec<(Category, TextRiskLevel, String)> {
    detect(text).findings.into_iter().map(|f| (f.category, f.level, f.matched)).collect()
}

fn suppressed(text: &str) -> Vec<(SuppressionReason, String)> {
    detect(text).suppressed.into_iter().map(|s| (s.reason, s.matched)).collect()
}

#[test]
fn the_built_in_vocabulary_parses_and_is_well_formed() {
    let vocabulary = match Vocabulary::builtin() {
        Ok(vocabulary) => vocabulary,
        Err(errors) => panic!("crisis_vocabulary.toml is invalid:\n{}", errors.to_string().replace("; ", "\n")),
    };
    assert!(!vocabulary.revision().is_empty());
    let ids: Vec<&str> = vocabulary.rule_ids().collect();
    assert!(ids.len() >= 20, "{ids:?}");
    assert!(vocabulary.pattern_count() > ids.len());
    for category in [
        "wish-dead-",
        "active-",
        "method-",
        "intent-",
        "plan-",
        "prep-",
        "attempt-",
        "nssi-",
        "hto-",
        "unsafe-",
        "entrapment-",
        "es-",
    ] {
        assert!(ids.iter().any(|id| id.starts_with(category)), "no {category} entry");
    }
}

#[test]
fn every_example_in_the_vocabulary_does_what_it_says() {
    // A pattern that can never match is dead vocabulary a reviewer would trust; the
    // examples beside each entry and idiom prove each is reachable and does its job.
    let vocabulary = Vocabulary::builtin().unwrap();
    let failures = vocabulary.check_examples();
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    let without_examples = super::vocabulary::BUILTIN_SOURCE.replacen("examples = [\"suicide\", ", "hidden = [", 1);
    assert!(Vocabulary::parse(&without_examples).is_err(), "an entry must have examples");
}

#[test]
fn a_broken_vocabulary_is_rejected_with_field_paths() {
    let source = super::vocabulary::BUILTIN_SOURCE.replacen("level = \"moderate\"", "level = \"severe\"", 1).replacen(
        "patterns = [\"suicid*\"",
        "patterns = [\"{nosuchset}\", \"self-harm\"",
        1,
    );
    let errors = Vocabulary::parse(&source).unwrap_err();
    let fields: Vec<&str> = errors.violations().iter().map(|v| v.field.as_str()).collect();
    assert!(fields.contains(&"entry[0].patterns[0]"), "{errors}");
    assert!(fields.contains(&"entry[0].patterns[1]"), "{errors}");
    assert!(fields.contains(&"entry[2].level"), "{errors}");
    assert!(errors.to_string().contains("unknown set `{nosuchset}`"), "{errors}");
    let not_toml = Vocabulary::parse("format = ").unwrap_err();
    assert_eq!(not_toml.violations()[0].field, "vocabulary");
    let duplicate =
        super::vocabulary::BUILTIN_SOURCE.replacen("id = \"active-end-life\"\n", "id = \"mention-suicide\"\n", 1);
    assert!(Vocabulary::parse(&duplicate).unwrap_err().to_string().contains("already the id"));
}

#[test]
fn the_span_is_exactly_the_matched_bytes() {
    let text = "i want to kill myself tonight";
    let detection = detect(text);
    assert_eq!(detection.level, TextRiskLevel::Imminent);
    let ideation = detection.findings.iter().find(|f| f.category == Category::ActiveThoughts).unwrap();
    assert_eq!(ideation.span, 10..21);
    assert_eq!(ideation.matched, "kill myself");
    assert_eq!(ideation.level, TextRiskLevel::High);
    let timeframe = detection.findings.iter().find(|f| f.category == Category::Intent).unwrap();
    assert_eq!((timeframe.span.clone(), timeframe.qualifier), (22..29, Qualifier::Combined));
}

#[test]
fn spans_land_on_character_boundaries_in_any_script() {
    let text = "😢😢  Ça va pas… I  WANT to diiiie 😢";
    let detection = detect(text);
    assert_eq!(detection.level, TextRiskLevel::Moderate);
    let finding = &detection.findings[0];
    assert_eq!(&text[finding.span.clone()], "WANT to diiiie");
    assert_eq!(finding.matched, "WANT to diiiie");
}

#[test]
fn passive_ideation_is_moderate_and_active_is_high() {
    assert_eq!(level("I wish I were dead"), TextRiskLevel::Moderate);
    assert_eq!(level("honestly everyone would be better off without me"), TextRiskLevel::Moderate);
    assert_eq!(level("I want to kill myself"), TextRiskLevel::High);
    assert_eq!(level("been thinking about suicide a lot"), TextRiskLevel::High);
    assert_eq!(level("I keep cutting myself"), TextRiskLevel::High);
    assert_eq!(level("i self-harm when it gets bad"), TextRiskLevel::Moderate);
    assert_eq!(level("I'm going to kill him"), TextRiskLevel::High);
}

#[test]
fn intent_plan_means_or_a_timeframe_with_ideation_is_imminent() {
    assert_eq!(level("im going to kill myself"), TextRiskLevel::Imminent);
    assert_eq!(level("I wish I was dead. I've been saving up my pills."), TextRiskLevel::Imminent);
    assert_eq!(level("I want to end my life. I wrote a note for my mom."), TextRiskLevel::Imminent);
    // A timeframe lifts passive ideation to high, not imminent.
    assert_eq!(level("i want to die today"), TextRiskLevel::High);
    // Self-harm with means is high, not imminent: it is not suicidal intent.
    assert_eq!(level("I want to cut. I bought new blades."), TextRiskLevel::High);
    // Modifiers alone are nothing, and say so to reviewers.
    // (The vocabulary alone: the learned stage reads the whole text and may still flag it.)
    let vocabulary = Vocabulary::builtin().unwrap();
    let alone = |text: &str| vocabulary.detect_vocabulary_only(text).level;
    assert_eq!(alone("I have the pills the pharmacy gave me. See you tonight!"), TextRiskLevel::None);
    // Means beside an implicit action pairs to high; a generic plan and a timeframe never pair.
    assert_eq!(level("I have a knife under my pillow and I keep thinking about using it"), TextRiskLevel::High);
    assert_eq!(level("I made a plan to go running. I'm going to do it this weekend!"), TextRiskLevel::None);
    let set_aside = suppressed("I have a plan for tonight");
    assert!(set_aside.iter().all(|(reason, _)| *reason == SuppressionReason::NoContext), "{set_aside:?}");
}

#[test]
fn a_question_or_checklist_answered_no_is_negated() {
    let vocabulary = Vocabulary::builtin().unwrap();
    let alone = |text: &str| vocabulary.detect_vocabulary_only(text);
    for text in [
        "Do I want to die? No. Do I want to sleep for a week? Yes.",
        "Sad, yes. Wanting to die, no.",
        "¿Quiero morirme? No. ¿Quiero dormir una semana? Sí.",
        "Triste sí. Con ganas de morirme no.",
    ] {
        let detection = alone(text);
        assert_eq!(detection.level, TextRiskLevel::None, "{text}");
        assert!(detection.suppressed.iter().any(|item| item.reason == SuppressionReason::Negated), "{text}");
    }
    // The answer has to end its sentence: "no one", "no matter what" deny nothing.
    for text in ["i want to die. no one would care", "i want to die no matter what they say", "i want to die, no joke"]
    {
        assert!(alone(text).level >= TextRiskLevel::Moderate, "{text}");
    }
}

#[test]
fn negation_before_a_match_suppresses_it() {
    for text in [
        "I'm not going to hurt myself",
        "I would never kill myself",
        "I don't want to die",
        "no thoughts of suicide this week",
        "I'm not suicidal, just tired",
        "i have no plan to kill myself",
        "I don’t think I want to die anymore",
        "it's not that I want to die, I just need a break",
    ] {
        assert_eq!(level(text), TextRiskLevel::None, "{text:?}: {:?}", detect(text));
    }
    let reasons = suppressed("I'm not going to hurt myself");
    assert_eq!(reasons[0].0, SuppressionReason::Negated);
    let cue = detect("I'm not going to hurt myself").suppressed[0].cue.clone().unwrap();
    assert_eq!(&"I'm not going to hurt myself"[cue], "not");
}

#[test]
fn phrases_that_only_look_negated_still_count() {
    assert_eq!(level("I can't stop thinking about killing myself"), TextRiskLevel::High);
    assert_eq!(level("I don't want to live anymore"), TextRiskLevel::Moderate);
    assert_eq!(level("I dont want to be alive"), TextRiskLevel::Moderate);
    assert_eq!(level("I don't know why I want to die"), TextRiskLevel::Moderate);
    assert_eq!(level("not gonna lie i want to kill myself"), TextRiskLevel::High);
    assert_eq!(level("no one would miss me if I was gone"), TextRiskLevel::Moderate);
    assert_eq!(level("I'm not okay and I want to die"), TextRiskLevel::Moderate);
}

#[test]
fn quotation_and_reported_speech_are_someone_elses_words() {
    for text in [
        "my friend said she wanted to die",
        "She texted me \"I want to kill myself\" and I didn't know what to say",
        "in the movie the main character wants to end his life",
        "the song goes “i want to die, i want to die”",
        "he told me he has been cutting himself",
        "My sister is suicidal and I'm scared for her",
    ] {
        assert_eq!(level(text), TextRiskLevel::None, "{text:?}: {:?}", detect(text));
    }
    let reasons = suppressed("my friend said she wanted to die");
    assert_eq!(reasons[0].0, SuppressionReason::Reported);
}

#[test]
fn the_writer_speaking_in_first_person_still_counts_beside_quotes() {
    assert_eq!(level("I told her \"I want to kill myself\""), TextRiskLevel::High);
    assert_eq!(level("my friend said she wanted to die, and I want to die too"), TextRiskLevel::Moderate);
    let echoed = detect("my friend said she wanted to die. honestly same");
    assert_eq!(echoed.level, TextRiskLevel::Moderate);
    assert_eq!(echoed.findings[0].qualifier, Qualifier::Echoed);
    // A stray quotation mark does not hide what follows it.
    assert_eq!(level("I said \"ok and went home. I want to kill myself"), TextRiskLevel::High);
}

#[test]
fn idioms_are_not_crisis_language() {
    for text in [
        "this homework is killing me",
        "I could die of embarrassment",
        "I'm dying to see that movie",
        "that cake was to die for",
        "dead tired after my shift",
        "we killed it at the game",
        "just killing time before class",
        "bored to death in this lecture",
        "I'd kill for a coffee right now",
        "I've been killing myself studying for finals",
        "cut myself shaving this morning, ouch",
        "ran 5 kms today",
        "I'm going to kill my brother for eating my fries",
        "shot him a text about dinner",
        "we had a suicide prevention assembly",
    ] {
        assert_eq!(level(text), TextRiskLevel::None, "{text:?}: {:?}", detect(text));
    }
    assert_eq!(suppressed("I've been killing myself studying")[0].0, SuppressionReason::Idiom);
    // A longer match that contains an idiom is more specific than it and stands.
    assert_eq!(level("last night I called the suicide hotline"), TextRiskLevel::Moderate);
}

#[test]
fn a_resolved_past_is_lowered_to_low_not_dropped() {
    let text = "last year I thought about suicide but I'm in a much better place now";
    let detection = detect(text);
    assert_eq!(detection.level, TextRiskLevel::Low);
    let finding = &detection.findings[0];
    assert_eq!(finding.matched, "thought about suicide");
    assert_eq!((finding.qualifier, finding.vocabulary_level), (Qualifier::ResolvedPast, TextRiskLevel::High));
    assert_eq!(level("used to self-harm, 2 years clean"), TextRiskLevel::Low);
    assert_eq!(level("Two years ago I wanted to die every day. Now I'm doing so much better."), TextRiskLevel::Low);
    // An attempt history with no resolution stated keeps its level.
    assert_eq!(level("I tried to kill myself two years ago"), TextRiskLevel::High);
    // Nor is it resolved when it is back.
    assert_eq!(level("I used to cut myself and lately I've started again"), TextRiskLevel::High);
    // "I'm used to" is not the past.
    assert_eq!(level("i'm used to wanting to die"), TextRiskLevel::Moderate);
}

#[test]
fn slang_misspellings_and_censoring_are_read() {
    for text in
        ["kms", "i wanna kms fr", "thinking of how to unalive myself", "sewerslide is on my mind", "k*ll myself"]
    {
        assert_eq!(level(text), TextRiskLevel::High, "{text:?}: {:?}", detect(text));
    }
    assert_eq!(level("i want to kil myslef"), TextRiskLevel::High);
    assert_eq!(level("I’m thinking about su1c1de"), TextRiskLevel::High);
    assert_eq!(level("i WANT   to\n die"), TextRiskLevel::None, "a line break ends the sentence");
    assert_eq!(level("i WANT   to   die"), TextRiskLevel::Moderate);
}

#[test]
fn other_peoples_risk_is_not_the_writers() {
    assert_eq!(level("my brother wants to kill himself"), TextRiskLevel::None);
    assert_eq!(level("she says she wants to die"), TextRiskLevel::None);
    assert_eq!(level("he is going to kill her"), TextRiskLevel::None);
    assert_eq!(level("my mom says I'm a burden and honestly I want to die"), TextRiskLevel::Moderate);
    assert_eq!(level("my family would be better off without me"), TextRiskLevel::Moderate);
}

#[test]
fn evidence_quotes_only_the_matched_words() {
    let text = "My name is Sam Jones, I live at 12 Elm St, and I want to kill myself";
    let detection = detect(text);
    let evidence = detection.evidence();
    assert_eq!(evidence, ["high active suicidal thoughts: \"kill myself\" (rule active-end-life)"]);
    assert!(evidence.iter().all(|line| !line.contains("Sam") && !line.contains("Elm")));
    let resolved = detect("used to self-harm, 2 years clean").evidence();
    assert!(resolved[0].contains("described as past and resolved, lowered from moderate"), "{resolved:?}");
}

#[test]
fn a_phrase_buried_in_a_long_journal_is_found_where_it_is() {
    let filler = "Today was long and I went to work and came home and made pasta. ".repeat(300);
    let text = format!("{filler}Honestly I want to kill myself. {filler}");
    assert!(text.chars().count() > 20_000);
    let detection = detect(&text);
    assert_eq!(detection.level, TextRiskLevel::High);
    assert_eq!(found(&text), [(Category::ActiveThoughts, TextRiskLevel::High, "kill myself".to_owned())]);
    assert_eq!(&text[detection.findings[0].span.clone()], "kill myself");
}

#[test]
fn empty_and_benign_text_is_none() {
    assert_eq!(detect(""), Detection::default());
    assert_eq!(level("   \n\n  "), TextRiskLevel::None);
    assert_eq!(level("Had a good session with my therapist and went for a walk."), TextRiskLevel::None);
}

#[test]
fn levels_order_parse_and_print_lowercase() {
    assert!(TextRiskLevel::None < TextRiskLevel::Low && TextRiskLevel::High < TextRiskLevel::Imminent);
    for level in TextRiskLevel::ALL {
        assert_eq!(level.as_str().parse::<TextRiskLevel>(), Ok(level));
        assert_eq!(level.to_string(), level.as_str());
    }
    assert_eq!("HIGH".parse::<TextRiskLevel>(), Ok(TextRiskLevel::High));
    assert!("severe".parse::<TextRiskLevel>().is_err());
    assert_eq!(Category::HarmToOthers.as_str(), "harm_others");
}
