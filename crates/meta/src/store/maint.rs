//! `MaintenanceStore`: snapshots are one consistent read; every deleting method locks the digests of its batch
//! first (the locks pushes take), then re-checks each item inside its transaction, so it is exact against
//! concurrent pushes from this process, the CLI or another replica.

use super::{MANIFEST_COLUMNS, SqlStore, to_record, tombstone};
use crate::maint::{
    MaintenanceStore, RefCheck, RepoInfo, RunRecord, SnapLink, SnapManifest, Snapshot, StoreStats,
    TagDetail, UntaggedManifest,
};
use crate::sql::{Lock, Row, Tx, scan_tx, vals, write_tx};
use crate::{ManifestRecord, MetaError, RefKind, now};
use berth_oci::{Digest, RepoName, name::Tag};

/// Bytes of blobs that private repositories use, as links or as manifests.
const PRIVATE_BYTES: &str = "SELECT CAST(COALESCE(SUM(b.size), 0) AS BIGINT) FROM blob b WHERE
    EXISTS (SELECT 1 FROM repo_blob rb JOIN repository r ON r.id = rb.repo WHERE rb.digest = b.digest AND r.kind = 'private')
    OR EXISTS (SELECT 1 FROM manifest m JOIN repository r ON r.id = m.repo WHERE m.digest = b.digest AND r.kind = 'private')";

/// Whether private content holds digest `$1` (so it is published, never a cache entry).
const PRIVATE_DIGEST: &str =
    "SELECT EXISTS (SELECT 1 FROM repo_blob rb JOIN repository r ON r.id = rb.repo
                                WHERE rb.digest = $1 AND r.kind = 'private')
                     OR EXISTS (SELECT 1 FROM manifest m JOIN repository r ON r.id = m.repo
                                WHERE m.digest = $1 AND r.kind = 'private')";

/// Untagged manifest `m` that no index in its repository lists and whose subject is not there.
const UNNEEDED: &str = "NOT EXISTS (SELECT 1 FROM tag t WHERE t.repo = m.repo AND t.manifest = m.digest)
    AND NOT EXISTS (SELECT 1 FROM manifest_ref p WHERE p.repo = m.repo AND p.child = m.digest AND p.kind = 'child')
    AND (m.subject IS NULL OR NOT EXISTS (SELECT 1 FROM manifest s WHERE s.repo = m.repo AND s.digest = m.subject))";

/// A repository holding nothing (no manifest, tag, blob link or upload session).
const EMPTY: &str = "NOT EXISTS (SELECT 1 FROM manifest m WHERE m.repo = repository.id)
    AND NOT EXISTS (SELECT 1 FROM tag t WHERE t.repo = repository.id)
    AND NOT EXISTS (SELECT 1 FROM repo_blob rb WHERE rb.repo = repository.id)
    AND NOT EXISTS (SELECT 1 FROM upload u WHERE u.repo = repository.name)";

async fn repo_infos(tx: &mut Tx<'_>) -> Result<Vec<RepoInfo>, MetaError> {
    let rows = tx
        .query(
            "SELECT id, name, CASE kind WHEN 'mirror' THEN mirror END FROM repository ORDER BY name",
            &[],
        )
        .await?;
    rows.iter()
        .map(|r| {
            Ok(RepoInfo {
                id: r.int(0)?,
                name: r.text(1)?,
                mirror: r.opt_text(2)?,
            })
        })
        .collect()
}

fn map<T>(rows: Vec<Row>, f: impl Fn(&Row) -> Result<T, MetaError>) -> Result<Vec<T>, MetaError> {
    rows.iter().map(f).collect()
}

