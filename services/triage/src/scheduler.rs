//! Acknowledgement deadlines, scheduled from the database: the scheduler
//! sleeps until the earliest deadline (or a new escalation wakes it), so
//! deadlines survive restarts and no replica needs to remember anything.

use std::future::Future;
use std::time::Duration;

use tandem_proto::triage::v1::RiskLevel;

use crate::engine::Engine;
use crate::repo::{RepoError, State};

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
        record_open(&engine).await;
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

/// Records the escalations open by level and state, and the age of the
/// oldest of each, as gauges: every pair is written each pass, 0 when none
/// is open, so a cleared level reads 0 rather than its last value.
async fn record_open(engine: &Engine) {
    let open = match engine.repo().open_counts().await {
        Ok(open) => open,
        Err(error) => {
            tracing::debug!(%error, "cannot count open escalations for the metrics");
            return;
        }
    };
    let now = engine.now();
    let levels = [RiskLevel::Low, RiskLevel::Moderate, RiskLevel::High, RiskLevel::Imminent];
    for level in levels {
        for state in [State::Raised, State::Notified, State::Acknowledged] {
            let (count, oldest) = open
                .iter()
                .find(|(at, is, _, _)| *at == level && *is == state)
                .map(|(_, _, count, oldest)| (*count, now.saturating_sub(*oldest) as f64 / 1e6))
                .unwrap_or((0, 0.0));
            tandem_telemetry::metrics::escalations_open(level.as_str_name(), state.as_str(), count, oldest);
        }
    }
}
