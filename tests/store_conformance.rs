//! The metadata store's conformance suite: every method of `MetadataStore`, `MaintenanceStore`, `AuthStore`,
//! `UiStore` and `Coordination`, called in-process (no HTTP), on SQLite, and on PostgreSQL when the suite runs on
//! the scale-out shape (`BERTH_TEST_METADATA=postgres`, CI's second pass). Both backends must give the same answer
//! to the same calls, hostile values included; the concurrent cases race the writes the invariants depend on.

mod common;

use std::sync::Arc;

use berth::auth::store::{AuthStore, TokenRecord, UserRecord};
use berth::meta::maint::MaintenanceStore;
use berth::meta::ui::UiStore;
use berth::meta::{
    Coordination, Eviction, FetchLease, ManifestRecord, ManifestRejection, MetaError,
    MetadataStore, NewManifest, NewRef, Page, PgSettings, RefKind, RemoveOutcome, SqlStore,
    Synchronous, UploadRecord,
};
use berth::oci::{Digest, RepoName, name::Tag};

/// A store on a fresh database, dropped with it.
struct Fixture {
    store: Arc<SqlStore>,
    dir: tempfile::TempDir,
}

impl Drop for Fixture {
    fn drop(&mut self) {
        if common::on_postgres() {
            common::drop_database(self.dir.path());
        }
    }
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let store = if common::on_postgres() {
        SqlStore::postgres(&PgSettings {
            url: common::postgres_url(dir.path()),
            pool_size: 8,
        })
    } else {
        SqlStore::sqlite(&dir.path().join("berth.db"), Synchronous::Normal)
    }
    .unwrap();
    Fixture {
        store: Arc::new(store),
        dir,
    }
}

fn digest(seed: &str) -> Digest {
    common::sha256_digest(seed.as_bytes()).parse().unwrap()
}

fn repo(name: &str) -> RepoName {
    name.parse().unwrap()
}

fn tag(name: &str) -> Tag {
    name.parse().unwrap()
}

fn record(d: &Digest, size: u64) -> ManifestRecord {
    ManifestRecord {
        digest: d.clone(),
        media_type: "application/vnd.oci.image.manifest.v1+json".into(),
        artifact_type: None,
        subject: None,
        size,
        annotations: None,
    }
}

fn image(r: &RepoName, m: &Digest, refs: &[(&Digest, u64, RefKind)], tags: &[&str]) -> NewManifest {
    NewManifest {
        repo: r.clone(),
        record: record(m, 100),
        refs: refs
            .iter()
            .map(|(d, size, kind)| NewRef {
                digest: (*d).clone(),
                size: *size,
                kind: *kind,
            })
            .collect(),
        tags: tags.iter().map(|t| tag(t)).collect(),
        immutable_tags: false,
    }
}

fn page(n: Option<usize>, last: Option<&str>) -> Page {
    Page {
        n,
        last: last.map(str::to_owned),
    }
}

/// A config and a layer committed into `r`, and a manifest over them tagged `t`.
async fn push(s: &SqlStore, r: &RepoName, seed: &str, t: &str) -> (Digest, Digest, Digest) {
    let (c, l, m) = (
        digest(&format!("{seed}c")),
        digest(&format!("{seed}l")),
        digest(&format!("{seed}m")),
    );
    s.commit_blob(r, &c, 10).await.unwrap();
    s.commit_blob(r, &l, 20).await.unwrap();
    let put = s
        .put_manifest(image(
            r,
            &m,
            &[(&c, 10, RefKind::Config), (&l, 20, RefKind::Layer)],
            &[t],
        ))
        .await
        .unwrap();
    assert_eq!(put, Ok(()));
    (c, l, m)
}

const FUTURE: i64 = i64::MAX / 2;

#[tokio::test]
async fn blobs_link_mount_and_unlink() {
    let f = fixture();
    let s = &f.store;
    let (a, b) = (repo("team/a"), repo("team/b"));
    let d = digest("blob");
    assert_eq!(s.repo_blob(&a, &d).await.unwrap(), None);
    assert!(!s.blob_exists(&d).await.unwrap());
    s.commit_blob(&a, &d, 42).await.unwrap();
    s.commit_blob(&a, &d, 42).await.unwrap();
    assert_eq!(s.repo_blob(&a, &d).await.unwrap(), Some(42));
    assert!(s.blob_exists(&d).await.unwrap());
    // Visible only where linked.
    assert_eq!(s.repo_blob(&b, &d).await.unwrap(), None);
    assert_eq!(
        s.mount_blob(&b, Some(&repo("team/none")), &d)
            .await
            .unwrap(),
        None
    );
    assert_eq!(s.mount_blob(&b, Some(&a), &d).await.unwrap(), Some(42));
    assert_eq!(s.repo_blob(&b, &d).await.unwrap(), Some(42));
    assert_eq!(
        s.mount_blob(&repo("team/c"), None, &d).await.unwrap(),
        Some(42)
    );
    assert_eq!(
        s.mount_blob(&b, None, &digest("absent")).await.unwrap(),
        None
    );
    s.touch_link(&a, &d).await.unwrap();
    s.touch_blobs(vec![d.clone(), d.clone()]).await.unwrap();
    s.touch_blobs(Vec::new()).await.unwrap();
    assert_eq!(s.unlink_blob(&b, &d).await.unwrap(), RemoveOutcome::Removed);
    assert_eq!(
        s.unlink_blob(&b, &d).await.unwrap(),
        RemoveOutcome::NotFound
    );
    assert_eq!(
        s.unlink_blob(&repo("team/none"), &d).await.unwrap(),
        RemoveOutcome::NotFound
    );
    // A layer a manifest references stays linked.
    let (_, l, m) = push(s, &a, "img", "v1").await;
    assert_eq!(
        s.unlink_blob(&a, &l).await.unwrap(),
        RemoveOutcome::ReferencedBy(m)
    );
}

