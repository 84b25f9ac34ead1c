//! The projection on both backends: newer versions replace, older and equal
//! ones never roll a row back, and the tables a service does not keep stay
//! untouched.

use prost::Message;
use sqlx::{Any, Executor, Row, Transaction};
use tandem_projections::{Applied, Keep, apply};
use tandem_proto::careplans::v1 as plans;
use tandem_proto::common::v1 as ids;
use tandem_proto::events::v1::event_envelope::Payload;
use tandem_proto::events::v1::{self as events, EventEnvelope};
use tandem_store::Backend;
use tandem_store::testing::TestDatabase;

const PATIENT: &str = "0190b6f4-7c1a-7d4e-9a51-3f1f2a9e0c11";

fn schema(backend: Backend) -> String {
    let blob = match backend {
        Backend::Sqlite => "BLOB",
        Backend::Postgres => "BYTEA",
    };
    format!(
        "CREATE TABLE patients (id TEXT PRIMARY KEY NOT NULL, org_id TEXT NOT NULL, time_zone TEXT NOT NULL);
         CREATE TABLE care_team_versions (patient_id TEXT PRIMARY KEY NOT NULL, version BIGINT NOT NULL);
         CREATE TABLE care_team_members (patient_id TEXT NOT NULL, position BIGINT NOT NULL, clinician_id TEXT NOT NULL,
             role TEXT NOT NULL DEFAULT '', display_name TEXT NOT NULL DEFAULT '', PRIMARY KEY (patient_id, position));
         CREATE TABLE care_plans (id TEXT PRIMARY KEY NOT NULL, patient_id TEXT NOT NULL, version BIGINT NOT NULL,
             status TEXT NOT NULL, body {blob} NOT NULL);
         CREATE TABLE safety_plans (patient_id TEXT PRIMARY KEY NOT NULL, version BIGINT NOT NULL, body {blob} NOT NULL);"
    )
}

fn envelope(payload: Payload) -> EventEnvelope {
    EventEnvelope {
        org_id: Some(ids::OrgId { value: "0190b6f4-7c1a-7d4e-9a51-3f1f2a9e0c12".into() }),
        patient_id: Some(ids::PatientId { value: PATIENT.into() }),
        payload: Some(payload),
        ..Default::default()
    }
}

fn team(version: u32, clinicians: &[&str]) -> EventEnvelope {
    let members = clinicians
        .iter()
        .map(|c| plans::CareTeamMember {
            clinician_id: (*c).into(),
            display_name: format!("Dr {c}"),
            ..Default::default()
        })
        .collect();
    let care_team = plans::CareTeam { patient_id: Some(ids::PatientId { value: PATIENT.into() }), version, members };
    envelope(Payload::CareTeamChanged(events::CareTeamChanged { care_team: Some(care_team) }))
}

fn plan(version: u32, title: &str) -> EventEnvelope {
    let care_plan = plans::CarePlan {
        id: Some(ids::CarePlanId { value: "0190b6f4-7c1a-7d4e-9a51-3f1f2a9e0c13".into() }),
        patient_id: Some(ids::PatientId { value: PATIENT.into() }),
        version,
        title: title.into(),
        ..Default::default()
    };
    envelope(Payload::CarePlanChanged(events::CarePlanChanged { care_plan: Some(care_plan) }))
}

fn safety(version: u32) -> EventEnvelope {
    let safety_plan =
        plans::SafetyPlan { patient_id: Some(ids::PatientId { value: PATIENT.into() }), version, ..Default::default() };
    envelope(Payload::SafetyPlanChanged(events::SafetyPlanChanged { safety_plan: Some(safety_plan) }))
}

fn enrolled(time_zone: &str) -> EventEnvelope {
    envelope(Payload::PatientEnrolled(events::PatientEnrolled { time_zone: time_zone.into(), ..Default::default() }))
}

async fn scalar<T>(tx: &mut Transaction<'_, Any>, sql: &'static str) -> T
where
    T: for<'r> sqlx::Decode<'r, Any> + sqlx::Type<Any>,
{
    sqlx::query(sql).fetch_one(&mut **tx).await.unwrap().get(0)
}

