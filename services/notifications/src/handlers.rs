//! Events this service consumes (group "notifications"):
//! - triage's `EscalationChanged`: "notify" queues a crisis alert for the
//!   step's recipient on every verified endpoint (or reports at once that
//!   there is none); "acknowledged" and "resolved" call off what is pending;
//! - careplans' `PatientEnrolled` and `CarePlanChanged`, and checkins'
//!   `CheckInSubmitted`: projections for reminders (the journal is never read).

use std::sync::Arc;
use std::time::SystemTime;

use async_trait::async_trait;
use chrono_tz::Tz;
use sqlx::{Any, Transaction};
use tandem_events::{Handler, HandlerError, Outbox};
use tandem_proto::events::v1::event_envelope::Payload;
use tandem_proto::events::v1::{EscalationChanged, EventEnvelope};
use tandem_proto::ids::{EscalationId, OrgId};
use tandem_proto::triage::v1::RiskLevel;
use tokio::sync::Notify;

use crate::message::{self, AlertFacts, Purpose};
use crate::repo::{NewAlert, NewDelivery, Repo, RepoError, now_micros};

impl From<RepoError> for HandlerError {
    fn from(error: RepoError) -> Self {
        match error {
            RepoError::Corrupt(what) => HandlerError::permanent(what),
            other => HandlerError::transient(other),
        }
    }
}

/// The de-duplication key of an alert: one per (escalation, step).
pub fn alert_key(escalation: &str, step: u32) -> String {
    format!("alert:{escalation}:{step}")
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
    /// worker through `wake`.
    pub fn new(repo: Repo, outbox: Outbox, wake: Arc<Notify>) -> Self {
        Self { repo, outbox, wake }
    }

    async fn escalation(
        &self,
        tx: &mut Transaction<'_, Any>,
        event: &EventEnvelope,
        changed: &EscalationChanged,
    ) -> Result<(), HandlerError> {
        let escalation = changed
            .escalation
            .as_ref()
            .ok_or_else(|| HandlerError::permanent("EscalationChanged without an escalation"))?;
        let escalation_id = escalation
            .id
            .as_ref()
            .and_then(|id| id.value.parse::<EscalationId>().ok())
            .ok_or_else(|| HandlerError::permanent("EscalationChanged without a valid escalation id"))?
            .to_string();
        match changed.change.as_str() {
            "notify" => self.notify(tx, event, changed, &escalation_id).await,
            "acknowledged" | "resolved" => {
                let cancelled = self.repo.cancel_escalation(tx, &escalation_id).await?;
                if cancelled > 0 {
                    tracing::info!(escalation_id = %escalation_id, cancelled, "escalation closed; pending alert deliveries called off");
                }
                Ok(())
            }
            // "raised", "deadline_passed", "level_raised": triage follows
            // each with "notify" for the step that must be alerted.
            _ => Ok(()),
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
        let org: OrgId = event
            .org_id
            .as_ref()
            .and_then(|org| org.value.parse().ok())
            .ok_or_else(|| HandlerError::permanent("EscalationChanged without a valid org id"))?;
        let patient = tandem_events::patient_id(event).map_err(HandlerError::permanent)?;
        // The chain's end is the org's crisis contact; an empty recipient
        // with a contact named means that contact.
        let recipient = if escalation.current_recipient.trim().is_empty() {
            changed.crisis_contact.trim().to_owned()
        } else {
            escalation.current_recipient.trim().to_owned()
        };
        let level = RiskLevel::try_from(escalation.level).unwrap_or(RiskLevel::Unspecified);
        let ack_deadline = escalation.ack_deadline.and_then(|at| SystemTime::try_from(at).ok());
        let alert = NewAlert {
            escalation_id: escalation_id.to_owned(),
            step: escalation.step,
            org: org.to_string(),
            patient: patient.to_string(),
            recipient: recipient.clone(),
            level: level.as_str_name().to_owned(),
            ack_deadline: ack_deadline.map(tandem_store::unix_micros),
        };
        let now = now_micros();
        if !self.repo.insert_alert(tx, &alert, now).await? {
            tracing::info!(
                escalation_id,
                step = escalation.step,
                "alert for this step was queued before; nothing more to send"
            );
            return Ok(());
        }
        if recipient.is_empty() {
            // Never drop a crisis signal silently: say at once that nobody
            // could be reached, so triage moves the chain on.
            tracing::error!(
                escalation_id,
                step = escalation.step,
                "escalation step has no recipient; reporting not reached"
            );
            let errors = vec!["the escalation step names no recipient".to_owned()];
            self.repo.fail_alert(tx, &self.outbox, &alert, errors, now).await?;
            self.outbox.notify();
            return Ok(());
        }
        let endpoints = self.repo.verified_endpoints(tx, org.as_str(), &recipient).await?;
        if endpoints.is_empty() {
            tracing::warn!(
                escalation_id,
                step = escalation.step,
                "recipient has no verified endpoint; reporting not reached"
            );
            let errors = vec![format!("{recipient} has no verified endpoint")];
            self.repo.fail_alert(tx, &self.outbox, &alert, errors, now).await?;
            self.outbox.notify();
            return Ok(());
        }
        let facts = AlertFacts {
            escalation_id: escalation_id.to_owned(),
            patient_id: patient.to_string(),
            org_id: org.to_string(),
            level,
            step: escalation.step,
            recipient: recipient.clone(),
            ack_deadline,
        };
        let when = SystemTime::now();
        for endpoint in &endpoints {
            let zone = (!endpoint.time_zone.is_empty()).then(|| endpoint.time_zone.parse::<Tz>().ok()).flatten();
            let rendered = message::alert(&facts, zone, when);
            let delivery = NewDelivery {
                purpose: Purpose::Alert,
                dedup_key: alert_key(escalation_id, escalation.step),
                alert: Some((escalation_id.to_owned(), escalation.step)),
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
        tracing::info!(escalation_id, step = escalation.step, endpoints = endpoints.len(), "crisis alert queued");
        // The wake-up comes before the consumer commits; the worker allows
        // for that (see worker.rs).
        self.wake.notify_one();
        Ok(())
    }
}

#[async_trait]
impl Handler for EventHandler {
    async fn handle(&self, tx: &mut Transaction<'_, Any>, event: &EventEnvelope) -> Result<(), HandlerError> {
        match &event.payload {
            Some(Payload::EscalationChanged(changed)) => self.escalation(tx, event, changed).await,
            Some(Payload::PatientEnrolled(enrolled)) => {
                let patient = tandem_events::patient_id(event).map_err(HandlerError::permanent)?;
                let org = event
                    .org_id
                    .as_ref()
                    .and_then(|org| org.value.parse::<OrgId>().ok())
                    .ok_or_else(|| HandlerError::permanent("PatientEnrolled without a valid org id"))?;
                self.repo.project_patient(tx, &patient.to_string(), org.as_str(), &enrolled.time_zone).await?;
                Ok(())
            }
            Some(Payload::CarePlanChanged(changed)) => {
                if let Some(plan) = &changed.care_plan {
                    self.repo.project_care_plan(tx, plan).await?;
                }
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
}
