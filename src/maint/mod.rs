//! Maintenance inside the server and from the command line: online garbage collection, retention policies and the
//! integrity scrubber (design §7, invariants 3, 6, 7, 8). Each job reads a consistent snapshot to decide and lets
//! the metadata store re-check every deletion in its own transaction, so jobs run beside pushes, pulls, deletes and
//! each other — in this process or in a `berth gc` started from a shell.

pub mod cli;
pub mod gc;
pub mod retention;
pub mod scheduler;
pub mod scrub;

use std::sync::Arc;
use std::time::Duration;

use crate::meta::maint::MaintenanceStore;
use crate::metrics::{JobLabel, JobOutcome, ObjectKind, ProblemKind, StorageKind, metrics};
use crate::oci::Digest;
use crate::registry::{Registry, RegistryError};

/// How long bytes outlive their deleted row at least, so a reader that looked the row up just before can still
/// open them (an open file survives its deletion).
pub const BYTES_DELAY: Duration = Duration::from_secs(30);

/// The maintenance jobs over one registry.
pub struct Maintenance {
    registry: Arc<Registry>,
    store: Arc<dyn MaintenanceStore>,
}

/// Reports a job's progress (a progress bar on a terminal, the worker's progress in the server) and passes on
/// the server's request to stop.
pub trait Progress: Send + Sync {
    /// A new phase with `total` steps (0 when unknown).
    fn phase(&self, name: &str, total: u64);
    /// `n` more steps of the current phase done.
    fn advance(&self, n: u64);
    /// True when the job should stop at this step (the server is shutting down); a command-line run never is.
    fn stop_requested(&self) -> bool {
        false
    }
    /// Waits `d` to keep to a rate limit; false when the job should stop instead.
    fn throttle<'a>(
        &'a self,
        d: Duration,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = bool> + Send + 'a>> {
        Box::pin(async move {
            tokio::time::sleep(d).await;
            true
        })
    }
}

/// What a job returns when it stopped at a step because the server is shutting down. Every step is a complete
/// transaction, so stopping between two leaves nothing half done; the next run starts over.
fn interrupted() -> RegistryError {
    RegistryError::Internal("interrupted: the server is shutting down".into())
}

/// Returns [`interrupted`] when the job should stop at this step.
fn check_stop(progress: &dyn Progress) -> Result<(), RegistryError> {
    if progress.stop_requested() {
        return Err(interrupted());
    }
    Ok(())
}

/// Progress that goes nowhere.
pub struct Quiet;

impl Progress for Quiet {
    fn phase(&self, _: &str, _: u64) {}
    fn advance(&self, _: u64) {}
}

/// What deleting the bytes of tombstoned blobs did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct ByteSweep {
    /// Files removed.
    pub deleted: u64,
    /// Tombstones whose digest had been pushed again (a row exists): the bytes stay.
    pub revived: u64,
}

impl Maintenance {
    pub fn new(registry: Arc<Registry>, store: Arc<dyn MaintenanceStore>) -> Maintenance {
        Maintenance { registry, store }
    }

    pub fn registry(&self) -> &Arc<Registry> {
        &self.registry
    }

    pub fn store(&self) -> &Arc<dyn MaintenanceStore> {
        &self.store
    }

    /// Deletes the bytes of blobs whose row went at least `older_than` ago. Under the digest lock that every
    /// publisher holds from writing bytes to committing the row, it re-checks that no row came back, so bytes a
    /// committed row points at are never removed (invariant 2).
    pub async fn delete_tombstoned(
        &self,
        older_than: Duration,
    ) -> Result<ByteSweep, RegistryError> {
        let cutoff = crate::meta::now() - older_than.as_secs() as i64;
        let mut sweep = ByteSweep::default();
        for d in self.store.tombstones(cutoff).await? {
            if self.delete_bytes_unless_row(&d).await? {
                sweep.deleted += 1;
            } else {
                sweep.revived += 1;
            }
            self.store.clear_tombstone(&d).await?;
        }
        Ok(sweep)
    }

    /// Removes a digest's bytes if, under its lock, no row exists. True when removed.
    pub async fn delete_bytes_unless_row(&self, d: &Digest) -> Result<bool, RegistryError> {
        let _held = self.registry.lock_digest(d).await;
        if self.store.blob_exists(d).await? {
            return Ok(false);
        }
        self.registry.blob_store().delete(d).await?;
        Ok(true)
    }

