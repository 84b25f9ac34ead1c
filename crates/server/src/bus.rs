//! The event bus a server process runs on, from its settings.

use std::sync::Arc;

use tandem_events::{BusConfig, EventBus, TopicSpec};

use crate::Settings;

/// Why the bus could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum BusError {
    /// `TANDEM_EVENTS` does not name a bus.
    #[error("TANDEM_EVENTS={value} is not a bus: {source}; use `embedded` or kafka://host:port,...")]
    Config {
        /// The configured value.
        value: String,
        /// Why it does not parse.
        source: tandem_events::Error,
    },
    /// Connecting or creating topics failed.
    #[error("cannot open the event bus ({value}): {source}")]
    Open {
        /// The configured value.
        value: String,
        /// The bus error.
        source: tandem_events::Error,
    },
}

/// Opens the configured event bus (an embedded log in the data dir, or
/// Kafka) and creates the service topics that do not exist yet.
pub async fn connect(settings: &Settings) -> Result<Arc<dyn EventBus>, BusError> {
    let value = settings.events.clone();
    let config: BusConfig = value.parse().map_err(|source| BusError::Config { value: value.clone(), source })?;
    if matches!(config, BusConfig::Embedded { path: None }) {
        // The embedded log lives in the data dir; make sure it exists.
        std::fs::create_dir_all(&settings.data_dir).map_err(|error| BusError::Open {
            value: value.clone(),
            source: tandem_events::Error::BadConfig(format!(
                "cannot create data dir {}: {error}",
                settings.data_dir.display()
            )),
        })?;
    }
    let bus = tandem_events::connect(&config, &settings.data_dir)
        .await
        .map_err(|source| BusError::Open { value: value.clone(), source })?;
    bus.ensure_topics(&TopicSpec::standard(bus.default_partitions()))
        .await
        .map_err(|source| BusError::Open { value, source })?;
    Ok(bus)
}
