//! The registry domain: push, pull, mount, delete, discovery. Enforces the invariants of design §5 on top of the two
//! storage traits; knows nothing of HTTP. Each public method is one client-visible operation.

mod digest_locks;
mod error;
mod manifests;
mod uploads;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;

pub use digest_locks::{DigestGuard, DigestLocks};
pub use error::RegistryError;
pub use manifests::{ManifestCache, PutManifest, StoredManifest};
pub use uploads::UploadStatus;

use crate::meta::{MetadataStore, Page, RemoveOutcome};
use crate::oci::{Digest, RepoName};
use crate::store::{BlobReader, BlobStore, StoreError};

/// Limits a deployment may tune (see `config::Limits`).
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_manifest_size: u64,
    pub upload_expiry: Duration,
    /// Most entries one page of the catalog or a tag list holds, whatever `n` the client asks for.
    pub max_page_size: usize,
    /// Most upload sessions one principal may have open at once.
    pub max_upload_sessions_per_principal: usize,
}

/// Distinct pulled manifests remembered between flushes; beyond this, pulls go unrecorded until the next flush.
const MAX_PENDING_PULLS: usize = 100_000;

pub struct Registry {
    blobs: Arc<dyn BlobStore>,
    meta: Arc<dyn MetadataStore>,
    limits: Limits,
    uploads: uploads::UploadStates,
    session_counts: uploads::SessionCounts,
    manifests: ManifestCache,
    digest_locks: DigestLocks,
    /// Manifests pulled since the last flush; see `flush_pulls`.
    pulls: Mutex<HashSet<(RepoName, Digest)>>,
    immutable_tags: std::sync::OnceLock<TagRule>,
    /// Names this process's claims on shared upload sessions (see `uploads`): the replica's identity when it has
    /// one (`with_replica_id`), else random.
    replica_id: String,
}

/// Decides which repositories have immutable tags (from the access policy; see `set_immutable_tags`).
pub type TagRule = Arc<dyn Fn(&RepoName) -> bool + Send + Sync>;

/// A blob ready to stream to a client.
pub struct BlobDownload {
    /// Total size of the blob.
    pub size: u64,
    /// The bytes to send (the whole blob or the requested range) and their length.
    pub reader: BlobReader,
}

/// A byte range request, already parsed from `Range: bytes=…`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ByteRange {
    /// `start-` or `start-end` (inclusive).
    From { start: u64, end: Option<u64> },
    /// `-n`: the last n bytes.
    Suffix(u64),
}

impl ByteRange {
    /// Resolves against a size into inclusive `(start, end)`, or `None` when unsatisfiable.
    pub fn resolve(self, size: u64) -> Option<(u64, u64)> {
        match self {
            ByteRange::From { start, end } => {
                if start >= size {
                    return None;
                }
                let end = end.map_or(size - 1, |e| e.min(size - 1));
                (start <= end).then_some((start, end))
            }
            ByteRange::Suffix(n) => (n > 0 && size > 0).then(|| (size.saturating_sub(n), size - 1)),
        }
    }
}

/// A recorded blob whose bytes are missing (`found` is `None`) or of another size than recorded: logged with both
/// sizes, counted (`berth_blobs_damaged_total`), and a `500` for the client, which sees only the request id.
fn damaged(digest: &Digest, expected: u64, found: Option<u64>) -> RegistryError {
    match found {
        Some(found) => tracing::error!(
            %digest, expected, found,
            "stored blob is not of its recorded size (changed behind berth's back?)"
        ),
        None => {
            tracing::error!(%digest, expected, "stored blob is missing (removed behind berth's back?)")
        }
    }
    crate::metrics::metrics().blobs_damaged.inc();
    RegistryError::Damaged(digest.clone())
}

impl Registry {
    pub fn new(
        blobs: Arc<dyn BlobStore>,
        meta: Arc<dyn MetadataStore>,
        limits: Limits,
    ) -> Registry {
        Registry {
            blobs,
            meta,
            session_counts: uploads::SessionCounts::new(limits.max_upload_sessions_per_principal),
            limits,
            uploads: Default::default(),
            manifests: ManifestCache::new(64 << 20),
            digest_locks: DigestLocks::default(),
            pulls: Default::default(),
            immutable_tags: std::sync::OnceLock::new(),
            replica_id: uuid::Uuid::new_v4().simple().to_string(),
        }
    }

    /// Sets the identity of the replica (one per data directory, which only one process at a time may serve):
    /// claims on upload sessions left by a previous process of the same replica, killed mid-chunk, are then taken
    /// over at once after a restart instead of when they expire.
    pub fn with_replica_id(mut self, id: String) -> Registry {
        self.replica_id = id;
        self
    }