    /// Refreshes the storage gauges (sizes by kind, blob and upload counts, free space).
    pub async fn refresh_storage_metrics(&self) -> Result<(), RegistryError> {
        let s = self.store.stats().await?;
        let m = metrics();
        m.storage_bytes
            .get_or_create(&StorageKind { kind: "private" })
            .set(s.private_bytes as i64);
        m.storage_bytes
            .get_or_create(&StorageKind { kind: "mirror" })
            .set(s.mirror_bytes as i64);
        m.storage_blobs.set(s.blobs as i64);
        m.upload_sessions.set(s.upload_sessions as i64);
        if let Some(c) = self.registry.blob_store().capacity().await? {
            m.data_size_bytes.set(c.total as i64);
            m.data_free_bytes.set(c.free as i64);
        }
        Ok(())
    }

    /// Seeds the last-success gauges from the run history, so a restart does not look like a job that never
    /// succeeded (alerts on stale scrubs read them).
    pub async fn restore_job_metrics(&self) -> Result<(), RegistryError> {
        let m = metrics();
        for job in ["gc", "retention", "scrub"] {
            for outcome in ["ok", "problems", "failed", "interrupted"] {
                let _ = m.maint_runs.get_or_create(&JobOutcome { job, outcome });
            }
        }
        for object in ["manifest", "link", "blob"] {
            let _ = m.gc_deleted.get_or_create(&ObjectKind { object });
        }
        for object in ["tag", "manifest"] {
            let _ = m.retention_deleted.get_or_create(&ObjectKind { object });
        }
        let runs = self.store.recent_runs(50).await?;
        // The last finished scrub's problems stand until the next scrub.
        if let Some(summary) = runs
            .iter()
            .filter(|r| r.kind == "scrub" && r.outcome != "running" && r.outcome != "failed")
            .max_by_key(|r| r.id)
            .and_then(|r| r.summary.as_deref())
        {
            let report: serde_json::Value = serde_json::from_str(summary).unwrap_or_default();
            let problems = report["problems"].as_array().cloned().unwrap_or_default();
            for kind in scrub::PROBLEM_KINDS {
                let n = problems.iter().filter(|p| p["kind"] == kind).count();
                m.scrub_problems
                    .get_or_create(&ProblemKind { kind })
                    .set(n as i64);
            }
        }
        for r in runs {
            let job = match r.kind.as_str() {
                "gc" => "gc",
                "retention" => "retention",
                "scrub" => "scrub",
                _ => continue,
            };
            if r.outcome == "ok" {
                let g = metrics()
                    .maint_last_success
                    .get_or_create(&JobLabel { job });
                let at = r.finished_at.unwrap_or(r.started_at);
                if g.get() < at {
                    g.set(at);
                }
            }
        }
        Ok(())
    }

    /// Records a job's start in the history.
    async fn begin(&self, job: &'static str, dry_run: bool) -> Result<i64, RegistryError> {
        Ok(self.store.start_run(job, dry_run).await?)
    }

    /// Records a job's end in the history and in metrics. `problems`: the run finished but found damage. A run that
    /// ended in an error after the server asked it to stop is `interrupted`, not `failed`: a restart is no failure
    /// to alert on.
    async fn end<S: serde::Serialize>(
        &self,
        job: &'static str,
        run: i64,
        result: &Result<S, RegistryError>,
        problems: bool,
        progress: &dyn Progress,
    ) {
        let (outcome, summary) = match result {
            Ok(s) => (
                if problems { "problems" } else { "ok" },
                serde_json::to_string(s).unwrap_or_default(),
            ),
            Err(e) => (
                if progress.stop_requested() {
                    "interrupted"
                } else {
                    "failed"
                },
                serde_json::json!({ "error": e.to_string() }).to_string(),
            ),
        };
        metrics()
            .maint_runs
            .get_or_create(&JobOutcome { job, outcome })
            .inc();
        if outcome == "ok" {
            metrics()
                .maint_last_success
                .get_or_create(&JobLabel { job })
                .set(crate::meta::now());
        }
        if let Err(e) = self.store.finish_run(run, outcome, &summary).await {
            tracing::warn!(job, error = %e, "cannot record the end of a maintenance run");
        }
    }
}
