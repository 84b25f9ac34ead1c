//! Typed readings of contract fields the released v1 contracts carry as
//! strings, and the stable names typed values travel under.
//!
//! `EscalationChanged` said what changed and why in strings (`change`,
//! `reason`) and meant "the crisis contact" by an empty recipient. It now
//! carries an enum for each and an explicit `to_crisis_contact`. Producers
//! write both forms ([`EscalationChanged::with_legacy_fields`]) so consumers
//! of an older version keep working in a rolling upgrade; consumers read
//! through the accessors here, which fall back to the strings only for an
//! event from an older producer (`kind` unset). This is the one place that
//! fallback lives.

use crate::events::v1::{AlertReason, EscalationChange, EscalationChanged};
use crate::notifications::v1::Channel;

impl Channel {
    /// The stable lowercase name ("webhook", "email", "sms", "in_app"), as
    /// stored and as shown in timelines and errors.
    pub fn name(self) -> &'static str {
        match self {
            Channel::Unspecified => "unspecified",
            Channel::Webhook => "webhook",
            Channel::Email => "email",
            Channel::Sms => "sms",
            Channel::InApp => "in_app",
        }
    }

    /// The channel a stable name stands for; `None` for any other text,
    /// "unspecified" included.
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "webhook" => Some(Channel::Webhook),
            "email" => Some(Channel::Email),
            "sms" => Some(Channel::Sms),
            "in_app" => Some(Channel::InApp),
            _ => None,
        }
    }
}

impl EscalationChange {
    /// The name in the deprecated `EscalationChanged.change` string; empty
    /// for unspecified.
    pub fn legacy_name(self) -> &'static str {
        match self {
            EscalationChange::Unspecified => "",
            EscalationChange::Raised => "raised",
            EscalationChange::Notify => "notify",
            EscalationChange::LevelRaised => "level_raised",
            EscalationChange::HandedBack => "handed_back",
            EscalationChange::Acknowledged => "acknowledged",
            EscalationChange::Resolved => "resolved",
        }
    }

    /// The change a deprecated `change` string names; unspecified for any
    /// other text.
    pub fn from_legacy_name(name: &str) -> Self {
        match name {
            "raised" => EscalationChange::Raised,
            "notify" => EscalationChange::Notify,
            "level_raised" => EscalationChange::LevelRaised,
            "handed_back" => EscalationChange::HandedBack,
            "acknowledged" => EscalationChange::Acknowledged,
            "resolved" => EscalationChange::Resolved,
            _ => EscalationChange::Unspecified,
        }
    }
}

impl AlertReason {
    /// The name in the deprecated `EscalationChanged.reason` string; empty
    /// for unspecified.
    pub fn legacy_name(self) -> &'static str {
        match self {
            AlertReason::Unspecified => "",
            AlertReason::Raised => "raised",
            AlertReason::DeadlinePassed => "deadline_passed",
            AlertReason::NotReached => "not_reached",
            AlertReason::LevelRaised => "level_raised",
            AlertReason::CareTeamKnown => "care_team_known",
        }
    }

    /// The reason a deprecated `reason` string names; unspecified for any
    /// other text.
    pub fn from_legacy_name(name: &str) -> Self {
        match name {
            "raised" => AlertReason::Raised,
            "deadline_passed" => AlertReason::DeadlinePassed,
            "not_reached" => AlertReason::NotReached,
            "level_raised" => AlertReason::LevelRaised,
            "care_team_known" => AlertReason::CareTeamKnown,
            _ => AlertReason::Unspecified,
        }
    }
}

impl EscalationChanged {
    /// The event with its deprecated strings (`change`, `reason`) written
    /// from the typed fields, for consumers of an older version; producers
    /// send every `EscalationChanged` through it.
    #[allow(deprecated)]
    pub fn with_legacy_fields(mut self) -> Self {
        self.change = self.kind().legacy_name().to_owned();
        self.reason = self.alert_reason().legacy_name().to_owned();
        self
    }

    /// The typed change, or `None` for an event from a producer that
    /// predates it (or a change this version does not know).
    fn typed_change(&self) -> Option<EscalationChange> {
        EscalationChange::try_from(self.kind).ok().filter(|kind| *kind != EscalationChange::Unspecified)
    }

    /// What changed; read this, not `kind()`, which is unset in an event
    /// from an older producer.
    #[allow(deprecated)]
    pub fn what_changed(&self) -> EscalationChange {
        self.typed_change().unwrap_or_else(|| EscalationChange::from_legacy_name(&self.change))
    }

    /// For a notify, why the alert is sent; read this, not
    /// `alert_reason()`, which is unset in an event from an older producer.
    #[allow(deprecated)]
    pub fn why_alerted(&self) -> AlertReason {
        match self.typed_change() {
            Some(_) => self.alert_reason(),
            None => AlertReason::from_legacy_name(&self.reason),
        }
    }

    /// For a notify, whether the alert goes to the organisation's crisis
    /// contact. An older producer said so by naming the contact in
    /// `crisis_contact`.
    pub fn alerts_crisis_contact(&self) -> bool {
        match self.typed_change() {
            Some(_) => self.to_crisis_contact,
            None => self.what_changed() == EscalationChange::Notify && !self.crisis_contact.trim().is_empty(),
        }
    }

