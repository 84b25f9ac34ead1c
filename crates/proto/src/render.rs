//! Plain-text renderings of contract messages that patients see verbatim.

use crate::careplans::v1::{SafetyContact, SafetyPlan};

/// The safety plan as plain text for the patient's crisis screen, in the six
/// Stanley-Brown steps (Stanley & Brown 2012, Cogn Behav Pract 19:256-264).
/// Only what the patient and clinician wrote: no generated words.
pub fn safety_plan_text(plan: &SafetyPlan) -> String {
    fn section(out: &mut String, heading: &str, lines: Vec<String>) {
        if lines.is_empty() {
            return;
        }
        out.push_str(heading);
        out.push('\n');
        for line in lines {
            out.push_str("- ");
            out.push_str(&line);
            out.push('\n');
        }
    }
    fn contact(contact: &SafetyContact) -> String {
        if contact.phone.is_empty() {
            return contact.name.clone();
        }
        format!("{}: {}", contact.name, contact.phone)
    }
    let mut out = String::new();
    section(&mut out, "1. Warning signs", plan.warning_signs.clone());
    section(&mut out, "2. Things I can do on my own", plan.coping_strategies.clone());
    section(
        &mut out,
        "3. People and places that take my mind off things",
        plan.distraction_contacts.iter().map(contact).chain(plan.distraction_places.iter().cloned()).collect(),
    );
    section(&mut out, "4. People I can ask for help", plan.help_contacts.iter().map(contact).collect());
    section(&mut out, "5. Professionals and crisis lines", plan.professional_contacts.iter().map(contact).collect());
    section(&mut out, "6. Making my environment safe", plan.environment_safety.clone());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_patients_words_in_stanley_brown_order() {
        let plan = SafetyPlan {
            warning_signs: vec!["Not sleeping".into()],
            help_contacts: vec![SafetyContact { name: "Sam".into(), phone: "555-0100".into() }],
            ..Default::default()
        };
        assert_eq!(
            safety_plan_text(&plan),
            "1. Warning signs\n- Not sleeping\n4. People I can ask for help\n- Sam: 555-0100\n"
        );
    }
}
