//! PostgreSQL metadata store (scale-out shape: several replicas share one database; docs/scale-out.md).
//!
//! SQLite gets its guarantees from one writer: every invariant-bearing write is a `BEGIN IMMEDIATE` transaction, so
//! a check and the write that depends on it never interleave with another write. Here transactions run at READ
//! COMMITTED, and the same exclusion is rebuilt with explicit locks taken first in each transaction:
//!
//! - a transaction-scoped advisory lock per digest it checks or changes (`LockSpace::Digest`): a manifest push and a
//!   garbage-collection deletion of one of its references, a mount and the deletion of its source, a manifest
//!   delete and an index push naming it, all serialise on the digest. Because each statement at READ COMMITTED
//!   reads a fresh snapshot, the checks made after the lock see everything committed by the previous holder.
//! - a transaction-scoped advisory lock per tag written (`LockSpace::Tag`), so two pushes cannot both "create" an
//!   immutable tag.
//! - `FOR KEY SHARE` on the repository row a write goes into, against `gc_delete_empty_repositories`, which locks
//!   the rows it deletes `FOR UPDATE` and re-checks emptiness after.
//!
//! Locks are taken in one global order (space, then key), so transactions do not deadlock among themselves; a
//! deadlock or serialization failure that happens anyway (concurrent row updates in another order) is retried.

mod auth;
mod maint;
mod schema;
mod ui;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::{GenericClient, Manager, ManagerConfig, Pool, RecyclingMethod};
use parking_lot::Mutex;
use tokio_postgres::types::ToSql;
use tokio_postgres::{NoTls, Row};

use super::{
    Eviction, FetchLease, ManifestRecord, ManifestRejection, MetaError, MetadataStore, NewManifest,
    Page, RefKind, RemoveOutcome, StoreLock, UploadRecord, now,
};
use crate::oci::{Digest, RepoName, name::Tag};

/// Namespaces of advisory-lock keys (the first of the two `int4` keys), so locks of different purposes never meet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
#[repr(i32)]
pub(super) enum LockSpace {
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
    /// Session-scoped, mirror downloads (one replica fetches a blob from the upstream, `try_lease_fetch`).
    Fetch = 0x6265_0006,
}

/// Attempts of a transaction that fails with a serialization failure or a deadlock.
const MAX_ATTEMPTS: u32 = 16;

/// Errors inside a transaction, kept apart until the retry decision.
#[derive(Debug)]
pub(super) enum PgError {
    Db(tokio_postgres::Error),
    Meta(MetaError),
}

impl From<tokio_postgres::Error> for PgError {
    fn from(e: tokio_postgres::Error) -> Self {
        PgError::Db(e)
    }
}

impl From<MetaError> for PgError {
    fn from(e: MetaError) -> Self {
        PgError::Meta(e)
    }
}

impl PgError {
    /// Serialization failure (40001) or deadlock (40P01): the transaction did nothing and may simply run again.
    fn retryable(&self) -> bool {
        use tokio_postgres::error::SqlState;
        match self {
            PgError::Db(e) => e.code().is_some_and(|c| {
                *c == SqlState::T_R_SERIALIZATION_FAILURE || *c == SqlState::T_R_DEADLOCK_DETECTED
            }),
            PgError::Meta(_) => false,
        }
    }
}

impl From<PgError> for MetaError {
    fn from(e: PgError) -> Self {
        match e {
            PgError::Db(e) => e.into(),
            PgError::Meta(e) => e,
        }
    }
}

