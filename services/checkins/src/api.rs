//! The gRPC surface of the check-ins service: validation, authorization,
//! scoring through tandem-clinical, and the immediate safety response.

use std::sync::Arc;
use std::time::SystemTime;

use tandem_auth::{Caller, Role};
use tandem_clinical::{Responses, Schedule, ValidationErrors};
use tandem_proto::careplans::v1::CareTeamRole;
use tandem_proto::checkins::v1 as pb;
use tandem_proto::checkins::v1::check_in_service_server::CheckInService;
use tandem_proto::common::v1 as common;
use tandem_proto::events::v1 as events;
use tandem_proto::ids::{CarePlanId, CheckInId, EventId, OrgId, PatientId};
use tandem_server::ServiceError;
use tandem_server::status::{Violations, invalid_field, patient_id};
use tandem_store::paging::{Cursor, page_size};
use tandem_store::unix_micros;
use tonic::{Request, Response, Status};
use tonic_types::StatusExt;

use crate::config::CheckInsSettings;
use crate::refused::Refusal;
use crate::repo::{FirstStep, NewCheckIn, NewRefusedSignal, Repo, RepoError, StoredCheckIn};
use crate::submit::Submitter;

const MAX_KEY_LEN: usize = 128;
const MAX_HOMEWORK: usize = 50;
/// Most invalid field paths recorded with a refused submission's signal.
const MAX_INVALID_FIELDS: usize = 50;

/// Who a crisis alert goes to, as this service knows it when it replies.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Alerted {
    target: pb::AlertTarget,
    role: CareTeamRole,
    name: String,
    /// One fixed sentence for the patient; never generated.
    notice: String,
}

impl Alerted {
    /// The first member of the care team is paged (triage raises a new
    /// escalation at step 1 of the chain).
    fn care_team(step: FirstStep) -> Self {
        let who = match step.role {
            CareTeamRole::Primary => "your primary clinician",
            CareTeamRole::Backup => "your backup clinician",
            CareTeamRole::OnCall => "the on-call clinician",
            CareTeamRole::Unspecified => "a member of your care team",
        };
        let name = step.display_name.trim().to_owned();
        let notice = if name.is_empty() {
            format!("Your care team is being alerted now: {who}.")
        } else {
            format!("Your care team is being alerted now: {name}, {who}.")
        };
        Self { target: pb::AlertTarget::CareTeam, role: step.role, name, notice }
    }

    /// No care team is known: triage pages the org's crisis contact.
    fn crisis_contact() -> Self {
        Self {
            target: pb::AlertTarget::CrisisContact,
            role: CareTeamRole::Unspecified,
            name: String::new(),
            notice: "Your clinic's crisis contact is being alerted now.".to_owned(),
        }
    }

    /// Nobody is alerted, for the reason `notice` gives the patient.
    fn nobody(notice: &str) -> Self {
        Self {
            target: pb::AlertTarget::Nobody,
            role: CareTeamRole::Unspecified,
            name: String::new(),
            notice: notice.to_owned(),
        }
    }
}

const NOBODY_TO_ALERT: &str = "Nobody at your clinic could be alerted right now. \
    Please contact one of the crisis services listed here now.";
const NOT_CONFIRMED: &str = "We could not confirm that anyone at your clinic was alerted. \
    Please contact one of the crisis services listed here now.";
const NOT_RECORDED: &str = "Your check-in could not be saved, so nobody at your clinic has been alerted. \
    Please contact one of the crisis services listed here now, and try again.";
const NO_PATIENT: &str = "This check-in did not say which patient it is for, so nobody at your clinic \
    could be alerted. Please contact one of the crisis services listed here now.";

/// The check-ins gRPC service.
#[derive(Debug, Clone)]
pub struct CheckInApi {
    repo: Repo,
    settings: Arc<CheckInsSettings>,
    submitter: Submitter,
}

fn no_access() -> Status {
    ServiceError::denied("the caller may not access this patient's check-ins; check the patient id and your role")
        .into()
}

