//! Mirrors against a misbehaving upstream (issue 3 "Tests": the fault-injecting upstream). For every fault — empty
//! body, body cut half-way, wrong bytes, 500, 503, 429, stall before headers, stall mid-body — the client sees an
//! error (a non-200 status, or a body that ends with an error: never a clean short body, never wrong bytes that
//! complete), nothing is cached, and once the upstream heals the next pull goes upstream again, returns the right
//! bytes and caches them (they are then served with the upstream stopped).
//!
//! berth runs with connect 2 s / response 3 s / idle 3 s upstream timeouts, so every stall must end within 10 s.

mod common;
#[path = "common/upstream.rs"]
mod upstream;

use common::sha256_digest;
use std::time::Duration;
use upstream::{
    ACCEPT_MANIFESTS, Fault, MirrorBerth, OCI_MANIFEST, Outcome, TestImage, Upstream,
    berth_mirroring, get_hashed, http, send,
};

/// A client must have its answer (or its error) within this, whatever the upstream does.
const PROMPT: Duration = Duration::from_secs(10);

async fn get_blob(b: &MirrorBerth, digest: &str) -> Outcome {
    send(
        http().get(format!("{}/v2/up/team/app/blobs/{digest}", b.url())),
        Duration::from_secs(60),
    )
    .await
}

async fn get_manifest(b: &MirrorBerth, reference: &str) -> Outcome {
    send(
        http()
            .get(format!("{}/v2/up/team/app/manifests/{reference}", b.url()))
            .header("Accept", ACCEPT_MANIFESTS),
        Duration::from_secs(60),
    )
    .await
}

/// For a failure that happened before the response started (non-200): a 5xx/429 with an OCI error body.
fn assert_error_response(o: &Outcome, fault: &Fault, what: &str) {
    if o.status == 200 || o.status == 0 {
        return; // aborted body or connection: checked by assert_failed
    }
    assert!(
        o.status >= 500 || o.status == 429,
        "{what} with upstream {fault:?}: status {} is not an upstream error; {}",
        o.status,
        o.describe()
    );
    assert!(
        o.error_code().is_some(),
        "{what} with upstream {fault:?}: not an OCI error body; {}",
        o.describe()
    );
    if let Fault::TooManyRequests { .. } = fault {
        assert!(
            o.status == 429 || o.status == 503,
            "{what}: a rate-limited upstream gave {}",
            o.describe()
        );
        if o.status == 429 {
            assert!(
                o.header("retry-after").is_some(),
                "{what}: the upstream's Retry-After must be surfaced with a 429; {}",
                o.describe()
            );
        }
        assert_eq!(
            o.error_code().as_deref(),
            Some("TOOMANYREQUESTS"),
            "{what}: the upstream's 429 must surface as TOOMANYREQUESTS; {}",
            o.describe()
        );
    }
}

/// The blob scenario: fault → client error; heal → a new upstream GET, correct bytes; down → still cached.
async fn blob_fault_is_not_cached(fault: Fault, size: usize) {
    let up = Upstream::start();
    let data = upstream::random_bytes(size as u64 ^ 0xB10B, size);
    let digest = up.put_blob(data.clone());
    let b = berth_mirroring(&up, "up", &[]);
    let upstream_path = format!("/v2/team/app/blobs/{digest}");
    up.set_path_fault(&digest, fault.clone());

    for attempt in 0..2 {
        let what = format!("GET blob, attempt {attempt}");
        let o = get_blob(&b, &digest).await;
        o.assert_failed(&format!("{what} with upstream {fault:?}"), &data);
        assert_error_response(&o, &fault, &what);
        assert!(
            o.ended_at - o.started < PROMPT,
            "{what} with upstream {fault:?}: took {:?}",
            o.ended_at - o.started
        );
    }
    let gets_during_fault = up.count("GET", &upstream_path);
    assert!(
        gets_during_fault >= 1,
        "berth never asked the upstream: {:?}",
        up.seen()
    );

    up.heal();
    let o = get_blob(&b, &digest).await;
    assert_eq!(
        o.status,
        200,
        "GET blob after the upstream healed (was {fault:?}): {}",
        o.describe()
    );
    assert!(
        o.bytes() == &data[..],
        "GET blob after the upstream healed (was {fault:?}): wrong bytes {}",
        sha256_digest(o.bytes())
    );
    assert!(
        up.count("GET", &upstream_path) > gets_during_fault,
        "after {fault:?} berth served the blob without a new upstream GET: the bad body was cached"
    );

    // Now it is cached, correctly.
    up.down();
    let o = get_blob(&b, &digest).await;
    assert_eq!(
        o.status,
        200,
        "cached blob with the upstream down: {}",
        o.describe()
    );
    assert!(o.bytes() == &data[..], "cached blob bytes");
}

