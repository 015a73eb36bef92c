//! Online garbage collection (design §5 invariant 3, §7).
//!
//! Mark, on one snapshot of the metadata: in each private repository the roots are tagged manifests and manifests
//! pushed or pulled within the untagged TTL; from them, index children and referrers of kept subjects are kept,
//! recursively. Everything else is a candidate. Blob links a kept manifest references, or that were pushed,
//! mounted or confirmed by a HEAD within the grace period, survive; blob rows that no surviving link or manifest
//! holds, and that are older than the grace period, are candidates. Mirror repositories are caches: what they
//! link and hold survives (their size is eviction's business).
//!
//! Sweep, in that order: manifests (in rounds, so an index goes before its children and a subject before its
//! referrers), links, blob rows. Every deletion re-checks its own condition inside the metadata transaction that
//! performs it, so a push, mount or HEAD that raced the snapshot wins: it either committed first (the re-check sees
//! it and the item stays) or comes after and finds the item gone, failing cleanly (`MANIFEST_BLOB_UNKNOWN`) so
//! the client uploads again. A blob row's deletion leaves a tombstone; its bytes go later, under the digest lock.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use super::{BYTES_DELAY, Maintenance, Progress, check_stop};
use crate::meta::maint::Snapshot;
use crate::meta::now;
use crate::metrics::{ObjectKind, metrics};
use crate::registry::RegistryError;

/// Items per deleting transaction: bounds how long one GC transaction holds the metadata writer.
const BATCH: usize = 256;

#[derive(Debug, Clone)]
pub struct GcOptions {
    /// Nothing pushed, mounted or confirmed within this window is collected.
    pub grace: Duration,
    /// Untagged manifests unused for this long are collected; `None` keeps them.
    pub untagged_ttl: Option<Duration>,
    /// Report only.
    pub dry_run: bool,
    /// Wait for the bytes of deleted blobs (this run's and any still pending) to come of age, up to
    /// `BYTES_DELAY`, and delete them before returning; otherwise a later run or the server does.
    pub wait_for_bytes: bool,
}

/// What a run deleted (or, dry, would delete).
#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Serialize)]
pub struct GcSummary {
    pub dry_run: bool,
    pub manifests: u64,
    pub links: u64,
    pub blobs: u64,
    /// Bytes of the blob rows deleted.
    pub bytes: u64,
    /// Blob files removed (of this run's deletions and earlier ones).
    pub files_deleted: u64,
    /// Files of deleted rows left in place because the digest was pushed again meanwhile.
    pub files_revived: u64,
    /// Files that no row ever held (a crash between writing and recording them), removed.
    pub orphan_files: u64,
    /// Expired upload sessions removed.
    pub upload_sessions: u64,
    /// Repositories left with nothing in them, removed from the catalog.
    pub repositories: u64,
}

/// The mark phase's verdict.
#[derive(Debug, Default)]
pub struct Plan {
    /// (repository id, digest) of private manifests to delete.
    pub manifests: Vec<(i64, String)>,
    /// (repository id, digest) of private blob links to delete.
    pub links: Vec<(i64, String)>,
    /// (digest, size) of blob rows to delete.
    pub blobs: Vec<(String, u64)>,
}

/// Decides what is garbage in `snap` at time `now`.
pub fn plan(snap: &Snapshot, now: i64, grace: Duration, untagged_ttl: Option<Duration>) -> Plan {
    let grace_cut = now - grace.as_secs() as i64;
    // Untagged manifests survive at least the grace period, whatever the TTL.
    let untagged_cut = untagged_ttl.map(|ttl| now - ttl.max(grace).as_secs() as i64);
    let private: HashSet<i64> = snap
        .repos
        .iter()
        .filter(|r| r.mirror.is_none())
        .map(|r| r.id)
        .collect();

    let mut children: HashMap<(i64, &str), Vec<&str>> = HashMap::new();
    for (repo, parent, child) in &snap.children {
        children
            .entry((*repo, parent.as_str()))
            .or_default()
            .push(child);
    }
    let mut referrers: HashMap<(i64, &str), Vec<&str>> = HashMap::new();
    for m in &snap.manifests {
        if let Some(s) = &m.subject {
            referrers
                .entry((m.repo, s.as_str()))
                .or_default()
                .push(&m.digest);
        }
    }

    let mut kept: HashSet<(i64, &str)> = HashSet::new();
    let mut stack: Vec<(i64, &str)> = snap
        .manifests
        .iter()
        .filter(|m| {
            !private.contains(&m.repo)
                || m.tagged
                || untagged_cut.is_none_or(|cut| m.touched >= cut)
        })
        .map(|m| (m.repo, m.digest.as_str()))
        .collect();
    while let Some(k) = stack.pop() {
        if !kept.insert(k) {
            continue;
        }
        for next in [children.get(&k), referrers.get(&k)].into_iter().flatten() {
            stack.extend(next.iter().map(|d| (k.0, *d)));
        }
    }
    let manifests: Vec<(i64, String)> = snap
        .manifests
        .iter()
        .filter(|m| !kept.contains(&(m.repo, m.digest.as_str())))
        .map(|m| (m.repo, m.digest.clone()))
        .collect();

    let referenced: HashSet<(i64, &str)> = snap
        .blob_refs
        .iter()
        .filter(|(repo, m, _)| kept.contains(&(*repo, m.as_str())))
        .map(|(repo, _, b)| (*repo, b.as_str()))
        .collect();
    let mut links = Vec::new();
    let mut held: HashSet<&str> = HashSet::new();
    for l in &snap.links {
        let dead = private.contains(&l.repo)
            && l.touched < grace_cut
            && !referenced.contains(&(l.repo, l.digest.as_str()));
        if dead {
            links.push((l.repo, l.digest.clone()));
        } else {
            held.insert(&l.digest);
        }
    }
    held.extend(kept.iter().map(|(_, d)| *d));
    let blobs = snap
        .blobs
        .iter()
        .filter(|(d, _, created)| *created < grace_cut && !held.contains(d.as_str()))
        .map(|(d, size, _)| (d.clone(), *size))
        .collect();
    Plan {
        manifests,
        links,
        blobs,
    }
}

