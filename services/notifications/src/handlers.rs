//! Events this service consumes (group "notifications"):
//! - triage's `EscalationChanged`: "notify" queues a crisis alert for the
//!   recipient on every verified endpoint (or reports at once that there is
//!   none), once per (escalation, attempt), so a re-alert at a higher level
//!   or a hand-back goes out again; "handed_back" tells the crisis contact;
//!   "acknowledged" and "resolved" call off what is pending;
//! - careplans' `PatientEnrolled` and `CarePlanChanged`, and checkins'
//!   `CheckInSubmitted`: projections for reminders (the journal is never read);
//! - a crisis event among these that can never be processed is announced to
//!   triage, which pages the crisis contact ([`DeadLetterAnnouncer`]).

use std::sync::Arc;
use std::time::SystemTime;

use async_trait::async_trait;
use chrono_tz::Tz;
use sqlx::{Any, Transaction};
use tandem_events::{DeadLetter, DeadLetterAlarm, Handler, HandlerError, Outbox};
use tandem_projections::Keep;
use tandem_proto::events::v1::event_envelope::Payload;
use tandem_proto::events::v1::{CrisisEventDeadLettered, EscalationChange, EscalationChanged, EventEnvelope};
use tandem_proto::ids::{EscalationId, OrgId, PatientId};
use tandem_proto::triage::v1::RiskLevel;
use tokio::sync::Notify;

use crate::message::{self, AlertFacts, AlertWhy, Purpose};
use crate::repo::{AlertRef, NewAlert, NewDelivery, Repo, RepoError, StoredEndpoint, now_micros};

impl From<RepoError> for HandlerError {
    fn from(error: RepoError) -> Self {
        match error {
            RepoError::Corrupt(what) => HandlerError::permanent(what),
            other => HandlerError::transient(other),
        }
    }
}

/// The de-duplication key of an alert: one per (escalation, attempt).
/// Attempts written before they existed equal their step, so keys stored
/// then still match.
pub fn alert_key(escalation: &str, attempt: u32) -> String {
    format!("alert:{escalation}:{attempt}")
}

/// The de-duplication key of the word to a crisis contact that the alert
/// of `attempt` went back to the care team.
pub fn handed_back_key(escalation: &str, attempt: u32) -> String {
    format!("handed-back:{escalation}:{attempt}")
}

/// The attempt of an escalation as triage announced it; producers that
/// predate attempts alerted each step once, so there it is the step.
fn attempt_of(escalation: &tandem_proto::triage::v1::Escalation) -> u32 {
    escalation.attempt.unwrap_or(escalation.step)
}

/// Applies consumed events.
#[derive(Debug, Clone)]
pub struct EventHandler {
    repo: Repo,
    outbox: Outbox,
    wake: Arc<Notify>,
}

impl EventHandler {
    /// A handler writing through `repo` and `outbox`, waking the delivery
    /// worker through `wake` once its transaction committed.
    pub fn new(repo: Repo, outbox: Outbox, wake: Arc<Notify>) -> Self {
        Self { repo, outbox, wake }
    }

    async fn escalation(
        &self,
        tx: &mut Transaction<'_, Any>,
        event: &EventEnvelope,
        changed: &EscalationChanged,
    ) -> Result<(), HandlerError> {
        let escalation_id = escalation_id(changed)?;
        match changed.what_changed() {
            EscalationChange::Notify => self.notify(tx, event, changed, &escalation_id).await,
            EscalationChange::HandedBack => self.handed_back(tx, event, changed, &escalation_id).await,
            EscalationChange::Acknowledged | EscalationChange::Resolved => {
                let cancelled = self.repo.cancel_escalation(tx, &escalation_id).await?;
                if cancelled > 0 {
                    tracing::info!(escalation_id = %escalation_id, cancelled, "escalation closed; pending alert deliveries called off");
                }
                Ok(())
            }
            // Raised, level raised: triage follows each with a notify when
            // someone must be alerted.
            EscalationChange::Raised | EscalationChange::LevelRaised | EscalationChange::Unspecified => Ok(()),
        }
    }

