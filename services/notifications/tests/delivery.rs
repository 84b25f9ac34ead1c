//! The crisis path through the real service: escalation events on an
//! embedded bus, a real HTTP receiver, SMTP sink and database (SQLite and
//! PostgreSQL), the delivery worker and the outbox.

mod support;

use std::time::{Duration, SystemTime};

use tandem_auth::Role;
use tandem_notifications::handlers::{alert_key, handed_back_key};
use tandem_proto::events::v1::event_envelope::Payload;
use tandem_proto::events::v1::{AlertReason, EscalationChange, EscalationChanged, EventEnvelope};
use tandem_proto::ids::PatientId;
use tandem_proto::notifications::v1 as pb;
use tandem_proto::notifications::v1::notification_service_server::NotificationService;
use tandem_proto::triage::v1 as triage;
use tandem_store::Backend;
use tokio_stream::StreamExt;

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

fn verify_with_reference(secret: &str, request: &Received) {
    let mut headers = http::HeaderMap::new();
    for (name, value) in &request.headers {
        headers.insert(http::HeaderName::from_bytes(name.as_bytes()).unwrap(), value.parse().unwrap());
    }
    standardwebhooks::Webhook::new(secret).unwrap().verify(&request.body, &headers).unwrap();
}

both_backends!(a_verified_webhook_gets_one_signed_alert_per_step);
async fn a_verified_webhook_gets_one_signed_alert_per_step(backend: Backend) {
    with_env(backend, fast_settings(), |env| async move {
        let hook = Hook::start().await;
        let (_, secret) = verified_webhook(&env.service, &hook, "dr-primary", "/primary").await;
        let patient = PatientId::new();
        let escalation = new_escalation();
        let event = escalation_event(&patient, &escalation, 0, "dr-primary", "notify");
        publish_triage(&env.bus, &event).await;

        let alert = hook.wait_for("/primary", "escalation.notify").await;
        // Signed per Standard Webhooks: our signature equals an independent
        // HMAC, and the reference implementation accepts it.
        let id = alert.header("webhook-id");
        let timestamp = alert.header("webhook-timestamp");
        assert!(!id.is_empty());
        let sent_at: i64 = timestamp.parse().unwrap();
        let now = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs() as i64;
        assert!((now - sent_at).abs() < 300, "timestamp is unix seconds of the send");
        verify_with_reference(&secret, &alert);
        assert_eq!(alert.header("content-type"), "application/json");
        // What the alert says: ids, level, step, deadline; never patient text.
        let body = alert.json();
        assert_eq!(body["data"]["escalation_id"], escalation.as_str());
        assert_eq!(body["data"]["patient_id"], patient.to_string().as_str());
        assert_eq!(body["data"]["org_id"], "north");
        assert_eq!(body["data"]["step"], 0);
        assert_eq!(body["data"]["level"], "RISK_LEVEL_HIGH");
        assert!(body["data"]["ack_deadline"].as_str().is_some());
        let line = body["data"]["message"].as_str().unwrap();
        assert!(
            line.starts_with("Tandem: a high-risk alert for one of your patients needs acknowledgement by "),
            "{line}"
        );
        assert!(line.ends_with(" UTC"), "{line}");
        assert!(!String::from_utf8_lossy(&alert.body).contains(PATIENT_TEXT));

        let delivered = eventually("NotificationDelivered in the outbox", || async {
            let (delivered, _) = receipts(&env.outbox().await, &escalation);
            delivered.into_iter().next()
        })
        .await;
        assert_eq!(delivered.step, 0);
        assert_eq!(delivered.recipient, "dr-primary");
        assert_eq!(delivered.channel, pb::Channel::Webhook as i32);
        assert!(delivered.delivered_at.is_some());

        // The same event again, and the same (escalation, step) under a new
        // event id, send nothing new; the next step does go out.
        publish_triage(&env.bus, &event).await;
        publish_triage(&env.bus, &escalation_event(&patient, &escalation, 0, "dr-primary", "notify")).await;
        publish_triage(&env.bus, &escalation_event(&patient, &escalation, 1, "dr-primary", "notify")).await;
        eventually("the step-1 alert", || async {
            hook.requests("/primary").into_iter().find(|r| r.is("escalation.notify") && r.json()["data"]["step"] == 1)
        })
        .await;
        let step0: Vec<_> = hook
            .requests("/primary")
            .into_iter()
            .filter(|r| r.is("escalation.notify") && r.json()["data"]["step"] == 0)
            .collect();
        assert_eq!(step0.len(), 1, "step 0 was sent once");
        let queued = env.service.repo().deliveries_of(&alert_key(&escalation, 0)).await.unwrap();
        assert_eq!(queued.len(), 1);
        assert_eq!(queued[0].1, "delivered");
        let (delivered, failed) = receipts(&env.outbox().await, &escalation);
        assert_eq!(delivered.iter().filter(|d| d.step == 0).count(), 1);
        assert!(failed.is_empty());
    })
    .await;
}