async fn snapshot(tx: &mut Tx<'_>) -> Result<Snapshot, MetaError> {
    let repos = repo_infos(tx).await?;
    let sql = format!(
        "SELECT m.repo, m.digest, m.subject, {}(m.created_at, COALESCE(m.last_pulled, 0)),
                EXISTS (SELECT 1 FROM tag t WHERE t.repo = m.repo AND t.manifest = m.digest)
         FROM manifest m",
        tx.dialect().greatest()
    );
    let manifests = map(tx.query(&sql, &[]).await?, |r| {
        Ok(SnapManifest {
            repo: r.int(0)?,
            digest: r.text(1)?,
            subject: r.opt_text(2)?,
            touched: r.int(3)?,
            tagged: r.bool(4)?,
        })
    })?;
    let (mut children, mut blob_refs) = (Vec::new(), Vec::new());
    for r in tx
        .query("SELECT repo, manifest, child, kind FROM manifest_ref", &[])
        .await?
    {
        let item = (r.int(0)?, r.text(1)?, r.text(2)?);
        if r.text(3)? == "child" {
            children.push(item);
        } else {
            blob_refs.push(item);
        }
    }
    let links = map(
        tx.query("SELECT repo, digest, created_at FROM repo_blob", &[])
            .await?,
        |r| {
            Ok(SnapLink {
                repo: r.int(0)?,
                digest: r.text(1)?,
                touched: r.int(2)?,
            })
        },
    )?;
    let blobs = map(
        tx.query("SELECT digest, size, created_at FROM blob", &[])
            .await?,
        |r| Ok((r.text(0)?, r.size(1)?, r.int(2)?)),
    )?;
    Ok(Snapshot {
        repos,
        manifests,
        children,
        blob_refs,
        links,
        blobs,
    })
}

async fn gc_delete_manifests(
    tx: &mut Tx<'_>,
    items: &[(i64, String)],
    touched_before: i64,
) -> Result<Vec<(i64, String)>, MetaError> {
    let locks: Vec<Lock<'_>> = items.iter().map(|(_, d)| Lock::Digest(d)).collect();
    tx.lock(&locks).await?;
    let garbage = format!(
        "SELECT 1 FROM manifest m JOIN repository r ON r.id = m.repo
         WHERE m.repo = $1 AND m.digest = $2 AND r.kind = 'private'
           AND {}(m.created_at, COALESCE(m.last_pulled, 0)) < $3 AND {UNNEEDED}",
        tx.dialect().greatest()
    );
    let mut deleted = Vec::new();
    for (repo, digest) in items {
        let p = [(*repo).into(), digest.into()];
        if !tx
            .exists(&garbage, &[p[0], p[1], touched_before.into()])
            .await?
        {
            continue;
        }
        tx.exec(
            "DELETE FROM manifest_ref WHERE repo = $1 AND manifest = $2",
            &p,
        )
        .await?;
        tx.exec("DELETE FROM manifest WHERE repo = $1 AND digest = $2", &p)
            .await?;
        deleted.push((*repo, digest.clone()));
    }
    Ok(deleted)
}

async fn gc_delete_links(
    tx: &mut Tx<'_>,
    items: &[(i64, String)],
    touched_before: i64,
) -> Result<u64, MetaError> {
    let locks: Vec<Lock<'_>> = items.iter().map(|(_, d)| Lock::Digest(d)).collect();
    tx.lock(&locks).await?;
    let mut n = 0;
    for (repo, digest) in items {
        n += tx
            .exec(
                "DELETE FROM repo_blob WHERE repo = $1 AND digest = $2 AND created_at < $3
                   AND repo IN (SELECT id FROM repository WHERE kind = 'private')
                   AND NOT EXISTS (SELECT 1 FROM manifest_ref p WHERE p.repo = $1 AND p.child = $2
                                   AND p.kind IN ('config', 'layer'))",
                &[(*repo).into(), digest.into(), touched_before.into()],
            )
            .await?;
    }
    Ok(n)
}

