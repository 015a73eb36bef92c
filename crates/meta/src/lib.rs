//! The metadata store: the source of truth for what exists (design §4). Every operation that must be atomic with
//! respect to the invariants (§5) is one method here, implemented once as one transaction (`store`) over a thin
//! layer that runs it on SQLite or PostgreSQL (`sql`), so the domain never composes multi-step writes that could
//! interleave with another request, and the two backends cannot drift apart.

pub mod auth;
pub mod maint;
mod schema;
pub mod sql;
mod store;
pub mod transfer;
pub mod ui;

pub use sql::postgres::PgSettings;
pub use sql::sqlite::Synchronous;
pub use store::SqlStore;

use berth_oci::{Algorithm, Digest, RepoName, name::Tag};

/// Why a metadata operation failed. Callers decide on the kind, never on the text: `Unavailable` is a store that
/// cannot be reached right now (the client is told to retry), the others are this request's own failure.
#[derive(Debug, thiserror::Error)]
pub enum MetaError {
    /// The database cannot be reached or refuses work for now (connection refused or lost, pool exhausted, busy
    /// past its timeout, out of space). Retrying later can succeed; nothing was written.
    #[error("metadata store unavailable: {0}")]
    Unavailable(String),
    /// A write kept conflicting with concurrent writes after every retry; nothing was written.
    #[error("metadata write conflict: {0}")]
    Conflict(String),
    /// What the database holds cannot be read back as berth wrote it.
    #[error("stored metadata is corrupt: {0}")]
    Corrupt(String),
    /// A value no row can hold (a NUL byte in text): refused the same way on every backend.
    #[error("invalid value for the metadata store: {0}")]
    Invalid(String),
    /// Anything else, with its source.
    #[error("metadata database error: {0}")]
    Other(#[source] Box<dyn std::error::Error + Send + Sync>),
}

impl MetaError {
    pub fn other(e: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> MetaError {
        MetaError::Other(e.into())
    }
}

impl From<rusqlite::Error> for MetaError {
    fn from(e: rusqlite::Error) -> Self {
        use rusqlite::ErrorCode::*;
        match e.sqlite_error_code() {
            Some(DatabaseBusy | DatabaseLocked | DiskFull | CannotOpen | SystemIoFailure) => {
                MetaError::Unavailable(e.to_string())
            }
            _ => MetaError::other(e),
        }
    }
}

/// A manifest as the registry indexes it. Its bytes are a blob in the blob store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestRecord {
    pub digest: Digest,
    pub media_type: String,
    pub artifact_type: Option<String>,
    pub subject: Option<Digest>,
    pub size: u64,
    /// The manifest's top-level annotations as JSON, served by the referrers API.
    pub annotations: Option<String>,
}

/// What a manifest references, as recorded in `manifest_ref`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefKind {
    Config,
    Layer,
    /// A manifest referenced by an index.
    Child,
}

impl RefKind {
    const ALL: [RefKind; 3] = [RefKind::Config, RefKind::Layer, RefKind::Child];

    pub fn as_str(self) -> &'static str {
        match self {
            RefKind::Config => "config",
            RefKind::Layer => "layer",
            RefKind::Child => "child",
        }
    }

    /// The kind `as_str` wrote.
    pub fn parse(s: &str) -> Option<RefKind> {
        RefKind::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

/// A reference of a manifest being stored, with the size the manifest claims for it.
#[derive(Debug, Clone)]
pub struct NewRef {
    pub digest: Digest,
    pub size: u64,
    pub kind: RefKind,
}

/// Everything `put_manifest` writes in one transaction.
#[derive(Debug, Clone)]
pub struct NewManifest {
    pub repo: RepoName,
    pub record: ManifestRecord,
    pub refs: Vec<NewRef>,
    pub tags: Vec<Tag>,
    /// Refuse the write if it would move any of `tags` that already points at another manifest.
    pub immutable_tags: bool,
}

/// Why a manifest cannot be stored: invariant 1 would break.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ManifestRejection {
    /// Referenced blobs or child manifests that are not in the repository.
    Missing(Vec<Digest>),
    /// A reference whose declared size differs from the stored object's.
    SizeMismatch {
        digest: Digest,
        declared: u64,
        actual: u64,
    },
    /// The repository's tags are immutable and this tag already names another manifest.
    TagImmutable(Tag),
}