impl Maintenance {
    /// One garbage collection run, recorded in the run history.
    pub async fn gc(
        &self,
        opts: &GcOptions,
        progress: &dyn Progress,
    ) -> Result<GcSummary, RegistryError> {
        let run = self.begin("gc", opts.dry_run).await?;
        let result = self.collect(opts, progress).await;
        self.end("gc", run, &result, false, progress).await;
        if let Ok(s) = &result {
            tracing::info!(
                dry_run = s.dry_run,
                manifests = s.manifests,
                links = s.links,
                blobs = s.blobs,
                bytes = s.bytes,
                files_deleted = s.files_deleted,
                orphan_files = s.orphan_files,
                "garbage collection finished"
            );
        }
        result
    }

    async fn collect(
        &self,
        opts: &GcOptions,
        progress: &dyn Progress,
    ) -> Result<GcSummary, RegistryError> {
        self.registry.flush_pulls().await?;
        progress.phase("reading metadata", 0);
        let snap = self.store.snapshot().await?;
        let t = now();
        let plan = plan(&snap, t, opts.grace, opts.untagged_ttl);
        check_stop(progress)?;
        let mut s = GcSummary {
            dry_run: opts.dry_run,
            ..Default::default()
        };
        if opts.dry_run {
            s.manifests = plan.manifests.len() as u64;
            s.links = plan.links.len() as u64;
            s.blobs = plan.blobs.len() as u64;
            s.bytes = plan.blobs.iter().map(|(_, n)| n).sum();
            return Ok(s);
        }
        let grace_cut = t - opts.grace.as_secs() as i64;
        let untagged_cut = opts
            .untagged_ttl
            .map_or(i64::MIN, |ttl| t - ttl.max(opts.grace).as_secs() as i64);

        progress.phase("manifests", plan.manifests.len() as u64);
        let mut pending = plan.manifests;
        loop {
            let mut deleted = HashSet::new();
            for chunk in pending.chunks(BATCH) {
                check_stop(progress)?;
                let gone = self
                    .store
                    .gc_delete_manifests(chunk.to_vec(), untagged_cut)
                    .await?;
                progress.advance(gone.len() as u64);
                deleted.extend(gone);
            }
            if deleted.is_empty() {
                break;
            }
            s.manifests += deleted.len() as u64;
            pending.retain(|m| !deleted.contains(m));
        }

        progress.phase("blob links", plan.links.len() as u64);
        for chunk in plan.links.chunks(BATCH) {
            check_stop(progress)?;
            s.links += self
                .store
                .gc_delete_links(chunk.to_vec(), grace_cut)
                .await?;
            progress.advance(chunk.len() as u64);
        }

        progress.phase("blobs", plan.blobs.len() as u64);
        for chunk in plan.blobs.chunks(BATCH) {
            check_stop(progress)?;
            let digests = chunk.iter().map(|(d, _)| d.clone()).collect();
            let gone = self.store.gc_delete_blobs(digests, grace_cut).await?;
            s.blobs += gone.len() as u64;
            s.bytes += gone.iter().map(|(_, n)| n).sum::<u64>();
            progress.advance(chunk.len() as u64);
        }
        let m = metrics();
        m.gc_deleted
            .get_or_create(&ObjectKind { object: "manifest" })
            .inc_by(s.manifests);
        m.gc_deleted
            .get_or_create(&ObjectKind { object: "link" })
            .inc_by(s.links);
        m.gc_deleted
            .get_or_create(&ObjectKind { object: "blob" })
            .inc_by(s.blobs);
        m.gc_reclaimed_bytes.inc_by(s.bytes);

        let delay = BYTES_DELAY.min(opts.grace);
        if opts.wait_for_bytes && !self.store.tombstones(i64::MAX).await?.is_empty() {
            progress.phase("waiting for in-flight reads", 0);
            tokio::time::sleep(delay + Duration::from_secs(1)).await;
        }
        check_stop(progress)?;
        progress.phase("deleting bytes", 0);
        let swept = self.delete_tombstoned(delay).await?;
        s.files_deleted = swept.deleted;
        s.files_revived = swept.revived;
        check_stop(progress)?;
        s.orphan_files = self.delete_orphan_files(&snap, grace_cut).await?;
        s.upload_sessions = self.registry.expire_uploads().await? as u64;
        s.repositories = self.store.gc_delete_empty_repositories(grace_cut).await?;
        Ok(s)
    }

