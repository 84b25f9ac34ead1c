//! The event envelope of `proto/tandem/events/v1/events.proto`: building
//! one, reading its ids, and deciding whether it carries a crisis signal.

use std::time::SystemTime;

use prost::Message;
use tandem_proto::events::v1::EventEnvelope;
use tandem_proto::events::v1::event_envelope::Payload;
use tandem_proto::ids::{EventId, OrgId, PatientId};
use tandem_proto::triage::v1::RiskLevel;

use crate::error::{Error, Result};

/// Topic names: one per producing service, keyed by patient id.
pub mod topics {
    /// Events of the careplans service.
    pub const CAREPLANS: &str = "tandem.careplans.v1";
    /// Events of the checkins service.
    pub const CHECKINS: &str = "tandem.checkins.v1";
    /// Events of the triage service.
    pub const TRIAGE: &str = "tandem.triage.v1";
    /// Events of the notifications service.
    pub const NOTIFICATIONS: &str = "tandem.notifications.v1";
    /// Every service topic.
    pub const ALL: [&str; 4] = [CAREPLANS, CHECKINS, TRIAGE, NOTIFICATIONS];
    /// The topics crisis signals travel on (check-ins, then triage's
    /// escalations): sent without lingering, and their consumer lag is watched.
    pub const CRISIS: [&str; 2] = [CHECKINS, TRIAGE];
    /// The suffix of a topic's dead-letter topic.
    pub const DEAD_LETTER_SUFFIX: &str = ".dlq";

    /// The dead-letter topic of `topic`.
    pub fn dead_letter(topic: &str) -> String {
        format!("{topic}{DEAD_LETTER_SUFFIX}")
    }
}

/// Header names every record on the bus carries.
pub mod headers {
    /// W3C trace context of the change that produced the event.
    pub const TRACEPARENT: &str = "traceparent";
    /// W3C trace state.
    pub const TRACESTATE: &str = "tracestate";
    /// The payload's type name.
    pub const EVENT_TYPE: &str = "tandem-event-type";
    /// The event id.
    pub const EVENT_ID: &str = "tandem-event-id";
    /// The organisation the event belongs to: readable even when the
    /// payload is not, so a dead-lettered crisis event can still page the
    /// org's crisis contact.
    pub const ORG_ID: &str = "tandem-org-id";
    /// On a dead letter: why the event failed (the handler's error text).
    pub const DLQ_ERROR: &str = "tandem-dlq-error";
    /// On a dead letter: the topic it came from.
    pub const DLQ_TOPIC: &str = "tandem-dlq-topic";
    /// On a dead letter: the partition it came from.
    pub const DLQ_PARTITION: &str = "tandem-dlq-partition";
    /// On a dead letter: its offset there.
    pub const DLQ_OFFSET: &str = "tandem-dlq-offset";
    /// On a dead letter: the consumer group that gave up on it.
    pub const DLQ_GROUP: &str = "tandem-dlq-group";
    /// On a dead letter: how often the handler was tried.
    pub const DLQ_ATTEMPTS: &str = "tandem-dlq-attempts";
}

/// The fully qualified proto name of a payload, e.g. `tandem.events.v1.PatientEnrolled`.
pub fn event_type_name(payload: &Payload) -> &'static str {
    match payload {
        Payload::PatientEnrolled(_) => "tandem.events.v1.PatientEnrolled",
        Payload::CarePlanChanged(_) => "tandem.events.v1.CarePlanChanged",
        Payload::CareTeamChanged(_) => "tandem.events.v1.CareTeamChanged",
        Payload::SafetyPlanChanged(_) => "tandem.events.v1.SafetyPlanChanged",
        Payload::CheckInSubmitted(_) => "tandem.events.v1.CheckInSubmitted",
        Payload::MeasureMissed(_) => "tandem.events.v1.MeasureMissed",
        Payload::RefusedCrisisSignal(_) => "tandem.events.v1.RefusedCrisisSignal",
        Payload::RiskAssessed(_) => "tandem.events.v1.RiskAssessed",
        Payload::EscalationChanged(_) => "tandem.events.v1.EscalationChanged",
        Payload::NotificationDelivered(_) => "tandem.events.v1.NotificationDelivered",
        Payload::NotificationFailed(_) => "tandem.events.v1.NotificationFailed",
        Payload::CrisisEventDeadLettered(_) => "tandem.events.v1.CrisisEventDeadLettered",
    }
}

