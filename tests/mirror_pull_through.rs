//! Pull-through mirrors (issue 3, design §3 and §5 invariants 4-5), black-box: berth runs as a real process with a
//! mirror of a fake upstream registry (tests/common/upstream.rs) that counts every request it receives.
//!
//! Covered here: routing by path prefix and by `?ns=`, byte-identical manifests and blobs, `OCI-Namespace`, HEAD on
//! a miss, upstream 404 mapping, read-only mirrors, tag TTL and HEAD revalidation, stale-if-error, immutable digests,
//! the upstream token and Basic auth flows, single-flight fan-in and streaming of blob misses. The fault-injection
//! tests are in mirror_faults.rs, the real clients (skopeo, containerd) in mirror_clients.rs.

mod common;
#[path = "common/upstream.rs"]
mod upstream;

use common::{Berth, sha256_digest};
use std::time::{Duration, Instant};
use upstream::{
    ACCEPT_MANIFESTS, Auth, Fault, OCI_MANIFEST, TestImage, Upstream, berth_mirroring, get,
    get_accept, get_hashed, head, http, mirror_toml, send,
};

/// berth with `--mirror up=<fake upstream>` (the command-line form).
fn berth_cli_mirror(up: &Upstream) -> Berth {
    Berth::start_with(&["--mirror", &format!("up={}", up.url())])
}

fn assert_namespace(o: &upstream::Outcome, what: &str) {
    assert_eq!(
        o.header("oci-namespace").as_deref(),
        Some("up"),
        "{what}: OCI-Namespace header; {}",
        o.describe()
    );
}

/// GETs a manifest through berth and asserts it is `img`'s, byte for byte.
async fn assert_manifest(url: &str, img: &TestImage, what: &str) -> upstream::Outcome {
    let o = get_accept(url, ACCEPT_MANIFESTS).await;
    assert_eq!(o.status, 200, "{what}: {}", o.describe());
    assert_eq!(
        o.bytes(),
        &img.manifest[..],
        "{what}: manifest bytes differ from the upstream's"
    );
    assert_eq!(
        o.header("docker-content-digest").as_deref(),
        Some(img.digest.as_str()),
        "{what}: Docker-Content-Digest"
    );
    assert_eq!(
        o.header("content-type").as_deref(),
        Some(OCI_MANIFEST),
        "{what}: Content-Type"
    );
    o
}

/// GETs a blob through berth and asserts its bytes.
async fn assert_blob(url: &str, data: &[u8], what: &str) -> upstream::Outcome {
    let o = get(url).await;
    assert_eq!(o.status, 200, "{what}: {}", o.describe());
    assert!(
        o.bytes() == data,
        "{what}: blob bytes differ ({} bytes, {} instead of {})",
        o.bytes().len(),
        sha256_digest(o.bytes()),
        sha256_digest(data)
    );
    o
}

