//! The foundation, as an EHR integrator meets it: health, reflection,
//! authentication and tenant isolation, on embedded SQLite and PostgreSQL.

use std::time::Duration;

use tandem_auth::Role;
use tandem_proto::careplans::v1 as careplans;
use tandem_proto::careplans::v1::care_plan_service_client::CarePlanServiceClient;
use tandem_proto::checkins::v1::check_in_service_client::CheckInServiceClient;
use tandem_proto::notifications::v1::notification_service_client::NotificationServiceClient;
use tandem_proto::triage::v1::triage_service_client::TriageServiceClient;
use tandem_tests::{Tandem, authed, both_backends};
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_types::StatusExt;

/// One RPC of each service, called with the given metadata value for
/// `authorization` (or none); returns each call's status code.
async fn codes_of_one_call_per_service(tandem: &Tandem, authorization: Option<&str>) -> Vec<(&'static str, Code)> {
    let channel = tandem.channel().await;
    fn request<T>(message: T, authorization: Option<&str>) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        if let Some(value) = authorization {
            request.metadata_mut().insert("authorization", value.parse().unwrap());
        }
        request
    }
    let careplans = CarePlanServiceClient::new(channel.clone())
        .list_patients(request(careplans::ListPatientsRequest::default(), authorization))
        .await;
    let checkins =
        CheckInServiceClient::new(channel.clone()).get_due_items(request(Default::default(), authorization)).await;
    let triage =
        TriageServiceClient::new(channel.clone()).list_worklist(request(Default::default(), authorization)).await;
    let notifications =
        NotificationServiceClient::new(channel).list_endpoints(request(Default::default(), authorization)).await;
    let code = |result: Result<Code, tonic::Status>| match result {
        Ok(code) => code,
        Err(status) => status.code(),
    };
    vec![
        ("careplans", code(careplans.map(|_| Code::Ok))),
        ("checkins", code(checkins.map(|_| Code::Ok))),
        ("triage", code(triage.map(|_| Code::Ok))),
        ("notifications", code(notifications.map(|_| Code::Ok))),
    ]
}

async fn enroll(tandem: &Tandem, org: &str, external_id: &str) -> careplans::Patient {
    let token = tandem.token(org, Role::Integration, "ehr-client");
    let mut client = CarePlanServiceClient::new(tandem.channel().await);
    client
        .enroll_patient(authed(
            &token,
            careplans::EnrollPatientRequest {
                idempotency_key: format!("enrol-{external_id}"),
                external_id: external_id.to_owned(),
                display_name: "Alex Example".to_owned(),
                time_zone: "America/Chicago".to_owned(),
            },
        ))
        .await
        .expect("enrol a patient")
        .into_inner()
        .patient
        .expect("patient in response")
}

both_backends!(health_is_serving_for_all_four_services, |tandem| {
    let channel = tandem.channel();
    {
        let mut health = HealthClient::new(channel.await);
        for service in tandem_proto::SERVICE_NAMES.iter().copied().chain([""]) {
            let response = health
                .check(tonic_health::pb::HealthCheckRequest { service: service.to_owned() })
                .await
                .unwrap_or_else(|status| panic!("health of {service:?}: {status}"));
            assert_eq!(response.into_inner().status(), ServingStatus::Serving, "{service:?}");
        }
        let unknown = health
            .check(tonic_health::pb::HealthCheckRequest { service: "tandem.nope.v1.Nope".to_owned() })
            .await
            .unwrap_err();
        assert_eq!(unknown.code(), Code::NotFound);
    }
});

both_backends!(reflection_lists_every_service, |tandem| {
    let channel = tandem.channel();
    {
        use tonic_reflection::pb::v1::ServerReflectionRequest;
        use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
        use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
        use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

        let mut reflection = ServerReflectionClient::new(channel.await);
        let request = ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        };
        let mut responses = reflection
            .server_reflection_info(tokio_stream::iter([request]))
            .await
            .expect("reflection call")
            .into_inner();
        let response = responses.message().await.expect("reflection answer").expect("one answer");
        let Some(MessageResponse::ListServicesResponse(list)) = response.message_response else {
            panic!("expected a service list, got {:?}", response.message_response);
        };
        let names: Vec<String> = list.service.into_iter().map(|service| service.name).collect();
        for expected in tandem_proto::SERVICE_NAMES.iter().chain(&["grpc.health.v1.Health"]) {
            assert!(names.iter().any(|name| name == expected), "{expected} missing from {names:?}");
        }

        // grpcurl describes a service from its file descriptor: it must resolve.
        let request = ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::FileContainingSymbol(
                "tandem.careplans.v1.CarePlanService".to_owned(),
            )),
        };
        let mut responses =
            reflection.server_reflection_info(tokio_stream::iter([request])).await.unwrap().into_inner();
        let response = responses.message().await.unwrap().unwrap();
        assert!(
            matches!(response.message_response, Some(MessageResponse::FileDescriptorResponse(ref files)) if !files.file_descriptor_proto.is_empty()),
            "{:?}",
            response.message_response
        );
    }
});