    async fn notify(
        &self,
        tx: &mut Transaction<'_, Any>,
        event: &EventEnvelope,
        changed: &EscalationChanged,
        escalation_id: &str,
    ) -> Result<(), HandlerError> {
        let Some(escalation) = changed.escalation.as_ref() else {
            return Err(HandlerError::permanent("EscalationChanged without an escalation"));
        };
        let org = org_of(event)?;
        let patient = tandem_events::patient_id(event).map_err(HandlerError::permanent)?;
        let attempt = attempt_of(escalation);
        // The chain's end is the org's crisis contact.
        let recipient = changed.alert_recipient().to_owned();
        let level = RiskLevel::try_from(escalation.level).unwrap_or(RiskLevel::Unspecified);
        let ack_deadline = escalation.ack_deadline.and_then(|at| SystemTime::try_from(at).ok());
        let alert = NewAlert {
            escalation_id: escalation_id.to_owned(),
            step: escalation.step,
            attempt,
            org: org.to_string(),
            patient: patient.to_string(),
            recipient: recipient.clone(),
            level: level.as_str_name().to_owned(),
            ack_deadline: ack_deadline.map(tandem_store::unix_micros),
        };
        let now = now_micros();
        if !self.repo.insert_alert(tx, &alert, now).await? {
            tracing::info!(escalation_id, attempt, "this alert was queued before; nothing more to send");
            return Ok(());
        }
        if recipient.is_empty() {
            // Never drop a crisis signal silently: say at once that nobody
            // could be reached, so triage moves the chain on.
            tracing::error!(escalation_id, attempt, "escalation step has no recipient; reporting not reached");
            let errors = vec!["the escalation step names no recipient".to_owned()];
            self.repo.fail_alert(tx, &self.outbox, &alert, errors, now).await?;
            return Ok(());
        }
        let endpoints = self.repo.verified_endpoints(tx, org.as_str(), &recipient).await?;
        if endpoints.is_empty() {
            tracing::warn!(escalation_id, attempt, "recipient has no verified endpoint; reporting not reached");
            let errors = vec![format!("{recipient} has no verified endpoint")];
            self.repo.fail_alert(tx, &self.outbox, &alert, errors, now).await?;
            return Ok(());
        }
        let facts = AlertFacts {
            escalation_id: escalation_id.to_owned(),
            patient_id: patient.to_string(),
            org_id: org.to_string(),
            level,
            step: escalation.step,
            attempt,
            recipient: recipient.clone(),
            ack_deadline,
            why: AlertWhy::from_reason(changed.why_alerted(), changed.previous_level()),
        };
        let when = SystemTime::now();
        for endpoint in &endpoints {
            let rendered = message::alert(&facts, zone_of(endpoint), when);
            let delivery = NewDelivery {
                purpose: Purpose::Alert,
                dedup_key: alert_key(escalation_id, attempt),
                alert: Some(AlertRef { escalation: escalation_id.to_owned(), step: escalation.step, attempt }),
                org: org.to_string(),
                patient: patient.to_string(),
                recipient: recipient.clone(),
                endpoint_id: endpoint.id.clone(),
                channel: endpoint.channel,
                message: serde_json::to_string(&rendered).map_err(HandlerError::permanent)?,
                // Crisis alerts ignore quiet hours: the first attempt is now.
                not_before: now,
                queued_at: now,
            };
            self.repo.insert_delivery(tx, &delivery).await?;
        }
        tracing::info!(
            escalation_id,
            step = escalation.step,
            attempt,
            reason = changed.why_alerted().legacy_name(),
            endpoints = endpoints.len(),
            "crisis alert queued"
        );
        Ok(())
    }

    /// Tells the crisis contact that the alert it held went back to the
    /// care team, on each of its verified endpoints. Best effort: nobody is
    /// paged by it, so a contact without endpoints is not an error.
    async fn handed_back(
        &self,
        tx: &mut Transaction<'_, Any>,
        event: &EventEnvelope,
        changed: &EscalationChanged,
        escalation_id: &str,
    ) -> Result<(), HandlerError> {
        let Some(escalation) = changed.escalation.as_ref() else {
            return Err(HandlerError::permanent("EscalationChanged without an escalation"));
        };
        let contact = changed.crisis_contact.trim();
        if contact.is_empty() {
            return Ok(());
        }
        let org = org_of(event)?;
        let patient = tandem_events::patient_id(event).map_err(HandlerError::permanent)?;
        let attempt = attempt_of(escalation);
        let facts = AlertFacts {
            escalation_id: escalation_id.to_owned(),
            patient_id: patient.to_string(),
            org_id: org.to_string(),
            level: RiskLevel::try_from(escalation.level).unwrap_or(RiskLevel::Unspecified),
            step: escalation.step,
            attempt,
            recipient: escalation.current_recipient.trim().to_owned(),
            ack_deadline: escalation.ack_deadline.and_then(|at| SystemTime::try_from(at).ok()),
            why: AlertWhy::HandedBack,
        };
        let now = now_micros();
        let rendered = message::handed_back(&facts, contact, SystemTime::now());
        let message = serde_json::to_string(&rendered).map_err(HandlerError::permanent)?;
        let endpoints = self.repo.verified_endpoints(tx, org.as_str(), contact).await?;
        for endpoint in &endpoints {
            let delivery = NewDelivery {
                purpose: Purpose::Notice,
                dedup_key: handed_back_key(escalation_id, attempt),
                alert: None,
                org: org.to_string(),
                patient: patient.to_string(),
                recipient: contact.to_owned(),
                endpoint_id: endpoint.id.clone(),
                channel: endpoint.channel,
                message: message.clone(),
                not_before: now,
                queued_at: now,
            };
            self.repo.insert_delivery(tx, &delivery).await?;
        }
        tracing::info!(escalation_id, attempt, endpoints = endpoints.len(), "crisis contact told of the hand-back");
        Ok(())
    }
}

