//! The escalation engine against its store, on SQLite and PostgreSQL, with a
//! clock the test moves: deadlines pass, alerts are re-routed, triggers join
//! and raise, holders are re-alerted and the crisis contact hands back to
//! the care team, all without waiting. Each test reads what a consumer of
//! triage's topic would: the `EscalationChanged` events in the outbox.

use std::sync::Arc;
use std::time::Duration;

use prost::Message;
use tandem_events::{Handler, Outbox};
use tandem_proto::careplans::v1 as plans;
use tandem_proto::events::v1::event_envelope::Payload;
use tandem_proto::events::v1::{self as events, AlertReason, EscalationChange, EscalationChanged, EventEnvelope};
use tandem_proto::ids::{EscalationId, OrgId, PatientId};
use tandem_proto::triage::v1::RiskLevel;
use tandem_store::Store;
use tandem_triage::clock::ManualClock;
use tandem_triage::config::TriageSettings;
use tandem_triage::engine::Engine;
use tandem_triage::handlers::TriageHandler;
use tandem_triage::repo::{Escalation, Repo, State};
use tandem_triage::{MIGRATIONS, SCHEMA};

const T0: i64 = 1_800_000_000_000_000;
const HIGH: Duration = Duration::from_secs(15 * 60);
const IMMINENT: Duration = Duration::from_secs(5 * 60);

struct Setup {
    engine: Engine,
    clock: ManualClock,
    handler: TriageHandler,
    org: OrgId,
    patient: PatientId,
}

async fn setup(store: Store) -> Setup {
    tandem_events::install(&store).await.unwrap();
    let clock = ManualClock::at(T0);
    let outbox = Outbox::new(store.clone(), "triage");
    let engine =
        Engine::with_clock(Repo::new(store), outbox, Arc::new(TriageSettings::default()), Arc::new(clock.clone()));
    let handler = TriageHandler::new(engine.clone());
    Setup { engine, clock, handler, org: "north".parse().unwrap(), patient: PatientId::new() }
}

impl Setup {
    async fn team(&self, version: u32, members: &[&str]) {
        let team = plans::CareTeam {
            patient_id: Some(self.patient.into()),
            members: members
                .iter()
                .map(|id| plans::CareTeamMember { clinician_id: (*id).to_owned(), ..Default::default() })
                .collect(),
            version,
        };
        let payload = Payload::CareTeamChanged(events::CareTeamChanged { care_team: Some(team) });
        self.handle(tandem_events::new_envelope("careplans", &self.org, &self.patient, payload)).await;
    }

    async fn handle(&self, event: EventEnvelope) {
        let mut tx = self.engine.repo().store().begin_write().await.unwrap();
        self.handler.handle(&mut tx, &event).await.unwrap();
        tx.commit().await.unwrap();
    }

    async fn trigger(&self, level: RiskLevel, why: &str) -> Escalation {
        let mut tx = self.engine.repo().store().begin_write().await.unwrap();
        let escalation = self.engine.raise_or_join(&mut tx, &self.org, &self.patient, level, why).await.unwrap();
        tx.commit().await.unwrap();
        escalation.expect("the level escalates")
    }

    async fn failed(&self, id: &EscalationId, step: u32, attempt: Option<u32>) {
        let payload = Payload::NotificationFailed(events::NotificationFailed {
            escalation_id: Some((*id).into()),
            step,
            recipient: "whoever".into(),
            errors: vec!["webhook endpoint e1: HTTP 500".into()],
            attempt,
        });
        self.handle(tandem_events::new_envelope("notifications", &self.org, &self.patient, payload)).await;
    }

    async fn stored(&self, id: &EscalationId) -> Escalation {
        self.engine.repo().escalation(id).await.unwrap().unwrap()
    }

    /// Every `EscalationChanged` announced so far, oldest first.
    async fn changes(&self) -> Vec<EscalationChanged> {
        let rows: Vec<Vec<u8>> = sqlx::query_scalar("SELECT payload FROM outbox ORDER BY seq")
            .fetch_all(self.engine.repo().store().pool())
            .await
            .unwrap();
        rows.iter()
            .filter_map(|bytes| match EventEnvelope::decode(bytes.as_slice()).unwrap().payload {
                Some(Payload::EscalationChanged(changed)) => Some(changed),
                _ => None,
            })
            .collect()
    }

    /// The alerts announced: (attempt, step, recipient, level, reason).
    async fn alerts(&self) -> Vec<(u32, u32, String, RiskLevel, String)> {
        self.changes()
            .await
            .into_iter()
            .filter(|c| c.what_changed() == EscalationChange::Notify)
            .map(|c| {
                let e = c.escalation.as_ref().unwrap();
                (
                    e.attempt.unwrap(),
                    e.step,
                    e.current_recipient.clone(),
                    e.level(),
                    c.why_alerted().legacy_name().to_owned(),
                )
            })
            .collect()
    }
}

