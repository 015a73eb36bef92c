//! Background workers: `GET /api/v1/workers` lists every one with its state, for admins only; a scheduled GC shows
//! its last run; a job that fails for real shows `failed` with its error; SIGTERM while a deep scrub runs stops it
//! at its next step within the shutdown timeout and still records the pulls made just before; the `berth_worker_*`
//! metrics.

#[path = "common/auth.rs"]
mod auth;
mod common;
#[path = "common/maint.rs"]
mod maint;
#[path = "common/spec.rs"]
mod spec;
#[path = "common/ui.rs"]
mod ui;

use std::time::{Duration, Instant};

use auth::{Creds, add_user, send};
use common::Berth;
use reqwest::Method;
use serde_json::Value;

/// The workers every server runs, whatever its config (plus one `eviction:<mirror>` per mirror).
const ALWAYS: [&str; 7] = [
    "gc",
    "pull-flush",
    "retention",
    "scrub",
    "storage-metrics",
    "tombstones",
    "upload-expiry",
];

async fn workers(b: &Berth, creds: &Creds) -> (u16, Value) {
    let (status, _, body) = send(
        Method::GET,
        &format!("{}/api/v1/workers", b.url()),
        creds,
        &[],
        vec![],
    )
    .await;
    let v = serde_json::from_slice(&body).unwrap_or(Value::Null);
    (status.as_u16(), v)
}

/// The admin's view of one worker.
async fn worker(b: &Berth, name: &str) -> Value {
    let (status, all) = workers(b, &auth::admin()).await;
    assert_eq!(status, 200, "{all}");
    all.as_array()
        .and_then(|ws| ws.iter().find(|w| w["name"] == name))
        .cloned()
        .unwrap_or_else(|| panic!("no worker {name} in {all}"))
}

