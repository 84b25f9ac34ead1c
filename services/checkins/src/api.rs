//! The gRPC surface of the check-ins service: validation, authorization,
//! scoring through tandem-clinical, and the immediate safety response.

use std::sync::Arc;
use std::time::SystemTime;

use tandem_auth::{Caller, Role};
use tandem_clinical::{Responses, ValidationErrors};
use tandem_proto::checkins::v1 as pb;
use tandem_proto::checkins::v1::check_in_service_server::CheckInService;
use tandem_proto::common::v1 as common;
use tandem_proto::ids::{CarePlanId, CheckInId, OrgId, PatientId};
use tandem_server::status::{Violations, internal, invalid_field, patient_id};
use tandem_store::paging::{Cursor, page_size};
use tandem_store::unix_micros;
use tonic::{Request, Response, Status};

use crate::config::CheckInsSettings;
use crate::repo::{NewCheckIn, Repo, RepoError, StoredCheckIn};
use crate::submit::Submitter;

const MAX_KEY_LEN: usize = 128;
/// The trigger id of the crisis-language detector.
pub const CRISIS_LANGUAGE_TRIGGER: &str = "crisis-language";
/// Passive ideation in the journal ("wish I were dead") shows the safety
/// response, as PHQ-9 item 9, which asks about exactly that, does.
const CRISIS_LANGUAGE_LEVEL: tandem_clinical::TextRiskLevel = tandem_clinical::TextRiskLevel::Moderate;
const MAX_HOMEWORK: usize = 50;

/// The check-ins gRPC service.
#[derive(Debug, Clone)]
pub struct CheckInApi {
    repo: Repo,
    settings: Arc<CheckInsSettings>,
    submitter: Submitter,
}

fn no_access() -> Status {
    Status::permission_denied("the caller may not access this patient's check-ins; check the patient id and your role")
}

