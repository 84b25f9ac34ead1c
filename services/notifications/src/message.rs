//! What a notification says, per purpose. Rendered once when a delivery is
//! queued and stored with it, so every retry sends the same bytes.
//!
//! No patient text ever goes into a message: alerts carry ids, the level, the
//! step and the deadline; reminders on outside channels say only that
//! something is due (an SMS or an email preview must not reveal mental-health
//! care to whoever sees the screen); only the in-app inbox names the item.

use std::time::SystemTime;

use chrono::{DateTime, SecondsFormat, Utc};
use chrono_tz::Tz;
use serde::{Deserialize, Serialize};
use serde_json::json;
use tandem_proto::events::v1::AlertReason;
use tandem_proto::triage::v1::RiskLevel;

/// Why a notification is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Purpose {
    /// A crisis alert for a step of an escalation.
    Alert,
    /// A reminder of a due measure or homework.
    Reminder,
    /// A verification code for a new endpoint.
    Verification,
    /// Word to a crisis contact that an alert went back to the care team.
    Notice,
}

impl Purpose {
    /// The name stored in the database.
    pub fn as_str(self) -> &'static str {
        match self {
            Purpose::Alert => "alert",
            Purpose::Reminder => "reminder",
            Purpose::Verification => "verification",
            Purpose::Notice => "notice",
        }
    }

    /// From the stored name.
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "alert" => Some(Purpose::Alert),
            "reminder" => Some(Purpose::Reminder),
            "verification" => Some(Purpose::Verification),
            "notice" => Some(Purpose::Notice),
            _ => None,
        }
    }
}

/// A rendered notification.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Message {
    /// Email subject and inbox title.
    pub title: String,
    /// Email body, SMS text and inbox body.
    pub text: String,
    /// The JSON posted to webhooks.
    pub webhook: serde_json::Value,
}

impl Message {
    /// The webhook body's bytes: what is signed and sent.
    pub fn webhook_body(&self) -> Vec<u8> {
        // Serialising a Value cannot fail: every key is a string.
        serde_json::to_vec(&self.webhook).unwrap_or_default()
    }
}

/// What an alert is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AlertFacts {
    /// The escalation.
    pub escalation_id: String,
    /// The patient (an opaque id, never a name).
    pub patient_id: String,
    /// The organisation.
    pub org_id: String,
    /// The risk level.
    pub level: RiskLevel,
    /// The chain step alerted.
    pub step: u32,
    /// The escalation's alert attempt (each goes out once per channel).
    pub attempt: u32,
    /// Who is alerted.
    pub recipient: String,
    /// When the step must acknowledge by.
    pub ack_deadline: Option<SystemTime>,
    /// Why this alert is sent.
    pub why: AlertWhy,
}

/// Why an alert is sent; a re-alert says what changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AlertWhy {
    /// The first alert, or the next step of the chain.
    Alert,
    /// A higher-level trigger joined: the same holder, alerted again at the new level.
    LevelRaised {
        /// The level before.
        from: RiskLevel,
    },
    /// The care team became known: handed back from the org's crisis contact.
    HandedBack,
}

impl AlertWhy {
    /// Triage's reason (`EscalationChanged::why_alerted`) with the previous level.
    pub fn from_reason(reason: AlertReason, previous_level: RiskLevel) -> Self {
        match reason {
            AlertReason::LevelRaised => AlertWhy::LevelRaised { from: previous_level },
            AlertReason::CareTeamKnown => AlertWhy::HandedBack,
            AlertReason::Raised | AlertReason::DeadlinePassed | AlertReason::NotReached | AlertReason::Unspecified => {
                AlertWhy::Alert
            }
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            AlertWhy::Alert => "alert",
            AlertWhy::LevelRaised { .. } => "level_raised",
            AlertWhy::HandedBack => "care_team_known",
        }
    }
}

/// "high-risk", "imminent-risk", ...
pub fn level_words(level: RiskLevel) -> &'static str {
    match level {
        RiskLevel::Imminent => "imminent-risk",
        RiskLevel::High => "high-risk",
        RiskLevel::Moderate => "moderate-risk",
        RiskLevel::Low => "low-risk",
        RiskLevel::None | RiskLevel::Unspecified => "risk",
    }
}

fn rfc3339(at: SystemTime) -> String {
    DateTime::<Utc>::from(at).to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// "14:05 UTC", or the reader's own time as "09:05 EST".
fn clock(at: SystemTime, zone: Option<Tz>) -> String {
    match zone {
        Some(zone) => DateTime::<Utc>::from(at).with_timezone(&zone).format("%H:%M %Z").to_string(),
        None => DateTime::<Utc>::from(at).format("%H:%M UTC").to_string(),
    }
}

fn article(words: &str) -> &'static str {
    if words.starts_with('i') { "an" } else { "a" }
}

