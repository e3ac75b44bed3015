//! The one writer of a SQLite database, with group commit.
//!
//! SQLite has one write lock per database file. When every producer (the MLLP listener, the
//! webhook endpoint, CSV imports, the service loop) opened its own write transaction, the losers
//! slept in SQLite's busy handler (1, 2, 5 ... 100 ms steps) and every commit paid its own fsync.
//! Here one task owns the only writing connection. A producer asks it for a [`WriteTx`], does its
//! work on the connection inside a savepoint, and hands it back; the task lends the connection to
//! the next producer already waiting, and commits the whole group with one fsync. Each producer's
//! `commit()` returns only after the group that holds its work is durable, so an ACK still means
//! "on disk". A producer that drops its `WriteTx` without committing has its savepoint rolled
//! back, without touching the others in the group.

use std::ops::{Deref, DerefMut};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use sqlx::Connection;
use sqlx::sqlite::{SqliteConnectOptions, SqliteConnection};
use tokio::sync::{mpsc, oneshot};

use super::{StoreError, StoreResult};

/// Most producers folded into one commit. Bounds how long the first of them waits for its ACK.
const MAX_GROUP: usize = 128;

/// How long a producer waits for the connection before it gives up (the old busy timeout's role:
/// a producer stuck holding the connection must not stall every other one for ever).
const LEASE_WAIT: Duration = Duration::from_secs(30);

/// Handle to the writer task. Cheap to clone; the task ends when the last handle is dropped or
/// [`Writer::close`] is called.
#[derive(Clone, Debug)]
pub(crate) struct Writer {
    requests: mpsc::Sender<Request>,
    commits: Arc<AtomicU64>,
}

#[derive(Debug)]
enum Request {
    Lease(oneshot::Sender<Result<Lease, String>>),
    /// A transaction of its own, without a savepoint (a bulk import batch): see
    /// [`Writer::begin_alone`].
    Alone(oneshot::Sender<Result<Lease, String>>),
    Close(oneshot::Sender<()>),
}

#[derive(Debug)]
struct Lease {
    conn: SqliteConnection,
    back: oneshot::Sender<Returned>,
    committed: oneshot::Receiver<Result<(), String>>,
}

#[derive(Debug)]
struct Returned {
    conn: SqliteConnection,
    keep: bool,
}

/// The writing connection, lent to one producer inside a savepoint of the current group.
/// Dereferences to the connection; [`WriteTx::commit`] keeps the work, dropping discards it.
#[derive(Debug)]
pub(crate) struct WriteTx {
    conn: Option<SqliteConnection>,
    back: Option<oneshot::Sender<Returned>>,
    committed: Option<oneshot::Receiver<Result<(), String>>>,
}

impl Deref for WriteTx {
    type Target = SqliteConnection;
    fn deref(&self) -> &SqliteConnection {
        self.conn
            .as_ref()
            .expect("a WriteTx holds its connection until commit or drop")
    }
}

impl DerefMut for WriteTx {
    fn deref_mut(&mut self) -> &mut SqliteConnection {
        self.conn
            .as_mut()
            .expect("a WriteTx holds its connection until commit or drop")
    }
}

impl WriteTx {
    /// Keeps this work and waits until the group holding it is committed (durable).
    pub(crate) async fn commit(mut self) -> StoreResult<()> {
        let (Some(conn), Some(back), Some(committed)) =
            (self.conn.take(), self.back.take(), self.committed.take())
        else {
            return Err(StoreError::Commit(
                "write transaction already finished".into(),
            ));
        };
        if back.send(Returned { conn, keep: true }).is_err() {
            return Err(StoreError::Commit("the database writer stopped".into()));
        }
        match committed.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(StoreError::Commit(e)),
            Err(_) => Err(StoreError::Commit("the database writer stopped".into())),
        }
    }
}

impl Drop for WriteTx {
    fn drop(&mut self) {
        if let (Some(conn), Some(back)) = (self.conn.take(), self.back.take()) {
            // The writer rolls this producer's savepoint back; it may be gone already (shutdown).
            let _ = back.send(Returned { conn, keep: false });
        }
    }
}

