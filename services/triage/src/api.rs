//! The gRPC surface of triage: the clinician worklist and its watch, one
//! escalation with its timeline, acknowledge and resolve, assessments,
//! acknowledgement statistics and the audited rule configuration. Failures
//! are `tandem_server::ServiceError`s; repository and transition errors
//! convert with `?` (their mapping is beside them, in `repo` and `engine`).

use std::collections::HashMap;
use std::pin::Pin;
use std::time::Duration;

use tandem_auth::{Caller, Role};
use tandem_proto::common::v1 as common;
use tandem_proto::ids::{EscalationId, OrgId, PatientId};
use tandem_proto::triage::v1 as pb;
use tandem_proto::triage::v1::triage_service_server::TriageService;
use tandem_server::ServiceError;
use tandem_server::Streams;
use tandem_server::status::{Violations, invalid_field, patient_id, required_id};
use tandem_store::Changes;
use tandem_store::paging::page_size;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use crate::engine::{Engine, now_micros};
use crate::repo::{Escalation, State, tx};

const MAX_NOTE: usize = 2_000;
/// The kind of stream WatchWorklist opens, for the per-caller cap.
const WATCH_WORKLIST: &str = "WatchWorklist";
/// A watch re-reads the worklist this long after the change that woke it:
/// a burst of changes (a wave of crisis check-ins) costs each watch one read
/// per interval, not one per change, and the alert the change set off (the
/// notifications hop, the webhook) has the database and the CPU to itself
/// meanwhile. Watchers see a change a quarter of a second later.
const SETTLE: Duration = Duration::from_millis(250);

/// The triage gRPC service.
#[derive(Debug, Clone)]
pub struct TriageApi {
    engine: Engine,
    streams: Streams,
}

fn no_access() -> Status {
    ServiceError::denied("the caller may not see this escalation or patient; check the id and your role").into()
}

fn escalation_id(field: &str, id: Option<&common::EscalationId>) -> Result<EscalationId, Status> {
    required_id(field, id, "the escalation's id")
}

fn offset_of(token: &str) -> Result<i64, Status> {
    if token.is_empty() {
        return Ok(0);
    }
    let cursor = tandem_store::paging::Cursor::decode(token)
        .map_err(|error| invalid_field("page.page_token", error.to_string()))?;
    Ok(cursor.map(|c| c.at).unwrap_or(0).max(0))
}

fn next_token(offset: i64, limit: u32, fetched: usize) -> String {
    if fetched > limit as usize {
        tandem_store::paging::Cursor { at: offset + i64::from(limit), id: String::new() }.encode()
    } else {
        String::new()
    }
}

impl TriageApi {
    /// The service over the engine; `streams` bounds its watches.
    pub fn new(engine: Engine, streams: Streams) -> Self {
        Self { engine, streams }
    }

    /// Whether the caller may see escalations of `patient` in `org`.
    async fn may_see(
        &self,
        caller: &Caller,
        org: &OrgId,
        escalation: Option<&Escalation>,
        patient: &PatientId,
    ) -> Result<bool, Status> {
        if &caller.org != org {
            return Ok(false);
        }
        Ok(match caller.role {
            Role::Patient => false,
            Role::Supervisor | Role::Admin | Role::Integration => true,
            Role::Clinician => {
                // The alerted person (e.g. the on-call crisis contact) always
                // sees what they were alerted to.
                escalation.is_some_and(|e| e.current_recipient == caller.subject)
                    || self.engine.repo().caseload(&caller.subject).await?.contains(&patient.to_string())
            }
        })
    }

    async fn visible(&self, caller: &Caller, id: &EscalationId) -> Result<Escalation, Status> {
        let escalation = self.engine.repo().escalation(id).await?;
        let Some(escalation) = escalation else { return Err(no_access()) };
        if !self.may_see(caller, &escalation.org, Some(&escalation), &escalation.patient).await? {
            return Err(no_access());
        }
        Ok(escalation)
    }

    async fn with_timeline(&self, escalation: &Escalation) -> Result<pb::Escalation, Status> {
        let timeline = self.engine.repo().timeline(&escalation.id).await?;
        Ok(self.engine.to_pb(escalation, timeline))
    }

