//! Prometheus metrics, served at `/metrics` in the text exposition format. One process-wide set: metrics are
//! observations about the process, and a global avoids threading a handle through every layer.

use std::sync::OnceLock;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HttpLabels {
    /// The endpoint template (`manifest`, `blob`, `upload`, …), never the raw path.
    pub route: &'static str,
    pub method: String,
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabel {
    pub route: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MirrorLabels {
    pub mirror: String,
    /// `manifest` or `blob`.
    pub kind: &'static str,
    /// `hit`, `miss`, `revalidated`, `stale`, `joined` or `error`.
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MirrorName {
    pub mirror: String,
}

/// A maintenance job: `gc`, `retention` or `scrub`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct JobLabel {
    pub job: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct JobOutcome {
    pub job: &'static str,
    /// `ok`, `problems` (scrub found some), `failed` or `interrupted` (stopped by the server's shutdown).
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ObjectKind {
    /// `manifest`, `link`, `blob` or `tag`.
    pub object: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProblemKind {
    pub kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StorageKind {
    /// `private` (used by a private repository) or `mirror` (held only by mirror caches).
    pub kind: &'static str,
}

/// A background worker (`gc`, `pull-flush`, `eviction:docker.io`, …; see `worker.rs`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WorkerLabel {
    pub worker: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WorkerStateLabel {
    pub worker: String,
    /// `busy`, `idle`, `throttled` or `failed`.
    pub state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BuildInfo {
    pub version: &'static str,
}

pub struct Metrics {
    registry: Registry,
    pub http_requests: Family<HttpLabels, Counter>,
    pub http_duration: Family<HttpLabels, Histogram>,
    pub http_request_bytes: Family<RouteLabel, Counter>,
    pub http_response_bytes: Family<RouteLabel, Counter>,
    pub upload_bytes: Counter,
    pub mirror_requests: Family<MirrorLabels, Counter>,
    pub mirror_upstream_bytes: Family<MirrorName, Counter>,
    pub mirror_upstream_fetches: Family<MirrorName, Counter>,
    pub mirror_evictions: Family<MirrorName, Counter>,
    pub mirror_cache_bytes: Family<MirrorName, Gauge>,
    pub mirror_cache_served_bytes: Family<MirrorName, Counter>,
    pub maint_runs: Family<JobOutcome, Counter>,
    pub maint_last_success: Family<JobLabel, Gauge>,
    pub gc_deleted: Family<ObjectKind, Counter>,
    pub gc_reclaimed_bytes: Counter,
    pub retention_deleted: Family<ObjectKind, Counter>,
    pub scrub_problems: Family<ProblemKind, Gauge>,
    pub scrub_checked: Counter,
    pub scrub_repaired: Counter,
    pub blobs_damaged: Counter,
    pub storage_bytes: Family<StorageKind, Gauge>,
    pub storage_blobs: Gauge,
    pub upload_sessions: Gauge,
    pub data_size_bytes: Gauge,
    pub data_free_bytes: Gauge,
    pub worker_state: Family<WorkerStateLabel, Gauge>,
    pub worker_last_run: Family<WorkerLabel, Gauge>,
    pub worker_failures: Family<WorkerLabel, Counter>,
}

fn new_histogram() -> Histogram {
    // 100 µs … ~26 s
    Histogram::new(exponential_buckets(0.0001, 4.0, 10))
}

impl Metrics {
    fn new() -> Metrics {
        let mut registry = Registry::with_prefix("berth");
        let http_requests = Family::<HttpLabels, Counter>::default();
        registry.register(
            "http_requests",
            "HTTP requests by endpoint, method and status",
            http_requests.clone(),
        );
        let http_duration = Family::<HttpLabels, Histogram>::new_with_constructor(
            new_histogram as fn() -> Histogram,
        );
        registry.register(
            "http_request_duration_seconds",
            "Time to response headers by endpoint, method and status",
            http_duration.clone(),
        );
        let http_request_bytes = Family::<RouteLabel, Counter>::default();
        registry.register(
            "http_request_bytes",
            "Request body bytes by endpoint, as declared by Content-Length (chunked bodies are not counted)",
            http_request_bytes.clone(),
        );
        let http_response_bytes = Family::<RouteLabel, Counter>::default();
        registry.register(
            "http_response_bytes",
            "Response body bytes by endpoint, as declared by Content-Length",
            http_response_bytes.clone(),
        );
        let upload_bytes = Counter::default();
        registry.register(
            "upload_bytes",
            "Blob bytes received by uploads, whatever the transfer encoding",
            upload_bytes.clone(),
        );
        let mirror_requests = Family::<MirrorLabels, Counter>::default();
        registry.register(
            "mirror_requests",
            "Mirror reads by mirror, kind (manifest/blob) and result (hit, miss, revalidated, stale, joined, error)",
            mirror_requests.clone(),
        );
        let mirror_upstream_bytes = Family::<MirrorName, Counter>::default();
        registry.register(
            "mirror_upstream_bytes",
            "Blob bytes downloaded from upstream registries",
            mirror_upstream_bytes.clone(),
        );
        let mirror_upstream_fetches = Family::<MirrorName, Counter>::default();
        registry.register(
            "mirror_upstream_blob_fetches",
            "Blob downloads started from upstream registries (one per digest however many clients wait)",
            mirror_upstream_fetches.clone(),
        );
        let mirror_evictions = Family::<MirrorName, Counter>::default();
        registry.register(
            "mirror_evictions",
            "Blobs evicted from a mirror cache to keep it within its budget",
            mirror_evictions.clone(),
        );
        let mirror_cache_bytes = Family::<MirrorName, Gauge>::default();
        registry.register(
            "mirror_cache_bytes",
            "Bytes of blobs cached per mirror, as of the last eviction check",
            mirror_cache_bytes.clone(),
        );
        let mirror_cache_served_bytes = Family::<MirrorName, Counter>::default();
        registry.register(
            "mirror_cache_served_bytes",
            "Blob bytes served from a mirror's cache instead of the upstream (bytes saved)",
            mirror_cache_served_bytes.clone(),
        );
        let maint_runs = Family::<JobOutcome, Counter>::default();
        registry.register(
            "maintenance_runs",
            "Maintenance runs by job (gc, retention, scrub) and outcome (ok, problems, failed, interrupted)",
            maint_runs.clone(),
        );
        let maint_last_success = Family::<JobLabel, Gauge>::default();
        registry.register(
            "maintenance_last_success_timestamp_seconds",
            "Unix time of the last run of each job that finished without error (scrub: without problems)",
            maint_last_success.clone(),
        );
        let gc_deleted = Family::<ObjectKind, Counter>::default();
        registry.register(
            "gc_deleted",
            "Objects deleted by garbage collection (manifest, link, blob)",
            gc_deleted.clone(),
        );
        let gc_reclaimed_bytes = Counter::default();
        registry.register(
            "gc_reclaimed_bytes",
            "Bytes of blobs deleted by garbage collection",
            gc_reclaimed_bytes.clone(),
        );
        let retention_deleted = Family::<ObjectKind, Counter>::default();
        registry.register(
            "retention_deleted",
            "Tags and untagged manifests deleted by retention policies",
            retention_deleted.clone(),
        );
        let scrub_problems = Family::<ProblemKind, Gauge>::default();
        registry.register(
            "scrub_problems",
            "Problems the last scrub found, by kind",
            scrub_problems.clone(),
        );
        let scrub_checked = Counter::default();
        registry.register(
            "scrub_objects_checked",
            "Objects (manifests, references, blobs) the scrubber checked",
            scrub_checked.clone(),
        );
        let scrub_repaired = Counter::default();
        registry.register(
            "scrub_repaired",
            "Damaged mirror cache entries the scrubber dropped so they are fetched again",
            scrub_repaired.clone(),
        );
        let blobs_damaged = Counter::default();
        registry.register(
            "blobs_damaged",
            "Requests that found a recorded blob's bytes missing or not of the recorded size in the blob store",
            blobs_damaged.clone(),
        );
        let storage_bytes = Family::<StorageKind, Gauge>::default();
        registry.register(
            "storage_bytes",
            "Bytes of stored blobs by kind (private: used by a private repository; mirror: only cached)",
            storage_bytes.clone(),
        );
        let storage_blobs = Gauge::default();
        registry.register("storage_blobs", "Stored blobs", storage_blobs.clone());
        let upload_sessions = Gauge::default();
        registry.register(
            "upload_sessions",
            "Open upload sessions",
            upload_sessions.clone(),
        );
        let data_size_bytes = Gauge::default();
        registry.register(
            "data_size_bytes",
            "Size of the filesystem holding the data directory",
            data_size_bytes.clone(),
        );
        let data_free_bytes = Gauge::default();
        registry.register(
            "data_free_bytes",
            "Free bytes (for unprivileged users) on the filesystem holding the data directory",
            data_free_bytes.clone(),
        );
        let worker_state = Family::<WorkerStateLabel, Gauge>::default();
        registry.register(
            "worker_state",
            "1 for the state each background worker is in (busy, idle, throttled, failed), 0 for the others",
            worker_state.clone(),
        );
        let worker_last_run = Family::<WorkerLabel, Gauge>::default();
        registry.register(
            "worker_last_run_timestamp_seconds",
            "Unix time each background worker last finished a run of its job (failed runs included)",
            worker_last_run.clone(),
        );
        let worker_failures = Family::<WorkerLabel, Counter>::default();
        registry.register(
            "worker_failures",
            "Failed runs of each background worker's job",
            worker_failures.clone(),
        );
        let build = Family::<BuildInfo, Gauge>::default();
        build
            .get_or_create(&BuildInfo {
                version: env!("CARGO_PKG_VERSION"),
            })
            .set(1);
        registry.register("build_info", "berth version", build);
        Metrics {
            registry,
            http_requests,
            http_duration,
            http_request_bytes,
            http_response_bytes,
            upload_bytes,
            mirror_requests,
            mirror_upstream_bytes,
            mirror_upstream_fetches,
            mirror_evictions,
            mirror_cache_bytes,
            mirror_cache_served_bytes,
            maint_runs,
            maint_last_success,
            gc_deleted,
            gc_reclaimed_bytes,
            retention_deleted,
            scrub_problems,
            scrub_checked,
            scrub_repaired,
            blobs_damaged,
            storage_bytes,
            storage_blobs,
            upload_sessions,
            data_size_bytes,
            data_free_bytes,
            worker_state,
            worker_last_run,
            worker_failures,
        }
    }

    /// The text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    /// Creates a mirror's series at zero, so rates and alerts work before its first request.
    pub fn init_mirror(&self, mirror: &str) {
        for kind in ["manifest", "blob"] {
            for result in ["hit", "miss", "revalidated", "stale", "joined", "error"] {
                let _ = self.mirror_requests.get_or_create(&MirrorLabels {
                    mirror: mirror.to_owned(),
                    kind,
                    result,
                });
            }
        }
        let name = MirrorName {
            mirror: mirror.to_owned(),
        };
        let _ = self.mirror_upstream_bytes.get_or_create(&name);
        let _ = self.mirror_upstream_fetches.get_or_create(&name);
        let _ = self.mirror_cache_served_bytes.get_or_create(&name);
    }

    /// Counts one mirror read.
    pub fn mirror(&self, mirror: &str, kind: &'static str, result: &'static str) {
        self.mirror_requests
            .get_or_create(&MirrorLabels {
                mirror: mirror.to_owned(),
                kind,
                result,
            })
            .inc();
    }
}

/// The process's metrics.
pub fn metrics() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(Metrics::new)
}
