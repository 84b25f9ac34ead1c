//! Wake on commit: a writer says which key changed (an org, an inbox), and
//! readers waiting on that key wake instead of polling the database.
//!
//! In this process: [`ChangeFeed::changed`] after the commit returns. Across
//! processes (PostgreSQL only): [`ChangeFeed::announce`] inside the writing
//! transaction sends a `NOTIFY`, which PostgreSQL delivers only if the
//! transaction commits, and [`ChangeFeed::listen`] in every process turns
//! the others' announcements into wake-ups. A listener that lost its
//! connection wakes every reader once it is back, since it may have missed
//! announcements meanwhile. Readers still poll, rarely, as a safety net.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use sqlx::{Any, Transaction};
use tokio::sync::broadcast;

use crate::{Backend, Store, StoreError};

/// What a reader is told.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Change {
    /// This key changed.
    Key(Arc<str>),
    /// Anything may have changed (announcements were missed).
    All,
}

/// Announcements of changed keys, in this process and (on PostgreSQL)
/// between processes sharing the database. Cheap to clone.
#[derive(Debug, Clone)]
pub struct ChangeFeed {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    store: Store,
    channel: String,
    // Tells this process's own NOTIFYs apart from other processes'.
    origin: String,
    sender: broadcast::Sender<Change>,
}

impl ChangeFeed {
    /// A feed named `name` (letters, digits, '_') in the store's schema.
    pub fn new(store: &Store, name: &str) -> Self {
        debug_assert!(name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'));
        let (sender, _) = broadcast::channel(1024);
        Self {
            inner: Arc::new(Inner {
                store: store.clone(),
                channel: format!("tandem_{}_{name}", store.schema()),
                origin: uuid::Uuid::new_v4().simple().to_string(),
                sender,
            }),
        }
    }

    /// Inside the writing transaction: on PostgreSQL, tells the other
    /// processes' listeners that `key` changed once the transaction commits.
    /// Does nothing on SQLite, where one process owns the file.
    pub async fn announce(&self, tx: &mut Transaction<'_, Any>, key: &str) -> Result<(), StoreError> {
        if self.inner.store.backend() != Backend::Postgres {
            return Ok(());
        }
        sqlx::query("SELECT pg_notify($1, $2)")
            .bind(&self.inner.channel)
            .bind(format!("{} {key}", self.inner.origin))
            .execute(&mut **tx)
            .await?;
        Ok(())
    }

    /// After the commit: wakes this process's readers of `key`.
    pub fn changed(&self, key: &str) {
        // No receiver means nobody is waiting: nothing to wake.
        let _ = self.inner.sender.send(Change::Key(key.into()));
    }

    /// Wakes every reader of this process, whatever it waits for.
    pub fn changed_all(&self) {
        let _ = self.inner.sender.send(Change::All);
    }

    /// Starts listening; subscribe before reading, so a change committed
    /// between the read and the wait is not missed.
    pub fn subscribe(&self) -> Changes {
        Changes { receiver: self.inner.sender.subscribe() }
    }

    /// How many readers are subscribed.
    pub fn subscribers(&self) -> usize {
        self.inner.sender.receiver_count()
    }

    /// On PostgreSQL, relays other processes' announcements to this
    /// process's readers until `stop` completes, reconnecting when the
    /// connection drops. Returns at once on SQLite.
    pub async fn listen(self, stop: impl Future<Output = ()> + Send) -> Result<(), StoreError> {
        if self.inner.store.backend() != Backend::Postgres {
            return Ok(());
        }
        tokio::pin!(stop);
        let url = self.inner.store.pool().connect_options().database_url.clone();
        let mut first = true;
        loop {
            let connected = async {
                let mut listener = sqlx::postgres::PgListener::connect(url.as_str()).await?;
                listener.listen(&self.inner.channel).await?;
                Ok::<_, sqlx::Error>(listener)
            };
            let mut listener = tokio::select! {
                () = &mut stop => return Ok(()),
                connected = connected => match connected {
                    Ok(listener) => listener,
                    Err(error) => {
                        tracing::warn!(%error, channel = %self.inner.channel, "cannot LISTEN for changes; readers rely on their safety poll until it works");
                        tokio::select! {
                            () = &mut stop => return Ok(()),
                            () = tokio::time::sleep(Duration::from_secs(5)) => continue,
                        }
                    }
                },
            };
            if !first {
                // Announcements sent while we were not listening are lost.
                self.changed_all();
            }
            first = false;
            loop {
                let received = tokio::select! {
                    () = &mut stop => return Ok(()),
                    received = listener.try_recv() => received,
                };
                match received {
                    Ok(Some(notification)) => {
                        let Some((origin, key)) = notification.payload().split_once(' ') else { continue };
                        if origin != self.inner.origin {
                            self.changed(key);
                        }
                    }
                    // The connection dropped: the next try_recv reconnects,
                    // and anything sent meanwhile is lost.
                    Ok(None) => self.changed_all(),
                    Err(error) => {
                        tracing::warn!(%error, channel = %self.inner.channel, "lost the LISTEN connection; reconnecting");
                        break;
                    }
                }
            }
        }
    }
}

/// One reader's subscription to a [`ChangeFeed`].
#[derive(Debug)]
pub struct Changes {
    receiver: broadcast::Receiver<Change>,
}

impl Changes {
    /// Waits until `key` changed, or announcements were missed (a burst
    /// larger than the buffer, a lost LISTEN connection), then takes every
    /// announcement already queued: the read that follows covers them all.
    /// Never returns once the feed is gone; wait beside a safety poll.
    pub async fn wait_for(&mut self, key: &str) {
        loop {
            match self.receiver.recv().await {
                Ok(Change::Key(changed)) if &*changed == key => break,
                Ok(Change::Key(_)) => {}
                Ok(Change::All) | Err(broadcast::error::RecvError::Lagged(_)) => break,
                Err(broadcast::error::RecvError::Closed) => std::future::pending::<()>().await,
            }
        }
        self.skip_queued();
    }

