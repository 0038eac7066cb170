//! Raft storage in redb: the log (fsynced before a write is acknowledged), the vote,
//! the committed index, and durable snapshots of the state machine.
//!
//! The state machine itself lives in memory. It is rebuilt at start from the last
//! durable snapshot, and openraft re-applies the committed log after it. The log is
//! purged only behind a snapshot that is already on disk, so nothing is ever lost.

use std::fmt::Debug;
use std::io::Cursor;
use std::ops::{Bound, RangeBounds};
use std::path::Path;
use std::sync::{Arc, RwLock};

use openraft::storage::{LogFlushed, LogState, RaftLogStorage, RaftStateMachine, Snapshot};
use openraft::{
    AnyError, EntryPayload, ErrorSubject, ErrorVerb, RaftLogReader, RaftSnapshotBuilder,
    StorageIOError, Vote,
};
use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

use super::events::{self, EventLog};
use super::state::{ClusterState, CommandResult};
use super::types::{Entry, LogId, SnapshotMeta, StorageError, StoredMembership, TypeConfig};

const LOG: TableDefinition<'_, u64, &[u8]> = TableDefinition::new("raft_log");
const META: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("raft_meta");

const KEY_VOTE: &str = "vote";
const KEY_COMMITTED: &str = "committed";
const KEY_PURGED: &str = "last_purged";
const KEY_SNAPSHOT: &str = "snapshot";

