//! Runs the test broker (`tandem_events::testing::KafkaBroker`: Apache
//! Kafka, single-node KRaft, on free ports) until stdin closes, for
//! benchmarks that need a broker of their own, e.g. `tandem bench alerts`.
//!
//! ```text
//! cargo run --release -p tandem-events --features testing --example kafka_broker
//! ```
//! Prints `brokers=127.0.0.1:PORT` once the broker answers metadata.

use std::io::Read;

fn main() {
    let broker = tandem_events::testing::KafkaBroker::start();
    println!("brokers={}", broker.brokers());
    eprintln!("kafka broker ready in {} ms; close stdin (Ctrl-D) to stop it", broker.started_in().as_millis());
    // The broker is killed when it is dropped, whichever way this ends.
    let _ = std::io::stdin().read_to_end(&mut Vec::new());
    drop(broker);
}