/// Triage's event with `edit` applied to its `EscalationChanged`.
fn edited(mut event: EventEnvelope, edit: impl FnOnce(&mut EscalationChanged)) -> EventEnvelope {
    if let Some(Payload::EscalationChanged(changed)) = &mut event.payload {
        edit(changed);
        // As triage does, the strings say what the typed fields say.
        *changed = std::mem::take(changed).with_legacy_fields();
    }
    event
}

/// Triage's "notify" for `attempt` of an escalation.
fn notify(
    patient: &PatientId,
    escalation: &str,
    step: u32,
    attempt: u32,
    to: &str,
    edit: impl FnOnce(&mut EscalationChanged),
) -> EventEnvelope {
    edited(escalation_event(patient, escalation, step, to, "notify"), |changed| {
        changed.escalation.as_mut().unwrap().attempt = Some(attempt);
        edit(changed);
    })
}

both_backends!(a_re_alert_at_a_higher_level_goes_out_again_once_per_channel);
async fn a_re_alert_at_a_higher_level_goes_out_again_once_per_channel(backend: Backend) {
    with_env(backend, fast_settings(), |env| async move {
        let hook = Hook::start().await;
        verified_webhook(&env.service, &hook, "dr-primary", "/primary").await;
        verified_webhook(&env.service, &hook, "dr-primary", "/primary-phone").await;
        let patient = PatientId::new();
        let escalation = new_escalation();
        let first = notify(&patient, &escalation, 0, 0, "dr-primary", |c| {
            c.escalation.as_mut().unwrap().level = triage::RiskLevel::Moderate as i32;
            c.set_alert_reason(AlertReason::Raised);
        });
        publish_triage(&env.bus, &first).await;
        hook.wait_for("/primary", "escalation.notify").await;
        // Crisis language joins: the same step, the next attempt, a higher level.
        let raised = notify(&patient, &escalation, 0, 1, "dr-primary", |c| {
            c.escalation.as_mut().unwrap().level = triage::RiskLevel::Imminent as i32;
            c.set_alert_reason(AlertReason::LevelRaised);
            c.previous_level = triage::RiskLevel::Moderate as i32;
        });
        publish_triage(&env.bus, &raised).await;
        // Re-delivered, and re-announced under a new event id: still once.
        publish_triage(&env.bus, &raised).await;
        publish_triage(&env.bus, &edited(raised.clone(), |_| {})).await;
        let mut redelivered = raised.clone();
        redelivered.event_id = tandem_proto::ids::EventId::new().to_string();
        publish_triage(&env.bus, &redelivered).await;

        for path in ["/primary", "/primary-phone"] {
            let again = eventually("the re-alert", || async {
                hook.requests(path).into_iter().find(|r| r.is("escalation.notify") && r.json()["data"]["attempt"] == 1)
            })
            .await;
            let data = &again.json()["data"];
            assert_eq!(data["level"], "RISK_LEVEL_IMMINENT");
            assert_eq!(data["previous_level"], "RISK_LEVEL_MODERATE");
            assert_eq!(data["reason"], "level_raised");
            assert_eq!(data["step"], 0);
            let line = data["message"].as_str().unwrap();
            assert!(line.starts_with("Tandem: RAISED to imminent-risk"), "{line}");
        }
        eventually("both attempts delivered on both channels", || async {
            let (delivered, _) = receipts(&env.outbox().await, &escalation);
            (delivered.len() == 4).then_some(())
        })
        .await;
        let (delivered, failed) = receipts(&env.outbox().await, &escalation);
        assert!(failed.is_empty());
        for attempt in [0, 1] {
            assert_eq!(delivered.iter().filter(|d| d.attempt == Some(attempt)).count(), 2, "attempt {attempt}");
            let queued = env.service.repo().deliveries_of(&alert_key(&escalation, attempt)).await.unwrap();
            assert_eq!(queued.len(), 2, "one per channel");
        }
        for path in ["/primary", "/primary-phone"] {
            let alerts: Vec<_> =
                hook.requests(path).into_iter().filter(|r| r.is("escalation.notify")).map(|r| r.json()).collect();
            let attempts: Vec<_> = alerts.iter().map(|a| a["data"]["attempt"].as_u64().unwrap()).collect();
            assert_eq!(attempts.len(), 2, "{path}: the first alert and the re-alert, each once: {attempts:?}");
            assert!(attempts.contains(&0) && attempts.contains(&1));
        }
    })
    .await;
}

