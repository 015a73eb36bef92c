//! `MaintenanceStore` on PostgreSQL. Snapshots are one REPEATABLE READ transaction; every deleting method locks the
//! digests of its batch first (the same transaction-scoped advisory locks pushes take), then re-checks each item
//! with fresh statements, so it is exact against concurrent pushes from any replica.

use tokio_postgres::IsolationLevel;

use super::{
    LockSpace, MANIFEST_COLUMNS, PgError, PgMetadataStore, column, digest_key, execute, lock_keys,
    parse_digest, query, query_one, query_opt, repo_id, text_key, to_record, tombstone, write_tx,
};
use crate::meta::maint::{
    MaintenanceStore, RefCheck, RepoInfo, RunRecord, SnapLink, SnapManifest, Snapshot, StoreStats,
    TagDetail, UntaggedManifest,
};
use crate::meta::{ManifestRecord, MetaError, RefKind, StoreLock, now};
use crate::oci::{Digest, RepoName, name::Tag};

/// Bytes of blobs that private repositories use, as links or as manifests.
const PRIVATE_BYTES: &str = "SELECT COALESCE(SUM(b.size), 0)::BIGINT FROM blob b WHERE
    EXISTS (SELECT 1 FROM repo_blob rb JOIN repository r ON r.id = rb.repo WHERE rb.digest = b.digest AND r.kind = 'private')
    OR EXISTS (SELECT 1 FROM manifest m JOIN repository r ON r.id = m.repo WHERE m.digest = b.digest AND r.kind = 'private')";

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

fn digest_locks<'a>(digests: impl Iterator<Item = &'a String>) -> Vec<(LockSpace, i32)> {
    digests
        .map(|d| (LockSpace::Digest, digest_key(d)))
        .collect()
}

fn repo_info(r: &tokio_postgres::Row) -> Result<RepoInfo, tokio_postgres::Error> {
    Ok(RepoInfo {
        id: r.try_get(0)?,
        name: r.try_get(1)?,
        mirror: r.try_get(2)?,
    })
}

