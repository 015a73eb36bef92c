//! Upper bounds on this machine that put the registry numbers in context:
//!
//! * hash-on-receive: an in-process hyper server that SHA-256 hashes an
//!   upload and discards it. A registry must at least receive and hash every
//!   pushed byte, so its push MB/s cannot beat this (on the same 2 cores,
//!   with the same client).
//! * disk write: 1 GiB written to a file in the data directory and fsynced,
//!   the bound for a registry that makes pushed blobs durable.
//! * nginx: static files over HTTP/1.1 — a 100 MiB "blob" to 1 and 8 clients
//!   and a manifest-sized file at 1 and 32 connections. What a mature C server
//!   achieves for the pull and manifest-GET workloads with the same client.
//!   The large file is served with and without sendfile; the better counts.

use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::CONTENT_LENGTH;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use sha2::{Digest, Sha256};
use tokio::sync::oneshot;

use crate::blob::{Blob, GIB, MIB, hex, size_label};
use crate::client::Endpoint;
use crate::load::{self, RequestSpec, mb_per_s};
use crate::registry;
use crate::report::Ceiling;
use crate::servers::{self, TempDir};
use crate::workloads::Params;

/// Measures all ceilings. A ceiling that cannot be measured becomes a note
/// instead of failing the run: the registry numbers are still worth having.
pub async fn measure(
    params: &Params,
    data_dir: &Path,
    scratch: &TempDir,
) -> (Vec<Ceiling>, Vec<String>) {
    let mut ceilings = Vec::new();
    let mut notes = Vec::new();

    eprintln!("ceiling: hash-on-receive (1 GiB upload to an in-process SHA-256 sink)...");
    match hash_on_receive(params).await {
        Ok(v) => ceilings.push(Ceiling {
            key: "hash_on_receive".into(),
            label: "hash-on-receive upload, 1 GiB, no disk".into(),
            unit: "MB/s",
            value: v,
        }),
        Err(e) => notes.push(format!("hash-on-receive ceiling failed: {e:#}")),
    }

    eprintln!(
        "ceiling: disk write (1 GiB + fsync in {})...",
        data_dir.display()
    );
    match disk_write(data_dir, GIB).await {
        Ok(v) => ceilings.push(Ceiling {
            key: "disk_write".into(),
            label: "disk write 1 GiB + fsync".into(),
            unit: "MB/s",
            value: v,
        }),
        Err(e) => notes.push(format!("disk write ceiling failed: {e:#}")),
    }

    match servers::find_nginx() {
        None => notes.push(
            "nginx not installed (apt-get install nginx): nginx ceilings skipped".to_string(),
        ),
        Some(bin) => {
            eprintln!("ceiling: nginx static files ({})...", bin.display());
            match nginx(&bin, params, scratch).await {
                Ok(mut found) => ceilings.append(&mut found),
                Err(e) => notes.push(format!("nginx ceiling failed: {e:#}")),
            }
        }
    }
    (ceilings, notes)
}

/// Uploads a 1 GiB blob (same client code path as a registry push) to a
/// hyper server on its own thread and runtime that only hashes the body.
async fn hash_on_receive(params: &Params) -> Result<f64> {
    let blob = Blob::generate_async(params.seed(100, 0), GIB).await?;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").context("binding hash sink")?;
    listener
        .set_nonblocking(true)
        .context("making hash sink listener non-blocking")?;
    let port = listener.local_addr().context("hash sink address")?.port();
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    // A separate runtime on a separate thread, as a separate server process would be.
    let server = std::thread::Builder::new()
        .name("hash-sink".into())
        .spawn(move || -> Result<()> {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("building hash sink runtime")?;
            rt.block_on(serve_hash_sink(listener, stop_rx))
        })
        .context("spawning hash sink thread")?;

    // Best of a few uploads: a ceiling is what the machine *can* do, and the
    // first upload on fresh buffers is often noticeably slower.
    let result = async {
        let mut conn = Endpoint::from_port(port).connect().await?;
        let reps = if params.quick { 2 } else { 3 };
        let mut best: f64 = 0.0;
        for _ in 0..reps {
            let start = Instant::now();
            let req = conn
                .request(Method::PUT, "/upload")
                .header(CONTENT_LENGTH, blob.size())
                .body(blob.body(0..blob.size()))?;
            let (_, body) = conn.call(req, StatusCode::CREATED).await?;
            anyhow::ensure!(
                body == blob.digest().as_bytes(),
                "hash sink computed {:?}, expected {}",
                String::from_utf8_lossy(&body),
                blob.digest()
            );
            best = best.max(mb_per_s(blob.size(), start.elapsed()));
        }
        Ok(best)
    }
    .await;
    let _ = stop_tx.send(());
    match server.join() {
        Ok(r) => r?,
        Err(_) => anyhow::bail!("hash sink thread panicked"),
    }
    result
}

