//! `UiStore`: one statement per page. Sizes are summed by correlated sub-queries over the `manifest_ref` primary
//! key (repo, manifest, …) and page rows are read along the `tag` primary key (repo, name), so a page costs
//! O(page size), not O(tags in the repository).
//!
//! Name search lowers both sides: names are ASCII (the OCI grammar), so PostgreSQL's `lower` under the columns'
//! "C" collation matches SQLite's ASCII-only `lower`.

use super::{SqlStore, texts};
use crate::MetaError;
use crate::sql::{Dialect, Row, vals};
use crate::ui::{RepoRow, TagRow, UiStore};
use berth_oci::{Digest, RepoName};

/// Bytes of the config and layers of manifest `manifest` in repository `repo` (SQL expressions) that are present.
fn blob_bytes(repo: &str, manifest: &str) -> String {
    format!(
        "(SELECT COALESCE(SUM(b.size), 0) FROM manifest_ref x JOIN blob b ON b.digest = x.child
          WHERE x.repo = {repo} AND x.manifest = {manifest} AND x.kind IN ('config', 'layer'))"
    )
}

/// A page of tags with everything a row shows. `SUM` over `BIGINT` is `NUMERIC` in PostgreSQL, hence the cast of
/// the total (a size beyond `BIGINT` would be a corrupt database and fails the statement rather than wrapping).
fn tag_page_sql(d: Dialect) -> String {
    let own = blob_bytes("t.repo", "t.manifest");
    let child = blob_bytes("c.repo", "c.digest");
    format!(
        "SELECT t.name, t.manifest, m.media_type, t.updated_at, m.last_pulled,
                CAST(m.size + {own} + (SELECT COALESCE(SUM(c.size + {child}), 0) FROM manifest_ref y
                    JOIN manifest c ON c.repo = y.repo AND c.digest = y.child
                    WHERE y.repo = t.repo AND y.manifest = t.manifest AND y.kind = 'child') AS BIGINT)
         FROM tag t JOIN manifest m ON m.repo = t.repo AND m.digest = t.manifest
         WHERE t.repo = (SELECT id FROM repository WHERE name = $1) AND t.name > $2 AND (CAST($3 AS TEXT) IS NULL OR {})
         ORDER BY t.name LIMIT $4",
        d.contains("t.name", "$3")
    )
}

#[async_trait::async_trait]
impl UiStore for SqlStore {
    async fn repository_page(
        &self,
        after: Option<String>,
        search: Option<String>,
        n: usize,
    ) -> Result<Vec<RepoRow>, MetaError> {
        let sql = format!(
            "SELECT r.name, CASE r.kind WHEN 'mirror' THEN r.mirror END, (SELECT COUNT(*) FROM tag t WHERE t.repo = r.id)
             FROM repository r WHERE r.name > $1 AND (CAST($2 AS TEXT) IS NULL OR {}) ORDER BY r.name LIMIT $3",
            self.dialect().contains("r.name", "$2")
        );
        let rows = self
            .scan(
                &sql,
                vals![after.as_deref().unwrap_or_default(), search.as_deref(), n],
            )
            .await?;
        rows.iter()
            .map(|r| {
                Ok(RepoRow {
                    name: r.text(0)?,
                    mirror: r.opt_text(1)?,
                    tags: r.size(2)?,
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
        let exists = self
            .read(
                "SELECT 1 FROM repository WHERE name = $1",
                vals![repo.as_str()],
            )
            .await?;
        if exists.is_empty() {
            return Ok(None);
        }
        let p = vals![
            repo.as_str(),
            after.as_deref().unwrap_or_default(),
            search.as_deref(),
            n
        ];
        let rows = self.scan(&tag_page_sql(self.dialect()), p).await?;
        let row = |r: &Row| {
            Ok(TagRow {
                name: r.text(0)?,
                digest: r.digest(1)?,
                media_type: r.text(2)?,
                pushed_at: r.int(3)?,
                last_pulled: r.opt_int(4)?,
                size: r.size(5)?,
            })
        };
        rows.iter()
            .map(row)
            .collect::<Result<Vec<_>, MetaError>>()
            .map(Some)
    }

    async fn tag_count(&self, repo: &RepoName) -> Result<u64, MetaError> {
        let sql = "SELECT COUNT(*) FROM tag t JOIN repository r ON r.id = t.repo WHERE r.name = $1";
        self.read(sql, vals![repo.as_str()])
            .await?
            .first()
            .map_or(Ok(0), |r| r.size(0))
    }

    async fn tags_of(&self, repo: &RepoName, digest: &Digest) -> Result<Vec<String>, MetaError> {
        let sql = "SELECT t.name FROM tag t JOIN repository r ON r.id = t.repo
                   WHERE r.name = $1 AND t.manifest = $2 ORDER BY t.name LIMIT 100";
        texts(
            self.read(sql, vals![repo.as_str(), &digest.to_string()])
                .await?,
        )
    }
}
