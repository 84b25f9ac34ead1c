//! The gRPC surface: validation, authorization and mapping to the domain.
//! Failures are [`ServiceError`]s: repository errors convert with `?`
//! (their mapping is beside them, in `repo` and `plans_repo`).

use tandem_auth::{Caller, Role};
use tandem_proto::careplans::v1 as pb;
use tandem_proto::careplans::v1::care_plan_service_server::CarePlanService;
use tandem_proto::common::v1 as common;
use tandem_proto::ids::{CarePlanId, PatientId};
use tandem_server::ServiceError;
use tandem_server::status::{Violations, invalid_field, patient_id, required_id};
use tandem_store::paging::{Cursor, page_size};
use tonic::{Request, Response, Status};

use crate::domain::{NewPatient, Patient};
use crate::plan::{parse_care_team, parse_content, parse_safety_plan};
use crate::repo::{Enrolled, Repo, RepoError};

const MAX_KEY_LEN: usize = 128;
const MAX_EXTERNAL_ID_LEN: usize = 128;
const MAX_DISPLAY_NAME_LEN: usize = 200;

/// The care plans gRPC service.
#[derive(Debug, Clone)]
pub struct CarePlanApi {
    repo: Repo,
}

impl CarePlanApi {
    /// The service over a repository.
    pub fn new(repo: Repo) -> Self {
        Self { repo }
    }

    /// The patient, if the caller may see them. A patient of another org and
    /// a patient that does not exist look the same to the caller.
    async fn visible_patient(&self, caller: &Caller, id: &PatientId) -> Result<Patient, Status> {
        let patient = self.repo.patient(id).await?;
        let Some(patient) = patient else {
            return Err(no_access());
        };
        if caller.org != patient.org {
            return Err(no_access());
        }
        let allowed = match caller.role {
            Role::Patient => caller.subject == patient.id.to_string(),
            Role::Integration | Role::Admin | Role::Supervisor => true,
            Role::Clinician => self.repo.on_care_team(&patient.id, &caller.subject).await?,
        };
        if !allowed {
            return Err(no_access());
        }
        Ok(patient)
    }

    /// The patient, if the caller may change their care plans: a clinician
    /// on the care team, or the org's supervisors, admins and integrations.
    async fn plan_writer(&self, caller: &Caller, id: &PatientId) -> Result<Patient, Status> {
        let patient = self.visible_patient(caller, id).await?;
        if caller.role == Role::Patient {
            return Err(ServiceError::denied("patients read their care plans; their clinician changes them").into());
        }
        Ok(patient)
    }

    /// The current plan and its patient, if the caller may see it. Patients
    /// never see drafts.
    async fn visible_plan(&self, caller: &Caller, id: &CarePlanId) -> Result<(Patient, pb::CarePlan), Status> {
        let stored = self.repo.plan(id).await?;
        let Some(stored) = stored.filter(|stored| stored.org == caller.org) else {
            return Err(no_plan_access());
        };
        let patient_id = patient_id("care_plan.patient_id", stored.plan.patient_id.as_ref())
            .map_err(|_| RepoError::Corrupt("care plan without patient".into()))?;
        let patient = self.visible_patient(caller, &patient_id).await.map_err(|_| no_plan_access())?;
        if caller.role == Role::Patient && stored.plan.status() == pb::CarePlanStatus::Draft {
            return Err(no_plan_access());
        }
        Ok((patient, stored.plan))
    }
}

fn no_plan_access() -> Status {
    ServiceError::denied("the caller may not access this care plan; check the id and your role").into()
}

fn no_access() -> Status {
    ServiceError::denied("the caller may not access this patient; check the patient id and your role").into()
}

fn care_plan_id(field: &str, id: Option<&common::CarePlanId>) -> Result<CarePlanId, Status> {
    required_id(field, id, "the care plan's id")
}

fn page_of(page: Option<&common::PageRequest>) -> Result<(Option<Cursor>, u32), Status> {
    let page = page.cloned().unwrap_or_default();
    let cursor =
        Cursor::decode(&page.page_token).map_err(|error| invalid_field("page.page_token", error.to_string()))?;
    Ok((cursor, page_size(page.page_size)))
}

fn timestamp(time: std::time::SystemTime) -> prost_types::Timestamp {
    prost_types::Timestamp::from(time)
}

fn patient_to_pb(patient: &Patient) -> pb::Patient {
    pb::Patient {
        id: Some(patient.id.into()),
        org_id: Some(patient.org.clone().into()),
        external_id: patient.external_id.clone(),
        display_name: patient.display_name.clone(),
        time_zone: patient.time_zone.name().to_owned(),
        enrolled_at: Some(timestamp(patient.enrolled_at)),
    }
}

