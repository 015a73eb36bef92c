//! The scale-out shape: two `berth serve` replicas on different ports and data directories, one PostgreSQL database
//! and one blob store between them. Runs only with `BERTH_TEST_METADATA=postgres` (the SQLite shape has one server
//! per data directory, and the rest of the suite covers it); on SQLite each test returns at once.

#[path = "common/auth.rs"]
mod auth;
mod common;
#[path = "common/maint.rs"]
mod maint;
#[path = "common/spec.rs"]
mod spec;
#[path = "common/ui.rs"]
mod ui;

use std::sync::Arc;

use berth::meta::MetadataStore;
use berth::meta::maint::MaintenanceStore;
use berth::meta::postgres::{PgMetadataStore, PgSettings};
use common::Berth;
use spec::{OCI_MANIFEST, Reg};

fn reg(b: &Berth) -> Reg {
    Reg::new(b.url(), common::client())
}

/// Replica `a` on a fresh directory, replica `b` sharing its database and blobs, both with `extra` arguments.
fn two_replicas(tmp: &tempfile::TempDir, extra: &[&str]) -> (Berth, Berth) {
    let a = Berth::start_on(&tmp.path().join("a"), extra);
    let b = Berth::start_replica(&tmp.path().join("b"), &a, extra);
    (a, b)
}

async fn tag_list(r: &Reg, repo: &str) -> Vec<String> {
    let resp = r.get(&format!("/v2/{repo}/tags/list")).await;
    assert_eq!(resp.status(), 200);
    let v: serde_json::Value = resp.json().await.unwrap();
    v["tags"]
        .as_array()
        .map(|t| t.iter().map(|t| t.as_str().unwrap().to_owned()).collect())
        .unwrap_or_default()
}

/// Pulls an image's manifest by tag and both blobs through `r`, asserting the bytes.
async fn assert_pullable(r: &Reg, repo: &str, tag: &str, img: &spec::Image) {
    let resp = r.get(&format!("/v2/{repo}/manifests/{tag}")).await;
    assert_eq!(resp.status(), 200, "manifest {repo}:{tag}");
    assert_eq!(resp.bytes().await.unwrap().as_ref(), img.body.as_slice());
    for (digest, bytes) in [
        (&img.config_digest, &img.config),
        (&img.layer_digest, &img.layer),
    ] {
        let resp = r.get(&format!("/v2/{repo}/blobs/{digest}")).await;
        assert_eq!(resp.status(), 200, "blob {digest} of {repo}");
        assert_eq!(resp.bytes().await.unwrap().as_ref(), bytes.as_slice());
    }
}

#[tokio::test]
async fn push_through_one_replica_pull_through_the_other() {
    if !common::on_postgres() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = two_replicas(&tmp, &[]);
    let (ra, rb) = (reg(&a), reg(&b));
    let img = ra.push_image("team/app", "v1", "replicas").await;
    assert_pullable(&rb, "team/app", "v1", &img).await;
    let resp = rb.get("/v2/_catalog").await;
    let v: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(v["repositories"], serde_json::json!(["team/app"]));
}

/// Each replica caches tag lists in memory; a tag added or removed through one must show through the other at once.
#[tokio::test]
async fn tag_lists_stay_fresh_across_replicas() {
    if !common::on_postgres() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = two_replicas(&tmp, &[]);
    let (ra, rb) = (reg(&a), reg(&b));
    let img = ra.push_image("fresh/app", "a", "fresh").await;
    assert_eq!(tag_list(&rb, "fresh/app").await, ["a"]);
    assert_eq!(tag_list(&ra, "fresh/app").await, ["a"]);
    ra.push_manifest("fresh/app", "b", OCI_MANIFEST, &img.body)
        .await;
    assert_eq!(tag_list(&rb, "fresh/app").await, ["a", "b"]);
    rb.push_manifest("fresh/app", "c", OCI_MANIFEST, &img.body)
        .await;
    assert_eq!(tag_list(&ra, "fresh/app").await, ["a", "b", "c"]);
    let resp = rb.delete("/v2/fresh/app/manifests/a").await;
    assert_eq!(resp.status(), 202);
    assert_eq!(tag_list(&ra, "fresh/app").await, ["b", "c"]);
    let resp = ra
        .delete(&format!("/v2/fresh/app/manifests/{}", img.digest))
        .await;
    assert_eq!(resp.status(), 202);
    assert!(tag_list(&rb, "fresh/app").await.is_empty());
}