impl Writer {
    /// Starts the writer task over `conn` (already migrated). `options` reopen the connection
    /// should it be lost.
    pub(crate) fn spawn(conn: SqliteConnection, options: SqliteConnectOptions) -> Writer {
        let (requests, rx) = mpsc::channel(4096);
        let commits = Arc::new(AtomicU64::new(0));
        tokio::spawn(run(conn, options, rx, commits.clone()));
        Writer { requests, commits }
    }

    /// Groups committed so far (each one fsync), for metrics and tests.
    pub(crate) fn commits(&self) -> u64 {
        self.commits.load(Ordering::Relaxed)
    }

    /// Waits for the writing connection (inside a fresh savepoint).
    pub(crate) async fn begin(&self) -> StoreResult<WriteTx> {
        self.lease(Request::Lease).await
    }

    /// Waits for the writing connection in a transaction of its own: no savepoint, no other
    /// producer in its commit. For large batches (a bulk import's thousands of rows): inside a
    /// savepoint SQLite keeps every statement's undo records in one growing sub-journal and walks
    /// it at the end of each statement, so a 4,000-row batch slowed down with the size of the
    /// database (1M rows: 5,600 rows/s instead of 47,000; BENCHMARKS.md). A batch that large
    /// gains nothing from sharing its fsync anyway.
    pub(crate) async fn begin_alone(&self) -> StoreResult<WriteTx> {
        self.lease(Request::Alone).await
    }

    async fn lease(
        &self,
        make: fn(oneshot::Sender<Result<Lease, String>>) -> Request,
    ) -> StoreResult<WriteTx> {
        let (reply, lease) = oneshot::channel();
        self.requests
            .send(make(reply))
            .await
            .map_err(|_| StoreError::Commit("the database writer stopped".into()))?;
        let lease = match tokio::time::timeout(LEASE_WAIT, lease).await {
            Ok(Ok(Ok(lease))) => lease,
            Ok(Ok(Err(e))) => return Err(StoreError::Commit(e)),
            Ok(Err(_)) => return Err(StoreError::Commit("the database writer stopped".into())),
            Err(_) => {
                return Err(StoreError::Commit(format!(
                    "no write access to the database within {} s",
                    LEASE_WAIT.as_secs()
                )));
            }
        };
        Ok(WriteTx {
            conn: Some(lease.conn),
            back: Some(lease.back),
            committed: Some(lease.committed),
        })
    }

    /// Commits what is pending, closes the connection (checkpointing the WAL) and stops the task.
    pub(crate) async fn close(&self) {
        let (done, wait) = oneshot::channel();
        if self.requests.send(Request::Close(done)).await.is_ok() {
            let _ = wait.await;
        }
    }
}

/// What lending the connection to one producer came to.
enum Lent {
    /// The producer committed: its notifier joins the group.
    Kept(SqliteConnection, oneshot::Sender<Result<(), String>>),
    /// The producer dropped its work (rolled back) or had stopped waiting.
    Discarded(SqliteConnection),
    /// A savepoint could not be set or undone: the group cannot be committed.
    Broken(SqliteConnection, String),
    /// The producer never gave the connection back (the group's work went with it: a closed
    /// connection rolls back).
    Lost,
}

