//! Storing a check-in: the check-in and its `CheckInSubmitted` event commit
//! in one transaction, so triage hears of every check-in that was accepted;
//! and a refused submission's crisis signal with its `RefusedCrisisSignal`
//! event, so triage hears of that too.

use tandem_events::{Outbox, topics};
use tandem_proto::checkins::v1 as pb;
use tandem_proto::events::v1 as events;
use tandem_proto::events::v1::event_envelope::Payload;
use tandem_proto::ids::PatientId;

use crate::repo::{NewCheckIn, NewRefusedSignal, Repo, RepoError, StoredCheckIn};

/// Stores check-ins with their events.
#[derive(Debug, Clone)]
pub struct Submitter {
    outbox: Outbox,
}

impl Submitter {
    /// A submitter writing events to `outbox`.
    pub fn new(outbox: Outbox) -> Self {
        Self { outbox }
    }

    /// Stores the check-in and its event, or returns the check-in stored
    /// earlier with the same idempotency key (and stores nothing).
    pub async fn submit(
        &self,
        repo: &Repo,
        patient: &PatientId,
        new: &NewCheckIn,
        instruments: &[pb::InstrumentResponse],
    ) -> Result<StoredCheckIn, RepoError> {
        let mut tx = repo.store().begin_write().await?;
        if let Some(existing) = repo.insert_check_in(&mut tx, new).await? {
            tx.rollback().await?;
            return Ok(existing);
        }
        // Facts, never the journal's words: the journal stays in this store.
        let submitted = events::CheckInSubmitted {
            check_in: Some(new.check_in.clone()),
            instruments: instruments.to_vec(),
            crisis_triggers: new.crisis_triggers.clone(),
            facts: Some(new.facts.clone()),
            ..Default::default()
        };
        let event = self.outbox.envelope(&new.org, patient, Payload::CheckInSubmitted(submitted));
        self.outbox.enqueue(&mut tx, topics::CHECKINS, &event).await?;
        self.outbox.commit(tx).await?;
        tandem_telemetry::metrics::checkin_accepted(new.org.as_str(), !new.crisis_triggers.is_empty());
        Ok(StoredCheckIn {
            org: new.org.clone(),
            check_in: new.check_in.clone(),
            crisis_triggers: new.crisis_triggers.clone(),
            request_hash: Some(new.request_hash.clone()),
        })
    }

    /// Stores a refused submission's crisis signal and its event in one
    /// transaction. Returns false, storing nothing, when the same refused
    /// request was recorded before (its escalation is already on its way).
    pub async fn record_refused(&self, repo: &Repo, new: &NewRefusedSignal) -> Result<bool, RepoError> {
        let mut tx = repo.store().begin_write().await?;
        if !repo.insert_refused_signal(&mut tx, new).await? {
            tx.rollback().await?;
            return Ok(false);
        }
        let payload = Payload::RefusedCrisisSignal(new.signal.clone());
        let event = self.outbox.envelope(&new.org, &new.patient, payload);
        self.outbox.enqueue(&mut tx, topics::CHECKINS, &event).await?;
        self.outbox.commit(tx).await?;
        Ok(true)
    }
}
