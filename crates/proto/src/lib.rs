//! Tandem's contracts: the generated gRPC services and messages of `proto/`,
//! typed identifiers, and the file descriptor set for server reflection.

pub mod convert;
pub mod ids;
pub mod render;
pub mod typed;

/// The encoded `FileDescriptorSet` of every Tandem proto, for gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/tandem_descriptor.bin"));

/// Shared types: ids, actors, paging, codings.
pub mod common {
    /// Version 1.
    pub mod v1 {
        #![allow(missing_docs, clippy::all)]
        include!(concat!(env!("OUT_DIR"), "/tandem.common.v1.rs"));
    }
}

/// Care plans, care teams, safety plans and patients.
pub mod careplans {
    /// Version 1.
    pub mod v1 {
        #![allow(missing_docs, clippy::all)]
        include!(concat!(env!("OUT_DIR"), "/tandem.careplans.v1.rs"));
    }
}

/// Patient check-ins.
pub mod checkins {
    /// Version 1.
    pub mod v1 {
        #![allow(missing_docs, clippy::all)]
        include!(concat!(env!("OUT_DIR"), "/tandem.checkins.v1.rs"));
    }
}

/// Risk triage and escalations.
pub mod triage {
    /// Version 1.
    pub mod v1 {
        #![allow(missing_docs, clippy::all)]
        include!(concat!(env!("OUT_DIR"), "/tandem.triage.v1.rs"));
    }
}

/// Notifications.
pub mod notifications {
    /// Version 1.
    pub mod v1 {
        #![allow(missing_docs, clippy::all)]
        include!(concat!(env!("OUT_DIR"), "/tandem.notifications.v1.rs"));
    }
}

/// Events between services.
pub mod events {
    /// Version 1.
    pub mod v1 {
        #![allow(missing_docs, clippy::all)]
        include!(concat!(env!("OUT_DIR"), "/tandem.events.v1.rs"));
    }
}

/// Fully qualified names of the four services, as health and reflection know them.
pub const SERVICE_NAMES: [&str; 4] = [
    "tandem.careplans.v1.CarePlanService",
    "tandem.checkins.v1.CheckInService",
    "tandem.triage.v1.TriageService",
    "tandem.notifications.v1.NotificationService",
];
