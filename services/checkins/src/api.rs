//! The gRPC surface of the checkins service.

use tandem_auth::Caller;
use tandem_proto::checkins::v1 as pb;
use tandem_proto::checkins::v1::check_in_service_server::CheckInService;
use tandem_server::status::not_yet;
use tonic::{Request, Response, Status};

/// The checkins gRPC service.
#[derive(Debug, Clone, Default)]
pub struct Api;

#[tonic::async_trait]
impl CheckInService for Api {
    async fn submit_check_in(
        &self,
        request: Request<pb::SubmitCheckInRequest>,
    ) -> Result<Response<pb::SubmitCheckInResponse>, Status> {
        Caller::from_request(&request)?;
        Err(not_yet("SubmitCheckIn"))
    }

    async fn get_check_in(
        &self,
        request: Request<pb::GetCheckInRequest>,
    ) -> Result<Response<pb::GetCheckInResponse>, Status> {
        Caller::from_request(&request)?;
        Err(not_yet("GetCheckIn"))
    }

    async fn list_check_ins(
        &self,
        request: Request<pb::ListCheckInsRequest>,
    ) -> Result<Response<pb::ListCheckInsResponse>, Status> {
        Caller::from_request(&request)?;
        Err(not_yet("ListCheckIns"))
    }

    async fn get_due_items(
        &self,
        request: Request<pb::GetDueItemsRequest>,
    ) -> Result<Response<pb::GetDueItemsResponse>, Status> {
        Caller::from_request(&request)?;
        Err(not_yet("GetDueItems"))
    }
}
