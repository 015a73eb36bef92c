//! Runs maintenance inside the server, as workers (`crate::worker`): each job on its interval plus a random
//! jitter, one run of a job at a time, and the housekeeping around them (the pull-time flush, the bytes of
//! tombstoned blobs, the storage gauges). A failed run shows on its worker and is counted; the next one comes at
//! the next interval.

use std::sync::Arc;
use std::time::Duration;

use super::gc::GcOptions;
use super::retention::Policy;
use super::scrub::ScrubOptions;
use super::{BYTES_DELAY, Maintenance};
use crate::config::Config;
use crate::human::{count, size};
use crate::worker::{Job, Ran, RunContext, Schedule, Workers, job_fn};

/// How often pull times are written.
const PULL_FLUSH: Duration = Duration::from_secs(10);
/// How often the bytes of blob rows deleted elsewhere (a `berth gc` from a shell, eviction) are looked for.
const TOMBSTONES: Duration = Duration::from_secs(10);
/// How often the storage gauges are recomputed (a scan of the blob table).
const STORAGE_METRICS: Duration = Duration::from_secs(60);

/// A job's progress and the server's stop request, as maintenance asks for them.
struct WorkerProgress<'a>(&'a RunContext);

impl super::Progress for WorkerProgress<'_> {
    fn phase(&self, name: &str, total: u64) {
        self.0.phase(name, (total > 0).then_some(total));
    }

    fn advance(&self, n: u64) {
        self.0.advance(n);
    }

    fn stop_requested(&self) -> bool {
        self.0.stopping()
    }

    fn throttle<'a>(
        &'a self,
        d: Duration,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = bool> + Send + 'a>> {
        Box::pin(self.0.throttle(d))
    }
}

/// Which scheduled maintenance job.
enum Task {
    Gc(GcOptions),
    Retention(Arc<Vec<Policy>>),
    Scrub(ScrubOptions),
}

impl Task {
    fn name(&self) -> &'static str {
        match self {
            Task::Gc(_) => "gc",
            Task::Retention(_) => "retention",
            Task::Scrub(_) => "scrub",
        }
    }
}

/// A scheduled maintenance job, run under its lease so that of several replicas sharing a metadata store one runs
/// it at a time (a lease dies with its holder, and the next replica whose schedule comes up takes it). While
/// another replica holds the lease the run is skipped, and the worker is idle with that as its detail, not failed.
/// Command-line runs take no lease (every deletion re-checks in its transaction, so overlapping runs are safe, only
/// wasteful).
struct Scheduled {
    maint: Arc<Maintenance>,
    task: Task,
}

#[async_trait::async_trait]
impl Job for Scheduled {
    async fn run(&self, ctx: &RunContext) -> anyhow::Result<Ran> {
        let job = self.task.name();
        let Some(_lease) = self.maint.store().try_lease(job).await? else {
            tracing::info!(
                job,
                "another replica holds this job's lease; skipping this run"
            );
            return Ok(Ran::skipped(
                "another replica holds this job's lease; skipped this run",
            ));
        };
        let m = &self.maint;
        let progress = WorkerProgress(ctx);
        Ok(match &self.task {
            Task::Gc(opts) => {
                let s = m.gc(opts, &progress).await?;
                Ran::noted(format!(
                    "deleted {}, {}, {} ({})",
                    count(s.manifests, "manifest"),
                    count(s.links, "blob link"),
                    count(s.blobs, "blob"),
                    size(s.bytes)
                ))
            }
            Task::Retention(policies) => {
                let s = m.retention(policies, false, &progress).await?;
                Ran::noted(format!(
                    "deleted {} and {}",
                    count(s.tags_deleted, "tag"),
                    count(s.manifests_deleted, "untagged manifest")
                ))
            }
            Task::Scrub(opts) => {
                let s = m.scrub(opts, &progress).await?;
                match s.problems.len() {
                    0 => Ran::noted(format!("{} checked, no problem", count(s.blobs, "blob"))),
                    n => Ran::noted(format!(
                        "{} checked, {} found (see the run history)",
                        count(s.blobs, "blob"),
                        count(n, "problem")
                    )),
                }
            }
        })
    }
}

/// Writes the pull times recorded in memory, and once more when the server stops, so no recorded pull is lost.
struct PullFlush(Arc<Maintenance>);

#[async_trait::async_trait]
impl Job for PullFlush {
    async fn run(&self, _: &RunContext) -> anyhow::Result<Ran> {
        self.0.registry().flush_pulls().await?;
        Ok(Ran::done())
    }

    async fn stop(&self) -> anyhow::Result<()> {
        self.0.registry().flush_pulls().await?;
        Ok(())
    }
}

/// Starts every maintenance worker of the server.
pub fn start(workers: &Workers, maint: Arc<Maintenance>, config: &Config, policies: Vec<Policy>) {
    workers.spawn(
        "pull-flush",
        Schedule::every(PULL_FLUSH),
        PullFlush(maint.clone()),
    );
    {
        let m = maint.clone();
        workers.spawn(
            "tombstones",
            Schedule::every(TOMBSTONES),
            job_fn(move || {
                let m = m.clone();
                async move {
                    let swept = m.delete_tombstoned(BYTES_DELAY).await?;
                    Ok(match swept.deleted {
                        0 => Ran::done(),
                        n => Ran::noted(format!("deleted the bytes of {n} removed blobs")),
                    })
                }
            }),
        );
    }
    {
        let m = maint.clone();
        let restored = Arc::new(std::sync::atomic::AtomicBool::new(false));
        workers.spawn(
            "storage-metrics",
            Schedule::every(STORAGE_METRICS).starting_now(),
            job_fn(move || {
                let (m, restored) = (m.clone(), restored.clone());
                async move {
                    // Once: the last-success gauges from the run history, so a restart does not look like a job
                    // that never succeeded. Retried at the next run if the history cannot be read.
                    let restore = if restored.load(std::sync::atomic::Ordering::Relaxed) {
                        Ok(())
                    } else {
                        m.restore_job_metrics().await
                    };
                    m.refresh_storage_metrics().await?;
                    restore?;
                    restored.store(true, std::sync::atomic::Ordering::Relaxed);
                    Ok(Ran::done())
                }
            }),
        );
    }
    let gc = GcOptions {
        grace: config.gc.grace,
        untagged_ttl: config.gc.untagged_ttl,
        dry_run: false,
        wait_for_bytes: false,
    };
    let scrub = ScrubOptions {
        deep: config.scrub.deep,
        max_rate: Some(config.scrub.max_rate.as_u64()),
        report_only: false,
    };
    let retention = if policies.is_empty() {
        Schedule::off("no retention policy is configured")
    } else {
        Schedule::every(config.retention.interval).with_jitter(config.retention.jitter)
    };
    for (task, schedule) in [
        (
            Task::Gc(gc),
            Schedule::every(config.gc.interval).with_jitter(config.gc.jitter),
        ),
        (Task::Retention(Arc::new(policies)), retention),
        (
            Task::Scrub(scrub),
            Schedule::every(config.scrub.interval).with_jitter(config.scrub.jitter),
        ),
    ] {
        let name = task.name();
        workers.spawn(
            name,
            schedule,
            Scheduled {
                maint: maint.clone(),
                task,
            },
        );
    }
}
