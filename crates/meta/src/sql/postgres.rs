//! PostgreSQL under the metadata layer (scale-out shape: several replicas share one database; docs/scale-out.md).
//!
//! SQLite gets its guarantees from one writer. Here transactions run at READ COMMITTED side by side, and the same
//! exclusion is rebuilt with locks each rule takes first ([`super::Tx::lock`]):
//! - a transaction-scoped advisory lock per digest it checks or changes (`LockSpace::Digest`): a manifest push and
//!   a garbage-collection deletion of one of its references, a mount and the deletion of its source, a manifest
//!   delete and an index push naming it, all serialise on the digest;
//! - a transaction-scoped advisory lock per tag written (`LockSpace::Tag`);
//! - `FOR KEY SHARE` on the repository row a write goes into, against `gc_delete_empty_repositories`, which locks
//!   the rows it deletes `FOR UPDATE` and re-checks emptiness after.
//!
//! Locks are taken in one global order (space, then key), so transactions do not deadlock among themselves; a
//! deadlock or serialization failure that happens anyway is retried ([`retry`]).
//!
//! Also here: what only replicas need (the coordination of `meta::Coordination`): session-level locks on their
//! own connections (the registry's digest lock, maintenance leases, mirror download leases).

use std::time::Duration;

use bytes::BytesMut;
use deadpool_postgres::{GenericClient, Manager, ManagerConfig, Pool, RecyclingMethod};
use tokio_postgres::NoTls;
use tokio_postgres::types::{IsNull, ToSql, Type, to_sql_checked};

use super::{Lock, Param, Row, Value};
use crate::schema;
use crate::{FetchLease, MetaError, StoreLock};

/// Namespaces of advisory-lock keys (the first of the two `int4` keys), so locks of different purposes never meet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
#[repr(i32)]
enum LockSpace {
    /// Around migrations.
    Migration = 0x6265_0001,
    /// Transaction-scoped, inside metadata transactions.
    Digest = 0x6265_0002,
    /// Transaction-scoped, per (repository, tag) written.
    Tag = 0x6265_0003,
    /// Session-scoped, the registry's digest lock across replicas (`lock_digest`).
    DigestSession = 0x6265_0004,
    /// Session-scoped, maintenance leases.
    Lease = 0x6265_0005,
    /// Session-scoped, mirror downloads (one replica fetches a blob from the upstream).
    Fetch = 0x6265_0006,
}

/// Attempts of a transaction that fails with a serialization failure or a deadlock.
const MAX_ATTEMPTS: u32 = 16;

impl From<tokio_postgres::Error> for MetaError {
    fn from(e: tokio_postgres::Error) -> Self {
        use tokio_postgres::error::SqlState;
        // `Display` of a server error is only "db error"; the detail is in the source.
        match e.as_db_error() {
            Some(db) => {
                let code = db.code();
                let msg = format!("{}: {}", code.code(), db.message());
                if *code == SqlState::T_R_SERIALIZATION_FAILURE
                    || *code == SqlState::T_R_DEADLOCK_DETECTED
                {
                    MetaError::Conflict(msg)
                } else if ["08", "53", "57P"]
                    .iter()
                    .any(|c| code.code().starts_with(c))
                {
                    // Connection exception, insufficient resources (too many connections, disk full), the server
                    // shutting down or starting: there, but unable to serve now.
                    MetaError::Unavailable(msg)
                } else {
                    MetaError::other(msg)
                }
            }
            // No server error: the connection failed, broke or was closed.
            None => MetaError::Unavailable(e.to_string()),
        }
    }
}

/// Whether a failed transaction should run again: a conflict, before the attempts run out (after a random pause
/// that grows with the attempt, so conflicting transactions stop meeting).
pub async fn retry(e: &MetaError, attempt: u32) -> bool {
    if !matches!(e, MetaError::Conflict(_)) {
        return false;
    }
    if attempt >= MAX_ATTEMPTS {
        tracing::warn!(error = %e, "metadata transaction still conflicting after {MAX_ATTEMPTS} attempts");
        return false;
    }
    tokio::time::sleep(backoff_delay(attempt)).await;
    true
}

/// Computed outside the future: the thread-local generator must not live across an await.
fn backoff_delay(attempt: u32) -> Duration {
    use rand::RngExt;
    let cap = 2u64.saturating_pow(attempt.min(8)).min(200);
    Duration::from_millis(rand::rng().random_range(1..=cap))
}

