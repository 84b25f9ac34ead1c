//! Test support: an Apache Kafka broker (a single-node KRaft broker on a
//! JVM) started on free ports, and throwaway buses of either backend.
//!
//! The broker's jars are `$TANDEM_TEST_KAFKA_LIBS`, else
//! `~/.cache/tandem/tools/kafka-<KAFKA_VERSION>/libs`; `scripts/test` fetches
//! them once from Maven Central (`scripts/kafka/pom.xml`). The JVM is `java`
//! from `$JAVA_HOME/bin`, else from `PATH`. Without them, Kafka tests panic
//! and say to run `scripts/test`.

use std::io::Read;
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};

use crate::bus::EventBus;
use crate::embedded::{EmbeddedBus, EmbeddedConfig};
use crate::kafka::{KafkaBus, KafkaConfig};

/// The Apache Kafka version the tests run on; `scripts/kafka/pom.xml` names
/// the same one.
pub const KAFKA_VERSION: &str = "4.4.0";

/// The cluster id every test broker is formatted with (each broker is a
/// cluster of its own; the id only has to be a valid one).
const CLUSTER_ID: &str = "dGFuZGVtLXRlc3QtY2x1cw";

/// How long a broker may take to answer metadata after its JVM starts. On 2
/// busy cores a JVM start takes a few seconds; this only guards against hangs.
const READY_LIMIT: Duration = Duration::from_secs(90);

/// Where the broker's jars are, or what to do to get them.
pub fn kafka_libs() -> Result<PathBuf, String> {
    let (libs, from_env) = match std::env::var_os("TANDEM_TEST_KAFKA_LIBS") {
        Some(path) => (PathBuf::from(path), true),
        None => {
            let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_default();
            (home.join(format!(".cache/tandem/tools/kafka-{KAFKA_VERSION}/libs")), false)
        }
    };
    let broker_jar = libs.join(format!("kafka_2.13-{KAFKA_VERSION}.jar"));
    if broker_jar.is_file() {
        return Ok(libs);
    }
    let source = if from_env { "TANDEM_TEST_KAFKA_LIBS=" } else { "" };
    Err(format!(
        "the Apache Kafka {KAFKA_VERSION} broker is not installed ({source}{} has no kafka_2.13-{KAFKA_VERSION}.jar): \
         run the tests through scripts/test, which fetches it once (`scripts/test --setup-only` just does that), \
         or set TANDEM_TEST_KAFKA_LIBS to a folder with the broker's jars",
        libs.display()
    ))
}

/// The `java` to run the broker with.
fn java() -> PathBuf {
    std::env::var_os("JAVA_HOME")
        .map(|home| PathBuf::from(home).join("bin/java"))
        .filter(|java| java.is_file())
        .unwrap_or_else(|| PathBuf::from("java"))
}

/// JVM options: a small heap and a fast start matter more than peak speed
/// for a broker that lives for one test.
const JVM_OPTIONS: &[&str] = &[
    "-Xms64m",
    "-Xmx512m",
    "-XX:+UseSerialGC",
    "-XX:TieredStopAtLevel=1",
    "-XX:+ExitOnOutOfMemoryError",
    "-Djava.awt.headless=true",
];

/// Runs the JVM with the test process as its lifeline: a watcher shell reads
/// the broker's stdin, a pipe whose other end only the test process holds,
/// and kills the JVM when it closes, so a test process that dies in any way
/// (a panic, an abort, SIGKILL, a harness time-out) takes its broker with
/// it. `exec` keeps the JVM on the child's pid, so `Child::kill` reaches it.
const LIFELINE: &str = r#"exec 3<&0
(read -r _ <&3; kill -9 $$ 2>/dev/null) </dev/null >/dev/null 2>&1 &
exec "$@" </dev/null 3<&-"#;

/// A single-node Apache Kafka broker (KRaft, broker and controller in one
/// JVM) with its data in a temporary directory, killed when dropped.
#[derive(Debug)]
pub struct KafkaBroker {
    child: Child,
    lifeline: Option<ChildStdin>,
    port: u16,
    dir: tempfile::TempDir,
    started_in: Duration,
}

impl KafkaBroker {
    /// Starts a broker on free ports and waits until it answers metadata.
    /// Panics, saying what to do, if the broker's jars or Java are missing or
    /// the broker does not come up.
    pub fn start() -> Self {
        let libs = kafka_libs().unwrap_or_else(|why| panic!("{why}"));
        let template = storage_template(&libs).unwrap_or_else(|why| panic!("{why}"));
        let mut last_error = String::new();
        // A free port can be taken between probing and binding: try a few.
        for _ in 0..3 {
            match Self::start_once(&libs, &template) {
                Ok(broker) => {
                    tracing::info!(
                        brokers = broker.brokers(),
                        started_ms = broker.started_in.as_millis() as u64,
                        "kafka test broker ready"
                    );
                    return broker;
                }
                Err(error) => last_error = error,
            }
        }
        panic!("the Apache Kafka test broker did not start: {last_error}");
    }