fn repo_status(error: RepoError) -> Status {
    internal(&error)
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
        let org = self.repo.patient_org(patient).await.map_err(repo_status)?;
        let Some(org) = org.filter(|org| *org == caller.org) else {
            return Err(no_access());
        };
        let allowed = match caller.role {
            Role::Clinician => self.repo.on_care_team(patient, &caller.subject).await.map_err(repo_status)?,
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
            return Err(Status::permission_denied(
                "check-ins are submitted by the patient, a clinician on their care team, or the EHR integration",
            ));
        }
        self.readable(caller, patient).await
    }

    /// The reply to a request whose idempotency key was used before: the
    /// first reply when the request is the same, else a conflict (carrying
    /// the crisis resources when the new request holds a crisis signal).
    async fn replay(
        &self,
        caller: &Caller,
        message: &pb::SubmitCheckInRequest,
        existing: &StoredCheckIn,
        patient: &PatientId,
        fingerprint: &str,
    ) -> Result<pb::SubmitCheckInResponse, Status> {
        if tandem_server::idempotency::same_request(existing.request_hash.as_deref(), fingerprint) {
            return self.reply(existing, patient).await;
        }
        tracing::warn!(patient_id = %patient, "idempotency key reused with a different check-in; refused as a conflict");
        Err(self.with_resources_if_crisis(caller, message, tandem_server::idempotency::key_conflict()))
    }

    async fn reply(&self, stored: &StoredCheckIn, patient: &PatientId) -> Result<pb::SubmitCheckInResponse, Status> {
        let safety_response = if stored.crisis_triggers.is_empty() {
            None
        } else {
            Some(self.safety_response(&stored.org, patient, &stored.crisis_triggers).await)
        };
        Ok(pb::SubmitCheckInResponse { check_in: Some(stored.check_in.clone()), safety_response })
    }

    /// The immediate safety response: the org's crisis resources, the
    /// patient's own safety plan, word that the care team is being alerted.
    /// Never generated text. A failure to read the safety plan still shows
    /// the resources.
    async fn safety_response(&self, org: &OrgId, patient: &PatientId, triggers: &[String]) -> pb::SafetyResponse {
        let safety_plan_text = match self.repo.safety_plan(patient).await {
            Ok(plan) => plan.map(|plan| tandem_proto::render::safety_plan_text(&plan)).unwrap_or_default(),
            Err(error) => {
                tracing::error!(%error, "cannot read the safety plan for a safety response; showing resources only");
                String::new()
            }
        };
        pb::SafetyResponse {
            resources: self.settings.resources_for(org.as_str()),
            safety_plan_text,
            // The check-in's event commits with the check-in itself, and
            // triage escalates every crisis trigger to the care team.
            care_team_alerted: true,
            ai_generated: false,
            triggers: triggers.to_vec(),
        }
    }

    /// InvalidArgument for a bad submission. When the answers carry a crisis
    /// signal even though they do not parse, the message also gives the
    /// crisis resources: a typo must not hide a patient in danger.
    fn rejected(&self, caller: &Caller, request: &pb::SubmitCheckInRequest, violations: Violations) -> Status {
        self.with_resources_if_crisis(caller, request, violations.into_status())
    }

    /// `status`, with the crisis resources added when the refused request
    /// carries a crisis signal.
    fn with_resources_if_crisis(&self, caller: &Caller, request: &pb::SubmitCheckInRequest, status: Status) -> Status {
        let mut signals: Vec<&'static str> = request
            .instruments
            .iter()
            .flat_map(|i| tandem_clinical::crisis_triggers_in_unparsed(&i.instrument, &i.answers))
            .map(|trigger| trigger.id())
            .collect();
        if !request.journal.is_empty() && tandem_clinical::detect(&request.journal).level >= CRISIS_LANGUAGE_LEVEL {
            signals.push(CRISIS_LANGUAGE_TRIGGER);
        }
        if signals.is_empty() {
            return status;
        }
        tracing::warn!(triggers = ?signals, "rejected check-in carried a crisis signal; resources returned with the error");
        let resources = self
            .settings
            .resources_for(caller.org.as_str())
            .iter()
            .map(|r| format!("{}: {}", r.name, r.contact))
            .collect::<Vec<_>>()
            .join("; ");
        Status::with_details(
            status.code(),
            format!(
                "{} — if you are thinking about harming yourself, help is available now: {resources}",
                status.message()
            ),
            status.details().to_vec().into(),
        )
    }
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
        let patient = patient_id("patient_id", message.patient_id.as_ref())?;
        let org = self.submittable(&caller, &patient).await?;
        let now = tandem_store::from_unix_micros(unix_micros(SystemTime::now()));
        let parsed = match parse_submission(&message, now) {
            Ok(parsed) => parsed,
            Err(violations) => return Err(self.rejected(&caller, &message, violations)),
        };
        let fingerprint = tandem_server::idempotency::fingerprint(&pb::SubmitCheckInRequest {
            idempotency_key: String::new(),
            ..message.clone()
        });
        if let Some(existing) =
            self.repo.by_idempotency_key(&patient.to_string(), &message.idempotency_key).await.map_err(repo_status)?
        {
            return self.replay(&caller, &message, &existing, &patient, &fingerprint).await.map(Response::new);
        }
        let scores: Vec<tandem_clinical::Score> = parsed.responses.iter().map(tandem_clinical::score).collect();
        let mut crisis_triggers: Vec<String> = Vec::new();
        for score in &scores {
            for trigger in &score.crisis_triggers {
                if !crisis_triggers.iter().any(|t| t == trigger.id()) {
                    crisis_triggers.push(trigger.id().to_owned());
                }
            }
        }
        // The crisis-language detector only ever adds a trigger; it never
        // removes a structured one.
        if !parsed.journal.is_empty() && tandem_clinical::detect(&parsed.journal).level >= CRISIS_LANGUAGE_LEVEL {
            crisis_triggers.push(CRISIS_LANGUAGE_TRIGGER.to_owned());
        }
        let check_in = pb::CheckIn {
            id: Some(CheckInId::new().into()),
            patient_id: Some(patient.into()),
            submitted_at: Some(now.into()),
            mood: parsed.mood,
            scores: scores.iter().map(score_to_pb).collect(),
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
        };
        let stored =
            self.submitter.submit(&self.repo, &patient, &new, &message.instruments).await.map_err(repo_status)?;
        if stored.check_in.id != new.check_in.id {
            // A concurrent request with the same key won the race.
            return self.replay(&caller, &message, &stored, &patient, &fingerprint).await.map(Response::new);
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
        let stored = self.repo.check_in(&id).await.map_err(repo_status)?;
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
        let (check_ins, next) = self
            .repo
            .list(&patient, start, end, cursor.as_ref(), page_size(page.page_size))
            .await
            .map_err(repo_status)?;
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
        let plans = self.repo.active_plans(&patient).await.map_err(repo_status)?;
        let done = self.repo.done(&patient).await.map_err(repo_status)?;
        let items = crate::due::due_items(&plans, &done, SystemTime::now());
        Ok(Response::new(pb::GetDueItemsResponse { items }))
    }
}
