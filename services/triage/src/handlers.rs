//! Events triage consumes: careplans (who the patient is, the chain),
//! checkins (check-ins and missed measures, each assessed) and
//! notifications (a step that could not be reached advances at once; a
//! crisis event notifications could never process pages the crisis
//! contact), and triage's own crisis dead letters ([`DeadLetterPager`]).

use async_trait::async_trait;
use sqlx::{Any, Transaction};
use tandem_events::{DeadLetter, DeadLetterAlarm, Handler, HandlerError, topics};
use tandem_projections::{Applied, Keep};
use tandem_proto::events::v1::EventEnvelope;
use tandem_proto::events::v1::event_envelope::Payload;
use tandem_proto::ids::{EscalationId, OrgId, PatientId};
use tandem_proto::triage::v1 as pb;

use crate::engine::{DeadLetterFacts, Engine};
use crate::repo::{RepoError, tx};
use tandem_clinical::RiskInput;

impl From<RepoError> for HandlerError {
    fn from(error: RepoError) -> Self {
        match error {
            RepoError::Corrupt(what) => HandlerError::permanent(what),
            error @ RepoError::Unpageable(_) => HandlerError::permanent(error),
            other => HandlerError::transient(other),
        }
    }
}

/// Triage's crisis dead-letter hook: a crisis event its own consumer can
/// never process pages the org's crisis contact through the escalation
/// engine, in the consumer's transaction, as a `CrisisEventDeadLettered`
/// from another service does (`Engine::dead_lettered` decides both).
#[derive(Debug, Clone)]
pub struct DeadLetterPager {
    engine: Engine,
}

impl DeadLetterPager {
    /// A hook paging through `engine`.
    pub fn new(engine: Engine) -> Self {
        Self { engine }
    }
}

#[async_trait]
impl DeadLetterAlarm for DeadLetterPager {
    async fn crisis_dead_lettered(
        &self,
        tx: &mut Transaction<'_, Any>,
        letter: &DeadLetter,
    ) -> Result<(), HandlerError> {
        self.engine.dead_lettered(tx, &DeadLetterFacts::from(letter)).await?;
        Ok(())
    }

    fn after_commit(&self, letter: &DeadLetter) {
        self.engine.after_commit(&[]);
        if let Some(org) = letter.org.as_deref().and_then(|org| org.parse::<OrgId>().ok()) {
            self.engine.org_changed(&org);
        }
    }
}

/// Applies the events triage consumes.
#[derive(Debug, Clone)]
pub struct TriageHandler {
    engine: Engine,
}

impl TriageHandler {
    /// A handler driving `engine`.
    pub fn new(engine: Engine) -> Self {
        Self { engine }
    }

    /// Assesses one event with the patient's history, stores the
    /// assessment, announces it, and escalates when the level calls for it.
    #[allow(clippy::too_many_arguments)]
    async fn assess(
        &self,
        tx: &mut Transaction<'_, Any>,
        org: &OrgId,
        patient: &PatientId,
        check_in_id: Option<tandem_proto::common::v1::CheckInId>,
        input: RiskInput<'_>,
        at: i64,
    ) -> Result<(), HandlerError> {
        let rules = self.engine.rules_for(tx, org, Some(patient)).await?;
        let fired = tandem_clinical::rule_firings(&input, &rules);
        self.escalate(tx, org, patient, check_in_id, fired, at).await
    }

    /// Stores an assessment of the rules that fired, announces it, and
    /// escalates when its level calls for it.
    async fn escalate(
        &self,
        tx: &mut Transaction<'_, Any>,
        org: &OrgId,
        patient: &PatientId,
        check_in_id: Option<tandem_proto::common::v1::CheckInId>,
        fired: Vec<pb::RuleFiring>,
        at: i64,
    ) -> Result<(), HandlerError> {
        let level = tandem_clinical::overall(&fired);
        let assessment = pb::RiskAssessment {
            assessment_id: tandem_proto::ids::EventId::new().to_string(),
            patient_id: Some((*patient).into()),
            check_in_id,
            level: level as i32,
            rules: fired,
            assessed_at: Some(tandem_store::from_unix_micros(at).into()),
        };
        tx::insert_assessment(tx, org, patient, &assessment, at).await?;
        // Counted when written: a handler retried after a rolled-back
        // transaction counts its assessment again.
        tandem_telemetry::metrics::assessment(org.as_str(), level.as_str_name());
        let announced =
            Payload::RiskAssessed(tandem_proto::events::v1::RiskAssessed { assessment: Some(assessment.clone()) });
        let event = self.engine.outbox().envelope(org, patient, announced);
        self.engine.outbox().enqueue(tx, topics::TRIAGE, &event).await?;
        let why = assessment
            .rules
            .iter()
            .filter(|rule| rule.level == level as i32)
            .map(|rule| format!("{}: {}", rule.rule, rule.evidence))
            .collect::<Vec<_>>()
            .join("; ");
        if let Some(escalation) = self.engine.raise_or_join(tx, org, patient, level, &why).await? {
            tracing::warn!(
                escalation_id = %escalation.id,
                level = level.as_str_name(),
                "risk assessed at an escalating level"
            );
        }
        Ok(())
    }
}

