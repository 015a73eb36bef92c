//! The registry workloads, modelled on zot's `zb`: blob push (monolithic and
//! chunked), blob pull, manifest GET/HEAD by tag, tags list, small-image push
//! rate, and pull-through mirroring (in `mirror`). Each workload sets up its
//! own repository (unique per run), then times only the measured phase;
//! server CPU/RSS is metered over that phase.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use hyper::Method;
use hyper::header::{ACCEPT, HeaderValue};
use tokio::task::JoinSet;

use crate::blob::{Blob, GIB, MIB, size_label};
use crate::client::{Conn, Endpoint};
use crate::load::{self, Percentiles, RequestSpec, mb_per_s, ms};
use crate::meter::{ProcMeter, Usage};
use crate::mirror::MirrorTarget;
use crate::registry::{self, MANIFEST_ACCEPT};
use crate::report::{CaseResult, Metric};

/// Sizes, repetitions and durations; `--quick` shrinks them.
#[derive(Clone, Debug)]
pub struct Params {
    pub quick: bool,
    /// Makes repository names and blob content unique per run, so repeated
    /// runs against one registry never hit already-present blobs.
    pub run_id: u64,
    /// (blob size, repetitions) for the push workloads.
    pub push: Vec<(u64, usize)>,
    /// PATCH size for chunked uploads.
    pub chunk: u64,
    /// (blob size, downloads by the single client, downloads by each of the parallel clients).
    pub pull: Vec<(u64, usize, usize)>,
    pub pull_clients: Vec<usize>,
    pub duration: Duration,
    pub manifest_conns: Vec<usize>,
    pub tags: usize,
    pub tag_conns: usize,
    pub images: usize,
    pub image_pushers: usize,
    /// Blob size of the mirror workload's pulls.
    pub mirror_blob: u64,
    /// Concurrent clients of the mirror's cold-pull case.
    pub mirror_clients: usize,
}

impl Params {
    pub fn new(quick: bool, run_id: u64) -> Params {
        let (push, pull, duration, images, mirror_blob) = if quick {
            (
                vec![(MIB, 10), (10 * MIB, 5), (100 * MIB, 2)],
                vec![(100 * MIB, 3, 1)],
                Duration::from_secs(2),
                200,
                64 * MIB,
            )
        } else {
            (
                vec![(MIB, 20), (10 * MIB, 10), (100 * MIB, 5), (GIB, 2)],
                vec![(100 * MIB, 5, 2), (GIB, 2, 1)],
                Duration::from_secs(5),
                1000,
                256 * MIB,
            )
        };
        Params {
            quick,
            run_id,
            push,
            chunk: 16 * MIB,
            pull,
            pull_clients: vec![1, 8],
            duration,
            manifest_conns: vec![1, 32],
            tags: 2000,
            tag_conns: 32,
            images,
            image_pushers: 8,
            mirror_blob,
            mirror_clients: 16,
        }
    }

    /// Deterministic per-run seed for a piece of content.
    pub fn seed(&self, purpose: u64, index: u64) -> u64 {
        let mut x = self.run_id ^ purpose.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        x = (x ^ index).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        x ^ (x >> 31)
    }

    pub fn repo(&self, name: &str) -> String {
        format!("berth-bench-{:x}/{name}", self.run_id & 0xffff_ffff)
    }
}

/// A registry under test.
pub struct Target {
    pub name: String,
    pub version: Option<String>,
    pub endpoint: Endpoint,
    /// Present when the server's PID is known (compare mode, or `run --pid`).
    pub meter: Option<ProcMeter>,
    /// The registry (and upstream) the mirror workload uses for this target, when set up.
    pub mirror: Option<MirrorTarget>,
}