/// A failed read or write of `raft.redb` (redb's or postcard's words), or a snapshot that
/// cannot be decoded. Reported to openraft as a storage error, or at start as
/// [`OpenError::Corrupt`] with the file's name.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Opening or creating the database.
    #[error(transparent)]
    Database(#[from] redb::DatabaseError),
    /// Beginning a transaction.
    #[error(transparent)]
    Transaction(#[from] redb::TransactionError),
    /// Opening a table.
    #[error(transparent)]
    Table(#[from] redb::TableError),
    /// Reading or writing a table.
    #[error(transparent)]
    Storage(#[from] redb::StorageError),
    /// Committing a transaction.
    #[error(transparent)]
    Commit(#[from] redb::CommitError),
    /// Asking for durable commits.
    #[error(transparent)]
    Durability(#[from] redb::SetDurabilityError),
    /// Encoding or decoding a row.
    #[error(transparent)]
    Encoding(#[from] postcard::Error),
    /// A stored snapshot's envelope does not decode.
    #[error("corrupt snapshot: {0}")]
    CorruptSnapshot(postcard::Error),
    /// A stored snapshot's cluster state does not decode (its version, or its bytes).
    #[error("{0}")]
    State(String),
    /// The blocking task that ran a write did not finish.
    #[error("storage task failed: {0}")]
    Task(tokio::task::JoinError),
}

/// Why the Raft database could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The file exists but redb cannot read it.
    #[error(
        "{path} is corrupt or unreadable ({reason}): refusing to start; move it away only if you mean to lose this node's cluster state"
    )]
    Corrupt {
        /// The file.
        path: String,
        /// redb's words.
        reason: String,
    },
}

/// Opens (or creates) `raft.redb`, with both tables present.
pub fn open_db(path: &Path) -> Result<Arc<Database>, OpenError> {
    let corrupt = |e: StoreError| OpenError::Corrupt {
        path: path.display().to_string(),
        reason: e.to_string(),
    };
    // raft.redb holds the cluster CA's private key: 0600 whatever the umask, set before
    // redb writes anything (redb initializes an empty file), and again at every open.
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        let _ = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(path);
        if let Err(e) = crate::state_dir::enforce_mode(path, 0o600, "file") {
            tracing::warn!("cannot set the mode of {} to 0600: {e}", path.display());
        }
    }
    let create = || -> Result<Database, StoreError> {
        let db = Database::create(path)?;
        let mut tx = db.begin_write()?;
        tx.set_durability(Durability::Immediate)?;
        tx.open_table(LOG)?;
        tx.open_table(META)?;
        tx.commit()?;
        Ok(db)
    };
    create().map(Arc::new).map_err(corrupt)
}

fn io_err(subject: ErrorSubject<u64>, verb: ErrorVerb, e: impl std::fmt::Display) -> StorageError {
    StorageIOError::new(subject, verb, AnyError::error(e.to_string())).into()
}

fn read_meta<T: for<'a> Deserialize<'a>>(
    db: &Database,
    key: &str,
) -> Result<Option<T>, StoreError> {
    let tx = db.begin_read()?;
    let table = tx.open_table(META)?;
    match table.get(key)? {
        Some(v) => Ok(Some(postcard::from_bytes(v.value())?)),
        None => Ok(None),
    }
}

fn write_meta<T: Serialize>(db: &Database, key: &str, value: &T) -> Result<(), StoreError> {
    let bytes = postcard::to_stdvec(value)?;
    let mut tx = db.begin_write()?;
    tx.set_durability(Durability::Immediate)?;
    {
        let mut table = tx.open_table(META)?;
        table.insert(key, bytes.as_slice())?;
    }
    tx.commit()?;
    Ok(())
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(StoreError::Task)?
}

/// The Raft log and vote.
#[derive(Clone)]
pub struct LogStore {
    db: Arc<Database>,
}

impl LogStore {
    /// A log store over an opened database.
    pub fn new(db: Arc<Database>) -> Self {
        Self { db }
    }

    fn range_sync(&self, lo: u64, hi: Option<u64>) -> Result<Vec<Entry>, StoreError> {
        let tx = self.db.begin_read()?;
        let table = tx.open_table(LOG)?;
        let iter = match hi {
            Some(hi) => table.range(lo..hi),
            None => table.range(lo..),
        }?;
        let mut out = Vec::new();
        for item in iter {
            let (_, v) = item?;
            out.push(postcard::from_bytes::<Entry>(v.value())?);
        }
        Ok(out)
    }
}

/// The ID of the last entry in the log table, if any.
fn last_log_id(db: &Database) -> Result<Option<LogId>, StoreError> {
    let tx = db.begin_read()?;
    let table = tx.open_table(LOG)?;
    Ok(match table.last()? {
        Some((_, v)) => Some(postcard::from_bytes::<Entry>(v.value())?.log_id),
        None => None,
    })
}

fn bounds(range: &impl RangeBounds<u64>) -> (u64, Option<u64>) {
    let lo = match range.start_bound() {
        Bound::Included(x) => *x,
        Bound::Excluded(x) => x.saturating_add(1),
        Bound::Unbounded => 0,
    };
    let hi = match range.end_bound() {
        Bound::Included(x) => Some(x.saturating_add(1)),
        Bound::Excluded(x) => Some(*x),
        Bound::Unbounded => None,
    };
    (lo, hi)
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        let (lo, hi) = bounds(&range);
        self.range_sync(lo, hi)
            .map_err(|e| io_err(ErrorSubject::Logs, ErrorVerb::Read, e))
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let err = |e: StoreError| io_err(ErrorSubject::Logs, ErrorVerb::Read, e);
        // `purge` writes `Some(log_id)`: read it back as that, not as a bare `LogId`.
        let last_purged: Option<LogId> = read_meta::<Option<LogId>>(&self.db, KEY_PURGED)
            .map_err(err)?
            .flatten();
        let last = last_log_id(&self.db).map_err(err)?;
        Ok(LogState {
            last_purged_log_id: last_purged,
            last_log_id: last.or(last_purged),
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<u64>) -> Result<(), StorageError> {
        let db = self.db.clone();
        let vote = *vote;
        blocking(move || write_meta(&db, KEY_VOTE, &vote))
            .await
            .map_err(|e| io_err(ErrorSubject::Vote, ErrorVerb::Write, e))
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<u64>>, StorageError> {
        read_meta(&self.db, KEY_VOTE).map_err(|e| io_err(ErrorSubject::Vote, ErrorVerb::Read, e))
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        let db = self.db.clone();
        blocking(move || write_meta(&db, KEY_COMMITTED, &committed))
            .await
            .map_err(|e| io_err(ErrorSubject::Store, ErrorVerb::Write, e))
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        let v: Option<Option<LogId>> = read_meta(&self.db, KEY_COMMITTED)
            .map_err(|e| io_err(ErrorSubject::Store, ErrorVerb::Read, e))?;
        Ok(v.flatten())
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        let mut encoded = Vec::new();
        for e in entries {
            let bytes = postcard::to_stdvec(&e)
                .map_err(|err| io_err(ErrorSubject::Logs, ErrorVerb::Write, err))?;
            encoded.push((e.log_id.index, bytes));
        }
        let db = self.db.clone();
        // One write transaction per batch, fsynced (Durability::Immediate) before the
        // callback tells openraft the entries are durable.
        let res = blocking(move || {
            let mut tx = db.begin_write()?;
            tx.set_durability(Durability::Immediate)?;
            {
                let mut table = tx.open_table(LOG)?;
                for (index, bytes) in &encoded {
                    table.insert(*index, bytes.as_slice())?;
                }
            }
            tx.commit()?;
            Ok(())
        })
        .await;
        match res {
            Ok(()) => {
                callback.log_io_completed(Ok(()));
                Ok(())
            }
            Err(e) => {
                callback.log_io_completed(Err(std::io::Error::other(e.to_string())));
                Err(io_err(ErrorSubject::Logs, ErrorVerb::Write, e))
            }
        }
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let db = self.db.clone();
        blocking(move || {
            let mut tx = db.begin_write()?;
            tx.set_durability(Durability::Immediate)?;
            {
                let mut table = tx.open_table(LOG)?;
                table.retain_in(log_id.index.., |_, _| false)?;
            }
            tx.commit()?;
            Ok(())
        })
        .await
        .map_err(|e| io_err(ErrorSubject::Logs, ErrorVerb::Delete, e))
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let db = self.db.clone();
        blocking(move || {
            let bytes = postcard::to_stdvec(&Some(log_id))?;
            let mut tx = db.begin_write()?;
            tx.set_durability(Durability::Immediate)?;
            {
                let mut meta = tx.open_table(META)?;
                meta.insert(KEY_PURGED, bytes.as_slice())?;
                let mut table = tx.open_table(LOG)?;
                table.retain_in(..=log_id.index, |_, _| false)?;
            }
            tx.commit()?;
            Ok(())
        })
        .await
        .map_err(|e| io_err(ErrorSubject::Logs, ErrorVerb::Delete, e))
    }
}

/// The in-memory state machine and where it stands in the log.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SmData {
    /// Last applied log ID.
    pub last_applied: Option<LogId>,
    /// Last membership seen in the log.
    pub membership: StoredMembership,
    /// The cluster state.
    pub state: ClusterState,
}

/// A snapshot as kept on disk.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct StoredSnapshot {
    meta: SnapshotMeta,
    data: Vec<u8>,
}

/// The state machine: shared with readers through `shared`.
#[derive(Clone)]
pub struct StateMachineStore {
    db: Arc<Database>,
    shared: Arc<RwLock<SmData>>,
    /// The events derived from the entries applied here (`shoal events`).
    events: Arc<EventLog>,
}

fn encode_sm(sm: &SmData) -> Result<Vec<u8>, StoreError> {
    // The cluster state has its own version byte; the envelope is plain postcard.
    Ok(postcard::to_stdvec(&(
        sm.last_applied,
        &sm.membership,
        sm.state.encode(),
    ))?)
}

pub(crate) fn decode_sm(bytes: &[u8]) -> Result<SmData, StoreError> {
    let (last_applied, membership, state): (Option<LogId>, StoredMembership, Vec<u8>) =
        postcard::from_bytes(bytes).map_err(StoreError::CorruptSnapshot)?;
    Ok(SmData {
        last_applied,
        membership,
        state: ClusterState::decode(&state).map_err(StoreError::State)?,
    })
}

/// Which row of `raft.redb` [`decode_row`] decodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Row {
    /// A log entry (table `raft_log`).
    Entry,
    /// The vote.
    Vote,
    /// The committed log ID.
    Committed,
    /// The last purged log ID.
    Purged,
    /// The durable snapshot, its state machine included.
    Snapshot,
}

/// Decodes one row of `raft.redb` as the store reads it at start, with the same types (a
/// snapshot down to its cluster state): for the fuzz targets (`crate::fuzzing`).
pub(crate) fn decode_row(row: Row, bytes: &[u8]) -> Result<(), StoreError> {
    match row {
        Row::Entry => drop(postcard::from_bytes::<Entry>(bytes)?),
        Row::Vote => drop(postcard::from_bytes::<Vote<u64>>(bytes)?),
        Row::Committed | Row::Purged => drop(postcard::from_bytes::<Option<LogId>>(bytes)?),
        Row::Snapshot => drop(decode_sm(
            &postcard::from_bytes::<StoredSnapshot>(bytes)?.data,
        )?),
    }
    Ok(())
}

impl StateMachineStore {
    /// Loads the state machine from the last durable snapshot (or empty).
    pub fn open(db: Arc<Database>) -> Result<Self, StoreError> {
        let snap: Option<StoredSnapshot> = read_meta(&db, KEY_SNAPSHOT)?;
        let data = match snap {
            Some(s) => decode_sm(&s.data)?,
            None => SmData::default(),
        };
        Ok(Self {
            db,
            shared: Arc::new(RwLock::new(data)),
            events: Arc::new(EventLog::default()),
        })
    }

    /// The events derived from the applied log, for subscribers.
    pub fn events(&self) -> Arc<EventLog> {
        self.events.clone()
    }

    /// The live state, for readers.
    pub fn shared(&self) -> Arc<RwLock<SmData>> {
        self.shared.clone()
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, SmData> {
        self.shared
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, SmData> {
        self.shared
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachineStore {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError> {
        let (data, meta) = {
            let sm = self.read();
            let data = encode_sm(&sm)
                .map_err(|e| io_err(ErrorSubject::StateMachine, ErrorVerb::Read, e))?;
            let snapshot_id = match sm.last_applied {
                Some(l) => format!("{}-{}-{}", l.leader_id, l.index, data.len()),
                None => format!("0-0-{}", data.len()),
            };
            let meta = SnapshotMeta {
                last_log_id: sm.last_applied,
                last_membership: sm.membership.clone(),
                snapshot_id,
            };
            (data, meta)
        };
        let db = self.db.clone();
        let stored = StoredSnapshot {
            meta: meta.clone(),
            data: data.clone(),
        };
        // Durable before openraft may purge the log behind it.
        blocking(move || write_meta(&db, KEY_SNAPSHOT, &stored))
            .await
            .map_err(|e| io_err(ErrorSubject::Snapshot(None), ErrorVerb::Write, e))?;
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachineStore {
    type SnapshotBuilder = Self;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        let sm = self.read();
        Ok((sm.last_applied, sm.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<CommandResult>, StorageError>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        let mut sm = self.write();
        let mut out = Vec::new();
        for entry in entries {
            sm.last_applied = Some(entry.log_id);
            let index = entry.log_id.index;
            match entry.payload {
                EntryPayload::Blank => {
                    // A new leader's first entry: its log ID names it.
                    let leader = entry.log_id.leader_id;
                    let (id, name) = match sm.state.node_by_raft_id(leader.node_id) {
                        Some(n) => (n.id.clone(), n.hostname.clone()),
                        None => (leader.node_id.to_string(), String::new()),
                    };
                    let time = self.events.fallback_time(&sm.state);
                    self.events.push(vec![events::leader_elected(
                        &id,
                        &name,
                        leader.term,
                        index,
                        time,
                    )]);
                    out.push(CommandResult::Done);
                }
                EntryPayload::Normal(cmd) => {
                    let before = events::Summary::of(&sm.state, &cmd);
                    let result = sm.state.apply(&cmd);
                    let after = events::Summary::of(&sm.state, &cmd);
                    let time = events::command_time(&cmd)
                        .unwrap_or_else(|| self.events.fallback_time(&sm.state));
                    self.events
                        .push(events::derive(&cmd, &before, &after, index, time));
                    out.push(result);
                }
                EntryPayload::Membership(m) => {
                    sm.membership = StoredMembership::new(Some(entry.log_id), m);
                    out.push(CommandResult::Done);
                }
            }
        }
        Ok(out)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError> {
        let data = snapshot.into_inner();
        let new = decode_sm(&data).map_err(|e| {
            io_err(
                ErrorSubject::Snapshot(Some(meta.signature())),
                ErrorVerb::Read,
                e,
            )
        })?;
        let db = self.db.clone();
        let stored = StoredSnapshot {
            meta: meta.clone(),
            data,
        };
        blocking(move || write_meta(&db, KEY_SNAPSHOT, &stored))
            .await
            .map_err(|e| {
                io_err(
                    ErrorSubject::Snapshot(Some(meta.signature())),
                    ErrorVerb::Write,
                    e,
                )
            })?;
        *self.write() = new;
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError> {
        let snap: Option<StoredSnapshot> = read_meta(&self.db, KEY_SNAPSHOT)
            .map_err(|e| io_err(ErrorSubject::Snapshot(None), ErrorVerb::Read, e))?;
        Ok(snap.map(|s| Snapshot {
            meta: s.meta,
            snapshot: Box::new(Cursor::new(s.data)),
        }))
    }
}

#[cfg(test)]
mod mode_tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o7777
    }

    #[test]
    fn raft_db_is_0600_whatever_the_umask_and_at_every_open() {
        use nix::sys::stat::{Mode, umask};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("raft.redb");
        let old = umask(Mode::empty());
        let db = open_db(&path);
        umask(old);
        drop(db.unwrap());
        assert_eq!(mode(&path), 0o600);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        drop(open_db(&path).unwrap());
        assert_eq!(mode(&path), 0o600);
    }

    #[test]
    fn store_errors_keep_their_words() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("raft.redb");
        // A file redb cannot read: the start names it and says what not to do.
        std::fs::write(
            &path,
            b"not a redb file, not at all, and long enough to look",
        )
        .unwrap();
        let err = open_db(&path).unwrap_err().to_string();
        assert!(err.starts_with(&format!("{} is corrupt or unreadable (", path.display())));
        assert!(err.ends_with(
            "): refusing to start; move it away only if you mean to lose this node's cluster state"
        ));
        // A snapshot row that does not decode.
        std::fs::remove_file(&path).unwrap();
        let db = open_db(&path).unwrap();
        write_meta(
            &db,
            KEY_SNAPSHOT,
            &StoredSnapshot {
                meta: SnapshotMeta::default(),
                data: vec![0xff; 3],
            },
        )
        .unwrap();
        let err = StateMachineStore::open(db).err().unwrap().to_string();
        assert!(err.starts_with("corrupt snapshot: "), "{err}");
    }
}
