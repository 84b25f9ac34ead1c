//! Conversions between the wire id messages and the typed ids.

use crate::common::v1 as pb;
use crate::ids::{CarePlanId, CheckInId, EscalationId, IdError, OrgId, PatientId};

macro_rules! id_conversions {
    ($typed:ty, $wire:ty) => {
        impl From<$typed> for $wire {
            fn from(id: $typed) -> Self {
                Self { value: id.to_string() }
            }
        }

        impl TryFrom<&$wire> for $typed {
            type Error = IdError;

            fn try_from(wire: &$wire) -> Result<Self, Self::Error> {
                wire.value.parse()
            }
        }

        /// An absent id message reads as an empty id.
        impl TryFrom<Option<&$wire>> for $typed {
            type Error = IdError;

            fn try_from(wire: Option<&$wire>) -> Result<Self, Self::Error> {
                wire.map_or("", |wire| wire.value.as_str()).parse()
            }
        }
    };
}

id_conversions!(PatientId, pb::PatientId);
id_conversions!(CarePlanId, pb::CarePlanId);
id_conversions!(CheckInId, pb::CheckInId);
id_conversions!(EscalationId, pb::EscalationId);
id_conversions!(OrgId, pb::OrgId);

/// The safety response is also sent as a `google.protobuf.Any` in the
/// details of a refused check-in's status, so it needs its type name.
impl prost::Name for crate::checkins::v1::SafetyResponse {
    const NAME: &'static str = "SafetyResponse";
    const PACKAGE: &'static str = "tandem.checkins.v1";

    fn type_url() -> String {
        format!("type.googleapis.com/{}", Self::full_name())
    }
}

#[cfg(test)]
mod tests {
    use prost::Name;

    use crate::checkins::v1::SafetyResponse;
    use crate::common::v1 as pb;
    use crate::ids::{EscalationId, IdError, PatientId};

    #[test]
    fn an_id_message_converts_to_its_typed_id_and_back() {
        let id = EscalationId::new();
        let wire = pb::EscalationId::from(id);
        assert_eq!(EscalationId::try_from(&wire), Ok(id));
        assert_eq!(EscalationId::try_from(Some(&wire)), Ok(id));
        assert_eq!(PatientId::try_from(None::<&pb::PatientId>), Err(IdError::Empty { kind: "patient id" }));
        let bad = pb::PatientId { value: "mrn-1".to_owned() };
        assert_eq!(PatientId::try_from(Some(&bad)), Err(IdError::NotUuid { kind: "patient id", len: 5 }));
    }

    #[test]
    fn the_safety_response_round_trips_through_any() {
        assert_eq!(SafetyResponse::type_url(), "type.googleapis.com/tandem.checkins.v1.SafetyResponse");
        let response = SafetyResponse { triggers: vec!["phq9-item9".into()], ..Default::default() };
        let any = prost_types::Any::from_msg(&response).expect("encodes");
        assert_eq!(any.to_msg::<SafetyResponse>().expect("decodes"), response);
    }
}