async fn on(backend: Backend, body: impl AsyncFnOnce(&mut Transaction<'static, Any>)) {
    let db = TestDatabase::create(backend).await;
    let url = match backend {
        Backend::Sqlite => format!("{}?mode=rwc", db.url),
        Backend::Postgres => db.url.clone(),
    };
    let pool = sqlx::any::AnyPoolOptions::new().max_connections(1).connect(&url).await.unwrap();
    pool.execute(sqlx::AssertSqlSafe(schema(backend))).await.unwrap();
    let mut tx = pool.begin().await.unwrap();
    body(&mut tx).await;
    tx.rollback().await.unwrap();
    pool.close().await;
    db.drop_database().await;
}

async fn newer_versions_replace_and_older_ones_never_roll_back(backend: Backend) {
    on(backend, async |tx| {
        assert_eq!(apply(tx, Keep::ALL, &plan(2, "second")).await.unwrap(), Applied::CarePlan);
        // Redelivered, then an older version arriving late: both stale.
        assert_eq!(apply(tx, Keep::ALL, &plan(2, "second again")).await.unwrap(), Applied::Stale);
        assert_eq!(apply(tx, Keep::ALL, &plan(1, "first")).await.unwrap(), Applied::Stale);
        let body: Vec<u8> = scalar(tx, "SELECT body FROM care_plans").await;
        assert_eq!(plans::CarePlan::decode(body.as_slice()).unwrap().title, "second");
        assert_eq!(apply(tx, Keep::ALL, &plan(3, "third")).await.unwrap(), Applied::CarePlan);
        let body: Vec<u8> = scalar(tx, "SELECT body FROM care_plans").await;
        assert_eq!(plans::CarePlan::decode(body.as_slice()).unwrap().title, "third");
        assert_eq!(scalar::<i64>(tx, "SELECT COUNT(*) FROM care_plans").await, 1);

        assert_eq!(apply(tx, Keep::ALL, &safety(4)).await.unwrap(), Applied::SafetyPlan);
        assert_eq!(apply(tx, Keep::ALL, &safety(3)).await.unwrap(), Applied::Stale);
        assert_eq!(scalar::<i64>(tx, "SELECT version FROM safety_plans").await, 4);
    })
    .await;
}

async fn a_care_team_is_replaced_whole_and_reports_the_chain_before(backend: Backend) {
    on(backend, async |tx| {
        let first = apply(tx, Keep::ALL, &team(1, &["clin_a", "clin_b"])).await.unwrap();
        assert_eq!(first, Applied::CareTeam { previous_chain: vec![] });
        let second = apply(tx, Keep::ALL, &team(2, &["clin_c"])).await.unwrap();
        assert_eq!(second, Applied::CareTeam { previous_chain: vec!["clin_a".into(), "clin_b".into()] });
        assert_eq!(apply(tx, Keep::ALL, &team(1, &["clin_a", "clin_b"])).await.unwrap(), Applied::Stale);
        assert_eq!(tandem_projections::chain(tx, PATIENT).await.unwrap(), vec!["clin_c".to_owned()]);
        assert_eq!(scalar::<String>(tx, "SELECT display_name FROM care_team_members").await, "Dr clin_c");
    })
    .await;
}

async fn enrolment_keeps_the_latest_time_zone_and_kept_tables_only(backend: Backend) {
    on(backend, async |tx| {
        assert_eq!(apply(tx, Keep::ALL, &enrolled("Europe/Madrid")).await.unwrap(), Applied::Patient);
        assert_eq!(apply(tx, Keep::ALL, &enrolled("America/Bogota")).await.unwrap(), Applied::Patient);
        assert_eq!(scalar::<String>(tx, "SELECT time_zone FROM patients").await, "America/Bogota");
        assert_eq!(scalar::<i64>(tx, "SELECT COUNT(*) FROM patients").await, 1);

        let triage = Keep { patients: true, care_teams: true, ..Keep::default() };
        assert_eq!(apply(tx, triage, &plan(1, "not kept")).await.unwrap(), Applied::Ignored);
        assert_eq!(apply(tx, triage, &safety(1)).await.unwrap(), Applied::Ignored);
        assert_eq!(scalar::<i64>(tx, "SELECT COUNT(*) FROM care_plans").await, 0);

        // An event that can never apply is a permanent error, not a retry.
        let mut nameless = plan(5, "no id");
        if let Some(Payload::CarePlanChanged(changed)) = &mut nameless.payload {
            changed.care_plan.as_mut().unwrap().id = None;
        }
        let error = apply(tx, Keep::ALL, &nameless).await.unwrap_err();
        assert!(error.is_permanent(), "{error}");
    })
    .await;
}

macro_rules! both_backends {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            use super::*;
            #[tokio::test]
            async fn sqlite() {
                super::$name(Backend::Sqlite).await;
            }
            #[tokio::test]
            async fn postgres() {
                super::$name(Backend::Postgres).await;
            }
        }
    )*};
}

both_backends!(
    newer_versions_replace_and_older_ones_never_roll_back,
    a_care_team_is_replaced_whole_and_reports_the_chain_before,
    enrolment_keeps_the_latest_time_zone_and_kept_tables_only,
);
