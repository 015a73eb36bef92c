//! `UiStore` on SQLite: one statement per page, sizes summed by correlated sub-queries over the `manifest_ref`
//! primary key (repo, manifest, …), so a page costs O(page size), not O(tags in the repository).

use std::sync::LazyLock;

use rusqlite::{OptionalExtension, params};

use super::MetaError;
use super::sqlite::{SqliteMetadataStore, parse_digest, repo_id};
use super::ui::{RepoRow, TagRow, UiStore};
use crate::oci::{Digest, RepoName};

/// Bytes of the config and layers of manifest `$m` in repository `$r` that are present.
const BLOB_BYTES: &str =
    "(SELECT COALESCE(SUM(b.size), 0) FROM manifest_ref x JOIN blob b ON b.digest = x.child
     WHERE x.repo = $r AND x.manifest = $m AND x.kind IN ('config', 'layer'))";

/// A page of tags with everything a row shows; built once from `BLOB_BYTES`.
static TAG_PAGE_SQL: LazyLock<String> = LazyLock::new(|| {
    let own = BLOB_BYTES
        .replace("$r", "t.repo")
        .replace("$m", "t.manifest");
    let child = BLOB_BYTES.replace("$r", "c.repo").replace("$m", "c.digest");
    format!(
        "SELECT t.name, t.manifest, m.media_type, t.updated_at, m.last_pulled,
                m.size + {own} + (SELECT COALESCE(SUM(c.size + {child}), 0) FROM manifest_ref y
                    JOIN manifest c ON c.repo = y.repo AND c.digest = y.child
                    WHERE y.repo = t.repo AND y.manifest = t.manifest AND y.kind = 'child')
         FROM tag t JOIN manifest m ON m.repo = t.repo AND m.digest = t.manifest
         WHERE t.repo = ?1 AND t.name > ?2 AND (?3 IS NULL OR instr(lower(t.name), lower(?3)) > 0)
         ORDER BY t.name LIMIT ?4"
    )
});

#[async_trait::async_trait]
impl UiStore for SqliteMetadataStore {
    async fn repository_page(
        &self,
        after: Option<String>,
        search: Option<String>,
        n: usize,
    ) -> Result<Vec<RepoRow>, MetaError> {
        self.read_scan(move |conn| {
            let rows = conn
                .prepare_cached(
                    "SELECT r.name, CASE r.kind WHEN 'mirror' THEN r.mirror END,
                            (SELECT COUNT(*) FROM tag t WHERE t.repo = r.id)
                     FROM repository r
                     WHERE r.name > ?1 AND (?2 IS NULL OR instr(lower(r.name), lower(?2)) > 0)
                     ORDER BY r.name LIMIT ?3",
                )?
                .query_map(params![after.unwrap_or_default(), search, n as i64], |r| {
                    Ok(RepoRow {
                        name: r.get(0)?,
                        mirror: r.get(1)?,
                        tags: r.get::<_, i64>(2)? as u64,
                    })
                })?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(rows)
        })
        .await
    }

    async fn tag_page(
        &self,
        repo: &RepoName,
        after: Option<String>,
        search: Option<String>,
        n: usize,
    ) -> Result<Option<Vec<TagRow>>, MetaError> {
        let repo = repo.to_string();
        self.read_scan(move |conn| {
            let Some(id) = repo_id(conn, &repo)? else {
                return Ok(None);
            };
            let rows = conn
                .prepare_cached(&TAG_PAGE_SQL)?
                .query_map(
                    params![id, after.unwrap_or_default(), search, n as i64],
                    |r| {
                        Ok((
                            r.get::<_, String>(0)?,
                            r.get::<_, String>(1)?,
                            r.get::<_, String>(2)?,
                            r.get::<_, i64>(3)?,
                            r.get::<_, Option<i64>>(4)?,
                            r.get::<_, i64>(5)?,
                        ))
                    },
                )?
                .collect::<Result<Vec<_>, _>>()?;
            rows.into_iter()
                .map(|(name, d, media_type, pushed_at, last_pulled, size)| {
                    Ok(TagRow {
                        name,
                        digest: parse_digest(d)?,
                        media_type,
                        pushed_at,
                        last_pulled,
                        size: size.max(0) as u64,
                    })
                })
                .collect::<Result<Vec<_>, MetaError>>()
                .map(Some)
        })
        .await
    }

    async fn tag_count(&self, repo: &RepoName) -> Result<u64, MetaError> {
        let repo = repo.to_string();
        self.read(move |conn| {
            let n: Option<i64> = conn
                .prepare_cached(
                    "SELECT COUNT(*) FROM tag t JOIN repository r ON r.id = t.repo WHERE r.name = ?1",
                )?
                .query_row([repo], |r| r.get(0))
                .optional()?;
            Ok(n.unwrap_or(0).max(0) as u64)
        })
        .await
    }

    async fn tags_of(&self, repo: &RepoName, digest: &Digest) -> Result<Vec<String>, MetaError> {
        let (repo, digest) = (repo.to_string(), digest.to_string());
        self.read(move |conn| {
            let rows = conn
                .prepare_cached(
                    "SELECT t.name FROM tag t JOIN repository r ON r.id = t.repo
                     WHERE r.name = ?1 AND t.manifest = ?2 ORDER BY t.name LIMIT 100",
                )?
                .query_map([repo, digest], |r| r.get::<_, String>(0))?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(rows)
        })
        .await
    }
}
