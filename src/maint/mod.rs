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
use crate::metrics::{JobLabel, JobOutcome, metrics};
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

/// Reports a job's progress (a progress bar on a terminal, nothing in the scheduler).
pub trait Progress: Send + Sync {
    /// A new phase with `total` steps (0 when unknown).
    fn phase(&self, name: &str, total: u64);
    /// `n` more steps of the current phase done.
    fn advance(&self, n: u64);
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

    /// Records a job's start in the history.
    async fn begin(&self, job: &'static str, dry_run: bool) -> Result<i64, RegistryError> {
        Ok(self.store.start_run(job, dry_run).await?)
    }

    /// Records a job's end in the history and in metrics. `problems`: the run finished but found damage.
    async fn end<S: serde::Serialize>(
        &self,
        job: &'static str,
        run: i64,
        result: &Result<S, RegistryError>,
        problems: bool,
    ) {
        let (outcome, summary) = match result {
            Ok(s) => (
                if problems { "problems" } else { "ok" },
                serde_json::to_string(s).unwrap_or_default(),
            ),
            Err(e) => (
                "failed",
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
