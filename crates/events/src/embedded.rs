//! The embedded backend: a durable, partitioned log in one SQLite file,
//! with the delivery contract of Kafka.
//!
//! - Topics have a fixed partition count; a record's partition is Kafka's
//!   murmur2 of its key, so per-key order holds as on Kafka.
//! - A publish is one SQLite transaction; its commit is the delivery report.
//! - Consumer groups live in this process: the members of a group split the
//!   partitions of its topics between them. Like Kafka's eager rebalance, a
//!   member gives a partition up only between batches (or when it is
//!   dropped), and the next owner resumes after the group's last stored
//!   offset. Stored offsets are committed to the file by a poll at most
//!   once per [`OFFSET_COMMIT_INTERVAL`] (as Kafka's auto-commit does every
//!   few seconds) and on close; a process that dies loses at most the
//!   stored but uncommitted offsets, and those records are delivered again
//!   (inboxes absorb them).
//! - Appends and membership changes wake waiting members through a
//!   `tokio::sync::watch`; a slow safety poll covers anything missed. A
//!   woken member reads only the partitions whose end moved past its
//!   position (each partition's end is kept in memory).
//! - Writers (appends, offset commits) take turns on an async lock, never
//!   in SQLite's busy handler, which sleeps between tries. Offsets are
//!   committed without syncing the file (their connection runs
//!   `synchronous = NORMAL`): an OS crash may lose the last ones, and those
//!   records are delivered again, as when a process dies; the next append
//!   syncs them with its own records. Committing at an interval, rather
//!   than on the poll right after a record was handled, keeps offset
//!   commits from taking the write turn just when the handler's own events
//!   are being appended.
//!
//! One process owns a log file. Every `EmbeddedBus` opened on the same path
//! in a process shares one instance, so group membership is never split.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Row, SqlitePool};
use tokio::sync::watch;

use crate::bus::{BusKind, Delivered, EventBus, GroupProbe, PartitionLag, Record, Subscription, TopicSpec};
use crate::error::{Error, Result};
use crate::partitioner::partition_for_key;

/// How often a member commits its group's stored offsets to the file while
/// it polls. Between commits they live in memory (every member of the
/// process sees them); a process that dies redelivers what it handled since
/// the last commit, and inboxes absorb the copies.
pub const OFFSET_COMMIT_INTERVAL: Duration = Duration::from_secs(1);

/// How to open an embedded log.
#[derive(Debug, Clone, PartialEq)]
pub struct EmbeddedConfig {
    /// The SQLite file; created if missing.
    pub path: PathBuf,
    /// Partitions of service topics (see [`EventBus::default_partitions`]).
    pub default_partitions: i32,
    /// How often an idle member looks for records even without a wake-up.
    pub safety_poll: Duration,
}

impl EmbeddedConfig {
    /// Defaults for a log at `path`: 4 partitions per topic, a 2 s safety poll.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self { path: path.into(), default_partitions: 4, safety_poll: Duration::from_secs(2) }
    }
}

/// The embedded event log. Cheap to clone; clones share one log.
#[derive(Debug, Clone)]
pub struct EmbeddedBus {
    inner: Arc<Inner>,
}

type TopicPartition = (String, i32);

#[derive(Debug)]
struct Inner {
    config: EmbeddedConfig,
    pool: SqlitePool,
    // One connection, synchronous = NORMAL: offset commits need no sync.
    offsets_pool: SqlitePool,
    topics: Mutex<HashMap<String, i32>>,
    // The next offset of each partition that has records; advanced after
    // each append commits, before members are woken.
    ends: Mutex<HashMap<TopicPartition, i64>>,
    // Writers take turns here: offsets are assigned without contention, and
    // nobody waits in SQLite's busy handler.
    write: tokio::sync::Mutex<()>,
    // Bumped on every append and membership change; members wait on it.
    changed: watch::Sender<u64>,
    groups: Mutex<HashMap<String, Group>>,
    next_member: AtomicU64,
}