/// A new envelope: a UUIDv7 event id, the payload's type name, now as
/// `occurred_at`, and the current span's trace context, so the trace of
/// the change covers everything the event causes.
pub fn new_envelope(producer: &str, org: &OrgId, patient: &PatientId, payload: Payload) -> EventEnvelope {
    EventEnvelope {
        event_id: EventId::new().to_string(),
        event_type: event_type_name(&payload).to_owned(),
        occurred_at: Some(prost_types::Timestamp::from(SystemTime::now())),
        org_id: Some(org.clone().into()),
        patient_id: Some((*patient).into()),
        producer: producer.to_owned(),
        traceparent: tandem_telemetry::current_traceparent().unwrap_or_default(),
        tracestate: String::new(),
        payload: Some(payload),
    }
}

/// The envelope's event id.
pub fn event_id(envelope: &EventEnvelope) -> Result<EventId> {
    envelope.event_id.parse().map_err(|error| Error::InvalidEnvelope(format!("event_id: {error}")))
}

/// The envelope's patient id: the partition key.
pub fn patient_id(envelope: &EventEnvelope) -> Result<PatientId> {
    let wire = envelope
        .patient_id
        .as_ref()
        .ok_or_else(|| Error::InvalidEnvelope("patient_id is missing; every event is keyed by a patient".into()))?;
    PatientId::try_from(wire).map_err(|error| Error::InvalidEnvelope(format!("patient_id: {error}")))
}

/// Checks what the outbox relies on: an event id, a patient id, a type
/// that matches the payload.
pub fn validate(envelope: &EventEnvelope) -> Result<()> {
    event_id(envelope)?;
    patient_id(envelope)?;
    let Some(payload) = envelope.payload.as_ref() else {
        return Err(Error::InvalidEnvelope("payload is missing; set one of the typed events".into()));
    };
    let expected = event_type_name(payload);
    if envelope.event_type != expected {
        return Err(Error::InvalidEnvelope(format!(
            "event_type `{}` does not match the payload {expected}; build envelopes with new_envelope",
            envelope.event_type
        )));
    }
    Ok(())
}

/// The envelope's wire bytes.
pub fn encode(envelope: &EventEnvelope) -> Vec<u8> {
    envelope.encode_to_vec()
}

/// An envelope from wire bytes.
pub fn decode(bytes: &[u8]) -> Result<EventEnvelope> {
    Ok(EventEnvelope::decode(bytes)?)
}

/// Whether an event carries a crisis signal, whose loss would break the one
/// invariant: a check-in with a fired crisis trigger, a high or imminent
/// risk assessment, any escalation change, any failed notification, a
/// crisis event another group dead-lettered.
pub fn is_crisis(envelope: &EventEnvelope) -> bool {
    match envelope.payload.as_ref() {
        Some(Payload::CheckInSubmitted(check_in)) => !check_in.crisis_triggers.is_empty(),
        Some(Payload::RiskAssessed(assessed)) => assessed
            .assessment
            .as_ref()
            .is_some_and(|a| matches!(RiskLevel::try_from(a.level), Ok(RiskLevel::High | RiskLevel::Imminent))),
        Some(
            Payload::EscalationChanged(_)
            | Payload::NotificationFailed(_)
            | Payload::RefusedCrisisSignal(_)
            | Payload::CrisisEventDeadLettered(_),
        ) => true,
        Some(_) => false,
        // No payload we can read: judge by the declared type.
        None => could_be_crisis(&envelope.event_type),
    }
}