/// Polls `name` until `ok` holds for it (10 s at most); returns it.
async fn wait_for(b: &Berth, name: &str, what: &str, ok: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let w = worker(b, name).await;
        if ok(&w) {
            return w;
        }
        assert!(Instant::now() < deadline, "{name} never {what}: {w}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn secure_with(cfg: &std::path::Path) -> Berth {
    Berth::start_secure(&["--config", cfg.to_str().unwrap()])
}

#[tokio::test(flavor = "multi_thread")]
async fn workers_api_lists_every_worker_with_a_state_for_admins_only() {
    // The default config: its mirrors each have an eviction worker.
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tmp.path().join("berth.toml");
    std::fs::write(&cfg, "").unwrap();
    let b = secure_with(&cfg);
    add_user(&b, "reader", "reader-pw");

    for (creds, want) in [
        (Creds::Anonymous, 401),
        (Creds::basic("reader", "reader-pw"), 403),
        (Creds::basic("admin", "wrong"), 401),
    ] {
        assert_eq!(workers(&b, &creds).await.0, want, "{creds:?}");
    }

    let (status, all) = workers(&b, &auth::admin()).await;
    assert_eq!(status, 200);
    let all = all.as_array().expect("a JSON array").clone();
    let names: Vec<&str> = all.iter().filter_map(|w| w["name"].as_str()).collect();
    for name in ALWAYS {
        assert!(names.contains(&name), "{name} missing from {names:?}");
    }
    assert!(
        names.iter().any(|n| n.starts_with("eviction:")),
        "{names:?}"
    );
    for w in &all {
        let state = w["state"].as_str().unwrap_or_default();
        assert!(
            ["busy", "idle", "throttled", "failed"].contains(&state),
            "{w}"
        );
        for key in ["last_error", "progress", "last_run", "next_run", "detail"] {
            assert!(w.get(key).is_some(), "{key} missing: {w}");
        }
    }
    // No retention policy in the default config: listed, idle, saying so; GC is scheduled for later.
    let retention = worker(&b, "retention").await;
    assert_eq!(retention["state"], "idle");
    assert!(
        retention["detail"]
            .as_str()
            .is_some_and(|d| d.contains("no retention policy")),
        "{retention}"
    );
    assert!(retention["next_run"].is_null(), "{retention}");
    let gc = worker(&b, "gc").await;
    assert!(
        gc["next_run"].as_i64().unwrap_or(0) > 0,
        "gc is scheduled: {gc}"
    );
    // Eviction runs at start.
    let ev = names
        .iter()
        .find(|n| n.starts_with("eviction:"))
        .map(|n| n.to_string())
        .unwrap_or_default();
    wait_for(&b, &ev, "ran", |w| !w["last_run"]["finished_at"].is_null()).await;

    // The same list on the UI's maintenance page.
    let s = ui::Session::login(&b, "admin", common::ADMIN_PASSWORD).await;
    let (status, html) = s.get("/ui/maintenance").await;
    assert_eq!(status, 200);
    for name in ALWAYS {
        assert!(html.contains(&format!("data-worker=\"{name}\"")), "{name}");
    }

    let m = common::metrics_text(&b.url()).await;
    assert_eq!(
        common::metric_sample(&m, "berth_worker_state{worker=\"gc\",state=\"idle\"}"),
        1.0,
        "{m}"
    );
    assert_eq!(
        common::metric_sample(&m, "berth_worker_state{worker=\"gc\",state=\"failed\"}"),
        0.0
    );
    assert!(
        m.contains("berth_worker_failures_total{worker=\"gc\"} 0"),
        "{m}"
    );
    assert!(
        m.contains(&format!(
            "berth_worker_last_run_timestamp_seconds{{worker=\"{ev}\"}}"
        )),
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_scheduled_gc_shows_its_last_run() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = maint::scheduled_config(tmp.path(), "team/*", "");
    let b = secure_with(&cfg);
    let started = common_now();
    let gc = wait_for(&b, "gc", "finished a run", |w| {
        !w["last_run"]["finished_at"].is_null()
    })
    .await;
    assert_ne!(gc["state"], "failed", "{gc}");
    assert!(
        gc["last_run"]["started_at"].as_i64().unwrap() >= started - 1,
        "{gc}"
    );
    assert!(
        gc["last_run"]["finished_at"].as_i64() >= gc["last_run"]["started_at"].as_i64(),
        "{gc}"
    );
    assert!(
        gc["detail"]
            .as_str()
            .is_some_and(|d| d.starts_with("deleted ")),
        "{gc}"
    );
    let m = common::metrics_text(&b.url()).await;
    assert!(
        common::metric_sample(&m, "berth_worker_last_run_timestamp_seconds{worker=\"gc\"}")
            >= started as f64 - 1.0,
        "{m}"
    );
}

fn common_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// GC lists the blob files to find orphans; a regular file where a digest-algorithm directory belongs makes that
/// listing fail (`Not a directory`), so the scheduled run fails for real.
#[tokio::test(flavor = "multi_thread")]
async fn a_worker_whose_job_fails_shows_failed_and_its_error_then_recovers() {
    if common::s3_endpoint().is_some() {
        eprintln!("SKIPPED: damages the filesystem blob store");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let cfg = maint::scheduled_config(tmp.path(), "team/*", "");
    let b = secure_with(&cfg);
    let junk = b.data_dir.join("blobs").join("not-an-algorithm");
    std::fs::create_dir_all(b.data_dir.join("blobs")).unwrap();
    std::fs::write(&junk, b"not a directory").unwrap();

    let gc = wait_for(&b, "gc", "failed", |w| w["state"] == "failed").await;
    let error = gc["last_error"].as_str().unwrap_or_default();
    assert!(error.to_lowercase().contains("not a directory"), "{gc}");
    assert!(gc["last_error_at"].as_i64().is_some(), "{gc}");
    assert!(gc["failures"].as_u64() >= Some(1), "{gc}");
    let m = common::metrics_text(&b.url()).await;
    assert!(
        common::metric_sample(&m, "berth_worker_failures_total{worker=\"gc\"}") >= 1.0,
        "{m}"
    );
    assert_eq!(
        common::metric_sample(&m, "berth_worker_state{worker=\"gc\",state=\"failed\"}"),
        1.0
    );

    // Repaired: the next run succeeds; the error stays visible beside the state.
    std::fs::remove_file(&junk).unwrap();
    let gc = wait_for(&b, "gc", "recovered", |w| w["state"] == "idle").await;
    assert_eq!(gc["last_error"].as_str(), Some(error), "{gc}");
}

/// SIGTERM while a deep scrub crawls under a 1 KiB/s rate limit: the scrub stops at its next step, the process
/// exits well within `shutdown_timeout` and logs the workers' stop; the run is recorded as interrupted (not
/// failed), and a pull made just before SIGTERM is recorded (the pull-time flush flushes once more).
#[tokio::test(flavor = "multi_thread")]
async fn sigterm_stops_running_workers_in_time_and_keeps_the_last_pulls() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = maint::config(
        tmp.path(),
        "[server]\nshutdown_timeout = \"10s\"\n\
         [[retention.policy]]\nrepositories = [\"team/**\"]\nkeep_pulled_within = \"1day\"\n",
    );
    let toml = std::fs::read_to_string(&cfg).unwrap().replace(
        "[scrub]\ninterval = \"0s\"",
        "[scrub]\ninterval = \"1s\"\njitter = \"0s\"\ndeep = true\nmax_rate = \"1 KiB\"",
    );
    std::fs::write(&cfg, toml).unwrap();
    let data_dir = tmp.path().join("data");
    let log = tmp.path().join("berth.log");
    let mut b = Berth::start_secure_logging(&data_dir, &["--config", cfg.to_str().unwrap()], &log);
    let r = ui::admin_reg(&b);
    r.push_image("team/app", "pulled", "a").await;
    r.push_image("team/app", "idle", "b").await;
    r.push_blob("team/app", &vec![7u8; 64 << 10]).await;

    let scrub = wait_for(&b, "scrub", "throttled", |w| w["state"] == "throttled").await;
    assert_eq!(scrub["progress"]["phase"], "hashing blobs", "{scrub}");

    let resp = r.get("/v2/team/app/manifests/pulled").await;
    assert_eq!(resp.status(), 200);
    let (status, took) = b.terminate(Duration::from_secs(15));
    assert!(status.success(), "exit status {status}");
    assert!(
        took < Duration::from_secs(5),
        "took {took:?}: the scrub did not stop at its next step"
    );
    let log = std::fs::read_to_string(&log).unwrap();
    assert!(log.contains("background workers stopped"), "{log}");
    assert!(!log.contains("did not stop"), "{log}");

    let status = maint::json(&["status"], &cfg, &data_dir, true);
    assert!(
        status["runs"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["kind"] == "scrub" && r["outcome"] == "interrupted"),
        "{status}"
    );
    let dry = maint::json(&["retention", "--dry-run"], &cfg, &data_dir, true);
    let decision = |tag: &str| {
        dry["decisions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d["tag"] == tag)
            .cloned()
            .unwrap_or_else(|| panic!("no decision for {tag}: {dry}"))
    };
    let pulled = decision("pulled");
    assert!(pulled["last_pulled"].as_i64().is_some(), "{pulled}");
    assert_eq!(pulled["action"], "keep", "{pulled}");
    assert!(decision("idle")["last_pulled"].is_null(), "{dry}");
}

/// PostgreSQL: while another replica holds the GC lease, the scheduled run is skipped and the worker shows it idle
/// with that as its detail, never failed; once the lease is free it runs again.
#[tokio::test(flavor = "multi_thread")]
async fn a_job_whose_lease_another_replica_holds_shows_idle_not_failed() {
    use berth::meta::{Coordination, PgSettings, SqlStore};
    if !common::on_postgres() {
        eprintln!("SKIPPED: leases need shared metadata (BERTH_TEST_METADATA=postgres)");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let cfg = maint::scheduled_config(tmp.path(), "team/*", "");
    let b = secure_with(&cfg);
    // The other replica: a store of its own on the same database.
    let other = SqlStore::postgres(&PgSettings {
        url: common::postgres_url(&b.data_dir),
        pool_size: 2,
    })
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let lease = loop {
        // The server holds it while its own run lasts.
        if let Some(l) = other.try_lease("gc").await.unwrap() {
            break l;
        }
        assert!(Instant::now() < deadline, "never got the gc lease");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let gc = wait_for(&b, "gc", "skipped its run", |w| {
        w["detail"]
            .as_str()
            .is_some_and(|d| d.contains("another replica holds"))
    })
    .await;
    assert_eq!(gc["state"], "idle", "{gc}");
    assert_eq!(gc["failures"], 0, "{gc}");
    drop(lease);
    wait_for(&b, "gc", "ran again", |w| {
        w["detail"]
            .as_str()
            .is_some_and(|d| d.starts_with("deleted "))
    })
    .await;
}