impl ToSql for Param<'_> {
    fn to_sql(
        &self,
        ty: &Type,
        out: &mut BytesMut,
    ) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        match *self {
            Param::Null => Ok(IsNull::Yes),
            Param::Int(v) if *ty == Type::INT4 => i32::try_from(v)?.to_sql(ty, out),
            // A row copied from SQLite holds booleans as integers.
            Param::Int(v) if *ty == Type::BOOL => (v != 0).to_sql(ty, out),
            Param::Int(v) => v.to_sql(ty, out),
            Param::Bool(b) if *ty == Type::INT8 => i64::from(b).to_sql(ty, out),
            Param::Bool(b) => b.to_sql(ty, out),
            Param::Text(s) => s.to_sql(ty, out),
        }
    }

    fn accepts(_: &Type) -> bool {
        true
    }

    to_sql_checked!();
}

fn row(r: &tokio_postgres::Row) -> Result<Row, MetaError> {
    let mut out = Vec::with_capacity(r.len());
    for (i, c) in r.columns().iter().enumerate() {
        let t = c.type_();
        let v = if *t == Type::INT8 {
            r.try_get::<_, Option<i64>>(i)?.map(Value::Int)
        } else if *t == Type::INT4 {
            r.try_get::<_, Option<i32>>(i)?
                .map(|v| Value::Int(v.into()))
        } else if *t == Type::INT2 {
            r.try_get::<_, Option<i16>>(i)?
                .map(|v| Value::Int(v.into()))
        } else if *t == Type::BOOL {
            r.try_get::<_, Option<bool>>(i)?.map(Value::Bool)
        } else if *t == Type::TEXT || *t == Type::VARCHAR || *t == Type::NAME || *t == Type::BPCHAR
        {
            r.try_get::<_, Option<String>>(i)?.map(Value::Text)
        } else if *t == Type::VOID {
            None
        } else {
            return Err(MetaError::Corrupt(format!(
                "column {} has unexpected type {t}",
                c.name()
            )));
        };
        out.push(v.unwrap_or(Value::Null));
    }
    Ok(Row(out))
}

type Params<'a> = Vec<&'a (dyn ToSql + Sync)>;