/// A repository error as the caller hears it (the mapping is in `repo`).
fn repo_status(error: RepoError) -> Status {
    error.into()
}

fn add_clinical(violations: &mut Violations, errors: ValidationErrors) {
    for violation in errors.into_violations() {
        violations.add(violation.field, violation.description);
    }
}

/// A check-in request, parsed: valid by construction.
struct ParsedCheckIn {
    mood: Option<i32>,
    responses: Vec<Responses>,
    journal: String,
    homework: Vec<pb::HomeworkCompletion>,
}

fn parse_submission(request: &pb::SubmitCheckInRequest, now: SystemTime) -> Result<ParsedCheckIn, Violations> {
    let mut violations = Violations::new();
    if request.idempotency_key.trim().is_empty() || request.idempotency_key.chars().count() > MAX_KEY_LEN {
        violations.add("idempotency_key", format!("required: 1-{MAX_KEY_LEN} characters chosen by the client"));
    }
    let mood = match tandem_clinical::validate_mood(request.mood) {
        Ok(mood) => mood.map(|mood| i32::from(mood.value())),
        Err(errors) => {
            add_clinical(&mut violations, errors);
            None
        }
    };
    let responses = match tandem_clinical::parse_instruments(
        request.instruments.iter().map(|i| (i.instrument.as_str(), i.answers.as_slice())),
    ) {
        Ok(responses) => responses,
        Err(errors) => {
            add_clinical(&mut violations, errors);
            Vec::new()
        }
    };
    let journal = match tandem_clinical::validate_journal(&request.journal) {
        Ok(journal) => journal.into_string(),
        Err(errors) => {
            add_clinical(&mut violations, errors);
            String::new()
        }
    };
    if request.homework.len() > MAX_HOMEWORK {
        violations.add("homework", format!("at most {MAX_HOMEWORK} completions per check-in"));
    }
    let mut homework = Vec::new();
    for (i, done) in request.homework.iter().enumerate() {
        let field = format!("homework[{i}]");
        match done.care_plan_id.as_ref().map(CarePlanId::try_from) {
            Some(Ok(_)) => {}
            Some(Err(error)) => violations.add(format!("{field}.care_plan_id.value"), error.to_string()),
            None => violations.add(format!("{field}.care_plan_id"), "required: the plan the task belongs to"),
        }
        if done.task_id.trim().is_empty() || done.task_id.len() > 64 {
            violations.add(format!("{field}.task_id"), "required: the task's id within the plan");
        }
        if let Some(at) = done.completed_at
            && SystemTime::try_from(at).map_or(true, |at| at > now + std::time::Duration::from_secs(300))
        {
            violations.add(format!("{field}.completed_at"), "must not be in the future");
        }
        homework.push(pb::HomeworkCompletion {
            completed_at: Some(done.completed_at.unwrap_or_else(|| now.into())),
            ..done.clone()
        });
    }
    if request.mood.is_none()
        && request.instruments.is_empty()
        && request.journal.is_empty()
        && request.homework.is_empty()
    {
        violations.add("mood", "a check-in needs at least one of mood, instruments, journal or homework");
    }
    if !violations.is_empty() {
        return Err(violations);
    }
    Ok(ParsedCheckIn { mood, responses, journal, homework })
}

impl CheckInApi {
    /// The service over a repository and its settings.
    pub fn new(repo: Repo, settings: Arc<CheckInsSettings>, submitter: Submitter) -> Self {
        Self { repo, settings, submitter }
    }

    /// The patient's org if the caller may read the patient's check-ins.
    async fn readable(&self, caller: &Caller, patient: &PatientId) -> Result<OrgId, Status> {
        if caller.role == Role::Patient {
            // A patient is always known to themself, even before careplans'
            // enrolment event has reached this service.
            if caller.subject == patient.to_string() {
                return Ok(caller.org.clone());
            }
            return Err(no_access());
        }
        let org = self.repo.patient_org(patient).await?;
        let Some(org) = org.filter(|org| *org == caller.org) else {
            return Err(no_access());
        };
        let allowed = match caller.role {
            Role::Clinician => self.repo.on_care_team(patient, &caller.subject).await?,
            Role::Integration | Role::Admin | Role::Supervisor => true,
            Role::Patient => false,
        };
        if !allowed {
            return Err(no_access());
        }
        Ok(org)
    }