/// Outcome of removing a manifest or a blob link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RemoveOutcome {
    Removed,
    NotFound,
    /// Still referenced by this manifest in the same repository; removing would leave a dangling reference.
    ReferencedBy(Digest),
}

/// What `evict_mirror_blob` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Eviction {
    /// Linked by a private repository (or gone already): nothing changed.
    Kept,
    /// Unlinked from the mirror; `row_deleted` when the blob row went too and its bytes may be removed.
    Unlinked { size: u64, row_deleted: bool },
}

/// An upload session (the bytes live in the blob store under the same id).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UploadRecord {
    pub id: String,
    pub repo: RepoName,
    pub algorithm: Algorithm,
    pub started_at: i64,
    /// Bytes of the session received whole, as recorded in the store when sessions are shared between replicas
    /// (PostgreSQL): the session's authority, against which a replica checks the hash state it keeps in memory.
    /// `None` where the serving process is the only writer (SQLite) and its own state is the authority.
    pub committed: Option<u64>,
}

/// Pagination of a lexically ordered listing.
#[derive(Debug, Clone, Default)]
pub struct Page {
    /// Return at most this many; `None` means no limit.
    pub n: Option<usize>,
    /// Start strictly after this entry.
    pub last: Option<String>,
}

#[async_trait::async_trait]
pub trait MetadataStore: Coordination {
    /// Records a verified blob (its bytes are already published) and links it into `repo`.
    async fn commit_blob(
        &self,
        repo: &RepoName,
        digest: &Digest,
        size: u64,
    ) -> Result<(), MetaError>;

    /// Size of a blob linked into `repo`, or `None` when it is not visible there.
    async fn repo_blob(&self, repo: &RepoName, digest: &Digest) -> Result<Option<u64>, MetaError>;

    /// Links an existing blob into `repo` if it is linked in `from` (or, with no `from`, in any repository).
    /// Returns the blob's size, or `None` when there is nothing to mount.
    async fn mount_blob(
        &self,
        repo: &RepoName,
        from: Option<&RepoName>,
        digest: &Digest,
    ) -> Result<Option<u64>, MetaError>;

    /// Removes a blob's link from `repo`, refused while a manifest there references it.
    async fn unlink_blob(
        &self,
        repo: &RepoName,
        digest: &Digest,
    ) -> Result<RemoveOutcome, MetaError>;

    /// Stores a manifest, its references and tags in one transaction, after checking that every referenced blob and
    /// child exists in the repository.
    async fn put_manifest(
        &self,
        m: NewManifest,
    ) -> Result<Result<(), ManifestRejection>, MetaError>;

    /// A manifest by digest.
    async fn manifest(
        &self,
        repo: &RepoName,
        digest: &Digest,
    ) -> Result<Option<ManifestRecord>, MetaError>;

    /// The manifest a tag points at.
    async fn tagged_manifest(
        &self,
        repo: &RepoName,
        tag: &Tag,
    ) -> Result<Option<ManifestRecord>, MetaError>;

    /// Deletes a manifest and every tag pointing at it, refused while an index in the repository references it.
    async fn delete_manifest(
        &self,
        repo: &RepoName,
        digest: &Digest,
    ) -> Result<RemoveOutcome, MetaError>;

    /// Removes a tag (the manifest stays). False when there was no such tag.
    async fn delete_tag(&self, repo: &RepoName, tag: &Tag) -> Result<bool, MetaError>;

