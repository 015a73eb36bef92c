//! Runs maintenance inside the server: each job on its interval plus a random jitter, one run of a job at a time,
//! and the pull-time flusher. A failed run is logged and counted; the next one comes at the next interval.

use std::sync::Arc;
use std::time::Duration;

use rand::RngExt;

use super::gc::GcOptions;
use super::retention::Policy;
use super::scrub::ScrubOptions;
use super::{BYTES_DELAY, Maintenance, Quiet};
use crate::config::Config;

/// How often pull times are written.
const PULL_FLUSH: Duration = Duration::from_secs(10);
/// How often the storage gauges are recomputed (a scan of the blob table).
const STORAGE_METRICS: Duration = Duration::from_secs(60);

fn jittered(interval: Duration, jitter: Duration) -> Duration {
    if jitter.is_zero() {
        return interval;
    }
    interval + Duration::from_millis(rand::rng().random_range(0..=jitter.as_millis() as u64))
}

/// Repeats `job` every `interval` (+ jitter) until the task is aborted; a zero interval schedules nothing.
fn every<F, Fut>(name: &'static str, interval: Duration, jitter: Duration, job: F)
where
    F: Fn() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    if interval.is_zero() {
        tracing::info!(job = name, "scheduled runs are off");
        return;
    }
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(jittered(interval, jitter)).await;
            job().await;
        }
    });
}

/// Runs a scheduled job under its lease, so of several replicas sharing a metadata store one runs it at a time
/// (a lease dies with its holder, and the next replica whose schedule comes up takes it). Skipped while another
/// replica holds the lease; command-line runs take no lease (every deletion re-checks in its transaction, so
/// overlapping runs are safe, only wasteful).
async fn leased(m: &Maintenance, job: &str, run: impl std::future::Future<Output = ()>) {
    match m.store().try_lease(job).await {
        Ok(Some(_lease)) => run.await,
        Ok(None) => tracing::info!(
            job,
            "another replica holds this job's lease; skipping this run"
        ),
        Err(e) => {
            tracing::error!(job, error = %e, "cannot take this job's lease; skipping this run")
        }
    }
}

/// Starts every scheduled job for the server.
pub fn start(maint: Arc<Maintenance>, config: &Config, policies: Vec<Policy>) {
    {
        let m = maint.clone();
        tokio::spawn(async move {
            if let Err(e) = m.restore_job_metrics().await {
                tracing::warn!(error = %e, "cannot read the maintenance history");
            }
            let mut tick = tokio::time::interval(STORAGE_METRICS);
            loop {
                tick.tick().await;
                if let Err(e) = m.refresh_storage_metrics().await {
                    tracing::warn!(error = %e, "cannot compute storage metrics");
                }
            }
        });
    }
    {
        let m = maint.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(PULL_FLUSH);
            loop {
                tick.tick().await;
                if let Err(e) = m.registry().flush_pulls().await {
                    tracing::warn!(error = %e, "cannot record pull times");
                }
                // Bytes of rows deleted by other processes (a `berth gc` from a shell) or by eviction.
                if let Err(e) = m.delete_tombstoned(BYTES_DELAY).await {
                    tracing::warn!(error = %e, "cannot delete bytes of removed blobs");
                }
            }
        });
    }
    let gc = GcOptions {
        grace: config.gc.grace,
        untagged_ttl: config.gc.untagged_ttl,
        dry_run: false,
        wait_for_bytes: false,
    };
    let m = maint.clone();
    every("gc", config.gc.interval, config.gc.jitter, move || {
        let (m, gc) = (m.clone(), gc.clone());
        async move {
            leased(&m, "gc", async {
                if let Err(e) = m.gc(&gc, &Quiet).await {
                    tracing::error!(error = %e, "scheduled garbage collection failed");
                }
            })
            .await
        }
    });
    if !policies.is_empty() {
        let m = maint.clone();
        let policies = Arc::new(policies);
        every(
            "retention",
            config.retention.interval,
            config.retention.jitter,
            move || {
                let (m, policies) = (m.clone(), policies.clone());
                async move {
                    leased(&m, "retention", async {
                        if let Err(e) = m.retention(&policies, false, &Quiet).await {
                            tracing::error!(error = %e, "scheduled retention failed");
                        }
                    })
                    .await
                }
            },
        );
    }
    let scrub = ScrubOptions {
        deep: config.scrub.deep,
        max_rate: Some(config.scrub.max_rate.as_u64()),
        report_only: false,
    };
    every(
        "scrub",
        config.scrub.interval,
        config.scrub.jitter,
        move || {
            let (m, scrub) = (maint.clone(), scrub.clone());
            async move {
                leased(&m, "scrub", async {
                    if let Err(e) = m.scrub(&scrub, &Quiet).await {
                        tracing::error!(error = %e, "scheduled scrub failed");
                    }
                })
                .await
            }
        },
    );
}