    /// The caller's worklist: open escalations they may see, highest level
    /// first, then oldest.
    async fn worklist(&self, caller: &Caller) -> Result<Vec<Escalation>, Status> {
        if caller.role == Role::Patient {
            return Err(ServiceError::denied("the worklist is for clinicians").into());
        }
        let open = self.engine.repo().open_escalations(&caller.org).await?;
        let caseload = if caller.role == Role::Clinician {
            self.engine.repo().caseload(&caller.subject).await?
        } else {
            Vec::new()
        };
        let mut mine: Vec<Escalation> = open
            .into_iter()
            .filter(|e| {
                caller.role != Role::Clinician
                    || e.current_recipient == caller.subject
                    || caseload.contains(&e.patient.to_string())
            })
            .collect();
        mine.sort_by(|a, b| (b.level as i32).cmp(&(a.level as i32)).then(a.raised_at.cmp(&b.raised_at)));
        Ok(mine)
    }

    /// Feeds one WatchWorklist call: each escalation when it first appears
    /// and whenever its state, step or level changes, and once more when it
    /// leaves the worklist. Re-reads the worklist only when a change in the
    /// caller's org is announced, or after the safety poll.
    async fn feed_worklist(
        self,
        caller: Caller,
        first: Vec<Escalation>,
        mut changes: Changes,
        sender: tokio::sync::mpsc::Sender<Result<pb::WatchWorklistResponse, Status>>,
    ) {
        // What the watcher last saw of each escalation: a new attempt is a
        // re-alert (a raised level, a hand-back) the watcher is sent too.
        let mut seen: HashMap<EscalationId, (State, u32, i32, u32)> = HashMap::new();
        let mut current = first;
        loop {
            for escalation in &current {
                let key = (escalation.state, escalation.step, escalation.level as i32, escalation.attempt);
                if seen.get(&escalation.id) == Some(&key) {
                    continue;
                }
                seen.insert(escalation.id, key);
                let Ok(item) = self.with_timeline(escalation).await else { continue };
                if sender.send(Ok(pb::WatchWorklistResponse { escalation: Some(item) })).await.is_err() {
                    return;
                }
            }
            // Items that left the worklist (resolved) are sent once more.
            let gone: Vec<EscalationId> =
                seen.keys().filter(|id| !current.iter().any(|e| &e.id == *id)).copied().collect();
            for id in gone {
                seen.remove(&id);
                if let Ok(Some(escalation)) = self.engine.repo().escalation(&id).await
                    && let Ok(item) = self.with_timeline(&escalation).await
                    && sender.send(Ok(pb::WatchWorklistResponse { escalation: Some(item) })).await.is_err()
                {
                    return;
                }
            }
            tokio::select! {
                () = changes.wait_for(caller.org.as_str()) => {}
                () = tokio::time::sleep(self.streams.safety_poll()) => {}
            }
            tokio::time::sleep(SETTLE).await;
            // The read below covers whatever was announced meanwhile.
            changes.skip_queued();
            match self.worklist(&caller).await {
                Ok(next) => current = next,
                Err(status) => {
                    let _ = sender.send(Err(status)).await;
                    return;
                }
            }
        }
    }

    fn check_person(caller: &Caller) -> Result<(), Status> {
        match caller.role {
            Role::Clinician | Role::Supervisor | Role::Admin => Ok(()),
            Role::Patient | Role::Integration => {
                Err(ServiceError::denied("an escalation is acknowledged and resolved by a clinician").into())
            }
        }
    }

    async fn config_response(
        &self,
        org: &OrgId,
        patient: Option<&PatientId>,
    ) -> Result<pb::GetTriageConfigResponse, Status> {
        let mut tx = self.engine.repo().store().begin_write().await.map_err(ServiceError::from)?;
        let org_rules = self.engine.rules_for(&mut tx, org, None).await?;
        let (overrides, effective) = match patient {
            Some(patient) => (
                tx::patient_overrides(&mut tx, patient).await?,
                Some(self.engine.rules_for(&mut tx, org, Some(patient)).await?),
            ),
            None => (None, None),
        };
        tx.rollback().await.map_err(ServiceError::from)?;
        Ok(pb::GetTriageConfigResponse {
            effective: Some(effective.unwrap_or_else(|| org_rules.clone())),
            org_rules: Some(org_rules),
            patient_overrides: overrides,
        })
    }
}

type WatchStream = Pin<Box<dyn Stream<Item = Result<pb::WatchWorklistResponse, Status>> + Send>>;

