//! Crash consistency: concurrent pushes, `kill -9` at a random moment, restart on the same data directory, then
//! everything the server acknowledged must be intact and nothing it did not acknowledge may be served torn.
//!
//! The kill moment is drawn from a xorshift generator seeded from the clock; the seed is printed, and
//! `BERTH_CRASH_SEED=<seed>` replays the same schedule (timing still varies).

mod common;
#[path = "common/image.rs"]
mod image;

use common::{Berth, sha256_digest};
use image::{XorShift, absolute, with_digest};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const CYCLES: usize = 3;
const PUSHES: usize = 20;
const MIB: usize = 1024 * 1024;

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(120))
        .build()
        .unwrap()
}

fn location(r: &reqwest::Response, base: &str) -> Result<String, String> {
    r.headers()
        .get("location")
        .and_then(|v| v.to_str().ok())
        .map(|l| absolute(base, l))
        .ok_or_else(|| format!("{} without Location", r.status()))
}

#[derive(Clone)]
struct BlobRec {
    digest: String,
    data: Arc<Vec<u8>>,
    /// The blob's final PUT (or monolithic POST) returned 201 before the kill.
    committed: bool,
}

struct PushRec {
    cycle: usize,
    repo: String,
    tag: String,
    blobs: Vec<BlobRec>,
    manifest: Vec<u8>,
    manifest_digest: String,
    /// The manifest PUT returned 201 before the kill.
    committed: bool,
}

/// Uploads one blob; `mode` picks the protocol flavour. Ok(()) only when the server answered 201.
async fn upload_blob(
    c: &reqwest::Client,
    base: &str,
    repo: &str,
    data: &[u8],
    mode: usize,
) -> Result<(), String> {
    let digest = sha256_digest(data);
    let e = |e: reqwest::Error| e.to_string();
    if mode == 3 {
        // Monolithic single POST with ?digest=.
        let r = c
            .post(format!("{base}/v2/{repo}/blobs/uploads/?digest={digest}"))
            .header("Content-Type", "application/octet-stream")
            .body(data.to_vec())
            .send()
            .await
            .map_err(e)?;
        return match r.status().as_u16() {
            201 => Ok(()),
            // Single-POST upload not supported: the spec lets the registry open a session instead.
            202 => {
                let loc = location(&r, base)?;
                let r = c
                    .put(with_digest(&loc, &digest))
                    .header("Content-Type", "application/octet-stream")
                    .body(data.to_vec())
                    .send()
                    .await
                    .map_err(e)?;
                match r.status().as_u16() {
                    201 => Ok(()),
                    s => Err(format!("PUT after 202 to a monolithic POST: {s}")),
                }
            }
            s => Err(format!("monolithic POST: {s}")),
        };
    }
    let r = c
        .post(format!("{base}/v2/{repo}/blobs/uploads/"))
        .send()
        .await
        .map_err(e)?;
    if r.status() != 202 {
        return Err(format!("POST upload: {}", r.status()));
    }
    let mut loc = location(&r, base)?;
    let put_body: Vec<u8> = match mode {
        // POST, then everything in the PUT body.
        1 => data.to_vec(),
        // Chunked PATCHes (1 MiB), then an empty PUT (mode 0) or the last chunk in the PUT body (mode 2).
        _ => {
            let chunks: Vec<&[u8]> = data.chunks(MIB).collect();
            let patched = if mode == 2 {
                chunks.len() - 1
            } else {
                chunks.len()
            };
            let mut off = 0usize;
            for chunk in &chunks[..patched] {
                let r = c
                    .patch(&loc)
                    .header("Content-Type", "application/octet-stream")
                    .header(
                        "Content-Range",
                        format!("{}-{}", off, off + chunk.len() - 1),
                    )
                    .body(chunk.to_vec())
                    .send()
                    .await
                    .map_err(e)?;
                if r.status() != 202 {
                    return Err(format!("PATCH: {}", r.status()));
                }
                loc = location(&r, base)?;
                off += chunk.len();
            }
            chunks[patched..].concat()
        }
    };
    let r = c
        .put(with_digest(&loc, &digest))
        .header("Content-Type", "application/octet-stream")
        .body(put_body)
        .send()
        .await
        .map_err(e)?;
    match r.status().as_u16() {
        201 => Ok(()),
        s => Err(format!("PUT: {s}")),
    }
}

