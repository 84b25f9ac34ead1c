//! The gRPC surface: validation, authorization and mapping to the domain.

use tandem_auth::{Caller, Role};
use tandem_proto::careplans::v1 as pb;
use tandem_proto::careplans::v1::care_plan_service_server::CarePlanService;
use tandem_proto::common::v1 as common;
use tandem_proto::ids::PatientId;
use tandem_server::status::{Violations, internal, invalid_field, not_yet};
use tandem_store::paging::{Cursor, page_size};
use tonic::{Request, Response, Status};

use crate::domain::{NewPatient, Patient};
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
        let patient = self.repo.patient(id).await.map_err(repo_status)?;
        match patient {
            Some(patient) if may_see(caller, &patient) => Ok(patient),
            _ => Err(no_access()),
        }
    }
}

/// Whether the caller may read this patient's record.
fn may_see(caller: &Caller, patient: &Patient) -> bool {
    if caller.org != patient.org {
        return false;
    }
    match caller.role {
        Role::Patient => caller.subject == patient.id.to_string(),
        Role::Integration | Role::Admin | Role::Supervisor => true,
        // A clinician's caseload is the care teams they are on; care teams
        // arrive with care plans, until then a clinician sees nobody.
        Role::Clinician => false,
    }
}

fn no_access() -> Status {
    Status::permission_denied(
        "the caller may not access this patient; check the patient id and your role",
    )
}

fn repo_status(error: RepoError) -> Status {
    match error {
        RepoError::DuplicateExternalId => Status::already_exists(error.to_string()),
        RepoError::IdempotencyConflict => invalid_field("idempotency_key", error.to_string()),
        RepoError::Corrupt(_) | RepoError::Store(_) => internal(&error),
    }
}

fn patient_id(field: &str, id: Option<&common::PatientId>) -> Result<PatientId, Status> {
    let Some(id) = id else {
        return Err(invalid_field(field, "required: the patient's id"));
    };
    PatientId::try_from(id)
        .map_err(|error| invalid_field(format!("{field}.value"), error.to_string()))
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
    check_text(
        &mut violations,
        "idempotency_key",
        &request.idempotency_key,
        MAX_KEY_LEN,
    );
    check_text(
        &mut violations,
        "external_id",
        &request.external_id,
        MAX_EXTERNAL_ID_LEN,
    );
    check_text(
        &mut violations,
        "display_name",
        &request.display_name,
        MAX_DISPLAY_NAME_LEN,
    );
    let zone_name = if request.time_zone.is_empty() {
        "UTC"
    } else {
        request.time_zone.as_str()
    };
    let time_zone = zone_name.parse::<chrono_tz::Tz>();
    if time_zone.is_err() {
        violations.add(
            "time_zone",
            "must be an IANA time zone such as America/Chicago, or empty for UTC",
        );
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
        let enrolled = self
            .repo
            .enroll_patient(&caller.org, &new)
            .await
            .map_err(repo_status)?;
        let patient = match enrolled {
            Enrolled::Created(patient) => {
                tracing::info!(patient_id = %patient.id, org = %caller.org, "patient enrolled");
                patient
            }
            Enrolled::Replayed(patient) => patient,
        };
        Ok(Response::new(pb::EnrollPatientResponse {
            patient: Some(patient_to_pb(&patient)),
        }))
    }

    #[tracing::instrument(name = "careplans.get_patient", skip_all)]
    async fn get_patient(
        &self,
        request: Request<pb::GetPatientRequest>,
    ) -> Result<Response<pb::GetPatientResponse>, Status> {
        let caller = Caller::from_request(&request)?.clone();
        let id = patient_id("patient_id", request.get_ref().patient_id.as_ref())?;
        let patient = self.visible_patient(&caller, &id).await?;
        Ok(Response::new(pb::GetPatientResponse {
            patient: Some(patient_to_pb(&patient)),
        }))
    }

    #[tracing::instrument(name = "careplans.list_patients", skip_all)]
    async fn list_patients(
        &self,
        request: Request<pb::ListPatientsRequest>,
    ) -> Result<Response<pb::ListPatientsResponse>, Status> {
        let caller = Caller::from_request(&request)?.clone();
        let page = request.get_ref().page.clone().unwrap_or_default();
        let cursor = Cursor::decode(&page.page_token)
            .map_err(|error| invalid_field("page.page_token", error.to_string()))?;
        let limit = page_size(page.page_size);
        if caller.role == Role::Patient {
            // A patient's list is themself.
            let own = caller.subject.parse::<PatientId>().ok();
            let patient = match own {
                Some(id) if cursor.is_none() => {
                    self.repo.patient(&id).await.map_err(repo_status)?
                }
                _ => None,
            };
            let patients = patient
                .filter(|p| may_see(&caller, p))
                .iter()
                .map(patient_to_pb)
                .collect();
            return Ok(Response::new(pb::ListPatientsResponse {
                patients,
                next_page_token: String::new(),
            }));
        }
        if caller.role == Role::Clinician {
            return Ok(Response::new(pb::ListPatientsResponse::default()));
        }
        let (patients, next) = self
            .repo
            .list_patients(&caller.org, cursor.as_ref(), limit)
            .await
            .map_err(repo_status)?;
        Ok(Response::new(pb::ListPatientsResponse {
            patients: patients.iter().map(patient_to_pb).collect(),
            next_page_token: next.map(|cursor| cursor.encode()).unwrap_or_default(),
        }))
    }

    async fn create_care_plan(
        &self,
        _request: Request<pb::CreateCarePlanRequest>,
    ) -> Result<Response<pb::CreateCarePlanResponse>, Status> {
        Err(not_yet("CreateCarePlan"))
    }

    async fn get_care_plan(
        &self,
        _request: Request<pb::GetCarePlanRequest>,
    ) -> Result<Response<pb::GetCarePlanResponse>, Status> {
        Err(not_yet("GetCarePlan"))
    }

    async fn update_care_plan(
        &self,
        _request: Request<pb::UpdateCarePlanRequest>,
    ) -> Result<Response<pb::UpdateCarePlanResponse>, Status> {
        Err(not_yet("UpdateCarePlan"))
    }

    async fn list_care_plans(
        &self,
        _request: Request<pb::ListCarePlansRequest>,
    ) -> Result<Response<pb::ListCarePlansResponse>, Status> {
        Err(not_yet("ListCarePlans"))
    }

    async fn set_care_team(
        &self,
        _request: Request<pb::SetCareTeamRequest>,
    ) -> Result<Response<pb::SetCareTeamResponse>, Status> {
        Err(not_yet("SetCareTeam"))
    }

    async fn get_care_team(
        &self,
        _request: Request<pb::GetCareTeamRequest>,
    ) -> Result<Response<pb::GetCareTeamResponse>, Status> {
        Err(not_yet("GetCareTeam"))
    }

    async fn put_safety_plan(
        &self,
        _request: Request<pb::PutSafetyPlanRequest>,
    ) -> Result<Response<pb::PutSafetyPlanResponse>, Status> {
        Err(not_yet("PutSafetyPlan"))
    }

    async fn get_safety_plan(
        &self,
        _request: Request<pb::GetSafetyPlanRequest>,
    ) -> Result<Response<pb::GetSafetyPlanResponse>, Status> {
        Err(not_yet("GetSafetyPlan"))
    }
}