fn check_text(violations: &mut Violations, field: &str, value: &str, max: usize) {
    if value.trim().is_empty() {
        violations.add(field, "required: must not be empty");
    } else if value.chars().count() > max {
        violations.add(field, format!("at most {max} characters"));
    } else if value.chars().any(char::is_control) {
        violations.add(field, "must not contain control characters");
    }
}

fn parse_enrolment(request: &pb::EnrollPatientRequest) -> Result<NewPatient, Status> {
    let mut violations = Violations::new();
    check_text(&mut violations, "idempotency_key", &request.idempotency_key, MAX_KEY_LEN);
    check_text(&mut violations, "external_id", &request.external_id, MAX_EXTERNAL_ID_LEN);
    check_text(&mut violations, "display_name", &request.display_name, MAX_DISPLAY_NAME_LEN);
    let zone_name = if request.time_zone.is_empty() { "UTC" } else { request.time_zone.as_str() };
    let time_zone = zone_name.parse::<chrono_tz::Tz>();
    if time_zone.is_err() {
        violations.add("time_zone", "must be an IANA time zone such as America/Chicago, or empty for UTC");
    }
    violations.into_result()?;
    Ok(NewPatient {
        idempotency_key: request.idempotency_key.clone(),
        external_id: request.external_id.trim().to_owned(),
        display_name: request.display_name.trim().to_owned(),
        time_zone: time_zone.unwrap_or(chrono_tz::UTC),
    })
}

#[tonic::async_trait]
impl CarePlanService for CarePlanApi {
    #[tracing::instrument(name = "careplans.enroll_patient", skip_all)]
    async fn enroll_patient(
        &self,
        request: Request<pb::EnrollPatientRequest>,
    ) -> Result<Response<pb::EnrollPatientResponse>, Status> {
        let caller = Caller::from_request(&request)?.clone();
        caller.require_role(&[Role::Integration, Role::Admin])?;
        let new = parse_enrolment(request.get_ref())?;
        let enrolled = self.repo.enroll_patient(&caller.org, &new).await?;
        let patient = match enrolled {
            Enrolled::Created(patient) => {
                tracing::info!(patient_id = %patient.id, org = %caller.org, "patient enrolled");
                patient
            }
            Enrolled::Replayed(patient) => patient,
        };
        Ok(Response::new(pb::EnrollPatientResponse { patient: Some(patient_to_pb(&patient)) }))
    }

    #[tracing::instrument(name = "careplans.get_patient", skip_all)]
    async fn get_patient(
        &self,
        request: Request<pb::GetPatientRequest>,
    ) -> Result<Response<pb::GetPatientResponse>, Status> {
        let caller = Caller::from_request(&request)?.clone();
        let id = patient_id("patient_id", request.get_ref().patient_id.as_ref())?;
        let patient = self.visible_patient(&caller, &id).await?;
        Ok(Response::new(pb::GetPatientResponse { patient: Some(patient_to_pb(&patient)) }))
    }

    #[tracing::instrument(name = "careplans.list_patients", skip_all)]
    async fn list_patients(
        &self,
        request: Request<pb::ListPatientsRequest>,
    ) -> Result<Response<pb::ListPatientsResponse>, Status> {
        let caller = Caller::from_request(&request)?.clone();
        let page = request.get_ref().page.clone().unwrap_or_default();
        let cursor =
            Cursor::decode(&page.page_token).map_err(|error| invalid_field("page.page_token", error.to_string()))?;
        let limit = page_size(page.page_size);
        if caller.role == Role::Patient {
            // A patient's list is themself.
            let own = caller.subject.parse::<PatientId>().ok();
            let patient = match own {
                Some(id) if cursor.is_none() => self.repo.patient(&id).await?,
                _ => None,
            };
            let patients = patient.filter(|p| p.org == caller.org).iter().map(patient_to_pb).collect();
            return Ok(Response::new(pb::ListPatientsResponse { patients, next_page_token: String::new() }));
        }
        if caller.role == Role::Clinician {
            return self.list_caseload(&caller, cursor.as_ref(), limit).await.map(Response::new);
        }
        let (patients, next) = self.repo.list_patients(&caller.org, cursor.as_ref(), limit).await?;
        Ok(Response::new(pb::ListPatientsResponse {
            patients: patients.iter().map(patient_to_pb).collect(),
            next_page_token: next.map(|cursor| cursor.encode()).unwrap_or_default(),
        }))
    }