/// The manifest scenario, by digest: berth can always verify the bytes.
async fn manifest_fault_is_not_cached(fault: Fault) {
    let up = Upstream::start();
    let img = TestImage::new(0x3A1F, &[1000]);
    up.put_image("team/app", "v1", &img);
    let b = berth_mirroring(&up, "up", &[]);
    let upstream_path = format!("/v2/team/app/manifests/{}", img.digest);
    up.set_path_fault(&upstream_path, fault.clone());

    for attempt in 0..2 {
        let what = format!("GET manifest by digest, attempt {attempt}");
        let o = get_manifest(&b, &img.digest).await;
        o.assert_failed(&format!("{what} with upstream {fault:?}"), &img.manifest);
        assert_error_response(&o, &fault, &what);
        assert!(
            o.ended_at - o.started < PROMPT,
            "{what} with upstream {fault:?}: took {:?}",
            o.ended_at - o.started
        );
    }
    let before = up.count("GET", &upstream_path);
    assert!(
        before >= 1,
        "berth never asked the upstream: {:?}",
        up.seen()
    );

    up.heal();
    let o = get_manifest(&b, &img.digest).await;
    assert_eq!(
        o.status,
        200,
        "manifest after the upstream healed (was {fault:?}): {}",
        o.describe()
    );
    assert_eq!(o.bytes(), &img.manifest[..], "manifest bytes after healing");
    assert_eq!(
        o.header("docker-content-digest").as_deref(),
        Some(img.digest.as_str())
    );
    assert_eq!(o.header("content-type").as_deref(), Some(OCI_MANIFEST));
    assert!(
        up.count("GET", &upstream_path) > before,
        "after {fault:?} the manifest was served without a new upstream GET: the bad body was cached"
    );
    up.down();
    let o = get_manifest(&b, &img.digest).await;
    assert_eq!(
        o.status,
        200,
        "cached manifest, upstream down: {}",
        o.describe()
    );
    assert_eq!(o.bytes(), &img.manifest[..]);
}

const BLOB: usize = 3 * 1024 * 1024 + 5;

