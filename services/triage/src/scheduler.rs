//! Acknowledgement deadlines, scheduled from the database: the scheduler
//! sleeps until the earliest deadline (or a new escalation wakes it), so
//! deadlines survive restarts and no replica needs to remember anything.

use std::future::Future;
use std::time::Duration;

use crate::engine::Engine;
use crate::repo::RepoError;

/// The longest the scheduler sleeps without looking, for deadlines written
/// by other replicas.
const MAX_SLEEP: Duration = Duration::from_secs(5);

/// Re-routes escalations as their deadlines pass, until `stop` completes.
pub async fn run(engine: Engine, stop: impl Future<Output = ()> + Send) -> Result<(), RepoError> {
    tokio::pin!(stop);
    let wake = engine.wake();
    loop {
        if let Err(error) = engine.run_due().await {
            // Keep going: the next pass retries; a crisis must not wait on a restart.
            tracing::error!(%error, "deadline pass failed; retrying");
        }
        let sleep_for = match engine.repo().next_deadline().await {
            Ok(Some(at)) => {
                let wait = at.saturating_sub(engine.now()).max(0);
                Duration::from_micros(u64::try_from(wait).unwrap_or(0)).min(MAX_SLEEP)
            }
            Ok(None) => MAX_SLEEP,
            Err(error) => {
                tracing::error!(%error, "cannot read the next deadline");
                Duration::from_secs(1)
            }
        };
        tokio::select! {
            _ = &mut stop => return Ok(()),
            _ = wake.notified() => {}
            _ = tokio::time::sleep(sleep_for) => {}
        }
    }
}