impl Target {
    /// Runs `phase`, metering the server's CPU and peak RSS over exactly that phase.
    async fn measured<T>(
        &self,
        phase: impl Future<Output = Result<T>>,
    ) -> Result<(T, Option<Usage>)> {
        let span = self.meter.as_ref().map(ProcMeter::begin).transpose()?;
        let out = phase.await?;
        let usage = match span {
            Some(span) => Some(span.finish().await?),
            None => None,
        };
        Ok((out, usage))
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Workload {
    /// Blob push: POST + one PUT with the whole body.
    PushMonolithic,
    /// Blob push: POST + 16 MiB PATCHes + closing PUT.
    PushChunked,
    /// Blob pull by 1 and 8 concurrent clients.
    Pull,
    /// Manifest GET and HEAD by tag at 1 and 32 connections.
    Manifest,
    /// Tag PUTs, then tags/list of a 2,000-tag repository at 32 connections.
    TagsList,
    /// Small-image push rate with 8 concurrent pushers.
    ImagePush,
    /// Pull-through mirror of an upstream: cold/warm blob pulls, upstream GET counts, cached manifests.
    Mirror,
}

impl Workload {
    pub const ALL: [Workload; 7] = [
        Workload::PushMonolithic,
        Workload::PushChunked,
        Workload::Pull,
        Workload::Manifest,
        Workload::TagsList,
        Workload::ImagePush,
        Workload::Mirror,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Workload::PushMonolithic => "push monolithic",
            Workload::PushChunked => "push chunked",
            Workload::Pull => "pull",
            Workload::Manifest => "manifest",
            Workload::TagsList => "tags list",
            Workload::ImagePush => "image push",
            Workload::Mirror => "mirror",
        }
    }

    /// Runs the workload on `target`; `progress` receives each case as it
    /// completes. The cases completed before a failure are returned with it.
    pub async fn run(
        self,
        target: &Target,
        params: &Params,
        progress: &dyn Fn(&CaseResult),
    ) -> (Vec<CaseResult>, Result<()>) {
        let mut cases = Vec::new();
        let mut emit = |c: CaseResult| {
            progress(&c);
            cases.push(c);
        };
        let outcome = match self {
            Workload::PushMonolithic => push(target, params, false, &mut emit).await,
            Workload::PushChunked => push(target, params, true, &mut emit).await,
            Workload::Pull => pull(target, params, &mut emit).await,
            Workload::Manifest => manifest(target, params, &mut emit).await,
            Workload::TagsList => tags_list(target, params, &mut emit).await,
            Workload::ImagePush => image_push(target, params, &mut emit).await,
            Workload::Mirror => crate::mirror::run(target, params, &mut emit).await,
        };
        (cases, outcome)
    }
}

/// Blob push throughput for each size. Blobs are generated and hashed before
/// the clock starts; each repetition is a distinct blob.
async fn push(
    target: &Target,
    params: &Params,
    chunked: bool,
    emit: &mut dyn FnMut(CaseResult),
) -> Result<()> {
    let mode = if chunked { "chunked" } else { "monolithic" };
    let repo = params.repo(&format!("push-{mode}"));
    let mut conn = target.endpoint.connect().await?;
    for &(size, reps) in &params.push {
        let mut blobs = Vec::with_capacity(reps);
        for rep in 0..reps {
            blobs.push(
                Blob::generate_async(params.seed(1 + chunked as u64, size ^ rep as u64), size)
                    .await?,
            );
        }
        let (busy, usage) = target
            .measured(async {
                let start = Instant::now();
                for blob in &blobs {
                    if chunked {
                        registry::push_blob_chunked(&mut conn, &repo, blob, params.chunk).await?;
                    } else {
                        registry::push_blob_monolithic(&mut conn, &repo, blob).await?;
                    }
                }
                Ok(start.elapsed())
            })
            .await
            .with_context(|| format!("{mode} push of {}", size_label(size)))?;
        emit(CaseResult {
            workload: format!("push {mode} {}", size_label(size)),
            metrics: vec![
                Metric::higher("MB/s", mb_per_s(size * reps as u64, busy))
                    .against("hash_on_receive"),
            ],
            usage,
        });
    }
    Ok(())
}

/// Blob pull throughput and time to first byte with 1 and N clients. The blob
/// is pushed and read back once (digest-verified) before timing, which also
/// warms the page cache for every registry alike.
async fn pull(target: &Target, params: &Params, emit: &mut dyn FnMut(CaseResult)) -> Result<()> {
    let repo = params.repo("pull");
    let mut conn = target.endpoint.connect().await?;
    for &(size, reps_single, reps_parallel) in &params.pull {
        let blob = Blob::generate_async(params.seed(3, size), size).await?;
        registry::push_blob_monolithic(&mut conn, &repo, &blob)
            .await
            .context("pushing the blob to pull")?;
        registry::fetch_blob_verified(&mut conn, &repo, &blob)
            .await
            .context("verifying the pushed blob")?;
        let path = format!("/v2/{repo}/blobs/{}", blob.digest());
        for &clients in &params.pull_clients {
            let reps = if clients == 1 {
                reps_single
            } else {
                reps_parallel
            };
            let (d, usage) = target
                .measured(load::parallel_downloads(
                    &target.endpoint,
                    &path,
                    size,
                    clients,
                    reps,
                ))
                .await
                .with_context(|| format!("pull of {} by {clients} clients", size_label(size)))?;
            emit(CaseResult {
                workload: format!("pull {} x{clients}", size_label(size)),
                metrics: vec![
                    Metric::higher("MB/s", d.mb_per_s()).against(format!("nginx_large_c{clients}")),
                    Metric::lower("TTFB p50 ms", ms(Percentiles::of(d.ttfb.clone()).p50)),
                ],
                usage,
            });
        }
    }
    Ok(())
}

/// Manifest GET and HEAD by tag, as a client resolving `image:latest` does.
async fn manifest(
    target: &Target,
    params: &Params,
    emit: &mut dyn FnMut(CaseResult),
) -> Result<()> {
    let repo = params.repo("manifest");
    let mut conn = target.endpoint.connect().await?;
    registry::push_small_image(&mut conn, &repo, params.seed(4, 0), "latest")
        .await
        .context("pushing the image whose manifest is fetched")?;
    for method in [Method::GET, Method::HEAD] {
        for &conns in &params.manifest_conns {
            let spec = RequestSpec {
                method: method.clone(),
                path: format!("/v2/{repo}/manifests/latest"),
                headers: vec![(ACCEPT, HeaderValue::from_static(MANIFEST_ACCEPT))],
            };
            let (t, usage) = target
                .measured(load::fixed_duration(
                    &target.endpoint,
                    &spec,
                    conns,
                    params.duration,
                ))
                .await
                .with_context(|| format!("manifest {method} at {conns} connections"))?;
            emit(CaseResult {
                workload: format!("manifest {method} x{conns}"),
                metrics: vec![
                    Metric::higher("req/s", t.per_second())
                        .against(format!("nginx_small_c{conns}")),
                    Metric::lower("p50 ms", ms(t.latency.p50)),
                    Metric::lower("p99 ms", ms(t.latency.p99)),
                ],
                usage,
            });
        }
    }
    Ok(())
}

/// Runs `job(conn, i)` for i in 0..count on `workers` connections, each job
/// timed; returns wall time and per-job latencies. Jobs hand the connection back.
async fn counted_jobs<F, Fut>(
    endpoint: &Endpoint,
    workers: usize,
    count: usize,
    job: F,
) -> Result<(Duration, Vec<Duration>)>
where
    F: Fn(Conn, usize) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = Result<Conn>> + Send,
{
    let next = Arc::new(AtomicUsize::new(0));
    let mut conns = Vec::with_capacity(workers);
    for _ in 0..workers {
        conns.push(endpoint.connect().await?);
    }
    let start = Instant::now();
    let mut tasks = JoinSet::new();
    for mut conn in conns {
        let next = next.clone();
        let job = job.clone();
        tasks.spawn(async move {
            let mut latencies = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= count {
                    break;
                }
                let t = Instant::now();
                conn = job(conn, i).await?;
                latencies.push(t.elapsed());
            }
            Ok::<_, anyhow::Error>(latencies)
        });
    }
    let mut all = Vec::with_capacity(count);
    while let Some(joined) = tasks.join_next().await {
        all.extend(joined.context("worker task panicked")??);
    }
    Ok((start.elapsed(), all))
}