    /// Tags of a repository in lexical order, or `None` when the repository does not exist.
    async fn list_tags(
        &self,
        repo: &RepoName,
        page: &Page,
    ) -> Result<Option<Vec<String>>, MetaError>;

    /// Repository names in lexical order.
    async fn list_repositories(&self, page: &Page) -> Result<Vec<String>, MetaError>;

    /// Manifests in `repo` whose subject is `subject`, optionally only those of one artifact type.
    async fn referrers(
        &self,
        repo: &RepoName,
        subject: &Digest,
        artifact_type: Option<&str>,
    ) -> Result<Vec<ManifestRecord>, MetaError>;

    /// Mirrors: records a manifest fetched and verified from the upstream, and moves `tag` to it (its
    /// `updated_at` becomes the time of this fetch). No reference checks: mirrors fetch children on demand.
    async fn cache_manifest(
        &self,
        repo: &RepoName,
        mirror: &str,
        record: &ManifestRecord,
        tag: Option<&Tag>,
    ) -> Result<(), MetaError>;

    /// Mirrors: a cached tag with the time (unix seconds) it was last fetched or revalidated.
    async fn cached_tag(
        &self,
        repo: &RepoName,
        tag: &Tag,
    ) -> Result<Option<(ManifestRecord, i64)>, MetaError>;

    /// Mirrors: marks a cached tag as just revalidated.
    async fn touch_tag(&self, repo: &RepoName, tag: &Tag) -> Result<(), MetaError>;

    /// Mirrors: records a blob fetched and verified from the upstream (bytes already published) and links it.
    async fn cache_blob(
        &self,
        repo: &RepoName,
        mirror: &str,
        digest: &Digest,
        size: u64,
    ) -> Result<(), MetaError>;

    /// Mirrors: if `digest` is cached in any repository of `mirror`, links it into `repo` too and returns its size.
    /// Never links private content (a mirror path must not expose it), and never brings back an evicted row.
    async fn link_mirror_blob(
        &self,
        repo: &RepoName,
        mirror: &str,
        digest: &Digest,
    ) -> Result<Option<u64>, MetaError>;

    /// Mirrors: records that these blobs were just served (least-recently-used eviction order).
    async fn touch_blobs(&self, digests: Vec<Digest>) -> Result<(), MetaError>;

    /// Mirrors: bytes of the distinct blobs cached in repositories of `mirror`, not counting blobs a private
    /// repository links (they are not the cache's to evict).
    async fn mirror_cache_size(&self, mirror: &str) -> Result<u64, MetaError>;

    /// Mirrors: up to `limit` blobs of `mirror`, least recently used first, that no private repository links
    /// (those are never evicted).
    async fn mirror_lru(&self, mirror: &str, limit: usize) -> Result<Vec<Digest>, MetaError>;

    /// Mirrors: in one transaction, unlinks `digest` from every repository of `mirror` unless a private repository
    /// links it, and deletes its row when nothing else references it. The caller deletes the bytes afterwards.
    async fn evict_mirror_blob(&self, mirror: &str, digest: &Digest)
    -> Result<Eviction, MetaError>;

    /// Whether a blob row exists (the bytes must then stay).
    async fn blob_exists(&self, digest: &Digest) -> Result<bool, MetaError>;

    /// Records that these manifests were pulled at `at` (unix seconds).
    async fn record_pulls(&self, pulls: Vec<(RepoName, Digest)>, at: i64) -> Result<(), MetaError>;

    /// Marks a blob link as just confirmed to a client (a HEAD during a push), which restarts its garbage
    /// collection grace period: the client will now reference it instead of uploading it.
    async fn touch_link(&self, repo: &RepoName, digest: &Digest) -> Result<(), MetaError>;

    async fn create_upload(&self, upload: &UploadRecord) -> Result<(), MetaError>;
    async fn upload(&self, id: &str) -> Result<Option<UploadRecord>, MetaError>;
    async fn delete_upload(&self, id: &str) -> Result<(), MetaError>;
    /// Ids of sessions started before `started_before` (unix seconds).
    async fn expired_uploads(&self, started_before: i64) -> Result<Vec<String>, MetaError>;
}