/// Pushes the blobs then the manifest of `rec`, recording every acknowledged step as it happens.
async fn push(
    c: reqwest::Client,
    base: String,
    rec: Arc<Mutex<PushRec>>,
    mode_seed: usize,
) -> Result<(), String> {
    let (repo, blobs) = {
        let r = rec.lock().unwrap();
        (r.repo.clone(), r.blobs.clone())
    };
    for (k, b) in blobs.iter().enumerate() {
        upload_blob(&c, &base, &repo, &b.data, (mode_seed + k) % 4).await?;
        rec.lock().unwrap().blobs[k].committed = true;
    }
    let (tag, manifest) = {
        let r = rec.lock().unwrap();
        (r.tag.clone(), r.manifest.clone())
    };
    let r = c
        .put(format!("{base}/v2/{repo}/manifests/{tag}"))
        .header("Content-Type", "application/vnd.oci.image.manifest.v1+json")
        .body(manifest)
        .send()
        .await
        .map_err(|e| e.to_string())?;
    if r.status() != 201 {
        return Err(format!("manifest PUT: {}", r.status()));
    }
    rec.lock().unwrap().committed = true;
    Ok(())
}

/// Builds a push: a small unique config blob plus 1-3 random layers of 1-8 MiB.
fn make_push(rng: &mut XorShift, cycle: usize, i: usize, max_layers: u64) -> PushRec {
    let repo = format!("crash/r{}", i % 4);
    let tag = format!("c{cycle}-p{i:02}");
    let config =
        format!(r#"{{"architecture":"amd64","os":"linux","comment":"cycle {cycle} push {i}"}}"#);
    let mut blobs = vec![Arc::new(config.into_bytes())];
    for _ in 0..rng.range(1, max_layers) {
        let n = rng.range(MIB as u64, 8 * MIB as u64) as usize;
        blobs.push(Arc::new(rng.bytes(n)));
    }
    let desc = |mt: &str, d: &[u8]| serde_json::json!({"mediaType": mt, "digest": sha256_digest(d), "size": d.len()});
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": desc("application/vnd.oci.image.config.v1+json", &blobs[0]),
        "layers": blobs[1..].iter().map(|b| desc("application/vnd.oci.image.layer.v1.tar", b)).collect::<Vec<_>>(),
    });
    let manifest = serde_json::to_vec(&manifest).unwrap();
    PushRec {
        cycle,
        repo,
        tag,
        manifest_digest: sha256_digest(&manifest),
        manifest,
        committed: false,
        blobs: blobs
            .into_iter()
            .map(|data| BlobRec {
                digest: sha256_digest(&data),
                data,
                committed: false,
            })
            .collect(),
    }
}

/// GETs a blob and classifies it: Ok(true) = complete and correct, Ok(false) = 404, Err = anything else.
async fn check_blob(
    c: &reqwest::Client,
    base: &str,
    repo: &str,
    b: &BlobRec,
) -> Result<bool, String> {
    let url = format!("{base}/v2/{repo}/blobs/{}", b.digest);
    let head = c
        .head(&url)
        .send()
        .await
        .map_err(|e| format!("HEAD {url}: {e}"))?;
    let head_status = head.status().as_u16();
    let head_len = head
        .headers()
        .get("content-length")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    let r = c
        .get(&url)
        .send()
        .await
        .map_err(|e| format!("GET {url}: {e}"))?;
    let status = r.status().as_u16();
    let content_length = r.content_length();
    let body = r
        .bytes()
        .await
        .map_err(|e| format!("GET {url}: body broke off: {e}"))?;
    match status {
        404 => {
            if head_status != 404 {
                return Err(format!("GET {url} is 404 but HEAD is {head_status}"));
            }
            Ok(false)
        }
        200 => {
            if content_length != Some(b.data.len() as u64) {
                return Err(format!(
                    "GET {url}: Content-Length {content_length:?}, real size {}",
                    b.data.len()
                ));
            }
            if body.len() != b.data.len() {
                return Err(format!(
                    "GET {url}: {} bytes, expected {}",
                    body.len(),
                    b.data.len()
                ));
            }
            if sha256_digest(&body) != b.digest {
                return Err(format!("GET {url}: body does not hash to its digest"));
            }
            if head_status != 200 || head_len != Some(b.data.len()) {
                return Err(format!(
                    "HEAD {url}: {head_status} Content-Length {head_len:?}, real size {}",
                    b.data.len()
                ));
            }
            Ok(true)
        }
        s => Err(format!("GET {url}: unexpected status {s}")),
    }
}