/// Both replicas push the same content at once, while garbage collection runs against the shared store from the
/// other side on content that was garbage a moment before: every push that succeeded stays pullable from both
/// replicas, and a deep scrub finds the store clean (invariants 1-3 across replicas).
#[tokio::test]
async fn concurrent_pushes_of_one_digest_and_gc_from_the_other_replica() {
    if !common::on_postgres() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let cfg = maint::config(tmp.path(), "");
    let cfg_s = cfg.to_str().unwrap().to_owned();
    let (a, b) = two_replicas(&tmp, &["--config", &cfg_s]);
    let (ra, rb) = (Arc::new(reg(&a)), Arc::new(reg(&b)));
    for round in 0..4 {
        let repo = "race/app";
        // Make the content garbage: pushed, then untagged, older than the 1 s grace and untagged TTL.
        let img = ra.push_image(repo, "t", &format!("round-{round}")).await;
        assert_eq!(
            ra.delete(&format!("/v2/{repo}/manifests/t")).await.status(),
            202
        );
        tokio::time::sleep(std::time::Duration::from_millis(2100)).await;

        // `berth gc` on replica b's directory (the shared blobs) and the shared database.
        let mut gc = std::process::Command::new(env!("CARGO_BIN_EXE_berth"));
        gc.args([
            "gc",
            "--grace",
            "1s",
            "--json",
            "--config",
            &cfg_s,
            "--data-dir",
        ])
        .arg(&b.data_dir)
        .envs(common::metadata_env(&a.data_dir));
        let gc = tokio::task::spawn_blocking(move || gc.output().unwrap());
        let pushes: Vec<_> = [ra.clone(), rb.clone(), ra.clone(), rb.clone()]
            .into_iter()
            .enumerate()
            .map(|(i, r)| {
                let seed = format!("round-{round}");
                tokio::spawn(async move {
                    let img = r.push_image(repo, &format!("p{i}"), &seed).await;
                    (i, img)
                })
            })
            .collect();
        let out = gc.await.unwrap();
        assert!(
            out.status.success(),
            "gc: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        for p in pushes {
            let (i, pushed) = p.await.unwrap();
            assert_eq!(pushed.digest, img.digest);
            for r in [&ra, &rb] {
                assert_pullable(r, repo, &format!("p{i}"), &pushed).await;
            }
        }
    }
    // Exit status 0: no problem found.
    maint::json(&["scrub", "--deep"], &cfg, &a.data_dir, true);
}

fn store(b: &Berth) -> PgMetadataStore {
    PgMetadataStore::open(&PgSettings {
        url: common::postgres_url(&b.data_dir),
        pool_size: 2,
    })
    .unwrap()
}

