//! The triage service's settings (section `triage`; `TANDEM_TRIAGE__...`):
//! defaults for every org's rules, which orgs may change by RPC.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use tandem_proto::triage::v1 as pb;

/// Settings of the triage service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct TriageSettings {
    /// Time a moderate escalation's step has to acknowledge.
    #[serde(with = "humantime_serde")]
    pub moderate_ack: Duration,
    /// Time a high escalation's step has to acknowledge.
    #[serde(with = "humantime_serde")]
    pub high_ack: Duration,
    /// Time an imminent escalation's step has to acknowledge.
    #[serde(with = "humantime_serde")]
    pub imminent_ack: Duration,
    /// PHQ-9 rise over baseline that counts as reliable deterioration.
    pub deterioration_points: u32,
    /// Missed measures in a row that count as disengagement.
    pub disengagement_missed: u32,
    /// The subject alerted when the care-team chain runs out
    /// (`tandem_server::config::CRISIS_CONTACT_KEY`, which check-ins reads too).
    pub crisis_contact: String,
}

impl Default for TriageSettings {
    fn default() -> Self {
        Self {
            moderate_ack: Duration::from_secs(24 * 3600),
            high_ack: Duration::from_secs(15 * 60),
            imminent_ack: Duration::from_secs(5 * 60),
            // Reliable deterioration on PHQ-9: a rise of 5 or more (DESIGN.md).
            deterioration_points: 5,
            disengagement_missed: 3,
            crisis_contact: tandem_server::config::DEFAULT_CRISIS_CONTACT.to_owned(),
        }
    }
}

impl TriageSettings {
    /// These settings as the org rules every org starts from.
    pub fn default_rules(&self) -> pb::TriageRules {
        pb::TriageRules {
            moderate_ack_seconds: secs(self.moderate_ack),
            high_ack_seconds: secs(self.high_ack),
            imminent_ack_seconds: secs(self.imminent_ack),
            deterioration_points: self.deterioration_points,
            disengagement_missed: self.disengagement_missed,
            crisis_contact: self.crisis_contact.clone(),
        }
    }
}

fn secs(duration: Duration) -> u32 {
    u32::try_from(duration.as_secs()).unwrap_or(u32::MAX).max(1)
}

/// `rules` with every zero field taken from `defaults`.
pub fn fill(rules: &pb::TriageRules, defaults: &pb::TriageRules) -> pb::TriageRules {
    let pick = |value: u32, default: u32| if value == 0 { default } else { value };
    pb::TriageRules {
        moderate_ack_seconds: pick(rules.moderate_ack_seconds, defaults.moderate_ack_seconds),
        high_ack_seconds: pick(rules.high_ack_seconds, defaults.high_ack_seconds),
        imminent_ack_seconds: pick(rules.imminent_ack_seconds, defaults.imminent_ack_seconds),
        deterioration_points: pick(rules.deterioration_points, defaults.deterioration_points),
        disengagement_missed: pick(rules.disengagement_missed, defaults.disengagement_missed),
        crisis_contact: if rules.crisis_contact.is_empty() {
            defaults.crisis_contact.clone()
        } else {
            rules.crisis_contact.clone()
        },
    }
}

/// The acknowledgement window of a level under `rules`; `None` for levels
/// that do not escalate.
pub fn ack_window(rules: &pb::TriageRules, level: pb::RiskLevel) -> Option<Duration> {
    let seconds = match level {
        pb::RiskLevel::Moderate => rules.moderate_ack_seconds,
        pb::RiskLevel::High => rules.high_ack_seconds,
        pb::RiskLevel::Imminent => rules.imminent_ack_seconds,
        _ => return None,
    };
    Some(Duration::from_secs(u64::from(seconds.max(1))))
}
