//! What maintenance (garbage collection, retention, scrub, run history) asks of the metadata store.
//!
//! Deciding is done on a consistent snapshot; deleting is done by methods that re-check, inside their own
//! transaction, that the item is still garbage. A push, mount or HEAD that lands between the two therefore wins:
//! the re-check sees the new reference (or the renewed timestamp) and the item stays (design invariant 3).

use super::{ManifestRecord, MetaError, MetadataStore, RefKind};
use berth_oci::{Digest, RepoName, name::Tag};

/// A repository as maintenance sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepoInfo {
    pub id: i64,
    pub name: String,
    /// `None` for private repositories, the mirror's name for cached ones.
    pub mirror: Option<String>,
}

/// A manifest row in a snapshot.
#[derive(Debug, Clone)]
pub struct SnapManifest {
    pub repo: i64,
    pub digest: String,
    pub subject: Option<String>,
    /// Latest of push time and last pull (unix seconds).
    pub touched: i64,
    pub tagged: bool,
}

/// A blob link in a snapshot.
#[derive(Debug, Clone)]
pub struct SnapLink {
    pub repo: i64,
    pub digest: String,
    /// Last push, mount or HEAD of the link.
    pub touched: i64,
}

/// Everything garbage collection marks from, read in one transaction.
#[derive(Debug, Default)]
pub struct Snapshot {
    pub repos: Vec<RepoInfo>,
    pub manifests: Vec<SnapManifest>,
    /// (repository, index, child manifest).
    pub children: Vec<(i64, String, String)>,
    /// (repository, manifest, config or layer blob).
    pub blob_refs: Vec<(i64, String, String)>,
    pub links: Vec<SnapLink>,
    /// (digest, size, created_at) of every blob row.
    pub blobs: Vec<(String, u64, i64)>,
}

/// A tag with what retention decides on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TagDetail {
    pub name: String,
    pub digest: Digest,
    /// When the tag was last pushed (moved), unix seconds.
    pub updated_at: i64,
    pub last_pulled: Option<i64>,
}

/// An untagged manifest that nothing in its repository needs (no index lists it, no manifest there is its subject).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UntaggedManifest {
    pub digest: Digest,
    pub created_at: i64,
    pub last_pulled: Option<i64>,
}

/// A reference recorded for a manifest, and whether its target is present.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefCheck {
    pub manifest: Digest,
    pub target: Digest,
    pub kind: RefKind,
    pub present: bool,
}

/// One maintenance run, as shown by `berth status`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct RunRecord {
    pub id: i64,
    pub kind: String,
    pub started_at: i64,
    pub finished_at: Option<i64>,
    /// `running`, `ok`, `problems` or `failed` (a `running` row whose process died stays `running`).
    pub outcome: String,
    pub dry_run: bool,
    /// The run's summary as JSON.
    pub summary: Option<String>,
}

/// Totals for `berth status`.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct StoreStats {
    pub private_repositories: u64,
    pub mirror_repositories: u64,
    pub manifests: u64,
    pub tags: u64,
    pub blobs: u64,
    pub blob_bytes: u64,
    /// Bytes of blobs a private repository uses (linked or as a manifest).
    pub private_bytes: u64,
    /// Bytes of blobs only mirror caches hold.
    pub mirror_bytes: u64,
    pub upload_sessions: u64,
    pub pending_byte_deletions: u64,
}

#[async_trait::async_trait]
pub trait MaintenanceStore: MetadataStore {
    /// Every row garbage collection marks from, in one read transaction.
    async fn snapshot(&self) -> Result<Snapshot, MetaError>;

    /// Deletes these private manifests (with their references) where each, at commit time, is still untagged,
    /// listed by no index in its repository, has no subject there, and was last pushed or pulled before
    /// `touched_before`. Returns the ones deleted.
    async fn gc_delete_manifests(
        &self,
        items: Vec<(i64, String)>,
        touched_before: i64,
    ) -> Result<Vec<(i64, String)>, MetaError>;

