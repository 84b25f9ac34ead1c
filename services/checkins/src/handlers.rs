//! Events this service consumes: careplans' announcements, kept as local
//! projections (patients, care teams, active plans, safety plans).

use async_trait::async_trait;
use sqlx::{Any, Transaction};
use tandem_events::{Handler, HandlerError};
use tandem_proto::events::v1::EventEnvelope;

use crate::repo::RepoError;

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
        tandem_projections::apply(tx, tandem_projections::Keep::ALL, event).await?;
        Ok(())
    }
}