    /// Takes every announcement already queued, without waiting: call right
    /// before a read that covers them.
    pub fn skip_queued(&mut self) {
        while let Ok(_) | Err(broadcast::error::TryRecvError::Lagged(_)) = self.receiver.try_recv() {}
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::testing::TestDatabase;
    use crate::{Migrations, StoreOptions};

    static NO_MIGRATIONS: Migrations = Migrations::none();
    const BOUND: Duration = Duration::from_secs(30);

    async fn open(database: &TestDatabase) -> Store {
        Store::open(StoreOptions::new(database.url.clone(), "feed_test"), &NO_MIGRATIONS).await.expect("open store")
    }

    async fn in_process_wakes_only_the_changed_key(backend: Backend) {
        let database = TestDatabase::create(backend).await;
        let store = open(&database).await;
        let feed = ChangeFeed::new(&store, "things");
        let mut north = feed.subscribe();
        feed.changed("south");
        feed.changed("north");
        feed.changed("north");
        tokio::time::timeout(BOUND, north.wait_for("north")).await.expect("woken by its key");
        // Both announcements were taken: nothing left to wake on.
        let again = tokio::time::timeout(Duration::from_millis(50), north.wait_for("north")).await;
        assert!(again.is_err(), "queued announcements are taken by one wake-up");
        let mut other = feed.subscribe();
        feed.changed("south");
        assert!(tokio::time::timeout(Duration::from_millis(50), other.wait_for("north")).await.is_err());
        feed.changed_all();
        tokio::time::timeout(BOUND, other.wait_for("north")).await.expect("a missed-announcements wake reaches all");
        store.close().await;
        database.drop_database().await;
    }

    #[tokio::test]
    async fn in_process_wakes_only_the_changed_key_sqlite() {
        in_process_wakes_only_the_changed_key(Backend::Sqlite).await;
    }

    #[tokio::test]
    async fn in_process_wakes_only_the_changed_key_postgres() {
        in_process_wakes_only_the_changed_key(Backend::Postgres).await;
    }

    #[tokio::test]
    async fn a_lagging_reader_is_woken_to_read_again() {
        let database = TestDatabase::create(Backend::Sqlite).await;
        let store = open(&database).await;
        let feed = ChangeFeed::new(&store, "things");
        let mut reader = feed.subscribe();
        for _ in 0..2_000 {
            feed.changed("south");
        }
        tokio::time::timeout(BOUND, reader.wait_for("north")).await.expect("lagging means read again");
        store.close().await;
        database.drop_database().await;
    }

    /// Two feeds on one PostgreSQL database stand for two replicas: an
    /// announcement commits with its transaction and wakes the other
    /// process; a rolled-back one wakes nobody.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn announcements_cross_processes_on_commit_postgres() {
        let database = TestDatabase::create(Backend::Postgres).await;
        let writer_store = open(&database).await;
        let reader_store = open(&database).await;
        let writer = ChangeFeed::new(&writer_store, "things");
        let reader = ChangeFeed::new(&reader_store, "things");
        let stop = stop_signal();
        let listening = tokio::spawn(reader.clone().listen(stop.1));
        let mut changes = reader.subscribe();
        let mut own = writer.subscribe();

        // The listener may not be LISTENing yet: announce until it hears.
        let heard = tokio::time::timeout(BOUND, async {
            loop {
                let mut tx = writer_store.begin_write().await.unwrap();
                writer.announce(&mut tx, "warm-up").await.unwrap();
                tx.commit().await.unwrap();
                if tokio::time::timeout(Duration::from_millis(200), changes.wait_for("warm-up")).await.is_ok() {
                    break;
                }
            }
        })
        .await;
        assert!(heard.is_ok(), "the other process hears a committed announcement");

        let mut tx = writer_store.begin_write().await.unwrap();
        writer.announce(&mut tx, "north").await.unwrap();
        tx.rollback().await.unwrap();
        let mut tx = writer_store.begin_write().await.unwrap();
        writer.announce(&mut tx, "south").await.unwrap();
        tx.commit().await.unwrap();
        // NOTIFYs arrive in commit order: once "south" is heard, a
        // delivered "north" would have been seen first.
        let mut seen = Vec::new();
        tokio::time::timeout(BOUND, async {
            loop {
                match changes.receiver.recv().await.unwrap() {
                    Change::Key(key) if &*key == "south" => break,
                    Change::Key(key) => seen.push(key.to_string()),
                    Change::All => {}
                }
            }
        })
        .await
        .expect("south is heard");
        assert!(!seen.iter().any(|key| key == "north"), "a rolled-back announcement is never delivered: {seen:?}");
        // A process does not hear its own NOTIFYs through the listener
        // (it wakes its readers directly after the commit).
        assert!(own.receiver.try_recv().is_err(), "no echo of the writer's own announcements");

        let _ = stop.0.send(());
        listening.await.unwrap().unwrap();
        writer_store.close().await;
        reader_store.close().await;
        database.drop_database().await;
    }

    fn stop_signal() -> (tokio::sync::oneshot::Sender<()>, impl Future<Output = ()> + Send + 'static) {
        let (sender, receiver) = tokio::sync::oneshot::channel::<()>();
        (sender, async move {
            let _ = receiver.await;
        })
    }
}