    /// Removes blob files that no row holds and no tombstone will handle, older than the grace period: left by a
    /// crash between writing bytes and recording them.
    async fn delete_orphan_files(
        &self,
        snap: &Snapshot,
        older_than: i64,
    ) -> Result<u64, RegistryError> {
        let rows: HashSet<&str> = snap.blobs.iter().map(|(d, _, _)| d.as_str()).collect();
        let mut n = 0;
        for (d, modified) in self.registry.blob_store().list_blobs().await? {
            if modified >= older_than || rows.contains(d.to_string().as_str()) {
                continue;
            }
            if self.store.has_tombstone(&d).await? {
                continue;
            }
            if self.delete_bytes_unless_row(&d).await? {
                tracing::info!(digest = %d, "removed an orphan blob file");
                n += 1;
            }
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::meta::maint::{RepoInfo, SnapLink, SnapManifest};

    const H: Duration = Duration::from_secs(3600);

    fn repo(id: i64, mirror: Option<&str>) -> RepoInfo {
        RepoInfo {
            id,
            name: format!("r{id}"),
            mirror: mirror.map(str::to_owned),
        }
    }

    fn manifest(
        repo: i64,
        d: &str,
        tagged: bool,
        touched: i64,
        subject: Option<&str>,
    ) -> SnapManifest {
        SnapManifest {
            repo,
            digest: d.into(),
            subject: subject.map(str::to_owned),
            touched,
            tagged,
        }
    }

    fn link(repo: i64, d: &str, touched: i64) -> SnapLink {
        SnapLink {
            repo,
            digest: d.into(),
            touched,
        }
    }

    /// An old index kept by its tag keeps its children, their layers and the referrers of a child; an old untagged
    /// manifest goes with the layer only it used; a young untagged one stays; the mirror's content stays.
    #[test]
    fn marks_children_referrers_and_mirrors() {
        let now = 100 * 3600;
        let old = 0;
        let snap = Snapshot {
            repos: vec![repo(1, None), repo(2, Some("docker.io"))],
            manifests: vec![
                manifest(1, "index", true, old, None),
                manifest(1, "child", false, old, None),
                manifest(1, "sig", false, old, Some("child")),
                manifest(1, "orphan", false, old, None),
                manifest(1, "young", false, now, None),
                manifest(2, "cached", false, old, None),
            ],
            children: vec![(1, "index".into(), "child".into())],
            blob_refs: vec![
                (1, "child".into(), "layer-kept".into()),
                (1, "orphan".into(), "layer-orphan".into()),
            ],
            links: vec![
                link(1, "layer-kept", old),
                link(1, "layer-orphan", old),
                link(1, "layer-recent", now),
                link(2, "layer-cached", old),
            ],
            blobs: vec![
                ("index".into(), 1, old),
                ("child".into(), 1, old),
                ("sig".into(), 1, old),
                ("orphan".into(), 1, old),
                ("young".into(), 1, old),
                ("cached".into(), 1, old),
                ("layer-kept".into(), 10, old),
                ("layer-orphan".into(), 20, old),
                ("layer-recent".into(), 30, old),
                ("layer-cached".into(), 40, old),
                ("unlinked-new".into(), 50, now),
            ],
        };
        let p = plan(&snap, now, H, Some(24 * H));
        assert_eq!(p.manifests, vec![(1, "orphan".to_string())]);
        assert_eq!(p.links, vec![(1, "layer-orphan".to_string())]);
        let mut blobs: Vec<_> = p.blobs.iter().map(|(d, _)| d.as_str()).collect();
        blobs.sort();
        assert_eq!(blobs, vec!["layer-orphan", "orphan"]);
    }

    #[test]
    fn no_ttl_keeps_untagged_manifests() {
        let snap = Snapshot {
            repos: vec![repo(1, None)],
            manifests: vec![manifest(1, "m", false, 0, None)],
            ..Default::default()
        };
        assert!(plan(&snap, 1_000_000, H, None).manifests.is_empty());
        assert_eq!(plan(&snap, 1_000_000, H, Some(H)).manifests.len(), 1);
    }
}