both_backends!(calls_without_a_valid_token_are_unauthenticated, |tandem| {
    let all_unauthenticated = |codes: Vec<(&'static str, Code)>, case: &str| {
        for (service, code) in codes {
            assert_eq!(code, Code::Unauthenticated, "{case}: {service}");
        }
    };
    all_unauthenticated(codes_of_one_call_per_service(tandem, None).await, "no token");

    let expired = tandem.token_valid_for("north", Role::Admin, "admin-1", Duration::from_secs(1));
    // Past the expiry and the server's clock-skew leeway.
    let leeway = tandem.settings.auth.leeway_secs;
    let forged_expired = expired_token(tandem, leeway + 60);
    all_unauthenticated(
        codes_of_one_call_per_service(tandem, Some(&format!("Bearer {forged_expired}"))).await,
        "expired token",
    );

    // A token signed with another key: swap the signature of a valid one.
    let mut parts: Vec<String> = expired.split('.').map(str::to_owned).collect();
    let other = tandem_auth::mint_token(
        &[7u8; 32],
        &tandem.settings.auth.issuer,
        &tandem.settings.auth.audience,
        &"north".parse().unwrap(),
        Role::Admin,
        "admin-1",
        Duration::from_secs(3600),
    )
    .unwrap();
    parts[2] = other.split('.').nth(2).unwrap().to_owned();
    all_unauthenticated(
        codes_of_one_call_per_service(tandem, Some(&format!("Bearer {}", parts.join(".")))).await,
        "bad signature",
    );
    let signed_elsewhere = format!("Bearer {other}");
    all_unauthenticated(codes_of_one_call_per_service(tandem, Some(&signed_elsewhere)).await, "foreign key");
    all_unauthenticated(codes_of_one_call_per_service(tandem, Some("Basic dXNlcjpwYXNz")).await, "basic auth");

    // And a good token gets through authentication on every service.
    let good = format!("Bearer {}", tandem.token("north", Role::Admin, "admin-1"));
    for (service, code) in codes_of_one_call_per_service(tandem, Some(&good)).await {
        assert_ne!(code, Code::Unauthenticated, "{service}");
        assert_ne!(code, Code::PermissionDenied, "{service}");
    }
});

/// A token whose `exp` lies `seconds_ago` in the past, signed with the
/// server's own key (so only the expiry is wrong).
fn expired_token(tandem: &Tandem, seconds_ago: u64) -> String {
    // mint_token only makes tokens valid from now; mint one with a tiny ttl
    // and wait would be slow, so sign the claims directly with the dev key.
    use base64::Engine;
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let header = r#"{"alg":"HS256","typ":"JWT"}"#;
    let claims = format!(
        r#"{{"iss":"{}","aud":"{}","sub":"admin-1","org":"north","role":"admin","iat":{},"exp":{}}}"#,
        tandem.settings.auth.issuer,
        tandem.settings.auth.audience,
        now - seconds_ago - 3600,
        now - seconds_ago
    );
    let engine = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let signing_input = format!("{}.{}", engine.encode(header), engine.encode(claims));
    let secret = tandem_auth::DevSigningKey::load_or_create(&tandem.settings.data_dir).unwrap();
    let signature = hmac_sha256(secret.bytes(), signing_input.as_bytes());
    format!("{signing_input}.{}", engine.encode(signature))
}

fn hmac_sha256(key: &[u8], message: &[u8]) -> Vec<u8> {
    use hmac::Mac;
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(key).unwrap();
    mac.update(message);
    mac.finalize().into_bytes().to_vec()
}

