//! The gRPC surface of the triage service.

use std::pin::Pin;

use tandem_auth::Caller;
use tandem_proto::triage::v1 as pb;
use tandem_proto::triage::v1::triage_service_server::TriageService;
use tandem_server::status::not_yet;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

/// The triage gRPC service.
#[derive(Debug, Clone, Default)]
pub struct Api;

#[tonic::async_trait]
impl TriageService for Api {
    type WatchWorklistStream =
        Pin<Box<dyn Stream<Item = Result<pb::WatchWorklistResponse, Status>> + Send>>;

    async fn list_worklist(
        &self,
        request: Request<pb::ListWorklistRequest>,
    ) -> Result<Response<pb::ListWorklistResponse>, Status> {
        Caller::from_request(&request)?;
        Err(not_yet("ListWorklist"))
    }

    async fn get_escalation(
        &self,
        request: Request<pb::GetEscalationRequest>,
    ) -> Result<Response<pb::GetEscalationResponse>, Status> {
        Caller::from_request(&request)?;
        Err(not_yet("GetEscalation"))
    }

    async fn acknowledge_escalation(
        &self,
        request: Request<pb::AcknowledgeEscalationRequest>,
    ) -> Result<Response<pb::AcknowledgeEscalationResponse>, Status> {
        Caller::from_request(&request)?;
        Err(not_yet("AcknowledgeEscalation"))
    }

    async fn resolve_escalation(
        &self,
        request: Request<pb::ResolveEscalationRequest>,
    ) -> Result<Response<pb::ResolveEscalationResponse>, Status> {
        Caller::from_request(&request)?;
        Err(not_yet("ResolveEscalation"))
    }

    async fn list_risk_assessments(
        &self,
        request: Request<pb::ListRiskAssessmentsRequest>,
    ) -> Result<Response<pb::ListRiskAssessmentsResponse>, Status> {
        Caller::from_request(&request)?;
        Err(not_yet("ListRiskAssessments"))
    }

    async fn watch_worklist(
        &self,
        request: Request<pb::WatchWorklistRequest>,
    ) -> Result<Response<Self::WatchWorklistStream>, Status> {
        Caller::from_request(&request)?;
        Err(not_yet("WatchWorklist"))
    }
}