fn org_of(event: &EventEnvelope) -> Result<OrgId, HandlerError> {
    event
        .org_id
        .as_ref()
        .and_then(|org| org.value.parse().ok())
        .ok_or_else(|| HandlerError::permanent("event without a valid org id"))
}

#[async_trait]
impl Handler for TriageHandler {
    async fn handle(&self, tx: &mut Transaction<'_, Any>, event: &EventEnvelope) -> Result<(), HandlerError> {
        let patient = tandem_events::patient_id(event).map_err(HandlerError::permanent)?;
        let at = event
            .occurred_at
            .and_then(|t| std::time::SystemTime::try_from(t).ok())
            .map(tandem_store::unix_micros)
            .unwrap_or_else(|| self.engine.now());
        match &event.payload {
            Some(Payload::PatientEnrolled(_) | Payload::CareTeamChanged(_)) => {
                let keep = Keep { patients: true, care_teams: true, ..Keep::default() };
                if let Applied::CareTeam { previous_chain } = tandem_projections::apply(tx, keep, event).await? {
                    self.engine.care_team_changed(tx, &patient, &previous_chain).await?;
                }
            }
            Some(Payload::CheckInSubmitted(submitted)) => {
                let org = org_of(event)?;
                let check_in = submitted.check_in.clone().unwrap_or_default();
                // Check-ins assessed the check-in once, at submission; an event
                // an older version wrote carries the answers and the journal
                // instead, assessed here the same way.
                #[allow(deprecated)]
                let legacy = || tandem_clinical::assess_unvalidated(&submitted.instruments, &submitted.journal);
                let facts = submitted.facts.clone().unwrap_or_else(legacy);
                let history = tx::phq9_history(tx, &patient).await?;
                // Answering any measure ends a run of missed ones.
                if !facts.instruments.is_empty() {
                    tx::set_missed(tx, &patient, 0).await?;
                }
                let input = RiskInput {
                    facts: Some(&facts),
                    reported_triggers: &submitted.crisis_triggers,
                    phq9_history: &history,
                    at,
                    missed_in_a_row: 0,
                };
                self.assess(tx, &org, &patient, check_in.id.clone(), input, at).await?;
                if let Some(total) = tandem_clinical::phq9_total(&facts) {
                    let id = check_in.id.as_ref().map(|id| id.value.clone()).unwrap_or_default();
                    tx::add_phq9(tx, &patient, &id, total, at).await?;
                }
            }
            Some(Payload::RefusedCrisisSignal(refused)) => {
                // A submission check-ins refused carried a crisis signal:
                // escalate the signal as the check-in would have been.
                let org = org_of(event)?;
                self.escalate(tx, &org, &patient, None, tandem_clinical::refused_signal_firings(refused), at).await?;
            }
            Some(Payload::MeasureMissed(_)) => {
                let org = org_of(event)?;
                let missed = tx::missed(tx, &patient).await? + 1;
                tx::set_missed(tx, &patient, missed).await?;
                let input = RiskInput { missed_in_a_row: missed, at, ..Default::default() };
                self.assess(tx, &org, &patient, None, input, at).await?;
            }
            Some(Payload::NotificationFailed(failed)) => {
                let Some(id) = failed.escalation_id.as_ref().and_then(|id| EscalationId::try_from(id).ok()) else {
                    return Ok(());
                };
                let detail =
                    format!("could not reach {} on any channel: {}", failed.recipient, failed.errors.join("; "));
                // Producers that predate attempts sent one alert per step.
                let attempt = failed.attempt.unwrap_or(failed.step);
                self.engine.not_reached(tx, &id, attempt, &detail).await?;
            }
            Some(Payload::CrisisEventDeadLettered(announced)) => {
                // Another service could never process a crisis event: the
                // same decision as for triage's own dead letters.
                self.engine.dead_lettered(tx, &DeadLetterFacts::announced(event, announced)).await?;
            }
            Some(Payload::NotificationDelivered(delivered)) => {
                let Some(id) = delivered.escalation_id.as_ref().and_then(|id| EscalationId::try_from(id).ok()) else {
                    return Ok(());
                };
                let channel = delivered.channel().name();
                let attempt = delivered.attempt.unwrap_or(delivered.step);
                let detail = format!("alert {} (step {}) delivered by {channel}", attempt + 1, delivered.step + 1);
                if tx::escalation(tx, &id).await?.is_some() {
                    tx::add_timeline(tx, &id, self.engine.now(), "delivered", &delivered.recipient, &detail).await?;
                }
            }
            _ => {}
        }
        Ok(())
    }

    fn after_commit(&self, event: &EventEnvelope) {
        // Wake the relay for the events this handler enqueued, the deadline
        // scheduler for a new escalation, and the org's worklist watchers
        // (an escalation or a care team may have changed what they see).
        self.engine.after_commit(&[]);
        // A delivery receipt only adds to a timeline and an enrolment shows
        // nothing yet: neither changes what a watcher is sent.
        let unseen = matches!(event.payload, Some(Payload::NotificationDelivered(_) | Payload::PatientEnrolled(_)));
        if !unseen && let Ok(org) = org_of(event) {
            self.engine.org_changed(&org);
        }
    }
}