async fn gc_delete_blobs(
    tx: &mut Tx<'_>,
    items: &[String],
    created_before: i64,
) -> Result<Vec<(String, u64)>, MetaError> {
    let locks: Vec<Lock<'_>> = items.iter().map(|d| Lock::Digest(d)).collect();
    tx.lock(&locks).await?;
    let mut deleted = Vec::new();
    for digest in items {
        let row = tx
            .opt(
                "SELECT b.size FROM blob b WHERE b.digest = $1 AND b.created_at < $2
                   AND NOT EXISTS (SELECT 1 FROM repo_blob rb WHERE rb.digest = $1)
                   AND NOT EXISTS (SELECT 1 FROM manifest m WHERE m.digest = $1)",
                &[digest.into(), created_before.into()],
            )
            .await?;
        let Some(row) = row else { continue };
        tx.exec("DELETE FROM blob WHERE digest = $1", &[digest.into()])
            .await?;
        tombstone(tx, digest).await?;
        deleted.push((digest.clone(), row.size(0)?));
    }
    Ok(deleted)
}

async fn gc_delete_empty_repositories(
    tx: &mut Tx<'_>,
    created_before: i64,
) -> Result<u64, MetaError> {
    // Lock the candidates first (PostgreSQL): a writer holds `FOR KEY SHARE` on its repository until it commits,
    // so once these locks are granted the re-check below sees everything such writers added.
    let select = format!(
        "SELECT id FROM repository WHERE created_at < $1 AND {EMPTY} ORDER BY id{}",
        tx.dialect().for_update()
    );
    let ids = map(tx.query(&select, &[created_before.into()]).await?, |r| {
        r.int(0)
    })?;
    let delete = format!("DELETE FROM repository WHERE id = $1 AND {EMPTY}");
    let mut n = 0;
    for id in ids {
        n += tx.exec(&delete, &[id.into()]).await?;
    }
    Ok(n)
}

async fn drop_cached(tx: &mut Tx<'_>, digest: &str) -> Result<bool, MetaError> {
    tx.lock(&[Lock::Digest(digest)]).await?;
    if tx.one(PRIVATE_DIGEST, &[digest.into()]).await?.bool(0)? {
        return Ok(false);
    }
    for sql in [
        "DELETE FROM tag WHERE manifest = $1",
        "DELETE FROM manifest_ref WHERE manifest = $1",
        "DELETE FROM manifest WHERE digest = $1",
        "DELETE FROM repo_blob WHERE digest = $1",
        "DELETE FROM blob WHERE digest = $1",
    ] {
        tx.exec(sql, &[digest.into()]).await?;
    }
    tombstone(tx, digest).await?;
    Ok(true)
}

async fn stats(tx: &mut Tx<'_>) -> Result<StoreStats, MetaError> {
    let mut counts = Vec::new();
    for sql in [
        "SELECT COUNT(*) FROM repository WHERE kind = 'private'",
        "SELECT COUNT(*) FROM repository WHERE kind = 'mirror'",
        "SELECT COUNT(*) FROM manifest",
        "SELECT COUNT(*) FROM tag",
        "SELECT COUNT(*) FROM blob",
        "SELECT CAST(COALESCE(SUM(size), 0) AS BIGINT) FROM blob",
        PRIVATE_BYTES,
        "SELECT COUNT(*) FROM upload",
        "SELECT COUNT(*) FROM blob_tombstone",
    ] {
        counts.push(tx.one(sql, &[]).await?.size(0)?);
    }
    let c: [u64; 9] = counts
        .try_into()
        .map_err(|_| MetaError::Corrupt("statistics query count".into()))?;
    Ok(StoreStats {
        private_repositories: c[0],
        mirror_repositories: c[1],
        manifests: c[2],
        tags: c[3],
        blobs: c[4],
        blob_bytes: c[5],
        private_bytes: c[6],
        mirror_bytes: c[5].saturating_sub(c[6]),
        upload_sessions: c[7],
        pending_byte_deletions: c[8],
    })
}

#[async_trait::async_trait]
impl MaintenanceStore for SqlStore {
    async fn snapshot(&self) -> Result<Snapshot, MetaError> {
        scan_tx!(self.db(), |tx| snapshot(tx))
    }

    async fn gc_delete_manifests(
        &self,
        items: Vec<(i64, String)>,
        touched_before: i64,
    ) -> Result<Vec<(i64, String)>, MetaError> {
        write_tx!(self.db(), |tx| gc_delete_manifests(
            tx,
            &items,
            touched_before
        ))
    }

