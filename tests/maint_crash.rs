//! Crash safety of maintenance (design invariants 3 and 7): the server is killed with SIGKILL at random points
//! while pushes, deletes, scheduled retention and garbage collection run, and a `berth gc` started from a shell is
//! killed too; after every restart a deep scrub is clean and every tag pulls whole.
//!
//! `BERTH_CRASH_ROUNDS` sets the number of rounds (default 6, what CI runs; docs/maintenance.md has the long run).

mod common;
#[path = "common/image.rs"]
mod image;
#[path = "common/maint.rs"]
mod maint;
#[path = "common/workload.rs"]
mod workload;

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::Berth;
use image::XorShift;
use workload::Counters;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill9_during_gc_retention_and_pushes_leaves_a_clean_registry() {
    let rounds: u64 = std::env::var("BERTH_CRASH_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(6);
    let tmp = tempfile::tempdir().unwrap();
    let cfg = maint::scheduled_config(tmp.path(), "crash/*", "");
    let mut b = Berth::start_with(&["--config", cfg.to_str().unwrap()]);
    let base = b.url();
    let repos: Vec<String> = (0..3).map(|i| format!("crash/r{i}")).collect();
    let mut rng = XorShift(0x5eed_c0de);
    let c = Arc::new(Counters::default());
    for round in 0..rounds {
        let stop = Arc::new(AtomicBool::new(false));
        let mut tasks = Vec::new();
        for i in 0..4u64 {
            tasks.push(tokio::spawn(workload::pusher(
                base.clone(),
                repos[i as usize % repos.len()].clone(),
                round * 100 + i,
                stop.clone(),
                c.clone(),
            )));
        }
        tasks.push(tokio::spawn(workload::deleter(
            base.clone(),
            repos.clone(),
            round * 100 + 50,
            stop.clone(),
            c.clone(),
        )));
        let mut cli = Command::new(env!("CARGO_BIN_EXE_berth"));
        common::blob_env(&mut cli, &b.data_dir);
        let mut cli = cli
            .args(["gc", "--grace", "1s", "--json", "--config"])
            .arg(&cfg)
            .arg("--data-dir")
            .arg(&b.data_dir)
            .envs(common::metadata_env(&b.data_dir))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        tokio::time::sleep(Duration::from_millis(rng.range(1200, 3500))).await;
        let _ = cli.kill();
        let _ = cli.wait();
        tokio::time::sleep(Duration::from_millis(rng.range(0, 400))).await;
        b.restart_after_kill9();
        stop.store(true, Ordering::Relaxed);
        for t in tasks {
            t.await.unwrap();
        }
        let scrub = maint::json(&["scrub", "--deep"], &cfg, &b.data_dir, true);
        assert_eq!(
            scrub["problems"],
            serde_json::json!([]),
            "round {round}: {scrub}"
        );
        let (_, problems) = workload::verify_all_tags(&base, &repos).await;
        assert!(problems.is_empty(), "round {round}: {problems:#?}");
    }
    eprintln!("{rounds} crash rounds: {}", c.summary());
    assert_eq!(c.failures.load(Ordering::Relaxed), 0, "{}", c.summary());
    assert!(c.pushes.load(Ordering::Relaxed) > 0);
    // Everything a crash left behind (orphan files, pending byte deletions) is reclaimed by the next collection.
    b.kill9();
    std::thread::sleep(Duration::from_millis(2100));
    maint::json(&["gc", "--grace", "1s"], &cfg, &b.data_dir, true);
    let status = maint::json(&["status"], &cfg, &b.data_dir, true);
    assert_eq!(status["storage"]["pending_byte_deletions"], 0, "{status}");
    let files = common::count_blobs(&b.data_dir);
    assert_eq!(
        Some(files),
        status["storage"]["blobs"].as_u64(),
        "blob files on disk vs rows: {status}"
    );
}