#[derive(Debug, Default)]
struct Group {
    // Member id -> the topics it subscribed to.
    members: BTreeMap<u64, Vec<String>>,
    // Who holds each partition now.
    owners: HashMap<TopicPartition, u64>,
    // The next offset to consume, as stored by members; kept in memory and
    // committed to the file by polls, rebalances and close.
    stored: HashMap<TopicPartition, i64>,
    dirty: HashSet<TopicPartition>,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS topics (
    name TEXT PRIMARY KEY NOT NULL,
    partitions INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS log (
    topic TEXT NOT NULL,
    partition_no INTEGER NOT NULL,
    log_offset INTEGER NOT NULL,
    record_key TEXT,
    payload BLOB NOT NULL,
    headers TEXT NOT NULL,
    appended_at INTEGER NOT NULL,
    PRIMARY KEY (topic, partition_no, log_offset)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS group_offsets (
    group_id TEXT NOT NULL,
    topic TEXT NOT NULL,
    partition_no INTEGER NOT NULL,
    next_offset INTEGER NOT NULL,
    committed_at INTEGER NOT NULL,
    PRIMARY KEY (group_id, topic, partition_no)
) WITHOUT ROWID;
";

fn registry() -> &'static Mutex<HashMap<PathBuf, Weak<Inner>>> {
    static OPEN: OnceLock<Mutex<HashMap<PathBuf, Weak<Inner>>>> = OnceLock::new();
    OPEN.get_or_init(Default::default)
}

/// Locks a std mutex, recovering the data if a holder panicked: every
/// critical section here leaves the maps consistent between statements.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl EmbeddedBus {
    /// Opens (or creates) the log at `config.path`; within one process the
    /// same path always gives the same log.
    pub async fn open(config: EmbeddedConfig) -> Result<Self> {
        let key = std::path::absolute(&config.path).unwrap_or_else(|_| config.path.clone());
        if let Some(inner) = lock(registry()).get(&key).and_then(Weak::upgrade) {
            return Ok(Self { inner });
        }
        let open_error = |source| Error::EmbeddedOpen { path: config.path.display().to_string(), source };
        let options = SqliteConnectOptions::new()
            .filename(&config.path)
            .create_if_missing(true)
            // WAL with synchronous=FULL: an append is on disk when its
            // commit returns, so an OS crash or power loss cannot lose an
            // event whose outbox row was already marked sent.
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(Duration::from_secs(10));
        // Connections to a file in this process cannot go away while idle:
        // no check (a round trip to the connection's thread) on checkout.
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .test_before_acquire(false)
            .connect_with(options.clone())
            .await
            .map_err(open_error)?;
        sqlx::raw_sql(SCHEMA).execute(&pool).await.map_err(open_error)?;
        let offsets_pool = SqlitePoolOptions::new()
            .max_connections(1)
            .test_before_acquire(false)
            .connect_with(options.synchronous(SqliteSynchronous::Normal))
            .await
            .map_err(open_error)?;
        let ends: HashMap<TopicPartition, i64> =
            sqlx::query("SELECT topic, partition_no, MAX(log_offset) + 1 FROM log GROUP BY topic, partition_no")
                .fetch_all(&pool)
                .await?
                .into_iter()
                .map(|row| ((row.get::<String, _>(0), row.get::<i32, _>(1)), row.get::<i64, _>(2)))
                .collect();
        let topics: HashMap<String, i32> = sqlx::query("SELECT name, partitions FROM topics")
            .fetch_all(&pool)
            .await?
            .into_iter()
            .map(|row| (row.get::<String, _>(0), row.get::<i32, _>(1)))
            .collect();
        let inner = Arc::new(Inner {
            config,
            pool,
            offsets_pool,
            topics: Mutex::new(topics),
            ends: Mutex::new(ends),
            write: tokio::sync::Mutex::new(()),
            changed: watch::Sender::new(0),
            groups: Mutex::new(HashMap::new()),
            next_member: AtomicU64::new(1),
        });
        let mut open = lock(registry());
        // Another task may have opened the same file meanwhile: use theirs.
        if let Some(existing) = open.get(&key).and_then(Weak::upgrade) {
            return Ok(Self { inner: existing });
        }
        open.retain(|_, weak| weak.strong_count() > 0);
        open.insert(key, Arc::downgrade(&inner));
        Ok(Self { inner })
    }

    /// The log's file.
    pub fn path(&self) -> &std::path::Path {
        &self.inner.config.path
    }

    /// Records in the log, over all topics (for tests and diagnostics).
    pub async fn len(&self) -> Result<u64> {
        let count: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM log").fetch_one(&self.inner.pool).await?;
        Ok(u64::try_from(count).unwrap_or_default())
    }

    /// Whether the log holds no record.
    pub async fn is_empty(&self) -> Result<bool> {
        Ok(self.len().await? == 0)
    }

    fn partitions_of(&self, topic: &str) -> Option<i32> {
        lock(&self.inner.topics).get(topic).copied()
    }

    async fn append(&self, records: &[Record]) -> Vec<Result<()>> {
        let mut results: Vec<Result<()>> = records
            .iter()
            .map(|record| match self.partitions_of(&record.topic) {
                Some(_) => Ok(()),
                None => Err(Error::UnknownTopic(record.topic.clone())),
            })
            .collect();
        if results.iter().all(Result::is_err) {
            return results;
        }
        let outcome = self.append_valid(records, &results).await;
        match outcome {
            Ok(()) => {
                self.inner.changed.send_modify(|version| *version += 1);
            }
            Err(error) => {
                let reason = error.to_string();
                for result in results.iter_mut().filter(|result| result.is_ok()) {
                    *result = Err(Error::NotDelivered(reason.clone()));
                }
            }
        }
        results
    }

    async fn append_valid(&self, records: &[Record], valid: &[Result<()>]) -> Result<()> {
        let _turn = self.inner.write.lock().await;
        let mut tx = self.inner.pool.begin_with("BEGIN IMMEDIATE").await?;
        let mut next: HashMap<TopicPartition, i64> = HashMap::new();
        let now = tandem_store::unix_micros(SystemTime::now());
        for (record, ok) in records.iter().zip(valid) {
            let Some(partitions) = ok.as_ref().ok().and(self.partitions_of(&record.topic)) else {
                continue;
            };
            let partition = partition_for_key(record.key.as_bytes(), partitions);
            let tp = (record.topic.clone(), partition);
            let offset = match next.get(&tp) {
                Some(offset) => *offset,
                None => {
                    sqlx::query_scalar::<_, i64>(
                        "SELECT COALESCE(MAX(log_offset) + 1, 0) FROM log WHERE topic = $1 AND partition_no = $2",
                    )
                    .bind(&record.topic)
                    .bind(partition)
                    .fetch_one(&mut *tx)
                    .await?
                }
            };
            let headers = encode_headers(&record.headers);
            sqlx::query(
                "INSERT INTO log (topic, partition_no, log_offset, record_key, payload, headers, appended_at) VALUES ($1, $2, $3, $4, $5, $6, $7)",
            )
            .bind(&record.topic)
            .bind(partition)
            .bind(offset)
            .bind(&record.key)
            .bind(&record.value)
            .bind(headers)
            .bind(now)
            .execute(&mut *tx)
            .await?;
            next.insert(tp, offset + 1);
        }
        tx.commit().await?;
        let mut ends = lock(&self.inner.ends);
        for (tp, end) in next {
            let known = ends.entry(tp).or_insert(end);
            *known = (*known).max(end);
        }
        drop(ends);
        Ok(())
    }

    fn join(&self, group: &str, topics: &[String]) -> u64 {
        let member = self.inner.next_member.fetch_add(1, Ordering::Relaxed);
        lock(&self.inner.groups).entry(group.to_owned()).or_default().members.insert(member, topics.to_vec());
        self.inner.changed.send_modify(|version| *version += 1);
        member
    }
}

fn encode_headers(headers: &[(String, String)]) -> String {
    // A list of pairs serialises infallibly to JSON.
    serde_json::to_string(headers).unwrap_or_else(|_| "[]".to_owned())
}

fn decode_headers(text: &str) -> Vec<(String, String)> {
    serde_json::from_str(text).unwrap_or_default()
}

#[async_trait]
impl EventBus for EmbeddedBus {
    fn kind(&self) -> BusKind {
        BusKind::Embedded
    }