    async fn gc_delete_links(
        &self,
        items: Vec<(i64, String)>,
        touched_before: i64,
    ) -> Result<u64, MetaError> {
        write_tx!(self.db(), |tx| gc_delete_links(tx, &items, touched_before))
    }

    async fn gc_delete_blobs(
        &self,
        items: Vec<String>,
        created_before: i64,
    ) -> Result<Vec<(String, u64)>, MetaError> {
        write_tx!(self.db(), |tx| gc_delete_blobs(tx, &items, created_before))
    }

    async fn gc_delete_empty_repositories(&self, created_before: i64) -> Result<u64, MetaError> {
        write_tx!(self.db(), |tx| gc_delete_empty_repositories(
            tx,
            created_before
        ))
    }

    async fn tombstones(&self, deleted_before: i64) -> Result<Vec<Digest>, MetaError> {
        let sql = "SELECT digest FROM blob_tombstone WHERE deleted_at < $1 ORDER BY digest";
        map(self.scan(sql, vals![deleted_before]).await?, |r| {
            r.digest(0)
        })
    }

    async fn clear_tombstone(&self, digest: &Digest) -> Result<(), MetaError> {
        let sql = "DELETE FROM blob_tombstone WHERE digest = $1";
        self.exec(sql, vals![&digest.to_string()]).await.map(drop)
    }

    async fn has_tombstone(&self, digest: &Digest) -> Result<bool, MetaError> {
        let sql = "SELECT 1 FROM blob_tombstone WHERE digest = $1";
        Ok(!self.read(sql, vals![&digest.to_string()]).await?.is_empty())
    }

    async fn repositories(&self) -> Result<Vec<RepoInfo>, MetaError> {
        scan_tx!(self.db(), |tx| repo_infos(tx))
    }

    async fn tag_details(&self, repo: &RepoName) -> Result<Vec<TagDetail>, MetaError> {
        let sql = "SELECT t.name, t.manifest, t.updated_at, m.last_pulled FROM tag t
                   JOIN repository r ON r.id = t.repo JOIN manifest m ON m.repo = t.repo AND m.digest = t.manifest
                   WHERE r.name = $1 ORDER BY t.updated_at DESC, t.name";
        map(self.scan(sql, vals![repo.as_str()]).await?, |r| {
            Ok(TagDetail {
                name: r.text(0)?,
                digest: r.digest(1)?,
                updated_at: r.int(2)?,
                last_pulled: r.opt_int(3)?,
            })
        })
    }

    async fn delete_tag_if(
        &self,
        repo: &RepoName,
        tag: &Tag,
        digest: &Digest,
        updated_at: i64,
    ) -> Result<bool, MetaError> {
        let sql = "DELETE FROM tag WHERE repo = (SELECT id FROM repository WHERE name = $1)
                   AND name = $2 AND manifest = $3 AND updated_at = $4";
        let p = vals![repo.as_str(), tag.as_str(), &digest.to_string(), updated_at];
        Ok(self.exec(sql, p).await? > 0)
    }

    async fn untagged_manifests(
        &self,
        repo: &RepoName,
    ) -> Result<Vec<UntaggedManifest>, MetaError> {
        let sql = format!(
            "SELECT m.digest, m.created_at, m.last_pulled FROM manifest m
             WHERE m.repo = (SELECT id FROM repository WHERE name = $1) AND {UNNEEDED}
             ORDER BY m.created_at, m.digest"
        );
        map(self.scan(&sql, vals![repo.as_str()]).await?, |r| {
            Ok(UntaggedManifest {
                digest: r.digest(0)?,
                created_at: r.int(1)?,
                last_pulled: r.opt_int(2)?,
            })
        })
    }