    #[tracing::instrument(name = "careplans.create_care_plan", skip_all)]
    async fn create_care_plan(
        &self,
        request: Request<pb::CreateCarePlanRequest>,
    ) -> Result<Response<pb::CreateCarePlanResponse>, Status> {
        let caller = Caller::from_request(&request)?.clone();
        let message = request.into_inner();
        let id = patient_id("patient_id", message.patient_id.as_ref())?;
        let mut violations = Violations::new();
        check_text(&mut violations, "idempotency_key", &message.idempotency_key, MAX_KEY_LEN);
        let content = parse_content(&message.title, &message.goals, &message.tasks, &message.measures, &mut violations);
        let status = match message.status() {
            pb::CarePlanStatus::Unspecified => pb::CarePlanStatus::Draft,
            status @ (pb::CarePlanStatus::Draft | pb::CarePlanStatus::Active) => status,
            _ => {
                violations.add("status", "a new plan starts as draft or active");
                pb::CarePlanStatus::Draft
            }
        };
        violations.into_result()?;
        let patient = self.plan_writer(&caller, &id).await?;
        let fingerprint = tandem_server::idempotency::fingerprint(&pb::CreateCarePlanRequest {
            idempotency_key: String::new(),
            ..message.clone()
        });
        let created = self
            .repo
            .create_plan(
                &caller.org,
                &patient.id,
                &message.idempotency_key,
                &fingerprint,
                content,
                status,
                caller.actor(),
            )
            .await?;
        Ok(Response::new(pb::CreateCarePlanResponse { care_plan: Some(created.into_inner()) }))
    }

    #[tracing::instrument(name = "careplans.get_care_plan", skip_all)]
    async fn get_care_plan(
        &self,
        request: Request<pb::GetCarePlanRequest>,
    ) -> Result<Response<pb::GetCarePlanResponse>, Status> {
        let caller = Caller::from_request(&request)?.clone();
        let id = care_plan_id("care_plan_id", request.get_ref().care_plan_id.as_ref())?;
        let (_, plan) = self.visible_plan(&caller, &id).await?;
        Ok(Response::new(pb::GetCarePlanResponse { care_plan: Some(plan) }))
    }

    #[tracing::instrument(name = "careplans.update_care_plan", skip_all)]
    async fn update_care_plan(
        &self,
        request: Request<pb::UpdateCarePlanRequest>,
    ) -> Result<Response<pb::UpdateCarePlanResponse>, Status> {
        let caller = Caller::from_request(&request)?.clone();
        let message = request.into_inner();
        let id = care_plan_id("care_plan_id", message.care_plan_id.as_ref())?;
        let mut violations = Violations::new();
        if message.expected_version == 0 {
            violations.add("expected_version", "required: the version your change is based on");
        }
        if message.status() == pb::CarePlanStatus::Unspecified {
            violations.add("status", "required: draft, active, completed or revoked");
        }
        let content = parse_content(&message.title, &message.goals, &message.tasks, &message.measures, &mut violations);
        violations.into_result()?;
        let (patient, _) = self.visible_plan(&caller, &id).await?;
        self.plan_writer(&caller, &patient.id).await?;
        let plan = self
            .repo
            .update_plan(
                &patient.org,
                &patient.id,
                &id,
                message.expected_version,
                content,
                message.status(),
                caller.actor(),
            )
            .await?;
        Ok(Response::new(pb::UpdateCarePlanResponse { care_plan: Some(plan) }))
    }

    #[tracing::instrument(name = "careplans.list_care_plans", skip_all)]
    async fn list_care_plans(
        &self,
        request: Request<pb::ListCarePlansRequest>,
    ) -> Result<Response<pb::ListCarePlansResponse>, Status> {
        let caller = Caller::from_request(&request)?.clone();
        let id = patient_id("patient_id", request.get_ref().patient_id.as_ref())?;
        let (cursor, limit) = page_of(request.get_ref().page.as_ref())?;
        let patient = self.visible_patient(&caller, &id).await?;
        let include_drafts = caller.role != Role::Patient;
        let (care_plans, next) = self.repo.list_plans(&patient.id, include_drafts, cursor.as_ref(), limit).await?;
        Ok(Response::new(pb::ListCarePlansResponse {
            care_plans,
            next_page_token: next.map(|cursor| cursor.encode()).unwrap_or_default(),
        }))
    }

