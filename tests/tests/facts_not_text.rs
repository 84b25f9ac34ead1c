//! A check-in is assessed once, at submission, and what travels between the
//! services is the facts, never the journal's words: embedded and on
//! PostgreSQL + Kafka, a crisis journal check-in goes all the way to a
//! signed webhook alert, then every record on every topic (dead letters
//! included) is read back from the start, decoded and searched for the
//! journal's words; the escalation shows where in the journal the detector
//! found what it found (byte spans), not the words.

use std::time::{Duration, Instant};

use prost::Message;
use tandem_auth::Role;
use tandem_cli::scenario::{Clients, register_webhook};
use tandem_cli::webhook::Receiver;
use tandem_events::{Delivered, topics};
use tandem_proto::careplans::v1 as plans;
use tandem_proto::careplans::v1::care_plan_service_client::CarePlanServiceClient;
use tandem_proto::checkins::v1 as pb;
use tandem_proto::checkins::v1::check_in_service_client::CheckInServiceClient;
use tandem_proto::common::v1 as common;
use tandem_proto::events::v1::EventEnvelope;
use tandem_proto::events::v1::event_envelope::Payload;
use tandem_proto::notifications::v1::notification_service_client::NotificationServiceClient;
use tandem_proto::triage::v1 as triage;
use tandem_proto::triage::v1::triage_service_client::TriageServiceClient;
use tandem_tests::{StoreBackend, Tandem, authed};

const ORG: &str = "north";
const WAIT: Duration = Duration::from_secs(60);

/// A crisis journal whose every distinctive word is searched for on the bus.
const JOURNAL: &str = "Quietly rearranged the bookshelf by colour, then burnt the lasagne. \
                       Honestly I have been thinking about killing myself, Marguerite doesn't know.";

/// Words of [`JOURNAL`] that no event may carry, in any case.
const WORDS: [&str; 6] = ["bookshelf", "lasagne", "marguerite", "killing myself", "rearranged", "honestly"];

async fn clients(tandem: &Tandem) -> Clients {
    let channel = tandem.channel().await;
    Clients {
        plans: CarePlanServiceClient::new(channel.clone()),
        checkins: CheckInServiceClient::new(channel.clone()),
        triage: TriageServiceClient::new(channel.clone()),
        notifications: NotificationServiceClient::new(channel),
    }
}

/// Reads every record of every topic (and its dead-letter topic) from the
/// start, until nothing new arrives for a few seconds.
async fn every_record(tandem: &Tandem) -> Vec<Delivered> {
    let bus = tandem.bus().await;
    let mut names: Vec<String> = Vec::new();
    for topic in topics::ALL {
        names.push(topic.to_owned());
        names.push(format!("{topic}{}", topics::DEAD_LETTER_SUFFIX));
    }
    let mut subscription = bus.subscribe("facts-not-text-reader", &names).await.expect("subscribe from the start");
    let mut records = Vec::new();
    let mut quiet_since = Instant::now();
    let started = Instant::now();
    while quiet_since.elapsed() < Duration::from_secs(5) && started.elapsed() < WAIT {
        // A read waits for the next record, and the next one may be the
        // re-alert at the deadline, minutes away.
        let Ok(batch) = tokio::time::timeout(Duration::from_secs(1), subscription.next_batch(500)).await else {
            continue;
        };
        let batch = batch.expect("read the bus");
        if !batch.is_empty() {
            quiet_since = Instant::now();
        }
        records.extend(batch);
    }
    subscription.close().await.expect("close the reader");
    records
}

macro_rules! on_both {
    ($name:ident) => {
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn embedded() {
                super::$name(super::StoreBackend::Sqlite).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres_kafka() {
                super::$name(super::StoreBackend::Postgres).await;
            }
        }
    };
}