#[tonic::async_trait]
impl TriageService for TriageApi {
    type WatchWorklistStream = WatchStream;

    #[tracing::instrument(name = "triage.list_worklist", skip_all)]
    async fn list_worklist(
        &self,
        request: Request<pb::ListWorklistRequest>,
    ) -> Result<Response<pb::ListWorklistResponse>, Status> {
        let caller = Caller::from_request(&request)?.clone();
        let page = request.into_inner().page.unwrap_or_default();
        let offset = offset_of(&page.page_token)?;
        let limit = page_size(page.page_size);
        let all = self.worklist(&caller).await?;
        let fetched = all.len().saturating_sub(offset as usize);
        let mut escalations = Vec::new();
        for escalation in all.iter().skip(offset as usize).take(limit as usize) {
            escalations.push(self.with_timeline(escalation).await?);
        }
        Ok(Response::new(pb::ListWorklistResponse { escalations, next_page_token: next_token(offset, limit, fetched) }))
    }

    #[tracing::instrument(name = "triage.watch_worklist", skip_all)]
    async fn watch_worklist(
        &self,
        request: Request<pb::WatchWorklistRequest>,
    ) -> Result<Response<Self::WatchWorklistStream>, Status> {
        let caller = Caller::from_request(&request)?.clone();
        let lease = self.streams.open(WATCH_WORKLIST, &request)?;
        // Listen before the first read, so a change committed in between
        // wakes the watch.
        let changes = self.engine.subscribe();
        let first = self.worklist(&caller).await?;
        let api = self.clone();
        let stream = lease.spawn(move |sender| api.feed_worklist(caller, first, changes, sender));
        Ok(Response::new(Box::pin(stream)))
    }

    #[tracing::instrument(name = "triage.get_escalation", skip_all)]
    async fn get_escalation(
        &self,
        request: Request<pb::GetEscalationRequest>,
    ) -> Result<Response<pb::GetEscalationResponse>, Status> {
        let caller = Caller::from_request(&request)?.clone();
        let id = escalation_id("escalation_id", request.get_ref().escalation_id.as_ref())?;
        let escalation = self.visible(&caller, &id).await?;
        Ok(Response::new(pb::GetEscalationResponse { escalation: Some(self.with_timeline(&escalation).await?) }))
    }

    #[tracing::instrument(name = "triage.acknowledge_escalation", skip_all)]
    async fn acknowledge_escalation(
        &self,
        request: Request<pb::AcknowledgeEscalationRequest>,
    ) -> Result<Response<pb::AcknowledgeEscalationResponse>, Status> {
        let caller = Caller::from_request(&request)?.clone();
        let message = request.into_inner();
        let id = escalation_id("escalation_id", message.escalation_id.as_ref())?;
        if message.note.chars().count() > MAX_NOTE {
            return Err(invalid_field("note", format!("at most {MAX_NOTE} characters")));
        }
        Self::check_person(&caller)?;
        self.visible(&caller, &id).await?;
        let acknowledged = self.engine.acknowledge(&id, &caller.subject, message.note.trim()).await?;
        tracing::info!(escalation_id = %id, "escalation acknowledged");
        Ok(Response::new(pb::AcknowledgeEscalationResponse {
            escalation: Some(self.with_timeline(&acknowledged).await?),
        }))
    }

    #[tracing::instrument(name = "triage.resolve_escalation", skip_all)]
    async fn resolve_escalation(
        &self,
        request: Request<pb::ResolveEscalationRequest>,
    ) -> Result<Response<pb::ResolveEscalationResponse>, Status> {
        let caller = Caller::from_request(&request)?.clone();
        let message = request.into_inner();
        let id = escalation_id("escalation_id", message.escalation_id.as_ref())?;
        let mut violations = Violations::new();
        if message.outcome.trim().is_empty() {
            violations.add("outcome", "required: how the escalation was handled, for the record");
        } else if message.outcome.chars().count() > MAX_NOTE {
            violations.add("outcome", format!("at most {MAX_NOTE} characters"));
        }
        violations.into_result()?;
        Self::check_person(&caller)?;
        self.visible(&caller, &id).await?;
        let resolved = self.engine.resolve(&id, &caller.subject, message.outcome.trim()).await?;
        Ok(Response::new(pb::ResolveEscalationResponse { escalation: Some(self.with_timeline(&resolved).await?) }))
    }