    /// The patient's org if the caller may submit for the patient: the
    /// patient, a clinician on the care team (in session), or the org's EHR.
    async fn submittable(&self, caller: &Caller, patient: &PatientId) -> Result<OrgId, Status> {
        if matches!(caller.role, Role::Admin | Role::Supervisor) {
            return Err(ServiceError::denied(
                "check-ins are submitted by the patient, a clinician on their care team, or the EHR integration",
            )
            .into());
        }
        self.readable(caller, patient).await
    }

    /// The reply to a request whose idempotency key was used before: the
    /// first reply when the request is the same, else a conflict (escalating
    /// and answering the crisis signal the new request holds, if any).
    async fn replay(
        &self,
        caller: &Caller,
        message: &pb::SubmitCheckInRequest,
        existing: &StoredCheckIn,
        subject: (&OrgId, &PatientId),
        fingerprint: &str,
    ) -> Result<pb::SubmitCheckInResponse, Status> {
        let (_, patient) = subject;
        if tandem_server::idempotency::same_request(existing.request_hash.as_deref(), fingerprint) {
            return self.reply(existing, patient).await;
        }
        tracing::warn!(patient_id = %patient, "idempotency key reused with a different check-in; refused as a conflict");
        let conflict = tandem_server::idempotency::key_conflict();
        Err(self.refused(caller, Some(subject), message, conflict, Refusal::KeyReused).await)
    }

    async fn reply(&self, stored: &StoredCheckIn, patient: &PatientId) -> Result<pb::SubmitCheckInResponse, Status> {
        let safety_response = if stored.crisis_triggers.is_empty() {
            None
        } else {
            let alerted = self.alerted(patient).await;
            Some(self.safety_response(&stored.org, Some(patient), &stored.crisis_triggers, alerted).await)
        };
        Ok(pb::SubmitCheckInResponse { check_in: Some(stored.check_in.clone()), safety_response })
    }

    /// Who triage alerts for a crisis signal of the patient that was just
    /// recorded, from what this service knows now: the first member of the
    /// care team as careplans announced it; without a care team the org's
    /// crisis contact, if one is configured; else nobody.
    async fn alerted(&self, patient: &PatientId) -> Alerted {
        match self.repo.first_step(patient).await {
            Ok(Some(step)) => Alerted::care_team(step),
            Ok(None) if self.settings.has_crisis_contact() => Alerted::crisis_contact(),
            Ok(None) => {
                tracing::error!(
                    patient_id = %patient,
                    alert = "crisis_nobody_to_alert",
                    "crisis signal for a patient with no known care team and no crisis contact configured; the patient was told nobody is alerted"
                );
                Alerted::nobody(NOBODY_TO_ALERT)
            }
            Err(error) => {
                tracing::error!(%error, patient_id = %patient, "cannot read the care team for a safety response");
                Alerted::nobody(NOT_CONFIRMED)
            }
        }
    }

    /// The immediate safety response: the org's crisis resources, the
    /// patient's own safety plan, and who is being alerted. Never generated
    /// text. A failure to read the safety plan still shows the resources.
    async fn safety_response(
        &self,
        org: &OrgId,
        patient: Option<&PatientId>,
        triggers: &[String],
        alerted: Alerted,
    ) -> pb::SafetyResponse {
        let plan = match patient {
            Some(patient) => self.repo.safety_plan(patient).await,
            None => Ok(None),
        };
        let safety_plan_text = match plan {
            Ok(plan) => plan.map(|plan| tandem_proto::render::safety_plan_text(&plan)).unwrap_or_default(),
            Err(error) => {
                tracing::error!(%error, "cannot read the safety plan for a safety response; showing resources only");
                String::new()
            }
        };
        pb::SafetyResponse {
            resources: self.settings.resources_for(org.as_str()),
            safety_plan_text,
            care_team_alerted: alerted.target == pb::AlertTarget::CareTeam,
            ai_generated: false,
            triggers: triggers.to_vec(),
            alert_target: alerted.target as i32,
            alerted_role: alerted.role as i32,
            alerted_name: alerted.name,
            notice: alerted.notice,
        }
    }

