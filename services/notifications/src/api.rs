//! The gRPC surface of the notifications service: endpoints (register,
//! verify, list, delete) and the in-app stream.
//!
//! Who may do what: anyone with a token manages their own endpoints and
//! reads their own inbox; admins and integrations may also register, list
//! and delete endpoints of other subjects of their organisation (such as the
//! on-call crisis contact). Another org's or subject's endpoint answers
//! PermissionDenied, as does an id that does not exist, so a denial reveals
//! nothing. Failures are `tandem_server::ServiceError`s; repository errors
//! convert with `?` (their mapping is in `repo`).

use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rand::Rng;
use sha2::{Digest, Sha256};
use tandem_auth::{Caller, Role};
use tandem_events::Outbox;
use tandem_proto::notifications::v1 as pb;
use tandem_proto::notifications::v1::notification_service_server::NotificationService;
use tandem_server::ServiceError;
use tandem_server::Streams;
use tandem_server::status::invalid_field;
use tandem_store::{Changes, from_unix_micros, unix_micros};
use tokio::sync::{Notify, mpsc};
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use crate::channels::{Channels, not_configured};
use crate::config::NotificationsSettings;
use crate::endpoint::{Channel, parse_registration};
use crate::inbox::{InboxHub, inbox_key};
use crate::message::{self, Purpose};
use crate::repo::{InboxItem, NewDelivery, Repo, StoredEndpoint};
use crate::signing;

/// Endpoints one subject may have; enough for every device and channel.
const MAX_ENDPOINTS_PER_SUBJECT: usize = 20;
/// The kind of stream StreamInbox opens, for the per-caller cap.
const STREAM_INBOX: &str = "StreamInbox";
/// Inbox rows read at a time (the repository's page).
const INBOX_PAGE: usize = crate::repo::INBOX_PAGE as usize;

/// The notifications gRPC service.
#[derive(Debug, Clone)]
pub struct Api {
    repo: Repo,
    outbox: Outbox,
    channels: Arc<Channels>,
    settings: Arc<NotificationsSettings>,
    wake: Arc<Notify>,
    inbox: InboxHub,
    streams: Streams,
}

fn no_access() -> Status {
    ServiceError::denied(
        "the caller may not use this endpoint: it belongs to another subject or does not exist; check the endpoint id",
    )
    .into()
}

fn manages_org(caller: &Caller) -> bool {
    matches!(caller.role, Role::Admin | Role::Integration)
}

/// Whether the caller may act on the endpoint.
fn may_use(caller: &Caller, endpoint: &StoredEndpoint) -> bool {
    endpoint.org == caller.org.as_str() && (endpoint.subject == caller.subject || manages_org(caller))
}

fn timestamp(micros: i64) -> prost_types::Timestamp {
    from_unix_micros(micros).into()
}

fn endpoint_to_pb(endpoint: &StoredEndpoint) -> pb::Endpoint {
    pb::Endpoint {
        endpoint_id: endpoint.id.clone(),
        channel: endpoint.channel.to_pb() as i32,
        address: endpoint.address.clone(),
        verified: endpoint.verified_at.is_some(),
        created_at: Some(timestamp(endpoint.created_at)),
        subject: endpoint.subject.clone(),
        quiet_hours_start: endpoint.quiet_hours_start.clone(),
        quiet_hours_end: endpoint.quiet_hours_end.clone(),
        time_zone: endpoint.time_zone.clone(),
    }
}

fn item_to_pb(item: &InboxItem) -> pb::StreamInboxResponse {
    pb::StreamInboxResponse {
        notification_id: item.id.clone(),
        title: item.title.clone(),
        body: item.body.clone(),
        sent_at: Some(timestamp(item.created_at)),
        kind: item.kind.clone(),
    }
}

/// The stored form of a code: a hash bound to its endpoint, so the table
/// never holds a usable code.
fn code_hash(endpoint_id: &str, code: &str) -> String {
    let digest = Sha256::digest(format!("{endpoint_id}:{code}").as_bytes());
    digest.iter().map(|byte| format!("{byte:02x}")).collect()
}

