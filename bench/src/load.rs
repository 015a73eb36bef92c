//! Generic load drivers shared by registry workloads and the nginx ceiling:
//! N clients downloading a large object, and N connections hammering one URL
//! for a fixed time. Each worker owns one connection, opened before the clock
//! starts, and all workers are released together by a barrier.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use http_body_util::BodyExt;
use hyper::header::{HeaderName, HeaderValue};
use hyper::{Method, StatusCode};
use tokio::sync::Barrier;
use tokio::task::JoinSet;

use crate::client::{Endpoint, ReqBody, expect_status, read_expect};

/// Latency percentiles over a set of samples.
#[derive(Clone, Copy, Debug, Default)]
pub struct Percentiles {
    pub p50: Duration,
    pub p99: Duration,
}

impl Percentiles {
    /// Nearest-rank percentiles; empty input gives zeros.
    pub fn of(mut samples: Vec<Duration>) -> Percentiles {
        if samples.is_empty() {
            return Percentiles::default();
        }
        samples.sort_unstable();
        let rank = |p: f64| {
            let idx = ((p * samples.len() as f64).ceil() as usize).clamp(1, samples.len()) - 1;
            samples[idx]
        };
        Percentiles {
            p50: rank(0.50),
            p99: rank(0.99),
        }
    }
}

/// Outcome of [`parallel_downloads`].
pub struct Downloads {
    pub bytes: u64,
    pub elapsed: Duration,
    /// Time from sending the request to the first body byte, per download.
    pub ttfb: Vec<Duration>,
}

impl Downloads {
    pub fn mb_per_s(&self) -> f64 {
        mb_per_s(self.bytes, self.elapsed)
    }
}

/// Decimal megabytes per second, the unit zb and most tools report.
pub fn mb_per_s(bytes: u64, elapsed: Duration) -> f64 {
    bytes as f64 / 1e6 / elapsed.as_secs_f64().max(1e-9)
}

/// `clients` connections each GET `path` `reps` times back to back, checking
/// the length is `expected_len`. Throughput is total bytes over wall time.
pub async fn parallel_downloads(
    ep: &Endpoint,
    path: &str,
    expected_len: u64,
    clients: usize,
    reps: usize,
) -> Result<Downloads> {
    let barrier = Arc::new(Barrier::new(clients + 1));
    let mut tasks = JoinSet::new();
    for _ in 0..clients {
        let mut conn = ep.connect().await?;
        let barrier = barrier.clone();
        let path = path.to_string();
        tasks.spawn(async move {
            barrier.wait().await;
            let mut ttfbs = Vec::with_capacity(reps);
            let mut total = 0u64;
            for _ in 0..reps {
                let start = Instant::now();
                let req = conn.request(Method::GET, &path).body(ReqBody::Empty)?;
                let resp = expect_status(conn.send(req).await?, StatusCode::OK)
                    .await
                    .with_context(|| format!("GET {path}"))?;
                let mut body = resp.into_body();
                let mut n = 0u64;
                let mut first = None;
                while let Some(frame) = body.frame().await {
                    if let Ok(data) = frame
                        .with_context(|| format!("reading {path}"))?
                        .into_data()
                    {
                        if first.is_none() && !data.is_empty() {
                            first = Some(start.elapsed());
                        }
                        n += data.len() as u64;
                    }
                }
                if n != expected_len {
                    bail!("GET {path}: got {n} bytes, expected {expected_len}");
                }
                ttfbs.push(first.unwrap_or_else(|| start.elapsed()));
                total += n;
            }
            Ok::<_, anyhow::Error>((total, ttfbs))
        });
    }
    barrier.wait().await;
    let start = Instant::now();
    let mut out = Downloads {
        bytes: 0,
        elapsed: Duration::ZERO,
        ttfb: Vec::new(),
    };
    while let Some(joined) = tasks.join_next().await {
        let (bytes, ttfb) = joined.context("download task panicked")??;
        out.bytes += bytes;
        out.ttfb.extend(ttfb);
    }
    out.elapsed = start.elapsed();
    Ok(out)
}

/// One request shape for [`fixed_duration`].
#[derive(Clone)]
pub struct RequestSpec {
    pub method: Method,
    pub path: String,
    pub headers: Vec<(HeaderName, HeaderValue)>,
}

/// Outcome of [`fixed_duration`].
pub struct Throughput {
    pub requests: u64,
    pub elapsed: Duration,
    pub latency: Percentiles,
}

impl Throughput {
    pub fn per_second(&self) -> f64 {
        self.requests as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// `conns` connections send `spec` back to back until `duration` has passed.
/// Any status but 200 fails the run: a fast stream of errors is not a result.
pub async fn fixed_duration(
    ep: &Endpoint,
    spec: &RequestSpec,
    conns: usize,
    duration: Duration,
) -> Result<Throughput> {
    let barrier = Arc::new(Barrier::new(conns + 1));
    let mut tasks = JoinSet::new();
    for _ in 0..conns {
        let mut conn = ep.connect().await?;
        let barrier = barrier.clone();
        let spec = spec.clone();
        tasks.spawn(async move {
            barrier.wait().await;
            let deadline = Instant::now() + duration;
            let mut latencies = Vec::with_capacity(4096);
            while Instant::now() < deadline {
                let start = Instant::now();
                let mut req = conn.request(spec.method.clone(), &spec.path);
                for (k, v) in &spec.headers {
                    req = req.header(k, v);
                }
                let resp = conn.send(req.body(ReqBody::Empty)?).await?;
                read_expect(resp, StatusCode::OK)
                    .await
                    .with_context(|| format!("{} {}", spec.method, spec.path))?;
                latencies.push(start.elapsed());
            }
            Ok::<_, anyhow::Error>(latencies)
        });
    }
    barrier.wait().await;
    let start = Instant::now();
    let mut all = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        all.extend(joined.context("load task panicked")??);
    }
    Ok(Throughput {
        requests: all.len() as u64,
        elapsed: start.elapsed(),
        latency: Percentiles::of(all),
    })
}

pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_nearest_rank() {
        let samples: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        let p = Percentiles::of(samples);
        assert_eq!(p.p50, Duration::from_millis(50));
        assert_eq!(p.p99, Duration::from_millis(99));
        assert_eq!(Percentiles::of(vec![]).p50, Duration::ZERO);
    }
}