    fn default_partitions(&self) -> i32 {
        self.inner.config.default_partitions
    }

    async fn ensure_topics(&self, topics: &[TopicSpec]) -> Result<()> {
        for topic in topics {
            if topic.partitions < 1 {
                return Err(Error::BadConfig(format!("topic {} with {} partitions", topic.name, topic.partitions)));
            }
            let turn = self.inner.write.lock().await;
            sqlx::query("INSERT INTO topics (name, partitions) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING")
                .bind(&topic.name)
                .bind(topic.partitions)
                .execute(&self.inner.pool)
                .await?;
            drop(turn);
            let partitions: i32 = sqlx::query_scalar("SELECT partitions FROM topics WHERE name = $1")
                .bind(&topic.name)
                .fetch_one(&self.inner.pool)
                .await?;
            lock(&self.inner.topics).insert(topic.name.clone(), partitions);
        }
        self.inner.changed.send_modify(|version| *version += 1);
        Ok(())
    }

    async fn publish(&self, records: &[Record]) -> Vec<Result<()>> {
        self.append(records).await
    }

    async fn subscribe(&self, group: &str, topics: &[String]) -> Result<Box<dyn Subscription>> {
        for topic in topics {
            if self.partitions_of(topic).is_none() {
                return Err(Error::UnknownTopic(topic.clone()));
            }
        }
        let member = self.join(group, topics);
        Ok(Box::new(EmbeddedSubscription {
            bus: self.clone(),
            group: group.to_owned(),
            topics: topics.to_vec(),
            member,
            positions: BTreeMap::new(),
            wake: self.inner.changed.subscribe(),
            next_start: 0,
            last_commit: tokio::time::Instant::now(),
            left: false,
        }))
    }