    /// `status` for a refused submission. When the request carries a crisis
    /// signal, a typo, a journal over the limit or a reused key must not
    /// hide a patient in danger: the signal (never the request) is recorded
    /// and escalated, and the status carries the safety response as a
    /// detail and the resources in its message. `subject` is the org and
    /// patient the request is for, when known.
    async fn refused(
        &self,
        caller: &Caller,
        subject: Option<(&OrgId, &PatientId)>,
        request: &pb::SubmitCheckInRequest,
        status: Status,
        refusal: Refusal,
    ) -> Status {
        let signals = crate::refused::crisis_signals_off_runtime(request).await;
        if signals.is_empty() {
            return status;
        }
        let triggers = crate::refused::trigger_ids(&signals);
        let Some((org, patient)) = subject else {
            tracing::warn!(triggers = ?triggers, "a check-in refused without a valid patient id carried a crisis signal; resources returned, nobody can be alerted");
            let safety = self.safety_response(&caller.org, None, &triggers, Alerted::nobody(NO_PATIENT)).await;
            return with_safety(&status, &safety);
        };
        let mut invalid_fields: Vec<String> = status
            .get_details_bad_request()
            .map(|bad| bad.field_violations.into_iter().map(|violation| violation.field).collect())
            .unwrap_or_default();
        invalid_fields.truncate(MAX_INVALID_FIELDS);
        let key = &request.idempotency_key;
        let key_valid = !key.trim().is_empty() && key.chars().count() <= MAX_KEY_LEN;
        let new = NewRefusedSignal {
            org: org.clone(),
            patient: *patient,
            idempotency_key: key_valid.then(|| key.clone()),
            request_hash: tandem_server::idempotency::fingerprint(request),
            signal: events::RefusedCrisisSignal {
                signal_id: EventId::new().to_string(),
                refusal: refusal.as_str().to_owned(),
                received_at: Some(SystemTime::now().into()),
                signals,
                invalid_fields,
            },
        };
        let alerted = match self.submitter.record_refused(&self.repo, &new).await {
            Ok(first) => {
                tracing::warn!(
                    patient_id = %patient,
                    triggers = ?triggers,
                    refusal = refusal.as_str(),
                    retry = !first,
                    "refused check-in carried a crisis signal; the signal is escalated and the resources returned"
                );
                self.alerted(patient).await
            }
            Err(error) => {
                tracing::error!(
                    %error,
                    patient_id = %patient,
                    alert = "refused_crisis_signal_not_recorded",
                    "a refused check-in's crisis signal could not be recorded; the patient was told nobody is alerted"
                );
                Alerted::nobody(NOT_RECORDED)
            }
        };
        let safety = self.safety_response(org, Some(patient), &triggers, alerted).await;
        with_safety(&status, &safety)
    }
}

/// `status` with the safety response as a detail and its resources in the
/// message, first when nobody could be alerted.
fn with_safety(status: &Status, safety: &pb::SafetyResponse) -> Status {
    let resources =
        safety.resources.iter().map(|r| format!("{}: {}", r.name, r.contact)).collect::<Vec<_>>().join("; ");
    let help = format!("if you are thinking about harming yourself, help is available now: {resources}");
    let message = if safety.alert_target() == pb::AlertTarget::CareTeam
        || safety.alert_target() == pb::AlertTarget::CrisisContact
    {
        format!("{} — {help}. {}", status.message(), safety.notice)
    } else {
        format!("{help}. {} — {}", safety.notice, status.message())
    };
    tandem_server::status::with_detail(status, message, safety)
}