/// The crisis alert for one attempt; `zone` is the reader's time zone, if known.
pub fn alert(facts: &AlertFacts, zone: Option<Tz>, now: SystemTime) -> Message {
    let level = level_words(facts.level);
    let by = match facts.ack_deadline {
        Some(deadline) => format!("by {}", clock(deadline, zone)),
        None => "now".to_owned(),
    };
    let (line, title) = match facts.why {
        AlertWhy::LevelRaised { from } => (
            format!(
                "Tandem: RAISED to {level}: the alert for one of your patients (was {}) needs acknowledgement {by}",
                level_words(from)
            ),
            format!("Tandem: raised to {level} — acknowledgement needed"),
        ),
        AlertWhy::HandedBack => (
            format!(
                "Tandem: {} {level} alert for one of your patients, handed over from the crisis contact now that the \
                 care team is known, needs acknowledgement {by}",
                article(level)
            ),
            format!("Tandem: {level} alert — acknowledgement needed"),
        ),
        AlertWhy::Alert => (
            format!("Tandem: {} {level} alert for one of your patients needs acknowledgement {by}", article(level)),
            format!("Tandem: {level} alert — acknowledgement needed"),
        ),
    };
    let text = format!(
        "{line}.\n\nOpen Tandem to acknowledge it. If you cannot respond, do nothing: the alert moves to the next \
         person on the care team when the deadline passes.\n\nEscalation: {}\nPatient: {}\nOrganisation: {}\nLevel: \
         {level}\nStep: {}\n",
        facts.escalation_id, facts.patient_id, facts.org_id, facts.step
    );
    let previous_level = match facts.why {
        AlertWhy::LevelRaised { from } => Some(from.as_str_name()),
        _ => None,
    };
    let webhook = json!({
        "type": "escalation.notify",
        "timestamp": rfc3339(now),
        "data": {
            "escalation_id": facts.escalation_id,
            "patient_id": facts.patient_id,
            "org_id": facts.org_id,
            "level": facts.level.as_str_name(),
            "previous_level": previous_level,
            "reason": facts.why.as_str(),
            "step": facts.step,
            "attempt": facts.attempt,
            "recipient": facts.recipient,
            "ack_deadline": facts.ack_deadline.map(rfc3339),
            "message": line,
        }
    });
    Message { title, text, webhook }
}

/// Word to the crisis contact that an alert it held went back to the
/// patient's care team (`facts` describe the alert as it is now).
pub fn handed_back(facts: &AlertFacts, crisis_contact: &str, now: SystemTime) -> Message {
    let level = level_words(facts.level);
    let line = format!(
        "Tandem: the {level} alert you were paged for is now with the patient's care team ({}); no further action is \
         needed from you for it",
        facts.recipient
    );
    let text = format!(
        "{line}.\n\nThe care team became known after the alert reached you, so it was handed back to them.\n\n\
         Escalation: {}\nPatient: {}\nOrganisation: {}\nLevel: {level}\n",
        facts.escalation_id, facts.patient_id, facts.org_id
    );
    let webhook = json!({
        "type": "escalation.handed_back",
        "timestamp": rfc3339(now),
        "data": {
            "escalation_id": facts.escalation_id,
            "patient_id": facts.patient_id,
            "org_id": facts.org_id,
            "level": facts.level.as_str_name(),
            "attempt": facts.attempt,
            "crisis_contact": crisis_contact,
            "now_with": facts.recipient,
            "message": line,
        }
    });
    Message { title: "Tandem: alert handed back to the care team".to_owned(), text, webhook }
}

/// A reminder of one due item. `item_title` only reaches the in-app inbox.
pub fn reminder(
    patient_id: &str,
    care_plan_id: &str,
    item_id: &str,
    item_title: &str,
    due_at: SystemTime,
    in_app: bool,
    now: SystemTime,
) -> Message {
    let text = if in_app {
        format!("“{item_title}” is due. Open it when you have a moment.")
    } else {
        "Tandem: you have something due in Tandem. Open the app when you have a moment.".to_owned()
    };
    let webhook = json!({
        "type": "reminder.due",
        "timestamp": rfc3339(now),
        "data": {
            "patient_id": patient_id,
            "care_plan_id": care_plan_id,
            "item_id": item_id,
            "due_at": rfc3339(due_at),
            "message": "Tandem: you have something due in Tandem.",
        }
    });
    Message { title: "Tandem reminder".to_owned(), text, webhook }
}

