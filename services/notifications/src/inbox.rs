//! Live in-app streams: the worker announces, after its commit, which inbox
//! changed; each `StreamInbox` call wakes and reads its subject's new rows
//! from the store. The announcement carries no content, so a lagging stream
//! loses nothing: it reads the store again (and polls it, for rows written
//! by other replicas).

use tokio::sync::broadcast;

/// Which inbox changed: (org, subject).
pub type InboxChanged = (String, String);

/// Fan-out of inbox changes to the streams of this process.
#[derive(Debug, Clone)]
pub struct InboxHub {
    sender: broadcast::Sender<InboxChanged>,
}

impl Default for InboxHub {
    fn default() -> Self {
        Self::new()
    }
}

impl InboxHub {
    /// A hub with room for a burst of announcements.
    pub fn new() -> Self {
        let (sender, _) = broadcast::channel(1024);
        Self { sender }
    }

    /// Announces that an inbox got a row (call after the commit).
    pub fn changed(&self, org: &str, subject: &str) {
        // No receiver means no open stream: nothing to wake.
        let _ = self.sender.send((org.to_owned(), subject.to_owned()));
    }

    /// Listens for announcements.
    pub fn subscribe(&self) -> broadcast::Receiver<InboxChanged> {
        self.sender.subscribe()
    }
}