/// Checks every push recorded so far against the restarted server; returns the list of violations.
async fn verify_all(base: &str, recs: &[Arc<Mutex<PushRec>>]) -> Vec<String> {
    let c = http();
    let mut bad = Vec::new();
    for rec in recs {
        let (cycle, repo, tag, blobs, manifest, manifest_digest, committed) = {
            let r = rec.lock().unwrap();
            (
                r.cycle,
                r.repo.clone(),
                r.tag.clone(),
                r.blobs.clone(),
                r.manifest.clone(),
                r.manifest_digest.clone(),
                r.committed,
            )
        };
        let mut all_blobs_present = true;
        for b in &blobs {
            match check_blob(&c, base, &repo, b).await {
                Ok(true) => {}
                Ok(false) => {
                    all_blobs_present = false;
                    if b.committed {
                        bad.push(format!(
                            "cycle {cycle} {repo}:{tag}: blob {} ({} bytes) got 201 before the kill but is 404 after restart",
                            b.digest,
                            b.data.len()
                        ));
                    }
                }
                Err(e) => {
                    all_blobs_present = false;
                    bad.push(format!(
                        "cycle {cycle} {repo}:{tag} (blob committed: {}): {e}",
                        b.committed
                    ));
                }
            }
        }
        for reference in [tag.clone(), manifest_digest.clone()] {
            let url = format!("{base}/v2/{repo}/manifests/{reference}");
            let r = match c
                .get(&url)
                .header("Accept", "application/vnd.oci.image.manifest.v1+json")
                .send()
                .await
            {
                Ok(r) => r,
                Err(e) => {
                    bad.push(format!("GET {url}: {e}"));
                    continue;
                }
            };
            let status = r.status().as_u16();
            let dcd = r
                .headers()
                .get("docker-content-digest")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string();
            let body = r.bytes().await.map(|b| b.to_vec()).unwrap_or_default();
            match status {
                200 => {
                    if body != manifest || dcd != manifest_digest {
                        bad.push(format!(
                            "GET {url}: served {} bytes with digest header {dcd:?}, expected the {} bytes of {manifest_digest}",
                            body.len(),
                            manifest.len()
                        ));
                    }
                    if !all_blobs_present {
                        bad.push(format!(
                            "GET {url}: manifest is served but some of its blobs are not (manifest committed: {committed})"
                        ));
                    }
                }
                404 if !committed => {}
                s => bad.push(format!(
                    "GET {url}: status {s} (manifest PUT got 201 before the kill: {committed})"
                )),
            }
        }
    }
    bad
}

/// An upload session left open across the kill.
struct OpenSession {
    repo: String,
    location: String,
    data: Vec<u8>,
    acked: usize,
}

