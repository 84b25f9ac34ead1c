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