/// Tagging 2,000 tags onto one manifest (reported as its own case: PUT of an
/// existing manifest by tag), then tags/list of that repository.
async fn tags_list(
    target: &Target,
    params: &Params,
    emit: &mut dyn FnMut(CaseResult),
) -> Result<()> {
    let repo = params.repo("tags");
    let tag = |i: usize| format!("tag-{i:05}");
    let mut conn = target.endpoint.connect().await?;
    let image = registry::push_small_image(&mut conn, &repo, params.seed(5, 0), &tag(0))
        .await
        .context("pushing the image to tag")?;
    let manifest = Arc::new(image.manifest);
    let ((wall, lat), usage) = target
        .measured({
            let repo = repo.clone();
            counted_jobs(
                &target.endpoint,
                params.tag_conns,
                params.tags - 1,
                move |mut conn, i| {
                    let repo = repo.clone();
                    let manifest = manifest.clone();
                    async move {
                        registry::put_manifest(&mut conn, &repo, &tag(i + 1), &manifest).await?;
                        Ok(conn)
                    }
                },
            )
        })
        .await
        .context("tagging")?;
    let p = Percentiles::of(lat);
    emit(CaseResult {
        workload: format!("tag PUT x{}", params.tag_conns),
        metrics: vec![
            Metric::higher("tags/s", (params.tags - 1) as f64 / wall.as_secs_f64()),
            Metric::lower("p50 ms", ms(p.p50)),
            Metric::lower("p99 ms", ms(p.p99)),
        ],
        usage,
    });

    let (listed, paginated) = registry::count_tags(&mut conn, &repo).await?;
    if listed != params.tags && !paginated {
        bail!("tags/list returned {listed} tags, expected {}", params.tags);
    }
    let spec = RequestSpec {
        method: Method::GET,
        path: format!("/v2/{repo}/tags/list"),
        headers: vec![],
    };
    let (t, usage) = target
        .measured(load::fixed_duration(
            &target.endpoint,
            &spec,
            params.tag_conns,
            params.duration,
        ))
        .await
        .context("tags/list load")?;
    let mut metrics = vec![
        Metric::higher("req/s", t.per_second()),
        Metric::lower("p50 ms", ms(t.latency.p50)),
        Metric::lower("p99 ms", ms(t.latency.p99)),
    ];
    if paginated {
        // A registry that pages by default does less work per request; show how much.
        metrics.push(Metric::higher("tags/response (paginated)", listed as f64));
    }
    emit(CaseResult {
        workload: format!("tags list {} tags x{}", params.tags, params.tag_conns),
        metrics,
        usage,
    });
    Ok(())
}

/// Many distinct small images (config + 4 KiB layer + manifest, 5 requests
/// each) pushed by concurrent pushers, like a CI fleet publishing builds.
async fn image_push(
    target: &Target,
    params: &Params,
    emit: &mut dyn FnMut(CaseResult),
) -> Result<()> {
    let repo = params.repo("images");
    let seed_base = params.seed(6, 0);
    let ((wall, lat), usage) = target
        .measured(counted_jobs(
            &target.endpoint,
            params.image_pushers,
            params.images,
            move |mut conn, i| {
                let repo = repo.clone();
                async move {
                    registry::push_small_image(
                        &mut conn,
                        &repo,
                        seed_base ^ i as u64,
                        &format!("img-{i:05}"),
                    )
                    .await?;
                    Ok(conn)
                }
            },
        ))
        .await
        .context("small-image push")?;
    let p = Percentiles::of(lat);
    emit(CaseResult {
        workload: format!("image push {} x{}", params.images, params.image_pushers),
        metrics: vec![
            Metric::higher("images/s", params.images as f64 / wall.as_secs_f64()),
            Metric::lower("p50 ms", ms(p.p50)),
            Metric::lower("p99 ms", ms(p.p99)),
        ],
        usage,
    });
    Ok(())
}