// ---------------------------------------------------------------------------------------------------------------
// Routing and identity
// ---------------------------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mirror_pull_through_serves_identical_manifest_and_blobs() {
    let up = Upstream::start();
    let img = TestImage::new(1, &[300_000, 1_500_000]);
    up.put_image("team/app", "v1", &img);
    let b = berth_cli_mirror(&up);
    let base = b.url();

    // Prefix route: /v2/<mirror>/<upstream name>/...
    let o = assert_manifest(
        &format!("{base}/v2/up/team/app/manifests/v1"),
        &img,
        "prefix route, by tag",
    )
    .await;
    assert_namespace(&o, "manifest by tag, prefix route");
    assert!(
        up.manifest_gets("team/app", "v1") + up.manifest_gets("team/app", &img.digest) >= 1,
        "the upstream was never asked for the manifest: {:?}",
        up.seen()
    );
    let o = assert_manifest(
        &format!("{base}/v2/up/team/app/manifests/{}", img.digest),
        &img,
        "prefix route, by digest",
    )
    .await;
    assert_namespace(&o, "manifest by digest, prefix route");
    for (d, data) in img.blobs() {
        let o = assert_blob(
            &format!("{base}/v2/up/team/app/blobs/{d}"),
            &data,
            "blob, prefix route",
        )
        .await;
        assert_namespace(&o, "blob, prefix route");
        assert_eq!(
            o.header("docker-content-digest").as_deref(),
            Some(d.as_str()),
            "blob Docker-Content-Digest"
        );
    }

    // containerd's form: /v2/<upstream name>/...?ns=<mirror>
    let o = assert_manifest(
        &format!("{base}/v2/team/app/manifests/v1?ns=up"),
        &img,
        "ns route, by tag",
    )
    .await;
    assert_namespace(&o, "manifest by tag, ns route");
    let o = assert_manifest(
        &format!("{base}/v2/team/app/manifests/{}?ns=up", img.digest),
        &img,
        "ns route, by digest",
    )
    .await;
    assert_namespace(&o, "manifest by digest, ns route");
    for (d, data) in img.blobs() {
        let o = assert_blob(
            &format!("{base}/v2/team/app/blobs/{d}?ns=up"),
            &data,
            "blob, ns route",
        )
        .await;
        assert_namespace(&o, "blob, ns route");
    }

    // Blobs were fetched upstream once each, although asked for through two routes.
    for (d, _) in img.blobs() {
        assert_eq!(
            up.blob_gets("team/app", &d),
            1,
            "upstream GETs of {d} after two pulls (the second must come from the cache)"
        );
    }

    // The upstream name is not a private repository of berth: without ns= or prefix nothing is there.
    let o = get_accept(
        &format!("{base}/v2/team/app/manifests/v1"),
        ACCEPT_MANIFESTS,
    )
    .await;
    assert_eq!(
        o.status,
        404,
        "a mirrored image leaked into the private namespace: {}",
        o.describe()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mirror_head_on_blob_miss_asks_upstream() {
    let up = Upstream::start();
    let data = upstream::random_bytes(7, 123_457);
    let d = up.put_blob(data.clone());
    let b = berth_cli_mirror(&up);

    let o = head(&format!("{}/v2/up/team/app/blobs/{d}", b.url())).await;
    assert_eq!(o.status, 200, "HEAD blob miss: {}", o.describe());
    assert_eq!(
        o.header("content-length").as_deref(),
        Some("123457"),
        "HEAD blob miss: Content-Length"
    );
    assert!(
        up.count("HEAD", &format!("/v2/team/app/blobs/{d}"))
            + up.count("GET", &format!("/v2/team/app/blobs/{d}"))
            >= 1,
        "berth answered HEAD on a miss without asking the upstream"
    );

    let missing = sha256_digest(b"not in the upstream");
    let o = head(&format!("{}/v2/up/team/app/blobs/{missing}", b.url())).await;
    assert_eq!(
        o.status,
        404,
        "HEAD of a blob unknown upstream: {}",
        o.describe()
    );

    // A GET afterwards returns the bytes.
    assert_blob(
        &format!("{}/v2/up/team/app/blobs/{d}", b.url()),
        &data,
        "GET after HEAD",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mirror_upstream_404_maps_to_oci_unknown() {
    let up = Upstream::start();
    let b = berth_cli_mirror(&up);
    let o = get_accept(
        &format!("{}/v2/up/team/app/manifests/nope", b.url()),
        ACCEPT_MANIFESTS,
    )
    .await;
    assert_eq!(o.status, 404, "unknown tag: {}", o.describe());
    assert_eq!(
        o.error_code().as_deref(),
        Some("MANIFEST_UNKNOWN"),
        "unknown tag: {}",
        o.describe()
    );
    let d = sha256_digest(b"unknown manifest");
    let o = get_accept(
        &format!("{}/v2/team/app/manifests/{d}?ns=up", b.url()),
        ACCEPT_MANIFESTS,
    )
    .await;
    assert_eq!(o.status, 404, "unknown digest: {}", o.describe());
    assert_eq!(o.error_code().as_deref(), Some("MANIFEST_UNKNOWN"));
    let o = get(&format!("{}/v2/up/team/app/blobs/{d}", b.url())).await;
    assert_eq!(o.status, 404, "unknown blob: {}", o.describe());
    assert_eq!(
        o.error_code().as_deref(),
        Some("BLOB_UNKNOWN"),
        "unknown blob: {}",
        o.describe()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mirror_without_cache_and_upstream_down_gives_prompt_oci_error() {
    let up = Upstream::start();
    let img = TestImage::new(3, &[1000]);
    up.put_image("team/app", "v1", &img);
    let b = berth_mirroring(&up, "up", &[]);
    up.down();

    for url in [
        format!("{}/v2/up/team/app/manifests/v1", b.url()),
        format!("{}/v2/up/team/app/manifests/{}", b.url(), img.digest),
        format!("{}/v2/up/team/app/blobs/{}", b.url(), img.layers[0].0),
    ] {
        let o = send(
            http().get(&url).header("Accept", ACCEPT_MANIFESTS),
            Duration::from_secs(30),
        )
        .await;
        assert!(
            [502, 503, 504].contains(&o.status),
            "GET {url} with the upstream down and nothing cached: {}",
            o.describe()
        );
        assert!(
            o.error_code().is_some(),
            "GET {url}: not an OCI error body: {}",
            o.describe()
        );
        assert!(
            o.ended_at - o.started < Duration::from_secs(10),
            "GET {url}: took {:?} to fail against a refusing upstream",
            o.ended_at - o.started
        );
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Read-only
// ---------------------------------------------------------------------------------------------------------------

/// Asserts `o` is a refusal: 405 UNSUPPORTED or 403 DENIED.
fn assert_refused(o: &upstream::Outcome, what: &str) {
    let code = o.error_code();
    assert!(
        (o.status == 405 && code.as_deref() == Some("UNSUPPORTED"))
            || (o.status == 403 && code.as_deref() == Some("DENIED")),
        "{what}: expected 405 UNSUPPORTED or 403 DENIED, got {}",
        o.describe()
    );
    assert_eq!(
        o.header("oci-namespace").as_deref(),
        Some("up"),
        "{what}: a refusal names the mirror that refused"
    );
}

async fn assert_writes_refused(base: &str, repo: &str, query: &str, img: &TestImage) {
    let c = http();
    let t = Duration::from_secs(30);
    let sep = if query.is_empty() { "?" } else { "&" };
    let q = |s: &str| {
        if query.is_empty() {
            s.to_string()
        } else {
            format!("{s}?{query}")
        }
    };
    let layer = &img.layers[0];

    let o = send(c.post(q(&format!("{base}/v2/{repo}/blobs/uploads/"))), t).await;
    assert_refused(&o, &format!("POST upload to {repo} {query}"));
    let o = send(
        c.post(format!(
            "{}{sep}digest={}",
            q(&format!("{base}/v2/{repo}/blobs/uploads/")),
            layer.0
        ))
        .header("Content-Type", "application/octet-stream")
        .body(layer.1.clone()),
        t,
    )
    .await;
    assert_refused(&o, &format!("monolithic POST upload to {repo} {query}"));
    let o = send(
        c.post(format!(
            "{}{sep}mount={}&from=team/other",
            q(&format!("{base}/v2/{repo}/blobs/uploads/")),
            layer.0
        )),
        t,
    )
    .await;
    assert_refused(&o, &format!("cross-repository mount into {repo} {query}"));
    let o = send(
        c.put(q(&format!("{base}/v2/{repo}/manifests/v2")))
            .header("Content-Type", OCI_MANIFEST)
            .body(img.manifest.clone()),
        t,
    )
    .await;
    assert_refused(&o, &format!("PUT manifest to {repo} {query}"));
    let o = send(
        c.delete(q(&format!("{base}/v2/{repo}/manifests/{}", img.digest))),
        t,
    )
    .await;
    assert_refused(&o, &format!("DELETE manifest in {repo} {query}"));
    let o = send(c.delete(q(&format!("{base}/v2/{repo}/manifests/v1"))), t).await;
    assert_refused(&o, &format!("DELETE tag in {repo} {query}"));
    let o = send(
        c.delete(q(&format!("{base}/v2/{repo}/blobs/{}", layer.0))),
        t,
    )
    .await;
    assert_refused(&o, &format!("DELETE blob in {repo} {query}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mirror_refuses_push_and_delete() {
    let up = Upstream::start();
    let img = TestImage::new(4, &[2000]);
    up.put_image("team/app", "v1", &img);
    let b = berth_cli_mirror(&up);
    let base = b.url();
    // Cache it first, so deletes have something to (not) delete.
    assert_manifest(&format!("{base}/v2/up/team/app/manifests/v1"), &img, "warm").await;
    assert_blob(
        &format!("{base}/v2/up/team/app/blobs/{}", img.layers[0].0),
        &img.layers[0].1,
        "warm",
    )
    .await;

    assert_writes_refused(&base, "up/team/app", "", &img).await;

    // Nothing changed: the cached image is still served, and no write ever reached the upstream.
    assert_manifest(
        &format!("{base}/v2/up/team/app/manifests/v1"),
        &img,
        "after",
    )
    .await;
    assert_blob(
        &format!("{base}/v2/up/team/app/blobs/{}", img.layers[0].0),
        &img.layers[0].1,
        "after",
    )
    .await;
    let writes: Vec<_> = up
        .seen()
        .into_iter()
        .filter(|s| s.method != "GET" && s.method != "HEAD")
        .collect();
    assert!(writes.is_empty(), "writes reached the upstream: {writes:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mirror_refuses_push_and_delete_via_ns() {
    let up = Upstream::start();
    let img = TestImage::new(5, &[2000]);
    up.put_image("team/app", "v1", &img);
    let b = berth_cli_mirror(&up);
    let base = b.url();
    assert_manifest(
        &format!("{base}/v2/team/app/manifests/v1?ns=up"),
        &img,
        "warm",
    )
    .await;

    assert_writes_refused(&base, "team/app", "ns=up", &img).await;

    // The ns= writes did not create a private repository either.
    let o = get_accept(
        &format!("{base}/v2/team/app/manifests/v2"),
        ACCEPT_MANIFESTS,
    )
    .await;
    assert_eq!(
        o.status,
        404,
        "a refused push left a private tag: {}",
        o.describe()
    );
    assert_manifest(
        &format!("{base}/v2/team/app/manifests/v1?ns=up"),
        &img,
        "after",
    )
    .await;
}

// ---------------------------------------------------------------------------------------------------------------
// Tags: TTL, revalidation, stale-if-error; digests: immutable
// ---------------------------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mirror_tag_within_ttl_is_served_from_cache() {
    let up = Upstream::start();
    let img = TestImage::new(6, &[100]);
    up.put_image("team/app", "v1", &img);
    let b = berth_cli_mirror(&up); // default tag_ttl: 5 minutes
    let url = format!("{}/v2/up/team/app/manifests/v1", b.url());
    assert_manifest(&url, &img, "first pull").await;
    let manifest_requests = |up: &Upstream| {
        up.seen()
            .iter()
            .filter(|s| s.path.contains("/manifests/"))
            .count()
    };
    let after_first = manifest_requests(&up);
    for i in 0..5 {
        assert_manifest(&url, &img, &format!("pull {i} within the TTL")).await;
    }
    assert_eq!(
        manifest_requests(&up),
        after_first,
        "pulls within tag_ttl went to the upstream: {:?}",
        up.seen()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mirror_tag_moved_upstream_is_seen_after_ttl() {
    let up = Upstream::start();
    let a = TestImage::new(7, &[100]);
    let bimg = TestImage::new(8, &[200]);
    up.put_image("team/app", "v1", &a);
    let b = berth_mirroring(&up, "up", &[("tag_ttl", "2s")]);
    let url = format!("{}/v2/up/team/app/manifests/v1", b.url());
    let t0 = Instant::now();
    assert_manifest(&url, &a, "first pull").await;

    // The tag moves upstream.
    up.put_image("team/app", "v1", &bimg);
    let o = get_accept(&url, ACCEPT_MANIFESTS).await;
    if t0.elapsed() < Duration::from_millis(1500) {
        assert_eq!(
            o.header("docker-content-digest").as_deref(),
            Some(a.digest.as_str()),
            "within tag_ttl the cached tag must be served: {}",
            o.describe()
        );
    }

    tokio::time::sleep(Duration::from_millis(2500)).await;
    let o = assert_manifest(&url, &bimg, "after tag_ttl, the moved tag").await;
    assert_namespace(&o, "moved tag");
    // Also through ns=.
    assert_manifest(
        &format!("{}/v2/team/app/manifests/v1?ns=up", b.url()),
        &bimg,
        "moved tag via ns",
    )
    .await;
    // The old image stays available by digest.
    assert_manifest(
        &format!("{}/v2/up/team/app/manifests/{}", b.url(), a.digest),
        &a,
        "old digest",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mirror_tag_revalidation_uses_head_and_refetches_only_on_change() {
    let up = Upstream::start();
    let img = TestImage::new(9, &[100]);
    up.put_image("team/app", "v1", &img);
    let b = berth_mirroring(&up, "up", &[("tag_ttl", "1s")]);
    let url = format!("{}/v2/up/team/app/manifests/v1", b.url());
    assert_manifest(&url, &img, "first pull").await;
    let gets = |up: &Upstream| {
        up.seen()
            .iter()
            .filter(|s| s.method == "GET" && s.path.contains("/manifests/"))
            .count()
    };
    let gets_before = gets(&up);
    let heads_before = up.manifest_heads("team/app", "v1");

    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_manifest(&url, &img, "after tag_ttl, unchanged").await;
    assert!(
        up.manifest_heads("team/app", "v1") > heads_before,
        "an expired tag was not revalidated with HEAD: {:?}",
        up.seen()
    );
    assert_eq!(
        gets(&up),
        gets_before,
        "an unchanged tag was fetched again with GET: {:?}",
        up.seen()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mirror_serves_stale_tag_when_upstream_down() {
    let up = Upstream::start();
    let img = TestImage::new(10, &[50_000]);
    up.put_image("team/app", "v1", &img);
    let b = berth_mirroring(&up, "up", &[("tag_ttl", "1s")]);
    let url = format!("{}/v2/up/team/app/manifests/v1", b.url());
    assert_manifest(&url, &img, "first pull").await;
    let blob_url = format!("{}/v2/up/team/app/blobs/{}", b.url(), img.layers[0].0);
    assert_blob(&blob_url, &img.layers[0].1, "first pull").await;

    up.down();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let o = assert_manifest(&url, &img, "expired tag, upstream down").await;
    assert!(
        o.ended_at - o.started < Duration::from_secs(10),
        "stale tag took {:?}",
        o.ended_at - o.started
    );
    assert_manifest(
        &format!("{}/v2/team/app/manifests/v1?ns=up", b.url()),
        &img,
        "expired tag via ns, upstream down",
    )
    .await;
    assert_blob(&blob_url, &img.layers[0].1, "cached blob, upstream down").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mirror_serves_stale_tag_when_upstream_errors_or_hangs() {
    let up = Upstream::start();
    let img = TestImage::new(11, &[100]);
    up.put_image("team/app", "v1", &img);
    let b = berth_mirroring(&up, "up", &[("tag_ttl", "1s"), ("response_timeout", "2s")]);
    let url = format!("{}/v2/up/team/app/manifests/v1", b.url());
    assert_manifest(&url, &img, "first pull").await;

    for fault in [
        Fault::Status(500),
        Fault::Status(503),
        Fault::TooManyRequests { retry_after: 30 },
        Fault::StallBeforeHeaders(Duration::from_secs(60)),
    ] {
        up.set_fault(fault.clone());
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let o = assert_manifest(&url, &img, &format!("expired tag, upstream {fault:?}")).await;
        assert!(
            o.ended_at - o.started < Duration::from_secs(10),
            "stale tag with upstream {fault:?} took {:?}",
            o.ended_at - o.started
        );
        up.heal();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mirror_digest_pull_is_immutable_once_cached() {
    let up = Upstream::start();
    let img = TestImage::new(12, &[10_000]);
    up.put_image("team/app", "v1", &img);
    let b = berth_mirroring(&up, "up", &[("tag_ttl", "1s")]);
    let url = format!("{}/v2/up/team/app/manifests/{}", b.url(), img.digest);
    assert_manifest(&url, &img, "first pull by digest").await;

    // Gone upstream (deleted): a cached digest is still served, without asking.
    up.remove_manifest("team/app", &img.digest);
    up.remove_manifest("team/app", "v1");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let before = up.total_requests();
    assert_manifest(&url, &img, "by digest, deleted upstream").await;
    assert_manifest(
        &format!("{}/v2/team/app/manifests/{}?ns=up", b.url(), img.digest),
        &img,
        "by digest via ns, deleted upstream",
    )
    .await;
    let after: Vec<_> = up.seen().into_iter().skip(before).collect();
    assert!(
        after.iter().all(|s| !s.path.contains(&img.digest)),
        "a cached digest was revalidated upstream: {after:?}"
    );

    // Upstream stopped: still served.
    up.down();
    assert_manifest(&url, &img, "by digest, upstream down").await;
}

// ---------------------------------------------------------------------------------------------------------------
// Upstream authentication
// ---------------------------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mirror_token_auth_flow() {
    let up = Upstream::start_with_auth(Auth::Token {
        credentials: Some(("u".into(), "p".into())),
        expires_in: 300,
    });
    let img = TestImage::new(13, &[1000, 2000, 3000]);
    up.put_image("team/app", "v1", &img);
    let other = TestImage::new(14, &[4000]);
    up.put_image("team/other", "v1", &other);
    let b = berth_mirroring(&up, "up", &[("username", "u"), ("password", "p")]);
    let base = b.url();

    // Anonymous clients pull; berth authenticates upstream with its own credentials.
    assert_manifest(
        &format!("{base}/v2/up/team/app/manifests/v1"),
        &img,
        "by tag",
    )
    .await;
    assert_manifest(
        &format!("{base}/v2/up/team/app/manifests/{}", img.digest),
        &img,
        "by digest",
    )
    .await;
    for (d, data) in img.blobs() {
        assert_blob(&format!("{base}/v2/up/team/app/blobs/{d}"), &data, "blob").await;
    }
    assert_eq!(
        up.token_requests_for_repo("team/app"),
        1,
        "tokens for team/app (one per scope, then reused): {:?}",
        up.seen()
            .iter()
            .filter(|s| s.path == "/token")
            .collect::<Vec<_>>()
    );
    // Another repository is another scope: one more token.
    assert_manifest(
        &format!("{base}/v2/team/other/manifests/v1?ns=up"),
        &other,
        "other",
    )
    .await;
    assert_blob(
        &format!("{base}/v2/team/other/blobs/{}?ns=up", other.layers[0].0),
        &other.layers[0].1,
        "other blob",
    )
    .await;
    assert_eq!(
        up.token_requests_for_repo("team/other"),
        1,
        "tokens for team/other"
    );
    assert_eq!(
        up.token_requests_for_repo("team/app"),
        1,
        "tokens for team/app after pulling team/other"
    );
}

/// Docker's token flow: credentials go to the token realm only; the registry sees Bearer tokens (a registry that
/// delegates authentication never needs the password).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mirror_token_flow_sends_credentials_only_to_the_realm() {
    let up = Upstream::start_with_auth(Auth::Token {
        credentials: Some(("u".into(), "p".into())),
        expires_in: 300,
    });
    let img = TestImage::new(19, &[1000]);
    up.put_image("team/app", "v1", &img);
    let b = berth_mirroring(&up, "up", &[("username", "u"), ("password", "p")]);
    let base = b.url();
    assert_manifest(
        &format!("{base}/v2/up/team/app/manifests/v1"),
        &img,
        "by tag",
    )
    .await;
    for (d, data) in img.blobs() {
        assert_blob(&format!("{base}/v2/up/team/app/blobs/{d}"), &data, "blob").await;
    }
    let leaked: Vec<_> = up
        .seen()
        .into_iter()
        .filter(|s| s.path != "/token")
        .filter(|s| {
            s.authorization
                .as_deref()
                .is_some_and(|a| !a.starts_with("Bearer "))
        })
        .collect();
    assert!(
        leaked.is_empty(),
        "in the token flow berth sent its credentials to the registry itself, not only to the token realm: {leaked:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mirror_anonymous_token_auth_flow() {
    let up = Upstream::start_with_auth(Auth::Token {
        credentials: None,
        expires_in: 300,
    });
    let img = TestImage::new(15, &[1000, 2000]);
    up.put_image("library/alpine", "3", &img);
    let b = berth_cli_mirror(&up);
    let base = b.url();
    assert_manifest(
        &format!("{base}/v2/up/library/alpine/manifests/3"),
        &img,
        "by tag",
    )
    .await;
    for (d, data) in img.blobs() {
        assert_blob(
            &format!("{base}/v2/up/library/alpine/blobs/{d}"),
            &data,
            "blob",
        )
        .await;
    }
    assert_eq!(
        up.token_requests_for_repo("library/alpine"),
        1,
        "anonymous tokens"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mirror_basic_auth_upstream() {
    let up = Upstream::start_with_auth(Auth::Basic {
        username: "u".into(),
        password: "p".into(),
    });
    let img = TestImage::new(16, &[1000]);
    up.put_image("team/app", "v1", &img);
    let b = berth_mirroring(&up, "up", &[("username", "u"), ("password", "p")]);
    assert_manifest(
        &format!("{}/v2/up/team/app/manifests/v1", b.url()),
        &img,
        "by tag, Basic upstream",
    )
    .await;
    assert_blob(
        &format!("{}/v2/up/team/app/blobs/{}", b.url(), img.layers[0].0),
        &img.layers[0].1,
        "blob, Basic upstream",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mirror_config_file_declares_several_mirrors() {
    let up1 = Upstream::start();
    let up2 = Upstream::start();
    let a = TestImage::new(17, &[100]);
    let c = TestImage::new(18, &[100]);
    up1.put_image("team/app", "v1", &a);
    up2.put_image("team/app", "v1", &c);
    let toml = format!(
        "{}\n{}",
        mirror_toml("one", &up1.url(), &[]),
        mirror_toml("two.example:5000", &up2.url(), &[])
    );
    let b = upstream::berth_with_config(&toml);
    assert_manifest(
        &format!("{}/v2/one/team/app/manifests/v1", b.url()),
        &a,
        "mirror one",
    )
    .await;
    assert_manifest(
        &format!("{}/v2/two.example:5000/team/app/manifests/v1", b.url()),
        &c,
        "mirror two by prefix",
    )
    .await;
    assert_manifest(
        &format!("{}/v2/team/app/manifests/v1?ns=two.example:5000", b.url()),
        &c,
        "mirror two by ns",
    )
    .await;
}

// ---------------------------------------------------------------------------------------------------------------
// Blob misses: single flight, streaming, no head-of-line blocking
// ---------------------------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mirror_concurrent_cold_pulls_fetch_upstream_once() {
    const SIZE: usize = 64 * 1024 * 1024;
    let up = Upstream::start();
    let data = upstream::random_bytes(0xFA11_0001, SIZE);
    let digest = up.put_blob(data.clone());
    drop(data);
    // ~3 s upstream transfer, so all clients arrive while it is in flight.
    up.set_path_fault(
        &digest,
        Fault::Trickle {
            chunk: 512 * 1024,
            every: Duration::from_millis(25),
        },
    );
    let b = berth_mirroring(&up, "up", &[]);
    let url = format!("{}/v2/up/team/app/blobs/{digest}", b.url());

    let mut tasks = vec![];
    for _ in 0..16 {
        let url = url.clone();
        tasks.push(tokio::spawn(async move {
            get_hashed(&http(), &url, Duration::from_secs(240)).await
        }));
    }
    let mut results = vec![];
    for t in tasks {
        results.push(t.await.unwrap());
    }
    let upstream_path = format!("/v2/team/app/blobs/{digest}");
    let done = up.body_done_at(&upstream_path);
    for (i, r) in results.iter().enumerate() {
        assert_eq!(r.status, 200, "client {i}: {r:?}");
        assert!(r.error.is_none(), "client {i}: body error {r:?}");
        assert_eq!(r.len, SIZE, "client {i}: length");
        assert_eq!(r.digest, digest, "client {i}: digest");
    }
    assert_eq!(
        up.count("GET", &upstream_path),
        1,
        "upstream GETs for one blob pulled by 16 concurrent clients"
    );
    let done = done.expect("the upstream never finished sending the blob");
    let late: Vec<_> = results
        .iter()
        .enumerate()
        .filter(|(_, r)| r.first_byte_at.is_none_or(|f| f >= done))
        .map(|(i, r)| (i, r.first_byte_at.map(|f| f - r.started)))
        .collect();
    assert!(
        late.is_empty(),
        "clients whose first byte came only after the upstream had finished (not streamed): {late:?}"
    );

    // Warm: no more upstream traffic.
    let r = get_hashed(&http(), &url, Duration::from_secs(120)).await;
    assert_eq!(
        (r.status, r.len, r.digest.as_str()),
        (200, SIZE, digest.as_str())
    );
    assert_eq!(
        up.count("GET", &upstream_path),
        1,
        "upstream GETs after a warm pull"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mirror_concurrent_pulls_from_two_repositories_fetch_upstream_once() {
    const SIZE: usize = 8 * 1024 * 1024;
    let up = Upstream::start();
    let data = upstream::random_bytes(0xFA11_0002, SIZE);
    let digest = up.put_blob(data);
    up.set_path_fault(
        &digest,
        Fault::Trickle {
            chunk: 256 * 1024,
            every: Duration::from_millis(50),
        },
    );
    let b = berth_mirroring(&up, "up", &[]);
    let mut tasks = vec![];
    for i in 0..8 {
        let url = if i % 2 == 0 {
            format!("{}/v2/up/team/a/blobs/{digest}", b.url())
        } else {
            format!("{}/v2/team/b/blobs/{digest}?ns=up", b.url())
        };
        tasks.push(tokio::spawn(async move {
            get_hashed(&http(), &url, Duration::from_secs(120)).await
        }));
    }
    for (i, t) in tasks.into_iter().enumerate() {
        let r = t.await.unwrap();
        assert_eq!(
            (r.status, r.len, r.digest.as_str(), r.error.is_none()),
            (200, SIZE, digest.as_str(), true),
            "client {i}: {r:?}"
        );
    }
    let total = up.blob_gets("team/a", &digest) + up.blob_gets("team/b", &digest);
    assert_eq!(
        total,
        1,
        "upstream GETs for one digest asked for through two repositories at once: {:?}",
        up.seen()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mirror_blob_miss_streams_before_upstream_finishes() {
    const SIZE: usize = 4 * 1024 * 1024;
    let up = Upstream::start();
    let data = upstream::random_bytes(0xFA11_0003, SIZE);
    let digest = up.put_blob(data.clone());
    // 64 chunks, one every 50 ms: ~3.2 s.
    up.set_path_fault(
        &digest,
        Fault::Trickle {
            chunk: 64 * 1024,
            every: Duration::from_millis(50),
        },
    );
    let b = berth_mirroring(&up, "up", &[]);
    let o = get(&format!("{}/v2/up/team/app/blobs/{digest}", b.url())).await;
    assert_eq!(o.status, 200, "{}", o.describe());
    assert!(o.bytes() == &data[..], "streamed blob bytes differ");
    let done = up
        .body_done_at(&format!("/v2/team/app/blobs/{digest}"))
        .expect("upstream never finished");
    let first = o.first_byte_at.expect("no body byte");
    assert!(
        first < done,
        "the first byte reached the client {:?} after the upstream finished: the miss was not streamed",
        first - done
    );
    assert!(
        o.headers_at - o.started < Duration::from_secs(2),
        "headers took {:?} for a trickling 3 s upstream",
        o.headers_at - o.started
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mirror_slow_upstream_request_does_not_block_other_content() {
    let up = Upstream::start();
    let slow = up.put_blob(upstream::random_bytes(21, 100_000));
    let fast_data = upstream::random_bytes(22, 100_000);
    let fast = up.put_blob(fast_data.clone());
    up.set_path_fault(&slow, Fault::StallBeforeHeaders(Duration::from_secs(30)));
    let b = berth_mirroring(&up, "up", &[("response_timeout", "20s")]);
    let slow_url = format!("{}/v2/up/team/app/blobs/{slow}", b.url());
    let slow_task =
        tokio::spawn(async move { send(http().get(&slow_url), Duration::from_secs(60)).await });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let o = assert_blob(
        &format!("{}/v2/up/team/app/blobs/{fast}", b.url()),
        &fast_data,
        "other blob while one upstream request hangs",
    )
    .await;
    assert!(
        o.ended_at - o.started < Duration::from_secs(5),
        "an unrelated blob took {:?} while another upstream request hung",
        o.ended_at - o.started
    );
    slow_task.abort();
}

// ---------------------------------------------------------------------------------------------------------------
// HEAD, Range, names, aliases, catalog, isolation from private repositories
// ---------------------------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mirror_head_manifest_reports_length_and_digest() {
    let up = Upstream::start();
    let img = TestImage::new(30, &[100]);
    up.put_image("team/app", "v1", &img);
    let b = berth_cli_mirror(&up);
    let len = img.manifest.len().to_string();
    // Miss by tag, miss by digest (another repository), then hit.
    for (url, what) in [
        (
            format!("{}/v2/up/team/app/manifests/v1", b.url()),
            "HEAD by tag, miss",
        ),
        (
            format!("{}/v2/up/team/app/manifests/{}", b.url(), img.digest),
            "HEAD by digest",
        ),
        (
            format!("{}/v2/up/team/app/manifests/v1", b.url()),
            "HEAD by tag, second time",
        ),
    ] {
        let o = send(
            http().head(&url).header("Accept", ACCEPT_MANIFESTS),
            Duration::from_secs(30),
        )
        .await;
        assert_eq!(o.status, 200, "{what}: {}", o.describe());
        assert_eq!(
            o.header("content-length").as_deref(),
            Some(len.as_str()),
            "{what}: Content-Length"
        );
        assert_eq!(
            o.header("docker-content-digest").as_deref(),
            Some(img.digest.as_str()),
            "{what}: Docker-Content-Digest"
        );
        assert_eq!(
            o.header("content-type").as_deref(),
            Some(OCI_MANIFEST),
            "{what}: Content-Type"
        );
    }
    assert_manifest(
        &format!("{}/v2/up/team/app/manifests/v1", b.url()),
        &img,
        "GET after HEADs",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mirror_range_requests_get_the_right_bytes() {
    let up = Upstream::start();
    let data = upstream::random_bytes(31, 1_000_000);
    let d = up.put_blob(data.clone());
    let b = berth_cli_mirror(&up);
    let url = format!("{}/v2/up/team/app/blobs/{d}", b.url());

    // On a miss berth may answer the range or the whole blob, but never other bytes.
    let o = send(
        http().get(&url).header("Range", "bytes=1000-1999"),
        Duration::from_secs(30),
    )
    .await;
    match o.status {
        200 => assert!(o.bytes() == &data[..], "Range on a miss, 200: wrong body"),
        206 => assert!(
            o.bytes() == &data[1000..2000],
            "Range on a miss, 206: wrong slice"
        ),
        s => panic!("Range on a miss: status {s}: {}", o.describe()),
    }
    // Make sure it is cached, then ranges are honoured.
    assert_blob(&url, &data, "full GET").await;
    for (range, lo, hi) in [
        ("bytes=0-0", 0, 1),
        ("bytes=1000-1999", 1000, 2000),
        ("bytes=999990-", 999_990, 1_000_000),
        ("bytes=-10", 999_990, 1_000_000),
    ] {
        let o = send(
            http().get(&url).header("Range", range),
            Duration::from_secs(30),
        )
        .await;
        assert_eq!(
            o.status,
            206,
            "Range {range} on a cached blob: {}",
            o.describe()
        );
        assert!(o.bytes() == &data[lo..hi], "Range {range}: wrong bytes");
        assert_eq!(
            o.header("content-range"),
            Some(format!("bytes {lo}-{}/1000000", hi - 1)),
            "Range {range}: Content-Range"
        );
    }
    assert_eq!(up.blob_gets("team/app", &d), 1, "upstream GETs");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mirror_docker_hub_one_component_names_get_library() {
    let up = Upstream::start();
    let img = TestImage::new(32, &[100]);
    up.put_image("library/alpine", "3", &img);
    let b = Berth::start_with(&["--mirror", &format!("docker.io={}", up.url())]);
    assert_manifest(
        &format!("{}/v2/docker.io/alpine/manifests/3", b.url()),
        &img,
        "docker.io/alpine:3",
    )
    .await;
    assert_manifest(
        &format!("{}/v2/docker.io/library/alpine/manifests/3", b.url()),
        &img,
        "docker.io/library/alpine:3",
    )
    .await;
    assert_manifest(
        &format!("{}/v2/alpine/manifests/3?ns=docker.io", b.url()),
        &img,
        "alpine:3?ns=docker.io",
    )
    .await;
    assert_blob(
        &format!("{}/v2/docker.io/alpine/blobs/{}", b.url(), img.layers[0].0),
        &img.layers[0].1,
        "docker.io/alpine blob",
    )
    .await;
    assert!(
        up.seen().iter().all(|s| !s.path.starts_with("/v2/alpine/")),
        "berth asked the upstream for a one-component name: {:?}",
        up.seen()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mirror_alias_routes_to_the_mirror() {
    let up = Upstream::start();
    let img = TestImage::new(33, &[100]);
    up.put_image("team/app", "v1", &img);
    let toml = format!(
        "[[mirror]]\nname = \"registry.example.com\"\nupstream = \"{}\"\naliases = [\"ex\"]\n",
        up.url()
    );
    let b = upstream::berth_with_config(&toml);
    assert_manifest(
        &format!("{}/v2/ex/team/app/manifests/v1", b.url()),
        &img,
        "alias prefix",
    )
    .await;
    assert_manifest(
        &format!("{}/v2/registry.example.com/team/app/manifests/v1", b.url()),
        &img,
        "name prefix",
    )
    .await;
    assert_manifest(
        &format!(
            "{}/v2/team/app/manifests/v1?ns=registry.example.com",
            b.url()
        ),
        &img,
        "ns",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mirror_catalog_lists_cached_repositories_under_prefix() {
    let up = Upstream::start();
    let img = TestImage::new(34, &[100]);
    up.put_image("team/app", "v1", &img);
    let b = berth_cli_mirror(&up);
    assert_manifest(
        &format!("{}/v2/up/team/app/manifests/v1", b.url()),
        &img,
        "pull",
    )
    .await;
    let o = get(&format!("{}/v2/_catalog", b.url())).await;
    assert_eq!(o.status, 200, "{}", o.describe());
    let v: serde_json::Value = serde_json::from_slice(o.bytes()).unwrap();
    let repos: Vec<&str> = v["repositories"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_str().unwrap())
        .collect();
    assert!(
        repos.contains(&"up/team/app"),
        "_catalog after pulling up/team/app: {repos:?}"
    );
}

/// Pushes `img` to a private repository of `b` with plain HTTP.
async fn push_private(base: &str, repo: &str, tag: &str, img: &TestImage) {
    let c = http();
    for (d, data) in img.blobs() {
        let r = c
            .post(format!("{base}/v2/{repo}/blobs/uploads/?digest={d}"))
            .header("Content-Type", "application/octet-stream")
            .body(data)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201, "monolithic upload of {d} to {repo}");
    }
    let r = c
        .put(format!("{base}/v2/{repo}/manifests/{tag}"))
        .header("Content-Type", OCI_MANIFEST)
        .body(img.manifest.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201, "PUT manifest {repo}:{tag}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mirror_and_private_repository_of_the_same_name_do_not_mix() {
    let up = Upstream::start();
    let mirrored = TestImage::new(35, &[100]);
    up.put_image("team/app", "v1", &mirrored);
    let b = berth_cli_mirror(&up);
    let private = TestImage::new(36, &[100]);
    push_private(&b.url(), "team/app", "v1", &private).await;

    let o = assert_manifest(
        &format!("{}/v2/team/app/manifests/v1", b.url()),
        &private,
        "private team/app:v1",
    )
    .await;
    assert!(
        o.header("oci-namespace").is_none(),
        "a private repository answered with OCI-Namespace"
    );
    assert_manifest(
        &format!("{}/v2/team/app/manifests/v1?ns=up", b.url()),
        &mirrored,
        "team/app:v1?ns=up",
    )
    .await;
    assert_manifest(
        &format!("{}/v2/up/team/app/manifests/v1", b.url()),
        &mirrored,
        "up/team/app:v1",
    )
    .await;
    // Mirrored blobs are not reachable through the private repository, and vice versa.
    let o = get(&format!(
        "{}/v2/team/app/blobs/{}",
        b.url(),
        mirrored.layers[0].0
    ))
    .await;
    assert_eq!(
        o.status,
        404,
        "a mirrored blob leaked into the private repository: {}",
        o.describe()
    );
    let o = get(&format!(
        "{}/v2/up/team/app/blobs/{}",
        b.url(),
        private.layers[0].0
    ))
    .await;
    assert_eq!(
        o.status,
        404,
        "a private blob was served through the mirror: {}",
        o.describe()
    );
}

// ---------------------------------------------------------------------------------------------------------------
// More of the upstream client: redirects, token expiry, bad credentials
// ---------------------------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mirror_follows_blob_redirect_without_forwarding_authorization() {
    let up = Upstream::start_with_auth(Auth::Basic {
        username: "u".into(),
        password: "p".into(),
    });
    let storage = Upstream::start();
    let img = TestImage::new(37, &[200_000]);
    up.put_image("team/app", "v1", &img);
    storage.put_blob(img.layers[0].1.clone());
    up.redirect_blobs_to(Some(&storage.url()));
    let b = berth_mirroring(&up, "up", &[("username", "u"), ("password", "p")]);
    assert_blob(
        &format!("{}/v2/up/team/app/blobs/{}", b.url(), img.layers[0].0),
        &img.layers[0].1,
        "redirected blob",
    )
    .await;
    let at_storage = storage.seen();
    assert!(
        at_storage
            .iter()
            .any(|s| s.path == format!("/storage/{}", img.layers[0].0)),
        "the redirect was not followed: {at_storage:?}"
    );
    assert!(
        at_storage.iter().all(|s| s.authorization.is_none()),
        "the upstream credentials were forwarded to the redirect target: {at_storage:?}"
    );
}

/// A cached token the registry no longer accepts (revoked, key rotated, clock skew) is replaced: on a 401 berth
/// asks the token service again instead of failing the pull.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mirror_rejected_token_is_replaced() {
    let up = Upstream::start_with_auth(Auth::Token {
        credentials: None,
        expires_in: 300,
    });
    let img = TestImage::new(38, &[100, 200]);
    up.put_image("team/app", "v1", &img);
    let b = berth_cli_mirror(&up);
    assert_manifest(
        &format!("{}/v2/up/team/app/manifests/v1", b.url()),
        &img,
        "first",
    )
    .await;
    up.revoke_tokens();
    for (d, data) in img.blobs() {
        let o = get(&format!("{}/v2/up/team/app/blobs/{d}", b.url())).await;
        assert!(
            o.status == 200 && o.bytes() == &data[..],
            "blob after the upstream revoked berth's token: {}\nupstream saw: {:#?}",
            o.describe(),
            up.seen()
                .iter()
                .map(|s| (&s.method, &s.path, &s.authorization))
                .collect::<Vec<_>>()
        );
    }
    assert_eq!(
        up.token_requests_for_repo("team/app"),
        2,
        "tokens: the first, and one replacement"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mirror_bad_upstream_credentials_fail_promptly() {
    let up = Upstream::start_with_auth(Auth::Token {
        credentials: Some(("u".into(), "p".into())),
        expires_in: 300,
    });
    let img = TestImage::new(39, &[100]);
    up.put_image("team/app", "v1", &img);
    let b = berth_mirroring(&up, "up", &[("username", "u"), ("password", "wrong")]);
    let o = get_accept(
        &format!("{}/v2/up/team/app/manifests/v1", b.url()),
        ACCEPT_MANIFESTS,
    )
    .await;
    assert_ne!(o.status, 200, "{}", o.describe());
    assert!(
        o.error_code().is_some(),
        "not an OCI error: {}",
        o.describe()
    );
    assert!(
        o.ended_at - o.started < Duration::from_secs(10),
        "took {:?}",
        o.ended_at - o.started
    );
}

// ---------------------------------------------------------------------------------------------------------------
// Index children on demand; tags move only to verified manifests
// ---------------------------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mirror_index_pull_does_not_prefetch_children() {
    let up = Upstream::start();
    let amd = TestImage::new(40, &[1000]);
    let arm = TestImage::new(41, &[1000]);
    up.put_image("team/app", &amd.digest, &amd);
    up.put_image("team/app", &arm.digest, &arm);
    let entry = |img: &TestImage, arch: &str| {
        serde_json::json!({
            "mediaType": OCI_MANIFEST, "digest": img.digest, "size": img.manifest.len(),
            "platform": {"architecture": arch, "os": "linux"}
        })
    };
    let index = serde_json::to_vec_pretty(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": upstream::OCI_INDEX,
        "manifests": [entry(&amd, "amd64"), entry(&arm, "arm64")],
    }))
    .unwrap();
    let index_digest = up.put_manifest("team/app", "v1", upstream::OCI_INDEX, index.clone());
    let b = berth_cli_mirror(&up);
    let o = get_accept(
        &format!("{}/v2/up/team/app/manifests/v1", b.url()),
        ACCEPT_MANIFESTS,
    )
    .await;
    assert_eq!(o.status, 200, "{}", o.describe());
    assert_eq!(o.bytes(), &index[..], "index bytes");
    assert_eq!(
        o.header("docker-content-digest").as_deref(),
        Some(index_digest.as_str())
    );
    // Only amd64 is asked for.
    assert_manifest(
        &format!("{}/v2/up/team/app/manifests/{}", b.url(), amd.digest),
        &amd,
        "amd64 child",
    )
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let arm_requests: Vec<_> = up
        .seen()
        .into_iter()
        .filter(|s| {
            s.path.contains(&arm.digest)
                || arm.blobs().iter().any(|(d, _)| s.path.contains(d.as_str()))
        })
        .collect();
    assert!(
        arm_requests.is_empty(),
        "berth prefetched content nobody asked for: {arm_requests:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mirror_tag_is_not_moved_to_an_unverified_manifest() {
    let up = Upstream::start();
    let a = TestImage::new(42, &[100]);
    let bimg = TestImage::new(43, &[100]);
    up.put_image("team/app", "v1", &a);
    let b = berth_mirroring(&up, "up", &[("tag_ttl", "1s")]);
    let url = format!("{}/v2/up/team/app/manifests/v1", b.url());
    assert_manifest(&url, &a, "first pull").await;

    // The tag moves upstream, but every GET of the new manifest comes back corrupted.
    up.put_image("team/app", "v1", &bimg);
    up.set_path_fault("/v2/team/app/manifests/v1", Fault::WrongBytes);
    up.set_path_fault(&format!("/manifests/{}", bimg.digest), Fault::WrongBytes);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    for i in 0..2 {
        let o = get_accept(&url, ACCEPT_MANIFESTS).await;
        if o.status == 200 {
            let body = o.bytes();
            assert!(
                body == &a.manifest[..] || body == &bimg.manifest[..],
                "pull {i}: berth served a manifest that is neither the old nor the (verified) new one: {}",
                o.describe()
            );
            assert_eq!(
                o.header("docker-content-digest"),
                Some(sha256_digest(body)),
                "pull {i}: Docker-Content-Digest does not match the body"
            );
            assert!(
                body == &a.manifest[..],
                "pull {i}: the tag moved although the new manifest never arrived intact"
            );
        }
    }
    let o = get_accept(
        &format!("{}/v2/up/team/app/manifests/{}", b.url(), bimg.digest),
        ACCEPT_MANIFESTS,
    )
    .await;
    o.assert_failed("the corrupted new manifest by digest", &bimg.manifest);

    up.heal();
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_manifest(&url, &bimg, "after the upstream healed").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mirror_concurrent_cold_manifest_pulls_all_get_identical_bytes() {
    let up = Upstream::start();
    let img = TestImage::new(44, &[100]);
    up.put_image("team/app", "v1", &img);
    up.set_fault(Fault::Trickle {
        chunk: 64,
        every: Duration::from_millis(20),
    });
    let b = berth_cli_mirror(&up);
    let mut tasks = vec![];
    for i in 0..12 {
        let url = if i % 2 == 0 {
            format!("{}/v2/up/team/app/manifests/v1", b.url())
        } else {
            format!("{}/v2/team/app/manifests/v1?ns=up", b.url())
        };
        tasks.push(tokio::spawn(async move {
            get_accept(&url, ACCEPT_MANIFESTS).await
        }));
    }
    for (i, t) in tasks.into_iter().enumerate() {
        let o = t.await.unwrap();
        assert_eq!(o.status, 200, "client {i}: {}", o.describe());
        assert_eq!(o.bytes(), &img.manifest[..], "client {i}: bytes");
        assert_eq!(
            o.header("docker-content-digest").as_deref(),
            Some(img.digest.as_str()),
            "client {i}"
        );
    }
}
