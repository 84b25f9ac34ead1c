//! Events this service consumes: careplans' announcements, kept as local
//! projections (patients, care teams, active plans, safety plans).

use async_trait::async_trait;
use sqlx::{Any, Transaction};
use tandem_events::{Handler, HandlerError};
use tandem_proto::events::v1::EventEnvelope;
use tandem_proto::events::v1::event_envelope::Payload;
use tandem_proto::ids::{OrgId, PatientId};

use crate::repo::{RepoError, projection};

/// Applies careplans events to the projections.
#[derive(Debug, Clone, Copy, Default)]
pub struct CarePlansProjection;

impl From<RepoError> for HandlerError {
    fn from(error: RepoError) -> Self {
        match error {
            RepoError::Corrupt(what) => HandlerError::permanent(what),
            other => HandlerError::transient(other),
        }
    }
}

#[async_trait]
impl Handler for CarePlansProjection {
    async fn handle(&self, tx: &mut Transaction<'_, Any>, event: &EventEnvelope) -> Result<(), HandlerError> {
        let patient: PatientId = tandem_events::patient_id(event).map_err(HandlerError::permanent)?;
        match &event.payload {
            Some(Payload::PatientEnrolled(enrolled)) => {
                let org = event
                    .org_id
                    .as_ref()
                    .and_then(|org| org.value.parse::<OrgId>().ok())
                    .ok_or_else(|| HandlerError::permanent("PatientEnrolled without a valid org id"))?;
                projection::patient(tx, &patient, &org, &enrolled.time_zone).await?;
            }
            Some(Payload::CareTeamChanged(changed)) => {
                if let Some(team) = &changed.care_team {
                    projection::care_team(tx, team).await?;
                }
            }
            Some(Payload::CarePlanChanged(changed)) => {
                if let Some(plan) = &changed.care_plan {
                    projection::care_plan(tx, plan).await?;
                }
            }
            Some(Payload::SafetyPlanChanged(changed)) => {
                if let Some(plan) = &changed.safety_plan {
                    projection::safety_plan(tx, plan).await?;
                }
            }
            // Other events on the topic are not this service's concern.
            _ => {}
        }
        Ok(())
    }
}