fn alert(attempt: u32, step: u32, to: &str, level: RiskLevel, reason: &str) -> (u32, u32, String, RiskLevel, String) {
    (attempt, step, to.to_owned(), level, reason.to_owned())
}

tandem_store::store_test!(
    a_deadline_re_routes_up_the_chain_and_then_to_the_crisis_contact,
    &MIGRATIONS,
    SCHEMA,
    |store| async move {
        let s = setup(store).await;
        s.team(1, &["dr-primary", "dr-backup"]).await;
        let raised = s.trigger(RiskLevel::High, "phq9-item9: 1").await;
        assert_eq!((raised.step, raised.attempt, raised.current_recipient.as_str()), (0, 0, "dr-primary"));
        assert_eq!(raised.ack_deadline, Some(T0 + HIGH.as_micros() as i64));

        s.clock.advance(HIGH - Duration::from_micros(1));
        assert_eq!(s.engine.run_due().await.unwrap(), 0, "not before the deadline");
        s.clock.advance(Duration::from_micros(1));
        assert_eq!(s.engine.run_due().await.unwrap(), 1);
        assert_eq!(s.engine.run_due().await.unwrap(), 0, "a deadline moves the chain once");
        let backup = s.stored(&raised.id).await;
        assert_eq!((backup.step, backup.attempt, backup.current_recipient.as_str()), (1, 1, "dr-backup"));
        s.clock.advance(HIGH);
        assert_eq!(s.engine.run_due().await.unwrap(), 1);
        s.clock.advance(HIGH);
        assert_eq!(s.engine.run_due().await.unwrap(), 1);
        assert_eq!(
            s.alerts().await,
            vec![
                alert(0, 0, "dr-primary", RiskLevel::High, "raised"),
                alert(1, 1, "dr-backup", RiskLevel::High, "deadline_passed"),
                alert(2, 2, "on-call", RiskLevel::High, "deadline_passed"),
                alert(3, 3, "on-call", RiskLevel::High, "deadline_passed"),
            ]
        );
        let to_contact = s.changes().await.into_iter().rfind(|c| c.what_changed() == EscalationChange::Notify).unwrap();
        assert_eq!(to_contact.crisis_contact, "on-call");
        assert!(to_contact.to_crisis_contact);
        assert_eq!(to_contact.alert_reason(), AlertReason::DeadlinePassed);
        // Consumers of an older version read the strings, so they are still written.
        #[allow(deprecated)]
        let strings = (to_contact.change.as_str(), to_contact.reason.as_str());
        assert_eq!(strings, ("notify", "deadline_passed"));
        let timeline = s.engine.repo().timeline(&raised.id).await.unwrap();
        assert_eq!(timeline.iter().filter(|t| t.kind == "deadline_passed").count(), 3);
    }
);

tandem_store::store_test!(
    a_higher_trigger_re_alerts_the_holder_at_the_new_level,
    &MIGRATIONS,
    SCHEMA,
    |store| async move {
        let s = setup(store).await;
        s.team(1, &["dr-primary", "dr-backup"]).await;
        let raised = s.trigger(RiskLevel::Moderate, "phq9-deterioration: +6").await;
        assert_eq!(raised.ack_deadline, Some(T0 + 24 * 3600 * 1_000_000));

        // The same level joins quietly.
        s.clock.advance(Duration::from_secs(60));
        s.trigger(RiskLevel::Moderate, "phq9-deterioration: +7").await;
        assert_eq!(s.alerts().await.len(), 1, "a joined trigger at the same level pages nobody");

        // Crisis language: imminent. The primary is alerted again, now.
        s.clock.advance(Duration::from_secs(60));
        let now = T0 + 120 * 1_000_000;
        let joined = s.trigger(RiskLevel::Imminent, "crisis-language: killing myself").await;
        assert_eq!(joined.id, raised.id, "one escalation");
        assert_eq!((joined.level, joined.first_level), (RiskLevel::Imminent, RiskLevel::Moderate));
        assert_eq!(joined.ack_deadline, Some(now + IMMINENT.as_micros() as i64), "the deadline shortened");
        assert_eq!(s.stored(&raised.id).await, joined);
        assert_eq!(
            s.alerts().await,
            vec![
                alert(0, 0, "dr-primary", RiskLevel::Moderate, "raised"),
                alert(1, 0, "dr-primary", RiskLevel::Imminent, "level_raised"),
            ]
        );
        let realert = s.changes().await.into_iter().rfind(|c| c.what_changed() == EscalationChange::Notify).unwrap();
        assert_eq!(realert.previous_level(), RiskLevel::Moderate);
        let deadline = realert.escalation.unwrap().ack_deadline.unwrap();
        assert_eq!(tandem_store::unix_micros(deadline.try_into().unwrap()), now + IMMINENT.as_micros() as i64);
        assert!(s.changes().await.iter().any(|c| c.what_changed() == EscalationChange::LevelRaised));

        // The new, shorter deadline is the one that moves the chain.
        s.clock.advance(IMMINENT);
        assert_eq!(s.engine.run_due().await.unwrap(), 1);
        assert_eq!(
            s.alerts().await.last().cloned().unwrap(),
            alert(2, 1, "dr-backup", RiskLevel::Imminent, "deadline_passed")
        );
    }
);