#[tokio::test]
async fn manifests_are_checked_stored_and_deleted_top_down() {
    let f = fixture();
    let s = &f.store;
    let r = repo("team/app");
    let (c, l) = (digest("c"), digest("l"));
    let m = digest("m");
    // Missing references are listed once each, sorted; nothing is written.
    let rejected = s
        .put_manifest(image(
            &r,
            &m,
            &[
                (&l, 20, RefKind::Layer),
                (&c, 10, RefKind::Config),
                (&l, 20, RefKind::Layer),
            ],
            &["v1"],
        ))
        .await
        .unwrap();
    let mut want = vec![c.clone(), l.clone()];
    want.sort();
    assert_eq!(rejected, Err(ManifestRejection::Missing(want)));
    assert_eq!(s.list_tags(&r, &page(None, None)).await.unwrap(), None);
    s.commit_blob(&r, &c, 10).await.unwrap();
    s.commit_blob(&r, &l, 20).await.unwrap();
    assert_eq!(
        s.put_manifest(image(&r, &m, &[(&l, 21, RefKind::Layer)], &["v1"]))
            .await
            .unwrap(),
        Err(ManifestRejection::SizeMismatch {
            digest: l.clone(),
            declared: 21,
            actual: 20
        })
    );
    let refs = [(&c, 10, RefKind::Config), (&l, 20, RefKind::Layer)];
    assert_eq!(
        s.put_manifest(image(&r, &m, &refs, &["v1", "latest"]))
            .await
            .unwrap(),
        Ok(())
    );
    assert_eq!(s.manifest(&r, &m).await.unwrap(), Some(record(&m, 100)));
    assert_eq!(
        s.tagged_manifest(&r, &tag("latest")).await.unwrap(),
        Some(record(&m, 100))
    );
    assert_eq!(s.tagged_manifest(&r, &tag("nope")).await.unwrap(), None);
    // Immutable tags: the same digest again is fine, another is refused.
    let mut again = image(&r, &m, &refs, &["v1"]);
    again.immutable_tags = true;
    assert_eq!(s.put_manifest(again).await.unwrap(), Ok(()));
    let other = digest("m2");
    let mut moved = image(&r, &other, &refs, &["v1"]);
    moved.immutable_tags = true;
    assert_eq!(
        s.put_manifest(moved).await.unwrap(),
        Err(ManifestRejection::TagImmutable(tag("v1")))
    );
    // An index over the manifest, and a referrer with an artifact type.
    let idx = digest("index");
    assert_eq!(
        s.put_manifest(image(&r, &idx, &[(&m, 100, RefKind::Child)], &["multi"]))
            .await
            .unwrap(),
        Ok(())
    );
    let sig = digest("sig");
    let mut referrer = image(&r, &sig, &refs, &[]);
    referrer.record.subject = Some(m.clone());
    referrer.record.artifact_type = Some("application/vnd.dev.cosign.artifact.sig.v1+json".into());
    referrer.record.annotations = Some(r#"{"note":"signé ✓"}"#.into());
    assert_eq!(s.put_manifest(referrer.clone()).await.unwrap(), Ok(()));
    assert_eq!(
        s.referrers(&r, &m, None).await.unwrap(),
        vec![referrer.record.clone()]
    );
    assert_eq!(
        s.referrers(
            &r,
            &m,
            Some("application/vnd.dev.cosign.artifact.sig.v1+json")
        )
        .await
        .unwrap()
        .len(),
        1
    );
    assert!(
        s.referrers(&r, &m, Some("other/type"))
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        s.referrers(&repo("team/none"), &m, None)
            .await
            .unwrap()
            .is_empty()
    );
    // Deleting top-down: the child is refused while the index lists it.
    assert_eq!(
        s.delete_manifest(&r, &m).await.unwrap(),
        RemoveOutcome::ReferencedBy(idx.clone())
    );
    assert_eq!(
        s.delete_manifest(&r, &idx).await.unwrap(),
        RemoveOutcome::Removed
    );
    assert_eq!(
        s.delete_manifest(&r, &idx).await.unwrap(),
        RemoveOutcome::NotFound
    );
    assert!(s.delete_tag(&r, &tag("latest")).await.unwrap());
    assert!(!s.delete_tag(&r, &tag("latest")).await.unwrap());
    assert_eq!(
        s.delete_manifest(&r, &m).await.unwrap(),
        RemoveOutcome::Removed
    );
    assert_eq!(s.tagged_manifest(&r, &tag("v1")).await.unwrap(), None);
    s.record_pulls(
        vec![(r.clone(), sig.clone()), (repo("team/none"), sig.clone())],
        1234,
    )
    .await
    .unwrap();
}

#[tokio::test]
async fn listings_page_in_byte_order() {
    let f = fixture();
    let s = &f.store;
    let r = repo("team/app");
    for t in ["b", "a", "B", "v1.10", "v1.9", "_x"] {
        push(s, &r, "img", t).await;
    }
    let all = s.list_tags(&r, &page(None, None)).await.unwrap().unwrap();
    assert_eq!(all, ["B", "_x", "a", "b", "v1.10", "v1.9"]);
    assert_eq!(
        s.list_tags(&r, &page(Some(2), Some("_x")))
            .await
            .unwrap()
            .unwrap(),
        ["a", "b"]
    );
    assert_eq!(
        s.list_tags(&r, &page(Some(0), None))
            .await
            .unwrap()
            .unwrap(),
        Vec::<String>::new()
    );
    assert_eq!(
        s.list_tags(&r, &page(Some(usize::MAX), Some("b")))
            .await
            .unwrap()
            .unwrap(),
        ["v1.10", "v1.9"]
    );
    // The cached list follows writes.
    assert!(s.delete_tag(&r, &tag("a")).await.unwrap());
    assert_eq!(
        s.list_tags(&r, &page(Some(1), Some("_x")))
            .await
            .unwrap()
            .unwrap(),
        ["b"]
    );
    for name in ["team/z", "team/b", "alpha", "Team/x"] {
        s.commit_blob(&repo(&name.to_lowercase()), &digest("x"), 1)
            .await
            .unwrap();
    }
    let repos = s.list_repositories(&page(None, None)).await.unwrap();
    assert_eq!(repos, ["alpha", "team/app", "team/b", "team/x", "team/z"]);
    assert_eq!(
        s.list_repositories(&page(Some(2), Some("team/app")))
            .await
            .unwrap(),
        ["team/b", "team/x"]
    );
    assert_eq!(
        s.list_repositories(&page(Some(usize::MAX), Some("team/x")))
            .await
            .unwrap(),
        ["team/z"]
    );
    assert!(
        s.list_repositories(&page(Some(0), None))
            .await
            .unwrap()
            .is_empty()
    );
}

#[tokio::test]
async fn mirror_caches_link_only_cached_content_and_evict_consistently() {
    let f = fixture();
    let s = &f.store;
    let (hub, other) = (
        repo("docker.io/library/alpine"),
        repo("docker.io/library/busybox"),
    );
    let m = digest("mirror-manifest");
    s.cache_manifest(&hub, "docker.io", &record(&m, 100), Some(&tag("3.20")))
        .await
        .unwrap();
    let (cached, at) = s.cached_tag(&hub, &tag("3.20")).await.unwrap().unwrap();
    assert_eq!(cached, record(&m, 100));
    assert!(at > 0);
    s.touch_tag(&hub, &tag("3.20")).await.unwrap();
    assert_eq!(s.cached_tag(&hub, &tag("nope")).await.unwrap(), None);
    let (layer, private) = (digest("mirror-layer"), digest("private-layer"));
    s.cache_blob(&hub, "docker.io", &layer, 1000).await.unwrap();
    s.commit_blob(&repo("team/app"), &private, 5).await.unwrap();
    // Another repository of the same mirror may link the cached blob; never private content, never another mirror.
    assert_eq!(
        s.link_mirror_blob(&other, "docker.io", &layer)
            .await
            .unwrap(),
        Some(1000)
    );
    assert_eq!(
        s.link_mirror_blob(&other, "docker.io", &private)
            .await
            .unwrap(),
        None
    );
    assert_eq!(
        s.link_mirror_blob(&other, "ghcr.io", &layer).await.unwrap(),
        None
    );
    // Linked blobs count; the cached manifest's own bytes are not a link.
    assert_eq!(s.mirror_cache_size("docker.io").await.unwrap(), 1000);
    assert_eq!(s.mirror_cache_size("ghcr.io").await.unwrap(), 0);
    let lru = s.mirror_lru("docker.io", usize::MAX).await.unwrap();
    assert_eq!(lru, std::slice::from_ref(&layer));
    assert!(s.mirror_lru("docker.io", 0).await.unwrap().is_empty());
    // A blob a private repository also links is not the cache's to evict.
    s.commit_blob(&repo("team/app"), &layer, 1000)
        .await
        .unwrap();
    assert_eq!(
        s.evict_mirror_blob("docker.io", &layer).await.unwrap(),
        Eviction::Kept
    );
    assert_eq!(s.mirror_cache_size("docker.io").await.unwrap(), 0);
    assert_eq!(
        s.unlink_blob(&repo("team/app"), &layer).await.unwrap(),
        RemoveOutcome::Removed
    );
    assert_eq!(
        s.evict_mirror_blob("docker.io", &layer).await.unwrap(),
        Eviction::Unlinked {
            size: 1000,
            row_deleted: true
        }
    );
    assert!(!s.blob_exists(&layer).await.unwrap());
    assert!(s.has_tombstone(&layer).await.unwrap());
    assert_eq!(
        s.evict_mirror_blob("docker.io", &layer).await.unwrap(),
        Eviction::Kept
    );
    // The cached manifest's row keeps its blob row while the manifest exists.
    assert_eq!(
        s.evict_mirror_blob("docker.io", &m).await.unwrap(),
        Eviction::Kept,
        "a manifest is not a linked blob of the mirror"
    );
}

#[tokio::test]
async fn upload_sessions_and_their_owners_and_claims() {
    let f = fixture();
    let s = &f.store;
    let u = UploadRecord {
        id: "0123456789abcdef".into(),
        repo: repo("team/app"),
        algorithm: "sha256".parse().unwrap(),
        started_at: 100,
        committed: None,
    };
    s.create_upload(&u).await.unwrap();
    assert!(s.create_upload(&u).await.is_err(), "an id is used once");
    let got = s.upload(&u.id).await.unwrap().unwrap();
    assert_eq!((got.id.as_str(), got.started_at), (u.id.as_str(), 100));
    // Shared stores keep the committed length; a single server owns its sessions.
    assert_eq!(got.committed, s.shared().then_some(0));
    assert_eq!(s.upload("other").await.unwrap(), None);
    assert_eq!(
        s.expired_uploads(101).await.unwrap(),
        std::slice::from_ref(&u.id)
    );
    assert!(s.expired_uploads(100).await.unwrap().is_empty());
    assert!(s.expired_uploads(i64::MIN).await.unwrap().is_empty());
    s.set_upload_owner(&u.id, "alice").await.unwrap();
    s.set_upload_owner(&u.id, "bob ✓").await.unwrap();
    assert_eq!(
        s.upload_owner(&u.id).await.unwrap().as_deref(),
        Some("bob ✓")
    );
    // Claims: granted once at the recorded offset; another writer waits until it is released.
    let ttl = std::time::Duration::from_secs(30);
    assert!(s.claim_upload(&u.id, 0, "r1:w", "r1:", ttl).await.unwrap());
    assert!(s.renew_upload_claim(&u.id, "r1:w", ttl).await.unwrap());
    if s.shared() {
        assert!(!s.claim_upload(&u.id, 0, "r2:w", "r2:", ttl).await.unwrap());
        assert!(!s.release_upload(&u.id, "r2:w", 5).await.unwrap());
        assert!(s.release_upload(&u.id, "r1:w", 5).await.unwrap());
        assert_eq!(s.upload(&u.id).await.unwrap().unwrap().committed, Some(5));
        assert!(
            !s.claim_upload(&u.id, 0, "r2:w", "r2:", ttl).await.unwrap(),
            "stale offset"
        );
        assert!(s.claim_upload(&u.id, 5, "r2:w", "r2:", ttl).await.unwrap());
    } else {
        assert!(s.release_upload(&u.id, "r1:w", 5).await.unwrap());
    }
    s.delete_upload(&u.id).await.unwrap();
    s.delete_upload(&u.id).await.unwrap();
    assert_eq!(s.upload(&u.id).await.unwrap(), None);
    assert_eq!(
        s.upload_owner(&u.id).await.unwrap(),
        None,
        "owners go with their session"
    );
}

#[tokio::test]
async fn locks_and_leases_exclude_only_where_shared() {
    let f = fixture();
    let s = &f.store;
    let d = digest("locked");
    let held = s.lock_digest(&d).await.unwrap();
    assert_eq!(held.is_some(), s.shared());
    let lease = s.try_lease("gc").await.unwrap();
    assert!(lease.is_some());
    if s.shared() {
        let second = fixture_on(&f);
        assert!(
            second.try_lease("gc").await.unwrap().is_none(),
            "one replica holds a lease"
        );
        drop(lease);
        let mut taken = None;
        for _ in 0..50 {
            taken = second.try_lease("gc").await.unwrap();
            if taken.is_some() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        assert!(
            taken.is_some(),
            "a released lease is taken by the other replica"
        );
        assert!(matches!(
            s.try_lease_fetch("blob").await.unwrap(),
            FetchLease::Granted(_)
        ));
    } else {
        assert!(matches!(
            s.try_lease_fetch("blob").await.unwrap(),
            FetchLease::NotShared
        ));
    }
}

/// A second store on the fixture's database (another replica).
fn fixture_on(f: &Fixture) -> SqlStore {
    SqlStore::postgres(&PgSettings {
        url: common::postgres_url(f.dir.path()),
        pool_size: 2,
    })
    .unwrap()
}

#[tokio::test]
async fn garbage_collection_deletes_only_what_is_still_garbage() {
    let f = fixture();
    let s = &f.store;
    let r = repo("team/app");
    let (c, l, m) = push(s, &r, "img", "v1").await;
    let loose = digest("loose");
    s.commit_blob(&r, &loose, 7).await.unwrap();
    let snap = s.snapshot().await.unwrap();
    assert_eq!(snap.repos.len(), 1);
    assert_eq!(snap.manifests.len(), 1);
    assert!(snap.manifests[0].tagged);
    assert_eq!(snap.blob_refs.len(), 2);
    assert_eq!(snap.links.len(), 3);
    assert_eq!(
        snap.blobs.len(),
        4,
        "config, layer, loose blob and the manifest's own bytes"
    );
    let id = snap.repos[0].id;
    // Tagged: not deleted, whatever its age.
    assert!(
        s.gc_delete_manifests(vec![(id, m.to_string())], FUTURE)
            .await
            .unwrap()
            .is_empty()
    );
    // Referenced links stay; a loose one goes only when older than the bound.
    assert_eq!(
        s.gc_delete_links(vec![(id, l.to_string()), (id, loose.to_string())], 0)
            .await
            .unwrap(),
        0
    );
    assert_eq!(
        s.gc_delete_links(vec![(id, l.to_string()), (id, loose.to_string())], FUTURE)
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        s.gc_delete_blobs(vec![loose.to_string(), c.to_string()], FUTURE)
            .await
            .unwrap(),
        [(loose.to_string(), 7)]
    );
    assert!(s.has_tombstone(&loose).await.unwrap());
    assert_eq!(
        s.tombstones(FUTURE).await.unwrap(),
        std::slice::from_ref(&loose)
    );
    assert!(s.tombstones(i64::MIN).await.unwrap().is_empty());
    s.clear_tombstone(&loose).await.unwrap();
    assert!(!s.has_tombstone(&loose).await.unwrap());
    // Untag, then the manifest is garbage.
    let details = s.tag_details(&r).await.unwrap();
    assert_eq!(details.len(), 1);
    assert!(
        !s.delete_tag_if(&r, &tag("v1"), &m, details[0].updated_at + 1)
            .await
            .unwrap()
    );
    assert!(
        s.delete_tag_if(&r, &tag("v1"), &m, details[0].updated_at)
            .await
            .unwrap()
    );
    assert_eq!(s.untagged_manifests(&r).await.unwrap().len(), 1);
    assert!(
        s.untagged_manifests(&repo("team/none"))
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(s.manifests_of(&r).await.unwrap(), vec![record(&m, 100)]);
    let checks = s.reference_checks(&r).await.unwrap();
    assert_eq!(checks.len(), 2);
    assert!(checks.iter().all(|c| c.present));
    assert_eq!(
        s.gc_delete_manifests(vec![(id, m.to_string())], FUTURE)
            .await
            .unwrap(),
        [(id, m.to_string())]
    );
    assert_eq!(
        s.gc_delete_links(vec![(id, c.to_string()), (id, l.to_string())], FUTURE)
            .await
            .unwrap(),
        2
    );
    assert_eq!(
        s.gc_delete_empty_repositories(0).await.unwrap(),
        0,
        "created after the bound"
    );
    assert_eq!(s.gc_delete_empty_repositories(FUTURE).await.unwrap(), 1);
    assert!(s.repositories().await.unwrap().is_empty());
    let page = s.blobs_page(None, usize::MAX).await.unwrap();
    assert_eq!(page.len(), 3);
    assert_eq!(
        s.blobs_page(Some(page[0].0.to_string()), 1).await.unwrap(),
        page[1..2]
    );
}

#[tokio::test]
async fn scrub_repairs_and_run_history() {
    let f = fixture();
    let s = &f.store;
    let (_, l, _) = push(s, &repo("team/app"), "img", "v1").await;
    let cached = digest("cached");
    s.cache_blob(&repo("docker.io/library/a"), "docker.io", &cached, 9)
        .await
        .unwrap();
    assert!(s.is_private(&l).await.unwrap());
    assert!(!s.is_private(&cached).await.unwrap());
    assert!(
        !s.drop_cached(&l).await.unwrap(),
        "published content is never dropped"
    );
    assert!(s.drop_cached(&cached).await.unwrap());
    assert!(!s.blob_exists(&cached).await.unwrap());
    let stats = s.stats().await.unwrap();
    assert_eq!(
        (
            stats.private_repositories,
            stats.mirror_repositories,
            stats.manifests,
            stats.tags,
            stats.blobs
        ),
        (1, 1, 1, 1, 3)
    );
    assert_eq!(
        (stats.blob_bytes, stats.private_bytes, stats.mirror_bytes),
        (130, 130, 0)
    );
    assert_eq!(stats.pending_byte_deletions, 1);
    let first = s.start_run("gc", true).await.unwrap();
    let second = s.start_run("gc", false).await.unwrap();
    s.start_run("scrub", false).await.unwrap();
    s.finish_run(first, "ok", r#"{"deleted":0}"#).await.unwrap();
    let runs = s.recent_runs(1).await.unwrap();
    assert_eq!(
        runs.iter().map(|r| r.kind.as_str()).collect::<Vec<_>>(),
        ["gc", "scrub"]
    );
    assert_eq!(
        (runs[0].id, runs[0].outcome.as_str(), runs[0].dry_run),
        (second, "running", false)
    );
    let all = s.recent_runs(usize::MAX).await.unwrap();
    assert_eq!(all.len(), 3);
    assert_eq!(all[1].summary.as_deref(), Some(r#"{"deleted":0}"#));
    assert!(all[1].dry_run);
}

#[tokio::test]
async fn users_and_tokens() {
    let f = fixture();
    let s = &f.store;
    let alice = UserRecord {
        name: "alice".into(),
        password_hash: "h1".into(),
        admin: true,
        created_at: 1,
    };
    assert!(s.create_user(&alice).await.unwrap());
    assert!(!s.create_user(&alice).await.unwrap());
    s.upsert_user(&UserRecord {
        password_hash: "h2".into(),
        ..alice.clone()
    })
    .await
    .unwrap();
    assert_eq!(s.user("alice").await.unwrap().unwrap().password_hash, "h2");
    assert!(s.set_password("alice", "h3").await.unwrap());
    assert!(!s.set_password("nobody", "h3").await.unwrap());
    s.upsert_user(&UserRecord {
        name: "bob".into(),
        admin: false,
        ..alice.clone()
    })
    .await
    .unwrap();
    assert_eq!(s.count_users().await.unwrap(), 2);
    assert_eq!(
        s.users()
            .await
            .unwrap()
            .iter()
            .map(|u| u.name.as_str())
            .collect::<Vec<_>>(),
        ["alice", "bob"]
    );
    assert!(!s.user("bob").await.unwrap().unwrap().admin);
    let token = TokenRecord {
        id: "00000000000000aa".into(),
        user: "alice".into(),
        name: "ci ✓".into(),
        secret_hash: "s".into(),
        scopes: "team/*:pull,push\n**:pull".into(),
        created_at: 5,
        expires_at: Some(i64::MAX),
        last_used: None,
    };
    s.create_token(&token).await.unwrap();
    assert!(
        s.create_token(&token).await.is_err(),
        "a token id is used once"
    );
    s.create_token(&TokenRecord {
        id: "00000000000000bb".into(),
        user: "bob".into(),
        expires_at: None,
        ..token.clone()
    })
    .await
    .unwrap();
    assert_eq!(s.token(&token.id).await.unwrap(), Some(token.clone()));
    s.touch_token(&token.id, -1).await.unwrap();
    assert_eq!(
        s.token(&token.id).await.unwrap().unwrap().last_used,
        Some(-1)
    );
    assert_eq!(s.tokens(None).await.unwrap().len(), 2);
    assert_eq!(s.tokens(Some("bob")).await.unwrap().len(), 1);
    assert!(s.tokens(Some("carol")).await.unwrap().is_empty());
    assert!(s.delete_token("00000000000000bb").await.unwrap());
    assert!(!s.delete_token("00000000000000bb").await.unwrap());
    assert!(s.delete_user("alice").await.unwrap());
    assert_eq!(
        s.token(&token.id).await.unwrap(),
        None,
        "a user's tokens go with it"
    );
    assert!(!s.delete_user("alice").await.unwrap());
}

#[tokio::test]
async fn ui_pages() {
    let f = fixture();
    let s = &f.store;
    let r = repo("team/app");
    let (_, _, m) = push(s, &r, "img", "v1").await;
    push(s, &r, "img", "V2-beta").await;
    push(s, &repo("team/db"), "db", "latest").await;
    let idx = digest("index");
    assert_eq!(
        s.put_manifest(image(&r, &idx, &[(&m, 100, RefKind::Child)], &["multi"]))
            .await
            .unwrap(),
        Ok(())
    );
    let repos = s.repository_page(None, None, 10).await.unwrap();
    assert_eq!(
        repos
            .iter()
            .map(|r| (r.name.as_str(), r.tags))
            .collect::<Vec<_>>(),
        [("team/app", 3), ("team/db", 1)]
    );
    assert_eq!(
        s.repository_page(Some("team/app".into()), None, 10)
            .await
            .unwrap()
            .len(),
        1
    );
    assert_eq!(
        s.repository_page(None, Some("APP".into()), usize::MAX)
            .await
            .unwrap()
            .len(),
        1
    );
    assert!(
        s.repository_page(None, Some("é".into()), 10)
            .await
            .unwrap()
            .is_empty()
    );
    let tags = s.tag_page(&r, None, None, 10).await.unwrap().unwrap();
    assert_eq!(
        tags.iter().map(|t| t.name.as_str()).collect::<Vec<_>>(),
        ["V2-beta", "multi", "v1"]
    );
    // Sizes: manifest + config + layer; an index adds its children with theirs.
    assert_eq!(tags[2].size, 130);
    assert_eq!(tags[1].size, 230);
    assert_eq!(
        s.tag_page(&r, Some("multi".into()), Some("V".into()), 1)
            .await
            .unwrap()
            .unwrap()[0]
            .name,
        "v1"
    );
    assert_eq!(
        s.tag_page(&repo("team/none"), None, None, 10)
            .await
            .unwrap(),
        None
    );
    assert_eq!(s.tag_count(&r).await.unwrap(), 3);
    assert_eq!(s.tag_count(&repo("team/none")).await.unwrap(), 0);
    assert_eq!(s.tags_of(&r, &m).await.unwrap(), ["V2-beta", "v1"]);
}

/// Values no row can hold are refused the same way everywhere; extreme numbers and long or non-ASCII text get
/// the same answers on both backends.
#[tokio::test]
async fn hostile_values_get_the_same_answer_on_both_backends() {
    let f = fixture();
    let s = &f.store;
    let r = repo("team/app");
    push(s, &r, "img", "v1").await;
    let nul = "a\0b".to_string();
    let invalid = |e: Result<_, MetaError>| matches!(e, Err(MetaError::Invalid(_)));
    // A cached tag list is paged in memory: a NUL in `last` is just a position there.
    let after_nul = s.list_tags(&r, &page(Some(1), Some(&nul))).await.unwrap();
    assert_eq!(after_nul.unwrap(), ["v1"]);
    assert!(invalid(
        s.list_repositories(&page(None, Some(&nul))).await.map(drop)
    ));
    assert!(invalid(
        s.repository_page(None, Some(nul.clone()), 10)
            .await
            .map(drop)
    ));
    assert!(invalid(
        s.repository_page(Some(nul.clone()), None, 10)
            .await
            .map(drop)
    ));
    assert!(invalid(
        s.tag_page(&r, None, Some(nul.clone()), 10).await.map(drop)
    ));
    assert!(invalid(s.user(&nul).await.map(drop)));
    assert!(invalid(s.upload(&nul).await.map(drop)));
    assert!(invalid(s.mirror_cache_size(&nul).await.map(drop)));
    assert!(invalid(s.blobs_page(Some(nul.clone()), 10).await.map(drop)));
    let mut annotated = record(&digest("nul-annotation"), 100);
    annotated.annotations = Some(nul.clone());
    assert!(invalid(
        s.cache_manifest(&repo("docker.io/x"), "docker.io", &annotated, None)
            .await
    ));
    assert!(
        s.manifest(&repo("docker.io/x"), &annotated.digest)
            .await
            .unwrap()
            .is_none(),
        "nothing half-written"
    );
    // Extreme numbers.
    assert_eq!(
        s.list_tags(&r, &page(Some(usize::MAX), None))
            .await
            .unwrap()
            .unwrap(),
        ["v1"]
    );
    assert!(s.expired_uploads(i64::MAX).await.unwrap().is_empty());
    assert!(
        s.mirror_lru("docker.io", usize::MAX)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(s.blobs_page(None, 0).await.unwrap().is_empty());
    s.record_pulls(vec![(r.clone(), digest("imgm"))], i64::MIN)
        .await
        .unwrap();
    assert_eq!(
        s.tag_details(&r).await.unwrap()[0].last_pulled,
        Some(i64::MIN)
    );
    // Sizes beyond what a row holds are kept at the largest it can.
    let huge = digest("huge");
    s.commit_blob(&r, &huge, u64::MAX).await.unwrap();
    assert_eq!(s.repo_blob(&r, &huge).await.unwrap(), Some(i64::MAX as u64));
    // Long and non-ASCII text.
    let long = "x".repeat(100_000);
    assert_eq!(
        s.list_repositories(&page(Some(10), Some(&long)))
            .await
            .unwrap(),
        Vec::<String>::new()
    );
    assert_eq!(s.user(&long).await.unwrap(), None);
    assert_eq!(
        s.tag_page(&r, Some(long.clone()), Some(long.clone()), 10)
            .await
            .unwrap(),
        Some(Vec::new())
    );
    assert_eq!(
        s.list_tags(&r, &page(None, Some("ü")))
            .await
            .unwrap()
            .unwrap(),
        Vec::<String>::new()
    );
    let mut annotated = record(&digest("unicode"), 100);
    annotated.annotations = Some(format!(r#"{{"t":"{}"}}"#, "é✓漢".repeat(10_000)));
    s.cache_manifest(
        &repo("docker.io/x"),
        "docker.io",
        &annotated,
        Some(&tag("u")),
    )
    .await
    .unwrap();
    assert_eq!(
        s.manifest(&repo("docker.io/x"), &annotated.digest)
            .await
            .unwrap(),
        Some(annotated)
    );
}

/// A manifest push racing garbage collection of its references: either the push commits first and GC keeps what
/// it references, or GC commits first and the push is refused; never a manifest whose layer is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn put_manifest_racing_gc_never_leaves_a_dangling_reference() {
    let f = fixture();
    let s = f.store.clone();
    let r = repo("team/race");
    let id = {
        s.commit_blob(&r, &digest("seed"), 1).await.unwrap();
        s.repositories().await.unwrap()[0].id
    };
    let (mut stored, mut refused) = (0, 0);
    for i in 0..40 {
        let (c, l, m) = (
            digest(&format!("c{i}")),
            digest(&format!("l{i}")),
            digest(&format!("m{i}")),
        );
        s.commit_blob(&r, &c, 1).await.unwrap();
        s.commit_blob(&r, &l, 2).await.unwrap();
        let pusher = {
            let (s, r, c, l, m) = (s.clone(), r.clone(), c.clone(), l.clone(), m.clone());
            tokio::spawn(async move {
                s.put_manifest(image(
                    &r,
                    &m,
                    &[(&c, 1, RefKind::Config), (&l, 2, RefKind::Layer)],
                    &["t"],
                ))
                .await
                .unwrap()
            })
        };
        let collector = {
            let (s, c, l) = (s.clone(), c.to_string(), l.to_string());
            tokio::spawn(async move {
                s.gc_delete_links(vec![(id, c.clone()), (id, l.clone())], FUTURE)
                    .await
                    .unwrap();
                s.gc_delete_blobs(vec![c, l], FUTURE).await.unwrap()
            })
        };
        let (put, _) = (pusher.await.unwrap(), collector.await.unwrap());
        match put {
            Ok(()) => {
                stored += 1;
                assert_eq!(
                    s.repo_blob(&r, &l).await.unwrap(),
                    Some(2),
                    "round {i}: stored manifest lost its layer"
                );
                assert_eq!(
                    s.repo_blob(&r, &c).await.unwrap(),
                    Some(1),
                    "round {i}: stored manifest lost its config"
                );
            }
            Err(ManifestRejection::Missing(_)) => {
                refused += 1;
                assert_eq!(s.manifest(&r, &m).await.unwrap(), None);
            }
            Err(other) => panic!("round {i}: unexpected rejection {other:?}"),
        }
        assert!(
            s.reference_checks(&r)
                .await
                .unwrap()
                .iter()
                .all(|c| c.present),
            "round {i}"
        );
    }
    eprintln!("put_manifest vs GC: {stored} stored, {refused} refused cleanly");
}

/// Deleting a child manifest racing an index push that lists it: the index is stored only with its child.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn delete_racing_an_index_push_never_leaves_a_dangling_child() {
    let f = fixture();
    let s = f.store.clone();
    let r = repo("team/race");
    for i in 0..40 {
        let (_, _, child) = push(&s, &r, &format!("child{i}"), "tmp").await;
        let idx = digest(&format!("index{i}"));
        let deleter = {
            let (s, r, child) = (s.clone(), r.clone(), child.clone());
            tokio::spawn(async move { s.delete_manifest(&r, &child).await.unwrap() })
        };
        let pusher = {
            let (s, r, child, idx) = (s.clone(), r.clone(), child.clone(), idx.clone());
            tokio::spawn(async move {
                s.put_manifest(image(&r, &idx, &[(&child, 100, RefKind::Child)], &[]))
                    .await
                    .unwrap()
            })
        };
        let (deleted, put) = (deleter.await.unwrap(), pusher.await.unwrap());
        match (deleted, put) {
            (RemoveOutcome::Removed, Err(ManifestRejection::Missing(_))) => {}
            (RemoveOutcome::ReferencedBy(by), Ok(())) => assert_eq!(by, idx),
            other => panic!("round {i}: {other:?}"),
        }
        assert!(
            s.reference_checks(&r)
                .await
                .unwrap()
                .iter()
                .all(|c| c.present),
            "round {i}"
        );
    }
}

/// Eviction racing a private push of the same digest: the private link always keeps its blob row.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn eviction_racing_a_private_push_keeps_the_private_blob() {
    let f = fixture();
    let s = f.store.clone();
    let (mirror_repo, private_repo) = (repo("docker.io/library/a"), repo("team/app"));
    for i in 0..40 {
        let d = digest(&format!("shared{i}"));
        s.cache_blob(&mirror_repo, "docker.io", &d, 3)
            .await
            .unwrap();
        let evictor = {
            let (s, d) = (s.clone(), d.clone());
            tokio::spawn(async move { s.evict_mirror_blob("docker.io", &d).await.unwrap() })
        };
        let pusher = {
            let (s, r, d) = (s.clone(), private_repo.clone(), d.clone());
            tokio::spawn(async move { s.commit_blob(&r, &d, 3).await.unwrap() })
        };
        let (eviction, ()) = (evictor.await.unwrap(), pusher.await.unwrap());
        assert_eq!(
            s.repo_blob(&private_repo, &d).await.unwrap(),
            Some(3),
            "round {i}: {eviction:?}"
        );
        assert!(s.blob_exists(&d).await.unwrap(), "round {i}: {eviction:?}");
    }
}

/// `migrate-storage`'s copy: every row of every copied table arrives, the copy compares equal, loading again
/// replaces rather than duplicates, and a load cut off before its end writes nothing.
#[tokio::test]
async fn a_whole_store_copies_into_another_and_compares_equal() {
    use berth::meta::transfer::{self, Load, Value};
    let (a, b) = (fixture(), fixture());
    let r = repo("team/app");
    push(&a.store, &r, "img", "v1").await;
    // More rows than one page of the copy (500), in a table with a composite key.
    for i in 0..510 {
        a.store
            .commit_blob(&r, &digest(&format!("page{i}")), i)
            .await
            .unwrap();
    }
    a.store
        .cache_blob(&repo("docker.io/library/x"), "docker.io", &digest("c"), 4)
        .await
        .unwrap();
    a.store
        .record_pulls(vec![(r.clone(), digest("imgm"))], 99)
        .await
        .unwrap();
    let run = a.store.start_run("gc", true).await.unwrap();
    a.store.finish_run(run, "ok", "{}").await.unwrap();
    let user = UserRecord {
        name: "alice".into(),
        password_hash: "h".into(),
        admin: true,
        created_at: 1,
    };
    a.store.create_user(&user).await.unwrap();
    let token = TokenRecord {
        id: "00000000000000aa".into(),
        user: "alice".into(),
        name: "ci".into(),
        secret_hash: "s".into(),
        scopes: "**:pull".into(),
        created_at: 1,
        expires_at: None,
        last_used: Some(4),
    };
    a.store.create_token(&token).await.unwrap();
    assert!(
        transfer::first_difference(&a.store, &b.store)
            .await
            .unwrap()
            .is_some()
    );
    transfer::replace_all(&b.store, transfer::stream_all(&a.store, |_, _| {}))
        .await
        .unwrap();
    let counts = transfer::counts(&a.store).await.unwrap();
    assert_eq!(counts, transfer::counts(&b.store).await.unwrap());
    assert!(
        counts.iter().all(|n| *n > 0),
        "every copied table has rows: {counts:?}"
    );
    assert_eq!(
        transfer::first_difference(&a.store, &b.store)
            .await
            .unwrap(),
        None
    );
    transfer::replace_all(&b.store, transfer::stream_all(&a.store, |_, _| {}))
        .await
        .unwrap();
    assert_eq!(
        transfer::first_difference(&a.store, &b.store)
            .await
            .unwrap(),
        None
    );
    // The copy is usable: ids continue after the copied ones, content reads back.
    assert!(b.store.start_run("gc", false).await.unwrap() > run);
    assert_eq!(
        b.store.tagged_manifest(&r, &tag("v1")).await.unwrap(),
        Some(record(&digest("imgm"), 100))
    );

    let c = fixture();
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let row = vec![
        Value::Int(1),
        Value::Text("team/app".into()),
        Value::Text("private".into()),
        Value::Null,
        Value::Int(1),
    ];
    tx.send(Ok(Load::Rows(0, vec![row]))).await.unwrap();
    drop(tx);
    assert!(transfer::replace_all(&c.store, rx).await.is_err());
    assert!(
        transfer::counts(&c.store)
            .await
            .unwrap()
            .iter()
            .all(|n| *n == 0)
    );
}