/// Notifications' crisis dead-letter hook. It does not decide who is paged:
/// it announces the dead letter to triage (`CrisisEventDeadLettered`, on
/// this service's topic, through the outbox in the consumer's transaction),
/// and triage pages the org's crisis contact as it does for its own dead
/// letters, once per dead letter; the alert comes back here as any other.
#[derive(Debug, Clone)]
pub struct DeadLetterAnnouncer {
    repo: Repo,
    outbox: Outbox,
}

impl DeadLetterAnnouncer {
    /// A hook writing through `repo`'s transaction to `outbox`.
    pub fn new(repo: Repo, outbox: Outbox) -> Self {
        Self { repo, outbox }
    }
}

#[async_trait]
impl DeadLetterAlarm for DeadLetterAnnouncer {
    async fn crisis_dead_lettered(
        &self,
        tx: &mut Transaction<'_, Any>,
        letter: &DeadLetter,
    ) -> Result<(), HandlerError> {
        let key = letter.key();
        let patient: PatientId = letter
            .patient_key
            .as_deref()
            .and_then(|patient| patient.parse().ok())
            .ok_or_else(|| HandlerError::permanent(format!("dead letter {key} names no patient")))?;
        let org = match letter.org.as_deref().and_then(|org| org.parse::<OrgId>().ok()) {
            Some(org) => org,
            None => self
                .repo
                .patient_org(tx, &patient.to_string())
                .await?
                .and_then(|org| org.parse::<OrgId>().ok())
                .ok_or_else(|| {
                    HandlerError::permanent(format!("dead letter {key}: the org of patient {patient} is not known"))
                })?,
        };
        let announced = Payload::CrisisEventDeadLettered(CrisisEventDeadLettered {
            key,
            event_id: letter.event_id.clone().unwrap_or_default(),
            event_type: letter.event_type.clone().unwrap_or_default(),
            topic: letter.topic.clone(),
            partition: letter.partition,
            offset: letter.offset,
            consumer_group: letter.group.clone(),
        });
        let event = self.outbox.envelope(&org, &patient, announced);
        self.outbox.enqueue(tx, tandem_events::topics::NOTIFICATIONS, &event).await?;
        Ok(())
    }

    fn after_commit(&self, _letter: &DeadLetter) {
        self.outbox.notify();
    }
}

fn org_of(event: &EventEnvelope) -> Result<OrgId, HandlerError> {
    event
        .org_id
        .as_ref()
        .and_then(|org| org.value.parse().ok())
        .ok_or_else(|| HandlerError::permanent("EscalationChanged without a valid org id"))
}

/// The escalation an `EscalationChanged` is about.
fn escalation_id(changed: &EscalationChanged) -> Result<String, HandlerError> {
    let escalation = changed
        .escalation
        .as_ref()
        .ok_or_else(|| HandlerError::permanent("EscalationChanged without an escalation"))?;
    let id = EscalationId::try_from(escalation.id.as_ref())
        .map_err(|_| HandlerError::permanent("EscalationChanged without a valid escalation id"))?;
    Ok(id.to_string())
}

/// The escalation changes this service acts on; triage follows "raised" and
/// "level_raised" with "notify" when someone must be alerted.
const ACTED_ON: [EscalationChange; 4] = [
    EscalationChange::Notify,
    EscalationChange::HandedBack,
    EscalationChange::Acknowledged,
    EscalationChange::Resolved,
];