    #[tracing::instrument(name = "triage.list_risk_assessments", skip_all)]
    async fn list_risk_assessments(
        &self,
        request: Request<pb::ListRiskAssessmentsRequest>,
    ) -> Result<Response<pb::ListRiskAssessmentsResponse>, Status> {
        let caller = Caller::from_request(&request)?.clone();
        let message = request.into_inner();
        let patient = patient_id("patient_id", message.patient_id.as_ref())?;
        let page = message.page.unwrap_or_default();
        let offset = offset_of(&page.page_token)?;
        let limit = page_size(page.page_size);
        let org = self.engine.repo().patient_org(&patient).await?;
        let Some(org) = org else { return Err(no_access()) };
        if !self.may_see(&caller, &org, None, &patient).await? {
            return Err(no_access());
        }
        let mut assessments = self.engine.repo().assessments(&patient, offset, limit).await?;
        let next_page_token = next_token(offset, limit, assessments.len());
        assessments.truncate(limit as usize);
        Ok(Response::new(pb::ListRiskAssessmentsResponse { assessments, next_page_token }))
    }

    #[tracing::instrument(name = "triage.get_acknowledgement_stats", skip_all)]
    async fn get_acknowledgement_stats(
        &self,
        request: Request<pb::GetAcknowledgementStatsRequest>,
    ) -> Result<Response<pb::GetAcknowledgementStatsResponse>, Status> {
        let caller = Caller::from_request(&request)?.clone();
        caller.require_role(&[Role::Supervisor, Role::Admin, Role::Integration])?;
        let all = self.engine.repo().all_escalations(&caller.org).await?;
        let mut levels = Vec::new();
        for level in [pb::RiskLevel::Imminent, pb::RiskLevel::High, pb::RiskLevel::Moderate] {
            let raised: Vec<&Escalation> = all.iter().filter(|e| e.first_level == level).collect();
            if raised.is_empty() {
                continue;
            }
            let mut seconds: Vec<f64> =
                raised.iter().filter_map(|e| e.acknowledged_at.map(|at| (at - e.raised_at) as f64 / 1e6)).collect();
            seconds.sort_by(f64::total_cmp);
            let quantile = |q: f64| -> f64 {
                if seconds.is_empty() {
                    return 0.0;
                }
                let index = ((seconds.len() as f64 - 1.0) * q).round() as usize;
                seconds.get(index).copied().unwrap_or(0.0)
            };
            levels.push(pb::LevelAcknowledgementStats {
                level: level as i32,
                raised: raised.len() as u32,
                acknowledged: seconds.len() as u32,
                p50_seconds: quantile(0.5),
                p90_seconds: quantile(0.9),
                max_seconds: seconds.last().copied().unwrap_or(0.0),
            });
        }
        Ok(Response::new(pb::GetAcknowledgementStatsResponse { levels }))
    }

    #[tracing::instrument(name = "triage.get_triage_config", skip_all)]
    async fn get_triage_config(
        &self,
        request: Request<pb::GetTriageConfigRequest>,
    ) -> Result<Response<pb::GetTriageConfigResponse>, Status> {
        let caller = Caller::from_request(&request)?.clone();
        caller.require_role(&[Role::Supervisor, Role::Admin, Role::Integration, Role::Clinician])?;
        let patient = match request.get_ref().patient_id.as_ref() {
            Some(id) => {
                let patient = patient_id("patient_id", Some(id))?;
                let org = self.engine.repo().patient_org(&patient).await?;
                if org.as_ref() != Some(&caller.org) || !self.may_see(&caller, &caller.org, None, &patient).await? {
                    return Err(no_access());
                }
                Some(patient)
            }
            None => None,
        };
        Ok(Response::new(self.config_response(&caller.org, patient.as_ref()).await?))
    }

