//! gRPC health tied to the process's background work.
//!
//! Every served service is SERVING until one of its components fails: a
//! background task (relay, consumer, scheduler) that ended or panicked, or a
//! consumer whose watchdog or crisis retries raised an alarm
//! ([`tandem_events::HealthReport`]). Then that service and the overall
//! status (`""`, what Kubernetes probes ask) are NOT_SERVING until the
//! component recovers; a task that ended never does, so the orchestrator
//! restarts the process. Shutdown turns everything NOT_SERVING for good.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::watch;
use tonic_health::ServingStatus;
use tonic_health::server::{HealthReporter, HealthService};

/// The overall status's name in the health protocol.
const OVERALL: &str = "";

/// The health of one process. Cheap to clone; clones share the state.
#[derive(Debug, Clone)]
pub struct Health {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    reporter: HealthReporter,
    state: Mutex<State>,
    // Bumped on every change; a task applies the latest state to `reporter`.
    changed: watch::Sender<u64>,
}

#[derive(Debug, Default)]
struct State {
    services: BTreeSet<String>,
    // (service, component) -> why it fails. Service "" is the process as a whole.
    failing: BTreeMap<(String, String), String>,
    stopping: bool,
}

impl Default for Health {
    fn default() -> Self {
        Self::new()
    }
}

impl Health {
    /// All SERVING, no services yet. Must be created inside a Tokio runtime.
    pub fn new() -> Self {
        let (changed, mut seen) = watch::channel(0);
        let inner = Arc::new(Inner { reporter: HealthReporter::new(), state: Mutex::default(), changed });
        let weak = Arc::downgrade(&inner);
        tokio::spawn(async move {
            // Ends when the last `Health` is dropped (the sender goes with it).
            while seen.changed().await.is_ok() {
                let Some(inner) = weak.upgrade() else { return };
                apply(&inner).await;
            }
        });
        Self { inner }
    }

    /// The `grpc.health.v1.Health` service answering from this state.
    pub fn service(&self) -> tonic_health::pb::health_server::HealthServer<HealthService> {
        tonic_health::pb::health_server::HealthServer::new(HealthService::from_health_reporter(
            self.inner.reporter.clone(),
        ))
    }

    /// Registers a served service (by its fully qualified name).
    pub fn add_service(&self, service: &str) {
        self.state().services.insert(service.to_owned());
        self.changed();
    }

    /// `component` of `service` ("" for the process as a whole) cannot do
    /// its work.
    pub fn fail(&self, service: &str, component: &str, reason: &str) {
        let key = (service.to_owned(), component.to_owned());
        let newly = self.state().failing.insert(key, reason.to_owned()).is_none();
        if newly {
            tracing::warn!(service, component, reason, "health: NOT_SERVING while this component fails");
            self.changed();
        }
    }

    /// `component` of `service` works again.
    pub fn recover(&self, service: &str, component: &str) {
        let removed = self.state().failing.remove(&(service.to_owned(), component.to_owned())).is_some();
        if removed {
            tracing::info!(service, component, "health: component recovered");
            self.changed();
        }
    }

    /// Whether `service` ("" for overall) is SERVING now.
    pub fn is_serving(&self, service: &str) -> bool {
        status_of(&self.state(), service) == ServingStatus::Serving
    }

    /// What fails now: `(service, component, reason)`.
    pub fn failures(&self) -> Vec<(String, String, String)> {
        self.state()
            .failing
            .iter()
            .map(|((service, component), reason)| (service.clone(), component.clone(), reason.clone()))
            .collect()
    }

    /// Applies the current state to the served statuses now (they are
    /// otherwise applied by a background task shortly after each change).
    pub async fn publish(&self) {
        apply(&self.inner).await;
    }

    /// Shutdown: everything NOT_SERVING from now on, applied before this returns.
    pub async fn stopping(&self) {
        self.state().stopping = true;
        apply(&self.inner).await;
    }

    /// A [`tandem_events::HealthReport`] whose components belong to `service`.
    pub fn report_for(&self, service: &str) -> Arc<dyn tandem_events::HealthReport> {
        Arc::new(ServiceHealth { health: self.clone(), service: service.to_owned() })
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.inner.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn changed(&self) {
        self.inner.changed.send_modify(|version| *version += 1);
    }
}

fn status_of(state: &State, service: &str) -> ServingStatus {
    let failing = if service == OVERALL {
        !state.failing.is_empty()
    } else {
        state.failing.keys().any(|(owner, _)| owner == service)
    };
    if state.stopping || failing { ServingStatus::NotServing } else { ServingStatus::Serving }
}

async fn apply(inner: &Inner) {
    let statuses: Vec<(String, ServingStatus)> = {
        let state = inner.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        std::iter::once(OVERALL.to_owned())
            .chain(state.services.iter().cloned())
            .map(|service| {
                let status = status_of(&state, &service);
                (service, status)
            })
            .collect()
    };
    for (service, status) in statuses {
        inner.reporter.set_service_status(service, status).await;
    }
}

/// The health report of one service's components.
#[derive(Debug)]
struct ServiceHealth {
    health: Health,
    service: String,
}

impl tandem_events::HealthReport for ServiceHealth {
    fn failing(&self, component: &str, reason: &str) {
        self.health.fail(&self.service, component, reason);
    }

    fn recovered(&self, component: &str) {
        self.health.recover(&self.service, component);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_failing_component_takes_its_service_and_the_process_down_until_it_recovers() {
        let health = Health::new();
        health.add_service("a.A");
        health.add_service("b.B");
        assert!(health.is_serving(""));
        health.report_for("a.A").failing("consumer a", "no partitions");
        assert!(!health.is_serving("a.A"));
        assert!(health.is_serving("b.B"));
        assert!(!health.is_serving(""));
        health.report_for("a.A").recovered("consumer a");
        assert!(health.is_serving("a.A") && health.is_serving(""));
        health.stopping().await;
        assert!(!health.is_serving("b.B") && !health.is_serving(""));
    }
}