    async fn flush(&self, _timeout: Duration) -> Result<()> {
        // A publish returns only after its transaction committed.
        Ok(())
    }

    async fn prune_consumed(&self, appended_before: SystemTime) -> Result<u64> {
        // A record goes once it is old enough and behind the committed offset
        // of every group that has consumed its partition. A partition no
        // group has committed on keeps everything, and its last record always
        // stays: the next append numbers its offset after it.
        let _turn = self.inner.write.lock().await;
        let pruned = sqlx::query(
            "DELETE FROM log WHERE appended_at < $1
               AND log_offset < (SELECT MIN(g.next_offset) FROM group_offsets g
                                 WHERE g.topic = log.topic AND g.partition_no = log.partition_no)
               AND log_offset < (SELECT MAX(l.log_offset) FROM log l
                                 WHERE l.topic = log.topic AND l.partition_no = log.partition_no)",
        )
        .bind(tandem_store::unix_micros(appended_before))
        .execute(&self.inner.pool)
        .await?
        .rows_affected();
        Ok(pruned)
    }
}

/// One member of an embedded consumer group.
struct EmbeddedSubscription {
    bus: EmbeddedBus,
    group: String,
    topics: Vec<String>,
    member: u64,
    // The partitions this member holds and where it reads next.
    positions: BTreeMap<TopicPartition, i64>,
    wake: watch::Receiver<u64>,
    // Which owned partition to read first, so none starves.
    next_start: usize,
    // When this member last committed its group's stored offsets.
    last_commit: tokio::time::Instant,
    left: bool,
}

/// What a poll must do after the group lock is released.
struct Rebalanced {
    acquired: Vec<(TopicPartition, Option<i64>)>,
    to_commit: Vec<(TopicPartition, i64)>,
}

impl EmbeddedSubscription {
    /// The partitions this member should hold: each topic's partitions go
    /// round-robin to the members subscribed to it, in member order.
    fn target(&self, group: &Group) -> BTreeSet<TopicPartition> {
        let topics = lock(&self.bus.inner.topics);
        let mut mine = BTreeSet::new();
        let Some(my_topics) = group.members.get(&self.member) else {
            return mine;
        };
        for topic in my_topics {
            let Some(partitions) = topics.get(topic).copied() else {
                continue;
            };
            let subscribers: Vec<u64> =
                group.members.iter().filter(|(_, their)| their.contains(topic)).map(|(id, _)| *id).collect();
            let Some(rank) = subscribers.iter().position(|id| *id == self.member) else {
                continue;
            };
            for partition in 0..partitions {
                if usize::try_from(partition).unwrap_or_default() % subscribers.len() == rank {
                    mine.insert((topic.clone(), partition));
                }
            }
        }
        mine
    }