impl PgMetadataStore {
    /// Runs `f` in one read-only REPEATABLE READ transaction: every statement sees the same snapshot.
    async fn consistent_read<T>(
        &self,
        f: impl AsyncFnOnce(&deadpool_postgres::Transaction<'_>) -> Result<T, PgError>,
    ) -> Result<T, MetaError> {
        let mut conn = self.conn().await?;
        let tx = conn
            .build_transaction()
            .isolation_level(IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()
            .await?;
        let out = f(&tx).await?;
        tx.commit().await?;
        Ok(out)
    }
}

#[async_trait::async_trait]
impl MaintenanceStore for PgMetadataStore {
    async fn snapshot(&self) -> Result<Snapshot, MetaError> {
        self.consistent_read(async |tx| {
            let repos = query(
                tx,
                "SELECT id, name, CASE kind WHEN 'mirror' THEN mirror END FROM repository",
                &[],
            )
            .await?
            .iter()
            .map(repo_info)
            .collect::<Result<_, _>>()?;
            let manifests = query(
                tx,
                "SELECT m.repo, m.digest, m.subject, GREATEST(m.created_at, COALESCE(m.last_pulled, 0)),
                        EXISTS (SELECT 1 FROM tag t WHERE t.repo = m.repo AND t.manifest = m.digest)
                 FROM manifest m",
                &[],
            )
            .await?
            .iter()
            .map(|r| {
                Ok(SnapManifest {
                    repo: r.try_get(0)?,
                    digest: r.try_get(1)?,
                    subject: r.try_get(2)?,
                    touched: r.try_get(3)?,
                    tagged: r.try_get(4)?,
                })
            })
            .collect::<Result<_, tokio_postgres::Error>>()?;
            let (mut children, mut blob_refs) = (Vec::new(), Vec::new());
            for r in query(
                tx,
                "SELECT repo, manifest, child, kind FROM manifest_ref",
                &[],
            )
            .await?
            {
                let (repo, m, child, kind): (i64, String, String, String) =
                    (r.try_get(0)?, r.try_get(1)?, r.try_get(2)?, r.try_get(3)?);
                if kind == "child" {
                    children.push((repo, m, child));
                } else {
                    blob_refs.push((repo, m, child));
                }
            }
            let links = query(tx, "SELECT repo, digest, created_at FROM repo_blob", &[])
                .await?
                .iter()
                .map(|r| {
                    Ok(SnapLink {
                        repo: r.try_get(0)?,
                        digest: r.try_get(1)?,
                        touched: r.try_get(2)?,
                    })
                })
                .collect::<Result<_, tokio_postgres::Error>>()?;
            let blobs = query(tx, "SELECT digest, size, created_at FROM blob", &[])
                .await?
                .iter()
                .map(|r| {
                    Ok((
                        r.try_get(0)?,
                        r.try_get::<_, i64>(1)? as u64,
                        r.try_get(2)?,
                    ))
                })
                .collect::<Result<_, tokio_postgres::Error>>()?;
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
        let locks = digest_locks(items.iter().map(|(_, d)| d));
        write_tx!(self, |tx| {
            lock_keys(tx, locks.clone()).await?;
            let mut deleted = Vec::new();
            for (repo, digest) in &items {
                let garbage = query_opt(
                    tx,
                    "SELECT 1 FROM manifest m JOIN repository r ON r.id = m.repo
                     WHERE m.repo = $1 AND m.digest = $2 AND r.kind = 'private'
                       AND GREATEST(m.created_at, COALESCE(m.last_pulled, 0)) < $3
                       AND NOT EXISTS (SELECT 1 FROM tag t WHERE t.repo = $1 AND t.manifest = $2)
                       AND NOT EXISTS (SELECT 1 FROM manifest_ref p
                                       WHERE p.repo = $1 AND p.child = $2 AND p.kind = 'child')
                       AND (m.subject IS NULL OR NOT EXISTS (
                            SELECT 1 FROM manifest s WHERE s.repo = $1 AND s.digest = m.subject))",
                    &[repo, digest, &touched_before],
                )
                .await?
                .is_some();
                if !garbage {
                    continue;
                }
                execute(
                    tx,
                    "DELETE FROM manifest_ref WHERE repo = $1 AND manifest = $2",
                    &[repo, digest],
                )
                .await?;
                execute(
                    tx,
                    "DELETE FROM manifest WHERE repo = $1 AND digest = $2",
                    &[repo, digest],
                )
                .await?;
                deleted.push((*repo, digest.clone()));
            }
            Ok(deleted)
        })
    }

    async fn gc_delete_links(
        &self,
        items: Vec<(i64, String)>,
        touched_before: i64,
    ) -> Result<u64, MetaError> {
        let locks = digest_locks(items.iter().map(|(_, d)| d));
        write_tx!(self, |tx| {
            lock_keys(tx, locks.clone()).await?;
            let mut n = 0;
            for (repo, digest) in &items {
                n += execute(
                    tx,
                    "DELETE FROM repo_blob WHERE repo = $1 AND digest = $2 AND created_at < $3
                       AND repo IN (SELECT id FROM repository WHERE kind = 'private')
                       AND NOT EXISTS (SELECT 1 FROM manifest_ref p WHERE p.repo = $1 AND p.child = $2
                                       AND p.kind IN ('config', 'layer'))",
                    &[repo, digest, &touched_before],
                )
                .await?;
            }
            Ok(n)
        })
    }

    async fn gc_delete_blobs(
        &self,
        items: Vec<String>,
        created_before: i64,
    ) -> Result<Vec<(String, u64)>, MetaError> {
        let locks = digest_locks(items.iter());
        write_tx!(self, |tx| {
            lock_keys(tx, locks.clone()).await?;
            let mut deleted = Vec::new();
            for digest in &items {
                let size = query_opt(
                    tx,
                    "SELECT b.size FROM blob b WHERE b.digest = $1 AND b.created_at < $2
                       AND NOT EXISTS (SELECT 1 FROM repo_blob rb WHERE rb.digest = $1)
                       AND NOT EXISTS (SELECT 1 FROM manifest m WHERE m.digest = $1)",
                    &[digest, &created_before],
                )
                .await?
                .map(|r| r.try_get::<_, i64>(0))
                .transpose()?;
                let Some(size) = size else { continue };
                execute(tx, "DELETE FROM blob WHERE digest = $1", &[digest]).await?;
                tombstone(tx, digest).await?;
                deleted.push((digest.clone(), size as u64));
            }
            Ok(deleted)
        })
    }

    async fn gc_delete_empty_repositories(&self, created_before: i64) -> Result<u64, MetaError> {
        const EMPTY: &str = "NOT EXISTS (SELECT 1 FROM manifest m WHERE m.repo = repository.id)
            AND NOT EXISTS (SELECT 1 FROM tag t WHERE t.repo = repository.id)
            AND NOT EXISTS (SELECT 1 FROM repo_blob rb WHERE rb.repo = repository.id)
            AND NOT EXISTS (SELECT 1 FROM upload u WHERE u.repo = repository.name)";
        write_tx!(self, |tx| {
            // Lock the candidates first: a writer holds `FOR KEY SHARE` on its repository until it commits, so
            // once these locks are granted the re-check below sees everything such writers added.
            let ids: Vec<i64> = column(
                query(
                    tx,
                    &format!(
                        "SELECT id FROM repository WHERE created_at < $1 AND {EMPTY} ORDER BY id FOR UPDATE"
                    ),
                    &[&created_before],
                )
                .await?,
            )?;
            if ids.is_empty() {
                return Ok(0);
            }
            let n = execute(
                tx,
                &format!("DELETE FROM repository WHERE id = ANY($1) AND {EMPTY}"),
                &[&ids],
            )
            .await?;
            Ok(n)
        })
    }

    async fn tombstones(&self, deleted_before: i64) -> Result<Vec<Digest>, MetaError> {
        let c = self.conn().await?;
        let rows = query(
            &c,
            "SELECT digest FROM blob_tombstone WHERE deleted_at < $1 ORDER BY digest",
            &[&deleted_before],
        )
        .await?;
        column::<String>(rows)?
            .into_iter()
            .map(parse_digest)
            .collect()
    }

    async fn clear_tombstone(&self, digest: &Digest) -> Result<(), MetaError> {
        let c = self.conn().await?;
        execute(
            &c,
            "DELETE FROM blob_tombstone WHERE digest = $1",
            &[&digest.to_string()],
        )
        .await?;
        Ok(())
    }

    async fn has_tombstone(&self, digest: &Digest) -> Result<bool, MetaError> {
        let c = self.conn().await?;
        Ok(query_opt(
            &c,
            "SELECT 1 FROM blob_tombstone WHERE digest = $1",
            &[&digest.to_string()],
        )
        .await?
        .is_some())
    }

    async fn repositories(&self) -> Result<Vec<RepoInfo>, MetaError> {
        let c = self.conn().await?;
        Ok(query(
            &c,
            "SELECT id, name, CASE kind WHEN 'mirror' THEN mirror END FROM repository ORDER BY name",
            &[],
        )
        .await?
        .iter()
        .map(repo_info)
        .collect::<Result<_, _>>()?)
    }

    async fn tag_details(&self, repo: &RepoName) -> Result<Vec<TagDetail>, MetaError> {
        let c = self.conn().await?;
        let rows = query(
            &c,
            "SELECT t.name, t.manifest, t.updated_at, m.last_pulled FROM tag t
             JOIN repository r ON r.id = t.repo JOIN manifest m ON m.repo = t.repo AND m.digest = t.manifest
             WHERE r.name = $1 ORDER BY t.updated_at DESC, t.name",
            &[&repo.as_str()],
        )
        .await?;
        rows.iter()
            .map(|r| {
                Ok(TagDetail {
                    name: r.try_get(0)?,
                    digest: parse_digest(r.try_get(1)?)?,
                    updated_at: r.try_get(2)?,
                    last_pulled: r.try_get(3)?,
                })
            })
            .collect()
    }

    async fn delete_tag_if(
        &self,
        repo: &RepoName,
        tag: &Tag,
        digest: &Digest,
        updated_at: i64,
    ) -> Result<bool, MetaError> {
        let c = self.conn().await?;
        // One statement: a concurrent push that moves the tag makes PostgreSQL re-check these conditions on the
        // new row version, which then no longer matches.
        let n = execute(
            &c,
            "DELETE FROM tag WHERE repo = (SELECT id FROM repository WHERE name = $1)
             AND name = $2 AND manifest = $3 AND updated_at = $4",
            &[
                &repo.as_str(),
                &tag.as_str(),
                &digest.to_string(),
                &updated_at,
            ],
        )
        .await?;
        Ok(n > 0)
    }

    async fn untagged_manifests(
        &self,
        repo: &RepoName,
    ) -> Result<Vec<UntaggedManifest>, MetaError> {
        let c = self.conn().await?;
        let Some(id) = repo_id(&c, repo.as_str()).await? else {
            return Ok(Vec::new());
        };
        let rows = query(
            &c,
            "SELECT m.digest, m.created_at, m.last_pulled FROM manifest m WHERE m.repo = $1
               AND NOT EXISTS (SELECT 1 FROM tag t WHERE t.repo = $1 AND t.manifest = m.digest)
               AND NOT EXISTS (SELECT 1 FROM manifest_ref p WHERE p.repo = $1 AND p.child = m.digest
                               AND p.kind = 'child')
               AND (m.subject IS NULL OR NOT EXISTS (
                    SELECT 1 FROM manifest s WHERE s.repo = $1 AND s.digest = m.subject))
             ORDER BY m.created_at, m.digest",
            &[&id],
        )
        .await?;
        rows.iter()
            .map(|r| {
                Ok(UntaggedManifest {
                    digest: parse_digest(r.try_get(0)?)?,
                    created_at: r.try_get(1)?,
                    last_pulled: r.try_get(2)?,
                })
            })
            .collect()
    }

    async fn manifests_of(&self, repo: &RepoName) -> Result<Vec<ManifestRecord>, MetaError> {
        let c = self.conn().await?;
        let sql = format!(
            "SELECT {MANIFEST_COLUMNS} FROM manifest m JOIN repository r ON r.id = m.repo
             WHERE r.name = $1 ORDER BY m.digest"
        );
        let rows = query(&c, &sql, &[&repo.as_str()]).await?;
        rows.iter()
            .map(|r| to_record(r).map_err(MetaError::from))
            .collect()
    }

    async fn reference_checks(&self, repo: &RepoName) -> Result<Vec<RefCheck>, MetaError> {
        let c = self.conn().await?;
        let Some(id) = repo_id(&c, repo.as_str()).await? else {
            return Ok(Vec::new());
        };
        let rows = query(
            &c,
            "SELECT p.manifest, p.child, p.kind, CASE p.kind
                WHEN 'child' THEN EXISTS (SELECT 1 FROM manifest c WHERE c.repo = p.repo AND c.digest = p.child)
                ELSE EXISTS (SELECT 1 FROM repo_blob rb JOIN blob b ON b.digest = rb.digest
                             WHERE rb.repo = p.repo AND rb.digest = p.child) END
             FROM manifest_ref p WHERE p.repo = $1 ORDER BY p.manifest, p.child",
            &[&id],
        )
        .await?;
        rows.iter()
            .map(|r| {
                let kind: String = r.try_get(2)?;
                Ok(RefCheck {
                    manifest: parse_digest(r.try_get(0)?)?,
                    target: parse_digest(r.try_get(1)?)?,
                    kind: ref_kind(&kind)?,
                    present: r.try_get(3)?,
                })
            })
            .collect()
    }

    async fn blobs_page(
        &self,
        after: Option<String>,
        n: usize,
    ) -> Result<Vec<(Digest, u64)>, MetaError> {
        let c = self.conn().await?;
        let rows = query(
            &c,
            "SELECT digest, size FROM blob WHERE digest > $1 ORDER BY digest LIMIT $2",
            &[&after.unwrap_or_default(), &(n as i64)],
        )
        .await?;
        rows.iter()
            .map(|r| Ok((parse_digest(r.try_get(0)?)?, r.try_get::<_, i64>(1)? as u64)))
            .collect()
    }

    async fn is_private(&self, digest: &Digest) -> Result<bool, MetaError> {
        let c = self.conn().await?;
        Ok(query_one(
            &c,
            "SELECT EXISTS (SELECT 1 FROM repo_blob rb JOIN repository r ON r.id = rb.repo
                            WHERE rb.digest = $1 AND r.kind = 'private')
                 OR EXISTS (SELECT 1 FROM manifest m JOIN repository r ON r.id = m.repo
                            WHERE m.digest = $1 AND r.kind = 'private')",
            &[&digest.to_string()],
        )
        .await?
        .try_get(0)?)
    }

    async fn drop_cached(&self, digest: &Digest) -> Result<bool, MetaError> {
        let digest = digest.to_string();
        write_tx!(self, |tx| {
            lock_keys(tx, vec![(LockSpace::Digest, digest_key(&digest))]).await?;
            let private: bool = query_one(
                tx,
                "SELECT EXISTS (SELECT 1 FROM repo_blob rb JOIN repository r ON r.id = rb.repo
                                WHERE rb.digest = $1 AND r.kind = 'private')
                     OR EXISTS (SELECT 1 FROM manifest m JOIN repository r ON r.id = m.repo
                                WHERE m.digest = $1 AND r.kind = 'private')",
                &[&digest],
            )
            .await?
            .try_get(0)?;
            if private {
                return Ok(false);
            }
            for sql in [
                "DELETE FROM tag WHERE manifest = $1",
                "DELETE FROM manifest_ref WHERE manifest = $1",
                "DELETE FROM manifest WHERE digest = $1",
                "DELETE FROM repo_blob WHERE digest = $1",
                "DELETE FROM blob WHERE digest = $1",
            ] {
                execute(tx, sql, &[&digest]).await?;
            }
            tombstone(tx, &digest).await?;
            Ok(true)
        })
    }

    async fn start_run(&self, kind: &str, dry_run: bool) -> Result<i64, MetaError> {
        let c = self.conn().await?;
        Ok(query_one(
            &c,
            "INSERT INTO maint_run (kind, started_at, outcome, dry_run) VALUES ($1, $2, 'running', $3)
             RETURNING id",
            &[&kind, &now(), &dry_run],
        )
        .await?
        .try_get(0)?)
    }

    async fn finish_run(&self, id: i64, outcome: &str, summary: &str) -> Result<(), MetaError> {
        let c = self.conn().await?;
        execute(
            &c,
            "UPDATE maint_run SET finished_at = $2, outcome = $3, summary = $4 WHERE id = $1",
            &[&id, &now(), &outcome, &summary],
        )
        .await?;
        Ok(())
    }

    async fn recent_runs(&self, per_kind: usize) -> Result<Vec<RunRecord>, MetaError> {
        let c = self.conn().await?;
        let rows = query(
            &c,
            "SELECT id, kind, started_at, finished_at, outcome, dry_run, summary FROM (
                 SELECT *, ROW_NUMBER() OVER (PARTITION BY kind ORDER BY id DESC) AS n FROM maint_run) runs
             WHERE n <= $1 ORDER BY kind, id DESC",
            &[&(per_kind as i64)],
        )
        .await?;
        Ok(rows
            .iter()
            .map(|r| {
                Ok(RunRecord {
                    id: r.try_get(0)?,
                    kind: r.try_get(1)?,
                    started_at: r.try_get(2)?,
                    finished_at: r.try_get(3)?,
                    outcome: r.try_get(4)?,
                    dry_run: r.try_get(5)?,
                    summary: r.try_get(6)?,
                })
            })
            .collect::<Result<_, tokio_postgres::Error>>()?)
    }

    async fn stats(&self) -> Result<StoreStats, MetaError> {
        self.consistent_read(async |tx| {
            let count = async |sql: &str| -> Result<u64, PgError> {
                Ok(query_one(tx, sql, &[]).await?.try_get::<_, i64>(0)? as u64)
            };
            Ok(StoreStats {
                private_repositories: count(
                    "SELECT COUNT(*) FROM repository WHERE kind = 'private'",
                )
                .await?,
                mirror_repositories: count("SELECT COUNT(*) FROM repository WHERE kind = 'mirror'")
                    .await?,
                manifests: count("SELECT COUNT(*) FROM manifest").await?,
                tags: count("SELECT COUNT(*) FROM tag").await?,
                blobs: count("SELECT COUNT(*) FROM blob").await?,
                blob_bytes: count("SELECT COALESCE(SUM(size), 0)::BIGINT FROM blob").await?,
                private_bytes: count(PRIVATE_BYTES).await?,
                mirror_bytes: count(&format!(
                    "SELECT (SELECT COALESCE(SUM(size), 0)::BIGINT FROM blob) - ({PRIVATE_BYTES})"
                ))
                .await?,
                upload_sessions: count("SELECT COUNT(*) FROM upload").await?,
                pending_byte_deletions: count("SELECT COUNT(*) FROM blob_tombstone").await?,
            })
        })
        .await
    }

    async fn try_lease(&self, job: &str) -> Result<Option<StoreLock>, MetaError> {
        let lease = self
            .session_lock(LockSpace::Lease, text_key(job), false)
            .await?;
        Ok(lease.map(|l| StoreLock::new(Box::new(l))))
    }
}