/// Whether an event of this type name may carry a crisis signal. Used when
/// the payload cannot be read: an unreadable event that might be a crisis
/// is treated as one, because a false alarm is cheaper than a lost signal.
pub fn could_be_crisis(event_type: &str) -> bool {
    matches!(
        event_type,
        "tandem.events.v1.CheckInSubmitted"
            | "tandem.events.v1.RiskAssessed"
            | "tandem.events.v1.EscalationChanged"
            | "tandem.events.v1.NotificationFailed"
            | "tandem.events.v1.RefusedCrisisSignal"
            | "tandem.events.v1.CrisisEventDeadLettered"
    )
}

#[cfg(test)]
mod tests {
    use tandem_proto::events::v1::{
        CheckInSubmitted, EscalationChanged, MeasureMissed, NotificationFailed, PatientEnrolled, RiskAssessed,
    };
    use tandem_proto::triage::v1::RiskAssessment;

    use super::*;

    fn org() -> OrgId {
        "northside-clinic".parse().unwrap()
    }

    #[test]
    fn new_envelope_fills_ids_type_and_time() {
        let patient = PatientId::new();
        let envelope =
            new_envelope("careplans", &org(), &patient, Payload::PatientEnrolled(PatientEnrolled::default()));
        assert_eq!(envelope.event_type, "tandem.events.v1.PatientEnrolled");
        assert_eq!(event_id(&envelope).unwrap().as_uuid().get_version_num(), 7);
        assert_eq!(patient_id(&envelope).unwrap(), patient);
        assert_eq!(envelope.org_id.as_ref().unwrap().value, "northside-clinic");
        assert_eq!(envelope.producer, "careplans");
        assert!(envelope.occurred_at.is_some());
        validate(&envelope).unwrap();
        let decoded = decode(&encode(&envelope)).unwrap();
        assert_eq!(decoded, envelope);
    }

    #[test]
    fn validate_rejects_missing_patient_and_mismatched_type() {
        let mut envelope =
            new_envelope("checkins", &org(), &PatientId::new(), Payload::MeasureMissed(MeasureMissed::default()));
        envelope.event_type = "tandem.events.v1.PatientEnrolled".into();
        let error = validate(&envelope).unwrap_err().to_string();
        assert!(error.contains("does not match"), "{error}");
        envelope.patient_id = None;
        let error = validate(&envelope).unwrap_err().to_string();
        assert!(error.contains("patient_id is missing"), "{error}");
    }

    #[test]
    fn crisis_events_are_recognised() {
        let patient = PatientId::new();
        let envelope = |payload| new_envelope("test", &org(), &patient, payload);
        let quiet_check_in = envelope(Payload::CheckInSubmitted(CheckInSubmitted::default()));
        assert!(!is_crisis(&quiet_check_in));
        let crisis_check_in = envelope(Payload::CheckInSubmitted(CheckInSubmitted {
            crisis_triggers: vec!["phq9-item9".into()],
            ..Default::default()
        }));
        assert!(is_crisis(&crisis_check_in));
        let risk = |level: RiskLevel| {
            envelope(Payload::RiskAssessed(RiskAssessed {
                assessment: Some(RiskAssessment { level: level as i32, ..Default::default() }),
            }))
        };
        assert!(!is_crisis(&risk(RiskLevel::Moderate)));
        assert!(is_crisis(&risk(RiskLevel::High)));
        assert!(is_crisis(&risk(RiskLevel::Imminent)));
        assert!(is_crisis(&envelope(Payload::EscalationChanged(EscalationChanged::default()))));
        assert!(is_crisis(&envelope(Payload::NotificationFailed(NotificationFailed::default()))));
        assert!(is_crisis(&envelope(Payload::RefusedCrisisSignal(Default::default()))));
        assert!(could_be_crisis("tandem.events.v1.RefusedCrisisSignal"));
        assert!(is_crisis(&envelope(Payload::CrisisEventDeadLettered(Default::default()))));
        assert!(could_be_crisis("tandem.events.v1.CrisisEventDeadLettered"));
        assert!(!is_crisis(&envelope(Payload::PatientEnrolled(PatientEnrolled::default()))));
        let mut unreadable = crisis_check_in.clone();
        unreadable.payload = None;
        assert!(is_crisis(&unreadable), "unknown payload of a crisis type");
    }
}