both_backends!(a_hand_back_pages_the_care_team_and_tells_the_crisis_contact);
async fn a_hand_back_pages_the_care_team_and_tells_the_crisis_contact(backend: Backend) {
    with_env(backend, fast_settings(), |env| async move {
        let hook = Hook::start().await;
        verified_webhook(&env.service, &hook, "on-call", "/on-call").await;
        verified_webhook(&env.service, &hook, "dr-primary", "/primary").await;
        let patient = PatientId::new();
        let escalation = new_escalation();
        publish_triage(
            &env.bus,
            &notify(&patient, &escalation, 0, 0, "on-call", |c| {
                c.crisis_contact = "on-call".into();
                c.to_crisis_contact = true;
            }),
        )
        .await;
        hook.wait_for("/on-call", "escalation.notify").await;
        let back =
            notify(&patient, &escalation, 0, 1, "dr-primary", |c| c.set_alert_reason(AlertReason::CareTeamKnown));
        let mut told = edited(back.clone(), |c| {
            c.set_kind(EscalationChange::HandedBack);
            c.set_alert_reason(AlertReason::Unspecified);
            c.crisis_contact = "on-call".into();
        });
        told.event_id = tandem_proto::ids::EventId::new().to_string();
        publish_triage(&env.bus, &back).await;
        publish_triage(&env.bus, &told).await;
        let paged = hook.wait_for("/primary", "escalation.notify").await;
        assert_eq!(paged.json()["data"]["attempt"], 1);
        assert!(paged.json()["data"]["message"].as_str().unwrap().contains("handed over from the crisis contact"));
        let notice = hook.wait_for("/on-call", "escalation.handed_back").await;
        assert_eq!(notice.json()["data"]["now_with"], "dr-primary");
        assert!(!String::from_utf8_lossy(&notice.body).contains(PATIENT_TEXT));
        // Said once, even if triage's event comes again.
        publish_triage(&env.bus, &told).await;
        publish_triage(&env.bus, &back).await;
        eventually("the primary's alert recorded", || async {
            let (delivered, _) = receipts(&env.outbox().await, &escalation);
            delivered.iter().any(|d| d.attempt == Some(1)).then_some(())
        })
        .await;
        let queued = env.service.repo().deliveries_of(&handed_back_key(&escalation, 1)).await.unwrap();
        assert_eq!(queued.len(), 1);
        assert_eq!(hook.requests("/primary").into_iter().filter(|r| r.is("escalation.notify")).count(), 1);
    })
    .await;
}