/// Whether `handle` does anything with `event`: the consumer passes over
/// the rest (a risk assessment, "raised") without a transaction, so the
/// "notify" behind them is not kept waiting on commits that change nothing.
fn acts_on(event: &EventEnvelope) -> bool {
    match &event.payload {
        // A malformed one is still handled: it is dead-lettered (and, being a
        // crisis event, the crisis contact is paged).
        Some(Payload::EscalationChanged(changed)) => {
            ACTED_ON.contains(&changed.what_changed()) || escalation_id(changed).is_err()
        }
        Some(Payload::PatientEnrolled(_) | Payload::CarePlanChanged(_) | Payload::CheckInSubmitted(_)) => true,
        _ => false,
    }
}

fn zone_of(endpoint: &StoredEndpoint) -> Option<Tz> {
    (!endpoint.time_zone.is_empty()).then(|| endpoint.time_zone.parse::<Tz>().ok()).flatten()
}

#[async_trait]
impl Handler for EventHandler {
    async fn handle(&self, tx: &mut Transaction<'_, Any>, event: &EventEnvelope) -> Result<(), HandlerError> {
        match &event.payload {
            Some(Payload::EscalationChanged(changed)) => self.escalation(tx, event, changed).await,
            Some(Payload::PatientEnrolled(_) | Payload::CarePlanChanged(_)) => {
                let keep = Keep { patients: true, care_plans: true, ..Keep::default() };
                tandem_projections::apply(tx, keep, event).await?;
                Ok(())
            }
            Some(Payload::CheckInSubmitted(submitted)) => {
                let Some(check_in) = &submitted.check_in else { return Ok(()) };
                let patient = tandem_events::patient_id(event).map_err(HandlerError::permanent)?.to_string();
                let submitted_at = check_in
                    .submitted_at
                    .and_then(|at| SystemTime::try_from(at).ok())
                    .map(tandem_store::unix_micros)
                    .unwrap_or_else(now_micros);
                for score in &check_in.scores {
                    self.repo.project_measure_done(tx, &patient, &score.instrument, submitted_at).await?;
                }
                for done in &check_in.homework {
                    let plan = done.care_plan_id.as_ref().map(|id| id.value.clone()).unwrap_or_default();
                    let at = done
                        .completed_at
                        .and_then(|at| SystemTime::try_from(at).ok())
                        .map(tandem_store::unix_micros)
                        .unwrap_or(submitted_at);
                    self.repo.project_task_done(tx, &patient, &plan, &done.task_id, at).await?;
                }
                Ok(())
            }
            // Other events on these topics are not this service's concern.
            _ => Ok(()),
        }
    }

    fn handles(&self, event: &EventEnvelope) -> bool {
        acts_on(event)
    }

    fn after_commit(&self, _event: &EventEnvelope) {
        // Only now are the rows this handler wrote visible to the delivery
        // worker and the relay: wake them on the commit, never before it.
        self.wake.notify_one();
        self.outbox.notify();
    }
}

#[cfg(test)]
mod tests {
    use tandem_proto::events::v1::RiskAssessed;
    use tandem_proto::triage::v1::Escalation;

    use super::*;

    fn changed(change: EscalationChange, id: &str) -> EventEnvelope {
        let id = tandem_proto::common::v1::EscalationId { value: id.to_owned() };
        let escalation = Escalation { id: Some(id), ..Default::default() };
        let changed = EscalationChanged { kind: change as i32, escalation: Some(escalation), ..Default::default() };
        EventEnvelope { payload: Some(Payload::EscalationChanged(changed.with_legacy_fields())), ..Default::default() }
    }

    #[test]
    fn only_events_with_an_effect_take_a_transaction() {
        let id = EscalationId::new().to_string();
        for change in ACTED_ON {
            assert!(acts_on(&changed(change, &id)), "{change:?}");
        }
        assert!(!acts_on(&changed(EscalationChange::Raised, &id)));
        assert!(!acts_on(&changed(EscalationChange::LevelRaised, &id)));
        // Malformed: handled, so it is dead-lettered and someone is paged.
        assert!(acts_on(&changed(EscalationChange::Raised, "not-an-id")));
        let assessed =
            EventEnvelope { payload: Some(Payload::RiskAssessed(RiskAssessed::default())), ..Default::default() };
        assert!(!acts_on(&assessed));
    }
}
