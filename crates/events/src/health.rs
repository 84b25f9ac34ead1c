//! How background work says it cannot do its job: a consumer whose group
//! holds no partitions while events wait, a crisis topic falling behind, a
//! crisis event waiting on a failing store. A server turns these reports
//! into gRPC health (NOT_SERVING while any component fails), so an
//! orchestrator stops routing to the process or restarts it.

use std::future::Future;
use std::sync::Arc;

/// Where components report their health; cheap to call often (reports
/// repeat while a condition lasts).
pub trait HealthReport: Send + Sync + std::fmt::Debug {
    /// `component` cannot do its work, for `reason` (ids and counts, never
    /// patient text).
    fn failing(&self, component: &str, reason: &str);
    /// `component` works again.
    fn recovered(&self, component: &str);
}

/// Reports nowhere: what a consumer uses when nothing was wired.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoHealthReport;

impl HealthReport for NoHealthReport {
    fn failing(&self, _component: &str, _reason: &str) {}
    fn recovered(&self, _component: &str) {}
}

tokio::task_local! {
    static CURRENT: Arc<dyn HealthReport>;
}

/// Runs `task` with `report` as the health report of the work inside it: a
/// [`crate::Consumer`] started there without
/// [`crate::Consumer::with_health`] reports to it. A server's task
/// supervisor wraps every background task this way, so services need no
/// wiring of their own.
pub async fn with_health_report<F: Future>(report: Arc<dyn HealthReport>, task: F) -> F::Output {
    CURRENT.scope(report, task).await
}

/// The health report of the running task, if one was set.
pub fn current_health_report() -> Option<Arc<dyn HealthReport>> {
    CURRENT.try_with(Arc::clone).ok()
}