fn params<'a>(p: &'a [Param<'a>]) -> Params<'a> {
    p.iter().map(|p| p as &(dyn ToSql + Sync)).collect()
}

/// A pooled connection, or a transaction on one.
pub enum PgConn<'a> {
    Client(&'a deadpool_postgres::Client),
    Tx(&'a deadpool_postgres::Transaction<'a>),
}

impl PgConn<'_> {
    async fn prepare(&self, sql: &str) -> Result<tokio_postgres::Statement, MetaError> {
        Ok(match self {
            PgConn::Client(c) => c.prepare_cached(sql).await?,
            PgConn::Tx(t) => t.prepare_cached(sql).await?,
        })
    }

    pub(super) async fn query(&self, sql: &str, p: &[Param<'_>]) -> Result<Vec<Row>, MetaError> {
        let st = self.prepare(sql).await?;
        let rows = match self {
            PgConn::Client(c) => c.query(&st, &params(p)).await?,
            PgConn::Tx(t) => t.query(&st, &params(p)).await?,
        };
        rows.iter().map(row).collect()
    }

    pub(super) async fn execute(&self, sql: &str, p: &[Param<'_>]) -> Result<u64, MetaError> {
        let st = self.prepare(sql).await?;
        Ok(match self {
            PgConn::Client(c) => c.execute(&st, &params(p)).await?,
            PgConn::Tx(t) => t.execute(&st, &params(p)).await?,
        })
    }

    pub(super) async fn lock(&self, locks: &[Lock<'_>]) -> Result<(), MetaError> {
        let mut keys: Vec<(LockSpace, i32)> = locks
            .iter()
            .map(|l| match *l {
                Lock::Digest(d) => (LockSpace::Digest, digest_key(d)),
                Lock::Tag(repo, tag) => (LockSpace::Tag, text_key(&format!("{repo}\0{tag}"))),
            })
            .collect();
        keys.sort();
        keys.dedup();
        for (space, key) in keys {
            self.execute(
                "SELECT pg_advisory_xact_lock($1, $2)",
                &[Param::Int(space as i64), Param::Int(key.into())],
            )
            .await?;
        }
        Ok(())
    }
}

/// The advisory-lock key of a digest: its first 32 bits (digests are uniformly distributed already; two digests
/// sharing a key only wait for each other).
fn digest_key(digest: &str) -> i32 {
    let hex = digest.split_once(':').map_or(digest, |(_, h)| h);
    match hex.get(..8).map(|h| u32::from_str_radix(h, 16)) {
        Some(Ok(k)) => k as i32,
        _ => text_key(digest),
    }
}

/// The advisory-lock key of any other text (first 32 bits of its SHA-256).
fn text_key(s: &str) -> i32 {
    use sha2::Digest as _;
    let h = sha2::Sha256::digest(s.as_bytes());
    i32::from_be_bytes([h[0], h[1], h[2], h[3]])
}

/// Where and how to connect.
#[derive(Debug, Clone)]
pub struct PgSettings {
    /// `postgres://user:password@host:port/database?…` or a key=value connection string.
    pub url: String,
    /// Connections for transactions; as many again at most for held digest locks and leases.
    pub pool_size: usize,
}

pub struct PgDb {
    pool: Pool,
    /// Connections that hold session-level advisory locks (digest locks, leases). Separate from `pool`, so holders
    /// of digest locks, which then need a connection for their transaction, can never exhaust it.
    lock_pool: Pool,
    /// Connections holding mirror download leases, for as long as a download runs. Apart from `lock_pool`, since
    /// a lease holder takes a digest lock to publish; `fetch_slots` keeps requests for them from ever waiting.
    fetch_pool: Pool,
    fetch_slots: std::sync::Arc<tokio::sync::Semaphore>,
    migrated: tokio::sync::OnceCell<()>,
}

/// How long connecting, and waiting for a pooled connection, may take before the database counts as unavailable
/// (a 503 to the client) instead of holding the request.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

fn pool(config: &tokio_postgres::Config, size: usize) -> Result<Pool, MetaError> {
    let manager = Manager::from_config(
        config.clone(),
        NoTls,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    Pool::builder(manager)
        .max_size(size.max(1))
        .runtime(deadpool_postgres::Runtime::Tokio1)
        .wait_timeout(Some(CONNECT_TIMEOUT))
        .create_timeout(Some(CONNECT_TIMEOUT))
        .build()
        .map_err(|e| MetaError::other(format!("cannot build the PostgreSQL pool: {e}")))
}

async fn migrate(client: &mut tokio_postgres::Client) -> Result<(), MetaError> {
    let tx = client.transaction().await?;
    // Replicas starting together serialise here, so exactly one applies each migration.
    tx.execute(
        "SELECT pg_advisory_xact_lock($1, 0)",
        &[&(LockSpace::Migration as i32)],
    )
    .await?;
    tx.batch_execute("CREATE TABLE IF NOT EXISTS berth_schema (version INTEGER NOT NULL)")
        .await?;
    let stored: Option<i32> = tx
        .query_opt("SELECT version FROM berth_schema", &[])
        .await?
        .map(|r| r.get(0));
    if stored.is_none() {
        tx.execute("INSERT INTO berth_schema (version) VALUES (0)", &[])
            .await?;
    }
    let stored = stored.unwrap_or(0);
    let version = schema::postgres_version(stored.into());
    if version != i64::from(stored) {
        tx.execute("UPDATE berth_schema SET version = $1", &[&(version as i32)])
            .await?;
    }
    for (v, sql) in schema::pending(schema::Backend::Postgres, version)? {
        tx.batch_execute(&sql).await?;
        tx.execute("UPDATE berth_schema SET version = $1", &[&(v as i32)])
            .await?;
    }
    tx.commit().await?;
    Ok(())
}

impl PgDb {
    /// Prepares the pools. Nothing connects yet: the first operation connects and migrates the schema, so this can
    /// be called outside an async context, like `SqliteDb::open`.
    pub fn open(settings: &PgSettings) -> Result<PgDb, MetaError> {
        let mut config: tokio_postgres::Config = settings.url.parse().map_err(|e| {
            // The parser's message never contains the URL, so the password stays out of logs.
            MetaError::other(format!("invalid PostgreSQL URL: {e}"))
        })?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(CONNECT_TIMEOUT);
        }
        // A peer that vanished (host down, network cut) is noticed by the kernel instead of never.
        config
            .keepalives(true)
            .keepalives_idle(Duration::from_secs(30));
        Ok(PgDb {
            pool: pool(&config, settings.pool_size)?,
            lock_pool: pool(&config, settings.pool_size)?,
            fetch_pool: pool(&config, settings.pool_size)?,
            fetch_slots: std::sync::Arc::new(tokio::sync::Semaphore::new(
                settings.pool_size.max(1),
            )),
            migrated: tokio::sync::OnceCell::new(),
        })
    }

    /// Connects and applies pending migrations now (start-up), instead of at the first request.
    pub async fn ready(&self) -> Result<(), MetaError> {
        self.migrated
            .get_or_try_init(|| async {
                let mut conn = Self::get(&self.pool).await?;
                migrate(&mut conn).await
            })
            .await
            .map(|_| ())
    }

    async fn get(pool: &Pool) -> Result<deadpool_postgres::Object, MetaError> {
        pool.get().await.map_err(|e| match e {
            deadpool_postgres::PoolError::Backend(e) => MetaError::from(e),
            other => MetaError::Unavailable(format!("PostgreSQL connection pool: {other}")),
        })
    }

    /// A pooled connection of a migrated database.
    pub async fn conn(&self) -> Result<deadpool_postgres::Object, MetaError> {
        self.ready().await?;
        Self::get(&self.pool).await
    }

    /// Takes a session-level advisory lock on a dedicated connection, waiting for it (`wait`) or not; `None` when
    /// not waiting and another session holds it.
    async fn session_lock(
        &self,
        pool: &Pool,
        space: LockSpace,
        key: i32,
        wait: bool,
    ) -> Result<Option<SessionLock>, MetaError> {
        self.ready().await?;
        let conn = Self::get(pool).await?;
        // From here on the guard owns the connection: if this future is dropped while PostgreSQL still queues the
        // request, the guard closes the session, so a lock granted later cannot outlive its requester.
        let mut guard = SessionLock {
            conn: Some(conn),
            slot: None,
            space: space as i32,
            key,
            held: false,
        };
        let Some(c) = guard.conn.as_ref() else {
            return Ok(None);
        };
        let granted = if wait {
            c.execute("SELECT pg_advisory_lock($1, $2)", &[&guard.space, &key])
                .await?;
            true
        } else {
            c.query_one("SELECT pg_try_advisory_lock($1, $2)", &[&guard.space, &key])
                .await?
                .try_get::<_, bool>(0)?
        };
        guard.held = granted;
        if !granted {
            // Nothing is held on it: back to the pool rather than closed (waiting replicas poll for leases).
            drop(guard.conn.take());
            return Ok(None);
        }
        Ok(Some(guard))
    }

    /// The registry's digest lock across replicas; waits.
    pub async fn lock_digest(&self, digest: &str) -> Result<Option<StoreLock>, MetaError> {
        let lock = self
            .session_lock(
                &self.lock_pool,
                LockSpace::DigestSession,
                digest_key(digest),
                true,
            )
            .await?;
        Ok(lock.map(|l| StoreLock::new(Box::new(l))))
    }

    /// A maintenance job's lease, or `None` while another replica holds it.
    pub async fn try_lease(&self, job: &str) -> Result<Option<StoreLock>, MetaError> {
        let lock = self
            .session_lock(&self.lock_pool, LockSpace::Lease, text_key(job), false)
            .await?;
        Ok(lock.map(|l| StoreLock::new(Box::new(l))))
    }

    /// A mirror download's lease (see `Coordination::try_lease_fetch`).
    pub async fn try_lease_fetch(&self, key: &str) -> Result<FetchLease, MetaError> {
        // A free slot or nothing: a request must never queue behind downloads of other blobs for a lease.
        let Ok(slot) = self.fetch_slots.clone().try_acquire_owned() else {
            return Ok(FetchLease::NotShared);
        };
        let lock = self
            .session_lock(&self.fetch_pool, LockSpace::Fetch, text_key(key), false)
            .await?;
        Ok(match lock {
            Some(mut lock) => {
                lock.slot = Some(slot);
                FetchLease::Granted(StoreLock::new(Box::new(lock)))
            }
            None => FetchLease::HeldElsewhere,
        })
    }
}

/// A session-level advisory lock held on its own pooled connection; dropping it unlocks and returns the connection.
struct SessionLock {
    conn: Option<deadpool_postgres::Object>,
    /// For a mirror download lease: its slot among `fetch_slots`, given back with the connection.
    slot: Option<tokio::sync::OwnedSemaphorePermit>,
    space: i32,
    key: i32,
    held: bool,
}

impl Drop for SessionLock {
    fn drop(&mut self) {
        let Some(conn) = self.conn.take() else { return };
        let slot = self.slot.take();
        match tokio::runtime::Handle::try_current() {
            Ok(rt) if self.held => {
                let (space, key) = (self.space, self.key);
                rt.spawn(async move {
                    let unlocked = conn
                        .query_one("SELECT pg_advisory_unlock($1, $2)", &[&space, &key])
                        .await
                        .and_then(|r| r.try_get::<_, bool>(0));
                    if !matches!(unlocked, Ok(true)) {
                        // Closing the session releases whatever it holds.
                        drop(deadpool_postgres::Object::take(conn));
                    }
                    drop(slot);
                });
            }
            // Not granted (abandoned while waiting) or no runtime to unlock on: close the session instead.
            _ => drop(deadpool_postgres::Object::take(conn)),
        }
    }
}