fn score_to_pb(score: &tandem_clinical::Score) -> pb::ScoredInstrument {
    pb::ScoredInstrument {
        instrument: score.instrument.code().to_owned(),
        total: score.total.map(i32::from),
        band: score.band.as_str().to_owned(),
        total_code: score.total_coding.as_ref().map(|coding| common::Coding {
            system: coding.system.to_owned(),
            code: coding.code.to_owned(),
            display: coding.display.to_owned(),
        }),
    }
}

#[tonic::async_trait]
impl CheckInService for CheckInApi {
    #[tracing::instrument(name = "checkins.submit_check_in", skip_all)]
    async fn submit_check_in(
        &self,
        request: Request<pb::SubmitCheckInRequest>,
    ) -> Result<Response<pb::SubmitCheckInResponse>, Status> {
        let caller = Caller::from_request(&request)?.clone();
        let message = request.into_inner();
        let patient = match patient_id("patient_id", message.patient_id.as_ref()) {
            Ok(patient) => patient,
            Err(status) => {
                // A patient checking in for themself is known by their token.
                let own = match caller.role {
                    Role::Patient => caller.subject.parse::<PatientId>().ok(),
                    _ => None,
                };
                let subject = own.as_ref().map(|patient| (&caller.org, patient));
                return Err(self.refused(&caller, subject, &message, status, Refusal::InvalidArgument).await);
            }
        };
        let org = self.submittable(&caller, &patient).await?;
        let now = tandem_store::from_unix_micros(unix_micros(SystemTime::now()));
        let parsed = match parse_submission(&message, now) {
            Ok(parsed) => parsed,
            Err(violations) => {
                let status = violations.into_status();
                return Err(self
                    .refused(&caller, Some((&org, &patient)), &message, status, Refusal::InvalidArgument)
                    .await);
            }
        };
        let fingerprint = tandem_server::idempotency::fingerprint(&pb::SubmitCheckInRequest {
            idempotency_key: String::new(),
            ..message.clone()
        });
        if let Some(existing) =
            self.repo.by_idempotency_key(&patient.to_string(), &message.idempotency_key).await.map_err(repo_status)?
        {
            return self.replay(&caller, &message, &existing, (&org, &patient), &fingerprint).await.map(Response::new);
        }
        // The one assessment of this check-in: scores, triggers and the
        // crisis-language detector's reading of the journal (which only ever
        // adds a trigger, never removes a structured one).
        let assessment = tandem_clinical::assess_check_in(&parsed.responses, &parsed.journal);
        let crisis_triggers = assessment.crisis_triggers();
        let check_in = pb::CheckIn {
            id: Some(CheckInId::new().into()),
            patient_id: Some(patient.into()),
            submitted_at: Some(now.into()),
            mood: parsed.mood,
            scores: assessment.scores.iter().map(score_to_pb).collect(),
            has_journal: !parsed.journal.is_empty(),
            homework: parsed.homework,
        };
        let new = NewCheckIn {
            org: org.clone(),
            check_in,
            journal: parsed.journal,
            idempotency_key: message.idempotency_key.clone(),
            request_hash: fingerprint.clone(),
            crisis_triggers,
            facts: assessment.facts,
        };
        let stored = match self.submitter.submit(&self.repo, &patient, &new, &message.instruments).await {
            Ok(stored) => stored,
            Err(error) if new.crisis_triggers.is_empty() => return Err(repo_status(error)),
            Err(error) => {
                // Not stored, so not escalated: say so, and show the resources.
                tracing::error!(
                    %error,
                    patient_id = %patient,
                    alert = "crisis_check_in_not_recorded",
                    "a crisis check-in could not be stored; the patient was told nobody is alerted"
                );
                let status = Status::unavailable("the check-in could not be saved; try again in a moment");
                let safety = self
                    .safety_response(&org, Some(&patient), &new.crisis_triggers, Alerted::nobody(NOT_RECORDED))
                    .await;
                return Err(with_safety(&status, &safety));
            }
        };
        if stored.check_in.id != new.check_in.id {
            // A concurrent request with the same key won the race.
            return self.replay(&caller, &message, &stored, (&org, &patient), &fingerprint).await.map(Response::new);
        }
        if !stored.crisis_triggers.is_empty() {
            tracing::warn!(patient_id = %patient, triggers = ?stored.crisis_triggers, "crisis trigger fired at check-in");
        }
        Ok(Response::new(self.reply(&stored, &patient).await?))
    }