/// Equality that takes the same time wherever the inputs differ.
fn same(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.bytes().zip(b.bytes()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn endpoint_id(field: &str, text: &str) -> Result<String, Status> {
    uuid::Uuid::parse_str(text.trim())
        .map(|id| id.hyphenated().to_string())
        .map_err(|_| invalid_field(field, "required: the endpoint's id (a UUID) as returned by RegisterEndpoint"))
}

impl Api {
    /// The service over its parts; `streams` bounds its inbox streams.
    pub fn new(
        repo: Repo,
        outbox: Outbox,
        channels: Arc<Channels>,
        settings: Arc<NotificationsSettings>,
        wake: Arc<Notify>,
        inbox: InboxHub,
        streams: Streams,
    ) -> Self {
        Self { repo, outbox, channels, settings, wake, inbox, streams }
    }

    async fn owned_endpoint(&self, caller: &Caller, id: &str) -> Result<StoredEndpoint, Status> {
        let endpoint = self.repo.endpoint(id).await?;
        match endpoint {
            Some(endpoint) if may_use(caller, &endpoint) => Ok(endpoint),
            _ => Err(no_access()),
        }
    }
}

type InboxStream = Pin<Box<dyn Stream<Item = Result<pb::StreamInboxResponse, Status>> + Send>>;

#[tonic::async_trait]
impl NotificationService for Api {
    type StreamInboxStream = InboxStream;

    #[tracing::instrument(name = "notifications.register_endpoint", skip_all)]
    async fn register_endpoint(
        &self,
        request: Request<pb::RegisterEndpointRequest>,
    ) -> Result<Response<pb::RegisterEndpointResponse>, Status> {
        let caller = Caller::from_request(&request)?.clone();
        let parsed = parse_registration(request.get_ref()).map_err(|violations| violations.into_status())?;
        let subject = parsed.subject.clone().unwrap_or_else(|| caller.subject.clone());
        if subject != caller.subject && !manages_org(&caller) {
            return Err(ServiceError::denied(
                "only admins and integrations may register endpoints for another subject; leave subject empty to \
                 register your own",
            )
            .into());
        }
        if !self.channels.available(parsed.channel) {
            return Err(ServiceError::precondition(
                not_configured(parsed.channel).unwrap_or("channel is not available"),
            )
            .into());
        }
        let existing = self.repo.endpoints(caller.org.as_str(), Some(&subject)).await?;
        if existing.len() >= MAX_ENDPOINTS_PER_SUBJECT {
            return Err(ServiceError::precondition(format!(
                "the subject already has {MAX_ENDPOINTS_PER_SUBJECT} endpoints; delete one before registering another"
            ))
            .into());
        }
        let now = unix_micros(SystemTime::now());
        let id = uuid::Uuid::now_v7().to_string();
        let secret = if parsed.channel == Channel::Webhook { signing::new_secret() } else { String::new() };
        let code =
            parsed.channel.needs_verification().then(|| format!("{:06}", rand::rng().random_range(0..1_000_000u32)));
        let ttl = self.settings.verification.code_ttl;
        let endpoint = StoredEndpoint {
            id: id.clone(),
            org: caller.org.to_string(),
            subject: subject.clone(),
            channel: parsed.channel,
            address: parsed.address.clone(),
            secret: secret.clone(),
            // In-app needs no proof: it reaches whoever holds the subject's token.
            verified_at: code.is_none().then_some(now),
            code_hash: code.as_deref().map(|code| code_hash(&id, code)).unwrap_or_default(),
            code_expires_at: code.as_ref().map(|_| unix_micros(SystemTime::now() + ttl)),
            code_attempts: 0,
            quiet_hours_start: parsed.quiet_hours_start.clone(),
            quiet_hours_end: parsed.quiet_hours_end.clone(),
            time_zone: parsed.time_zone.clone(),
            registered_by: caller.subject.clone(),
            created_at: now,
        };
        let mut tx = self.repo.store().begin_write().await.map_err(ServiceError::from)?;
        self.repo.insert_endpoint(&mut tx, &endpoint).await?;
        if let Some(code) = &code {
            let rendered = message::verification(code, ttl.as_secs().div_ceil(60));
            let delivery = NewDelivery {
                purpose: Purpose::Verification,
                dedup_key: format!("verification:{id}"),
                alert: None,
                org: caller.org.to_string(),
                patient: String::new(),
                recipient: subject.clone(),
                endpoint_id: id.clone(),
                channel: parsed.channel,
                message: serde_json::to_string(&rendered).map_err(ServiceError::internal)?,
                not_before: now,
                queued_at: now,
            };
            self.repo.insert_delivery(&mut tx, &delivery).await?;
        }
        tx.commit().await.map_err(ServiceError::from)?;
        self.wake.notify_one();
        tracing::info!(endpoint_id = %id, channel = %parsed.channel, "endpoint registered");
        Ok(Response::new(pb::RegisterEndpointResponse {
            endpoint: Some(endpoint_to_pb(&endpoint)),
            signing_secret: secret,
        }))
    }

    #[tracing::instrument(name = "notifications.verify_endpoint", skip_all)]
    async fn verify_endpoint(
        &self,
        request: Request<pb::VerifyEndpointRequest>,
    ) -> Result<Response<pb::VerifyEndpointResponse>, Status> {
        let caller = Caller::from_request(&request)?.clone();
        let message = request.into_inner();
        let id = endpoint_id("endpoint_id", &message.endpoint_id)?;
        let code = message.code.trim();
        if code.len() != 6 || !code.chars().all(|c| c.is_ascii_digit()) {
            return Err(invalid_field("code", "required: the 6-digit code delivered to the endpoint"));
        }
        let endpoint = self.owned_endpoint(&caller, &id).await?;
        if endpoint.verified_at.is_some() {
            return Ok(Response::new(pb::VerifyEndpointResponse { endpoint: Some(endpoint_to_pb(&endpoint)) }));
        }
        let max_attempts = i64::from(self.settings.verification.max_attempts.max(1));
        if endpoint.code_attempts >= max_attempts {
            return Err(ServiceError::precondition(
                "too many wrong codes for this endpoint: delete it and register it again for a new code",
            )
            .into());
        }
        let now = unix_micros(SystemTime::now());
        if endpoint.code_expires_at.is_none_or(|expires| expires < now) {
            return Err(ServiceError::precondition(
                "the verification code expired: delete the endpoint and register it again for a new code",
            )
            .into());
        }
        if !same(&endpoint.code_hash, &code_hash(&id, code)) {
            self.repo.count_wrong_code(&id).await?;
            let left = max_attempts - endpoint.code_attempts - 1;
            return Err(invalid_field(
                "code",
                format!("does not match the code sent to the endpoint; {left} attempts left"),
            ));
        }
        self.repo.mark_verified(&id, now).await?;
        tracing::info!(endpoint_id = %id, "endpoint verified");
        let verified = StoredEndpoint { verified_at: Some(now), ..endpoint };
        Ok(Response::new(pb::VerifyEndpointResponse { endpoint: Some(endpoint_to_pb(&verified)) }))
    }

    #[tracing::instrument(name = "notifications.list_endpoints", skip_all)]
    async fn list_endpoints(
        &self,
        request: Request<pb::ListEndpointsRequest>,
    ) -> Result<Response<pb::ListEndpointsResponse>, Status> {
        let caller = Caller::from_request(&request)?.clone();
        let subject = (!manages_org(&caller)).then_some(caller.subject.as_str());
        let endpoints = self.repo.endpoints(caller.org.as_str(), subject).await?;
        Ok(Response::new(pb::ListEndpointsResponse { endpoints: endpoints.iter().map(endpoint_to_pb).collect() }))
    }

    #[tracing::instrument(name = "notifications.delete_endpoint", skip_all)]
    async fn delete_endpoint(
        &self,
        request: Request<pb::DeleteEndpointRequest>,
    ) -> Result<Response<pb::DeleteEndpointResponse>, Status> {
        let caller = Caller::from_request(&request)?.clone();
        let id = endpoint_id("endpoint_id", &request.get_ref().endpoint_id)?;
        self.owned_endpoint(&caller, &id).await?;
        self.repo.delete_endpoint(&self.outbox, &id, unix_micros(SystemTime::now())).await?;
        tracing::info!(endpoint_id = %id, "endpoint deleted");
        Ok(Response::new(pb::DeleteEndpointResponse {}))
    }

    #[tracing::instrument(name = "notifications.stream_inbox", skip_all)]
    async fn stream_inbox(
        &self,
        request: Request<pb::StreamInboxRequest>,
    ) -> Result<Response<Self::StreamInboxStream>, Status> {
        let caller = Caller::from_request(&request)?.clone();
        let lease = self.streams.open(STREAM_INBOX, &request)?;
        let org = caller.org.to_string();
        let subject = caller.subject.clone();
        // Listen before reading, so a row committed in between is announced.
        let changes = self.inbox.subscribe();
        let head = self.repo.inbox_head(&org, &subject).await?;
        let repo = self.repo.clone();
        let poll = self.streams.safety_poll();
        let stream = lease.spawn(move |sender| stream_inbox(repo, org, subject, head, changes, poll, sender));
        Ok(Response::new(Box::pin(stream)))
    }
}

/// Feeds one StreamInbox call: first what no stream has shown, then new rows
/// as they are announced (or found by the safety poll), until the caller
/// hangs up or the stream is ended (shutdown, token expiry).
async fn stream_inbox(
    repo: Repo,
    org: String,
    subject: String,
    head: i64,
    mut changes: Changes,
    poll: Duration,
    sender: mpsc::Sender<Result<pb::StreamInboxResponse, Status>>,
) {
    let key = inbox_key(&org, &subject);
    let mut cursor = head;
    loop {
        let items = match repo.inbox_items(&org, &subject, cursor, Some(cursor)).await {
            Ok(items) => items,
            Err(error) => {
                let _ = sender.send(Err(error.into())).await;
                return;
            }
        };
        for item in &items {
            if sender.send(Ok(item_to_pb(item))).await.is_err() {
                return;
            }
            cursor = cursor.max(item.seq);
            if let Err(error) = repo.mark_streamed(item.seq, unix_micros(SystemTime::now())).await {
                tracing::debug!(%error, "cannot mark an inbox item shown; it may be shown again");
            }
        }
        if items.len() >= INBOX_PAGE {
            // A long backlog: keep going without waiting.
            continue;
        }
        // Wait for an announcement about this inbox, or the safety poll.
        tokio::select! {
            () = changes.wait_for(&key) => {}
            () = tokio::time::sleep(poll) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_stored_as_hashes_bound_to_their_endpoint() {
        let hash = code_hash("e1", "123456");
        assert_eq!(hash.len(), 64);
        assert!(!hash.contains("123456"));
        assert_ne!(hash, code_hash("e2", "123456"));
        assert!(same(&hash, &code_hash("e1", "123456")));
        assert!(!same(&hash, &code_hash("e1", "123457")));
        assert!(!same("abc", "abcd"));
    }
}