async fn run(
    conn: SqliteConnection,
    options: SqliteConnectOptions,
    mut rx: mpsc::Receiver<Request>,
    commits: Arc<AtomicU64>,
) {
    let mut conn = Some(conn);
    // A request for a transaction alone that arrived while a group was open: served next.
    let mut next_first: Option<Request> = None;
    loop {
        let first = match next_first.take() {
            Some(r) => r,
            None => match rx.recv().await {
                Some(r) => r,
                None => break,
            },
        };
        let (mut reply, alone) = match first {
            Request::Lease(reply) => (reply, false),
            Request::Alone(reply) => (reply, true),
            Request::Close(done) => {
                close(conn.take()).await;
                let _ = done.send(());
                return;
            }
        };
        let mut c = match conn.take() {
            Some(c) => c,
            None => match SqliteConnection::connect_with(&options).await {
                Ok(c) => c,
                Err(e) => {
                    let _ = reply.send(Err(format!("database error: {e}")));
                    continue;
                }
            },
        };
        if let Err(e) = exec(&mut c, "BEGIN IMMEDIATE").await {
            // The database is locked by another process or failing: everyone waiting now gets
            // the answer at once (each would otherwise wait out the busy timeout in turn).
            let why = format!("database error: {e}");
            let _ = reply.send(Err(why.clone()));
            loop {
                match rx.try_recv() {
                    Ok(Request::Lease(next) | Request::Alone(next)) => {
                        let _ = next.send(Err(why.clone()));
                    }
                    Ok(Request::Close(done)) => {
                        close(Some(c)).await;
                        let _ = done.send(());
                        return;
                    }
                    Err(_) => break,
                }
            }
            conn = Some(c);
            continue;
        }
        let mut group: Vec<oneshot::Sender<Result<(), String>>> = Vec::new();
        let mut closing = None;
        let mut failure: Option<String> = None;
        let mut held = None;
        loop {
            match lend(c, reply, !alone).await {
                Lent::Kept(back, notify) => {
                    c = back;
                    group.push(notify);
                }
                Lent::Discarded(back) => c = back,
                Lent::Broken(back, e) => {
                    held = Some(back);
                    failure = Some(e);
                    break;
                }
                Lent::Lost => {
                    failure = Some("the database connection was lost by a producer".into());
                    break;
                }
            }
            if alone || group.len() >= MAX_GROUP {
                held = Some(c);
                break;
            }
            match rx.try_recv() {
                Ok(Request::Lease(next)) => reply = next,
                Ok(alone @ Request::Alone(_)) => {
                    // It gets a transaction of its own, right after this group's commit.
                    next_first = Some(alone);
                    held = Some(c);
                    break;
                }
                Ok(Request::Close(done)) => {
                    closing = Some(done);
                    held = Some(c);
                    break;
                }
                Err(_) => {
                    held = Some(c);
                    break;
                }
            }
        }
        let outcome = match (&mut held, failure) {
            (Some(c), None) => match exec(c, "COMMIT").await {
                Ok(_) => {
                    commits.fetch_add(1, Ordering::Relaxed);
                    Ok(())
                }
                Err(e) => {
                    let _ = exec(c, "ROLLBACK").await;
                    Err(format!("database error: {e}"))
                }
            },
            (Some(c), Some(e)) => {
                let _ = exec(c, "ROLLBACK").await;
                Err(e)
            }
            (None, e) => Err(e.unwrap_or_default()),
        };
        notify_all(group, outcome);
        conn = held;
        if let Some(done) = closing {
            close(conn.take()).await;
            let _ = done.send(());
            return;
        }
    }
    close(conn.take()).await;
}

/// Lends `conn` to the producer behind `reply` (inside a savepoint when `savepoint`: the group
/// may hold others' work; without one the producer is alone in the transaction) and takes it back.
async fn lend(
    mut conn: SqliteConnection,
    reply: oneshot::Sender<Result<Lease, String>>,
    savepoint: bool,
) -> Lent {
    if savepoint && let Err(e) = exec(&mut conn, "SAVEPOINT producer").await {
        let _ = reply.send(Err(format!("database error: {e}")));
        return Lent::Broken(conn, format!("database error: {e}"));
    }
    let (back, returned) = oneshot::channel();
    let (notify, committed) = oneshot::channel();
    let returned = match reply.send(Ok(Lease {
        conn,
        back,
        committed,
    })) {
        Ok(()) => returned.await.ok(),
        // The producer stopped waiting: take the connection straight back.
        Err(unsent) => unsent.ok().map(|lease| Returned {
            conn: lease.conn,
            keep: false,
        }),
    };
    let Some(Returned { mut conn, keep }) = returned else {
        return Lent::Lost;
    };
    if !savepoint {
        // Alone in the transaction: the caller commits it, or rolls it back, as a whole.
        return if keep {
            Lent::Kept(conn, notify)
        } else {
            Lent::Broken(conn, "the producer discarded its work".into())
        };
    }
    let undo = if keep {
        exec(&mut conn, "RELEASE producer").await
    } else {
        match exec(&mut conn, "ROLLBACK TO producer").await {
            Ok(_) => exec(&mut conn, "RELEASE producer").await,
            Err(e) => Err(e),
        }
    };
    match undo {
        Ok(_) if keep => Lent::Kept(conn, notify),
        Ok(_) => Lent::Discarded(conn),
        Err(e) => {
            if keep {
                let _ = notify.send(Err(format!("database error: {e}")));
            }
            Lent::Broken(conn, format!("database error: {e}"))
        }
    }
}