impl From<tokio_postgres::Error> for MetaError {
    fn from(e: tokio_postgres::Error) -> Self {
        // `Display` of a server error is only "db error"; the detail is in the source.
        match e.as_db_error() {
            // Class 08 (connection exception), 53 (insufficient resources: too many connections, disk full) and
            // 57P0x (the server is shutting down or starting): the database is there but cannot serve now.
            Some(db) => {
                let code = db.code().code();
                let msg = format!("{code}: {}", db.message());
                if code.starts_with("08") || code.starts_with("53") || code.starts_with("57P") {
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

/// Pins an async block's output type, so `?` inside it knows what to convert into.
pub(super) fn typed<T, F: std::future::Future<Output = Result<T, PgError>>>(f: F) -> F {
    f
}

/// Runs `$body` (a block using `$tx`, a `&Transaction` at READ COMMITTED) in a transaction and commits it, running
/// it again after a serialization failure or deadlock. The body must be safe to repeat: it only touches the database.
macro_rules! write_tx {
    ($store:expr, |$tx:ident| $body:block) => {{
        let mut attempt: u32 = 0;
        loop {
            attempt += 1;
            let mut conn = $store.conn().await?;
            let result = async {
                let tx = conn.transaction().await?;
                let out = $crate::meta::postgres::typed(async {
                    let $tx = &tx;
                    $body
                })
                .await?;
                tx.commit().await?;
                Ok::<_, $crate::meta::postgres::PgError>(out)
            }
            .await;
            match result {
                Err(e) if e.retryable_now(attempt) => {
                    drop(conn);
                    $crate::meta::postgres::backoff(attempt).await;
                }
                other => break other.map_err($crate::meta::MetaError::from),
            }
        }
    }};
}
pub(super) use write_tx;

impl PgError {
    pub(super) fn retryable_now(&self, attempt: u32) -> bool {
        if !self.retryable() {
            return false;
        }
        if attempt >= MAX_ATTEMPTS {
            tracing::warn!(error = ?self, "metadata transaction still conflicting after {MAX_ATTEMPTS} attempts");
            return false;
        }
        true
    }
}

/// Random pause before a retry, growing with the attempt, so conflicting transactions stop meeting.
pub(super) async fn backoff(attempt: u32) {
    tokio::time::sleep(backoff_delay(attempt)).await;
}

/// Computed outside the future: the thread-local generator must not live across an await.
fn backoff_delay(attempt: u32) -> Duration {
    use rand::RngExt;
    let cap = 2u64.saturating_pow(attempt.min(8)).min(200);
    Duration::from_millis(rand::rng().random_range(1..=cap))
}

/// Repositories whose tag list is kept in memory at most (the cache is dropped whole when full).
const TAG_LIST_CACHE_REPOS: usize = 1024;

/// Tag lists by repository name, with the repository id and `tag_version` they were read at. The id matters: a
/// repository deleted by GC and pushed again is a new row whose version counts from zero again.
type TagLists = Arc<Mutex<HashMap<String, ((i64, i64), Arc<Vec<String>>)>>>;

/// Where and how to connect.
#[derive(Debug, Clone)]
pub struct PgSettings {
    /// `postgres://user:password@host:port/database?…` or a key=value connection string.
    pub url: String,
    /// Connections for transactions; as many again at most for held digest locks and leases.
    pub pool_size: usize,
}

pub struct PgMetadataStore {
    pool: Pool,
    /// Connections that hold session-level advisory locks (digest locks, leases). Separate from `pool`, so holders
    /// of digest locks, which then need a connection for their transaction, can never exhaust it.
    lock_pool: Pool,
    /// Connections holding mirror download leases, for as long as a download runs. Apart from `lock_pool`, since
    /// a lease holder takes a digest lock to publish; `fetch_slots` keeps requests for them from ever waiting.
    fetch_pool: Pool,
    fetch_slots: Arc<tokio::sync::Semaphore>,
    migrated: tokio::sync::OnceCell<()>,
    tag_lists: TagLists,
}

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
        .build()
        .map_err(|e| MetaError::other(format!("cannot build the PostgreSQL pool: {e}")))
}

impl PgMetadataStore {
    /// Prepares the pools. Nothing connects yet: the first operation connects and migrates the schema, so this can
    /// be called outside an async context, like `SqliteMetadataStore::open`.
    pub fn open(settings: &PgSettings) -> Result<PgMetadataStore, MetaError> {
        let config: tokio_postgres::Config = settings.url.parse().map_err(|e| {
            // The parser's message never contains the URL, so the password stays out of logs.
            MetaError::other(format!("invalid PostgreSQL URL: {e}"))
        })?;
        Ok(PgMetadataStore {
            pool: pool(&config, settings.pool_size)?,
            lock_pool: pool(&config, settings.pool_size)?,
            fetch_pool: pool(&config, settings.pool_size)?,
            fetch_slots: Arc::new(tokio::sync::Semaphore::new(settings.pool_size.max(1))),
            migrated: tokio::sync::OnceCell::new(),
            tag_lists: Default::default(),
        })
    }

    /// Connects and applies pending migrations now (start-up), instead of at the first request.
    pub async fn ready(&self) -> Result<(), MetaError> {
        self.migrated
            .get_or_try_init(|| async {
                let mut conn = self.get(&self.pool).await?;
                schema::migrate(&mut conn).await.map_err(MetaError::from)
            })
            .await
            .map(|_| ())
    }

    async fn get(&self, pool: &Pool) -> Result<deadpool_postgres::Object, MetaError> {
        pool.get().await.map_err(|e| match e {
            deadpool_postgres::PoolError::Backend(e) => MetaError::from(e),
            other => MetaError::Unavailable(format!("PostgreSQL connection pool: {other}")),
        })
    }

    /// A pooled connection of a migrated database.
    pub(super) async fn conn(&self) -> Result<deadpool_postgres::Object, MetaError> {
        self.ready().await?;
        self.get(&self.pool).await
    }

    /// Takes a session-level advisory lock on a dedicated connection, waiting for it (`wait`) or not; `None` when
    /// not waiting and another session holds it.
    pub(super) async fn session_lock(
        &self,
        space: LockSpace,
        key: i32,
        wait: bool,
    ) -> Result<Option<SessionLock>, MetaError> {
        self.ready().await?;
        let conn = self.get(&self.lock_pool).await?;
        Self::lock_on(conn, space, key, wait).await
    }

    /// Takes a session-level advisory lock on `conn` (see `session_lock`).
    async fn lock_on(
        conn: deadpool_postgres::Object,
        space: LockSpace,
        key: i32,
        wait: bool,
    ) -> Result<Option<SessionLock>, MetaError> {
        // From here on the guard owns the connection: if this future is dropped while PostgreSQL still queues the
        // request, the guard closes the session, so a lock granted later cannot outlive its requester.
        let mut guard = SessionLock {
            conn: Some(conn),
            _slot: None,
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
}

/// A session-level advisory lock held on its own pooled connection; dropping it unlocks and returns the connection.
pub(super) struct SessionLock {
    conn: Option<deadpool_postgres::Object>,
    /// For a mirror download lease: its slot among `fetch_slots`, given back with the connection.
    _slot: Option<tokio::sync::OwnedSemaphorePermit>,
    space: i32,
    key: i32,
    held: bool,
}

impl Drop for SessionLock {
    fn drop(&mut self) {
        let Some(conn) = self.conn.take() else { return };
        let runtime = tokio::runtime::Handle::try_current();
        match runtime {
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
                });
            }
            // Not granted (abandoned while waiting) or no runtime to unlock on: close the session instead.
            _ => drop(deadpool_postgres::Object::take(conn)),
        }
    }
}

/// The advisory-lock key of a digest: its first 32 bits (digests are uniformly distributed already; two digests
/// sharing a key only wait for each other).
pub(super) fn digest_key(digest: &str) -> i32 {
    let hex = digest.split_once(':').map_or(digest, |(_, h)| h);
    match hex.get(..8).map(|h| u32::from_str_radix(h, 16)) {
        Some(Ok(k)) => k as i32,
        _ => text_key(digest),
    }
}

/// The advisory-lock key of any other text (first 32 bits of its SHA-256).
pub(super) fn text_key(s: &str) -> i32 {
    use sha2::Digest as _;
    let h = sha2::Sha256::digest(s.as_bytes());
    i32::from_be_bytes([h[0], h[1], h[2], h[3]])
}

/// Takes transaction-scoped advisory locks in the global order: sorted by (space, key), each once.
pub(super) async fn lock_keys<C: GenericClient>(
    c: &C,
    mut keys: Vec<(LockSpace, i32)>,
) -> Result<(), PgError> {
    keys.sort();
    keys.dedup();
    let st = c
        .prepare_cached("SELECT pg_advisory_xact_lock($1, $2)")
        .await?;
    for (space, key) in keys {
        c.execute(&st, &[&(space as i32), &key]).await?;
    }
    Ok(())
}

/// Locks these digests for the rest of the transaction (see the module comment).
pub(super) async fn lock_digests<C: GenericClient>(c: &C, digests: &[&str]) -> Result<(), PgError> {
    lock_keys(
        c,
        digests
            .iter()
            .map(|d| (LockSpace::Digest, digest_key(d)))
            .collect(),
    )
    .await
}

type Params<'a> = &'a [&'a (dyn ToSql + Sync)];

pub(super) async fn query<C: GenericClient>(
    c: &C,
    sql: &str,
    p: Params<'_>,
) -> Result<Vec<Row>, tokio_postgres::Error> {
    let st = c.prepare_cached(sql).await?;
    c.query(&st, p).await
}

pub(super) async fn query_opt<C: GenericClient>(
    c: &C,
    sql: &str,
    p: Params<'_>,
) -> Result<Option<Row>, tokio_postgres::Error> {
    let st = c.prepare_cached(sql).await?;
    c.query_opt(&st, p).await
}

pub(super) async fn query_one<C: GenericClient>(
    c: &C,
    sql: &str,
    p: Params<'_>,
) -> Result<Row, tokio_postgres::Error> {
    let st = c.prepare_cached(sql).await?;
    c.query_one(&st, p).await
}

pub(super) async fn execute<C: GenericClient>(
    c: &C,
    sql: &str,
    p: Params<'_>,
) -> Result<u64, tokio_postgres::Error> {
    let st = c.prepare_cached(sql).await?;
    c.execute(&st, p).await
}

/// The first column of each row.
pub(super) fn column<T: for<'a> tokio_postgres::types::FromSql<'a>>(
    rows: Vec<Row>,
) -> Result<Vec<T>, tokio_postgres::Error> {
    rows.iter().map(|r| r.try_get(0)).collect()
}

pub(super) async fn repo_id<C: GenericClient>(
    c: &C,
    repo: &str,
) -> Result<Option<i64>, tokio_postgres::Error> {
    query_opt(c, "SELECT id FROM repository WHERE name = $1", &[&repo])
        .await?
        .map(|r| r.try_get(0))
        .transpose()
}

/// The repository's id, creating it (private, or cached for `mirror`) when missing. The row is locked `FOR KEY
/// SHARE` until commit, so `gc_delete_empty_repositories` cannot delete it under the rows this transaction adds.
async fn ensure_repo<C: GenericClient>(
    c: &C,
    repo: &str,
    mirror: Option<&str>,
) -> Result<i64, PgError> {
    let kind = if mirror.is_some() {
        "mirror"
    } else {
        "private"
    };
    for _ in 0..3 {
        if let Some(r) = query_opt(
            c,
            "SELECT id FROM repository WHERE name = $1 FOR KEY SHARE",
            &[&repo],
        )
        .await?
        {
            return Ok(r.try_get(0)?);
        }
        // A concurrent creator makes this insert do nothing; the next select then sees its row.
        if let Some(r) = query_opt(
            c,
            "INSERT INTO repository (name, kind, mirror, created_at) VALUES ($1, $2, $3, $4)
             ON CONFLICT (name) DO NOTHING RETURNING id",
            &[&repo, &kind, &mirror, &now()],
        )
        .await?
        {
            return Ok(r.try_get(0)?);
        }
    }
    Err(MetaError::other(format!(
        "repository {repo:?} keeps disappearing while being created"
    ))
    .into())
}

async fn insert_blob<C: GenericClient>(
    c: &C,
    digest: &str,
    size: u64,
) -> Result<(), tokio_postgres::Error> {
    execute(
        c,
        "INSERT INTO blob (digest, size, created_at, last_access) VALUES ($1, $2, $3, $3)
         ON CONFLICT (digest) DO NOTHING",
        &[&digest, &(size as i64), &now()],
    )
    .await?;
    Ok(())
}

/// Inserts a manifest's blob row and its manifest row (both idempotent: same digest, same bytes).
async fn insert_manifest<C: GenericClient>(
    c: &C,
    repo: i64,
    rec: &ManifestRecord,
    t: i64,
) -> Result<(), tokio_postgres::Error> {
    let digest = rec.digest.to_string();
    insert_blob(c, &digest, rec.size).await?;
    execute(
        c,
        "INSERT INTO manifest (repo, digest, media_type, artifact_type, subject, size, annotations, created_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (repo, digest) DO NOTHING",
        &[
            &repo,
            &digest,
            &rec.media_type,
            &rec.artifact_type,
            &rec.subject.as_ref().map(|s| s.to_string()),
            &(rec.size as i64),
            &rec.annotations,
            &t,
        ],
    )
    .await?;
    Ok(())
}

/// Points a tag at a manifest (creating or moving it) and stamps the time.
async fn set_tag<C: GenericClient>(
    c: &C,
    repo: i64,
    tag: &str,
    digest: &str,
    t: i64,
) -> Result<(), tokio_postgres::Error> {
    execute(
        c,
        "INSERT INTO tag (repo, name, manifest, updated_at) VALUES ($1, $2, $3, $4)
         ON CONFLICT (repo, name) DO UPDATE SET manifest = excluded.manifest, updated_at = excluded.updated_at",
        &[&repo, &tag, &digest, &t],
    )
    .await?;
    Ok(())
}

/// Records that a blob's row is gone and its bytes are to be deleted (see `maint::gc`).
pub(super) async fn tombstone<C: GenericClient>(
    c: &C,
    digest: &str,
) -> Result<(), tokio_postgres::Error> {
    execute(
        c,
        "INSERT INTO blob_tombstone (digest, deleted_at) VALUES ($1, $2)
         ON CONFLICT (digest) DO UPDATE SET deleted_at = excluded.deleted_at",
        &[&digest, &now()],
    )
    .await?;
    Ok(())
}

/// Makes a blob visible in a repository (idempotent); linking again renews the link's grace period.
async fn link_blob<C: GenericClient>(
    c: &C,
    repo: i64,
    digest: &str,
) -> Result<(), tokio_postgres::Error> {
    execute(
        c,
        "INSERT INTO repo_blob (repo, digest, created_at) VALUES ($1, $2, $3)
         ON CONFLICT (repo, digest) DO UPDATE SET created_at = excluded.created_at",
        &[&repo, &digest, &now()],
    )
    .await?;
    Ok(())
}

pub(super) use super::sqlite::parse_digest;

pub(super) const MANIFEST_COLUMNS: &str =
    "m.digest, m.media_type, m.artifact_type, m.subject, m.size, m.annotations";

pub(super) fn to_record(r: &Row) -> Result<ManifestRecord, PgError> {
    let subject: Option<String> = r.try_get(3)?;
    Ok(ManifestRecord {
        digest: parse_digest(r.try_get(0)?)?,
        media_type: r.try_get(1)?,
        artifact_type: r.try_get(2)?,
        subject: subject.map(parse_digest).transpose()?,
        size: r.try_get::<_, i64>(4)? as u64,
        annotations: r.try_get(5)?,
    })
}

fn to_records(rows: Vec<Row>) -> Result<Vec<ManifestRecord>, MetaError> {
    rows.iter()
        .map(|r| to_record(r).map_err(MetaError::from))
        .collect()
}

fn tag_lock(repo: &str, tag: &str) -> (LockSpace, i32) {
    (LockSpace::Tag, text_key(&format!("{repo}\0{tag}")))
}

#[async_trait::async_trait]
impl MetadataStore for PgMetadataStore {
    async fn commit_blob(
        &self,
        repo: &RepoName,
        digest: &Digest,
        size: u64,
    ) -> Result<(), MetaError> {
        let (repo, digest) = (repo.as_str(), digest.to_string());
        write_tx!(self, |tx| {
            lock_digests(tx, &[&digest]).await?;
            let id = ensure_repo(tx, repo, None).await?;
            insert_blob(tx, &digest, size).await?;
            link_blob(tx, id, &digest).await?;
            Ok(())
        })
    }

    async fn repo_blob(&self, repo: &RepoName, digest: &Digest) -> Result<Option<u64>, MetaError> {
        let c = self.conn().await?;
        let row = query_opt(
            &c,
            "SELECT b.size FROM repo_blob rb JOIN repository r ON r.id = rb.repo JOIN blob b ON b.digest = rb.digest
             WHERE r.name = $1 AND rb.digest = $2",
            &[&repo.as_str(), &digest.to_string()],
        )
        .await?;
        Ok(row
            .map(|r| r.try_get::<_, i64>(0))
            .transpose()?
            .map(|s| s as u64))
    }

    async fn mount_blob(
        &self,
        repo: &RepoName,
        from: Option<&RepoName>,
        digest: &Digest,
    ) -> Result<Option<u64>, MetaError> {
        let (repo, from, digest) = (repo.as_str(), from.map(|f| f.as_str()), digest.to_string());
        write_tx!(self, |tx| {
            lock_digests(tx, &[&digest]).await?;
            let size = match from {
                Some(from) => {
                    query_opt(
                        tx,
                        "SELECT b.size FROM repo_blob rb JOIN repository r ON r.id = rb.repo
                         JOIN blob b ON b.digest = rb.digest WHERE r.name = $1 AND rb.digest = $2",
                        &[&from, &digest],
                    )
                    .await?
                }
                None => {
                    query_opt(
                        tx,
                        "SELECT b.size FROM blob b WHERE b.digest = $1
                         AND EXISTS (SELECT 1 FROM repo_blob rb WHERE rb.digest = b.digest)",
                        &[&digest],
                    )
                    .await?
                }
            };
            let Some(size) = size.map(|r| r.try_get::<_, i64>(0)).transpose()? else {
                return Ok(None);
            };
            let id = ensure_repo(tx, repo, None).await?;
            link_blob(tx, id, &digest).await?;
            Ok(Some(size as u64))
        })
    }

    async fn unlink_blob(
        &self,
        repo: &RepoName,
        digest: &Digest,
    ) -> Result<RemoveOutcome, MetaError> {
        let (repo, digest) = (repo.as_str(), digest.to_string());
        write_tx!(self, |tx| {
            lock_digests(tx, &[&digest]).await?;
            let Some(id) = repo_id(tx, repo).await? else {
                return Ok(RemoveOutcome::NotFound);
            };
            let user = query_opt(
                tx,
                "SELECT manifest FROM manifest_ref WHERE repo = $1 AND child = $2 AND kind IN ('config', 'layer') LIMIT 1",
                &[&id, &digest],
            )
            .await?;
            if let Some(m) = user {
                return Ok(RemoveOutcome::ReferencedBy(parse_digest(m.try_get(0)?)?));
            }
            let n = execute(
                tx,
                "DELETE FROM repo_blob WHERE repo = $1 AND digest = $2",
                &[&id, &digest],
            )
            .await?;
            Ok(if n == 0 {
                RemoveOutcome::NotFound
            } else {
                RemoveOutcome::Removed
            })
        })
    }

    async fn put_manifest(
        &self,
        m: NewManifest,
    ) -> Result<Result<(), ManifestRejection>, MetaError> {
        let digest = m.record.digest.to_string();
        let refs: Vec<String> = m.refs.iter().map(|r| r.digest.to_string()).collect();
        let mut locks: Vec<(LockSpace, i32)> = std::iter::once(&digest)
            .chain(&refs)
            .map(|d| (LockSpace::Digest, digest_key(d)))
            .collect();
        locks.extend(m.tags.iter().map(|t| tag_lock(m.repo.as_str(), t.as_str())));
        let m = &m;
        write_tx!(self, |tx| {
            lock_keys(tx, locks.clone()).await?;
            // Nothing is written before every check passed, so a rejection commits nothing.
            let existing = query_opt(
                tx,
                "SELECT id FROM repository WHERE name = $1 FOR KEY SHARE",
                &[&m.repo.as_str()],
            )
            .await?
            .map(|r| r.try_get::<_, i64>(0))
            .transpose()?;
            let mut missing = Vec::new();
            for (r, d) in m.refs.iter().zip(&refs) {
                let actual = match existing {
                    None => None,
                    Some(id) => match r.kind {
                        RefKind::Config | RefKind::Layer => query_opt(
                            tx,
                            "SELECT b.size FROM repo_blob rb JOIN blob b ON b.digest = rb.digest
                                 WHERE rb.repo = $1 AND rb.digest = $2",
                            &[&id, d],
                        )
                        .await?,
                        RefKind::Child => {
                            query_opt(
                                tx,
                                "SELECT size FROM manifest WHERE repo = $1 AND digest = $2",
                                &[&id, d],
                            )
                            .await?
                        }
                    }
                    .map(|row| row.try_get::<_, i64>(0))
                    .transpose()?,
                };
                match actual {
                    None => missing.push(r.digest.clone()),
                    Some(a) if a as u64 != r.size => {
                        return Ok(Err(ManifestRejection::SizeMismatch {
                            digest: r.digest.clone(),
                            declared: r.size,
                            actual: a as u64,
                        }));
                    }
                    Some(_) => {}
                }
            }
            if !missing.is_empty() {
                missing.sort();
                missing.dedup();
                return Ok(Err(ManifestRejection::Missing(missing)));
            }
            if m.immutable_tags
                && let Some(id) = existing
            {
                for t in &m.tags {
                    let current = query_opt(
                        tx,
                        "SELECT manifest FROM tag WHERE repo = $1 AND name = $2",
                        &[&id, &t.as_str()],
                    )
                    .await?
                    .map(|r| r.try_get::<_, String>(0))
                    .transpose()?;
                    if current.is_some_and(|c| c != digest) {
                        return Ok(Err(ManifestRejection::TagImmutable(t.clone())));
                    }
                }
            }
            let id = match existing {
                Some(id) => id,
                None => ensure_repo(tx, m.repo.as_str(), None).await?,
            };
            let t = now();
            insert_manifest(tx, id, &m.record, t).await?;
            let ins = tx
                .prepare_cached(
                    "INSERT INTO manifest_ref (repo, manifest, child, kind) VALUES ($1, $2, $3, $4)
                     ON CONFLICT DO NOTHING",
                )
                .await?;
            for (r, d) in m.refs.iter().zip(&refs) {
                tx.execute(&ins, &[&id, &digest, d, &r.kind.as_str()])
                    .await?;
            }
            for tag in &m.tags {
                set_tag(tx, id, tag.as_str(), &digest, t).await?;
            }
            Ok(Ok(()))
        })
    }

    async fn manifest(
        &self,
        repo: &RepoName,
        digest: &Digest,
    ) -> Result<Option<ManifestRecord>, MetaError> {
        let c = self.conn().await?;
        let sql = format!(
            "SELECT {MANIFEST_COLUMNS} FROM manifest m JOIN repository r ON r.id = m.repo
             WHERE r.name = $1 AND m.digest = $2"
        );
        let row = query_opt(&c, &sql, &[&repo.as_str(), &digest.to_string()]).await?;
        Ok(row.map(|r| to_record(&r)).transpose()?)
    }

    async fn tagged_manifest(
        &self,
        repo: &RepoName,
        tag: &Tag,
    ) -> Result<Option<ManifestRecord>, MetaError> {
        let c = self.conn().await?;
        let sql = format!(
            "SELECT {MANIFEST_COLUMNS} FROM tag t JOIN repository r ON r.id = t.repo
             JOIN manifest m ON m.repo = t.repo AND m.digest = t.manifest WHERE r.name = $1 AND t.name = $2"
        );
        let row = query_opt(&c, &sql, &[&repo.as_str(), &tag.as_str()]).await?;
        Ok(row.map(|r| to_record(&r)).transpose()?)
    }

    async fn delete_manifest(
        &self,
        repo: &RepoName,
        digest: &Digest,
    ) -> Result<RemoveOutcome, MetaError> {
        let (repo, digest) = (repo.as_str(), digest.to_string());
        write_tx!(self, |tx| {
            lock_digests(tx, &[&digest]).await?;
            let Some(id) = repo_id(tx, repo).await? else {
                return Ok(RemoveOutcome::NotFound);
            };
            let exists = query_opt(
                tx,
                "SELECT 1 FROM manifest WHERE repo = $1 AND digest = $2",
                &[&id, &digest],
            )
            .await?
            .is_some();
            if !exists {
                return Ok(RemoveOutcome::NotFound);
            }
            let parent = query_opt(
                tx,
                "SELECT manifest FROM manifest_ref
                 WHERE repo = $1 AND child = $2 AND kind = 'child' AND manifest != $2 LIMIT 1",
                &[&id, &digest],
            )
            .await?;
            if let Some(p) = parent {
                return Ok(RemoveOutcome::ReferencedBy(parse_digest(p.try_get(0)?)?));
            }
            for sql in [
                "DELETE FROM tag WHERE repo = $1 AND manifest = $2",
                "DELETE FROM manifest_ref WHERE repo = $1 AND manifest = $2",
                "DELETE FROM manifest WHERE repo = $1 AND digest = $2",
            ] {
                execute(tx, sql, &[&id, &digest]).await?;
            }
            Ok(RemoveOutcome::Removed)
        })
    }

    async fn delete_tag(&self, repo: &RepoName, tag: &Tag) -> Result<bool, MetaError> {
        let c = self.conn().await?;
        let n = execute(
            &c,
            "DELETE FROM tag WHERE repo = (SELECT id FROM repository WHERE name = $1) AND name = $2",
            &[&repo.as_str(), &tag.as_str()],
        )
        .await?;
        Ok(n > 0)
    }

    async fn list_tags(
        &self,
        repo: &RepoName,
        page: &Page,
    ) -> Result<Option<Vec<String>>, MetaError> {
        let c = self.conn().await?;
        // Version first, then the list (a later snapshot): a list cached under a version is never older than that
        // version, so a cached list is stale only if the version moved, whichever replica moved it.
        let row = query_opt(
            &c,
            "SELECT id, tag_version FROM repository WHERE name = $1",
            &[&repo.as_str()],
        )
        .await?;
        let Some(row) = row else { return Ok(None) };
        let (id, version): (i64, i64) = (row.try_get(0)?, row.try_get(1)?);
        let cached = self
            .tag_lists
            .lock()
            .get(repo.as_str())
            .filter(|(v, _)| *v == (id, version))
            .map(|(_, t)| t.clone());
        let tags = match cached {
            Some(t) => t,
            None => {
                let rows = query(
                    &c,
                    "SELECT name FROM tag WHERE repo = $1 ORDER BY name",
                    &[&id],
                )
                .await?;
                let t = Arc::new(column::<String>(rows)?);
                let mut cache = self.tag_lists.lock();
                if cache.len() >= TAG_LIST_CACHE_REPOS {
                    cache.clear();
                }
                cache.insert(repo.to_string(), ((id, version), t.clone()));
                t
            }
        };
        let start = page
            .last
            .as_ref()
            .map_or(0, |l| tags.partition_point(|t| t <= l));
        let end = page
            .n
            .map_or(tags.len(), |n| tags.len().min(start.saturating_add(n)));
        Ok(Some(tags[start..end.max(start)].to_vec()))
    }

    async fn list_repositories(&self, page: &Page) -> Result<Vec<String>, MetaError> {
        let c = self.conn().await?;
        let rows = query(
            &c,
            "SELECT name FROM repository WHERE name > $1 ORDER BY name LIMIT $2",
            &[
                &page.last.clone().unwrap_or_default(),
                &page.n.map(|n| n as i64),
            ],
        )
        .await?;
        Ok(column(rows)?)
    }

    async fn referrers(
        &self,
        repo: &RepoName,
        subject: &Digest,
        artifact_type: Option<&str>,
    ) -> Result<Vec<ManifestRecord>, MetaError> {
        let c = self.conn().await?;
        let sql = format!(
            "SELECT {MANIFEST_COLUMNS} FROM manifest m JOIN repository r ON r.id = m.repo
             WHERE r.name = $1 AND m.subject = $2 AND ($3::text IS NULL OR m.artifact_type = $3) ORDER BY m.digest"
        );
        let rows = query(
            &c,
            &sql,
            &[&repo.as_str(), &subject.to_string(), &artifact_type],
        )
        .await?;
        to_records(rows)
    }

    async fn cache_manifest(
        &self,
        repo: &RepoName,
        mirror: &str,
        record: &ManifestRecord,
        tag: Option<&Tag>,
    ) -> Result<(), MetaError> {
        let digest = record.digest.to_string();
        let mut locks = vec![(LockSpace::Digest, digest_key(&digest))];
        locks.extend(tag.map(|t| tag_lock(repo.as_str(), t.as_str())));
        write_tx!(self, |tx| {
            lock_keys(tx, locks.clone()).await?;
            let id = ensure_repo(tx, repo.as_str(), Some(mirror)).await?;
            let t = now();
            insert_manifest(tx, id, record, t).await?;
            if let Some(tag) = tag {
                set_tag(tx, id, tag.as_str(), &digest, t).await?;
            }
            Ok(())
        })
    }

    async fn cached_tag(
        &self,
        repo: &RepoName,
        tag: &Tag,
    ) -> Result<Option<(ManifestRecord, i64)>, MetaError> {
        let c = self.conn().await?;
        let sql = format!(
            "SELECT {MANIFEST_COLUMNS}, t.updated_at FROM tag t JOIN repository r ON r.id = t.repo
             JOIN manifest m ON m.repo = t.repo AND m.digest = t.manifest WHERE r.name = $1 AND t.name = $2"
        );
        let row = query_opt(&c, &sql, &[&repo.as_str(), &tag.as_str()]).await?;
        match row {
            None => Ok(None),
            Some(r) => Ok(Some((to_record(&r)?, r.try_get(6)?))),
        }
    }

    async fn touch_tag(&self, repo: &RepoName, tag: &Tag) -> Result<(), MetaError> {
        let c = self.conn().await?;
        execute(
            &c,
            "UPDATE tag SET updated_at = $3 WHERE repo = (SELECT id FROM repository WHERE name = $1) AND name = $2",
            &[&repo.as_str(), &tag.as_str(), &now()],
        )
        .await?;
        Ok(())
    }

    async fn cache_blob(
        &self,
        repo: &RepoName,
        mirror: &str,
        digest: &Digest,
        size: u64,
    ) -> Result<(), MetaError> {
        let digest = digest.to_string();
        write_tx!(self, |tx| {
            lock_digests(tx, &[&digest]).await?;
            let id = ensure_repo(tx, repo.as_str(), Some(mirror)).await?;
            insert_blob(tx, &digest, size).await?;
            link_blob(tx, id, &digest).await?;
            Ok(())
        })
    }

    async fn link_mirror_blob(
        &self,
        repo: &RepoName,
        mirror: &str,
        digest: &Digest,
    ) -> Result<Option<u64>, MetaError> {
        let digest = digest.to_string();
        write_tx!(self, |tx| {
            lock_digests(tx, &[&digest]).await?;
            let size = query_opt(
                tx,
                "SELECT b.size FROM blob b WHERE b.digest = $2 AND EXISTS (
                     SELECT 1 FROM repo_blob rb JOIN repository r ON r.id = rb.repo
                     WHERE rb.digest = b.digest AND r.kind = 'mirror' AND r.mirror = $1)",
                &[&mirror, &digest],
            )
            .await?;
            let Some(size) = size.map(|r| r.try_get::<_, i64>(0)).transpose()? else {
                return Ok(None);
            };
            let id = ensure_repo(tx, repo.as_str(), Some(mirror)).await?;
            link_blob(tx, id, &digest).await?;
            Ok(Some(size as u64))
        })
    }

    async fn touch_blobs(&self, digests: Vec<Digest>) -> Result<(), MetaError> {
        if digests.is_empty() {
            return Ok(());
        }
        // Sorted: concurrent touches lock the rows in the same order.
        let mut digests: Vec<String> = digests.iter().map(|d| d.to_string()).collect();
        digests.sort();
        digests.dedup();
        write_tx!(self, |tx| {
            let t = now();
            let st = tx
                .prepare_cached("UPDATE blob SET last_access = $1 WHERE digest = $2")
                .await?;
            for d in &digests {
                tx.execute(&st, &[&t, d]).await?;
            }
            Ok(())
        })
    }

    async fn mirror_cache_size(&self, mirror: &str) -> Result<u64, MetaError> {
        let c = self.conn().await?;
        let n: i64 = query_one(
            &c,
            "SELECT COALESCE(SUM(b.size), 0)::BIGINT FROM blob b WHERE EXISTS (
                 SELECT 1 FROM repo_blob rb JOIN repository r ON r.id = rb.repo
                 WHERE rb.digest = b.digest AND r.kind = 'mirror' AND r.mirror = $1)
               AND NOT EXISTS (SELECT 1 FROM repo_blob rb JOIN repository r ON r.id = rb.repo
                               WHERE rb.digest = b.digest AND r.kind = 'private')",
            &[&mirror],
        )
        .await?
        .try_get(0)?;
        Ok(n as u64)
    }

    async fn mirror_lru(&self, mirror: &str, limit: usize) -> Result<Vec<Digest>, MetaError> {
        let c = self.conn().await?;
        let rows = query(
            &c,
            "SELECT b.digest FROM blob b
             WHERE EXISTS (SELECT 1 FROM repo_blob rb JOIN repository r ON r.id = rb.repo
                           WHERE rb.digest = b.digest AND r.kind = 'mirror' AND r.mirror = $1)
               AND NOT EXISTS (SELECT 1 FROM repo_blob rb JOIN repository r ON r.id = rb.repo
                               WHERE rb.digest = b.digest AND r.kind = 'private')
             ORDER BY b.last_access, b.digest LIMIT $2",
            &[&mirror, &(limit as i64)],
        )
        .await?;
        column::<String>(rows)?
            .into_iter()
            .map(parse_digest)
            .collect()
    }

    async fn evict_mirror_blob(
        &self,
        mirror: &str,
        digest: &Digest,
    ) -> Result<Eviction, MetaError> {
        let digest = digest.to_string();
        write_tx!(self, |tx| {
            lock_digests(tx, &[&digest]).await?;
            let private = query_opt(
                tx,
                "SELECT 1 FROM repo_blob rb JOIN repository r ON r.id = rb.repo
                 WHERE rb.digest = $1 AND r.kind = 'private' LIMIT 1",
                &[&digest],
            )
            .await?
            .is_some();
            let size = query_opt(tx, "SELECT size FROM blob WHERE digest = $1", &[&digest])
                .await?
                .map(|r| r.try_get::<_, i64>(0))
                .transpose()?;
            let Some(size) = size.filter(|_| !private) else {
                return Ok(Eviction::Kept);
            };
            let unlinked = execute(
                tx,
                "DELETE FROM repo_blob WHERE digest = $2
                 AND repo IN (SELECT id FROM repository WHERE kind = 'mirror' AND mirror = $1)",
                &[&mirror, &digest],
            )
            .await?;
            if unlinked == 0 {
                return Ok(Eviction::Kept);
            }
            let referenced: bool = query_one(
                tx,
                "SELECT EXISTS (SELECT 1 FROM repo_blob WHERE digest = $1)
                     OR EXISTS (SELECT 1 FROM manifest WHERE digest = $1)",
                &[&digest],
            )
            .await?
            .try_get(0)?;
            if !referenced {
                execute(tx, "DELETE FROM blob WHERE digest = $1", &[&digest]).await?;
                tombstone(tx, &digest).await?;
            }
            Ok(Eviction::Unlinked {
                size: size as u64,
                row_deleted: !referenced,
            })
        })
    }

    async fn blob_exists(&self, digest: &Digest) -> Result<bool, MetaError> {
        let c = self.conn().await?;
        Ok(query_opt(
            &c,
            "SELECT 1 FROM blob WHERE digest = $1",
            &[&digest.to_string()],
        )
        .await?
        .is_some())
    }

    async fn record_pulls(&self, pulls: Vec<(RepoName, Digest)>, at: i64) -> Result<(), MetaError> {
        let mut pulls: Vec<(String, String)> = pulls
            .iter()
            .map(|(r, d)| (r.to_string(), d.to_string()))
            .collect();
        pulls.sort();
        write_tx!(self, |tx| {
            let st = tx
                .prepare_cached(
                    "UPDATE manifest SET last_pulled = $3
                     WHERE repo = (SELECT id FROM repository WHERE name = $1) AND digest = $2",
                )
                .await?;
            for (repo, digest) in &pulls {
                tx.execute(&st, &[repo, digest, &at]).await?;
            }
            Ok(())
        })
    }

    async fn touch_link(&self, repo: &RepoName, digest: &Digest) -> Result<(), MetaError> {
        let c = self.conn().await?;
        let t = now();
        // A single UPDATE whose condition skips links confirmed within the last second, so repeated HEADs stay
        // cheap; garbage collection's DELETE re-evaluates `created_at` on the row version this writes.
        execute(
            &c,
            "UPDATE repo_blob SET created_at = $3
             WHERE repo = (SELECT id FROM repository WHERE name = $1) AND digest = $2 AND created_at < $3",
            &[&repo.as_str(), &digest.to_string(), &t],
        )
        .await?;
        Ok(())
    }

    async fn create_upload(&self, u: &UploadRecord) -> Result<(), MetaError> {
        let c = self.conn().await?;
        execute(
            &c,
            "INSERT INTO upload (id, repo, algorithm, started_at, committed) VALUES ($1, $2, $3, $4, 0)",
            &[
                &u.id,
                &u.repo.as_str(),
                &u.algorithm.as_str(),
                &u.started_at,
            ],
        )
        .await?;
        Ok(())
    }

    async fn upload(&self, id: &str) -> Result<Option<UploadRecord>, MetaError> {
        let c = self.conn().await?;
        let row = query_opt(
            &c,
            "SELECT id, repo, algorithm, started_at, committed FROM upload WHERE id = $1",
            &[&id],
        )
        .await?;
        let Some(r) = row else { return Ok(None) };
        let (id, repo, alg, started_at): (String, String, String, i64) =
            (r.try_get(0)?, r.try_get(1)?, r.try_get(2)?, r.try_get(3)?);
        let committed = r
            .try_get::<_, Option<i64>>(4)?
            .map(|c| {
                u64::try_from(c)
                    .map_err(|_| MetaError::Corrupt(format!("upload {id}: committed length {c}")))
            })
            .transpose()?;
        Ok(Some(UploadRecord {
            id,
            repo: repo
                .parse()
                .map_err(|e| MetaError::Corrupt(format!("upload repository: {e}")))?,
            algorithm: alg
                .parse()
                .map_err(|e| MetaError::Corrupt(format!("upload algorithm: {e}")))?,
            started_at,
            committed,
        }))
    }

    async fn delete_upload(&self, id: &str) -> Result<(), MetaError> {
        let c = self.conn().await?;
        execute(&c, "DELETE FROM upload WHERE id = $1", &[&id]).await?;
        Ok(())
    }

    async fn expired_uploads(&self, started_before: i64) -> Result<Vec<String>, MetaError> {
        let c = self.conn().await?;
        let rows = query(
            &c,
            "SELECT id FROM upload WHERE started_at < $1",
            &[&started_before],
        )
        .await?;
        Ok(column(rows)?)
    }

    async fn lock_digest(&self, digest: &Digest) -> Result<Option<StoreLock>, MetaError> {
        let key = digest_key(&digest.to_string());
        let lock = self
            .session_lock(LockSpace::DigestSession, key, true)
            .await?;
        Ok(lock.map(|l| StoreLock::new(Box::new(l))))
    }

    // Claims are rows, not session locks: a chunk can take minutes to arrive, and holding a connection for each
    // upload in flight would tie the number of concurrent pushes to the pool. Times are the database's clock,
    // so replicas with skewed clocks agree on expiry.

    async fn claim_upload(
        &self,
        id: &str,
        offset: u64,
        writer: &str,
        stale_prefix: &str,
        ttl: Duration,
    ) -> Result<bool, MetaError> {
        let c = self.conn().await?;
        let n = execute(
            &c,
            "UPDATE upload SET writer = $3,
                 writer_until = extract(epoch FROM clock_timestamp())::BIGINT + $4
             WHERE id = $1 AND committed = $2
               AND (writer IS NULL OR writer_until < extract(epoch FROM clock_timestamp())::BIGINT
                    OR starts_with(writer, $5))",
            &[
                &id,
                &to_i64(offset)?,
                &writer,
                &to_i64(ttl.as_secs())?,
                &stale_prefix,
            ],
        )
        .await?;
        Ok(n == 1)
    }

    async fn renew_upload_claim(
        &self,
        id: &str,
        writer: &str,
        ttl: Duration,
    ) -> Result<bool, MetaError> {
        let c = self.conn().await?;
        let n = execute(
            &c,
            "UPDATE upload SET writer_until = extract(epoch FROM clock_timestamp())::BIGINT + $3
             WHERE id = $1 AND writer = $2",
            &[&id, &writer, &to_i64(ttl.as_secs())?],
        )
        .await?;
        Ok(n == 1)
    }

    async fn release_upload(&self, id: &str, writer: &str, offset: u64) -> Result<bool, MetaError> {
        let c = self.conn().await?;
        let n = execute(
            &c,
            "UPDATE upload SET committed = $3, writer = NULL, writer_until = NULL
             WHERE id = $1 AND writer = $2",
            &[&id, &writer, &to_i64(offset)?],
        )
        .await?;
        Ok(n == 1)
    }

    async fn try_lease_fetch(&self, key: &str) -> Result<FetchLease, MetaError> {
        // A free slot or nothing: a request must never queue behind downloads of other blobs for a lease.
        let Ok(slot) = self.fetch_slots.clone().try_acquire_owned() else {
            return Ok(FetchLease::NotShared);
        };
        self.ready().await?;
        let conn = self.get(&self.fetch_pool).await?;
        Ok(
            match Self::lock_on(conn, LockSpace::Fetch, text_key(key), false).await? {
                Some(mut lock) => {
                    lock._slot = Some(slot);
                    FetchLease::Granted(StoreLock::new(Box::new(lock)))
                }
                None => FetchLease::HeldElsewhere,
            },
        )
    }
}

fn to_i64(n: u64) -> Result<i64, MetaError> {
    i64::try_from(n).map_err(|_| MetaError::other(format!("{n} does not fit a BIGINT")))
}