both_backends!(alerts_go_out_on_the_commits_wake_up_not_the_poll);
async fn alerts_go_out_on_the_commits_wake_up_not_the_poll(backend: Backend) {
    let mut settings = fast_settings();
    // The worker would look again only after an hour: every alert below goes
    // out because the consumer's commit woke it, with the row visible.
    settings.worker.poll = Duration::from_secs(3600);
    with_env(backend, settings, |env| async move {
        let hook = Hook::start().await;
        verified_webhook(&env.service, &hook, "dr-primary", "/primary").await;
        for sent in 1..=20 {
            let escalation = new_escalation();
            publish_triage(&env.bus, &escalation_event(&PatientId::new(), &escalation, 0, "dr-primary", "notify"))
                .await;
            eventually("the alert, without a poll", || async {
                hook.requests("/primary")
                    .into_iter()
                    .find(|r| r.is("escalation.notify") && r.json()["data"]["escalation_id"] == escalation.as_str())
            })
            .await;
            let alerts = hook.requests("/primary").into_iter().filter(|r| r.is("escalation.notify")).count();
            assert_eq!(alerts, sent);
        }
    })
    .await;
}

both_backends!(unreachable_recipients_are_reported_so_the_chain_moves_on);
async fn unreachable_recipients_are_reported_so_the_chain_moves_on(backend: Backend) {
    with_env(backend, fast_settings(), |env| async move {
        // Nobody registered: reported at once.
        let patient = PatientId::new();
        let nobody = new_escalation();
        publish_triage(&env.bus, &escalation_event(&patient, &nobody, 0, "dr-nobody", "notify")).await;
        let failed = eventually("NotificationFailed for a recipient without endpoints", || async {
            receipts(&env.outbox().await, &nobody).1.into_iter().next()
        })
        .await;
        assert_eq!(failed.recipient, "dr-nobody");
        assert_eq!(failed.step, 0);
        assert!(failed.errors[0].contains("no verified endpoint"), "{:?}", failed.errors);

        // Two endpoints: one answers 500, one refuses connections. Both
        // fail after their retries, and only then is the step not reached.
        let hook = Hook::start().await;
        let doomed = Hook::start().await;
        verified_webhook(&env.service, &hook, "dr-flaky", "/broken").await;
        verified_webhook(&env.service, &doomed, "dr-flaky", "/gone").await;
        hook.set("/broken", Mode::Answer(500));
        doomed.close().await;
        let escalation = new_escalation();
        publish_triage(&env.bus, &escalation_event(&patient, &escalation, 2, "dr-flaky", "notify")).await;
        let failed = eventually("NotificationFailed after retries", || async {
            receipts(&env.outbox().await, &escalation).1.into_iter().next()
        })
        .await;
        assert_eq!(failed.recipient, "dr-flaky");
        assert_eq!(failed.step, 2);
        assert_eq!(failed.errors.len(), 2, "{:?}", failed.errors);
        assert!(failed.errors.iter().any(|e| e.contains("answered 500")), "{:?}", failed.errors);
        assert!(failed.errors.iter().any(|e| e.contains("unreachable")), "{:?}", failed.errors);
        assert!(failed.errors.iter().all(|e| !e.contains(PATIENT_TEXT)));
        let attempts: Vec<_> = hook.requests("/broken").into_iter().filter(|r| r.is("escalation.notify")).collect();
        assert_eq!(attempts.len(), 3, "max_attempts in the test settings");
        assert!(
            attempts.iter().all(|r| r.header("webhook-id") == attempts[0].header("webhook-id")),
            "one id for every retry"
        );
        let (delivered, failed) = receipts(&env.outbox().await, &escalation);
        assert!(delivered.is_empty());
        assert_eq!(failed.len(), 1, "reported once");
        assert_eq!(env.service.repo().alert_state(&escalation, 2).await.unwrap().as_deref(), Some("failed"));
    })
    .await;
}

