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

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BuildInfo {
    pub version: &'static str,
}

pub struct Metrics {
    registry: Registry,
    pub http_requests: Family<HttpLabels, Counter>,
    pub http_duration: Family<HttpLabels, Histogram>,
    pub mirror_requests: Family<MirrorLabels, Counter>,
    pub mirror_upstream_bytes: Family<MirrorName, Counter>,
    pub mirror_upstream_fetches: Family<MirrorName, Counter>,
    pub mirror_evictions: Family<MirrorName, Counter>,
    pub mirror_cache_bytes: Family<MirrorName, Gauge>,
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
            mirror_requests,
            mirror_upstream_bytes,
            mirror_upstream_fetches,
            mirror_evictions,
            mirror_cache_bytes,
        }
    }

    /// The text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
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
