//! Mirror cache budgets (design invariant 6): least recently used blobs are evicted with their metadata, blobs a
//! private repository links never are, an evicted blob is fetched again, and no client ever gets a bad body.

mod common;
#[path = "common/upstream.rs"]
mod upstream;

use std::time::{Duration, Instant};

use common::{client, sha256_digest};
use upstream::{Upstream, berth_mirroring, random_bytes};

const BLOB: usize = 400_000;

async fn pull(base: &str, digest: &str) -> Vec<u8> {
    let r = client()
        .get(format!("{base}/v2/up/team/app/blobs/{digest}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "pull {digest}");
    let body = r.bytes().await.unwrap().to_vec();
    assert_eq!(sha256_digest(&body), digest, "bytes of {digest}");
    body
}

async fn metric(base: &str, name: &str) -> f64 {
    common::metric_sample(&common::metrics_text(base).await, name)
}

async fn wait_for_evictions(base: &str, n: f64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while metric(base, r#"berth_mirror_evictions_total{mirror="up"}"#).await < n {
        if Instant::now() > deadline {
            let text = common::metrics_text(base).await;
            panic!("expected {n} evictions; metrics:\n{text}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn mirror_evicts_least_recently_used_blob_over_budget_and_refetches_it() {
    let up = Upstream::start();
    // `random_bytes` ignores the lowest seed bit: odd seeds give distinct blobs.
    let [a, b, c] = [1u64, 3, 5].map(|s| up.put_blob(random_bytes(s, BLOB)));
    let berth = berth_mirroring(&up, "up", &[("cache_budget", "1 MB")]);
    let base = berth.url();
    pull(&base, &a).await;
    pull(&base, &b).await;
    // Last-access times have a one-second resolution: make A clearly more recent than B.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    pull(&base, &a).await;
    pull(&base, &c).await; // 1.2 MB cached: over budget
    wait_for_evictions(&base, 1.0).await;
    assert_eq!(
        metric(&base, r#"berth_mirror_evictions_total{mirror="up"}"#).await,
        1.0
    );
    assert!(metric(&base, r#"berth_mirror_cache_bytes{mirror="up"}"#).await <= 1_000_000.0);

    // A was used more recently than B, so B went; A and C are still served from cache.
    pull(&base, &a).await;
    pull(&base, &c).await;
    assert_eq!(up.blob_gets("team/app", &a), 1);
    assert_eq!(up.blob_gets("team/app", &c), 1);
    pull(&base, &b).await;
    assert_eq!(
        up.blob_gets("team/app", &b),
        2,
        "an evicted blob is fetched again"
    );
}

#[tokio::test]
async fn mirror_never_evicts_a_blob_a_private_repository_links() {
    let up = Upstream::start();
    let shared = random_bytes(7, BLOB);
    let s = up.put_blob(shared.clone());
    let [x, y] = [9u64, 11].map(|seed| up.put_blob(random_bytes(seed, BLOB)));
    let berth = berth_mirroring(&up, "up", &[("cache_budget", "500 KB")]);
    let base = berth.url();
    let r = client()
        .post(format!("{base}/v2/team/private/blobs/uploads/?digest={s}"))
        .body(shared.to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    pull(&base, &s).await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    pull(&base, &x).await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    pull(&base, &y).await;
    wait_for_evictions(&base, 1.0).await;
    // The shared blob is the least recently used, but a private repository links it (and it does not count
    // against the cache budget): X went instead.
    pull(&base, &s).await;
    assert_eq!(up.blob_gets("team/app", &s), 1);
    let r = client()
        .get(format!("{base}/v2/team/private/blobs/{s}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().await.unwrap(), shared);
    pull(&base, &x).await;
    assert_eq!(up.blob_gets("team/app", &x), 2);
}

#[tokio::test]
async fn mirror_eviction_under_load_never_serves_a_bad_body() {
    let up = Upstream::start();
    let digests: Vec<String> = (0..6u64)
        .map(|s| up.put_blob(random_bytes(100 + s, 300_000)))
        .collect();
    let berth = berth_mirroring(&up, "up", &[("cache_budget", "700 KB")]);
    let base = berth.url();
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut tasks = Vec::new();
    for w in 0..8usize {
        let (base, digests) = (base.clone(), digests.clone());
        tasks.push(tokio::spawn(async move {
            let mut i = w;
            let mut pulls = 0;
            while Instant::now() < deadline {
                pull(&base, &digests[i % digests.len()]).await;
                i = (i * 7 + 3) % 1009;
                pulls += 1;
            }
            pulls
        }));
    }
    let mut total = 0;
    for t in tasks {
        total += t.await.expect("a client saw a bad body");
    }
    assert!(total > 8, "load ran ({total} pulls)");
    assert!(metric(&base, r#"berth_mirror_evictions_total{mirror="up"}"#).await >= 1.0);
}