both_backends!(acknowledging_calls_off_pending_retries);
async fn acknowledging_calls_off_pending_retries(backend: Backend) {
    let mut settings = fast_settings();
    settings.alert_retry.min_delay = Duration::from_millis(300);
    settings.alert_retry.max_attempts = 50;
    with_env(backend, settings, |env| async move {
        let hook = Hook::start().await;
        verified_webhook(&env.service, &hook, "dr-busy", "/busy").await;
        hook.set("/busy", Mode::Answer(503));
        let patient = PatientId::new();
        let escalation = new_escalation();
        publish_triage(&env.bus, &escalation_event(&patient, &escalation, 0, "dr-busy", "notify")).await;
        hook.wait_for("/busy", "escalation.notify").await;
        publish_triage(&env.bus, &escalation_event(&patient, &escalation, 0, "dr-busy", "acknowledged")).await;
        eventually("the alert called off", || async {
            let state = env.service.repo().alert_state(&escalation, 0).await.unwrap();
            (state.as_deref() == Some("cancelled")).then_some(())
        })
        .await;
        let queued = env.service.repo().deliveries_of(&alert_key(&escalation, 0)).await.unwrap();
        assert_eq!(queued[0].1, "cancelled");
        let (delivered, failed) = receipts(&env.outbox().await, &escalation);
        assert!(delivered.is_empty() && failed.is_empty(), "an acknowledged alert is neither reached nor failed");
    })
    .await;
}

both_backends!(in_app_alerts_stream_to_their_recipient);
async fn in_app_alerts_stream_to_their_recipient(backend: Backend) {
    with_env(backend, fast_settings(), |env| async move {
        let api = env.service.api();
        let registered = api
            .register_endpoint(as_caller(
                "north",
                Role::Clinician,
                "dr-app",
                pb::RegisterEndpointRequest { channel: pb::Channel::InApp as i32, ..Default::default() },
            ))
            .await
            .unwrap()
            .into_inner();
        assert!(registered.endpoint.unwrap().verified, "in-app needs no code");
        assert!(registered.signing_secret.is_empty());
        let mut live = api
            .stream_inbox(as_caller("north", Role::Clinician, "dr-app", pb::StreamInboxRequest {}))
            .await
            .unwrap()
            .into_inner();
        let patient = PatientId::new();
        let escalation = new_escalation();
        publish_triage(&env.bus, &escalation_event(&patient, &escalation, 0, "dr-app", "notify")).await;
        let item = tokio::time::timeout(Duration::from_secs(30), live.next()).await.unwrap().unwrap().unwrap();
        assert_eq!(item.kind, "alert");
        assert!(item.body.contains("needs acknowledgement by"), "{}", item.body);
        assert!(item.body.contains(&escalation));
        assert!(!item.body.contains(PATIENT_TEXT));
        let delivered = eventually("NotificationDelivered", || async {
            receipts(&env.outbox().await, &escalation).0.into_iter().next()
        })
        .await;
        assert_eq!(delivered.channel, pb::Channel::InApp as i32);

        // Delivered while no stream is open: the next stream shows it.
        drop(live);
        publish_triage(&env.bus, &escalation_event(&patient, &escalation, 1, "dr-app", "notify")).await;
        eventually("the step-1 alert stored", || async {
            let (delivered, _) = receipts(&env.outbox().await, &escalation);
            delivered.iter().any(|d| d.step == 1).then_some(())
        })
        .await;
        let mut later = api
            .stream_inbox(as_caller("north", Role::Clinician, "dr-app", pb::StreamInboxRequest {}))
            .await
            .unwrap()
            .into_inner();
        // (Step 0 may come first if the earlier stream had not yet noted it
        // shown: showing twice beats never showing.)
        let backlog = async {
            loop {
                let item = later.next().await.unwrap().unwrap();
                if item.body.contains("Step: 1") {
                    return item;
                }
            }
        };
        let item = tokio::time::timeout(Duration::from_secs(30), backlog).await.unwrap();
        assert_eq!(item.kind, "alert");
    })
    .await;
}

