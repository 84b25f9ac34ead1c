//! Relay and consumer throughput on the embedded log and on Kafka.
//!
//! ```text
//! cargo run --release -p tandem-events --example bench -- [--events N] [--backend embedded|kafka|both] [--kafka host:port]
//! ```
//! Without `--kafka`, an Apache Kafka broker is started for the Kafka run (see
//! `tandem_events::testing`). Prints one Markdown table row per backend.

use std::sync::Arc;

use tandem_events::bench::{self, BenchConfig};
use tandem_events::testing::KafkaBroker;
use tandem_events::{EmbeddedBus, EmbeddedConfig, EventBus, KafkaBus, KafkaConfig};

struct Args {
    events: usize,
    backend: String,
    kafka: Option<String>,
}

fn parse() -> Result<Args, String> {
    let mut args = Args { events: 20_000, backend: "both".to_owned(), kafka: None };
    let mut words = std::env::args().skip(1);
    while let Some(word) = words.next() {
        let mut value = || words.next().ok_or(format!("{word} needs a value"));
        match word.as_str() {
            "--events" => {
                args.events = value()?.parse().map_err(|_| "--events takes a number".to_owned())?;
            }
            "--backend" => args.backend = value()?,
            "--kafka" => args.kafka = Some(value()?),
            other => {
                return Err(format!(
                    "unknown argument {other}; use --events N, --backend embedded|kafka|both, --kafka host:port"
                ));
            }
        }
    }
    Ok(args)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = parse()?;
    let dir = tempfile::tempdir()?;
    let mut config = BenchConfig::new(dir.path());
    config.events = args.events;
    println!("| backend | events | enqueue events/s | relay events/s | consumer events/s |");
    println!("|---|---|---|---|---|");
    if matches!(args.backend.as_str(), "embedded" | "both") {
        let bus: Arc<dyn EventBus> =
            Arc::new(EmbeddedBus::open(EmbeddedConfig::new(dir.path().join("events.db"))).await?);
        println!("{}", bench::run(bus, &config).await?);
    }
    if matches!(args.backend.as_str(), "kafka" | "both") {
        // The broker, when one is started here, lives until the run ends.
        let (brokers, _broker) = match args.kafka.clone() {
            Some(brokers) => (brokers, None),
            None => {
                let broker = tokio::task::spawn_blocking(KafkaBroker::start).await?;
                (broker.brokers(), Some(broker))
            }
        };
        // The product's default client settings.
        let bus: Arc<dyn EventBus> = Arc::new(KafkaBus::new(KafkaConfig::new(brokers))?);
        println!("{}", bench::run(bus, &config).await?);
    }
    Ok(())
}