    /// Releases partitions that moved away, takes free ones that are now
    /// ours, and, when a commit is due, collects stored offsets to commit.
    fn rebalance(&mut self, commit_due: bool) -> Rebalanced {
        let inner = &self.bus.inner;
        let mut groups = lock(&inner.groups);
        let group = groups.entry(self.group.clone()).or_default();
        let target = self.target(group);
        let mut released = false;
        let held: Vec<TopicPartition> = self.positions.keys().cloned().collect();
        for tp in held {
            if !target.contains(&tp) {
                self.positions.remove(&tp);
                if group.owners.get(&tp) == Some(&self.member) {
                    group.owners.remove(&tp);
                }
                // The stored offset stays dirty so the new owner's poll
                // commits it: the revoke commit of Kafka's rebalance.
                released = true;
            }
        }
        let mut acquired = Vec::new();
        for tp in target {
            if self.positions.contains_key(&tp) {
                continue;
            }
            if group.owners.contains_key(&tp) {
                // Its previous owner gives it up at its next poll or drop.
                continue;
            }
            group.owners.insert(tp.clone(), self.member);
            acquired.push((tp.clone(), group.stored.get(&tp).copied()));
        }
        // Not due: they stay dirty (and in memory, where the next owner of a
        // released partition reads them) until a commit is.
        let to_commit = if commit_due {
            group.dirty.drain().filter_map(|tp| group.stored.get(&tp).map(|offset| (tp, *offset))).collect()
        } else {
            Vec::new()
        };
        drop(groups);
        if released {
            inner.changed.send_modify(|version| *version += 1);
        }
        Rebalanced { acquired, to_commit }
    }

    async fn commit(&self, offsets: Vec<(TopicPartition, i64)>) -> Result<()> {
        if offsets.is_empty() {
            return Ok(());
        }
        let result = self.write_offsets(&offsets).await;
        if result.is_err() {
            // Try again at the next poll.
            let mut groups = lock(&self.bus.inner.groups);
            if let Some(group) = groups.get_mut(&self.group) {
                group.dirty.extend(offsets.into_iter().map(|(tp, _)| tp));
            }
        }
        result
    }