both_backends!(email_and_sms_reach_their_servers);
async fn email_and_sms_reach_their_servers(backend: Backend) {
    let sink = SmtpSink::start().await;
    let provider = Hook::start().await;
    let provider_secret = tandem_notifications::signing::new_secret();
    let mut settings = fast_settings();
    settings.smtp.host = "127.0.0.1".into();
    settings.smtp.port = sink.port;
    settings.smtp.tls = tandem_notifications::config::SmtpTls::None;
    settings.smtp.from = "Tandem <alerts@clinic.example>".into();
    settings.sms.url = provider.url("/sms");
    settings.sms.secret = provider_secret.clone();
    with_env(backend, settings, |env| async move {
        let api = env.service.api();
        let register = |channel: pb::Channel, address: &str| {
            as_caller(
                "north",
                Role::Clinician,
                "dr-mobile",
                pb::RegisterEndpointRequest { channel: channel as i32, address: address.into(), ..Default::default() },
            )
        };
        let email = api.register_endpoint(register(pb::Channel::Email, "dr.mobile@clinic.example")).await.unwrap();
        let email_id = email.into_inner().endpoint.unwrap().endpoint_id;
        let message = sink.wait_for("verification code is").await;
        assert!(message.contains("dr.mobile@clinic.example"));
        let code = message.split("verification code is ").nth(1).unwrap()[..6].to_owned();
        let verify = |id: &str, code: &str| {
            as_caller(
                "north",
                Role::Clinician,
                "dr-mobile",
                pb::VerifyEndpointRequest { endpoint_id: id.into(), code: code.into() },
            )
        };
        api.verify_endpoint(verify(&email_id, &code)).await.unwrap();

        let sms = api.register_endpoint(register(pb::Channel::Sms, "+15551230000")).await.unwrap();
        let sms_id = sms.into_inner().endpoint.unwrap().endpoint_id;
        let text =
            eventually("the SMS code at the provider", || async { provider.requests("/sms").into_iter().next() }).await;
        verify_with_reference(&provider_secret, &text);
        assert_eq!(text.json()["to"], "+15551230000");
        let body = text.json()["body"].as_str().unwrap().to_owned();
        let code = body.split("verification code is ").nth(1).unwrap()[..6].to_owned();
        api.verify_endpoint(verify(&sms_id, &code)).await.unwrap();

        let patient = PatientId::new();
        let escalation = new_escalation();
        publish_triage(&env.bus, &escalation_event(&patient, &escalation, 0, "dr-mobile", "notify")).await;
        let alert = sink.wait_for("needs acknowledgement by").await;
        assert!(alert.contains(&escalation));
        assert!(!alert.contains(PATIENT_TEXT));
        let text = eventually("the alert SMS", || async {
            provider
                .requests("/sms")
                .into_iter()
                .find(|r| r.json()["body"].as_str().unwrap_or_default().contains("acknowledgement"))
        })
        .await;
        verify_with_reference(&provider_secret, &text);
        let delivered = eventually("a receipt per channel", || async {
            let (delivered, _) = receipts(&env.outbox().await, &escalation);
            (delivered.len() == 2).then_some(delivered)
        })
        .await;
        let mut channels: Vec<i32> = delivered.iter().map(|d| d.channel).collect();
        channels.sort();
        assert_eq!(channels, [pb::Channel::Email as i32, pb::Channel::Sms as i32]);
    })
    .await;
}