    fn start_once(libs: &Path, template: &Path) -> Result<Self, String> {
        let started = Instant::now();
        let port = free_port().map_err(|error| format!("no free port: {error}"))?;
        let controller_port = free_port().map_err(|error| format!("no free port: {error}"))?;
        if port == controller_port {
            return Err("the same free port was handed out twice".to_owned());
        }
        let dir = tempfile::Builder::new().prefix("tandem-kafka-").tempdir().map_err(|error| error.to_string())?;
        let data = dir.path().join("data");
        copy_dir(template, &data).map_err(|error| format!("copying the formatted storage: {error}"))?;
        let properties = dir.path().join("server.properties");
        std::fs::write(&properties, server_properties(port, controller_port, &data))
            .map_err(|error| error.to_string())?;
        let log4j = dir.path().join("log4j2.properties");
        std::fs::write(&log4j, log4j_properties()).map_err(|error| error.to_string())?;
        let log = std::fs::File::create(dir.path().join("kafka.log")).map_err(|error| error.to_string())?;
        let log_err = log.try_clone().map_err(|error| error.to_string())?;

        let mut child = Command::new("/bin/sh")
            .args(["-c", LIFELINE, "kafka-test-broker"])
            .arg(java())
            .args(JVM_OPTIONS)
            .arg(format!("-Dlog4j2.configurationFile={}", log4j.display()))
            .arg(format!("-Dkafka.logs.dir={}", dir.path().display()))
            .arg("-cp")
            .arg(libs.join("*"))
            .arg("kafka.Kafka")
            .arg(&properties)
            .current_dir(dir.path())
            .stdin(Stdio::piped())
            .stdout(log)
            .stderr(log_err)
            .spawn()
            .map_err(|error| format!("cannot run /bin/sh to start {}: {error}", java().display()))?;
        let lifeline = child.stdin.take();
        let mut broker = Self { child, lifeline, port, dir, started_in: Duration::ZERO };
        broker.wait_until_ready()?;
        broker.started_in = started.elapsed();
        Ok(broker)
    }

    /// Waits until the broker listens and answers a metadata request that
    /// names itself (it has registered with its controller).
    fn wait_until_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + READY_LIMIT;
        let mut metadata_client: Option<BaseConsumer> = None;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!("the JVM exited with {status}: {}", self.log()));
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "it did not answer metadata on port {} within {} s: {}",
                    self.port,
                    READY_LIMIT.as_secs(),
                    self.log()
                ));
            }
            if metadata_client.is_none() {
                if TcpStream::connect((Ipv4Addr::LOCALHOST, self.port)).is_err() {
                    std::thread::sleep(Duration::from_millis(50));
                    continue;
                }
                let client = ClientConfig::new()
                    .set("bootstrap.servers", self.brokers())
                    .set("client.id", "tandem-test-broker-probe")
                    .create()
                    .map_err(|error| format!("cannot create a probe client: {error}"))?;
                metadata_client = Some(client);
            }
            if let Some(client) = &metadata_client
                && let Ok(metadata) = client.fetch_metadata(None, Duration::from_secs(2))
                && metadata.brokers().iter().any(|broker| broker.port() == i32::from(self.port))
            {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `host:port` for `bootstrap.servers`.
    pub fn brokers(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// How long the broker took from spawning the JVM to answering metadata.
    pub fn started_in(&self) -> Duration {
        self.started_in
    }

    /// The broker's log so far (warnings and errors).
    pub fn log(&self) -> String {
        let mut text = String::new();
        if let Ok(mut file) = std::fs::File::open(self.dir.path().join("kafka.log")) {
            let _ = file.read_to_string(&mut text);
        }
        text
    }
}

impl Drop for KafkaBroker {
    fn drop(&mut self) {
        // Kill the JVM while it is still our unreaped child (its pid cannot
        // be reused before `wait`), then close the lifeline so the watcher
        // ends too.
        let _ = self.child.kill();
        let _ = self.child.wait();
        drop(self.lifeline.take());
    }
}

fn server_properties(port: u16, controller_port: u16, data: &Path) -> String {
    format!(
        "# A single-node KRaft test broker (tandem_events::testing).
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:{controller_port}
listeners=PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller_port}
advertised.listeners=PLAINTEXT://127.0.0.1:{port}
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
log.dirs={data}
num.partitions=1
# One broker: internal topics cannot be replicated.
offsets.topic.replication.factor=1
offsets.topic.num.partitions=4
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=4
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
# A broker setting, not a client one: a new group's first rebalance does not
# wait 3 s for more members (production brokers keep their own value).
group.initial.rebalance.delay.ms=0
auto.create.topics.enable=false
num.network.threads=2
num.io.threads=2
background.threads=2
log.cleaner.enable=false
",
        data = data.display()
    )
}

fn log4j_properties() -> String {
    let level = std::env::var("TANDEM_TEST_KAFKA_LOG").unwrap_or_else(|_| "warn".to_owned());
    format!(
        "status = error
appender.console.type = Console
appender.console.name = stderr
appender.console.target = SYSTEM_ERR
appender.console.layout.type = PatternLayout
appender.console.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = {level}
rootLogger.appenderRef.stderr.ref = stderr
"
    )
}

