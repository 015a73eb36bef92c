//! `UiStore` on PostgreSQL: the same statements as SQLite's (`meta::sqlite_ui`), one per page. Sizes are summed by
//! correlated sub-queries over the `manifest_ref` primary key (repo, manifest, …) and page rows are read along the
//! `tag` primary key (repo, name), so a page costs O(page size), not O(tags in the repository); the schema's
//! existing indexes cover every statement here (`tags_of` uses `tag_manifest`).
//!
//! Name search lowers both sides: names are ASCII (the OCI grammar), so `lower` under the columns' "C" collation
//! matches SQLite's ASCII-only `lower`.

use std::sync::LazyLock;

use super::{PgMetadataStore, column, parse_digest, query, query_one, repo_id};
use crate::meta::MetaError;
use crate::meta::ui::{RepoRow, TagRow, UiStore};
use crate::oci::{Digest, RepoName};

/// Bytes of the config and layers of manifest `manifest` in repository `repo` (SQL expressions) that are present.
fn blob_bytes(repo: &str, manifest: &str) -> String {
    format!(
        "(SELECT COALESCE(SUM(b.size), 0) FROM manifest_ref x JOIN blob b ON b.digest = x.child
          WHERE x.repo = {repo} AND x.manifest = {manifest} AND x.kind IN ('config', 'layer'))"
    )
}

/// A page of tags with everything a row shows. `SUM` over `BIGINT` is `NUMERIC` in PostgreSQL, hence the cast of
/// the total (a size beyond `BIGINT` would be a corrupt database and fails the statement rather than wrapping).
static TAG_PAGE_SQL: LazyLock<String> = LazyLock::new(|| {
    let own = blob_bytes("t.repo", "t.manifest");
    let child = blob_bytes("c.repo", "c.digest");
    format!(
        "SELECT t.name, t.manifest, m.media_type, t.updated_at, m.last_pulled,
                (m.size + {own} + (SELECT COALESCE(SUM(c.size + {child}), 0) FROM manifest_ref y
                    JOIN manifest c ON c.repo = y.repo AND c.digest = y.child
                    WHERE y.repo = t.repo AND y.manifest = t.manifest AND y.kind = 'child'))::BIGINT
         FROM tag t JOIN manifest m ON m.repo = t.repo AND m.digest = t.manifest
         WHERE t.repo = $1 AND t.name > $2 AND ($3::text IS NULL OR strpos(lower(t.name), lower($3)) > 0)
         ORDER BY t.name LIMIT $4"
    )
});

#[async_trait::async_trait]
impl UiStore for PgMetadataStore {
    async fn repository_page(
        &self,
        after: Option<String>,
        search: Option<String>,
        n: usize,
    ) -> Result<Vec<RepoRow>, MetaError> {
        let c = self.conn().await?;
        let rows = query(
            &c,
            "SELECT r.name, CASE r.kind WHEN 'mirror' THEN r.mirror END,
                    (SELECT COUNT(*) FROM tag t WHERE t.repo = r.id)
             FROM repository r
             WHERE r.name > $1 AND ($2::text IS NULL OR strpos(lower(r.name), lower($2)) > 0)
             ORDER BY r.name LIMIT $3",
            &[&after.unwrap_or_default(), &search, &(n as i64)],
        )
        .await?;
        rows.iter()
            .map(|r| {
                Ok(RepoRow {
                    name: r.try_get(0)?,
                    mirror: r.try_get(1)?,
                    tags: r.try_get::<_, i64>(2)?.max(0) as u64,
                })
            })
            .collect()
    }

    async fn tag_page(
        &self,
        repo: &RepoName,
        after: Option<String>,
        search: Option<String>,
        n: usize,
    ) -> Result<Option<Vec<TagRow>>, MetaError> {
        let c = self.conn().await?;
        let Some(id) = repo_id(&c, repo.as_str()).await? else {
            return Ok(None);
        };
        let rows = query(
            &c,
            &TAG_PAGE_SQL,
            &[&id, &after.unwrap_or_default(), &search, &(n as i64)],
        )
        .await?;
        rows.iter()
            .map(|r| {
                Ok(TagRow {
                    name: r.try_get(0)?,
                    digest: parse_digest(r.try_get(1)?)?,
                    media_type: r.try_get(2)?,
                    pushed_at: r.try_get(3)?,
                    last_pulled: r.try_get(4)?,
                    size: r.try_get::<_, i64>(5)?.max(0) as u64,
                })
            })
            .collect::<Result<Vec<_>, MetaError>>()
            .map(Some)
    }

    async fn tag_count(&self, repo: &RepoName) -> Result<u64, MetaError> {
        let c = self.conn().await?;
        let n: i64 = query_one(
            &c,
            "SELECT COUNT(*) FROM tag t JOIN repository r ON r.id = t.repo WHERE r.name = $1",
            &[&repo.as_str()],
        )
        .await?
        .try_get(0)?;
        Ok(n.max(0) as u64)
    }

    async fn tags_of(&self, repo: &RepoName, digest: &Digest) -> Result<Vec<String>, MetaError> {
        let c = self.conn().await?;
        let rows = query(
            &c,
            "SELECT t.name FROM tag t JOIN repository r ON r.id = t.repo
             WHERE r.name = $1 AND t.manifest = $2 ORDER BY t.name LIMIT 100",
            &[&repo.as_str(), &digest.to_string()],
        )
        .await?;
        Ok(column(rows)?)
    }
}