    /// Deletes these private blob links where each is still referenced by no manifest of its repository and was
    /// last confirmed before `touched_before`. Returns how many went.
    async fn gc_delete_links(
        &self,
        items: Vec<(i64, String)>,
        touched_before: i64,
    ) -> Result<u64, MetaError>;

    /// Deletes these blob rows where each is still linked nowhere, is no manifest, and was created before
    /// `created_before`; records a tombstone for each so its bytes are deleted later. Returns (digest, size)
    /// of the ones deleted.
    async fn gc_delete_blobs(
        &self,
        items: Vec<String>,
        created_before: i64,
    ) -> Result<Vec<(String, u64)>, MetaError>;

    /// Deletes repositories created before `created_before` that hold nothing (no manifest, tag, blob link or upload
    /// session), so the catalog lists only repositories with content. Returns how many went.
    async fn gc_delete_empty_repositories(&self, created_before: i64) -> Result<u64, MetaError>;

    /// Blobs whose row was deleted before `deleted_before` and whose bytes still wait for deletion.
    async fn tombstones(&self, deleted_before: i64) -> Result<Vec<Digest>, MetaError>;

    /// Forgets a tombstone once its bytes are handled.
    async fn clear_tombstone(&self, digest: &Digest) -> Result<(), MetaError>;

    /// Whether a tombstone exists for `digest` (its bytes are already scheduled for deletion).
    async fn has_tombstone(&self, digest: &Digest) -> Result<bool, MetaError>;

    /// Repositories, private and cached.
    async fn repositories(&self) -> Result<Vec<RepoInfo>, MetaError>;

    /// Tags of a repository, newest push first.
    async fn tag_details(&self, repo: &RepoName) -> Result<Vec<TagDetail>, MetaError>;

    /// Deletes a tag only if it still points at `digest` and was not pushed again since `updated_at` (a tag moved by
    /// a concurrent push is new, and retention must re-decide). True when deleted.
    async fn delete_tag_if(
        &self,
        repo: &RepoName,
        tag: &Tag,
        digest: &Digest,
        updated_at: i64,
    ) -> Result<bool, MetaError>;

    /// Untagged manifests of a repository that no index there lists and whose subject is not there.
    async fn untagged_manifests(&self, repo: &RepoName)
    -> Result<Vec<UntaggedManifest>, MetaError>;

    /// Manifests of a repository.
    async fn manifests_of(&self, repo: &RepoName) -> Result<Vec<ManifestRecord>, MetaError>;

    /// Every recorded reference of a repository's manifests, with whether its target is present there.
    async fn reference_checks(&self, repo: &RepoName) -> Result<Vec<RefCheck>, MetaError>;

    /// Blob rows in digest order after `after`, at most `n`: (digest, size).
    async fn blobs_page(
        &self,
        after: Option<String>,
        n: usize,
    ) -> Result<Vec<(Digest, u64)>, MetaError>;

    /// Whether a private repository links the blob or holds it as a manifest (so it is published content).
    async fn is_private(&self, digest: &Digest) -> Result<bool, MetaError>;

    /// Drops a damaged mirror cache entry in one transaction: the links, cached manifests (and tags on them) and
    /// the row, with a tombstone for the bytes. Refused (false) when private content holds the digest.
    async fn drop_cached(&self, digest: &Digest) -> Result<bool, MetaError>;

    /// Opens a run in the history.
    async fn start_run(&self, kind: &str, dry_run: bool) -> Result<i64, MetaError>;

    /// Closes a run with its outcome and JSON summary.
    async fn finish_run(&self, id: i64, outcome: &str, summary: &str) -> Result<(), MetaError>;

    /// The latest run of each kind, and the latest successful one of each kind when different.
    async fn recent_runs(&self, per_kind: usize) -> Result<Vec<RunRecord>, MetaError>;

    /// Totals.
    async fn stats(&self) -> Result<StoreStats, MetaError>;
}
