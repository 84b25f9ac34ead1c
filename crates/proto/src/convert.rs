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

    #[test]
    fn the_safety_response_round_trips_through_any() {
        assert_eq!(SafetyResponse::type_url(), "type.googleapis.com/tandem.checkins.v1.SafetyResponse");
        let response = SafetyResponse { triggers: vec!["phq9-item9".into()], ..Default::default() };
        let any = prost_types::Any::from_msg(&response).expect("encodes");
        assert_eq!(any.to_msg::<SafetyResponse>().expect("decodes"), response);
    }
}
