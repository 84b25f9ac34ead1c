//! Test support: a tansu broker (a Kafka-compatible broker in one binary)
//! started on a free port, and throwaway buses of either backend.
//!
//! The broker binary is `$TANSU_BIN`, else `tansu` on `PATH`, else
//! `~/.cache/tandem/tools/bin/tansu` or `~/.cargo/bin/tansu`; `scripts/test`
//! installs it. Without it, Kafka tests fail and say so.

use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::bus::EventBus;
use crate::embedded::{EmbeddedBus, EmbeddedConfig};
use crate::kafka::{KafkaBus, KafkaConfig};

/// Where the tansu binary is, or why it was not found.
pub fn tansu_binary() -> Result<PathBuf, String> {
    if let Some(path) = std::env::var_os("TANSU_BIN") {
        let path = PathBuf::from(path);
        if path.is_file() {
            return Ok(path);
        }
        return Err(format!(
            "TANSU_BIN={} is not a file: point it at a tansu 0.6 binary, or unset it and run the tests through scripts/test",
            path.display()
        ));
    }
    let on_path = std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).map(|dir| dir.join("tansu")).collect::<Vec<_>>())
        .unwrap_or_default();
    let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_default();
    let candidates =
        on_path.into_iter().chain([home.join(".cache/tandem/tools/bin/tansu"), home.join(".cargo/bin/tansu")]);
    for candidate in candidates {
        if candidate.is_file() {
            return Ok(candidate);
        }
    }
    Err("tansu is not installed: run the tests through scripts/test, which installs it, or set TANSU_BIN to a tansu 0.6 binary".to_owned())
}

/// A tansu broker with in-memory storage, killed when dropped.
#[derive(Debug)]
pub struct Tansu {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
}

impl Tansu {
    /// Starts a broker on a free port and waits until it accepts
    /// connections. Panics, saying what to do, if tansu is missing or does
    /// not come up.
    pub fn start() -> Self {
        let binary = tansu_binary().unwrap_or_else(|why| panic!("{why}"));
        let mut last_error = String::new();
        // A free port can be taken between probing and binding: try a few.
        for _ in 0..3 {
            match Self::start_once(&binary) {
                Ok(tansu) => return tansu,
                Err(error) => last_error = error,
            }
        }
        panic!("tansu at {} did not start: {last_error}", binary.display());
    }

    fn start_once(binary: &Path) -> Result<Self, String> {
        let port = free_port().map_err(|error| format!("no free port: {error}"))?;
        let dir = tempfile::tempdir().map_err(|error| error.to_string())?;
        let log = std::fs::File::create(dir.path().join("tansu.log")).map_err(|error| error.to_string())?;
        let log_err = log.try_clone().map_err(|error| error.to_string())?;
        let url = format!("tcp://127.0.0.1:{port}");
        let child = Command::new(binary)
            .arg("broker")
            .args(["--listener-url", &url])
            .args(["--advertised-listener-url", &url])
            .args(["--storage-engine", "memory://tansu/"])
            // tansu reads a .env from its working directory: give it an empty one.
            .current_dir(dir.path())
            .env_remove("STORAGE_ENGINE")
            .env_remove("LISTENER_URL")
            .env_remove("ADVERTISED_LISTENER_URL")
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .spawn()
            .map_err(|error| format!("cannot run {}: {error}", binary.display()))?;
        let mut tansu = Self { child, port, dir };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if TcpStream::connect((Ipv4Addr::LOCALHOST, port)).is_ok() {
                return Ok(tansu);
            }
            if let Ok(Some(status)) = tansu.child.try_wait() {
                return Err(format!("it exited with {status}: {}", tansu.log()));
            }
            if Instant::now() > deadline {
                return Err(format!("it did not listen on {port} within 30 s: {}", tansu.log()));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `host:port` for `bootstrap.servers`.
    pub fn brokers(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The broker's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("tansu.log")).unwrap_or_default()
    }
}

impl Drop for Tansu {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> std::io::Result<u16> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
    Ok(listener.local_addr()?.port())
}

/// Kafka settings for tests: short sessions so a group forms in seconds.
pub fn kafka_test_config(brokers: impl Into<String>) -> KafkaConfig {
    let mut config = KafkaConfig::new(brokers);
    config.default_partitions = 4;
    config.session_timeout = Duration::from_secs(6);
    config.auto_commit_interval = Duration::from_millis(200);
    // tansu 0.6 answers a fetch only with record batches that start at or
    // after the fetch offset, so a consumer resuming in the middle of a
    // multi-record batch gets nothing, ever (its dynostore `fetch` uses
    // `split_off(&offset)` on batch base offsets). One record per batch
    // makes every committed offset a batch start. Kafka itself returns the
    // enclosing batch, so production keeps librdkafka's batching.
    config.extra.push(("batch.num.messages".to_owned(), "1".to_owned()));
    if let Ok(contexts) = std::env::var("TANDEM_TEST_KAFKA_DEBUG") {
        // librdkafka debug contexts, e.g. `cgrp,fetch,topic`.
        config.extra.push(("debug".to_owned(), contexts));
    }
    config
}

/// A bus for one test, and what keeps it alive (a temporary directory, a broker).
#[derive(Debug)]
pub struct TestBus {
    /// The bus.
    pub bus: Arc<dyn EventBus>,
    /// The broker, when the bus is Kafka.
    pub tansu: Option<Tansu>,
    /// A directory that lives as long as the bus.
    pub dir: tempfile::TempDir,
}

impl TestBus {
    /// An embedded log in a temporary directory.
    pub async fn embedded() -> Self {
        let dir = tempfile::tempdir().expect("create a temporary directory");
        let mut config = EmbeddedConfig::new(dir.path().join("events.db"));
        config.safety_poll = Duration::from_millis(500);
        let bus = EmbeddedBus::open(config).await.expect("open the embedded event log");
        Self { bus: Arc::new(bus), tansu: None, dir }
    }

    /// Kafka on a fresh tansu broker.
    pub async fn kafka() -> Self {
        let tansu = tokio::task::spawn_blocking(Tansu::start).await.expect("start tansu");
        let bus = KafkaBus::new(kafka_test_config(tansu.brokers())).expect("create the kafka bus");
        Self { bus: Arc::new(bus), tansu: Some(tansu), dir: tempfile::tempdir().expect("create a temporary directory") }
    }
}
