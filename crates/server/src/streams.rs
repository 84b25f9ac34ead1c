//! Long-lived server streams (WatchWorklist, StreamInbox) with bounds: at
//! most `per_caller` open streams of one kind per caller and `per_process`
//! in all, each ended when the server shuts down (at the end of the drain,
//! so that SIGTERM never waits on a watch) and when the caller's token
//! expires. A stream's feed wakes on changes and re-reads the store at most
//! every `safety_poll` without one.
//!
//! A service opens a [`StreamLease`] with [`Streams::open`] (refused with
//! RESOURCE_EXHAUSTED over a cap) and feeds the stream from
//! [`StreamLease::spawn`]; the lease is released when the feed ends.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use tandem_auth::{Caller, TokenExpiry};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

/// Items a stream buffers for a slow reader.
const BUFFER: usize = 64;

/// Bounds on long-lived streams (section `streams`; `TANDEM_STREAMS__...`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct StreamSettings {
    /// Open streams of one kind (e.g. WatchWorklist) one caller may hold.
    pub per_caller: u32,
    /// Open streams of every kind and caller one process serves.
    pub per_process: u32,
    /// The longest a stream waits without re-reading the store when no
    /// change woke it (a safety net for missed announcements).
    #[serde(with = "humantime_serde")]
    pub safety_poll: Duration,
}

impl Default for StreamSettings {
    fn default() -> Self {
        Self { per_caller: 5, per_process: 1_000, safety_poll: Duration::from_secs(30) }
    }
}

/// The open streams of one process. Cheap to clone; clones share counts.
#[derive(Debug, Clone)]
pub struct Streams {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    settings: StreamSettings,
    counts: Mutex<Counts>,
    ending: CancellationToken,
}

#[derive(Debug, Default)]
struct Counts {
    total: u32,
    per_caller: HashMap<CallerKey, u32>,
}