    #[tracing::instrument(name = "triage.update_triage_config", skip_all)]
    async fn update_triage_config(
        &self,
        request: Request<pb::UpdateTriageConfigRequest>,
    ) -> Result<Response<pb::UpdateTriageConfigResponse>, Status> {
        let caller = Caller::from_request(&request)?.clone();
        caller.require_role(&[Role::Supervisor, Role::Admin])?;
        let message = request.into_inner();
        let rules = message.rules.unwrap_or_default();
        let mut violations = Violations::new();
        if message.reason.trim().is_empty() {
            violations.add("reason", "required: why the rules change, for the audit trail");
        }
        // Deadlines from 10 seconds to 7 days; a zero keeps the default.
        for (field, value) in [
            ("rules.moderate_ack_seconds", rules.moderate_ack_seconds),
            ("rules.high_ack_seconds", rules.high_ack_seconds),
            ("rules.imminent_ack_seconds", rules.imminent_ack_seconds),
        ] {
            if value != 0 && !(10..=7 * 24 * 3600).contains(&value) {
                violations.add(field, "10 seconds to 7 days, or 0 for the default");
            }
        }
        if rules.imminent_ack_seconds != 0
            && rules.high_ack_seconds != 0
            && rules.imminent_ack_seconds > rules.high_ack_seconds
        {
            violations.add("rules.imminent_ack_seconds", "an imminent escalation cannot have longer than a high one");
        }
        if rules.deterioration_points > 27 {
            violations.add("rules.deterioration_points", "a PHQ-9 rise of 1-27 points, or 0 for the default");
        }
        if rules.disengagement_missed > 50 {
            violations.add("rules.disengagement_missed", "1-50 missed measures, or 0 for the default");
        }
        if rules.crisis_contact.chars().count() > 128 {
            violations.add("rules.crisis_contact", "at most 128 characters");
        }
        let patient = match message.patient_id.as_ref() {
            Some(id) => {
                let patient = patient_id("patient_id", Some(id))?;
                let only_overridable = rules.moderate_ack_seconds == 0
                    && rules.high_ack_seconds == 0
                    && rules.imminent_ack_seconds == 0
                    && rules.crisis_contact.is_empty();
                if !only_overridable {
                    violations
                        .add("rules", "a patient may override deterioration_points and disengagement_missed only");
                }
                Some(patient)
            }
            None => None,
        };
        violations.into_result()?;
        if let Some(patient) = &patient {
            let org = self.engine.repo().patient_org(patient).await?;
            if org.as_ref() != Some(&caller.org) {
                return Err(no_access());
            }
        }
        let mut tx = self.engine.repo().store().begin_write().await.map_err(ServiceError::from)?;
        let now = now_micros();
        match &patient {
            Some(patient) => {
                let before = tx::patient_overrides(&mut tx, patient).await?.unwrap_or_default();
                tx::set_patient_overrides(&mut tx, &caller.org, patient, &rules).await?;
                tx::audit_config(
                    &mut tx,
                    &caller.org,
                    now,
                    &caller.actor(),
                    Some(patient),
                    &before,
                    &rules,
                    message.reason.trim(),
                )
                .await?;
            }
            None => {
                let before = self.engine.rules_for(&mut tx, &caller.org, None).await?;
                tx::set_org_rules(&mut tx, &caller.org, &rules).await?;
                let after = self.engine.rules_for(&mut tx, &caller.org, None).await?;
                tx::audit_config(
                    &mut tx,
                    &caller.org,
                    now,
                    &caller.actor(),
                    None,
                    &before,
                    &after,
                    message.reason.trim(),
                )
                .await?;
            }
        }
        tx.commit().await.map_err(ServiceError::from)?;
        tracing::info!(org = %caller.org, patient_override = patient.is_some(), "triage rules changed");
        let config = self.config_response(&caller.org, patient.as_ref()).await?;
        Ok(Response::new(pb::UpdateTriageConfigResponse { config: Some(config) }))
    }

    #[tracing::instrument(name = "triage.list_triage_config_changes", skip_all)]
    async fn list_triage_config_changes(
        &self,
        request: Request<pb::ListTriageConfigChangesRequest>,
    ) -> Result<Response<pb::ListTriageConfigChangesResponse>, Status> {
        let caller = Caller::from_request(&request)?.clone();
        caller.require_role(&[Role::Supervisor, Role::Admin])?;
        let page = request.into_inner().page.unwrap_or_default();
        let offset = offset_of(&page.page_token)?;
        let limit = page_size(page.page_size);
        let mut changes = self.engine.repo().config_changes(&caller.org, offset, limit).await?;
        let next_page_token = next_token(offset, limit, changes.len());
        changes.truncate(limit as usize);
        Ok(Response::new(pb::ListTriageConfigChangesResponse { changes, next_page_token }))
    }
}