both_backends!(another_org_is_denied_and_learns_nothing, |tandem| {
    let patient = enroll(tandem, "north", "mrn-100").await;
    let id = patient.id.clone();
    let mut client = CarePlanServiceClient::new(tandem.channel().await);

    // The owning org's integration sees the patient.
    let own = tandem.token("north", Role::Integration, "ehr-client");
    let got = client
        .get_patient(authed(&own, careplans::GetPatientRequest { patient_id: id.clone() }))
        .await
        .expect("own org reads its patient")
        .into_inner();
    assert_eq!(got.patient.unwrap().external_id, "mrn-100");

    // Every role of another org is denied, with the same answer as for a
    // patient that does not exist.
    for role in [Role::Integration, Role::Admin, Role::Supervisor, Role::Clinician] {
        let foreign = tandem.token("south", role, "someone");
        let denied = client
            .get_patient(authed(&foreign, careplans::GetPatientRequest { patient_id: id.clone() }))
            .await
            .unwrap_err();
        assert_eq!(denied.code(), Code::PermissionDenied, "{role}");
        assert!(!denied.message().contains("north"), "{}", denied.message());
        let nobody = client
            .get_patient(authed(
                &foreign,
                careplans::GetPatientRequest { patient_id: Some(tandem_proto::ids::PatientId::new().into()) },
            ))
            .await
            .unwrap_err();
        assert_eq!((nobody.code(), nobody.message()), (denied.code(), denied.message()));
    }
    let foreign = tandem.token("south", Role::Integration, "ehr-client");
    let listed =
        client.list_patients(authed(&foreign, careplans::ListPatientsRequest::default())).await.unwrap().into_inner();
    assert!(listed.patients.is_empty(), "another org's list is empty");

    // A patient sees themself and nobody else.
    let me = id.as_ref().unwrap().value.clone();
    let patient_token = tandem.token("north", Role::Patient, &me);
    client
        .get_patient(authed(&patient_token, careplans::GetPatientRequest { patient_id: id.clone() }))
        .await
        .expect("a patient reads themself");
    let other = enroll(tandem, "north", "mrn-101").await;
    let denied = client
        .get_patient(authed(&patient_token, careplans::GetPatientRequest { patient_id: other.id }))
        .await
        .unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied);
    // And cannot enrol anyone.
    let denied = client
        .enroll_patient(authed(
            &patient_token,
            careplans::EnrollPatientRequest {
                idempotency_key: "x".into(),
                external_id: "x".into(),
                display_name: "x".into(),
                time_zone: String::new(),
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied);
});

both_backends!(bad_enrolments_get_field_violations_and_store_nothing, |tandem| {
    let token = tandem.token("north", Role::Integration, "ehr-client");
    let mut client = CarePlanServiceClient::new(tandem.channel().await);
    let status = client
        .enroll_patient(authed(
            &token,
            careplans::EnrollPatientRequest {
                idempotency_key: String::new(),
                external_id: "mrn-1".into(),
                display_name: "x".repeat(201),
                time_zone: "Mars/Olympus".into(),
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    let bad_request = status.get_details_bad_request().expect("google.rpc.BadRequest details");
    let mut fields: Vec<_> = bad_request.field_violations.iter().map(|v| v.field.as_str()).collect();
    fields.sort();
    assert_eq!(fields, ["display_name", "idempotency_key", "time_zone"]);

    let status = client
        .get_patient(authed(
            &token,
            careplans::GetPatientRequest {
                patient_id: Some(tandem_proto::common::v1::PatientId { value: "mrn-1".into() }),
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(status.get_details_bad_request().unwrap().field_violations[0].field, "patient_id.value");

    let status = client
        .list_patients(authed(
            &token,
            careplans::ListPatientsRequest {
                page: Some(tandem_proto::common::v1::PageRequest { page_size: 10, page_token: "garbage".into() }),
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);

    let listed = client.list_patients(authed(&token, careplans::ListPatientsRequest::default())).await.unwrap();
    assert!(listed.into_inner().patients.is_empty(), "nothing was stored");
});

both_backends!(enrolment_is_idempotent_and_pages, |tandem| {
    let token = tandem.token("north", Role::Integration, "ehr-client");
    let mut client = CarePlanServiceClient::new(tandem.channel().await);
    let request = careplans::EnrollPatientRequest {
        idempotency_key: "retry-me".into(),
        external_id: "mrn-7".into(),
        display_name: "Sam Example".into(),
        time_zone: String::new(),
    };
    let first = client.enroll_patient(authed(&token, request.clone())).await.unwrap().into_inner();
    let again = client.enroll_patient(authed(&token, request.clone())).await.unwrap().into_inner();
    assert_eq!(first, again, "a retry returns the first result");
    assert_eq!(first.patient.as_ref().unwrap().time_zone, "UTC");

    let reused = client
        .enroll_patient(authed(
            &token,
            careplans::EnrollPatientRequest { external_id: "mrn-8".into(), ..request.clone() },
        ))
        .await
        .unwrap_err();
    assert_eq!(reused.code(), Code::FailedPrecondition);
    let duplicate = client
        .enroll_patient(authed(
            &token,
            careplans::EnrollPatientRequest { idempotency_key: "new-key".into(), ..request },
        ))
        .await
        .unwrap_err();
    assert_eq!(duplicate.code(), Code::AlreadyExists);

    for n in 0..4 {
        enroll(tandem, "north", &format!("mrn-page-{n}")).await;
    }
    let mut seen = Vec::new();
    let mut token_page = String::new();
    loop {
        let page = client
            .list_patients(authed(
                &token,
                careplans::ListPatientsRequest {
                    page: Some(tandem_proto::common::v1::PageRequest { page_size: 2, page_token: token_page.clone() }),
                },
            ))
            .await
            .unwrap()
            .into_inner();
        seen.extend(page.patients.into_iter().map(|p| p.external_id));
        if page.next_page_token.is_empty() {
            break;
        }
        token_page = page.next_page_token;
    }
    assert_eq!(seen, ["mrn-7", "mrn-page-0", "mrn-page-1", "mrn-page-2", "mrn-page-3"]);
});