    async fn manifests_of(&self, repo: &RepoName) -> Result<Vec<ManifestRecord>, MetaError> {
        let sql = format!(
            "SELECT {MANIFEST_COLUMNS} FROM manifest m JOIN repository r ON r.id = m.repo
             WHERE r.name = $1 ORDER BY m.digest"
        );
        map(self.scan(&sql, vals![repo.as_str()]).await?, to_record)
    }

    async fn reference_checks(&self, repo: &RepoName) -> Result<Vec<RefCheck>, MetaError> {
        let sql = "SELECT p.manifest, p.child, p.kind, CASE p.kind
                      WHEN 'child' THEN EXISTS (SELECT 1 FROM manifest c WHERE c.repo = p.repo AND c.digest = p.child)
                      ELSE EXISTS (SELECT 1 FROM repo_blob rb JOIN blob b ON b.digest = rb.digest
                                   WHERE rb.repo = p.repo AND rb.digest = p.child) END
                   FROM manifest_ref p WHERE p.repo = (SELECT id FROM repository WHERE name = $1)
                   ORDER BY p.manifest, p.child";
        map(self.scan(sql, vals![repo.as_str()]).await?, |r| {
            Ok(RefCheck {
                manifest: r.digest(0)?,
                target: r.digest(1)?,
                kind: RefKind::parse(&r.text(2)?)
                    .ok_or_else(|| MetaError::Corrupt("unknown reference kind".into()))?,
                present: r.bool(3)?,
            })
        })
    }

    async fn blobs_page(
        &self,
        after: Option<String>,
        n: usize,
    ) -> Result<Vec<(Digest, u64)>, MetaError> {
        let sql = "SELECT digest, size FROM blob WHERE digest > $1 ORDER BY digest LIMIT $2";
        let rows = self
            .scan(sql, vals![after.as_deref().unwrap_or_default(), n])
            .await?;
        map(rows, |r| Ok((r.digest(0)?, r.size(1)?)))
    }

    async fn is_private(&self, digest: &Digest) -> Result<bool, MetaError> {
        let rows = self
            .read(PRIVATE_DIGEST, vals![&digest.to_string()])
            .await?;
        rows.first().map_or(Ok(false), |r| r.bool(0))
    }

    async fn drop_cached(&self, digest: &Digest) -> Result<bool, MetaError> {
        let digest = digest.to_string();
        write_tx!(self.db(), |tx| drop_cached(tx, &digest))
    }

    async fn start_run(&self, kind: &str, dry_run: bool) -> Result<i64, MetaError> {
        let kind = kind.to_owned();
        write_tx!(self.db(), |tx| async {
            let sql = "INSERT INTO maint_run (kind, started_at, outcome, dry_run) VALUES ($1, $2, 'running', $3)
                       RETURNING id";
            tx.one(sql, &[(&kind).into(), now().into(), dry_run.into()])
                .await?
                .int(0)
        })
    }

    async fn finish_run(&self, id: i64, outcome: &str, summary: &str) -> Result<(), MetaError> {
        let sql = "UPDATE maint_run SET finished_at = $2, outcome = $3, summary = $4 WHERE id = $1";
        self.exec(sql, vals![id, now(), outcome, summary])
            .await
            .map(drop)
    }

    async fn recent_runs(&self, per_kind: usize) -> Result<Vec<RunRecord>, MetaError> {
        let sql = "SELECT id, kind, started_at, finished_at, outcome, dry_run, summary FROM (
                       SELECT *, ROW_NUMBER() OVER (PARTITION BY kind ORDER BY id DESC) AS n FROM maint_run) runs
                   WHERE n <= $1 ORDER BY kind, id DESC";
        map(self.scan(sql, vals![per_kind]).await?, |r| {
            Ok(RunRecord {
                id: r.int(0)?,
                kind: r.text(1)?,
                started_at: r.int(2)?,
                finished_at: r.opt_int(3)?,
                outcome: r.text(4)?,
                dry_run: r.bool(5)?,
                summary: r.opt_text(6)?,
            })
        })
    }

    async fn stats(&self) -> Result<StoreStats, MetaError> {
        scan_tx!(self.db(), |tx| stats(tx))
    }
}