tandem_store::store_test!(an_acknowledged_escalation_is_never_re_alerted, &MIGRATIONS, SCHEMA, |store| async move {
    let s = setup(store).await;
    s.team(1, &["dr-primary", "dr-backup"]).await;
    let raised = s.trigger(RiskLevel::Moderate, "phq9-deterioration: +6").await;
    s.engine.acknowledge(&raised.id, "dr-primary", "calling").await.unwrap();
    s.clock.advance(Duration::from_secs(30));
    let joined = s.trigger(RiskLevel::Imminent, "crisis-language").await;
    assert_eq!((joined.level, joined.state), (RiskLevel::Imminent, State::Acknowledged));
    s.clock.advance(Duration::from_secs(48 * 3600));
    assert_eq!(s.engine.run_due().await.unwrap(), 0);
    s.failed(&raised.id, 0, Some(0)).await;
    s.team(2, &["dr-other"]).await;
    assert_eq!(s.alerts().await.len(), 1, "only the first alert, ever");
    let changes: Vec<_> = s.changes().await.into_iter().map(|c| c.what_changed().legacy_name()).collect();
    assert_eq!(changes, ["raised", "notify", "acknowledged", "level_raised"]);

    // Resolved: the next trigger raises a new escalation.
    s.engine.resolve(&raised.id, "dr-primary", "safe with family").await.unwrap();
    let next = s.trigger(RiskLevel::High, "phq9-item9: 1").await;
    assert_ne!(next.id, raised.id);
    assert_eq!(s.stored(&raised.id).await.state, State::Resolved);
});

tandem_store::store_test!(
    the_care_team_arriving_takes_the_alert_back_from_the_crisis_contact,
    &MIGRATIONS,
    SCHEMA,
    |store| async move {
        let s = setup(store).await;
        let raised = s.trigger(RiskLevel::High, "phq9-item9: 1").await;
        assert_eq!(raised.current_recipient, "on-call", "no care team known yet");
        s.clock.advance(Duration::from_secs(20));
        s.team(1, &["dr-primary", "dr-backup"]).await;
        let back = s.stored(&raised.id).await;
        assert_eq!((back.step, back.attempt, back.current_recipient.as_str()), (0, 1, "dr-primary"));
        assert_eq!(back.state, State::Notified);
        assert_eq!(back.ack_deadline, Some(T0 + 20 * 1_000_000 + HIGH.as_micros() as i64));
        assert_eq!(
            s.alerts().await,
            vec![
                alert(0, 0, "on-call", RiskLevel::High, "raised"),
                alert(1, 0, "dr-primary", RiskLevel::High, "care_team_known"),
            ]
        );
        let told = s
            .changes()
            .await
            .into_iter()
            .find(|c| c.what_changed() == EscalationChange::HandedBack)
            .expect("the crisis contact is told");
        assert_eq!(told.crisis_contact, "on-call");
        assert_eq!(told.escalation.unwrap().current_recipient, "dr-primary");

        // A late failure of the crisis contact's alert changes nothing now...
        s.failed(&raised.id, 0, Some(0)).await;
        assert_eq!(s.stored(&raised.id).await, back);
        // ...and a newer team version does not hand anything back again.
        s.team(2, &["dr-backup", "dr-primary"]).await;
        assert_eq!(s.stored(&raised.id).await, back);
        assert_eq!(s.alerts().await.len(), 2);
        // The primary's deadline climbs the chain as usual.
        s.clock.advance(HIGH);
        assert_eq!(s.engine.run_due().await.unwrap(), 1);
        assert_eq!(s.stored(&raised.id).await.attempt, 2);
    }
);

