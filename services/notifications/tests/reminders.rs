//! Reminders through the real store: projections from careplans and checkins
//! events, the scheduler, the worker, quiet hours.

mod support;

use std::time::{Duration, SystemTime};

use chrono::{DateTime, Timelike, Utc};
use tandem_auth::Role;
use tandem_events::Handler;
use tandem_notifications::Notifications;
use tandem_proto::careplans::v1 as plans;
use tandem_proto::checkins::v1 as checkins;
use tandem_proto::common::v1 as common;
use tandem_proto::events::v1 as events;
use tandem_proto::events::v1::event_envelope::Payload;
use tandem_proto::ids::{CarePlanId, OrgId, PatientId};
use tandem_proto::notifications::v1 as pb;
use tandem_proto::notifications::v1::notification_service_server::NotificationService;
use tandem_store::Backend;

use support::*;

macro_rules! both_backends {
    ($name:ident) => {
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                super::$name(tandem_store::Backend::Sqlite).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                super::$name(tandem_store::Backend::Postgres).await;
            }
        }
    };
}

/// Applies an event through the service's handler, as the consumer would.
async fn apply(service: &Notifications, patient: &PatientId, payload: Payload) {
    let org: OrgId = "north".parse().unwrap();
    let event = tandem_events::new_envelope("careplans", &org, patient, payload);
    let mut tx = service.store().begin_write().await.unwrap();
    service.handler().handle(&mut tx, &event).await.unwrap();
    tx.commit().await.unwrap();
}

/// Enrols a patient with a plan: a daily breathing task and a weekly PHQ-9,
/// both first due a minute ago.
async fn enrol_with_plan(service: &Notifications, patient: &PatientId) -> String {
    apply(
        service,
        patient,
        Payload::PatientEnrolled(events::PatientEnrolled { external_id: "mrn".into(), time_zone: "UTC".into() }),
    )
    .await;
    let start = SystemTime::now() - Duration::from_secs(60);
    let recurrence = |days| plans::Recurrence { every_days: days, starts_at: Some(start.into()), ends_at: None };
    let plan_id = CarePlanId::new().to_string();
    let plan = plans::CarePlan {
        id: Some(common::CarePlanId { value: plan_id.clone() }),
        patient_id: Some((*patient).into()),
        version: 1,
        status: plans::CarePlanStatus::Active as i32,
        tasks: vec![plans::HomeworkTask {
            task_id: "breathe".into(),
            title: "Box breathing".into(),
            schedule: Some(plans::homework_task::Schedule::Recurrence(recurrence(1))),
            ..Default::default()
        }],
        measures: vec![plans::MeasureSchedule {
            schedule_id: "phq".into(),
            instrument: "44249-1".into(),
            recurrence: Some(recurrence(7)),
            expiry_window_hours: 72,
        }],
        ..Default::default()
    };
    apply(service, patient, Payload::CarePlanChanged(events::CarePlanChanged { care_plan: Some(plan) })).await;
    plan_id
}

fn hhmm(at: SystemTime) -> String {
    let at = DateTime::<Utc>::from(at);
    format!("{:02}:{:02}", at.hour(), at.minute())
}

both_backends!(reminders_go_once_per_occurrence_skip_what_was_done_and_wait_out_quiet_hours);
async fn reminders_go_once_per_occurrence_skip_what_was_done_and_wait_out_quiet_hours(backend: Backend) {
    let mut settings = fast_settings();
    // No default quiet hours, so the test does not depend on the hour it runs.
    settings.reminders.quiet_hours_start = String::new();
    settings.reminders.quiet_hours_end = String::new();
    with_env(backend, settings, |env| async move {
        let service = &env.service;
        // Patient 1 has no endpoint: reminders go to their in-app inbox.
        // They answered the PHQ-9 after it fell due, so only the task is due.
        let first = PatientId::new();
        enrol_with_plan(service, &first).await;
        let check_in = checkins::CheckIn {
            patient_id: Some(first.into()),
            submitted_at: Some(SystemTime::now().into()),
            scores: vec![checkins::ScoredInstrument { instrument: "44249-1".into(), ..Default::default() }],
            ..Default::default()
        };
        // An event as an older check-ins wrote it, with the journal on it.
        #[allow(deprecated)]
        apply(
            service,
            &first,
            Payload::CheckInSubmitted(events::CheckInSubmitted {
                check_in: Some(check_in),
                journal: PATIENT_TEXT.into(),
                ..Default::default()
            }),
        )
        .await;

        // Patient 2 registered an in-app endpoint whose quiet hours are now.
        let second = PatientId::new();
        enrol_with_plan(service, &second).await;
        let now = SystemTime::now();
        service
            .api()
            .register_endpoint(as_caller(
                "north",
                Role::Patient,
                &second.to_string(),
                pb::RegisterEndpointRequest {
                    channel: pb::Channel::InApp as i32,
                    quiet_hours_start: hhmm(now - Duration::from_secs(3600)),
                    quiet_hours_end: hhmm(now + Duration::from_secs(3600)),
                    time_zone: "UTC".into(),
                    ..Default::default()
                },
            ))
            .await
            .unwrap();

        let scheduler = service.scheduler();
        // Patient 1: the task; patient 2: the task and the measure.
        assert_eq!(scheduler.tick(SystemTime::now()).await.unwrap(), 3);
        assert_eq!(scheduler.tick(SystemTime::now()).await.unwrap(), 0, "once per occurrence");
        // The running delivery worker picks them up.
        let repo = service.repo();
        let inbox = eventually("patient 1's reminder in their inbox", || async {
            let items = repo.inbox_items("north", &first.to_string(), 0, None).await.unwrap();
            (!items.is_empty()).then_some(items)
        })
        .await;
        assert_eq!(inbox.len(), 1, "{inbox:?}");
        assert_eq!(inbox[0].kind, "reminder");
        assert!(inbox[0].body.contains("Box breathing"), "{}", inbox[0].body);
        assert!(!inbox[0].body.contains(PATIENT_TEXT));

        // Patient 2's reminders wait for the end of quiet hours, not dropped.
        let soonest = tandem_store::unix_micros(now + Duration::from_secs(3600 - 120));
        let waiting = eventually("patient 2's reminders deferred", || async {
            let rows: Vec<(String, i64)> = sqlx::query_as(
                "SELECT state, next_attempt_at FROM deliveries WHERE recipient = $1 AND purpose = 'reminder'",
            )
            .bind(second.to_string())
            .fetch_all(service.store().pool())
            .await
            .unwrap();
            rows.iter().all(|(_, next)| *next >= soonest).then_some(rows)
        })
        .await;
        assert_eq!(waiting.len(), 2);
        assert!(waiting.iter().all(|(state, _)| state == "pending"), "{waiting:?}");
        assert!(repo.inbox_items("north", &second.to_string(), 0, None).await.unwrap().is_empty());
    })
    .await;
}