// --- blobs --------------------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mirror_blob_zero_bytes_is_not_cached() {
    blob_fault_is_not_cached(Fault::ZeroBytes, BLOB).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mirror_blob_truncated_is_not_cached() {
    blob_fault_is_not_cached(Fault::Truncate, BLOB).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mirror_blob_wrong_bytes_is_not_cached() {
    blob_fault_is_not_cached(Fault::WrongBytes, BLOB).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mirror_blob_500_is_not_cached() {
    blob_fault_is_not_cached(Fault::Status(500), BLOB).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mirror_blob_503_is_not_cached() {
    blob_fault_is_not_cached(Fault::Status(503), BLOB).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mirror_blob_429_is_surfaced_and_not_cached() {
    blob_fault_is_not_cached(Fault::TooManyRequests { retry_after: 1 }, BLOB).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mirror_blob_stall_before_headers_times_out() {
    blob_fault_is_not_cached(Fault::StallBeforeHeaders(Duration::from_secs(60)), BLOB).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mirror_blob_stall_mid_body_aborts() {
    blob_fault_is_not_cached(Fault::StallMidBody(Duration::from_secs(60)), BLOB).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mirror_small_blob_truncated_is_not_cached() {
    blob_fault_is_not_cached(Fault::Truncate, 1000).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mirror_small_blob_wrong_bytes_is_not_cached() {
    blob_fault_is_not_cached(Fault::WrongBytes, 1000).await;
}

/// Several clients joined to one failing download: every one of them gets an aborted body (or an error status).
async fn concurrent_clients_all_fail(fault: Fault) {
    const SIZE: usize = 8 * 1024 * 1024;
    let up = Upstream::start();
    let data = upstream::random_bytes(0xC0C0, SIZE);
    let digest = up.put_blob(data.clone());
    let b = berth_mirroring(&up, "up", &[]);
    up.set_path_fault(&digest, fault.clone());
    let url = format!("{}/v2/up/team/app/blobs/{digest}", b.url());
    let mut tasks = vec![];
    for _ in 0..6 {
        let url = url.clone();
        tasks.push(tokio::spawn(async move {
            get_hashed(&http(), &url, Duration::from_secs(60)).await
        }));
    }
    for (i, t) in tasks.into_iter().enumerate() {
        let r = t.await.unwrap();
        assert!(
            r.status != 200 || r.error.is_some(),
            "client {i} of 6 got a clean 200 from a failing upstream ({fault:?}): {} bytes, {} (right: {})",
            r.len,
            r.digest,
            digest
        );
    }
    up.heal();
    let r = get_hashed(&http(), &url, Duration::from_secs(60)).await;
    assert_eq!(
        (r.status, r.len, r.digest.as_str(), r.error.as_deref()),
        (200, SIZE, digest.as_str(), None),
        "after healing"
    );
    up.down();
    let r = get_hashed(&http(), &url, Duration::from_secs(60)).await;
    assert_eq!(
        (r.status, r.len, r.digest.as_str(), r.error.as_deref()),
        (200, SIZE, digest.as_str(), None),
        "cached after healing, upstream down"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mirror_blob_truncated_aborts_every_concurrent_client() {
    concurrent_clients_all_fail(Fault::TrickleTruncate {
        chunk: 256 * 1024,
        every: Duration::from_millis(50),
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mirror_blob_wrong_bytes_aborts_every_concurrent_client() {
    concurrent_clients_all_fail(Fault::TrickleWrongBytes {
        chunk: 256 * 1024,
        every: Duration::from_millis(50),
    })
    .await;
}

// --- manifests ----------------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mirror_manifest_zero_bytes_is_not_cached() {
    manifest_fault_is_not_cached(Fault::ZeroBytes).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mirror_manifest_truncated_is_not_cached() {
    manifest_fault_is_not_cached(Fault::Truncate).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mirror_manifest_wrong_bytes_is_not_cached() {
    manifest_fault_is_not_cached(Fault::WrongBytes).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mirror_manifest_500_is_not_cached() {
    manifest_fault_is_not_cached(Fault::Status(500)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mirror_manifest_503_is_not_cached() {
    manifest_fault_is_not_cached(Fault::Status(503)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mirror_manifest_429_is_surfaced_and_not_cached() {
    manifest_fault_is_not_cached(Fault::TooManyRequests { retry_after: 1 }).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mirror_manifest_stall_before_headers_times_out() {
    manifest_fault_is_not_cached(Fault::StallBeforeHeaders(Duration::from_secs(60))).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mirror_manifest_stall_mid_body_aborts() {
    manifest_fault_is_not_cached(Fault::StallMidBody(Duration::from_secs(60))).await;
}

/// By tag, the upstream's `Docker-Content-Digest` names the digest; a body that does not hash to it is refused and
/// the tag is not cached.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mirror_manifest_by_tag_not_matching_upstream_digest_is_refused() {
    let up = Upstream::start();
    let img = TestImage::new(0x7A6, &[1000]);
    up.put_image("team/app", "v1", &img);
    let b = berth_mirroring(&up, "up", &[]);
    up.set_path_fault("/v2/team/app/manifests/v1", Fault::WrongBytes);
    let o = get_manifest(&b, "v1").await;
    o.assert_failed(
        "GET by tag, upstream body not matching its Docker-Content-Digest",
        &img.manifest,
    );
    up.heal();
    let o = get_manifest(&b, "v1").await;
    assert_eq!(o.status, 200, "after healing: {}", o.describe());
    assert_eq!(o.bytes(), &img.manifest[..], "after healing");
    assert_eq!(
        o.header("docker-content-digest").as_deref(),
        Some(img.digest.as_str())
    );
}

/// A tag first fetched while the upstream misbehaves is not cached either: after healing the tag resolves to the
/// upstream's manifest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mirror_manifest_by_tag_truncated_is_not_cached() {
    let up = Upstream::start();
    let img = TestImage::new(0x7A7, &[1000]);
    up.put_image("team/app", "v1", &img);
    let b = berth_mirroring(&up, "up", &[]);
    up.set_fault(Fault::Truncate);
    let o = get_manifest(&b, "v1").await;
    o.assert_failed("GET by tag, truncated upstream", &img.manifest);
    up.heal();
    let o = get_manifest(&b, "v1").await;
    assert_eq!(o.status, 200, "after healing: {}", o.describe());
    assert_eq!(o.bytes(), &img.manifest[..], "after healing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mirror_blob_stall_mid_body_aborts_every_concurrent_client_promptly() {
    const SIZE: usize = 4 * 1024 * 1024;
    let up = Upstream::start();
    let data = upstream::random_bytes(0x57A1, SIZE);
    let digest = up.put_blob(data.clone());
    let b = berth_mirroring(&up, "up", &[]);
    up.set_path_fault(&digest, Fault::StallMidBody(Duration::from_secs(60)));
    let url = format!("{}/v2/up/team/app/blobs/{digest}", b.url());
    let mut tasks = vec![];
    for _ in 0..4 {
        let url = url.clone();
        tasks.push(tokio::spawn(async move {
            get_hashed(&http(), &url, Duration::from_secs(60)).await
        }));
    }
    for (i, t) in tasks.into_iter().enumerate() {
        let r = t.await.unwrap();
        assert!(
            r.status != 200 || r.error.is_some(),
            "client {i}: a clean 200 from a stalled upstream: {r:?}"
        );
        assert!(
            r.ended_at - r.started < PROMPT,
            "client {i}: held {:?} by a stalled upstream (idle_timeout 3s)",
            r.ended_at - r.started
        );
    }
    up.heal();
    let r = get_hashed(&http(), &url, Duration::from_secs(60)).await;
    assert_eq!(
        (r.status, r.len, r.digest.as_str(), r.error.as_deref()),
        (200, SIZE, digest.as_str(), None),
        "after healing"
    );
}

/// The client that started a download goes away: the others reading the same in-flight download still get the
/// whole, verified blob, and the cache ends up correct.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mirror_first_client_disconnect_does_not_break_the_others() {
    const SIZE: usize = 16 * 1024 * 1024;
    let up = Upstream::start();
    let data = upstream::random_bytes(0xD15C, SIZE);
    let digest = up.put_blob(data.clone());
    // ~2 s transfer.
    up.set_path_fault(
        &digest,
        Fault::Trickle {
            chunk: 512 * 1024,
            every: Duration::from_millis(60),
        },
    );
    let b = berth_mirroring(&up, "up", &[]);
    let url = format!("{}/v2/up/team/app/blobs/{digest}", b.url());

    // The first client reads a little and disconnects.
    let first = {
        let url = url.clone();
        tokio::spawn(async move {
            let mut r = http().get(&url).send().await.unwrap();
            assert_eq!(r.status(), 200);
            let mut got = 0;
            while got < 1024 * 1024 {
                match r.chunk().await {
                    Ok(Some(c)) => got += c.len(),
                    _ => break,
                }
            }
            drop(r);
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    let others: Vec<_> = (0..3)
        .map(|_| {
            let url = url.clone();
            tokio::spawn(async move { get_hashed(&http(), &url, Duration::from_secs(60)).await })
        })
        .collect();
    first.await.unwrap();
    for (i, t) in others.into_iter().enumerate() {
        let r = t.await.unwrap();
        assert_eq!(
            (r.status, r.len, r.digest.as_str(), r.error.as_deref()),
            (200, SIZE, digest.as_str(), None),
            "client {i} after the first client disconnected"
        );
    }
    up.heal();
    up.down();
    let r = get_hashed(&http(), &url, Duration::from_secs(60)).await;
    assert_eq!(
        (r.status, r.len, r.digest.as_str(), r.error.as_deref()),
        (200, SIZE, digest.as_str(), None),
        "cached, upstream down"
    );
}

/// Everyone goes away mid-download: whatever berth does with the download, the next pull gets the right bytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mirror_all_clients_disconnecting_leaves_no_bad_cache() {
    const SIZE: usize = 8 * 1024 * 1024;
    let up = Upstream::start();
    let data = upstream::random_bytes(0xD15D, SIZE);
    let digest = up.put_blob(data.clone());
    up.set_path_fault(
        &digest,
        Fault::Trickle {
            chunk: 256 * 1024,
            every: Duration::from_millis(50),
        },
    );
    let b = berth_mirroring(&up, "up", &[]);
    let url = format!("{}/v2/up/team/app/blobs/{digest}", b.url());
    for _ in 0..2 {
        let mut r = http().get(&url).send().await.unwrap();
        assert_eq!(r.status(), 200);
        let _ = r.chunk().await;
        drop(r);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let r = get_hashed(&http(), &url, Duration::from_secs(60)).await;
    assert_eq!(
        (r.status, r.len, r.digest.as_str(), r.error.as_deref()),
        (200, SIZE, digest.as_str(), None),
        "after every earlier client disconnected"
    );
}
