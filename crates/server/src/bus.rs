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

/// The name of this process for Kafka static membership: the configured
/// instance id, else the host name (a Kubernetes pod's name, stable across
/// restarts of its container).
pub fn instance_id(settings: &Settings) -> Option<String> {
    if !settings.instance_id.trim().is_empty() {
        return Some(settings.instance_id.trim().to_owned());
    }
    let from_env = std::env::var("HOSTNAME").ok();
    let from_kernel = || std::fs::read_to_string("/proc/sys/kernel/hostname").ok();
    from_env.or_else(from_kernel).map(|name| name.trim().to_owned()).filter(|name| !name.is_empty())
}

/// Opens the configured event bus (an embedded log in the data dir, or
/// Kafka) and creates the service topics that do not exist yet.
pub async fn connect(settings: &Settings) -> Result<Arc<dyn EventBus>, BusError> {
    let value = settings.events.clone();
    let mut config: BusConfig = value.parse().map_err(|source| BusError::Config { value: value.clone(), source })?;
    if let BusConfig::Kafka(kafka) = &mut config
        && kafka.instance_id.is_none()
    {
        kafka.instance_id = instance_id(settings);
    }
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