/// (kind, org, subject).
type CallerKey = (&'static str, String, String);

impl Default for Streams {
    fn default() -> Self {
        Self::new(StreamSettings::default())
    }
}

impl Streams {
    /// No streams open yet.
    pub fn new(settings: StreamSettings) -> Self {
        Self { inner: Arc::new(Inner { settings, counts: Mutex::default(), ending: CancellationToken::new() }) }
    }

    /// The bounds.
    pub fn settings(&self) -> &StreamSettings {
        &self.inner.settings
    }

    /// How long a feed may wait without a change before re-reading.
    pub fn safety_poll(&self) -> Duration {
        self.inner.settings.safety_poll.max(Duration::from_millis(100))
    }

    /// Streams open now.
    pub fn open_streams(&self) -> u32 {
        self.counts().total
    }

    /// Admits a stream of `kind` (e.g. "WatchWorklist") for the request's
    /// caller, or refuses it: RESOURCE_EXHAUSTED over a cap (saying what to
    /// do), UNAVAILABLE once the server is shutting down.
    pub fn open<T>(&self, kind: &'static str, request: &tonic::Request<T>) -> Result<StreamLease, Status> {
        let caller = Caller::from_request(request)?;
        let expires = TokenExpiry::from_request(request);
        self.admit(kind, caller, expires)
    }

    fn admit(&self, kind: &'static str, caller: &Caller, expires: Option<SystemTime>) -> Result<StreamLease, Status> {
        if self.inner.ending.is_cancelled() {
            return Err(shutting_down());
        }
        let settings = &self.inner.settings;
        let key: CallerKey = (kind, caller.org.to_string(), caller.subject.clone());
        let mut counts = self.counts();
        if counts.total >= settings.per_process {
            tracing::warn!(kind, open = counts.total, "stream refused: the process is at its stream limit");
            return Err(Status::with_error_details(
                Code::ResourceExhausted,
                format!(
                    "this server already serves {} streams, its limit (TANDEM_STREAMS__PER_PROCESS): retry with \
                     back-off, or connect to another replica",
                    settings.per_process
                ),
                ErrorDetails::with_quota_failure_violation("streams.per_process", "open streams in this process"),
            ));
        }
        let mine = counts.per_caller.get(&key).copied().unwrap_or(0);
        if mine >= settings.per_caller {
            tracing::info!(kind, open = mine, "stream refused: the caller is at its stream limit");
            return Err(Status::with_error_details(
                Code::ResourceExhausted,
                format!(
                    "too many open {kind} streams for this caller: at most {} at once (TANDEM_STREAMS__PER_CALLER); \
                     close one (another tab or device) before opening another",
                    settings.per_caller
                ),
                ErrorDetails::with_quota_failure_violation(
                    format!("streams.per_caller:{kind}"),
                    "open streams of this kind for one caller",
                ),
            ));
        }
        counts.total += 1;
        counts.per_caller.insert(key.clone(), mine + 1);
        drop(counts);
        Ok(StreamLease { streams: self.clone(), key, expires })
    }

    /// Ends every open stream (UNAVAILABLE: reconnect) and refuses new
    /// ones: the server is about to stop.
    pub fn end_all(&self) {
        let open = self.open_streams();
        if open > 0 {
            tracing::info!(open, "ending open streams for shutdown");
        }
        self.inner.ending.cancel();
    }

    fn counts(&self) -> std::sync::MutexGuard<'_, Counts> {
        // A panic while holding the lock leaves plain counters behind.
        self.inner.counts.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn release(&self, key: &CallerKey) {
        let mut counts = self.counts();
        counts.total = counts.total.saturating_sub(1);
        if let Some(mine) = counts.per_caller.get_mut(key) {
            *mine = mine.saturating_sub(1);
            if *mine == 0 {
                counts.per_caller.remove(key);
            }
        }
    }
}

fn shutting_down() -> Status {
    Status::unavailable("the server is shutting down: open the stream again to continue on another replica")
}

fn token_expired() -> Status {
    Status::unauthenticated("token expired: obtain a new token and open the stream again")
}

/// One admitted stream; counts against the caps until dropped.
#[derive(Debug)]
pub struct StreamLease {
    streams: Streams,
    key: CallerKey,
    expires: Option<SystemTime>,
}

impl StreamLease {
    /// Completes when the stream must end, with the status to end it with:
    /// the server is shutting down, or the caller's token expired.
    pub async fn ended(&self) -> Status {
        let expiry = async {
            match self.expires {
                Some(at) => {
                    let left = at.duration_since(SystemTime::now()).unwrap_or(Duration::ZERO);
                    // A far-off expiry must not overflow the timer.
                    tokio::time::sleep(left.min(Duration::from_secs(365 * 24 * 3600))).await;
                }
                None => std::future::pending::<()>().await,
            }
        };
        tokio::select! {
            () = self.streams.inner.ending.cancelled() => shutting_down(),
            () = expiry => token_expired(),
        }
    }

    /// Runs `feed` on a task of its own and returns the stream it feeds.
    /// The feed sends items until it returns (the stream then ends) or the
    /// caller hangs up; when the lease ends (shutdown, token expiry) the
    /// feed is stopped and the stream ends with that status. The lease is
    /// released when the task finishes.
    pub fn spawn<T, F, Fut>(self, feed: F) -> ReceiverStream<Result<T, Status>>
    where
        T: Send + 'static,
        F: FnOnce(mpsc::Sender<Result<T, Status>>) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let (sender, receiver) = mpsc::channel(BUFFER);
        let last = sender.clone();
        let feeding = feed(sender);
        tokio::spawn(async move {
            tokio::select! {
                () = feeding => {}
                () = last.closed() => {}
                status = self.ended() => {
                    // A reader that stopped reading gets end-of-stream instead.
                    let _ = tokio::time::timeout(Duration::from_secs(1), last.send(Err(status))).await;
                }
            }
            drop(self);
        });
        ReceiverStream::new(receiver)
    }
}

impl Drop for StreamLease {
    fn drop(&mut self) {
        self.streams.release(&self.key);
    }
}

#[cfg(test)]
mod tests {
    use tokio_stream::StreamExt;

    use super::*;
    use tandem_auth::Role;

