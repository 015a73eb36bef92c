//! What the web UI asks of the metadata store: pages of repositories and of tags with everything a row shows, each
//! in one query, so a repository with 10,000 tags renders a page without one query per tag.

use super::{MetaError, MetadataStore};
use berth_oci::{Digest, RepoName};

/// A repository as the repository list shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepoRow {
    pub name: String,
    /// The mirror caching it, `None` for a private repository.
    pub mirror: Option<String>,
    pub tags: u64,
}

/// A tag as the tag list shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TagRow {
    pub name: String,
    pub digest: Digest,
    pub media_type: String,
    /// When the tag was last pushed (moved), unix seconds.
    pub pushed_at: i64,
    pub last_pulled: Option<i64>,
    /// Bytes of the manifest, its config and layers, and for an index its child manifests with theirs — counting
    /// only what is present (a mirror may not have fetched every layer).
    pub size: u64,
}

#[async_trait::async_trait]
pub trait UiStore: MetadataStore {
    /// Up to `n` repositories after `after` in name order whose name contains `search` (case-insensitive).
    async fn repository_page(
        &self,
        after: Option<String>,
        search: Option<String>,
        n: usize,
    ) -> Result<Vec<RepoRow>, MetaError>;

    /// Up to `n` tags of `repo` after `after` in name order whose name contains `search`; `None` when the
    /// repository does not exist.
    async fn tag_page(
        &self,
        repo: &RepoName,
        after: Option<String>,
        search: Option<String>,
        n: usize,
    ) -> Result<Option<Vec<TagRow>>, MetaError>;

    /// Number of tags of `repo`.
    async fn tag_count(&self, repo: &RepoName) -> Result<u64, MetaError>;

    /// Tags of `repo` pointing at `digest`.
    async fn tags_of(&self, repo: &RepoName, digest: &Digest) -> Result<Vec<String>, MetaError>;
}