tandem_store::store_test!(an_alert_that_reached_nobody_moves_on_once, &MIGRATIONS, SCHEMA, |store| async move {
    let s = setup(store).await;
    s.team(1, &["dr-primary", "dr-backup"]).await;
    let raised = s.trigger(RiskLevel::Moderate, "phq9-deterioration: +6").await;
    s.trigger(RiskLevel::High, "phq9-item9: 1").await;
    // The first (moderate) alert's failure arrives after the re-alert: stale.
    s.failed(&raised.id, 0, Some(0)).await;
    assert_eq!(s.stored(&raised.id).await.current_recipient, "dr-primary");
    // The re-alert's failure moves the chain on at once.
    s.failed(&raised.id, 0, Some(1)).await;
    s.failed(&raised.id, 0, Some(1)).await;
    let moved = s.stored(&raised.id).await;
    assert_eq!((moved.step, moved.attempt, moved.current_recipient.as_str()), (1, 2, "dr-backup"));
    s.failed(&raised.id, 1, Some(2)).await;
    assert_eq!(s.stored(&raised.id).await.step, 2, "the backup reached nobody either: the crisis contact");
    // The crisis contact unreachable: it waits for the deadline instead of looping.
    s.failed(&raised.id, 2, Some(3)).await;
    let contact = s.stored(&raised.id).await;
    assert_eq!((contact.step, contact.attempt, contact.current_recipient.as_str()), (2, 3, "on-call"));
    assert_eq!(contact.state, State::Notified);
    let timeline = s.engine.repo().timeline(&raised.id).await.unwrap();
    assert_eq!(timeline.iter().filter(|t| t.kind == "not_reached").count(), 3);
});

tandem_store::store_test!(
    a_dead_lettered_crisis_event_pages_the_crisis_contact_once_apart_from_the_care_teams_escalation,
    &MIGRATIONS,
    SCHEMA,
    |store| async move {
        use tandem_triage::engine::DeadLetterFacts;
        use tandem_triage::repo::RepoError;

        let s = setup(store).await;
        s.team(1, &["dr-primary", "dr-backup"]).await;
        let risk = s.trigger(RiskLevel::High, "phq9-item9: 1").await;
        let facts = DeadLetterFacts {
            key: "tandem.checkins.v1/2@17".into(),
            patient: Some(s.patient.to_string()),
            org: Some(s.org.to_string()),
            event_type: Some("tandem.events.v1.CheckInSubmitted".into()),
            topic: "tandem.checkins.v1".into(),
            partition: 2,
            offset: 17,
            group: "triage".into(),
            ..Default::default()
        };
        let page = |facts: DeadLetterFacts| {
            let engine = s.engine.clone();
            async move {
                let mut tx = engine.repo().store().begin_write().await.unwrap();
                let paged = engine.dead_lettered(&mut tx, &facts).await;
                tx.commit().await.unwrap();
                paged
            }
        };
        let opened = page(facts.clone()).await.unwrap().expect("an escalation for the dead letter");
        assert_ne!(opened.id, risk.id, "apart from the care team's escalation");
        assert_eq!((opened.level, opened.current_recipient.as_str()), (RiskLevel::Imminent, "on-call"));
        // The same dead letter, reported by another group: not paged again.
        let again = DeadLetterFacts { group: "notifications".into(), ..facts.clone() };
        assert!(page(again).await.unwrap().is_none());
        assert_eq!(
            s.alerts().await,
            vec![
                alert(0, 0, "dr-primary", RiskLevel::High, "raised"),
                alert(0, 0, "on-call", RiskLevel::Imminent, "raised"),
            ]
        );
        let to_contact = s.changes().await.into_iter().rfind(|c| c.what_changed() == EscalationChange::Notify).unwrap();
        assert_eq!(to_contact.crisis_contact, "on-call");
        let timeline = s.engine.repo().timeline(&opened.id).await.unwrap();
        assert!(timeline[0].detail.contains("unprocessable crisis event"), "{}", timeline[0].detail);
        assert!(timeline[0].detail.contains("tandem.checkins.v1"));
        assert_eq!(timeline.last().unwrap().detail, "the same dead letter, reported by notifications");

        // A later trigger joins the care team's escalation, not the dead letter's.
        let joined = s.trigger(RiskLevel::Imminent, "crisis-language").await;
        assert_eq!(joined.id, risk.id);
        // The deadline pages the crisis contact again, never the care team.
        s.clock.advance(IMMINENT);
        s.engine.run_due().await.unwrap();
        let repaged = s.stored(&opened.id).await;
        assert_eq!((repaged.attempt, repaged.current_recipient.as_str()), (1, "on-call"));

        // Nothing to page about: refused for good (the consumer keeps it alarmed).
        let nobody = DeadLetterFacts { key: "k2".into(), patient: Some("not-a-patient".into()), ..facts.clone() };
        assert!(matches!(page(nobody).await, Err(RepoError::Unpageable(_))));
        let stranger = PatientId::new();
        let unknown_org = DeadLetterFacts { key: "k3".into(), patient: Some(stranger.to_string()), org: None, ..facts };
        assert!(matches!(page(unknown_org).await, Err(RepoError::Unpageable(_))));
    }
);
