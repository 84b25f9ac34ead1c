//! Background work a server runs beside gRPC (outbox relays, event
//! consumers, schedulers), supervised and stopped together on shutdown.
//!
//! Supervised: a task that ends, fails or panics before shutdown turns its
//! service's gRPC health (and the process's) NOT_SERVING for good and logs
//! `alarm=background_task_ended` at ERROR, so the orchestrator restarts the
//! process instead of leaving it up without its consumer. Each task also
//! runs with its service's [`tandem_events::HealthReport`], so a consumer
//! inside it reports its watchdog's alarms without wiring of its own.

use std::future::Future;
use std::panic::AssertUnwindSafe;

use futures::FutureExt;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::health::Health;

/// Background tasks sharing one stop signal and one [`Health`].
#[derive(Debug)]
pub struct Tasks {
    stop: CancellationToken,
    running: Vec<(&'static str, JoinHandle<Result<(), String>>)>,
    health: Health,
    service: String,
}

impl Default for Tasks {
    fn default() -> Self {
        Self::new()
    }
}

impl Tasks {
    /// No tasks yet, with a health of their own (serve it with
    /// [`crate::GrpcServer::with_health`] and [`Tasks::health`]). Must be
    /// called inside a Tokio runtime.
    pub fn new() -> Self {
        Self::with_health(Health::new())
    }

    /// No tasks yet, reporting to `health`.
    pub fn with_health(health: Health) -> Self {
        Self { stop: CancellationToken::new(), running: Vec::new(), health, service: String::new() }
    }

    /// The health the tasks report to.
    pub fn health(&self) -> &Health {
        &self.health
    }

    /// Tasks spawned from now on belong to the gRPC service `service` (its
    /// fully qualified name): their failure takes it NOT_SERVING. Before
    /// any call, tasks belong to the process as a whole.
    pub fn set_service(&mut self, service: &str) {
        service.clone_into(&mut self.service);
    }

    /// A future that completes when the tasks are told to stop.
    pub fn stopped(&self) -> impl Future<Output = ()> + Send + 'static {
        self.stop.clone().cancelled_owned()
    }

    /// Runs `task`, which must finish once [`Tasks::stopped`] completes.
    pub fn spawn<F, E>(&mut self, name: &'static str, task: F)
    where
        F: Future<Output = Result<(), E>> + Send + 'static,
        E: std::fmt::Display,
    {
        let health = self.health.clone();
        let service = self.service.clone();
        let stop = self.stop.clone();
        let report = health.report_for(&service);
        let handle = tokio::spawn(async move {
            let run = tandem_events::with_health_report(report, task);
            let outcome = match AssertUnwindSafe(run).catch_unwind().await {
                Ok(Ok(())) => Ok(()),
                Ok(Err(error)) => Err(error.to_string()),
                Err(panic) => Err(format!("panicked: {}", panic_text(panic.as_ref()))),
            };
            if stop.is_cancelled() {
                if let Err(error) = &outcome {
                    tracing::error!(task = name, %error, "background task failed while stopping");
                }
                return outcome;
            }
            let reason = match &outcome {
                Ok(()) => "ended before shutdown".to_owned(),
                Err(error) => error.clone(),
            };
            tracing::error!(
                alarm = "background_task_ended",
                task = name,
                service = %service,
                %reason,
                "a background task ended; health is NOT_SERVING until the process restarts"
            );
            health.fail(&service, name, &reason);
            outcome
        });
        self.running.push((name, handle));
    }

    /// Tells every task to stop and waits for them; returns the failures.
    pub async fn shutdown(self) -> Vec<(&'static str, String)> {
        self.stop.cancel();
        let mut failures = Vec::new();
        for (name, handle) in self.running {
            match handle.await {
                Ok(Ok(())) => {}
                Ok(Err(error)) => failures.push((name, error)),
                Err(join) => failures.push((name, join.to_string())),
            }
        }
        failures
    }
}

fn panic_text(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|text| (*text).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".to_owned())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    async fn until(what: &str, mut check: impl FnMut() -> bool) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while !check() {
            assert!(tokio::time::Instant::now() < deadline, "timed out waiting until {what}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    #[tokio::test]
    async fn a_task_that_panics_fails_or_ends_takes_its_service_down_but_shutdown_does_not() {
        let mut tasks = Tasks::new();
        let health = tasks.health().clone();
        for service in ["a.A", "b.B", "c.C", "d.D"] {
            health.add_service(service);
        }
        let (panic_now, panic_wait) = tokio::sync::oneshot::channel::<()>();
        tasks.set_service("a.A");
        tasks.spawn("a consumer", async move {
            let _ = panic_wait.await;
            panic!("handler bug");
            #[allow(unreachable_code)]
            Ok::<(), String>(())
        });
        tasks.set_service("b.B");
        tasks.spawn("b relay", async { Err::<(), _>("broker refused") });
        tasks.set_service("c.C");
        tasks.spawn("c scheduler", async { Ok::<(), String>(()) });
        tasks.set_service("d.D");
        let stopped = tasks.stopped();
        tasks.spawn("d consumer", async move {
            stopped.await;
            Ok::<(), String>(())
        });

        until("b and c are down", || !health.is_serving("b.B") && !health.is_serving("c.C")).await;
        assert!(health.is_serving("a.A"), "a still runs");
        panic_now.send(()).unwrap();
        until("a is down", || !health.is_serving("a.A")).await;
        assert!(!health.is_serving(""), "the process as a whole is down");
        assert!(health.is_serving("d.D"));
        let reasons: Vec<String> = health.failures().into_iter().map(|(_, _, reason)| reason).collect();
        assert!(reasons.iter().any(|reason| reason.contains("panicked: handler bug")), "{reasons:?}");

        let failures = tasks.shutdown().await;
        assert!(health.is_serving("d.D"), "a task that stops on shutdown is no failure");
        let names: Vec<&str> = failures.iter().map(|(name, _)| *name).collect();
        assert_eq!(names, ["a consumer", "b relay"]);
    }
}