async fn open_session(base: &str, cycle: usize, rng: &mut XorShift) -> OpenSession {
    let c = http();
    let repo = "crash/resume".to_string();
    let data = rng.bytes(3 * MIB + 12345 + cycle);
    let r = c
        .post(format!("{base}/v2/{repo}/blobs/uploads/"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202, "POST upload for the resumable session");
    let loc = location(&r, base).unwrap();
    let first = 3 * MIB / 2 + cycle;
    let r = c
        .patch(&loc)
        .header("Content-Type", "application/octet-stream")
        .header("Content-Range", format!("0-{}", first - 1))
        .body(data[..first].to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202, "first PATCH of the resumable session");
    let loc = location(&r, base).unwrap();
    OpenSession {
        repo,
        location: loc,
        data,
        acked: first,
    }
}

/// After the restart: the session reports exactly the acknowledged offset and can be finished.
async fn resume_session(base: &str, s: &OpenSession) -> Result<(), String> {
    let c = http();
    let r = c.get(&s.location).send().await.map_err(|e| e.to_string())?;
    if r.status() != 204 {
        return Err(format!(
            "GET upload status {} after restart: {} (expected 204; the session must survive kill -9)",
            s.location,
            r.status()
        ));
    }
    let range = r
        .headers()
        .get("range")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let expected = format!("0-{}", s.acked - 1);
    if range != expected {
        return Err(format!(
            "upload status Range after restart is {range:?}, expected {expected:?} (202-acknowledged PATCH data lost)"
        ));
    }
    let loc = location(&r, base).unwrap_or_else(|_| s.location.clone());
    let r = c
        .patch(&loc)
        .header("Content-Type", "application/octet-stream")
        .header("Content-Range", format!("{}-{}", s.acked, s.data.len() - 1))
        .body(s.data[s.acked..].to_vec())
        .send()
        .await
        .map_err(|e| e.to_string())?;
    if r.status() != 202 {
        return Err(format!("PATCH after restart: {}", r.status()));
    }
    let loc = location(&r, base)?;
    let digest = sha256_digest(&s.data);
    let r = c
        .put(with_digest(&loc, &digest))
        .send()
        .await
        .map_err(|e| e.to_string())?;
    if r.status() != 201 {
        return Err(format!(
            "PUT after restart: {} {}",
            r.status(),
            r.text().await.unwrap_or_default()
        ));
    }
    let b = BlobRec {
        digest,
        data: Arc::new(s.data.clone()),
        committed: true,
    };
    match check_blob(&c, base, &s.repo, &b).await? {
        true => Ok(()),
        false => Err("resumed blob is 404 after its PUT got 201".into()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_during_concurrent_pushes_loses_nothing_acknowledged() {
    let seed = std::env::var("BERTH_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
                | 1
        });
    eprintln!("crash_kill9 seed = {seed} (BERTH_CRASH_SEED={seed} replays the schedule)");
    let mut rng = XorShift(seed);
    let mut berth = Berth::start();
    let base = berth.url();
    let mut all: Vec<Arc<Mutex<PushRec>>> = Vec::new();
    let mut failures: Vec<String> = Vec::new();

    for cycle in 0..CYCLES {
        // One push that is certainly complete before the kill, so the durability check is never vacuous.
        let baseline = Arc::new(Mutex::new(make_push(&mut rng, cycle, 99, 1)));
        push(http(), base.clone(), baseline.clone(), cycle)
            .await
            .unwrap_or_else(|e| {
                panic!("cycle {cycle}: baseline push failed on a healthy server: {e}")
            });
        all.push(baseline);

        let session = open_session(&base, cycle, &mut rng).await;

        let recs: Vec<Arc<Mutex<PushRec>>> = (0..PUSHES)
            .map(|i| Arc::new(Mutex::new(make_push(&mut rng, cycle, i, 3))))
            .collect();
        let delay = rng.range(50, 800);
        // One client shared by all pushes (building a client per task is slow enough in debug builds to push
        // every request past the kill).
        let c = http();
        let tasks: Vec<_> = recs
            .iter()
            .enumerate()
            .map(|(i, r)| tokio::spawn(push(c.clone(), base.clone(), r.clone(), i)))
            .collect();
        // The test body runs on the runtime's block_on thread, not on a worker: a plain sleep here keeps the
        // kill on schedule even while the workers (and the server) are saturated.
        let spawned = std::time::Instant::now();
        std::thread::sleep(Duration::from_millis(delay));
        berth.kill9();
        let killed_at = spawned.elapsed();
        for t in tasks {
            let _ = tokio::time::timeout(Duration::from_secs(120), t)
                .await
                .expect("a push task hung after the server was killed");
        }
        let blobs_acked: usize = recs
            .iter()
            .map(|r| {
                r.lock()
                    .unwrap()
                    .blobs
                    .iter()
                    .filter(|b| b.committed)
                    .count()
            })
            .sum();
        let manifests_acked = recs.iter().filter(|r| r.lock().unwrap().committed).count();
        eprintln!(
            "cycle {cycle}: killed after {killed_at:?} (planned {delay} ms); {blobs_acked} blobs and {manifests_acked}/{PUSHES} manifests acknowledged"
        );
        all.extend(recs);

        berth.restart_after_kill9();
        let bad = verify_all(&base, &all).await;
        for b in &bad {
            eprintln!("VIOLATION: {b}");
        }
        failures.extend(bad.into_iter().map(|b| format!("after kill {cycle}: {b}")));
        if let Err(e) = resume_session(&base, &session).await {
            eprintln!("VIOLATION: {e}");
            failures.push(format!("after kill {cycle}: resumable upload: {e}"));
        }
        assert!(
            berth.is_running(),
            "server exited after restart in cycle {cycle}"
        );
        let r = http().get(format!("{base}/v2/")).send().await.unwrap();
        assert_eq!(r.status(), 200, "GET /v2/ after restart");
    }

    assert!(
        failures.is_empty(),
        "seed {seed}: {} crash-consistency violations:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