    /// Makes digest locks exclude other processes sharing `file` (the data directory's lock file), so command-line
    /// maintenance can run beside the server.
    pub fn with_lock_file(mut self, file: std::path::PathBuf) -> Registry {
        self.digest_locks = self.digest_locks.with_lock_file(file);
        self
    }

    /// Makes digest locks also exclude other replicas sharing the metadata store (PostgreSQL), through
    /// `MetadataStore::lock_digest`.
    pub fn with_store_locks(mut self) -> Registry {
        self.digest_locks = self.digest_locks.with_store(self.meta.clone());
        self
    }

    /// Installs the rule naming repositories whose tags never move once pushed (set once, at start-up).
    pub fn set_immutable_tags(&self, rule: TagRule) {
        let _ = self.immutable_tags.set(rule);
    }

    fn immutable_tags(&self, repo: &RepoName) -> bool {
        self.immutable_tags.get().is_some_and(|r| r(repo))
    }

    /// Serialises changes to one digest's bytes and row (see `digest_locks`). Every path that publishes bytes and
    /// then commits their row, and every path that deletes them, holds it.
    pub async fn lock_digest(&self, digest: &Digest) -> DigestGuard<'_> {
        self.digest_locks.lock(digest).await
    }

    pub fn blob_store(&self) -> &Arc<dyn BlobStore> {
        &self.blobs
    }

    pub fn metadata_store(&self) -> &Arc<dyn MetadataStore> {
        &self.meta
    }

    pub fn max_manifest_size(&self) -> u64 {
        self.limits.max_manifest_size
    }

    pub fn max_page_size(&self) -> usize {
        self.limits.max_page_size
    }

    /// Size of a blob visible in `repo` (HEAD).
    pub async fn blob_size(&self, repo: &RepoName, digest: &Digest) -> Result<u64, RegistryError> {
        self.meta
            .repo_blob(repo, digest)
            .await?
            .ok_or_else(|| RegistryError::BlobUnknown(digest.clone()))
    }

    /// A blob HEAD: its size, and the link's garbage-collection grace period restarts, because a pushing client
    /// that sees the blob exists will reference it rather than upload it. The bytes must be in the store, of the
    /// recorded size, before the size is confirmed (`check_stored`).
    pub async fn head_blob(&self, repo: &RepoName, digest: &Digest) -> Result<u64, RegistryError> {
        let size = self.blob_size(repo, digest).await?;
        self.check_stored(digest, size).await?;
        self.meta.touch_link(repo, digest).await?;
        Ok(size)
    }

    /// Checks that a recorded blob's bytes are in the blob store and of the recorded size: a stat, so cheap enough
    /// for every HEAD; whether they hash to the digest is the scrubber's job.
    pub async fn check_stored(&self, digest: &Digest, size: u64) -> Result<(), RegistryError> {
        match self.blobs.stat(digest).await? {
            Some(len) if len == size => Ok(()),
            found => Err(damaged(digest, size, found)),
        }
    }

    /// Where to send a client for a blob's bytes instead of streaming them (`storage.redirect_ttl`): a pre-signed
    /// object-store URL, once the blob is known to be visible in `repo`. `None`: stream it (also when signing
    /// fails, which is logged: the client still gets its bytes).
    pub async fn blob_redirect(
        &self,
        repo: &RepoName,
        digest: &Digest,
    ) -> Result<Option<String>, RegistryError> {
        if !self.blobs.presigns() {
            return Ok(None);
        }
        self.blob_size(repo, digest).await?;
        match self.blobs.presigned_get(digest).await {
            Ok(url) => Ok(url),
            Err(e) => {
                tracing::warn!(%digest, error = %e, "cannot pre-sign a blob URL; streaming the blob");
                Ok(None)
            }
        }
    }

    /// Opens a blob visible in `repo`, whole or a range of it. The stored object's real length is checked against the
    /// metadata before any header is sent, so a damaged store yields an error, never a short 200 (invariant 2).
    pub async fn open_blob(
        &self,
        repo: &RepoName,
        digest: &Digest,
        range: Option<ByteRange>,
    ) -> Result<BlobDownload, RegistryError> {
        let size = self.blob_size(repo, digest).await?;
        let span = match range {
            Some(r) => Some(
                r.resolve(size)
                    .ok_or(RegistryError::RangeNotSatisfiable { size })?,
            ),
            None => None,
        };
        // A range read only learns the length of its range, so the whole object is measured first: a truncated
        // blob must not answer 206 for a range that happens to lie before the cut.
        if span.is_some() {
            self.check_stored(digest, size).await?;
        }
        let reader = match self.blobs.open(digest, span).await {
            Ok(r) => r,
            Err(StoreError::NotFound) => return Err(damaged(digest, size, None)),
            Err(StoreError::RangeOutsideObject) => {
                return Err(damaged(
                    digest,
                    size,
                    self.blobs.stat(digest).await.ok().flatten(),
                ));
            }
            Err(e) => return Err(e.into()),
        };
        let expected = span.map_or(size, |(s, e)| e - s + 1);
        if reader.len != expected {
            let found = match span {
                None => Some(reader.len),
                Some(_) => self.blobs.stat(digest).await.ok().flatten(),
            };
            return Err(damaged(digest, size, found));
        }
        Ok(BlobDownload { size, reader })
    }

    /// Links a blob already in the registry into `repo` (cross-repository mount). `None`: nothing to mount, the
    /// client should upload instead.
    pub async fn mount_blob(
        &self,
        repo: &RepoName,
        from: Option<&RepoName>,
        digest: &Digest,
    ) -> Result<Option<u64>, RegistryError> {
        Ok(self.meta.mount_blob(repo, from, digest).await?)
    }

    /// Removes a blob from a repository. Refused while a manifest there still references it.
    pub async fn delete_blob(&self, repo: &RepoName, digest: &Digest) -> Result<(), RegistryError> {
        match self.meta.unlink_blob(repo, digest).await? {
            RemoveOutcome::Removed => Ok(()),
            RemoveOutcome::NotFound => Err(RegistryError::BlobUnknown(digest.clone())),
            RemoveOutcome::ReferencedBy(m) => Err(RegistryError::Referenced(format!(
                "blob {digest} is referenced by manifest {m} in {repo}; delete the manifest first"
            ))),
        }
    }

    /// Tags of a repository, paginated.
    pub async fn list_tags(
        &self,
        repo: &RepoName,
        page: &Page,
    ) -> Result<Vec<String>, RegistryError> {
        self.meta
            .list_tags(repo, page)
            .await?
            .ok_or_else(|| RegistryError::NameUnknown(repo.to_string()))
    }

    /// Repository names, paginated.
    pub async fn catalog(&self, page: &Page) -> Result<Vec<String>, RegistryError> {
        Ok(self.meta.list_repositories(page).await?)
    }

    /// Notes that a manifest was pulled. Pull times feed retention ("pulled within") and keep untagged manifests
    /// alive; they are written in batches by `flush_pulls`, never on the pull path.
    pub fn record_pull(&self, repo: &RepoName, digest: &Digest) {
        let mut p = self.pulls.lock();
        if p.len() < MAX_PENDING_PULLS {
            p.insert((repo.clone(), digest.clone()));
        }
    }

    /// Writes the pull times gathered since the last call.
    pub async fn flush_pulls(&self) -> Result<(), RegistryError> {
        let pulls: Vec<_> = std::mem::take(&mut *self.pulls.lock())
            .into_iter()
            .collect();
        if !pulls.is_empty() {
            self.meta.record_pulls(pulls, crate::meta::now()).await?;
        }
        Ok(())
    }

    /// Start-up housekeeping after a crash: staging files are dropped, and upload objects that no session owns
    /// (e.g. a monolithic push cut short) are removed (invariant 7).
    pub async fn reclaim_after_restart(&self) -> Result<(), RegistryError> {
        let tmp = self.blobs.reclaim_temporaries().await?;
        let mut orphans = 0;
        for id in self.blobs.list_uploads().await? {
            if self.meta.upload(&id).await?.is_none() {
                self.blobs.delete_upload(&id).await?;
                orphans += 1;
            }
        }
        if tmp + orphans > 0 {
            tracing::info!(
                temporary_files = tmp,
                orphan_uploads = orphans,
                "reclaimed leftovers of interrupted writes"
            );
        }
        self.expire_uploads().await?;
        Ok(())
    }

    /// Drops upload sessions older than the configured expiry, with their bytes.
    pub async fn expire_uploads(&self) -> Result<usize, RegistryError> {
        let cutoff = crate::meta::now() - self.limits.upload_expiry.as_secs() as i64;
        let ids = self.meta.expired_uploads(cutoff).await?;
        for id in &ids {
            self.meta.delete_upload(id).await?;
            self.blobs.delete_upload(id).await?;
            self.uploads.forget(id);
            self.session_counts.remove(id);
        }
        if !ids.is_empty() {
            tracing::info!(count = ids.len(), "expired stale upload sessions");
        }
        Ok(ids.len())
    }
}
