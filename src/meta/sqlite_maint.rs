//! `MaintenanceStore` on SQLite. Every deleting method re-checks its condition per item inside one `BEGIN
//! IMMEDIATE` transaction per batch, so it is exact against concurrent pushes, from this process or another.

use rusqlite::{OptionalExtension, TransactionBehavior, params};

use super::maint::{
    MaintenanceStore, RefCheck, RepoInfo, RunRecord, SnapLink, SnapManifest, Snapshot, StoreStats,
    TagDetail, UntaggedManifest,
};
use super::sqlite::{
    MANIFEST_COLUMNS, SqliteMetadataStore, manifest_row, parse_digest, repo_id, to_record,
    tombstone,
};
use super::{ManifestRecord, MetaError, RefKind, now};
use crate::oci::{Digest, RepoName, name::Tag};

/// Bytes of blobs that private repositories use, as links or as manifests.
const PRIVATE_BYTES: &str = "SELECT COALESCE(SUM(b.size), 0) FROM blob b WHERE
    EXISTS (SELECT 1 FROM repo_blob rb JOIN repository r ON r.id = rb.repo WHERE rb.digest = b.digest AND r.kind = 'private')
    OR EXISTS (SELECT 1 FROM manifest m JOIN repository r ON r.id = m.repo WHERE m.digest = b.digest AND r.kind = 'private')";

/// Every repository, by name, with its mirror when it is a cache.
fn repo_infos(conn: &rusqlite::Connection) -> rusqlite::Result<Vec<RepoInfo>> {
    conn.prepare_cached(
        "SELECT id, name, CASE kind WHEN 'mirror' THEN mirror END FROM repository ORDER BY name",
    )?
    .query_map([], |r| {
        Ok(RepoInfo {
            id: r.get(0)?,
            name: r.get(1)?,
            mirror: r.get(2)?,
        })
    })?
    .collect()
}

fn ref_kind(s: &str) -> Result<RefKind, MetaError> {
    match s {
        "config" => Ok(RefKind::Config),
        "layer" => Ok(RefKind::Layer),
        "child" => Ok(RefKind::Child),
        other => Err(MetaError::Corrupt(format!(
            "unknown reference kind {other:?}"
        ))),
    }
}