    #[tracing::instrument(name = "checkins.get_check_in", skip_all)]
    async fn get_check_in(
        &self,
        request: Request<pb::GetCheckInRequest>,
    ) -> Result<Response<pb::GetCheckInResponse>, Status> {
        let caller = Caller::from_request(&request)?.clone();
        let Some(id) = request.get_ref().check_in_id.as_ref() else {
            return Err(invalid_field("check_in_id", "required: the check-in's id"));
        };
        let id = CheckInId::try_from(id).map_err(|error| invalid_field("check_in_id.value", error.to_string()))?;
        let stored = self.repo.check_in(&id).await?;
        let Some(stored) = stored else {
            return Err(no_access());
        };
        let patient = patient_id("check_in.patient_id", stored.check_in.patient_id.as_ref())?;
        let org = self.readable(&caller, &patient).await?;
        if org != stored.org {
            return Err(no_access());
        }
        Ok(Response::new(pb::GetCheckInResponse { check_in: Some(stored.check_in) }))
    }

    #[tracing::instrument(name = "checkins.list_check_ins", skip_all)]
    async fn list_check_ins(
        &self,
        request: Request<pb::ListCheckInsRequest>,
    ) -> Result<Response<pb::ListCheckInsResponse>, Status> {
        let caller = Caller::from_request(&request)?.clone();
        let message = request.into_inner();
        let patient = patient_id("patient_id", message.patient_id.as_ref())?;
        let page = message.page.unwrap_or_default();
        let cursor =
            Cursor::decode(&page.page_token).map_err(|error| invalid_field("page.page_token", error.to_string()))?;
        let range = message.range.unwrap_or_default();
        let bound = |field: &str, at: Option<prost_types::Timestamp>, default: i64| -> Result<i64, Status> {
            match at {
                None => Ok(default),
                Some(at) => {
                    SystemTime::try_from(at).map(unix_micros).map_err(|_| invalid_field(field, "not a valid timestamp"))
                }
            }
        };
        let start = bound("range.start", range.start, i64::MIN)?;
        let end = bound("range.end", range.end, i64::MAX)?;
        if start > end {
            return Err(invalid_field("range.end", "must not be before range.start"));
        }
        self.readable(&caller, &patient).await?;
        let (check_ins, next) =
            self.repo.list(&patient, start, end, cursor.as_ref(), page_size(page.page_size)).await?;
        Ok(Response::new(pb::ListCheckInsResponse {
            check_ins,
            next_page_token: next.map(|cursor| cursor.encode()).unwrap_or_default(),
        }))
    }

    #[tracing::instrument(name = "checkins.get_due_items", skip_all)]
    async fn get_due_items(
        &self,
        request: Request<pb::GetDueItemsRequest>,
    ) -> Result<Response<pb::GetDueItemsResponse>, Status> {
        let caller = Caller::from_request(&request)?.clone();
        let patient = patient_id("patient_id", request.get_ref().patient_id.as_ref())?;
        self.readable(&caller, &patient).await?;
        let plans = self.repo.active_plans(&patient).await?;
        let done = self.repo.done(&patient).await?;
        let zone = Schedule::zone(&self.repo.time_zone(&patient).await?);
        let items = crate::due::due_items(&plans, &done, zone, SystemTime::now());
        Ok(Response::new(pb::GetDueItemsResponse { items }))
    }
}