fn notify_all(group: Vec<oneshot::Sender<Result<(), String>>>, outcome: Result<(), String>) {
    for n in group {
        let _ = n.send(outcome.clone());
    }
}

async fn close(conn: Option<SqliteConnection>) {
    if let Some(c) = conn {
        let _ = c.close().await;
    }
}

/// Runs one transaction-control statement on the writing connection.
async fn exec(c: &mut SqliteConnection, sql: &'static str) -> Result<(), sqlx::Error> {
    sqlx::raw_sql(sql).execute(c).await.map(|_| ())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use sqlx::Row;

    use crate::keys::Keys;
    use crate::store::Store;

    async fn store_with_table() -> (Store, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("m.db"), Keys::from_secret(b"k"))
            .await
            .unwrap();
        let mut tx = store.sqlite_writer().begin().await.unwrap();
        sqlx::query("CREATE TABLE scratch (producer INTEGER PRIMARY KEY)")
            .execute(&mut *tx)
            .await
            .unwrap();
        tx.commit().await.unwrap();
        (store, dir)
    }

    async fn rows(store: &Store) -> Vec<i64> {
        sqlx::query("SELECT producer FROM scratch ORDER BY producer")
            .fetch_all(store.sqlite_pool())
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn producers_waiting_together_share_commits_and_each_sees_its_own_commit() {
        let (store, _dir) = store_with_table().await;
        let before = store.commit_groups();
        let mut tasks = Vec::new();
        for p in 0..200i64 {
            let store = store.clone();
            tasks.push(tokio::spawn(async move {
                let mut tx = store.sqlite_writer().begin().await.unwrap();
                sqlx::query("INSERT INTO scratch (producer) VALUES (?)")
                    .bind(p)
                    .execute(&mut *tx)
                    .await
                    .unwrap();
                tx.commit().await.unwrap();
                // Answered only after the commit: a reader sees the row now.
                let seen: Option<i64> =
                    sqlx::query_scalar("SELECT producer FROM scratch WHERE producer = ?")
                        .bind(p)
                        .fetch_optional(store.sqlite_pool())
                        .await
                        .unwrap();
                assert_eq!(seen, Some(p));
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(rows(&store).await, (0..200).collect::<Vec<_>>());
        let commits = store.commit_groups() - before;
        assert!(
            commits < 200,
            "200 producers waiting together took {commits} commits"
        );
        store.close().await;
    }

    #[tokio::test]
    async fn a_dropped_producer_is_rolled_back_without_its_group() {
        let (store, _dir) = store_with_table().await;
        let gate = Arc::new(tokio::sync::Barrier::new(2));
        let first = {
            let store = store.clone();
            let gate = gate.clone();
            tokio::spawn(async move {
                let mut tx = store.sqlite_writer().begin().await.unwrap();
                sqlx::query("INSERT INTO scratch (producer) VALUES (1)")
                    .execute(&mut *tx)
                    .await
                    .unwrap();
                gate.wait().await;
                // Work abandoned (an error, a cancelled request): not kept.
                drop(tx);
            })
        };
        let second = {
            let store = store.clone();
            let gate = gate.clone();
            tokio::spawn(async move {
                // Asks while the first producer still holds the connection.
                gate.wait().await;
                let mut tx = store.sqlite_writer().begin().await.unwrap();
                sqlx::query("INSERT INTO scratch (producer) VALUES (2)")
                    .execute(&mut *tx)
                    .await
                    .unwrap();
                tx.commit().await.unwrap();
            })
        };
        first.await.unwrap();
        second.await.unwrap();
        assert_eq!(rows(&store).await, vec![2]);
        store.close().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn transactions_alone_interleave_with_groups_and_a_dropped_one_leaves_nothing() {
        let (store, _dir) = store_with_table().await;
        let mut tasks = Vec::new();
        for p in 0..60i64 {
            let store = store.clone();
            tasks.push(tokio::spawn(async move {
                let w = store.sqlite_writer();
                let alone = p % 10 == 0;
                let mut tx = if alone {
                    w.begin_alone().await.unwrap()
                } else {
                    w.begin().await.unwrap()
                };
                sqlx::query("INSERT INTO scratch (producer) VALUES (?)")
                    .bind(p)
                    .execute(&mut *tx)
                    .await
                    .unwrap();
                if p == 30 {
                    // An import batch that failed half-way: none of it stays.
                    drop(tx);
                } else {
                    tx.commit().await.unwrap();
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        let expected: Vec<i64> = (0..60).filter(|p| *p != 30).collect();
        assert_eq!(rows(&store).await, expected);
        store.close().await;
    }

    /// Regression: a 1M-row CSV import ran at 5,600 rows/s instead of 47,000 because each 4,000-row
    /// batch ran inside the group's savepoint, where SQLite keeps one growing statement sub-journal
    /// and walks it after every statement. Import batches now run alone, outside any savepoint.
    #[tokio::test]
    async fn a_transaction_alone_is_not_inside_a_savepoint() {
        let (store, _dir) = store_with_table().await;
        let mut tx = store.sqlite_writer().begin_alone().await.unwrap();
        let inside = sqlx::query("RELEASE producer").execute(&mut *tx).await;
        assert!(inside.is_err(), "a savepoint named producer is open");
        sqlx::query("INSERT INTO scratch (producer) VALUES (1)")
            .execute(&mut *tx)
            .await
            .unwrap();
        tx.commit().await.unwrap();
        let mut tx = store.sqlite_writer().begin().await.unwrap();
        let grouped = sqlx::query("RELEASE producer").execute(&mut *tx).await;
        assert!(
            grouped.is_ok(),
            "a grouped producer works inside its savepoint"
        );
        drop(tx);
        assert_eq!(rows(&store).await, vec![1]);
        store.close().await;
    }

    #[tokio::test]
    async fn a_failed_statement_does_not_spoil_the_producers_work_that_follows() {
        let (store, _dir) = store_with_table().await;
        let mut tx = store.sqlite_writer().begin().await.unwrap();
        sqlx::query("INSERT INTO scratch (producer) VALUES (7)")
            .execute(&mut *tx)
            .await
            .unwrap();
        let duplicate = sqlx::query("INSERT INTO scratch (producer) VALUES (7)")
            .execute(&mut *tx)
            .await;
        assert!(duplicate.is_err());
        tx.commit().await.unwrap();
        assert_eq!(rows(&store).await, vec![7]);
        store.close().await;
    }

    #[tokio::test]
    async fn readers_cannot_write() {
        let (store, _dir) = store_with_table().await;
        let err = sqlx::query("INSERT INTO scratch (producer) VALUES (1)")
            .execute(store.sqlite_pool())
            .await
            .unwrap_err();
        assert!(err.to_string().contains("readonly"), "{err}");
        store.close().await;
    }

    #[tokio::test]
    async fn writes_fail_clearly_while_another_process_holds_the_database_and_resume_after() {
        let (store, _dir) = store_with_table().await;
        let outsider = store.tamper_pool().await;
        let mut lock = outsider.acquire().await.unwrap();
        sqlx::query("BEGIN EXCLUSIVE")
            .execute(&mut *lock)
            .await
            .unwrap();
        let err = match store.sqlite_writer().begin().await {
            Err(e) => e.to_string(),
            Ok(_) => panic!("the database is locked by another connection"),
        };
        assert!(err.contains("locked"), "{err}");
        sqlx::query("ROLLBACK").execute(&mut *lock).await.unwrap();
        drop(lock);
        let mut tx = store.sqlite_writer().begin().await.unwrap();
        sqlx::query("INSERT INTO scratch (producer) VALUES (3)")
            .execute(&mut *tx)
            .await
            .unwrap();
        tx.commit().await.unwrap();
        assert_eq!(rows(&store).await, vec![3]);
        store.close().await;
    }
}
