//! The scale-out shape: two `berth serve` replicas on different ports and data directories, one PostgreSQL database
//! and one blob store between them. Runs only with `BERTH_TEST_METADATA=postgres` (the SQLite shape has one server
//! per data directory, and the rest of the suite covers it); on SQLite each test returns at once.

#[path = "common/auth.rs"]
mod auth;
mod common;
#[path = "common/image.rs"]
mod image;
#[path = "common/maint.rs"]
mod maint;
#[path = "common/spec.rs"]
mod spec;
#[path = "common/ui.rs"]
mod ui;
#[path = "common/upstream.rs"]
mod upstream;
#[path = "common/workload.rs"]
mod workload;

use std::sync::Arc;

use berth::meta::Coordination;
use berth::meta::{PgSettings, SqlStore};
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

fn store(b: &Berth) -> SqlStore {
    SqlStore::postgres(&PgSettings {
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

/// Deterministic bytes that do not compress or repeat (so a misplaced chunk changes the digest).
fn pseudo_random(seed: u64, n: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn skip_unless_postgres(test: &str) -> bool {
    if common::on_postgres() {
        return false;
    }
    eprintln!("{test}: skipped, replicas need shared metadata (BERTH_TEST_METADATA=postgres)");
    true
}

/// The upload URL `loc` (from either replica) on replica `r`.
fn on(r: &Reg, from: &Berth, loc: &str) -> String {
    let path = loc.strip_prefix(&from.url()).unwrap_or(loc);
    r.resolve(path)
}

/// The session state lives in the shared stores: POST on one replica, PATCHes alternating, PUT on the other; a
/// replica whose idea of the session is stale neither accepts a chunk at its old offset nor reports it.
#[tokio::test]
async fn chunked_upload_alternates_between_replicas() {
    if skip_unless_postgres("chunked_upload_alternates_between_replicas") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = two_replicas(&tmp, &[]);
    let (ra, rb) = (reg(&a), reg(&b));
    let repo = "chunks/app";
    // The first chunk spans two object-store parts (8 MiB each), the others are single PUTs.
    let sizes = [9 << 20, 1 << 20, 3 << 19, 100 << 10];
    let data = pseudo_random(7, sizes.iter().sum());
    let digest = spec::sha256(&data);
    let mut chunks = Vec::new();
    let mut start = 0;
    for n in sizes {
        chunks.push((start, &data[start..start + n]));
        start += n;
    }
    let range = |start: usize, chunk: &[u8]| format!("{start}-{}", start + chunk.len() - 1);

    let loc = ra.start_upload(repo).await;
    let (la, lb) = (on(&ra, &a, &loc), on(&rb, &a, &loc));
    let mut loc = la.clone();
    for (i, (start, chunk)) in chunks[..3].iter().enumerate() {
        let (r, l) = if i % 2 == 0 { (&rb, &lb) } else { (&ra, &la) };
        if i == 2 {
            // Replica b last saw the session at the end of chunk 0: a chunk at that offset is out of order now.
            let resp = r.patch(l, chunk, Some(&range(chunks[1].0, chunk))).await;
            assert_eq!(resp.status(), 416, "a chunk at a stale offset");
            let v: serde_json::Value = resp.json().await.unwrap();
            assert_eq!(
                v["errors"][0]["detail"]["offset"], *start,
                "the offset the session is really at"
            );
        }
        let resp = r.patch(l, chunk, Some(&range(*start, chunk))).await;
        assert_eq!(resp.status(), 202, "PATCH {i}");
        let end = start + chunk.len();
        assert_eq!(
            spec::header(&resp, "range").as_deref(),
            Some(format!("0-{}", end - 1).as_str())
        );
        loc = spec::must_header(&resp, "location");
        // The other replica reports where the session stands.
        let (other, other_loc) = if i % 2 == 0 { (&ra, &la) } else { (&rb, &lb) };
        let resp = other.get(other_loc).await;
        assert_eq!(resp.status(), 204, "upload status on the other replica");
        assert_eq!(
            spec::header(&resp, "range").as_deref(),
            Some(format!("0-{}", end - 1).as_str()),
            "upload status after PATCH {i} on the other replica"
        );
    }
    // The last PATCH went to b; its Location works on a, which finishes the upload with the last chunk.
    let resp = ra
        .put_upload(&on(&ra, &b, &loc), &digest, chunks[3].1)
        .await;
    spec::expect_status(resp, 201).await;
    for r in [&ra, &rb] {
        let resp = r.get(&format!("/v2/{repo}/blobs/{digest}")).await;
        assert_eq!(resp.status(), 200);
        assert_eq!(
            spec::header(&resp, "docker-content-digest").as_deref(),
            Some(digest.as_str())
        );
        let body = resp.bytes().await.unwrap();
        assert_eq!(body.len(), data.len());
        assert!(body.as_ref() == data.as_slice(), "blob bytes differ");
    }
    // The session is gone on both.
    for (r, l) in [(&ra, &la), (&rb, &lb)] {
        assert_eq!(r.get(l).await.status(), 404);
    }
}

/// Two replicas mirroring one fake upstream (short timeouts), sharing a config file under `tmp`.
fn mirroring_replicas(tmp: &tempfile::TempDir, up: &upstream::Upstream) -> (Berth, Berth) {
    let cfg = tmp.path().join("mirror.toml");
    let toml = upstream::mirror_toml(
        "up",
        &up.url(),
        &[
            ("connect_timeout", "2s"),
            ("response_timeout", "3s"),
            ("idle_timeout", "3s"),
        ],
    );
    std::fs::write(&cfg, toml).unwrap();
    two_replicas(tmp, &["--config", cfg.to_str().unwrap()])
}

/// GETs `url` to the end; asserts a 200 whose body is exactly `want`.
async fn assert_pulls(url: String, want: bytes::Bytes) {
    let o = upstream::send(
        upstream::http().get(&url),
        std::time::Duration::from_secs(60),
    )
    .await;
    assert_eq!(o.status, 200, "GET {url}: {}", o.describe());
    assert_eq!(o.bytes().len(), want.len(), "GET {url}: length");
    assert!(o.bytes() == want.as_ref(), "GET {url}: bytes differ");
}

/// A random blob of `len` bytes on the fake upstream, whose body it sends `chunk` bytes every `every_ms`.
fn trickled_blob(
    up: &upstream::Upstream,
    seed: u64,
    len: usize,
    chunk: usize,
    every_ms: u64,
) -> (bytes::Bytes, String) {
    let blob = upstream::random_bytes(seed, len);
    let digest = up.put_blob(blob.clone());
    up.set_path_fault(
        &digest,
        upstream::Fault::Trickle {
            chunk,
            every: std::time::Duration::from_millis(every_ms),
        },
    );
    (blob, digest)
}

/// Design invariant 4 across replicas: concurrent cold pulls of one blob, split between two replicas, cause one
/// upstream GET; the replica that does not download waits for the other's commit and serves from the store, and
/// every client gets the whole blob. The download takes longer than a waiting replica holds back its response
/// headers, so its clients are answered before the blob is there.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn mirror_fan_in_across_replicas_fetches_once() {
    if skip_unless_postgres("mirror_fan_in_across_replicas_fetches_once") {
        return;
    }
    let up = upstream::Upstream::start();
    // About 7 s for the whole body.
    let (blob, digest) = trickled_blob(&up, 11, 6 << 20, 128 << 10, 150);
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = mirroring_replicas(&tmp, &up);
    let pulls: Vec<_> = (0..16)
        .map(|i| {
            let base = if i % 2 == 0 { a.url() } else { b.url() };
            let url = format!("{base}/v2/up/team/app/blobs/{digest}");
            tokio::spawn(assert_pulls(url, blob.clone()))
        })
        .collect();
    for p in pulls {
        p.await.unwrap();
    }
    assert_eq!(up.blob_gets("team/app", &digest), 1, "upstream GETs");
    // Cached for both now: served from the store, no further upstream traffic.
    for base in [a.url(), b.url()] {
        assert_pulls(
            format!("{base}/v2/up/team/app/blobs/{digest}"),
            blob.clone(),
        )
        .await;
    }
    assert_eq!(up.blob_gets("team/app", &digest), 1, "upstream GETs");
}

/// The replica downloading a blob dies (`kill -9`) while the other one waits for it: the waiting replica's lease
/// comes free with the dead one's database session, it downloads the blob itself, and its clients get it whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn mirror_download_is_taken_over_when_its_replica_dies() {
    if skip_unless_postgres("mirror_download_is_taken_over_when_its_replica_dies") {
        return;
    }
    let up = upstream::Upstream::start();
    // About 6 s for the whole body: long enough to kill the downloader in the middle.
    let (blob, digest) = trickled_blob(&up, 12, 4 << 20, 64 << 10, 100);
    let tmp = tempfile::tempdir().unwrap();
    let (mut a, b) = mirroring_replicas(&tmp, &up);
    let path = format!("/v2/up/team/app/blobs/{digest}");
    // Replica a starts the download (its client will see the connection die).
    let doomed = tokio::spawn(upstream::send(
        upstream::http().get(format!("{}{path}", a.url())),
        std::time::Duration::from_secs(60),
    ));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while up.blob_gets("team/app", &digest) == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "replica a never asked the upstream"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    // Replica b's clients wait for a's download.
    let waiting: Vec<_> = (0..4)
        .map(|_| tokio::spawn(assert_pulls(format!("{}{path}", b.url()), blob.clone())))
        .collect();
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    a.kill9();
    for w in waiting {
        w.await.unwrap();
    }
    let o = doomed.await.unwrap();
    assert!(
        o.body.is_err() || o.status != 200,
        "a's client cannot have completed"
    );
    assert_eq!(
        up.blob_gets("team/app", &digest),
        2,
        "one GET by a, one by b after a died"
    );
}

/// Runs a `berth` command on replica `r`'s data directory, against the metadata store it shares with `owner`.
fn berth_on_replica(
    args: &[&str],
    cfg: &std::path::Path,
    r: &Berth,
    owner: &Berth,
) -> std::process::Output {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_berth"));
    cmd.args(args)
        .arg("--config")
        .arg(cfg)
        .arg("--data-dir")
        .arg(&r.data_dir)
        .envs(common::metadata_env(&owner.data_dir));
    common::blob_env(&mut cmd, &r.data_dir);
    cmd.output().unwrap()
}

/// `berth scrub --deep` run from replica `r` finds nothing wrong.
fn assert_deep_scrub_clean(cfg: &std::path::Path, r: &Berth, owner: &Berth) {
    let out = berth_on_replica(&["scrub", "--deep", "--json"], cfg, r, owner);
    assert!(
        out.status.success(),
        "deep scrub found problems:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `kill -9` of a replica in the middle of a chunk: the other replica keeps serving, reports the session as it
/// was before the chunk (an interrupted chunk never counts), and takes the push again; the store scrubs clean.
#[tokio::test]
async fn replica_killed_mid_push_leaves_the_other_serving() {
    if skip_unless_postgres("replica_killed_mid_push_leaves_the_other_serving") {
        return;
    }
    use tokio::io::AsyncWriteExt;
    let tmp = tempfile::tempdir().unwrap();
    let cfg = maint::config(tmp.path(), "");
    let (mut a, b) = two_replicas(&tmp, &["--config", cfg.to_str().unwrap()]);
    let (ra, rb) = (reg(&a), reg(&b));
    let img = ra.push_image("kill/app", "v1", "before").await;

    let data = pseudo_random(21, 24 << 20);
    let digest = spec::sha256(&data);
    let first = 2 << 20;
    let loc = ra.start_upload("kill/app").await;
    let resp = ra
        .patch(&loc, &data[..first], Some(&format!("0-{}", first - 1)))
        .await;
    assert_eq!(resp.status(), 202);
    // The second chunk: headers and half its bytes, then replica a dies.
    let path = loc.strip_prefix(&a.url()).unwrap().to_owned();
    let mut conn = tokio::net::TcpStream::connect(a.host()).await.unwrap();
    let rest = &data[first..];
    conn.write_all(
        format!(
            "PATCH {path} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/octet-stream\r\n\
             Content-Length: {}\r\nContent-Range: {first}-{}\r\n\r\n",
            a.host(),
            rest.len(),
            data.len() - 1
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    conn.write_all(&rest[..rest.len() / 2]).await.unwrap();
    conn.flush().await.unwrap();
    a.kill9();
    drop(conn);

    assert_pullable(&rb, "kill/app", "v1", &img).await;
    let resp = rb.get(&on(&rb, &a, &loc)).await;
    assert_eq!(resp.status(), 204);
    assert_eq!(
        spec::header(&resp, "range").as_deref(),
        Some(format!("0-{}", first - 1).as_str()),
        "the interrupted chunk does not count"
    );
    // The client pushes again through b.
    assert_eq!(rb.push_blob("kill/app", &data).await, digest);
    let resp = rb.get(&format!("/v2/kill/app/blobs/{digest}")).await;
    assert_eq!(resp.status(), 200);
    assert!(resp.bytes().await.unwrap().as_ref() == data.as_slice());
    assert_deep_scrub_clean(&cfg, &b, &a);
}

/// `kill -9` of the replica running scheduled garbage collection: its lease dies with it, the other replica's
/// next scheduled run takes the lease and collects, and the store scrubs clean. To stop replica a in the middle
/// of its run deterministically, the test holds the transaction lock garbage collection takes on the garbage
/// manifest's digest, and kills a once its collection waits for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replica_killed_mid_gc_hands_the_lease_over() {
    if skip_unless_postgres("replica_killed_mid_gc_hands_the_lease_over") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    // Scheduled GC every second on both replicas; replica b starts once a is stuck in its run.
    let cfg = maint::config(tmp.path(), "");
    let toml = std::fs::read_to_string(&cfg).unwrap().replace(
        "[gc]\ninterval = \"0s\"",
        "[gc]\ninterval = \"1s\"\njitter = \"0s\"",
    );
    std::fs::write(&cfg, toml).unwrap();
    let cfg_s = cfg.to_str().unwrap();
    let mut a = Berth::start_on(&tmp.path().join("a"), &["--config", cfg_s]);
    let ra = reg(&a);
    let kept = ra.push_image("gc/app", "kept", "kept").await;
    let garbage = ra.push_image("gc/app", "old", "garbage").await;

    // Hold the digest's transaction-lock key (space `Digest` of the PostgreSQL store) from another session.
    let (client, conn) =
        tokio_postgres::connect(&common::postgres_url(&a.data_dir), tokio_postgres::NoTls)
            .await
            .unwrap();
    tokio::spawn(conn);
    let space: i32 = 0x6265_0002;
    let hex = garbage.digest.split_once(':').unwrap().1;
    let key = u32::from_str_radix(&hex[..8], 16).unwrap() as i32;
    client
        .execute("SELECT pg_advisory_lock($1, $2)", &[&space, &key])
        .await
        .unwrap();
    assert_eq!(ra.delete("/v2/gc/app/manifests/old").await.status(), 202);

    // a's run finds the untagged manifest (older than the 1 s TTL) and waits for the lock.
    let waiting = format!(
        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted \
         AND database = (SELECT oid FROM pg_database WHERE datname = current_database()) \
         AND classid = {} AND objid = {}",
        space as u32, key as u32
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while common::psql(&a.data_dir, &waiting).trim() != "1" {
        assert!(
            std::time::Instant::now() < deadline,
            "replica a's GC never reached the manifest"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    // a's run holds the "gc" lease (space `Lease`, key: the first 32 bits of SHA-256("gc")).
    let lease_key = {
        use sha2::Digest as _;
        let h = sha2::Sha256::digest(b"gc");
        u32::from_be_bytes([h[0], h[1], h[2], h[3]])
    };
    let lease_held = format!(
        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted \
         AND database = (SELECT oid FROM pg_database WHERE datname = current_database()) \
         AND classid = {} AND objid = {lease_key}",
        0x6265_0005u32
    );
    assert_eq!(common::psql(&a.data_dir, &lease_held).trim(), "1");
    let b = Berth::start_replica(&tmp.path().join("b"), &a, &["--config", cfg_s]);
    a.kill9();
    client
        .execute("SELECT pg_advisory_unlock($1, $2)", &[&space, &key])
        .await
        .unwrap();

    // b's scheduled run takes over and collects the manifest; b serves what is kept meanwhile.
    let rb = reg(&b);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    // Looked up in the database: a HEAD through a replica would count as a pull and keep the manifest.
    let remaining = format!(
        "SELECT count(*) FROM manifest WHERE digest = '{}'",
        garbage.digest
    );
    loop {
        assert_pullable(&rb, "gc/app", "kept", &kept).await;
        if common::psql(&a.data_dir, &remaining).trim() == "0" {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "replica b never collected"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_deep_scrub_clean(&cfg, &b, &a);
}

/// A cold tag pulled through both replicas at once is fetched from the upstream once: the replica that does not
/// fetch it waits for the other's commit and serves the cached manifest, byte for byte.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn mirror_manifest_fetched_once_across_replicas() {
    if skip_unless_postgres("mirror_manifest_fetched_once_across_replicas") {
        return;
    }
    let up = upstream::Upstream::start();
    let img = upstream::TestImage::new(31, &[1024]);
    up.put_image("team/app", "v1", &img);
    up.set_path_fault(
        "/manifests/v1",
        upstream::Fault::StallBeforeHeaders(std::time::Duration::from_millis(1500)),
    );
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = mirroring_replicas(&tmp, &up);
    let pulls: Vec<_> = (0..8)
        .map(|i| {
            let base = if i % 2 == 0 { a.url() } else { b.url() };
            let req = upstream::http()
                .get(format!("{base}/v2/up/team/app/manifests/v1"))
                .header("accept", upstream::OCI_MANIFEST);
            tokio::spawn(upstream::send(req, std::time::Duration::from_secs(30)))
        })
        .collect();
    for p in pulls {
        let o = p.await.unwrap();
        assert_eq!(o.status, 200, "{}", o.describe());
        assert!(o.bytes() == img.manifest.as_ref(), "manifest bytes differ");
    }
    assert_eq!(
        up.manifest_gets("team/app", "v1"),
        1,
        "upstream manifest GETs"
    );
}

/// The maintenance torture (tests/maint_torture.rs) split across replicas: pushers and deleters on replica a,
/// garbage collection and retention scheduled every second on replica b only. Afterwards a deep scrub finds
/// nothing and every tag pulls whole from both replicas (invariant 3 across replicas).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pushes_on_one_replica_while_the_other_collects() {
    use std::sync::atomic::{AtomicBool, Ordering};
    if skip_unless_postgres("pushes_on_one_replica_while_the_other_collects") {
        return;
    }
    let secs: u64 = std::env::var("BERTH_TORTURE_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10);
    let tmp = tempfile::tempdir().unwrap();
    let (cfg_a_dir, cfg_b_dir) = (tmp.path().join("cfg-a"), tmp.path().join("cfg-b"));
    std::fs::create_dir_all(&cfg_a_dir).unwrap();
    std::fs::create_dir_all(&cfg_b_dir).unwrap();
    let cfg_a = maint::config(&cfg_a_dir, "");
    let cfg_b =
        maint::scheduled_config(&cfg_b_dir, "torture/*", "delete_untagged_after = \"1s\"\n");
    // Pushes through two replicas onto the object store take longer than on one local disk: a 1 s grace would
    // take the blobs of most pushes before their manifest arrives (they would be retried, never wrong).
    for cfg in [&cfg_a, &cfg_b] {
        let toml = std::fs::read_to_string(cfg).unwrap();
        std::fs::write(cfg, toml.replace("grace = \"1s\"", "grace = \"3s\"")).unwrap();
    }
    let a = Berth::start_on(
        &tmp.path().join("a"),
        &["--config", cfg_a.to_str().unwrap()],
    );
    let b = Berth::start_replica(
        &tmp.path().join("b"),
        &a,
        &["--config", cfg_b.to_str().unwrap()],
    );
    let repos: Vec<String> = (0..4).map(|i| format!("torture/r{i}")).collect();

    let stop = Arc::new(AtomicBool::new(false));
    let c = Arc::new(workload::Counters::default());
    let mut tasks = Vec::new();
    for i in 0..6u64 {
        tasks.push(tokio::spawn(workload::pusher(
            a.url(),
            repos[i as usize % repos.len()].clone(),
            1000 + i,
            stop.clone(),
            c.clone(),
        )));
    }
    tasks.push(tokio::spawn(workload::deleter(
        a.url(),
        repos.clone(),
        2000,
        stop.clone(),
        c.clone(),
    )));
    tokio::time::sleep(std::time::Duration::from_secs(secs)).await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(c.failures.load(Ordering::Relaxed), 0, "{}", c.summary());
    assert_eq!(
        c.transport_errors.load(Ordering::Relaxed),
        0,
        "{}",
        c.summary()
    );
    assert!(
        c.pushes.load(Ordering::Relaxed) > 0,
        "nothing was pushed: {}",
        c.summary()
    );

    // Let b's scheduler run once more with nothing else going on, then everything must be whole.
    tokio::time::sleep(std::time::Duration::from_millis(3100)).await;
    assert_deep_scrub_clean(&cfg_b, &b, &a);
    for r in [&a, &b] {
        let (tags, problems) = workload::verify_all_tags(&r.url(), &repos).await;
        assert!(problems.is_empty(), "{problems:#?}");
        eprintln!("{}: {tags} tags verified; {}", r.url(), c.summary());
    }
    let status = berth_on_replica(&["status", "--json"], &cfg_b, &b, &a);
    let status: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    for job in ["gc", "retention"] {
        assert!(
            status["runs"]
                .as_array()
                .unwrap()
                .iter()
                .any(|r| r["kind"] == job && r["outcome"] == "ok"),
            "no successful {job} run: {status}"
        );
    }
}

/// Two replicas never write one session at once, and a client that gives up in the middle of a chunk on one
/// replica does not block its session: the replica gives the claim back (the session's row names no writer again, which expiry alone would not do), and the client
/// continues from the committed length on the other replica.
#[tokio::test]
async fn chunk_abandoned_on_one_replica_continues_on_the_other() {
    if skip_unless_postgres("chunk_abandoned_on_one_replica_continues_on_the_other") {
        return;
    }
    use tokio::io::AsyncWriteExt;
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = two_replicas(&tmp, &[]);
    let (ra, rb) = (reg(&a), reg(&b));
    let data = pseudo_random(41, 12 << 20);
    let digest = spec::sha256(&data);
    let first = 1 << 20;
    let loc = ra.start_upload("abandon/app").await;
    let resp = ra
        .patch(&loc, &data[..first], Some(&format!("0-{}", first - 1)))
        .await;
    assert_eq!(resp.status(), 202);
    let path = loc.strip_prefix(&a.url()).unwrap().to_owned();
    let id = path
        .rsplit('/')
        .next()
        .unwrap()
        .split('?')
        .next()
        .unwrap()
        .to_owned();
    let mut conn = tokio::net::TcpStream::connect(a.host()).await.unwrap();
    let rest = &data[first..];
    conn.write_all(
        format!(
            "PATCH {path} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/octet-stream\r\n\
             Content-Length: {}\r\nContent-Range: {first}-{}\r\n\r\n",
            a.host(),
            rest.len(),
            data.len() - 1
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    conn.write_all(&rest[..rest.len() / 2]).await.unwrap();
    conn.flush().await.unwrap();
    // Wait until a holds the claim, then hang up.
    let writer = format!("SELECT writer IS NOT NULL FROM upload WHERE id = '{id}'");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while common::psql(&a.data_dir, &writer).trim() != "t" {
        assert!(
            std::time::Instant::now() < deadline,
            "replica a never claimed the session"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    // While a writes the chunk, b refuses to write the same session (it would clobber a's bytes).
    let lb = on(&rb, &a, &loc);
    let resp = rb
        .patch(&lb, rest, Some(&format!("{first}-{}", data.len() - 1)))
        .await;
    assert_eq!(resp.status(), 416, "a second writer of one session");
    drop(conn);
    while common::psql(&a.data_dir, &writer).trim() != "f" {
        assert!(
            std::time::Instant::now() < deadline,
            "replica a kept its claim"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let resp = rb.get(&lb).await;
    assert_eq!(
        spec::header(&resp, "range").as_deref(),
        Some(format!("0-{}", first - 1).as_str())
    );
    let resp = rb
        .patch(&lb, rest, Some(&format!("{first}-{}", data.len() - 1)))
        .await;
    assert_eq!(resp.status(), 202);
    let loc = spec::must_header(&resp, "location");
    spec::expect_status(rb.put_upload(&loc, &digest, &[]).await, 201).await;
    let resp = ra.get(&format!("/v2/abandon/app/blobs/{digest}")).await;
    assert_eq!(resp.status(), 200);
    assert!(resp.bytes().await.unwrap().as_ref() == data.as_slice());
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
