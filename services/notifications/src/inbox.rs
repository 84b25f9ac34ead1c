//! Live in-app streams: the worker announces, after its commit, which inbox
//! changed; each `StreamInbox` call wakes and reads its subject's new rows
//! from the store. The announcement carries no content, so a lagging stream
//! loses nothing: it reads the store again. On PostgreSQL the announcement
//! also reaches the streams of other replicas (NOTIFY after the commit);
//! streams still poll, rarely, as a safety net.

use tandem_store::{Backend, ChangeFeed, Changes, Store};

/// Fan-out of inbox changes to the streams of this process and, on
/// PostgreSQL, of the other replicas.
#[derive(Debug, Clone)]
pub struct InboxHub {
    feed: ChangeFeed,
    store: Store,
}

/// The feed key of one subject's inbox.
pub fn inbox_key(org: &str, subject: &str) -> String {
    format!("{org}\n{subject}")
}

impl InboxHub {
    /// A hub for the inboxes in `store`.
    pub fn new(store: &Store) -> Self {
        Self { feed: ChangeFeed::new(store, "inbox"), store: store.clone() }
    }

    /// Announces that an inbox got a row (call after the commit).
    pub fn changed(&self, org: &str, subject: &str) {
        let key = inbox_key(org, subject);
        self.feed.changed(&key);
        if self.store.backend() == Backend::Postgres {
            // Other replicas' streams: a NOTIFY of its own, sent after the
            // commit; if it is lost, their safety poll finds the row.
            let feed = self.feed.clone();
            let store = self.store.clone();
            tokio::spawn(async move {
                let sent = async {
                    let mut tx = store.begin_write().await?;
                    feed.announce(&mut tx, &key).await?;
                    tx.commit().await?;
                    Ok::<_, tandem_store::StoreError>(())
                };
                if let Err(error) = sent.await {
                    tracing::debug!(%error, "cannot announce an inbox change to other replicas; their poll finds it");
                }
            });
        }
    }

    /// Listens for announcements; subscribe before reading.
    pub fn subscribe(&self) -> Changes {
        self.feed.subscribe()
    }

    /// The feed (to run its cross-process listener).
    pub fn feed(&self) -> &ChangeFeed {
        &self.feed
    }
}