/// A storage directory formatted once (`kafka.tools.StorageTool format`)
/// next to the jars and copied for every broker: formatting is a JVM start
/// of its own, and the formatted files name no port (the quorum is a static
/// `controller.quorum.voters`), so one copy serves any broker.
fn storage_template(libs: &Path) -> Result<PathBuf, String> {
    static TEMPLATE: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    TEMPLATE.get_or_init(|| format_template(libs)).clone()
}

fn format_template(libs: &Path) -> Result<PathBuf, String> {
    let parent = libs.parent().unwrap_or(libs);
    // Under the jars' folder when it is writable, else in the temp dir.
    let base = if is_writable(parent) { parent.to_path_buf() } else { std::env::temp_dir() };
    let target = base.join(format!("kraft-storage-{KAFKA_VERSION}"));
    if target.join("meta.properties").is_file() {
        return Ok(target);
    }
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let scratch = base.join(format!(".kraft-storage-{}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed)));
    let _ = std::fs::remove_dir_all(&scratch);
    std::fs::create_dir_all(&scratch).map_err(|error| format!("cannot create {}: {error}", scratch.display()))?;
    let data = scratch.join("data");
    let properties = scratch.join("format.properties");
    // The ports are placeholders: only the broker's own configuration uses them.
    std::fs::write(&properties, server_properties(1, 2, &data)).map_err(|error| error.to_string())?;
    let log4j = scratch.join("log4j2.properties");
    std::fs::write(&log4j, log4j_properties()).map_err(|error| error.to_string())?;
    let output = Command::new(java())
        .args(JVM_OPTIONS)
        .arg(format!("-Dlog4j2.configurationFile={}", log4j.display()))
        .arg("-cp")
        .arg(libs.join("*"))
        .args(["kafka.tools.StorageTool", "format", "--cluster-id", CLUSTER_ID, "--config"])
        .arg(&properties)
        .stdin(Stdio::null())
        .output()
        .map_err(|error| {
            format!(
                "cannot run {} to format the broker's storage ({error}): install a Java 17+ runtime \
                 (as root: apt-get install default-jre-headless) or set JAVA_HOME",
                java().display()
            )
        })?;
    if !output.status.success() {
        let _ = std::fs::remove_dir_all(&scratch);
        return Err(format!(
            "formatting the broker's storage failed ({}): {}{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    // Another test process may have won the race; either copy is good.
    let renamed = std::fs::rename(&data, &target);
    let _ = std::fs::remove_dir_all(&scratch);
    match renamed {
        Ok(()) => Ok(target),
        Err(_) if target.join("meta.properties").is_file() => Ok(target),
        Err(error) => Err(format!("cannot move the formatted storage to {}: {error}", target.display())),
    }
}

fn is_writable(dir: &Path) -> bool {
    tempfile::tempfile_in(dir).is_ok()
}

fn copy_dir(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_dir(&entry.path(), &target)?;
        } else {
            std::fs::copy(entry.path(), &target)?;
            // StorageTool writes its checkpoint read-only; the broker may rewrite it.
            let mut permissions = std::fs::metadata(&target)?.permissions();
            #[allow(clippy::permissions_set_readonly_false)] // owner-only files in a private temp dir
            permissions.set_readonly(false);
            std::fs::set_permissions(&target, permissions)?;
        }
    }
    Ok(())
}

fn free_port() -> std::io::Result<u16> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
    Ok(listener.local_addr()?.port())
}

/// Kafka settings for tests: the product's defaults, except a shorter
/// consumer session. Tests stop and start group members on purpose; with
/// the broker's minimum session (6 s, `group.min.session.timeout.ms`) a
/// member that vanished without leaving is replaced in seconds instead of
/// the default 10.
pub fn kafka_test_config(brokers: impl Into<String>) -> KafkaConfig {
    let mut config = KafkaConfig::new(brokers);
    config.default_partitions = 4;
    config.session_timeout = Duration::from_secs(6);
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
    pub broker: Option<KafkaBroker>,
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
        Self { bus: Arc::new(bus), broker: None, dir }
    }

    /// Kafka on a fresh Apache Kafka broker.
    pub async fn kafka() -> Self {
        let broker = tokio::task::spawn_blocking(KafkaBroker::start).await.expect("start the kafka broker");
        let bus = KafkaBus::new(kafka_test_config(broker.brokers())).expect("create the kafka bus");
        Self {
            bus: Arc::new(bus),
            broker: Some(broker),
            dir: tempfile::tempdir().expect("create a temporary directory"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pom_names_the_same_kafka_version() {
        let pom = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/kafka/pom.xml");
        let pom = std::fs::read_to_string(&pom).expect("read scripts/kafka/pom.xml");
        assert!(
            pom.contains(&format!("<kafka.version>{KAFKA_VERSION}</kafka.version>")),
            "scripts/kafka/pom.xml and KAFKA_VERSION disagree"
        );
    }
}
