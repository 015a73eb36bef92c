//! Retention policies: newest N by push time, kept names and patterns, recently pulled tags, dry runs that change
//! nothing, repositories no policy matches left alone; garbage collection then reclaims what retention untagged.

mod common;
#[path = "common/maint.rs"]
mod maint;
#[path = "common/spec.rs"]
mod spec;

use std::time::Duration;

use common::{Berth, client};
use spec::{Reg, expect_status};

async fn tags(r: &Reg, repo: &str) -> Vec<String> {
    let (_, body) = expect_status(r.get(&format!("/v2/{repo}/tags/list")).await, 200).await;
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    v["tags"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn retention_keeps_newest_patterns_and_pulled_tags_and_deletes_the_rest() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = maint::config(
        tmp.path(),
        "[[retention.policy]]\nrepositories = [\"team/*\"]\nkeep_newest = 3\n\
         keep_tags = [\"latest\", \"semver\"]\nkeep_pulled_within = \"1h\"\n",
    );
    let b = Berth::start_with(&["--config", cfg.to_str().unwrap()]);
    let r = Reg::new(b.url(), client());
    // Push times have one-second resolution: space the pushes so "newest" is unambiguous.
    let mut images = Vec::new();
    for tag in ["latest", "1.0.0", "a", "b", "pulled", "c", "d", "e"] {
        images.push((tag, r.push_image("team/app", tag, tag).await));
        std::thread::sleep(Duration::from_millis(1050));
    }
    r.push_image("other/app", "old", "other").await;
    expect_status(r.get("/v2/team/app/manifests/pulled").await, 200).await;
    // Pull times reach the database within the server's 10-second flush.
    std::thread::sleep(Duration::from_secs(11));

    let before = maint::db_dump(&b.data_dir);
    let dry = maint::json(&["retention", "--dry-run"], &cfg, &b.data_dir, true);
    assert_eq!(
        before,
        maint::db_dump(&b.data_dir),
        "a dry run changed the metadata"
    );
    assert_eq!(dry["tags_deleted"], 2, "{dry}");
    let reason = |tag: &str| {
        dry["decisions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d["tag"] == tag)
            .map(|d| {
                (
                    d["action"].as_str().unwrap().to_owned(),
                    d["reason"].as_str().unwrap().to_owned(),
                )
            })
            .unwrap()
    };
    assert_eq!(
        reason("a"),
        ("would delete".into(), "no keep rule matched".into())
    );
    assert_eq!(reason("e").1, "newest 3");
    assert_eq!(reason("1.0.0").1, "matches \"semver\"");
    assert_eq!(reason("pulled").1, "pulled recently");

    let out = maint::run(&["retention"], &cfg, &b.data_dir);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        table.contains("no keep rule matched") && table.contains("deleted 2 tags"),
        "{table}"
    );
    assert_eq!(
        tags(&r, "team/app").await,
        ["1.0.0", "c", "d", "e", "latest", "pulled"]
    );
    assert_eq!(tags(&r, "other/app").await, ["old"]);

    // What retention untagged, garbage collection reclaims; everything kept still pulls.
    std::thread::sleep(Duration::from_millis(2100));
    let gc = maint::json(&["gc"], &cfg, &b.data_dir, true);
    assert_eq!(gc["manifests"], 2, "{gc}");
    for (tag, img) in &images {
        let status = r
            .get(&format!("/v2/team/app/manifests/{}", img.digest))
            .await
            .status();
        let kept = !matches!(*tag, "a" | "b");
        assert_eq!(status == 200, kept, "{tag}: {status}");
    }
    let status = maint::json(&["status"], &cfg, &b.data_dir, true);
    assert!(
        status["runs"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["kind"] == "retention"),
        "{status}"
    );
}

#[test]
fn a_policy_without_rules_is_refused_at_start() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = maint::config(tmp.path(), "[[retention.policy]]\nrepositories = [\"*\"]\n");
    let out = maint::run(&["retention"], &cfg, &tmp.path().join("data"));
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("has no rule"));
}