#[async_trait::async_trait]
impl MaintenanceStore for SqliteMetadataStore {
    async fn snapshot(&self) -> Result<Snapshot, MetaError> {
        self.read_scan(|conn| {
            let tx = conn.unchecked_transaction()?;
            let repos = repo_infos(&tx)?;
            let manifests = tx
                .prepare(
                    "SELECT m.repo, m.digest, m.subject, MAX(m.created_at, COALESCE(m.last_pulled, 0)),
                            EXISTS (SELECT 1 FROM tag t WHERE t.repo = m.repo AND t.manifest = m.digest)
                     FROM manifest m",
                )?
                .query_map([], |r| {
                    Ok(SnapManifest {
                        repo: r.get(0)?,
                        digest: r.get(1)?,
                        subject: r.get(2)?,
                        touched: r.get(3)?,
                        tagged: r.get(4)?,
                    })
                })?
                .collect::<Result<_, _>>()?;
            let mut refs = tx.prepare("SELECT repo, manifest, child, kind FROM manifest_ref")?;
            let (mut children, mut blob_refs) = (Vec::new(), Vec::new());
            let rows = refs.query_map([], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, String>(3)?,
                ))
            })?;
            for row in rows {
                let (repo, m, child, kind) = row?;
                if kind == "child" {
                    children.push((repo, m, child));
                } else {
                    blob_refs.push((repo, m, child));
                }
            }
            drop(refs);
            let links = tx
                .prepare("SELECT repo, digest, created_at FROM repo_blob")?
                .query_map([], |r| {
                    Ok(SnapLink {
                        repo: r.get(0)?,
                        digest: r.get(1)?,
                        touched: r.get(2)?,
                    })
                })?
                .collect::<Result<_, _>>()?;
            let blobs = tx
                .prepare("SELECT digest, size, created_at FROM blob")?
                .query_map([], |r| Ok((r.get(0)?, r.get::<_, i64>(1)? as u64, r.get(2)?)))?
                .collect::<Result<_, _>>()?;
            tx.commit()?;
            Ok(Snapshot {
                repos,
                manifests,
                children,
                blob_refs,
                links,
                blobs,
            })
        })
        .await
    }

    async fn gc_delete_manifests(
        &self,
        items: Vec<(i64, String)>,
        touched_before: i64,
    ) -> Result<Vec<(i64, String)>, MetaError> {
        self.write(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let mut deleted = Vec::new();
            for (repo, digest) in items {
                let garbage = tx
                    .prepare_cached(
                        "SELECT 1 FROM manifest m JOIN repository r ON r.id = m.repo
                         WHERE m.repo = ?1 AND m.digest = ?2 AND r.kind = 'private'
                           AND MAX(m.created_at, COALESCE(m.last_pulled, 0)) < ?3
                           AND NOT EXISTS (SELECT 1 FROM tag t WHERE t.repo = ?1 AND t.manifest = ?2)
                           AND NOT EXISTS (SELECT 1 FROM manifest_ref p
                                           WHERE p.repo = ?1 AND p.child = ?2 AND p.kind = 'child')
                           AND (m.subject IS NULL OR NOT EXISTS (
                                SELECT 1 FROM manifest s WHERE s.repo = ?1 AND s.digest = m.subject))",
                    )?
                    .exists(params![repo, digest, touched_before])?;
                if !garbage {
                    continue;
                }
                tx.prepare_cached("DELETE FROM manifest_ref WHERE repo = ?1 AND manifest = ?2")?
                    .execute(params![repo, digest])?;
                tx.prepare_cached("DELETE FROM manifest WHERE repo = ?1 AND digest = ?2")?
                    .execute(params![repo, digest])?;
                deleted.push((repo, digest));
            }
            tx.commit()?;
            Ok(deleted)
        })
        .await
    }

    async fn gc_delete_links(
        &self,
        items: Vec<(i64, String)>,
        touched_before: i64,
    ) -> Result<u64, MetaError> {
        self.write(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let mut n = 0;
            {
                let mut del = tx.prepare_cached(
                    "DELETE FROM repo_blob WHERE repo = ?1 AND digest = ?2 AND created_at < ?3
                       AND repo IN (SELECT id FROM repository WHERE kind = 'private')
                       AND NOT EXISTS (SELECT 1 FROM manifest_ref p WHERE p.repo = ?1 AND p.child = ?2
                                       AND p.kind IN ('config', 'layer'))",
                )?;
                for (repo, digest) in items {
                    n += del.execute(params![repo, digest, touched_before])? as u64;
                }
            }
            tx.commit()?;
            Ok(n)
        })
        .await
    }

    async fn gc_delete_blobs(
        &self,
        items: Vec<String>,
        created_before: i64,
    ) -> Result<Vec<(String, u64)>, MetaError> {
        self.write(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let mut deleted = Vec::new();
            for digest in items {
                let size: Option<i64> = tx
                    .prepare_cached(
                        "SELECT b.size FROM blob b WHERE b.digest = ?1 AND b.created_at < ?2
                           AND NOT EXISTS (SELECT 1 FROM repo_blob rb WHERE rb.digest = ?1)
                           AND NOT EXISTS (SELECT 1 FROM manifest m WHERE m.digest = ?1)",
                    )?
                    .query_row(params![digest, created_before], |r| r.get(0))
                    .optional()?;
                let Some(size) = size else { continue };
                tx.prepare_cached("DELETE FROM blob WHERE digest = ?1")?
                    .execute([&digest])?;
                tombstone(&tx, &digest)?;
                deleted.push((digest, size as u64));
            }
            tx.commit()?;
            Ok(deleted)
        })
        .await
    }

    async fn gc_delete_empty_repositories(&self, created_before: i64) -> Result<u64, MetaError> {
        self.write(move |conn| {
            let n = conn
                .prepare_cached(
                    "DELETE FROM repository WHERE created_at < ?1
                       AND NOT EXISTS (SELECT 1 FROM manifest m WHERE m.repo = repository.id)
                       AND NOT EXISTS (SELECT 1 FROM tag t WHERE t.repo = repository.id)
                       AND NOT EXISTS (SELECT 1 FROM repo_blob rb WHERE rb.repo = repository.id)
                       AND NOT EXISTS (SELECT 1 FROM upload u WHERE u.repo = repository.name)",
                )?
                .execute([created_before])?;
            Ok(n as u64)
        })
        .await
    }

    async fn tombstones(&self, deleted_before: i64) -> Result<Vec<Digest>, MetaError> {
        self.read_scan(move |conn| {
            let rows = conn
                .prepare_cached(
                    "SELECT digest FROM blob_tombstone WHERE deleted_at < ?1 ORDER BY digest",
                )?
                .query_map([deleted_before], |r| r.get::<_, String>(0))?
                .collect::<Result<Vec<_>, _>>()?;
            rows.into_iter().map(parse_digest).collect()
        })
        .await
    }

    async fn clear_tombstone(&self, digest: &Digest) -> Result<(), MetaError> {
        let digest = digest.to_string();
        self.write(move |conn| {
            conn.prepare_cached("DELETE FROM blob_tombstone WHERE digest = ?1")?
                .execute([digest])?;
            Ok(())
        })
        .await
    }

    async fn has_tombstone(&self, digest: &Digest) -> Result<bool, MetaError> {
        let digest = digest.to_string();
        self.read(move |conn| {
            Ok(conn
                .prepare_cached("SELECT 1 FROM blob_tombstone WHERE digest = ?1")?
                .exists([digest])?)
        })
        .await
    }

    async fn repositories(&self) -> Result<Vec<RepoInfo>, MetaError> {
        self.read_scan(|conn| Ok(repo_infos(conn)?)).await
    }

    async fn tag_details(&self, repo: &RepoName) -> Result<Vec<TagDetail>, MetaError> {
        let repo = repo.to_string();
        self.read_scan(move |conn| {
            let rows = conn
                .prepare_cached(
                    "SELECT t.name, t.manifest, t.updated_at, m.last_pulled FROM tag t
                     JOIN repository r ON r.id = t.repo JOIN manifest m ON m.repo = t.repo AND m.digest = t.manifest
                     WHERE r.name = ?1 ORDER BY t.updated_at DESC, t.name",
                )?
                .query_map([repo], |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, i64>(2)?,
                        r.get::<_, Option<i64>>(3)?,
                    ))
                })?
                .collect::<Result<Vec<_>, _>>()?;
            rows.into_iter()
                .map(|(name, d, updated_at, last_pulled)| {
                    Ok(TagDetail {
                        name,
                        digest: parse_digest(d)?,
                        updated_at,
                        last_pulled,
                    })
                })
                .collect()
        })
        .await
    }

    async fn delete_tag_if(
        &self,
        repo: &RepoName,
        tag: &Tag,
        digest: &Digest,
        updated_at: i64,
    ) -> Result<bool, MetaError> {
        let (repo, tag, digest) = (repo.to_string(), tag.to_string(), digest.to_string());
        self.write(move |conn| {
            let n = conn
                .prepare_cached(
                    "DELETE FROM tag WHERE repo = (SELECT id FROM repository WHERE name = ?1)
                     AND name = ?2 AND manifest = ?3 AND updated_at = ?4",
                )?
                .execute(params![repo, tag, digest, updated_at])?;
            Ok(n > 0)
        })
        .await
    }

    async fn untagged_manifests(
        &self,
        repo: &RepoName,
    ) -> Result<Vec<UntaggedManifest>, MetaError> {
        let repo = repo.to_string();
        self.read_scan(move |conn| {
            let Some(id) = repo_id(conn, &repo)? else {
                return Ok(Vec::new());
            };
            let rows = conn
                .prepare_cached(
                    "SELECT m.digest, m.created_at, m.last_pulled FROM manifest m WHERE m.repo = ?1
                       AND NOT EXISTS (SELECT 1 FROM tag t WHERE t.repo = ?1 AND t.manifest = m.digest)
                       AND NOT EXISTS (SELECT 1 FROM manifest_ref p WHERE p.repo = ?1 AND p.child = m.digest
                                       AND p.kind = 'child')
                       AND (m.subject IS NULL OR NOT EXISTS (
                            SELECT 1 FROM manifest s WHERE s.repo = ?1 AND s.digest = m.subject))
                     ORDER BY m.created_at, m.digest",
                )?
                .query_map([id], |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, i64>(1)?,
                        r.get::<_, Option<i64>>(2)?,
                    ))
                })?
                .collect::<Result<Vec<_>, _>>()?;
            rows.into_iter()
                .map(|(d, created_at, last_pulled)| {
                    Ok(UntaggedManifest {
                        digest: parse_digest(d)?,
                        created_at,
                        last_pulled,
                    })
                })
                .collect()
        })
        .await
    }

    async fn manifests_of(&self, repo: &RepoName) -> Result<Vec<ManifestRecord>, MetaError> {
        let repo = repo.to_string();
        self.read_scan(move |conn| {
            let sql = format!(
                "SELECT {MANIFEST_COLUMNS} FROM manifest m JOIN repository r ON r.id = m.repo
                 WHERE r.name = ?1 ORDER BY m.digest"
            );
            let rows = conn
                .prepare_cached(&sql)?
                .query_map([repo], manifest_row)?
                .collect::<Result<Vec<_>, _>>()?;
            rows.into_iter().map(to_record).collect()
        })
        .await
    }

    async fn reference_checks(&self, repo: &RepoName) -> Result<Vec<RefCheck>, MetaError> {
        let repo = repo.to_string();
        self.read_scan(move |conn| {
            let Some(id) = repo_id(conn, &repo)? else {
                return Ok(Vec::new());
            };
            let rows = conn
                .prepare_cached(
                    "SELECT p.manifest, p.child, p.kind, CASE p.kind
                        WHEN 'child' THEN EXISTS (SELECT 1 FROM manifest c WHERE c.repo = p.repo AND c.digest = p.child)
                        ELSE EXISTS (SELECT 1 FROM repo_blob rb JOIN blob b ON b.digest = rb.digest
                                     WHERE rb.repo = p.repo AND rb.digest = p.child) END
                     FROM manifest_ref p WHERE p.repo = ?1 ORDER BY p.manifest, p.child",
                )?
                .query_map([id], |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, String>(2)?,
                        r.get::<_, bool>(3)?,
                    ))
                })?
                .collect::<Result<Vec<_>, _>>()?;
            rows.into_iter()
                .map(|(m, c, k, present)| {
                    Ok(RefCheck {
                        manifest: parse_digest(m)?,
                        target: parse_digest(c)?,
                        kind: ref_kind(&k)?,
                        present,
                    })
                })
                .collect()
        })
        .await
    }

    async fn blobs_page(
        &self,
        after: Option<String>,
        n: usize,
    ) -> Result<Vec<(Digest, u64)>, MetaError> {
        self.read_scan(move |conn| {
            let rows = conn
                .prepare_cached(
                    "SELECT digest, size FROM blob WHERE digest > ?1 ORDER BY digest LIMIT ?2",
                )?
                .query_map(params![after.unwrap_or_default(), n as i64], |r| {
                    Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?))
                })?
                .collect::<Result<Vec<_>, _>>()?;
            rows.into_iter()
                .map(|(d, s)| Ok((parse_digest(d)?, s as u64)))
                .collect()
        })
        .await
    }

    async fn is_private(&self, digest: &Digest) -> Result<bool, MetaError> {
        let digest = digest.to_string();
        self.read(move |conn| {
            Ok(conn
                .prepare_cached(
                    "SELECT EXISTS (SELECT 1 FROM repo_blob rb JOIN repository r ON r.id = rb.repo
                                    WHERE rb.digest = ?1 AND r.kind = 'private')
                         OR EXISTS (SELECT 1 FROM manifest m JOIN repository r ON r.id = m.repo
                                    WHERE m.digest = ?1 AND r.kind = 'private')",
                )?
                .query_row([digest], |r| r.get(0))?)
        })
        .await
    }

    async fn drop_cached(&self, digest: &Digest) -> Result<bool, MetaError> {
        let digest = digest.to_string();
        self.write(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let private: bool = tx
                .prepare_cached(
                    "SELECT EXISTS (SELECT 1 FROM repo_blob rb JOIN repository r ON r.id = rb.repo
                                    WHERE rb.digest = ?1 AND r.kind = 'private')
                         OR EXISTS (SELECT 1 FROM manifest m JOIN repository r ON r.id = m.repo
                                    WHERE m.digest = ?1 AND r.kind = 'private')",
                )?
                .query_row([&digest], |r| r.get(0))?;
            if private {
                return Ok(false);
            }
            tx.prepare_cached("DELETE FROM tag WHERE manifest = ?1")?
                .execute([&digest])?;
            tx.prepare_cached("DELETE FROM manifest WHERE digest = ?1")?
                .execute([&digest])?;
            tx.prepare_cached("DELETE FROM repo_blob WHERE digest = ?1")?
                .execute([&digest])?;
            tx.prepare_cached("DELETE FROM blob WHERE digest = ?1")?
                .execute([&digest])?;
            tombstone(&tx, &digest)?;
            tx.commit()?;
            Ok(true)
        })
        .await
    }

    async fn start_run(&self, kind: &str, dry_run: bool) -> Result<i64, MetaError> {
        let kind = kind.to_owned();
        self.write(move |conn| {
            conn.prepare_cached(
                "INSERT INTO maint_run (kind, started_at, outcome, dry_run) VALUES (?1, ?2, 'running', ?3)",
            )?
            .execute(params![kind, now(), dry_run])?;
            Ok(conn.last_insert_rowid())
        })
        .await
    }

    async fn finish_run(&self, id: i64, outcome: &str, summary: &str) -> Result<(), MetaError> {
        let (outcome, summary) = (outcome.to_owned(), summary.to_owned());
        self.write(move |conn| {
            conn.prepare_cached(
                "UPDATE maint_run SET finished_at = ?2, outcome = ?3, summary = ?4 WHERE id = ?1",
            )?
            .execute(params![id, now(), outcome, summary])?;
            Ok(())
        })
        .await
    }

    async fn recent_runs(&self, per_kind: usize) -> Result<Vec<RunRecord>, MetaError> {
        self.read_scan(move |conn| {
            Ok(conn
                .prepare_cached(
                    "SELECT id, kind, started_at, finished_at, outcome, dry_run, summary FROM (
                         SELECT *, ROW_NUMBER() OVER (PARTITION BY kind ORDER BY id DESC) AS n FROM maint_run)
                     WHERE n <= ?1 ORDER BY kind, id DESC",
                )?
                .query_map([per_kind as i64], |r| {
                    Ok(RunRecord {
                        id: r.get(0)?,
                        kind: r.get(1)?,
                        started_at: r.get(2)?,
                        finished_at: r.get(3)?,
                        outcome: r.get(4)?,
                        dry_run: r.get(5)?,
                        summary: r.get(6)?,
                    })
                })?
                .collect::<Result<_, _>>()?)
        })
        .await
    }

    async fn stats(&self) -> Result<StoreStats, MetaError> {
        self.read_scan(|conn| {
            let tx = conn.unchecked_transaction()?;
            let count = |sql: &str| -> rusqlite::Result<u64> {
                tx.query_row(sql, [], |r| r.get::<_, i64>(0))
                    .map(|n| n as u64)
            };
            let s = StoreStats {
                private_repositories: count(
                    "SELECT COUNT(*) FROM repository WHERE kind = 'private'",
                )?,
                mirror_repositories: count(
                    "SELECT COUNT(*) FROM repository WHERE kind = 'mirror'",
                )?,
                manifests: count("SELECT COUNT(*) FROM manifest")?,
                tags: count("SELECT COUNT(*) FROM tag")?,
                blobs: count("SELECT COUNT(*) FROM blob")?,
                blob_bytes: count("SELECT COALESCE(SUM(size), 0) FROM blob")?,
                private_bytes: count(PRIVATE_BYTES)?,
                mirror_bytes: count(&format!(
                    "SELECT (SELECT COALESCE(SUM(size), 0) FROM blob) - ({PRIVATE_BYTES})"
                ))?,
                upload_sessions: count("SELECT COUNT(*) FROM upload")?,
                pending_byte_deletions: count("SELECT COUNT(*) FROM blob_tombstone")?,
            };
            tx.commit()?;
            Ok(s)
        })
        .await
    }
}