    #[tracing::instrument(name = "careplans.set_care_team", skip_all)]
    async fn set_care_team(
        &self,
        request: Request<pb::SetCareTeamRequest>,
    ) -> Result<Response<pb::SetCareTeamResponse>, Status> {
        let caller = Caller::from_request(&request)?.clone();
        let message = request.into_inner();
        let id = patient_id("patient_id", message.patient_id.as_ref())?;
        let mut violations = Violations::new();
        let members = parse_care_team(&message.members, &mut violations);
        violations.into_result()?;
        let patient = self.visible_patient(&caller, &id).await?;
        caller.require_role(&[Role::Integration, Role::Admin, Role::Supervisor])?;
        let team = self.repo.set_care_team(&patient.org, &patient.id, members).await?;
        Ok(Response::new(pb::SetCareTeamResponse { care_team: Some(team) }))
    }

    #[tracing::instrument(name = "careplans.get_care_team", skip_all)]
    async fn get_care_team(
        &self,
        request: Request<pb::GetCareTeamRequest>,
    ) -> Result<Response<pb::GetCareTeamResponse>, Status> {
        let caller = Caller::from_request(&request)?.clone();
        let id = patient_id("patient_id", request.get_ref().patient_id.as_ref())?;
        let patient = self.visible_patient(&caller, &id).await?;
        let team = self.repo.care_team(&patient.id).await?;
        let team =
            team.unwrap_or(pb::CareTeam { patient_id: Some(patient.id.into()), members: Vec::new(), version: 0 });
        Ok(Response::new(pb::GetCareTeamResponse { care_team: Some(team) }))
    }

    #[tracing::instrument(name = "careplans.put_safety_plan", skip_all)]
    async fn put_safety_plan(
        &self,
        request: Request<pb::PutSafetyPlanRequest>,
    ) -> Result<Response<pb::PutSafetyPlanResponse>, Status> {
        let caller = Caller::from_request(&request)?.clone();
        let message = request.into_inner();
        let Some(plan) = message.safety_plan else {
            return Err(invalid_field("safety_plan", "required: the plan's six steps"));
        };
        let id = patient_id("safety_plan.patient_id", plan.patient_id.as_ref())?;
        let mut violations = Violations::new();
        parse_safety_plan(&plan, &mut violations);
        violations.into_result()?;
        // Stanley-Brown plans are written together: the patient and their
        // clinicians may both save a version.
        let patient = self.visible_patient(&caller, &id).await?;
        if caller.role == Role::Integration {
            return Err(ServiceError::denied("a safety plan is written by the patient and their clinician").into());
        }
        let saved = self.repo.put_safety_plan(&patient.org, &patient.id, message.expected_version, plan).await?;
        Ok(Response::new(pb::PutSafetyPlanResponse { safety_plan: Some(saved) }))
    }

    #[tracing::instrument(name = "careplans.get_safety_plan", skip_all)]
    async fn get_safety_plan(
        &self,
        request: Request<pb::GetSafetyPlanRequest>,
    ) -> Result<Response<pb::GetSafetyPlanResponse>, Status> {
        let caller = Caller::from_request(&request)?.clone();
        let id = patient_id("patient_id", request.get_ref().patient_id.as_ref())?;
        let patient = self.visible_patient(&caller, &id).await?;
        let plan = self.repo.safety_plan(&patient.id).await?;
        let Some(plan) = plan else {
            return Err(
                ServiceError::not_found("this patient has no safety plan yet; write one with PutSafetyPlan").into()
            );
        };
        Ok(Response::new(pb::GetSafetyPlanResponse { safety_plan: Some(plan) }))
    }
}

impl CarePlanApi {
    async fn list_caseload(
        &self,
        caller: &Caller,
        cursor: Option<&Cursor>,
        limit: u32,
    ) -> Result<pb::ListPatientsResponse, Status> {
        let ids = self.repo.caseload(&caller.subject).await?;
        let mut patients = Vec::with_capacity(ids.len());
        for id in ids {
            if let Some(patient) = self.repo.patient(&id).await?
                && patient.org == caller.org
            {
                patients.push(patient);
            }
        }
        let key = |p: &Patient| (tandem_store::unix_micros(p.enrolled_at), p.id.to_string());
        patients.sort_by_key(key);
        let after: Vec<&Patient> =
            patients.iter().filter(|p| cursor.is_none_or(|c| key(p) > (c.at, c.id.clone()))).collect();
        let page: Vec<&Patient> = after.iter().take(limit as usize).copied().collect();
        let next = if after.len() > page.len() {
            page.last().map(|p| Cursor { at: key(p).0, id: key(p).1 }.encode()).unwrap_or_default()
        } else {
            String::new()
        };
        Ok(pb::ListPatientsResponse { patients: page.into_iter().map(patient_to_pb).collect(), next_page_token: next })
    }
}