    /// For a notify, whom to alert: the crisis contact when the alert is
    /// for them, else the escalation's current recipient. Empty when nobody
    /// is named (the alert must then be reported as not reached). An older
    /// producer left the recipient empty to mean the crisis contact.
    pub fn alert_recipient(&self) -> &str {
        let holder = self.escalation.as_ref().map_or("", |escalation| escalation.current_recipient.trim());
        let contact = self.crisis_contact.trim();
        match self.typed_change() {
            Some(_) if self.to_crisis_contact => contact,
            Some(_) => holder,
            None if holder.is_empty() => contact,
            None => holder,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::triage::v1::{Escalation, RiskLevel};

    fn escalation(recipient: &str) -> Option<Escalation> {
        Some(Escalation { current_recipient: recipient.to_owned(), step: 2, ..Default::default() })
    }

    /// What a consumer reads from an event.
    fn reading(changed: &EscalationChanged) -> (EscalationChange, AlertReason, bool, String, RiskLevel) {
        (
            changed.what_changed(),
            changed.why_alerted(),
            changed.alerts_crisis_contact(),
            changed.alert_recipient().to_owned(),
            changed.previous_level(),
        )
    }

    /// The same change as an older producer wrote it: only the strings.
    #[allow(deprecated)]
    fn as_older_producer_wrote_it(changed: &EscalationChanged) -> EscalationChanged {
        let mut older = changed.clone();
        older.kind = EscalationChange::Unspecified as i32;
        older.alert_reason = AlertReason::Unspecified as i32;
        older.to_crisis_contact = false;
        older
    }

    fn new_producer(
        kind: EscalationChange,
        reason: AlertReason,
        recipient: &str,
        crisis_contact: &str,
        to_crisis_contact: bool,
    ) -> EscalationChanged {
        let mut changed = EscalationChanged {
            escalation: escalation(recipient),
            crisis_contact: crisis_contact.to_owned(),
            to_crisis_contact,
            ..Default::default()
        };
        changed.set_kind(kind);
        changed.set_alert_reason(reason);
        changed.with_legacy_fields()
    }

    #[test]
    fn an_event_from_an_older_producer_reads_the_same_as_a_new_one() {
        let mut level_raised = new_producer(EscalationChange::Notify, AlertReason::LevelRaised, "dr-a", "", false);
        level_raised.set_previous_level(RiskLevel::Moderate);
        let cases = [
            new_producer(EscalationChange::Raised, AlertReason::Unspecified, "dr-a", "", false),
            new_producer(EscalationChange::Notify, AlertReason::Raised, "dr-a", "", false),
            new_producer(EscalationChange::Notify, AlertReason::DeadlinePassed, "on-call", "on-call", true),
            new_producer(EscalationChange::Notify, AlertReason::NotReached, "dr-b", "", false),
            level_raised,
            new_producer(EscalationChange::Notify, AlertReason::CareTeamKnown, "dr-a", "", false),
            new_producer(EscalationChange::LevelRaised, AlertReason::Unspecified, "dr-a", "", false),
            new_producer(EscalationChange::HandedBack, AlertReason::Unspecified, "dr-a", "on-call", false),
            new_producer(EscalationChange::Acknowledged, AlertReason::Unspecified, "dr-a", "", false),
            new_producer(EscalationChange::Resolved, AlertReason::Unspecified, "dr-a", "", false),
        ];
        for changed in &cases {
            let older = as_older_producer_wrote_it(changed);
            assert_eq!(reading(&older), reading(changed), "{changed:?}");
            assert_ne!(changed.what_changed(), EscalationChange::Unspecified);
        }
        let to_contact = &cases[2];
        assert!(to_contact.alerts_crisis_contact());
        assert_eq!(to_contact.alert_recipient(), "on-call");
        assert!(!cases[1].alerts_crisis_contact());
        assert!(!cases[7].alerts_crisis_contact(), "a hand-back names the contact but does not alert it");
    }

    #[test]
    fn an_older_producers_empty_recipient_means_the_crisis_contact() {
        #[allow(deprecated)]
        let older = EscalationChanged {
            escalation: escalation(""),
            change: "notify".to_owned(),
            reason: "deadline_passed".to_owned(),
            crisis_contact: "on-call".to_owned(),
            ..Default::default()
        };
        assert_eq!(older.what_changed(), EscalationChange::Notify);
        assert_eq!(older.why_alerted(), AlertReason::DeadlinePassed);
        assert!(older.alerts_crisis_contact());
        assert_eq!(older.alert_recipient(), "on-call");
    }

    #[test]
    fn nobody_named_reads_as_an_empty_recipient() {
        let new = new_producer(EscalationChange::Notify, AlertReason::Raised, "", "", true);
        assert_eq!(new.alert_recipient(), "");
        assert_eq!(as_older_producer_wrote_it(&new).alert_recipient(), "");
    }

    #[test]
    fn unknown_strings_read_as_unspecified() {
        assert_eq!(EscalationChange::from_legacy_name("escalated"), EscalationChange::Unspecified);
        assert_eq!(AlertReason::from_legacy_name(""), AlertReason::Unspecified);
    }

    #[test]
    fn names_round_trip() {
        for kind in [
            EscalationChange::Raised,
            EscalationChange::Notify,
            EscalationChange::LevelRaised,
            EscalationChange::HandedBack,
            EscalationChange::Acknowledged,
            EscalationChange::Resolved,
        ] {
            assert_eq!(EscalationChange::from_legacy_name(kind.legacy_name()), kind);
        }
        for reason in [
            AlertReason::Raised,
            AlertReason::DeadlinePassed,
            AlertReason::NotReached,
            AlertReason::LevelRaised,
            AlertReason::CareTeamKnown,
        ] {
            assert_eq!(AlertReason::from_legacy_name(reason.legacy_name()), reason);
        }
        for channel in [Channel::Webhook, Channel::Email, Channel::Sms, Channel::InApp] {
            assert_eq!(Channel::from_name(channel.name()), Some(channel));
        }
        assert_eq!(Channel::InApp.name(), "in_app");
        assert_eq!(Channel::from_name(Channel::Unspecified.name()), None);
    }
}
