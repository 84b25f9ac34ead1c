//! The gRPC surface of the notifications service.

use std::pin::Pin;

use tandem_auth::Caller;
use tandem_proto::notifications::v1 as pb;
use tandem_proto::notifications::v1::notification_service_server::NotificationService;
use tandem_server::status::not_yet;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

/// The notifications gRPC service.
#[derive(Debug, Clone, Default)]
pub struct Api;

#[tonic::async_trait]
impl NotificationService for Api {
    type StreamInboxStream =
        Pin<Box<dyn Stream<Item = Result<pb::StreamInboxResponse, Status>> + Send>>;

    async fn register_endpoint(
        &self,
        request: Request<pb::RegisterEndpointRequest>,
    ) -> Result<Response<pb::RegisterEndpointResponse>, Status> {
        Caller::from_request(&request)?;
        Err(not_yet("RegisterEndpoint"))
    }

    async fn verify_endpoint(
        &self,
        request: Request<pb::VerifyEndpointRequest>,
    ) -> Result<Response<pb::VerifyEndpointResponse>, Status> {
        Caller::from_request(&request)?;
        Err(not_yet("VerifyEndpoint"))
    }

    async fn list_endpoints(
        &self,
        request: Request<pb::ListEndpointsRequest>,
    ) -> Result<Response<pb::ListEndpointsResponse>, Status> {
        Caller::from_request(&request)?;
        Err(not_yet("ListEndpoints"))
    }

    async fn delete_endpoint(
        &self,
        request: Request<pb::DeleteEndpointRequest>,
    ) -> Result<Response<pb::DeleteEndpointResponse>, Status> {
        Caller::from_request(&request)?;
        Err(not_yet("DeleteEndpoint"))
    }

    async fn stream_inbox(
        &self,
        request: Request<pb::StreamInboxRequest>,
    ) -> Result<Response<Self::StreamInboxStream>, Status> {
        Caller::from_request(&request)?;
        Err(not_yet("StreamInbox"))
    }
}
