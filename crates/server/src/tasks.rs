//! Background work a server runs beside gRPC (outbox relays, event
//! consumers, schedulers), stopped together on shutdown.

use std::future::Future;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Background tasks sharing one stop signal.
#[derive(Debug, Default)]
pub struct Tasks {
    stop: CancellationToken,
    running: Vec<(&'static str, JoinHandle<Result<(), String>>)>,
}

impl Tasks {
    /// No tasks yet.
    pub fn new() -> Self {
        Self::default()
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
        let handle = tokio::spawn(async move {
            let outcome = task.await.map_err(|error| error.to_string());
            if let Err(error) = &outcome {
                tracing::error!(task = name, %error, "background task failed");
            }
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