async fn serve_hash_sink(
    listener: std::net::TcpListener,
    mut stop: oneshot::Receiver<()>,
) -> Result<()> {
    let listener =
        tokio::net::TcpListener::from_std(listener).context("adopting hash sink listener")?;
    loop {
        tokio::select! {
            _ = &mut stop => return Ok(()),
            accepted = listener.accept() => {
                let (stream, _) = accepted.context("accepting on hash sink")?;
                let _ = stream.set_nodelay(true);
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(hash_request);
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        }
    }
}

/// Hashes the request body and answers 201 with the digest.
async fn hash_request(req: Request<Incoming>) -> Result<Response<Full<Bytes>>, hyper::Error> {
    let mut body = req.into_body();
    let mut hasher = Sha256::new();
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame?.into_data() {
            hasher.update(&data);
        }
    }
    let digest = format!("sha256:{}", hex(&hasher.finalize()));
    let mut resp = Response::new(Full::new(Bytes::from(digest)));
    *resp.status_mut() = StatusCode::CREATED;
    Ok(resp)
}

/// Writes `size` bytes to a new file in `dir` in 4 MiB writes, fsyncs, and
/// reports MB/s including the fsync. Dirty pages are flushed first so earlier
/// writes do not get billed here.
async fn disk_write(dir: &Path, size: u64) -> Result<f64> {
    let path = dir.join(format!(
        "berth-bench-disk-ceiling-{}.tmp",
        std::process::id()
    ));
    let mut buf = vec![0u8; 4 * MIB as usize];
    crate::blob::fill_random(0xD15C, &mut buf);
    let task_path = path.clone();
    let result = tokio::task::spawn_blocking(move || -> Result<Duration> {
        // SAFETY: sync(2) has no preconditions.
        unsafe { libc::sync() };
        let start = Instant::now();
        let mut file = std::fs::File::create(&task_path)
            .with_context(|| format!("creating {}", task_path.display()))?;
        let mut written = 0u64;
        while written < size {
            // Vary each block so nothing below could deduplicate it.
            buf[..8].copy_from_slice(&written.to_le_bytes());
            let n = (size - written).min(buf.len() as u64) as usize;
            file.write_all(&buf[..n])
                .with_context(|| format!("writing {}", task_path.display()))?;
            written += n as u64;
        }
        file.sync_all()
            .with_context(|| format!("fsync of {}", task_path.display()))?;
        Ok(start.elapsed())
    })
    .await
    .context("disk write task failed");
    let _ = std::fs::remove_file(&path);
    Ok(mb_per_s(size, result??))
}

/// nginx serving a 100 MiB file to 1 and 8 clients and a manifest-sized file
/// at 1 and 32 connections, driven by the same load code as the registries.
async fn nginx(bin: &Path, params: &Params, scratch: &TempDir) -> Result<Vec<Ceiling>> {
    let dir = scratch.subdir("nginx")?;
    let www = dir.join("www");
    std::fs::create_dir_all(&www).with_context(|| format!("creating {}", www.display()))?;

    let (size, reps_single, reps_parallel) = params.pull[0];
    let large = Blob::generate_async(params.seed(101, 0), size).await?;
    let large_path = www.join("large");
    let large_bytes = large.to_bytes();
    std::fs::write(&large_path, &large_bytes)
        .with_context(|| format!("writing {}", large_path.display()))?;
    drop(large_bytes);
    let (_, _, manifest) = registry::small_image(params.seed(101, 1));
    std::fs::write(www.join("small"), &manifest).context("writing nginx small file")?;

    let server = servers::start_nginx(bin, &dir, "/small").await?;
    let ep = server.endpoint.clone();
    let mut out = Vec::new();
    // Whether sendfile helps depends on the kernel and VM (on some loopback
    // setups plain read/write is faster), so serve both ways and keep the better.
    for &clients in &params.pull_clients {
        let reps = if clients == 1 {
            reps_single
        } else {
            reps_parallel
        };
        let mut best = (0.0, "");
        for (path, how) in [
            ("/large", "sendfile off"),
            ("/sendfile/large", "sendfile on"),
        ] {
            let d = load::parallel_downloads(&ep, path, size, clients, reps).await?;
            if d.mb_per_s() > best.0 {
                best = (d.mb_per_s(), how);
            }
        }
        out.push(Ceiling {
            key: format!("nginx_large_c{clients}"),
            label: format!(
                "nginx {} file, {clients} clients ({})",
                size_label(size),
                best.1
            ),
            unit: "MB/s",
            value: best.0,
        });
    }
    let spec = RequestSpec {
        method: Method::GET,
        path: "/small".into(),
        headers: vec![],
    };
    // Best of two: a single-connection request loop is at the mercy of where
    // the scheduler puts the client and the nginx worker on a small VM.
    for &conns in &params.manifest_conns {
        let mut best: f64 = 0.0;
        for _ in 0..2 {
            let t = load::fixed_duration(&ep, &spec, conns, params.duration).await?;
            best = best.max(t.per_second());
        }
        out.push(Ceiling {
            key: format!("nginx_small_c{conns}"),
            label: format!("nginx {} B file, {conns} connections", manifest.len()),
            unit: "req/s",
            value: best,
        });
    }
    drop(server);
    Ok(out)
}
