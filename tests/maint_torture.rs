//! Maintenance torture (design invariant 3): 8 pushers of multi-arch indexes sharing layers across repositories and
//! re-tagging the same tags, 2 deleters, the server's retention and garbage collection every second with a 1-second
//! grace period, and `berth gc` from a shell beside them — all at once. Afterwards a deep scrub finds nothing and
//! every tag pulls whole.
//!
//! `BERTH_TORTURE_SECS` sets the duration (default 20 s, what CI runs); see docs/maintenance.md for the long run.

mod common;
#[path = "common/image.rs"]
mod image;
#[path = "common/maint.rs"]
mod maint;
#[path = "common/workload.rs"]
mod workload;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::Berth;
use workload::Counters;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pushes_deletes_retention_and_gc_at_once_leave_a_clean_registry() {
    let secs: u64 = std::env::var("BERTH_TORTURE_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20);
    let tmp = tempfile::tempdir().unwrap();
    let cfg = maint::scheduled_config(tmp.path(), "torture/*", "delete_untagged_after = \"1s\"\n");
    let b = Berth::start_with(&["--config", cfg.to_str().unwrap()]);
    let base = b.url();
    let repos: Vec<String> = (0..4).map(|i| format!("torture/r{i}")).collect();

    let stop = Arc::new(AtomicBool::new(false));
    let c = Arc::new(Counters::default());
    let mut tasks = Vec::new();
    for i in 0..8u64 {
        tasks.push(tokio::spawn(workload::pusher(
            base.clone(),
            repos[i as usize % repos.len()].clone(),
            1000 + i,
            stop.clone(),
            c.clone(),
        )));
    }
    for i in 0..2u64 {
        tasks.push(tokio::spawn(workload::deleter(
            base.clone(),
            repos.clone(),
            2000 + i,
            stop.clone(),
            c.clone(),
        )));
    }
    // A second process collecting beside the server's scheduler.
    let (cfg2, data2, stop2) = (cfg.clone(), b.data_dir.clone(), stop.clone());
    let cli_gc = std::thread::spawn(move || {
        let mut runs = 0;
        while !stop2.load(Ordering::Relaxed) {
            let out = maint::run(&["gc", "--grace", "1s", "--json"], &cfg2, &data2);
            assert!(
                out.status.success(),
                "berth gc: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            runs += 1;
        }
        runs
    });

    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs(secs)).await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
    let cli_runs = cli_gc.join().unwrap();
    eprintln!(
        "torture {:?}: {}; CLI gc runs {cli_runs}",
        started.elapsed(),
        c.summary()
    );
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

    // One more collection with nothing running, then the registry must be whole.
    std::thread::sleep(Duration::from_millis(2100));
    maint::json(&["gc", "--grace", "1s"], &cfg, &b.data_dir, true);
    let scrub = maint::json(&["scrub", "--deep"], &cfg, &b.data_dir, true);
    assert_eq!(scrub["problems"], serde_json::json!([]), "{scrub}");
    let (tags, problems) = workload::verify_all_tags(&base, &repos).await;
    assert!(problems.is_empty(), "{problems:#?}");
    let status = maint::json(&["status"], &cfg, &b.data_dir, true);
    eprintln!(
        "verified {tags} tags; deep scrub checked {} blobs; status: {}",
        scrub["blobs"], status["storage"]
    );
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