/// The registry's digest lock and the maintenance leases exclude other replicas through PostgreSQL, and die with
/// the lock's holder.
#[tokio::test]
async fn digest_locks_and_leases_exclude_other_replicas() {
    if !common::on_postgres() {
        return;
    }
    let b = Berth::start();
    let (one, two) = (store(&b), Arc::new(store(&b)));
    let d: berth::oci::Digest = common::sha256_digest(b"locked").parse().unwrap();

    let held = one.lock_digest(&d).await.unwrap().expect("a lock");
    let (two2, d2) = (two.clone(), d.clone());
    let (tx, mut rx) = tokio::sync::oneshot::channel();
    let waiter = tokio::spawn(async move {
        let l = two2.lock_digest(&d2).await.unwrap();
        let _ = tx.send(());
        l
    });
    // The other replica queues behind the lock until it is released (the holder is still alive here).
    let lease = one.try_lease("gc").await.unwrap().expect("the first lease");
    assert!(
        two.try_lease("gc").await.unwrap().is_none(),
        "a second holder of the gc lease"
    );
    assert!(rx.try_recv().is_err(), "the digest lock was granted twice");
    drop(held);
    let _granted = waiter.await.unwrap().expect("the lock after release");

    // A dead holder releases its lease: here the whole store (its pool, its sessions) goes away.
    drop(lease);
    drop(one);
    let mut taken = None;
    for _ in 0..500 {
        taken = two.try_lease("gc").await.unwrap();
        if taken.is_some() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert!(taken.is_some(), "the lease was never released");
}

/// Access tokens and UI sessions are signed with the key `auth.signing_key_file` names: one file every replica reads,
/// so a token issued by one replica is accepted by the other. A replica left on its data directory's own key refuses
/// it, which is why the knob exists.
#[tokio::test]
async fn replicas_sharing_the_signing_key_file_accept_each_others_tokens_and_sessions() {
    if !common::on_postgres() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (dir_a, dir_b, dir_c) = (
        tmp.path().join("a"),
        tmp.path().join("b"),
        tmp.path().join("c"),
    );
    let key = tmp.path().join("secrets").join("signing.key");
    let config = tmp.path().join("berth.toml");
    // A JSON string is a valid TOML basic string.
    let key_toml = serde_json::to_string(key.to_str().unwrap()).unwrap();
    std::fs::write(&config, format!("[auth]\nsigning_key_file = {key_toml}\n")).unwrap();
    let cfg = config.to_str().unwrap();
    auth::cli_ok(&dir_a, &["auth", "rotate-key", "--config", cfg], "");
    assert!(key.exists(), "rotate-key writes the configured file");
    let a = Berth::start_secure_on(&dir_a, &["--config", cfg]);
    let b = Berth::start_replica_secure(&dir_b, &a, &["--config", cfg]);
    let c = Berth::start_replica_secure(&dir_c, &a, &[]);
    assert!(
        !dir_a.join("jwt-signing.key").exists(),
        "with a configured key no per-directory key is made"
    );

    let (status, body) =
        auth::fetch_token(&a.url(), &auth::admin(), &["repository:team/app:pull,push"]).await;
    assert_eq!(status, 200, "{body}");
    let bearer = auth::Creds::Bearer(body["token"].as_str().unwrap().to_owned());
    // Issued by A, used to push through B and pull through A again.
    auth::push_image(&b.url(), &bearer, "team/app", "v1", "shared-key").await;
    let pull = |base: String| {
        let bearer = &bearer;
        async move {
            let url = format!("{base}/v2/team/app/manifests/v1");
            let accept = [("Accept", auth::OCI_MANIFEST)];
            auth::send(reqwest::Method::GET, &url, bearer, &accept, vec![])
                .await
                .0
        }
    };
    assert_eq!(pull(a.url()).await, 200);
    assert_eq!(pull(b.url()).await, 200);
    assert_eq!(
        pull(c.url()).await,
        401,
        "a replica with its own key refuses the token"
    );

    // A UI session started on A is a session on B too.
    let on_a = ui::Session::login(&a, "admin", common::ADMIN_PASSWORD).await;
    let elsewhere = |r: &Berth| ui::Session {
        http: common::client(),
        base: r.url(),
        cookie: on_a.cookie.clone(),
    };
    let (status, html) = elsewhere(&b).get("/ui/tags?repo=team/app").await;
    assert_eq!(status, 200);
    assert!(html.contains("data-tag=\"v1\""), "{html}");
    let (status, _) = elsewhere(&c).get("/ui/tags?repo=team/app").await;
    assert_eq!(status, 303, "C does not know the session: back to sign-in");
}
