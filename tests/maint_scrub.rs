//! The integrity scrubber (design invariant 8): damage behind berth's back is found with the right kind, private
//! content is reported and never deleted, a damaged mirror entry is dropped and fetched again, and the exit status
//! and metrics say so.

mod common;
#[path = "common/maint.rs"]
mod maint;
#[path = "common/spec.rs"]
mod spec;
#[path = "common/upstream.rs"]
mod upstream;

use std::time::{Duration, Instant};

use common::{Berth, client, sha256_digest};
use spec::{Reg, expect_status};
use upstream::{Upstream, berth_mirroring, random_bytes};

fn kinds(report: &serde_json::Value) -> Vec<(String, String, String)> {
    let mut v: Vec<_> = report["problems"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["digest"].as_str().unwrap().to_owned(),
                p["kind"].as_str().unwrap().to_owned(),
                p["action"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    v.sort();
    v
}

#[tokio::test(flavor = "multi_thread")]
async fn scrub_reports_private_damage_and_repairs_the_mirror_cache() {
    let up = Upstream::start();
    let cached = up.put_blob(random_bytes(21, 300_000));
    let b = berth_mirroring(&up, "up", &[]);
    let r = Reg::new(b.url(), client());
    let mirror_blob = format!("/v2/up/team/app/blobs/{cached}");
    let (_, body) = expect_status(r.get(&mirror_blob).await, 200).await;
    assert_eq!(sha256_digest(&body), cached);
    let missing = r.push_image("team/a", "v1", "missing").await;
    let short = r.push_image("team/b", "v1", "short").await;
    let flipped = r.push_image("team/c", "v1", "flipped").await;

    let clean = maint::json(&["scrub", "--deep"], &b.config, &b.data_dir, true);
    assert_eq!(kinds(&clean), vec![]);
    assert_eq!(clean["blobs"], 10, "{clean}"); // 3 × (manifest, config, layer) + the cached blob

    // Damage behind berth's back, on whichever blob backend the suite runs.
    let dir = &b.data_dir;
    common::remove_blob(dir, &missing.layer_digest);
    let bytes = common::read_blob(dir, &short.layer_digest).unwrap();
    common::overwrite_blob(dir, &short.layer_digest, &bytes[..3]);
    let mut bytes = common::read_blob(dir, &flipped.layer_digest).unwrap();
    bytes[0] ^= 0xff;
    common::overwrite_blob(dir, &flipped.layer_digest, &bytes);
    let mut bytes = common::read_blob(dir, &cached).unwrap();
    bytes.resize(1000, 0);
    common::overwrite_blob(dir, &cached, &bytes);

    // Fast: presence and size.
    let fast = maint::json(&["scrub"], &b.config, &b.data_dir, false);
    assert_eq!(kinds(&fast), {
        let mut want = vec![
            (
                missing.layer_digest.clone(),
                "missing_bytes".into(),
                "reported".into(),
            ),
            (
                short.layer_digest.clone(),
                "size_mismatch".into(),
                "reported".into(),
            ),
            (
                cached.clone(),
                "size_mismatch".into(),
                "dropped from cache".into(),
            ),
        ];
        want.sort();
        want
    });
    assert_eq!(fast["repaired"], 1);

    // The mirror entry is fetched again, whole; private content was not deleted (its rows are still there): a
    // HEAD of the missing blob is the damaged-storage 500, not a 404, and the same-size corruption, which only a
    // re-hash finds, still answers 200.
    let (_, body) = expect_status(r.get(&mirror_blob).await, 200).await;
    assert_eq!(sha256_digest(&body), cached);
    assert_eq!(up.blob_gets("team/app", &cached), 2);
    for (repo, d, status) in [
        ("team/a", &missing.layer_digest, 500),
        ("team/c", &flipped.layer_digest, 200),
    ] {
        expect_status(r.head(&format!("/v2/{repo}/blobs/{d}")).await, status).await;
    }

    // Deep: re-hashes, so the same-size corruption shows too; private problems stay reported.
    let deep = maint::json(&["scrub", "--deep"], &b.config, &b.data_dir, false);
    let mut want = vec![
        (
            missing.layer_digest.clone(),
            "missing_bytes".to_string(),
            "reported".to_string(),
        ),
        (
            short.layer_digest.clone(),
            "size_mismatch".into(),
            "reported".into(),
        ),
        (
            flipped.layer_digest.clone(),
            "digest_mismatch".into(),
            "reported".into(),
        ),
    ];
    want.sort();
    assert_eq!(kinds(&deep), want);

    // Human output and exit status for cron.
    let out = maint::run(&["scrub"], &b.config, &b.data_dir);
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("missing_bytes") && text.contains("2 problems"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn scheduled_scrub_exports_problems_as_metrics() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = maint::config(tmp.path(), "");
    let toml = std::fs::read_to_string(&cfg).unwrap().replace(
        "[scrub]\ninterval = \"0s\"",
        "[scrub]\ninterval = \"1s\"\njitter = \"0s\"",
    );
    std::fs::write(&cfg, toml).unwrap();
    let b = Berth::start_with(&["--config", cfg.to_str().unwrap()]);
    let r = Reg::new(b.url(), client());
    let img = r.push_image("app", "v1", "x").await;
    common::remove_blob(&b.data_dir, &img.layer_digest);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let m = r.get("/metrics").await.text().await.unwrap();
        if m.contains("berth_scrub_problems{kind=\"missing_bytes\"} 1") {
            assert!(
                m.contains("berth_maintenance_runs_total{job=\"scrub\",outcome=\"problems\"}"),
                "{m}"
            );
            break;
        }
        assert!(Instant::now() < deadline, "no scrub problem metric:\n{m}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