both_backends!(verification_codes_are_bounded_and_channels_must_be_configured);
async fn verification_codes_are_bounded_and_channels_must_be_configured(backend: Backend) {
    with_env(backend, fast_settings(), |env| async move {
        let api = env.service.api();
        let refused = api
            .register_endpoint(as_caller(
                "north",
                Role::Clinician,
                "dr-lee",
                pb::RegisterEndpointRequest {
                    channel: pb::Channel::Email as i32,
                    address: "dr.lee@clinic.example".into(),
                    ..Default::default()
                },
            ))
            .await
            .unwrap_err();
        assert_eq!(refused.code(), tonic::Code::FailedPrecondition);
        assert!(refused.message().contains("TANDEM_NOTIFICATIONS__SMTP__HOST"), "{}", refused.message());

        let hook = Hook::start().await;
        let request = || {
            as_caller(
                "north",
                Role::Clinician,
                "dr-lee",
                pb::RegisterEndpointRequest {
                    channel: pb::Channel::Webhook as i32,
                    address: hook.url("/lee"),
                    ..Default::default()
                },
            )
        };
        let endpoint = api.register_endpoint(request()).await.unwrap().into_inner().endpoint.unwrap();
        let duplicate = api.register_endpoint(request()).await.unwrap_err();
        assert_eq!(duplicate.code(), tonic::Code::AlreadyExists);
        let code = hook.wait_for("/lee", "endpoint.verification").await.json()["code"].as_str().unwrap().to_owned();
        let wrong = if code == "000000" { "111111" } else { "000000" };
        let verify = |code: &str| {
            as_caller(
                "north",
                Role::Clinician,
                "dr-lee",
                pb::VerifyEndpointRequest { endpoint_id: endpoint.endpoint_id.clone(), code: code.into() },
            )
        };
        for _ in 0..5 {
            let status = api.verify_endpoint(verify(wrong)).await.unwrap_err();
            assert_eq!(status.code(), tonic::Code::InvalidArgument);
        }
        // Five wrong codes: even the right one no longer works.
        let locked = api.verify_endpoint(verify(&code)).await.unwrap_err();
        assert_eq!(locked.code(), tonic::Code::FailedPrecondition);
        assert!(locked.message().contains("register it again"), "{}", locked.message());
        // An unverified endpoint gets no alert: the step is reported not reached.
        let escalation = new_escalation();
        publish_triage(&env.bus, &escalation_event(&PatientId::new(), &escalation, 0, "dr-lee", "notify")).await;
        eventually("NotificationFailed", || async { receipts(&env.outbox().await, &escalation).1.into_iter().next() })
            .await;
        assert!(hook.requests("/lee").iter().all(|r| !r.is("escalation.notify")));
    })
    .await;
}

