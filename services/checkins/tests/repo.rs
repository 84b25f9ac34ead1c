//! Check-ins' storage of refused crisis signals and of the care team's
//! order, on SQLite and on PostgreSQL.

use tandem_checkins::MIGRATIONS;
use tandem_checkins::refused::crisis_signals;
use tandem_checkins::repo::{FirstStep, NewRefusedSignal, Repo};
use tandem_checkins::submit::Submitter;
use tandem_events::Outbox;
use tandem_projections as projection;
use tandem_proto::careplans::v1 as plans;
use tandem_proto::checkins::v1 as pb;
use tandem_proto::events::v1 as events;
use tandem_proto::ids::{OrgId, PatientId};
use tandem_store::Store;

fn signal_of(journal: &str, answers: Vec<i32>) -> events::RefusedCrisisSignal {
    let request = pb::SubmitCheckInRequest {
        instruments: vec![pb::InstrumentResponse { instrument: "44249-1".into(), answers }],
        journal: journal.to_owned(),
        ..Default::default()
    };
    events::RefusedCrisisSignal {
        signal_id: tandem_proto::ids::EventId::new().to_string(),
        refusal: "invalid_argument".into(),
        received_at: Some(std::time::SystemTime::now().into()),
        signals: crisis_signals(&request),
        invalid_fields: vec!["instruments[0].answers[7]".into(), "journal".into()],
    }
}

fn new_signal(
    patient: PatientId,
    key: Option<&str>,
    hash: &str,
    signal: events::RefusedCrisisSignal,
) -> NewRefusedSignal {
    NewRefusedSignal {
        org: "north".parse::<OrgId>().unwrap(),
        patient,
        idempotency_key: key.map(str::to_owned),
        request_hash: hash.to_owned(),
        signal,
    }
}

tandem_store::store_test!(
    a_refused_signal_is_stored_once_per_request_with_its_event,
    &MIGRATIONS,
    "checkins",
    |store: Store| async move {
        tandem_events::install(&store).await.unwrap();
        let outbox = Outbox::new(store.clone(), "checkins");
        let submitter = Submitter::new(outbox.clone());
        let repo = Repo::new(store);
        let patient = PatientId::new();
        let journal = format!("{}I want to kill myself.", "A long day at work. ".repeat(1200));
        let signal = signal_of(&journal, vec![0, 0, 0, 0, 0, 0, 0, 9, 2]);
        assert_eq!(signal.signals.len(), 2, "{signal:?}");

        let first = new_signal(patient, Some("k1"), "hash-a", signal.clone());
        assert!(submitter.record_refused(&repo, &first).await.unwrap(), "recorded");
        assert_eq!(outbox.pending().await.unwrap(), 1, "its event is in the outbox");
        // The same refused request again (a client's retry): nothing new.
        let retry = new_signal(patient, Some("k1"), "hash-a", signal_of(&journal, vec![0, 0, 0, 0, 0, 0, 0, 9, 2]));
        assert!(!submitter.record_refused(&repo, &retry).await.unwrap(), "a retry is not recorded twice");
        assert_eq!(outbox.pending().await.unwrap(), 1);
        // A different body under the same key, and refusals without a key, are new signals.
        let changed = new_signal(patient, Some("k1"), "hash-b", signal_of("", vec![0, 0, 0, 0, 0, 0, 0, 9, 3]));
        assert!(submitter.record_refused(&repo, &changed).await.unwrap());
        for _ in 0..2 {
            let keyless = new_signal(patient, None, "hash-c", signal_of("", vec![0, 0, 0, 0, 0, 0, 0, 9, 1]));
            assert!(submitter.record_refused(&repo, &keyless).await.unwrap(), "no key: every refusal counts");
        }
        assert_eq!(outbox.pending().await.unwrap(), 4);

        let stored = repo.refused_signals(&patient).await.unwrap();
        assert_eq!(stored.len(), 4);
        assert_eq!(stored[0], signal, "stored as announced");
        let text = &stored[0].signals.iter().find(|s| s.trigger == "crisis-language").unwrap();
        assert!(!text.findings.is_empty());
        assert!(
            !String::from_utf8_lossy(&prost::Message::encode_to_vec(&stored[0])).contains("kill"),
            "no journal words are stored with the signal"
        );
        assert!(repo.refused_signals(&PatientId::new()).await.unwrap().is_empty());
    }
);

tandem_store::store_test!(
    the_first_step_is_the_care_teams_first_member,
    &MIGRATIONS,
    "checkins",
    |store: Store| async move {
        let repo = Repo::new(store.clone());
        let patient = PatientId::new();
        assert_eq!(repo.first_step(&patient).await.unwrap(), None, "no team known");
        let member = |id: &str, role: plans::CareTeamRole, name: &str| plans::CareTeamMember {
            clinician_id: id.into(),
            role: role as i32,
            display_name: name.into(),
        };
        let team = |version: u32, members: Vec<plans::CareTeamMember>| plans::CareTeam {
            patient_id: Some(patient.into()),
            members,
            version,
        };
        let mut tx = store.begin_write().await.unwrap();
        projection::care_team(
            &mut tx,
            &team(
                1,
                vec![
                    member("zz-primary", plans::CareTeamRole::Primary, "Dr Zed"),
                    member("aa-backup", plans::CareTeamRole::Backup, "Dr Aye"),
                ],
            ),
        )
        .await
        .unwrap();
        tx.commit().await.unwrap();
        assert_eq!(
            repo.first_step(&patient).await.unwrap(),
            Some(FirstStep { role: plans::CareTeamRole::Primary, display_name: "Dr Zed".into() }),
            "the chain's order, not the ids' order"
        );
        // A newer version of the team, with another primary, replaces it.
        let mut tx = store.begin_write().await.unwrap();
        projection::care_team(&mut tx, &team(2, vec![member("on-call-1", plans::CareTeamRole::OnCall, "")]))
            .await
            .unwrap();
        tx.commit().await.unwrap();
        assert_eq!(
            repo.first_step(&patient).await.unwrap(),
            Some(FirstStep { role: plans::CareTeamRole::OnCall, display_name: String::new() })
        );
    }
);