/// What only replicas sharing a store need: locks and leases that exclude the other replicas, and upload claims.
/// The defaults are for a store one server owns (SQLite): nothing to exclude, every claim granted.
#[async_trait::async_trait]
pub trait Coordination: Send + Sync + 'static {
    /// Takes the right to write the next chunk of upload `id` for `writer` during `ttl`, if the session
    /// still stands at `offset` committed bytes and no other writer holds an unexpired claim. A claim whose writer
    /// starts with `stale_prefix` is taken over whatever its expiry (the caller knows such claims are dead). False
    /// otherwise. Only called for sessions whose record has `committed` (the default, for a single process,
    /// grants it).
    async fn claim_upload(
        &self,
        _id: &str,
        _offset: u64,
        _writer: &str,
        _stale_prefix: &str,
        _ttl: std::time::Duration,
    ) -> Result<bool, MetaError> {
        Ok(true)
    }

    /// Extends `writer`'s claim on upload `id` by `ttl` from now. False when the claim was lost.
    async fn renew_upload_claim(
        &self,
        _id: &str,
        _writer: &str,
        _ttl: std::time::Duration,
    ) -> Result<bool, MetaError> {
        Ok(true)
    }

    /// Ends `writer`'s claim on upload `id`, recording `offset` as the session's committed length. False
    /// when the claim was lost (expired and taken, or the session is gone): the chunk then counts as not received.
    async fn release_upload(
        &self,
        _id: &str,
        _writer: &str,
        _offset: u64,
    ) -> Result<bool, MetaError> {
        Ok(true)
    }

    /// Excludes other replicas sharing this store from changing `digest`'s bytes and row until the returned lock
    /// is dropped (the registry's digest lock, `registry::DigestLocks`). `None`: the store has no replicas to
    /// exclude (SQLite: one host, where the data directory's lock file excludes other processes).
    async fn lock_digest(&self, _digest: &Digest) -> Result<Option<StoreLock>, MetaError> {
        Ok(None)
    }

    /// Mirrors: the lease on downloading `key` (a mirror's blob) from the upstream, so that one replica fetches it
    /// while the others wait for its commit. Never waits; held until dropped, and released by the database if
    /// the holder dies. `NotShared` where there is nobody to coordinate with (SQLite), or when every connection
    /// for leases is taken: the caller then fetches on its own.
    async fn try_lease_fetch(&self, _key: &str) -> Result<FetchLease, MetaError> {
        Ok(FetchLease::NotShared)
    }

    /// The lease on a scheduled job (`gc`, `retention`, `scrub`), so that of several replicas sharing the store one
    /// runs it at a time; `None` while another holds it. The lease ends when dropped or when its holder dies, and
    /// the next replica to schedule the job takes it. Default: always granted (one server per store).
    async fn try_lease(&self, _job: &str) -> Result<Option<StoreLock>, MetaError> {
        Ok(Some(StoreLock::new(Box::new(()))))
    }
}

/// Outcome of [`Coordination::try_lease_fetch`].
#[derive(Debug)]
pub enum FetchLease {
    /// This process holds the lease until the lock is dropped.
    Granted(StoreLock),
    /// Another replica holds it.
    HeldElsewhere,
    /// No coordination: fetch alone.
    NotShared,
}

/// A lock held in the metadata store for this process (a digest lock, a maintenance lease); released on drop.
pub struct StoreLock {
    /// Whatever releases the lock when dropped.
    _held: Box<dyn Send + Sync>,
}

impl StoreLock {
    pub fn new(held: Box<dyn Send + Sync>) -> StoreLock {
        StoreLock { _held: held }
    }
}

impl std::fmt::Debug for StoreLock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StoreLock")
    }
}

/// Seconds since the Unix epoch.
pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}