    async fn write_offsets(&self, offsets: &[(TopicPartition, i64)]) -> Result<()> {
        let now = tandem_store::unix_micros(SystemTime::now());
        let _turn = self.bus.inner.write.lock().await;
        let mut tx = self.bus.inner.offsets_pool.begin_with("BEGIN IMMEDIATE").await?;
        for ((topic, partition), offset) in offsets {
            // MAX guards against two members' commits landing out of order.
            sqlx::query(
                "INSERT INTO group_offsets (group_id, topic, partition_no, next_offset, committed_at) VALUES ($1, $2, $3, $4, $5)
                 ON CONFLICT (group_id, topic, partition_no) DO UPDATE SET next_offset = MAX(next_offset, excluded.next_offset), committed_at = excluded.committed_at",
            )
            .bind(&self.group)
            .bind(topic)
            .bind(partition)
            .bind(offset)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn committed(&self, (topic, partition): &TopicPartition) -> Result<i64> {
        let offset: Option<i64> = sqlx::query_scalar(
            "SELECT next_offset FROM group_offsets WHERE group_id = $1 AND topic = $2 AND partition_no = $3",
        )
        .bind(&self.group)
        .bind(topic)
        .bind(partition)
        .fetch_optional(&self.bus.inner.pool)
        .await?;
        // A group new to a partition starts at its beginning (Kafka's
        // auto.offset.reset=earliest), so nothing produced before the
        // first subscriber joined is skipped.
        Ok(offset.unwrap_or(0))
    }

    async fn fetch(&mut self, max: usize) -> Result<Vec<Delivered>> {
        // Only partitions with records past this member's position: a
        // member holding many partitions reads one when one has news.
        let held: Vec<(TopicPartition, i64)> = {
            let ends = lock(&self.bus.inner.ends);
            self.positions
                .iter()
                .filter(|(tp, position)| ends.get(*tp).is_some_and(|end| end > *position))
                .map(|(tp, position)| (tp.clone(), *position))
                .collect()
        };
        if held.is_empty() || max == 0 {
            return Ok(Vec::new());
        }
        let per_partition = max.div_ceil(held.len()).max(1);
        let start = self.next_start % held.len();
        self.next_start = self.next_start.wrapping_add(1);
        let mut batch = Vec::new();
        for i in 0..held.len() {
            let ((topic, partition), position) = &held[(start + i) % held.len()];
            let room = (max - batch.len()).min(per_partition);
            if room == 0 {
                break;
            }
            let rows = sqlx::query(
                "SELECT log_offset, record_key, payload, headers FROM log WHERE topic = $1 AND partition_no = $2 AND log_offset >= $3 ORDER BY log_offset LIMIT $4",
            )
            .bind(topic)
            .bind(partition)
            .bind(position)
            .bind(i64::try_from(room).unwrap_or(i64::MAX))
            .fetch_all(&self.bus.inner.pool)
            .await?;
            let Some(last) = rows.last() else {
                continue;
            };
            let next = last.get::<i64, _>(0) + 1;
            for row in &rows {
                batch.push(Delivered {
                    topic: topic.clone(),
                    partition: *partition,
                    offset: row.get(0),
                    key: row.get(1),
                    value: row.get(2),
                    headers: decode_headers(row.get::<&str, _>(3)),
                });
            }
            self.positions.insert((topic.clone(), *partition), next);
        }
        Ok(batch)
    }

    fn leave(&mut self) {
        if self.left {
            return;
        }
        self.left = true;
        let inner = &self.bus.inner;
        let mut groups = lock(&inner.groups);
        if let Some(group) = groups.get_mut(&self.group) {
            group.members.remove(&self.member);
            group.owners.retain(|_, owner| *owner != self.member);
        }
        drop(groups);
        self.positions.clear();
        inner.changed.send_modify(|version| *version += 1);
    }
}

#[async_trait]
impl Subscription for EmbeddedSubscription {
    async fn next_batch(&mut self, max: usize) -> Result<Vec<Delivered>> {
        loop {
            // Mark the current version seen before reading, so an append
            // that lands during the read wakes the wait below.
            self.wake.borrow_and_update();
            let commit_due = self.last_commit.elapsed() >= OFFSET_COMMIT_INTERVAL;
            let Rebalanced { acquired, to_commit } = self.rebalance(commit_due);
            if commit_due {
                self.last_commit = tokio::time::Instant::now();
            }
            self.commit(to_commit).await?;
            for (tp, stored) in acquired {
                let position = match stored {
                    Some(offset) => offset,
                    None => self.committed(&tp).await?,
                };
                self.positions.insert(tp, position);
            }
            let batch = self.fetch(max).await?;
            if !batch.is_empty() {
                return Ok(batch);
            }
            let safety_poll = self.bus.inner.config.safety_poll;
            tokio::select! {
                changed = self.wake.changed() => {
                    // The sender lives in the bus this member holds.
                    if changed.is_err() {
                        return Err(Error::Closed);
                    }
                }
                () = tokio::time::sleep(safety_poll) => {}
            }
        }
    }

    fn store_offset(&mut self, record: &Delivered) -> Result<()> {
        let tp = (record.topic.clone(), record.partition);
        let mut groups = lock(&self.bus.inner.groups);
        let group = groups.entry(self.group.clone()).or_default();
        if group.owners.get(&tp) != Some(&self.member) {
            return Err(Error::NotAssigned { topic: record.topic.clone(), partition: record.partition });
        }
        let next = record.offset + 1;
        let stored = group.stored.entry(tp.clone()).or_insert(next);
        *stored = (*stored).max(next);
        group.dirty.insert(tp);
        Ok(())
    }

    fn probe(&self) -> Arc<dyn GroupProbe> {
        Arc::new(EmbeddedProbe {
            bus: Arc::downgrade(&self.bus.inner),
            group: self.group.clone(),
            topics: self.topics.clone(),
            member: self.member,
        })
    }

    async fn close(mut self: Box<Self>) -> Result<()> {
        let to_commit: Vec<(TopicPartition, i64)> = {
            let mut groups = lock(&self.bus.inner.groups);
            let group = groups.entry(self.group.clone()).or_default();
            group.dirty.drain().filter_map(|tp| group.stored.get(&tp).map(|offset| (tp, *offset))).collect()
        };
        let committed = self.commit(to_commit).await;
        self.leave();
        committed
    }
}

/// Reads a member's partitions and its group's offsets from the log.
struct EmbeddedProbe {
    bus: Weak<Inner>,
    group: String,
    topics: Vec<String>,
    member: u64,
}

#[async_trait]
impl GroupProbe for EmbeddedProbe {
    async fn partitions(&self) -> Result<Vec<PartitionLag>> {
        let inner = self.bus.upgrade().ok_or(Error::Closed)?;
        let mut partitions = Vec::new();
        for topic in &self.topics {
            let count = lock(&inner.topics).get(topic).copied().unwrap_or_default();
            let ends: HashMap<i32, i64> =
                sqlx::query("SELECT partition_no, MAX(log_offset) + 1 FROM log WHERE topic = $1 GROUP BY partition_no")
                    .bind(topic)
                    .fetch_all(&inner.pool)
                    .await?
                    .into_iter()
                    .map(|row| (row.get::<i32, _>(0), row.get::<i64, _>(1)))
                    .collect();
            let committed: HashMap<i32, i64> =
                sqlx::query("SELECT partition_no, next_offset FROM group_offsets WHERE group_id = $1 AND topic = $2")
                    .bind(&self.group)
                    .bind(topic)
                    .fetch_all(&inner.pool)
                    .await?
                    .into_iter()
                    .map(|row| (row.get::<i32, _>(0), row.get::<i64, _>(1)))
                    .collect();
            let groups = lock(&inner.groups);
            let group = groups.get(&self.group);
            for partition in 0..count {
                let tp = (topic.clone(), partition);
                // Stored offsets are newer than the file's until the next commit.
                let stored = group.and_then(|group| group.stored.get(&tp).copied());
                let committed = stored.or_else(|| committed.get(&partition).copied()).unwrap_or(0);
                partitions.push(PartitionLag {
                    topic: topic.clone(),
                    partition,
                    committed,
                    end: ends.get(&partition).copied().unwrap_or(0).max(committed),
                    held: group.is_some_and(|group| group.owners.get(&tp) == Some(&self.member)),
                });
            }
        }
        Ok(partitions)
    }
}

impl Drop for EmbeddedSubscription {
    fn drop(&mut self) {
        // A member that goes away mid-batch hands its partitions back; the
        // next owner resumes after the last stored offset.
        self.leave();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(topic: &str, key: &str, value: &str) -> Record {
        Record {
            topic: topic.to_owned(),
            key: key.to_owned(),
            value: value.as_bytes().to_vec(),
            headers: vec![("traceparent".to_owned(), "tp".to_owned())],
        }
    }

    #[tokio::test]
    async fn unknown_topics_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let bus = EmbeddedBus::open(EmbeddedConfig::new(dir.path().join("events.db"))).await.unwrap();
        let results = bus.publish(&[record("nowhere", "k", "v")]).await;
        assert!(matches!(results[0], Err(Error::UnknownTopic(_))));
        assert!(bus.subscribe("g", &["nowhere".into()]).await.is_err());
        assert!(bus.is_empty().await.unwrap());
    }

    #[tokio::test]
    async fn reopening_the_file_keeps_records_and_committed_offsets() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.db");
        {
            let bus = EmbeddedBus::open(EmbeddedConfig::new(&path)).await.unwrap();
            bus.ensure_topics(&[TopicSpec::new("t", 2)]).await.unwrap();
            let results = bus.publish(&[record("t", "a", "1"), record("t", "a", "2")]).await;
            assert!(results.iter().all(Result::is_ok));
            let mut member = bus.subscribe("g", &["t".into()]).await.unwrap();
            let batch = member.next_batch(10).await.unwrap();
            assert_eq!(batch.len(), 2);
            assert_eq!(batch[0].header("traceparent"), Some("tp"));
            member.store_offset(&batch[0]).unwrap();
            member.close().await.unwrap();
            bus.inner.pool.close().await;
            bus.inner.offsets_pool.close().await;
            lock(registry()).clear();
        }
        let bus = EmbeddedBus::open(EmbeddedConfig::new(&path)).await.unwrap();
        assert_eq!(bus.len().await.unwrap(), 2);
        let mut member = bus.subscribe("g", &["t".into()]).await.unwrap();
        let batch = member.next_batch(10).await.unwrap();
        let values: Vec<&[u8]> = batch.iter().map(|d| d.value.as_slice()).collect();
        assert_eq!(values, [b"2".as_slice()], "resumes after the committed offset");
    }

    #[tokio::test]
    async fn same_path_shares_one_log() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.db");
        let first = EmbeddedBus::open(EmbeddedConfig::new(&path)).await.unwrap();
        let second = EmbeddedBus::open(EmbeddedConfig::new(&path)).await.unwrap();
        assert!(Arc::ptr_eq(&first.inner, &second.inner));
    }
}