    fn caller(subject: &str) -> Caller {
        Caller { org: "north".parse().unwrap(), role: Role::Clinician, subject: subject.to_owned() }
    }

    fn streams(per_caller: u32, per_process: u32) -> Streams {
        Streams::new(StreamSettings { per_caller, per_process, ..StreamSettings::default() })
    }

    #[test]
    fn one_caller_is_capped_per_kind_and_a_closed_stream_frees_its_place() {
        let streams = streams(2, 100);
        let first = streams.admit("Watch", &caller("dr-a"), None).unwrap();
        let _second = streams.admit("Watch", &caller("dr-a"), None).unwrap();
        let refused = streams.admit("Watch", &caller("dr-a"), None).unwrap_err();
        assert_eq!(refused.code(), Code::ResourceExhausted);
        assert!(refused.message().contains("at most 2") && refused.message().contains("close one"), "{refused:?}");
        let details = refused.get_error_details();
        assert_eq!(details.quota_failure().expect("quota failure detail").violations.len(), 1);
        // Another caller, and another kind for the same caller, are not affected.
        let _other = streams.admit("Watch", &caller("dr-b"), None).unwrap();
        let _inbox = streams.admit("Inbox", &caller("dr-a"), None).unwrap();
        assert_eq!(streams.open_streams(), 4);
        drop(first);
        assert_eq!(streams.open_streams(), 3);
        streams.admit("Watch", &caller("dr-a"), None).expect("a closed stream frees its place");
    }

    #[test]
    fn the_process_is_capped_over_all_callers() {
        let streams = streams(5, 3);
        let leases: Vec<_> =
            (0..3).map(|i| streams.admit("Watch", &caller(&format!("dr-{i}")), None).unwrap()).collect();
        let refused = streams.admit("Watch", &caller("dr-9"), None).unwrap_err();
        assert_eq!(refused.code(), Code::ResourceExhausted);
        assert!(refused.message().contains("another replica"), "{refused:?}");
        drop(leases);
        streams.admit("Watch", &caller("dr-9"), None).expect("room again");
    }

    #[tokio::test]
    async fn end_all_ends_open_streams_with_unavailable_and_refuses_new_ones() {
        let streams = streams(5, 100);
        let lease = streams.admit("Watch", &caller("dr-a"), None).unwrap();
        let mut stream = lease.spawn(|sender| async move {
            let _ = sender.send(Ok(1)).await;
            // A watch: it never ends by itself.
            std::future::pending::<()>().await;
        });
        assert_eq!(stream.next().await.unwrap().unwrap(), 1);
        streams.end_all();
        let status = stream.next().await.expect("a final status").unwrap_err();
        assert_eq!(status.code(), Code::Unavailable);
        assert!(stream.next().await.is_none(), "then end of stream");
        let refused = streams.admit("Watch", &caller("dr-a"), None).unwrap_err();
        assert_eq!(refused.code(), Code::Unavailable);
        // The ended feed's task released its lease.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while streams.open_streams() > 0 {
            assert!(tokio::time::Instant::now() < deadline, "lease not released");
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test]
    async fn a_stream_ends_when_its_token_expires() {
        let streams = streams(5, 100);
        let lease = streams.admit("Watch", &caller("dr-a"), Some(SystemTime::now())).unwrap();
        let mut stream = lease.spawn(|_sender: mpsc::Sender<Result<(), Status>>| std::future::pending::<()>());
        let status = stream.next().await.expect("a final status").unwrap_err();
        assert_eq!(status.code(), Code::Unauthenticated);
        assert!(status.message().contains("obtain a new token"));
    }

    #[tokio::test]
    async fn a_hang_up_releases_the_lease() {
        let streams = streams(1, 100);
        let lease = streams.admit("Watch", &caller("dr-a"), None).unwrap();
        let stream = lease.spawn(|_sender: mpsc::Sender<Result<(), Status>>| std::future::pending::<()>());
        drop(stream);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while streams.admit("Watch", &caller("dr-a"), None).is_err() {
            assert!(tokio::time::Instant::now() < deadline, "a hung-up stream still counts");
            tokio::task::yield_now().await;
        }
    }
}