both_backends!(an_unreadable_escalation_event_is_announced_to_triage_once);
async fn an_unreadable_escalation_event_is_announced_to_triage_once(backend: Backend) {
    with_env(backend, fast_settings(), |env| async move {
        // An escalation change nobody can read, on triage's topic: the alert
        // it carried would be lost. Notifications does not decide who hears
        // of it; it tells triage, which pages the crisis contact.
        let patient = PatientId::new();
        let event_id = tandem_proto::ids::EventId::new().to_string();
        let garbage = tandem_events::Record {
            topic: tandem_events::topics::TRIAGE.to_owned(),
            key: patient.to_string(),
            value: b"\xff\xff not an event envelope".to_vec(),
            headers: vec![
                (tandem_events::headers::EVENT_ID.to_owned(), event_id.clone()),
                (tandem_events::headers::EVENT_TYPE.to_owned(), "tandem.events.v1.EscalationChanged".to_owned()),
                (tandem_events::headers::ORG_ID.to_owned(), "north".to_owned()),
            ],
        };
        for result in env.bus.publish(&[garbage.clone(), garbage]).await {
            result.unwrap();
        }
        let announced = eventually("the dead letter announced to triage", || async {
            env.outbox().await.into_iter().find(|e| matches!(e.payload, Some(Payload::CrisisEventDeadLettered(_))))
        })
        .await;
        assert_eq!(announced.patient_id.as_ref().unwrap().value, patient.to_string());
        assert_eq!(announced.org_id.as_ref().unwrap().value, "north");
        let Some(Payload::CrisisEventDeadLettered(letter)) = &announced.payload else { unreachable!() };
        assert_eq!((letter.key.as_str(), letter.event_id.as_str()), (event_id.as_str(), event_id.as_str()));
        assert_eq!(letter.event_type, "tandem.events.v1.EscalationChanged");
        assert_eq!((letter.topic.as_str(), letter.consumer_group.as_str()), ("tandem.triage.v1", "notifications"));
        assert!(tandem_events::is_crisis(&announced), "travels as a crisis event");

        // The same record again (a redelivery) is not announced twice:
        // wait until an event behind it on the same partition is handled.
        let after = escalation_event(&patient, &new_escalation(), 0, "dr-nobody", "notify");
        publish_triage(&env.bus, &after).await;
        eventually("the event behind the dead letters to be handled", || async {
            env.outbox().await.iter().any(|e| matches!(e.payload, Some(Payload::NotificationFailed(_)))).then_some(())
        })
        .await;
        let count = env
            .outbox()
            .await
            .iter()
            .filter(|e| matches!(e.payload, Some(Payload::CrisisEventDeadLettered(_))))
            .count();
        assert_eq!(count, 1, "one announcement per dead letter");
    })
    .await;
}

both_backends!(retention_removes_old_finished_deliveries_and_in_app_messages_only);
async fn retention_removes_old_finished_deliveries_and_in_app_messages_only(backend: Backend) {
    with_env(backend, fast_settings(), |env| async move {
        let store = env.service.store();
        let now = tandem_notifications::repo::now_micros();
        let old = now - 100 * 24 * 3600 * 1_000_000;
        for (id, state, queued_at) in [("old-done", "delivered", old), ("old-pending", "pending", old), ("new-done", "delivered", now)] {
            sqlx::query(
                "INSERT INTO deliveries (id, purpose, dedup_key, org_id, patient_id, recipient, endpoint_id, channel, message, \
                 state, attempts, next_attempt_at, queued_at, last_error) \
                 VALUES ($1, 'reminder', $1, 'org', 'patient', 'someone', 'endpoint', 'webhook', '', $2, 1, $3, $4, '')",
            )
            .bind(id)
            .bind(state)
            // Not due for a year: the delivery worker leaves the pending one alone.
            .bind(now + 365 * 24 * 3600 * 1_000_000)
            .bind(queued_at)
            .execute(store.pool())
            .await
            .unwrap();
        }
        for (id, created_at) in [("old-message", old), ("new-message", now)] {
            sqlx::query(
                "INSERT INTO inbox_notifications (id, org_id, subject, kind, title, body, created_at) \
                 VALUES ($1, 'org', 'someone', 'reminder', 't', 'b', $2)",
            )
            .bind(id)
            .bind(created_at)
            .execute(store.pool())
            .await
            .unwrap();
        }
        let day = 24 * 3600 * 1_000_000;
        // The service's own retention task may take its first pass meanwhile:
        // what is left is what counts.
        env.service.repo().prune(now - 90 * day, now - 90 * day).await.unwrap();
        let mut deliveries: Vec<String> =
            sqlx::query_scalar("SELECT id FROM deliveries").fetch_all(store.pool()).await.unwrap();
        deliveries.sort();
        assert_eq!(deliveries, ["new-done", "old-pending"], "a pending delivery is never removed");
        let messages: Vec<String> =
            sqlx::query_scalar("SELECT id FROM inbox_notifications").fetch_all(store.pool()).await.unwrap();
        assert_eq!(messages, ["new-message"]);
    })
    .await;
}
