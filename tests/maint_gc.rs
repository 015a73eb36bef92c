//! Online garbage collection (design invariant 3): `berth gc` from a shell while the server runs, dry runs, the
//! grace period renewed by HEAD, index children and referrers, orphan files, and the scheduled run.

mod common;
#[path = "common/maint.rs"]
mod maint;
#[path = "common/spec.rs"]
mod spec;

use std::time::{Duration, Instant};

use common::{Berth, client};
use serde_json::json;
use spec::{OCI_INDEX, OCI_MANIFEST, Reg, expect_error, expect_status};

fn reg(b: &Berth) -> Reg {
    Reg::new(b.url(), client())
}

/// Lets timestamps (whole seconds) age past a 1-second grace period.
fn age() {
    std::thread::sleep(Duration::from_millis(2100));
}

async fn pulls_whole(r: &Reg, repo: &str, img: &spec::Image) {
    let (_, body) = expect_status(
        r.get(&format!("/v2/{repo}/manifests/{}", img.digest)).await,
        200,
    )
    .await;
    assert_eq!(body, img.body);
    for (d, bytes) in [
        (&img.config_digest, &img.config),
        (&img.layer_digest, &img.layer),
    ] {
        let (_, got) = expect_status(r.get(&format!("/v2/{repo}/blobs/{d}")).await, 200).await;
        assert_eq!(&got, bytes, "{repo} blob {d}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn gc_from_the_cli_reclaims_untagged_images_while_the_server_serves() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = maint::config(tmp.path(), "");
    let b = Berth::start_with(&["--config", cfg.to_str().unwrap()]);
    let r = reg(&b);
    let old = r.push_image("app", "v1", "old").await;
    let new = r.push_image("app", "v1", "new").await; // moves v1: `old` is now untagged
    let other = r.push_image("other", "stable", "other").await;
    age();

    let before = maint::db_dump(&b.data_dir);
    let dry = maint::json(&["gc", "--dry-run"], &cfg, &b.data_dir, true);
    assert_eq!(dry["dry_run"], true);
    assert_eq!(
        (dry["manifests"].as_u64(), dry["blobs"].as_u64()),
        (Some(1), Some(3)),
        "{dry}"
    );
    assert_eq!(
        before,
        maint::db_dump(&b.data_dir),
        "a dry run changed the metadata"
    );
    assert!(common::blob_exists(&b.data_dir, &old.layer_digest));

    let s = maint::json(&["gc"], &cfg, &b.data_dir, true);
    assert_eq!(s["manifests"], 1, "{s}");
    assert_eq!(s["links"], 2, "{s}");
    assert_eq!(s["blobs"], 3, "{s}");
    assert_eq!(s["files_deleted"], 3, "{s}");
    let expected_bytes = (old.body.len() + old.config.len() + old.layer.len()) as u64;
    assert_eq!(s["bytes"].as_u64(), Some(expected_bytes), "{s}");

    // The server, which kept running, answers from the metadata the CLI changed.
    expect_error(
        r.get(&format!("/v2/app/manifests/{}", old.digest)).await,
        404,
        &["MANIFEST_UNKNOWN"],
    )
    .await;
    expect_error(
        r.get(&format!("/v2/app/blobs/{}", old.layer_digest)).await,
        404,
        &["BLOB_UNKNOWN"],
    )
    .await;
    expect_status(
        r.head(&format!("/v2/app/blobs/{}", old.config_digest))
            .await,
        404,
    )
    .await;
    assert!(
        !common::blob_exists(&b.data_dir, &old.layer_digest),
        "bytes stayed"
    );
    pulls_whole(&r, "app", &new).await;
    pulls_whole(&r, "other", &other).await;

    // A second run finds nothing more.
    let again = maint::json(&["gc"], &cfg, &b.data_dir, true);
    assert_eq!(
        (again["manifests"].as_u64(), again["blobs"].as_u64()),
        (Some(0), Some(0)),
        "{again}"
    );
    let scrub = maint::json(&["scrub", "--deep"], &cfg, &b.data_dir, true);
    assert_eq!(scrub["problems"], json!([]));
}

#[tokio::test(flavor = "multi_thread")]
async fn head_renews_the_grace_period_of_a_pushed_blob() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = maint::config(tmp.path(), "");
    let b = Berth::start_with(&["--config", cfg.to_str().unwrap()]);
    let r = reg(&b);
    let kept = r.push_blob("app", b"confirmed by a HEAD").await;
    let dropped = r.push_blob("app", b"never confirmed").await;
    std::thread::sleep(Duration::from_millis(3100));
    // A pushing client checks the blob exists and will reference it: it must survive a GC now.
    expect_status(r.head(&format!("/v2/app/blobs/{kept}")).await, 200).await;
    let s = maint::json(&["gc", "--grace", "2s"], &cfg, &b.data_dir, true);
    assert_eq!(s["links"], 1, "{s}");
    expect_status(r.head(&format!("/v2/app/blobs/{kept}")).await, 200).await;
    expect_status(r.head(&format!("/v2/app/blobs/{dropped}")).await, 404).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn index_children_and_referrers_live_and_die_with_the_tag() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = maint::config(tmp.path(), "");
    let b = Berth::start_with(&["--config", cfg.to_str().unwrap()]);
    let r = reg(&b);
    let amd = r.push_image("multi", "", "amd64").await;
    let arm = r.push_image("multi", "", "arm64").await;
    let index = serde_json::to_vec(&json!({
        "schemaVersion": 2, "mediaType": OCI_INDEX,
        "manifests": [amd.desc(), arm.desc()],
    }))
    .unwrap();
    let index_digest = r.push_manifest("multi", "1.0", OCI_INDEX, &index).await;
    let sig_config = b"{}".to_vec();
    let sig_config_digest = r.push_blob("multi", &sig_config).await;
    let sig = serde_json::to_vec(&json!({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST, "artifactType": "application/vnd.example.sig",
        "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": sig_config_digest, "size": 2},
        "layers": [],
        "subject": amd.desc(),
    }))
    .unwrap();
    let sig_digest = spec::sha256(&sig);
    r.push_manifest("multi", &sig_digest, OCI_MANIFEST, &sig)
        .await;
    age();

    let s = maint::json(&["gc"], &cfg, &b.data_dir, true);
    assert_eq!(
        (s["manifests"].as_u64(), s["blobs"].as_u64()),
        (Some(0), Some(0)),
        "tagged index: {s}"
    );
    pulls_whole(&r, "multi", &amd).await;
    pulls_whole(&r, "multi", &arm).await;
    expect_status(
        r.get(&format!("/v2/multi/manifests/{sig_digest}")).await,
        200,
    )
    .await;

    expect_status(r.delete("/v2/multi/manifests/1.0").await, 202).await;
    let s = maint::json(&["gc"], &cfg, &b.data_dir, true);
    // index, two images, the signature; blobs: those four manifests, two configs, two layers, the empty config.
    assert_eq!(s["manifests"], 4, "{s}");
    assert_eq!(s["blobs"], 9, "{s}");
    for d in [&index_digest, &amd.digest, &arm.digest, &sig_digest] {
        expect_error(
            r.get(&format!("/v2/multi/manifests/{d}")).await,
            404,
            &["MANIFEST_UNKNOWN"],
        )
        .await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn orphan_files_are_removed_and_files_of_rows_are_not() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = maint::config(tmp.path(), "");
    let b = Berth::start_with(&["--config", cfg.to_str().unwrap()]);
    let r = reg(&b);
    let img = r.push_image("app", "v1", "kept").await;
    // Bytes a crash left between publishing and recording them: no row points at them.
    let orphan = b"left by a crash".to_vec();
    let orphan_digest = spec::sha256(&orphan);
    common::overwrite_blob(&b.data_dir, &orphan_digest, &orphan);
    if common::s3_endpoint().is_none() {
        let path = maint::blob_file(&b.data_dir, &orphan_digest);
        let f = std::fs::File::options().write(true).open(&path).unwrap();
        f.set_modified(std::time::SystemTime::now() - Duration::from_secs(3600))
            .unwrap();
    }
    age();
    let s = maint::json(&["gc"], &cfg, &b.data_dir, true);
    assert_eq!(s["orphan_files"], 1, "{s}");
    assert!(!common::blob_exists(&b.data_dir, &orphan_digest));
    pulls_whole(&r, "app", &img).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_server_schedules_gc_and_records_it() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = maint::config(tmp.path(), "");
    // Scheduling on: every second, no jitter.
    let toml = std::fs::read_to_string(&cfg).unwrap().replace(
        "[gc]\ninterval = \"0s\"",
        "[gc]\ninterval = \"1s\"\njitter = \"0s\"",
    );
    std::fs::write(&cfg, toml).unwrap();
    let b = Berth::start_with(&["--config", cfg.to_str().unwrap()]);
    let r = reg(&b);
    let old = r.push_image("app", "v1", "old").await;
    r.push_image("app", "v1", "new").await;
    // Poll the metrics, not the manifest: a pull would count as use and keep it.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let metrics = r.get("/metrics").await.text().await.unwrap();
        if metrics.contains("berth_gc_deleted_total{object=\"manifest\"} 1") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the scheduled GC never removed the untagged manifest"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    expect_error(
        r.get(&format!("/v2/app/manifests/{}", old.digest)).await,
        404,
        &["MANIFEST_UNKNOWN"],
    )
    .await;
    let status = maint::json(&["status"], &cfg, &b.data_dir, true);
    let runs = status["runs"].as_array().unwrap();
    assert!(
        runs.iter()
            .any(|r| r["kind"] == "gc" && r["outcome"] == "ok"),
        "{status}"
    );
    let metrics = r.get("/metrics").await.text().await.unwrap();
    assert!(metrics.contains("berth_maintenance_last_success_timestamp_seconds{job=\"gc\"}"));
}
