//! The `mirror` workload group: pull-through caching of an upstream registry.
//!
//! Set-up: a plain CNCF distribution as the upstream (filesystem storage on a
//! loopback port), with a counting HTTP proxy in front of it that lives in
//! this process ([`CountingProxy`]): it forwards every request to the upstream,
//! streaming both ways without buffering, and counts requests per method and
//! path, so the upstream GETs a mirror makes for one blob can be counted
//! exactly. The registries under test mirror the proxy, not the upstream.
//!
//! Per target, with fresh repositories and fresh blobs (so every case starts
//! from a cold cache): cold pull by 1 and by N concurrent clients, a direct pull
//! from the upstream as the reference, a warm pull of the now cached blob, and
//! manifest GET by tag while the cached tag is fresh. Every blob pull is
//! digest-verified by the client while it streams (inside the timed phase, the
//! direct pull included, so the ratios compare like with like).

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context as TaskContext, Poll};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Either, Full};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::client::conn::http1::SendRequest;
use hyper::header::{ACCEPT, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use sha2::{Digest, Sha256};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Barrier;
use tokio::task::{JoinHandle, JoinSet};

use crate::blob::{Blob, hex, size_label};
use crate::client::{Conn, Endpoint, ReqBody, expect_status};
use crate::load::{self, Percentiles, RequestSpec, mb_per_s, ms};
use crate::meter::{ProcMeter, Usage};
use crate::registry::{self, MANIFEST_ACCEPT};
use crate::report::{CaseResult, Metric};
use crate::servers::{self, ServerProcess, TempDir};
use crate::workloads::{Params, Target};

/// Requests the counting proxy forwarded, and how many are still streaming.
#[derive(Default)]
pub struct ProxyStats {
    counts: Mutex<HashMap<(Method, String), u64>>,
    inflight: AtomicUsize,
}

impl ProxyStats {
    fn record(&self, method: &Method, path: &str) {
        let mut counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        *counts
            .entry((method.clone(), path.to_string()))
            .or_default() += 1;
    }

    /// Requests so far whose method and path (without query) satisfy `pred`.
    pub fn count(&self, pred: impl Fn(&Method, &str) -> bool) -> u64 {
        let counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        counts
            .iter()
            .filter(|((m, p), _)| pred(m, p))
            .map(|(_, n)| *n)
            .sum()
    }

    /// Waits until no upstream request has been in flight for `quiet`
    /// (background fetches a mirror finishes after its client is served),
    /// at most `timeout`. False on timeout.
    pub async fn quiesce(&self, quiet: Duration, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut idle_since: Option<Instant> = None;
        while Instant::now() < deadline {
            if self.inflight.load(Ordering::SeqCst) == 0 {
                if idle_since.get_or_insert_with(Instant::now).elapsed() >= quiet {
                    return true;
                }
            } else {
                idle_since = None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        false
    }
}

/// Marks one forwarded request in flight until dropped.
struct InflightGuard(Arc<ProxyStats>);

impl InflightGuard {
    fn new(stats: &Arc<ProxyStats>) -> InflightGuard {
        stats.inflight.fetch_add(1, Ordering::SeqCst);
        InflightGuard(stats.clone())
    }
}

impl Drop for InflightGuard {
    fn drop(&mut self) {
        self.0.inflight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The upstream's response body, passed on frame by frame; the request
/// counts as in flight until the body ends, fails, or is dropped.
struct Tracked {
    inner: Incoming,
    guard: Option<InflightGuard>,
}

impl Body for Tracked {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        if matches!(polled, Poll::Ready(None) | Poll::Ready(Some(Err(_)))) {
            this.guard = None;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

type ProxyBody = Either<Tracked, Full<Bytes>>;
type UpstreamSlot = tokio::sync::Mutex<Option<SendRequest<Incoming>>>;

/// An HTTP/1.1 forwarding proxy in this process that counts requests per
/// method and path. Each downstream connection gets its own upstream
/// connection (opened on its first request, reopened if the upstream closed
/// it); bodies are streamed through, never buffered. Stopped on drop.
pub struct CountingProxy {
    port: u16,
    pub stats: Arc<ProxyStats>,
    task: JoinHandle<()>,
}

impl CountingProxy {
    /// Listens on 127.0.0.1:`port` (0: any free port) and forwards to `upstream`.
    pub async fn start(port: u16, upstream: &Endpoint) -> Result<CountingProxy> {
        let listener = TcpListener::bind(("127.0.0.1", port))
            .await
            .with_context(|| format!("binding the counting proxy to 127.0.0.1:{port}"))?;
        let port = listener.local_addr().context("reading proxy port")?.port();
        let stats = Arc::new(ProxyStats::default());
        let task = tokio::spawn(accept_loop(
            listener,
            upstream.authority().to_string(),
            stats.clone(),
        ));
        Ok(CountingProxy { port, stats, task })
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

impl Drop for CountingProxy {
    fn drop(&mut self) {
        // Dropping the accept loop drops its JoinSet, which aborts every connection task.
        self.task.abort();
    }
}

async fn accept_loop(listener: TcpListener, upstream: String, stats: Arc<ProxyStats>) {
    let mut conns = JoinSet::new();
    loop {
        while conns.try_join_next().is_some() {}
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        conns.spawn(serve_conn(stream, upstream.clone(), stats.clone()));
    }
}

async fn serve_conn(stream: TcpStream, upstream: String, stats: Arc<ProxyStats>) {
    let _ = stream.set_nodelay(true);
    let slot: Arc<UpstreamSlot> = Arc::default();
    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
        let slot = slot.clone();
        let upstream = upstream.clone();
        let stats = stats.clone();
        async move { Ok::<_, Infallible>(forward(req, &slot, &upstream, &stats).await) }
    });
    let _ = hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(stream), service)
        .await;
}

async fn forward(
    req: Request<Incoming>,
    slot: &UpstreamSlot,
    upstream: &str,
    stats: &Arc<ProxyStats>,
) -> Response<ProxyBody> {
    stats.record(req.method(), req.uri().path());
    let guard = InflightGuard::new(stats);
    match send_upstream(req, slot, upstream).await {
        Ok(resp) => resp.map(|inner| {
            Either::Left(Tracked {
                inner,
                guard: Some(guard),
            })
        }),
        Err(e) => {
            drop(guard);
            let mut resp = Response::new(Either::Right(Full::new(Bytes::from(format!(
                "counting proxy: {e:#}"
            )))));
            *resp.status_mut() = StatusCode::BAD_GATEWAY;
            resp
        }
    }
}

async fn send_upstream(
    req: Request<Incoming>,
    slot: &UpstreamSlot,
    upstream: &str,
) -> Result<Response<Incoming>> {
    let mut slot = slot.lock().await;
    let reusable = match slot.as_mut() {
        Some(sender) if !sender.is_closed() => sender.ready().await.is_ok(),
        _ => false,
    };
    if !reusable {
        let stream = TcpStream::connect(upstream)
            .await
            .with_context(|| format!("connecting to upstream {upstream}"))?;
        stream.set_nodelay(true).context("setting TCP_NODELAY")?;
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .context("HTTP handshake with the upstream")?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        *slot = Some(sender);
    }
    let sender = slot.as_mut().context("no upstream connection")?;
    sender
        .send_request(req)
        .await
        .context("forwarding to the upstream")
}

/// The upstream registry and the counting proxy in front of it.
pub struct MirrorEnv {
    pub upstream: ServerProcess,
    pub proxy: CountingProxy,
}

impl MirrorEnv {
    /// Starts a plain distribution (`bin`) as the upstream, data under
    /// `scratch`, and the counting proxy on `proxy_port` (0: any free port).
    pub async fn start(
        bin: &Path,
        scratch: &TempDir,
        log_dir: &Path,
        proxy_port: u16,
    ) -> Result<MirrorEnv> {
        let upstream = servers::start_distribution_with(
            bin,
            &servers::DistributionStorage::Filesystem(&scratch.subdir("upstream-data")?),
            log_dir,
            "upstream",
            None,
        )
        .await
        .context("starting the upstream registry for the mirror workload")?;
        let proxy = CountingProxy::start(proxy_port, &upstream.endpoint).await?;
        Ok(MirrorEnv { upstream, proxy })
    }

    /// What a target needs to run the mirror workload: the registry that
    /// mirrors this proxy, and the repository prefix it serves the upstream under.
    pub fn target(
        &self,
        endpoint: Endpoint,
        prefix: &str,
        meter: Option<ProcMeter>,
    ) -> MirrorTarget {
        let prefix = prefix.trim_matches('/');
        MirrorTarget {
            endpoint,
            prefix: if prefix.is_empty() {
                String::new()
            } else {
                format!("{prefix}/")
            },
            meter,
            upstream: self.upstream.endpoint.clone(),
            proxy_endpoint: Endpoint::from_port(self.proxy.port),
            stats: self.proxy.stats.clone(),
        }
    }
}

/// A registry acting as pull-through cache of the counting proxy.
pub struct MirrorTarget {
    pub endpoint: Endpoint,
    /// Prepended to upstream repository names: `up/` for `berth --mirror up=…`, empty for distribution's proxy mode.
    pub prefix: String,
    pub meter: Option<ProcMeter>,
    /// The upstream itself, for setup pushes and the direct-pull reference.
    pub upstream: Endpoint,
    /// The counting proxy the mirror fetches through.
    pub proxy_endpoint: Endpoint,
    pub stats: Arc<ProxyStats>,
}

impl MirrorTarget {
    /// Lets background upstream fetches finish and flushes dirty pages, so the
    /// next phase starts on a quiet machine and its upstream counts are final.
    async fn settle(&self, who: &str) {
        if !self
            .stats
            .quiesce(Duration::from_millis(300), Duration::from_secs(120))
            .await
        {
            eprintln!("[{who}]   warning: upstream requests still in flight after 120 s");
        }
        crate::flush_dirty_pages().await;
    }

    fn blob_gets(&self, repo: &str, blob: &Blob) -> u64 {
        let path = format!("/v2/{repo}/blobs/{}", blob.digest());
        self.stats.count(|m, p| *m == Method::GET && p == path)
    }
}

async fn measured<T>(
    meter: Option<&ProcMeter>,
    phase: impl Future<Output = Result<T>>,
) -> Result<(T, Option<Usage>)> {
    let span = meter.map(ProcMeter::begin).transpose()?;
    let out = phase.await?;
    let usage = match span {
        Some(span) => Some(span.finish().await?),
        None => None,
    };
    Ok((out, usage))
}

/// Outcome of [`pull_verified`].
struct Pulls {
    bytes: u64,
    elapsed: Duration,
    ttfb: Vec<Duration>,
    /// Per client, the pause before the last body frame (a registry that
    /// holds back the final byte until the blob is verified and stored shows it here).
    last_gap: Vec<Duration>,
    verified: usize,
    failures: Vec<String>,
}

impl Pulls {
    fn mb_per_s(&self) -> f64 {
        mb_per_s(self.bytes, self.elapsed)
    }

    fn ttfb_p50_ms(&self) -> f64 {
        ms(Percentiles::of(self.ttfb.clone()).p50)
    }

    fn last_gap_p50_ms(&self) -> f64 {
        ms(Percentiles::of(self.last_gap.clone()).p50)
    }

    fn problems(&self, what: &str) -> Option<String> {
        if self.failures.is_empty() {
            return None;
        }
        let mut distinct = self.failures.clone();
        distinct.sort();
        distinct.dedup();
        Some(format!(
            "{what}: {} of {} client(s) did not get the blob: {}",
            self.failures.len(),
            self.failures.len() + self.verified,
            distinct.join("; ")
        ))
    }
}

/// `clients` connections (opened before the clock starts) each GET `path`
/// once, hashing the body as it arrives. A client that fails or receives
/// other bytes than `blob` is recorded, not fatal, so the counts still show.
async fn pull_verified(ep: &Endpoint, path: &str, blob: &Blob, clients: usize) -> Result<Pulls> {
    let barrier = Arc::new(Barrier::new(clients + 1));
    let mut tasks = JoinSet::new();
    for _ in 0..clients {
        let mut conn = ep.connect().await?;
        let barrier = barrier.clone();
        let path = path.to_string();
        tasks.spawn(async move {
            barrier.wait().await;
            fetch_hashed(&mut conn, &path).await
        });
    }
    barrier.wait().await;
    let start = Instant::now();
    let mut out = Pulls {
        bytes: 0,
        elapsed: Duration::ZERO,
        ttfb: Vec::new(),
        last_gap: Vec::new(),
        verified: 0,
        failures: Vec::new(),
    };
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok(Ok(f)) => {
                let Fetched {
                    bytes: n,
                    ttfb,
                    last_gap,
                    digest,
                } = f;
                out.bytes += n;
                out.ttfb.push(ttfb);
                out.last_gap.push(last_gap);
                if n == blob.size() && digest == blob.digest() {
                    out.verified += 1;
                } else {
                    out.failures
                        .push(format!("wrong bytes ({n} bytes, digest {digest})"));
                }
            }
            Ok(Err(e)) => out.failures.push(format!("{e:#}")),
            Err(e) => out.failures.push(format!("client task failed: {e}")),
        }
    }
    out.elapsed = start.elapsed();
    Ok(out)
}

/// What one client got.
struct Fetched {
    bytes: u64,
    ttfb: Duration,
    last_gap: Duration,
    digest: String,
}

/// GET `path`, hashing the body as it arrives.
async fn fetch_hashed(conn: &mut Conn, path: &str) -> Result<Fetched> {
    let start = Instant::now();
    let req = conn.request(Method::GET, path).body(ReqBody::Empty)?;
    let resp = expect_status(conn.send(req).await?, StatusCode::OK)
        .await
        .with_context(|| format!("GET {path}"))?;
    let mut body = resp.into_body();
    let mut hasher = Sha256::new();
    let mut n = 0u64;
    let mut first = None;
    let (mut prev, mut last) = (start, start);
    while let Some(frame) = body.frame().await {
        let frame = frame.with_context(|| format!("GET {path}: body after {n} bytes"))?;
        if let Ok(data) = frame.into_data() {
            if data.is_empty() {
                continue;
            }
            if first.is_none() {
                first = Some(start.elapsed());
            }
            (prev, last) = (last, Instant::now());
            n += data.len() as u64;
            hasher.update(&data);
        }
    }
    Ok(Fetched {
        bytes: n,
        ttfb: first.unwrap_or_else(|| start.elapsed()),
        last_gap: last - prev,
        digest: format!("sha256:{}", hex(&hasher.finalize())),
    })
}

/// Lower-case letters and digits of a target name, for repository names.
fn slug(name: &str) -> String {
    name.chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .map(|c| c.to_ascii_lowercase())
        .collect()
}

/// FNV-1a of the target name: distinct blob seeds per target.
fn name_key(name: &str) -> u64 {
    name.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
    })
}

/// The mirror workload on one target (see the module docs). Problems that
/// leave numbers worth showing (wrong bytes, failed clients) are reported
/// after every case has run.
pub async fn run(target: &Target, params: &Params, emit: &mut dyn FnMut(CaseResult)) -> Result<()> {
    let Some(m) = &target.mirror else {
        bail!(
            "no mirror set up for this target (`run` needs --mirror-proxy-port and a registry mirroring it)"
        );
    };
    let who = target.name.as_str();
    let size = params.mirror_blob;
    let label = size_label(size);
    let slug = slug(who);
    let key = name_key(who);
    let repo1 = params.repo(&format!("mirror-{slug}-cold1"));
    let repo_n = params.repo(&format!("mirror-{slug}-cold{}", params.mirror_clients));
    let repo_manifest = params.repo(&format!("mirror-{slug}-manifest"));
    let mut problems = Vec::new();

    // Setup: fresh content on the upstream, pushed directly (not through the proxy).
    eprintln!("[{who}]   pushing 2 x {label} and a small image to the upstream...");
    let blob1 = Blob::generate_async(params.seed(7, key.wrapping_mul(2)), size).await?;
    let blob_n = Blob::generate_async(params.seed(7, key.wrapping_mul(2) + 1), size).await?;
    let mut up = m.upstream.connect().await?;
    for (repo, blob) in [(&repo1, &blob1), (&repo_n, &blob_n)] {
        registry::push_blob_monolithic(&mut up, repo, blob)
            .await
            .context("pushing a blob to the upstream")?;
    }
    let image = registry::push_small_image(&mut up, &repo_manifest, params.seed(8, key), "latest")
        .await
        .context("pushing the small image to the upstream")?;
    drop(up);
    let upstream_path = |repo: &str, blob: &Blob| format!("/v2/{repo}/blobs/{}", blob.digest());
    let mirror_path =
        |repo: &str, blob: &Blob| format!("/v2/{}{repo}/blobs/{}", m.prefix, blob.digest());
    m.settle(who).await;

    // The reference: the same blob straight from the upstream, no proxy, no mirror.
    let direct = pull_verified(&m.upstream, &upstream_path(&repo1, &blob1), &blob1, 1)
        .await
        .context("direct pull from the upstream")?;
    if let Some(p) = direct.problems("direct pull") {
        bail!("{p}");
    }
    let direct_mbps = direct.mb_per_s();
    m.settle(who).await;
    // The same through the counting proxy: what the proxy hop alone costs a mirror.
    let via_proxy = pull_verified(&m.proxy_endpoint, &upstream_path(&repo1, &blob1), &blob1, 1)
        .await
        .context("pull through the counting proxy")?;
    if let Some(p) = via_proxy.problems("pull through the counting proxy") {
        bail!("{p}");
    }
    m.settle(who).await;

    // Cold pull by one client.
    let before = m.blob_gets(&repo1, &blob1);
    let (cold, usage) = measured(
        m.meter.as_ref(),
        pull_verified(&m.endpoint, &mirror_path(&repo1, &blob1), &blob1, 1),
    )
    .await
    .context("cold pull by 1 client")?;
    m.settle(who).await;
    emit(CaseResult {
        workload: format!("mirror cold pull {label} x1"),
        metrics: vec![
            Metric::higher("MB/s", cold.mb_per_s()),
            Metric::lower("TTFB p50 ms", cold.ttfb_p50_ms()),
            Metric::lower("last-frame wait ms", cold.last_gap_p50_ms()),
            Metric::higher("fraction of direct MB/s", cold.mb_per_s() / direct_mbps),
            Metric::lower(
                "upstream GETs",
                (m.blob_gets(&repo1, &blob1) - before) as f64,
            ),
        ],
        usage,
    });
    problems.extend(cold.problems("cold pull x1"));

    // Cold pull of another blob by N concurrent clients.
    let clients = params.mirror_clients;
    let (cold_n, usage) = measured(
        m.meter.as_ref(),
        pull_verified(
            &m.endpoint,
            &mirror_path(&repo_n, &blob_n),
            &blob_n,
            clients,
        ),
    )
    .await
    .with_context(|| format!("cold pull by {clients} clients"))?;
    m.settle(who).await;
    emit(CaseResult {
        workload: format!("mirror cold pull {label} x{clients} concurrent"),
        metrics: vec![
            Metric::higher("MB/s", cold_n.mb_per_s()),
            Metric::lower("TTFB p50 ms", cold_n.ttfb_p50_ms()),
            Metric::lower("upstream GETs", m.blob_gets(&repo_n, &blob_n) as f64),
            Metric::higher("clients verified", cold_n.verified as f64),
        ],
        usage,
    });
    problems.extend(cold_n.problems(&format!("cold pull x{clients}")));

    emit(CaseResult {
        workload: format!("direct pull {label} x1 (upstream)"),
        metrics: vec![
            Metric::higher("MB/s", direct_mbps),
            Metric::lower("TTFB p50 ms", direct.ttfb_p50_ms()),
            Metric::higher("MB/s via counting proxy", via_proxy.mb_per_s()),
        ],
        usage: None,
    });

    // The first blob again, now cached.
    let before = m.blob_gets(&repo1, &blob1);
    let (warm, usage) = measured(
        m.meter.as_ref(),
        pull_verified(&m.endpoint, &mirror_path(&repo1, &blob1), &blob1, 1),
    )
    .await
    .context("warm pull")?;
    m.settle(who).await;
    emit(CaseResult {
        workload: format!("mirror warm pull {label} x1"),
        metrics: vec![
            Metric::higher("MB/s", warm.mb_per_s()).against("nginx_large_c1"),
            Metric::lower("TTFB p50 ms", warm.ttfb_p50_ms()),
            Metric::higher("fraction of direct MB/s", warm.mb_per_s() / direct_mbps),
            Metric::lower(
                "upstream GETs",
                (m.blob_gets(&repo1, &blob1) - before) as f64,
            ),
        ],
        usage,
    });
    problems.extend(warm.problems("warm pull"));

    // Manifest by tag: one GET caches it (checked byte for byte), then load within the tag TTL.
    let manifest_path = format!("/v2/{}{repo_manifest}/manifests/latest", m.prefix);
    let mut conn = m.endpoint.connect().await?;
    let req = conn
        .request(Method::GET, &manifest_path)
        .header(ACCEPT, MANIFEST_ACCEPT)
        .body(ReqBody::Empty)?;
    let (_, body) = conn
        .call(req, StatusCode::OK)
        .await
        .context("first manifest GET through the mirror")?;
    if body != image.manifest {
        problems.push(format!(
            "manifest through the mirror differs from the pushed one ({} vs {} bytes)",
            body.len(),
            image.manifest.len()
        ));
    }
    drop(conn);
    m.settle(who).await;
    let repo_prefix = format!("/v2/{repo_manifest}/");
    let upstream_requests = || m.stats.count(|_, p| p.starts_with(&repo_prefix));
    for &conns in &params.manifest_conns {
        let spec = RequestSpec {
            method: Method::GET,
            path: manifest_path.clone(),
            headers: vec![(ACCEPT, HeaderValue::from_static(MANIFEST_ACCEPT))],
        };
        let before = upstream_requests();
        let (t, usage) = measured(
            m.meter.as_ref(),
            load::fixed_duration(&m.endpoint, &spec, conns, params.duration),
        )
        .await
        .with_context(|| format!("mirror manifest GET at {conns} connections"))?;
        m.settle(who).await;
        emit(CaseResult {
            workload: format!("mirror manifest GET x{conns} (cached tag)"),
            metrics: vec![
                Metric::higher("req/s", t.per_second()).against(format!("nginx_small_c{conns}")),
                Metric::lower("p50 ms", ms(t.latency.p50)),
                Metric::lower("p99 ms", ms(t.latency.p99)),
                Metric::lower("upstream requests", (upstream_requests() - before) as f64),
            ],
            usage,
        });
    }

    if !problems.is_empty() {
        bail!("{}", problems.join("; "));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slugs_and_keys() {
        assert_eq!(slug("Distribution-proxy"), "distributionproxy");
        assert_ne!(name_key("berth"), name_key("distribution"));
    }

    /// The proxy forwards and counts; the body arrives intact.
    #[tokio::test]
    async fn proxy_forwards_and_counts() {
        use http_body_util::Full;
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let origin = tokio::spawn(async move {
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(|req: Request<Incoming>| async move {
                        let body = format!("{} {}", req.method(), req.uri().path());
                        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(body))))
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        let proxy = CountingProxy::start(0, &Endpoint::from_port(port))
            .await
            .unwrap();
        let ep = Endpoint::parse(&proxy.url()).unwrap();
        let mut conn = ep.connect().await.unwrap();
        for _ in 0..3 {
            let req = conn
                .request(Method::GET, "/v2/a/blobs/x?q=1")
                .body(ReqBody::Empty)
                .unwrap();
            let (_, body) = conn.call(req, StatusCode::OK).await.unwrap();
            assert_eq!(&body[..], b"GET /v2/a/blobs/x");
        }
        assert_eq!(
            proxy
                .stats
                .count(|m, p| *m == Method::GET && p == "/v2/a/blobs/x"),
            3
        );
        assert!(
            proxy
                .stats
                .quiesce(Duration::from_millis(10), Duration::from_secs(5))
                .await
        );
        origin.abort();
    }
}
