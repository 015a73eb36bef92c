//! The UI with 10,000 tags in one repository (100 images, 100 tags each) and 200 further repositories: every page
//! is correct, and the time each takes is printed (`cargo test --test ui_scale -- --nocapture`). Timings are
//! reported, never asserted: this machine is shared.

#[path = "common/auth.rs"]
mod auth;
mod common;
#[path = "common/spec.rs"]
mod spec;
#[path = "common/ui.rs"]
mod ui;

use std::time::{Duration, Instant};

use futures_util::{StreamExt, stream};

use ui::{Session, admin_reg};

const IMAGES: usize = 100;
const TAGS_PER_IMAGE: usize = 100;
const REPOS: usize = 200;
/// Concurrent pushes during setup.
const PUSHERS: usize = 8;

async fn timed(sess: &Session, what: &str, path: &str) -> String {
    let mut times = Vec::new();
    let mut body = String::new();
    for _ in 0..5 {
        let start = Instant::now();
        let (status, html) = sess.get(path).await;
        times.push(start.elapsed());
        assert_eq!(status, 200, "{path}");
        body = html;
    }
    times.sort();
    eprintln!(
        "UI TIMING {what:<40} median {:>7.1} ms  (min {:.1} ms, max {:.1} ms, {} KiB)",
        ms(times[2]),
        ms(times[0]),
        ms(times[4]),
        body.len() / 1024
    );
    body
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

#[tokio::test(flavor = "multi_thread")]
async fn ui_pages_stay_correct_with_ten_thousand_tags() {
    let b = common::Berth::start_secure(&[]);
    let r = admin_reg(&b);
    let start = Instant::now();
    // Content is shared where the pages do not care, and pushed a few at a time: on the object-store shape each
    // blob upload is several S3 round trips, and 500 of them one by one would take minutes. The 100 images differ
    // by their config; the 200 other repositories hold one image, mounted from the first.
    let layer = b"one layer shared by every image".to_vec();
    r.push_blob("big/app", &layer).await;
    stream::iter(0..IMAGES)
        .for_each_concurrent(PUSHERS, |i| {
            let (r, layer) = (&r, &layer);
            async move {
                let config = format!(r#"{{"architecture":"amd64","os":"linux","seed":"img-{i}"}}"#);
                r.push_blob("big/app", config.as_bytes()).await;
                let body = spec::oci_manifest(
                    &spec::desc(spec::OCI_CONFIG, config.as_bytes()),
                    &[spec::desc(spec::OCI_LAYER, layer)],
                );
                let tags: Vec<String> = (0..TAGS_PER_IMAGE)
                    .map(|j| format!("t{:05}", i * TAGS_PER_IMAGE + j))
                    .collect();
                for chunk in tags.chunks(50) {
                    let q: Vec<String> = chunk.iter().map(|t| format!("tag={t}")).collect();
                    let resp = r
                        .put_manifest(
                            "big/app",
                            &format!("{}?{}", spec::sha256(&body), q.join("&")),
                            spec::OCI_MANIFEST,
                            &body,
                        )
                        .await;
                    assert_eq!(resp.status(), 201);
                }
            }
        })
        .await;
    let svc = r.push_image("svc/app-000", "latest", "svc").await;
    stream::iter(1..REPOS)
        .for_each_concurrent(PUSHERS, |i| {
            let (r, svc) = (&r, &svc);
            async move {
                let repo = format!("svc/app-{i:03}");
                for d in [&svc.config_digest, &svc.layer_digest] {
                    let resp = r
                        .post_upload(&repo, &format!("?mount={d}&from=svc/app-000"))
                        .await;
                    assert_eq!(resp.status(), 201, "mount {d} into {repo}");
                }
                r.push_manifest(&repo, "latest", spec::OCI_MANIFEST, &svc.body)
                    .await;
            }
        })
        .await;
    eprintln!(
        "UI TIMING setup: {} tags, {} repositories in {:.1} s",
        IMAGES * TAGS_PER_IMAGE,
        REPOS + 1,
        start.elapsed().as_secs_f64()
    );
    let sess = Session::login(&b, "admin", common::ADMIN_PASSWORD).await;
    let rows = |html: &str| html.matches("<tr data-tag=").count();

    let first = timed(&sess, "tags page 1 of 100", "/ui/tags?repo=big/app").await;
    assert_eq!(rows(&first), 100);
    assert!(first.contains("10000 tags"));
    let middle = timed(
        &sess,
        "tags page 51 of 100",
        "/ui/tags?repo=big/app&last=t04999",
    )
    .await;
    assert_eq!(rows(&middle), 100);
    assert!(middle.contains(">t05000<") && middle.contains(">t05099<"));
    let last = timed(&sess, "tags last page", "/ui/tags?repo=big/app&last=t09899").await;
    assert_eq!(rows(&last), 100);
    assert!(!last.contains("Next page"));
    let filtered = timed(
        &sess,
        "tag search q=t0123 (10 hits)",
        "/ui/tags?repo=big/app&q=t0123",
    )
    .await;
    assert_eq!(rows(&filtered), 10);
    let none = timed(
        &sess,
        "tag search, no hit",
        "/ui/tags?repo=big/app&q=nothing",
    )
    .await;
    assert_eq!(rows(&none), 0);
    let repos = timed(&sess, "repository list page 1", "/ui").await;
    assert_eq!(repos.matches("class=\"repo\"").count(), 100);
    let search = timed(
        &sess,
        "repository search q=app-15 (10 hits)",
        "/ui?q=app-15",
    )
    .await;
    assert_eq!(search.matches("class=\"repo\"").count(), 10);
    let m = timed(
        &sess,
        "manifest page",
        "/ui/manifest?repo=big/app&ref=t05000",
    )
    .await;
    assert!(m.contains("t05000"));
    // For comparison, the registry API's tag list of the same repository.
    let mut times = Vec::new();
    for _ in 0..5 {
        let start = Instant::now();
        let resp = r.get("/v2/big/app/tags/list").await;
        assert_eq!(resp.status(), 200);
        resp.bytes().await.unwrap();
        times.push(start.elapsed());
    }
    times.sort();
    eprintln!(
        "UI TIMING {:<40} median {:>7.1} ms",
        "(API /v2/big/app/tags/list, all 10000)",
        ms(times[2])
    );
}