/// A verification code for a new endpoint.
pub fn verification(code: &str, valid_minutes: u64) -> Message {
    Message {
        title: "Your Tandem verification code".to_owned(),
        text: format!(
            "Your Tandem verification code is {code}. It expires in {valid_minutes} minutes. If you did not register \
             this address with Tandem, ignore this message."
        ),
        webhook: json!({ "type": "endpoint.verification", "code": code }),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn facts() -> AlertFacts {
        AlertFacts {
            escalation_id: "0190b6f4-7c1a-7d4e-9a51-3f1f2a9e0c11".into(),
            patient_id: "0190b6f4-7c1a-7d4e-9a51-3f1f2a9e0c12".into(),
            org_id: "north".into(),
            level: RiskLevel::High,
            step: 0,
            attempt: 0,
            recipient: "dr-primary".into(),
            // 2027-01-15T14:05:00Z
            ack_deadline: Some(SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_021_900)),
            why: AlertWhy::Alert,
        }
    }

    #[test]
    fn an_alert_names_level_deadline_and_ids_only() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_021_000);
        let message = alert(&facts(), None, now);
        let line = message.webhook["data"]["message"].as_str().unwrap();
        assert_eq!(line, "Tandem: a high-risk alert for one of your patients needs acknowledgement by 14:05 UTC");
        assert_eq!(message.webhook["type"], "escalation.notify");
        assert_eq!(message.webhook["data"]["level"], "RISK_LEVEL_HIGH");
        assert_eq!(message.webhook["data"]["ack_deadline"], "2027-01-15T14:05:00Z");
        assert!(message.text.contains(line));
        // In the reader's zone: 09:05 in New York in January.
        let local = alert(&facts(), Some(chrono_tz::America::New_York), now);
        assert!(local.text.contains("by 09:05 EST"), "{}", local.text);
        let imminent = alert(&AlertFacts { level: RiskLevel::Imminent, ack_deadline: None, ..facts() }, None, now);
        assert_eq!(
            imminent.webhook["data"]["message"],
            "Tandem: an imminent-risk alert for one of your patients needs acknowledgement now"
        );
    }

    #[test]
    fn a_re_alert_says_the_new_level_and_what_it_was() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_021_000);
        let raised = AlertFacts {
            level: RiskLevel::Imminent,
            attempt: 1,
            why: AlertWhy::from_reason(AlertReason::LevelRaised, RiskLevel::Moderate),
            ..facts()
        };
        let message = alert(&raised, None, now);
        assert_eq!(
            message.webhook["data"]["message"],
            "Tandem: RAISED to imminent-risk: the alert for one of your patients (was moderate-risk) needs \
             acknowledgement by 14:05 UTC"
        );
        assert_eq!(message.webhook["data"]["level"], "RISK_LEVEL_IMMINENT");
        assert_eq!(message.webhook["data"]["previous_level"], "RISK_LEVEL_MODERATE");
        assert_eq!(message.webhook["data"]["reason"], "level_raised");
        assert_eq!(message.webhook["data"]["attempt"], 1);
        assert_eq!(message.title, "Tandem: raised to imminent-risk — acknowledgement needed");
        assert_eq!(alert(&facts(), None, now).webhook["data"]["previous_level"], serde_json::Value::Null);
    }

    #[test]
    fn a_hand_back_tells_the_crisis_contact_who_has_it_now() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_021_000);
        let facts = AlertFacts { attempt: 1, why: AlertWhy::HandedBack, ..facts() };
        let told = handed_back(&facts, "on-call", now);
        assert_eq!(told.webhook["type"], "escalation.handed_back");
        assert_eq!(told.webhook["data"]["now_with"], "dr-primary");
        assert!(told.text.contains("now with the patient's care team (dr-primary)"), "{}", told.text);
        let paged = alert(&facts, None, now);
        assert!(paged.text.contains("handed over from the crisis contact"), "{}", paged.text);
    }

    #[test]
    fn reminders_outside_the_app_do_not_say_what_is_due() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let sms = reminder("p", "plan", "phq", "PHQ-9", now, false, now);
        assert!(!sms.text.contains("PHQ-9"));
        assert!(!sms.webhook.to_string().contains("PHQ-9"));
        let inbox = reminder("p", "plan", "phq", "PHQ-9", now, true, now);
        assert!(inbox.text.contains("PHQ-9"));
    }

    #[test]
    fn a_verification_webhook_carries_the_code() {
        let message = verification("123456", 15);
        assert_eq!(message.webhook, json!({"type": "endpoint.verification", "code": "123456"}));
        assert!(message.text.contains("123456"));
        let round: Message = serde_json::from_str(&serde_json::to_string(&message).unwrap()).unwrap();
        assert_eq!(round, message);
    }
}