on_both!(no_event_carries_the_journal_and_the_escalation_shows_spans);
async fn no_event_carries_the_journal_and_the_escalation_shows_spans(backend: StoreBackend) {
    let tandem = Tandem::start(backend).await;
    let mut c = clients(&tandem).await;
    let ehr = tandem.token(ORG, Role::Integration, "ehr-client");
    let patient = tandem.enroll(&ehr, "mrn-31").await;
    let primary = plans::CareTeamMember {
        clinician_id: "dr-primary".into(),
        role: plans::CareTeamRole::Primary as i32,
        display_name: "Dr Primary".into(),
    };
    c.plans
        .set_care_team(authed(
            &ehr,
            plans::SetCareTeamRequest { patient_id: Some(patient.clone()), members: vec![primary] },
        ))
        .await
        .expect("set the care team");
    let receiver = Receiver::start().await.expect("webhook receiver");
    let clinician = tandem.token(ORG, Role::Clinician, "dr-primary");
    register_webhook(&mut c, &clinician, "", &receiver, "/dr-primary").await.expect("register a webhook");
    tandem
        .eventually("triage to know the care team", || {
            let mut client = c.triage.clone();
            let request = triage::GetTriageConfigRequest { patient_id: Some(patient.clone()) };
            let token = clinician.clone();
            async move { client.get_triage_config(authed(&token, request)).await.ok() }
        })
        .await;

    // A crisis journal with a PHQ-9, as the patient's app sends it.
    let sam = tandem.token(ORG, Role::Patient, &patient.value);
    let reply = c
        .checkins
        .submit_check_in(authed(
            &sam,
            pb::SubmitCheckInRequest {
                idempotency_key: "tonight".into(),
                patient_id: Some(patient.clone()),
                instruments: vec![pb::InstrumentResponse {
                    instrument: "44249-1".into(),
                    answers: vec![2, 2, 1, 1, 1, 1, 1, 1, 1],
                }],
                journal: JOURNAL.into(),
                ..Default::default()
            },
        ))
        .await
        .expect("the check-in is accepted")
        .into_inner();
    let triggers = reply.safety_response.expect("the safety response").triggers;
    assert_eq!(triggers, ["phq9-item9", "crisis-language"]);
    let alert = receiver
        .wait_for(WAIT, |r| r.path == "/dr-primary" && r.kind() == "escalation.notify")
        .await
        .expect("the primary is alerted");
    assert_eq!(alert.json["data"]["level"], "RISK_LEVEL_HIGH");

    // The escalation says where the detector found crisis language, not what.
    let mut client = TriageServiceClient::new(tandem.channel().await);
    let id = alert.json["data"]["escalation_id"].as_str().expect("an escalation id").to_owned();
    let request = triage::GetEscalationRequest { escalation_id: Some(common::EscalationId { value: id }) };
    let escalation = client.get_escalation(authed(&clinician, request)).await.expect("read it").into_inner();
    let shown = format!("{escalation:?}").to_lowercase();
    assert!(shown.contains("crisis language"), "{shown}");
    assert!(shown.contains("at bytes"), "{shown}");

    // Every record on the bus, decoded: the check-in's facts are there, the
    // journal's words nowhere, in the payload or the headers.
    let records = every_record(&tandem).await;
    let mut facts = None;
    for record in &records {
        let raw = String::from_utf8_lossy(&record.value).to_lowercase();
        let headers = format!("{:?}", record.headers).to_lowercase();
        let decoded = EventEnvelope::decode(record.value.as_slice()).ok();
        let text = format!("{decoded:?}").to_lowercase();
        for word in WORDS {
            for (what, haystack) in [("bytes", &raw), ("headers", &headers), ("decoded", &text)] {
                assert!(!haystack.contains(word), "{} carries {word:?} in its {what}", record.topic);
            }
        }
        if let Some(Payload::CheckInSubmitted(submitted)) = decoded.and_then(|event| event.payload) {
            facts = submitted.facts;
        }
    }
    let facts = facts.expect("the check-in's event, with its facts");
    let journal = facts.journal.expect("the journal's facts");
    assert_eq!(journal.bytes, JOURNAL.len() as u64);
    let spans: Vec<&str> =
        journal.findings.iter().filter_map(|f| JOURNAL.get(f.start as usize..f.end as usize)).collect();
    assert!(spans.iter().any(|span| span.contains("killing myself")), "the spans point at the words: {spans:?}");
    let phq9 = &facts.instruments[0];
    assert_eq!((phq9.total, phq9.crisis_triggers.as_slice()), (Some(11), &["phq9-item9".to_owned()][..]));
    assert!(records.iter().any(|r| r.topic == topics::NOTIFICATIONS), "the whole path ran: {} records", records.len());
    tandem.stop().await;
}
