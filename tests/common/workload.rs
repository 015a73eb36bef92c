//! A concurrent registry workload for the maintenance torture and crash tests: pushers of multi-arch indexes whose
//! layers are shared across repositories (re-tagging a few tags over and over), deleters of tags and manifests,
//! and a final check that every tag still pulls whole.
#![allow(dead_code)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use reqwest::{Client, StatusCode};
use serde_json::{Value, json};

use crate::common::sha256_digest;
use crate::image::XorShift;

const INDEX: &str = "application/vnd.oci.image.index.v1+json";
const MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const LAYER: &str = "application/vnd.oci.image.layer.v1.tar";

/// Layers every pusher draws from, so repositories share blobs.
const SHARED_LAYERS: u64 = 12;
/// Tags each repository cycles through.
pub const TAGS: [&str; 4] = ["latest", "t1", "t2", "t3"];

/// What the workload did and what went wrong.
#[derive(Default)]
pub struct Counters {
    pub pushes: AtomicU64,
    /// Pushes refused because garbage collection took a blob or child in between (the client retries).
    pub retried: AtomicU64,
    pub tag_deletes: AtomicU64,
    pub manifest_deletes: AtomicU64,
    /// Responses no correct registry gives (5xx, a 200 with a wrong body, an unexpected status).
    pub failures: AtomicU64,
    /// Requests that failed at the transport level (expected only while a server is being killed).
    pub transport_errors: AtomicU64,
}

impl Counters {
    pub fn summary(&self) -> String {
        format!(
            "pushes {}, retried {}, tag deletes {}, manifest deletes {}, failures {}, transport errors {}",
            self.pushes.load(Ordering::Relaxed),
            self.retried.load(Ordering::Relaxed),
            self.tag_deletes.load(Ordering::Relaxed),
            self.manifest_deletes.load(Ordering::Relaxed),
            self.failures.load(Ordering::Relaxed),
            self.transport_errors.load(Ordering::Relaxed),
        )
    }
}

fn fail(c: &Counters, what: String) {
    eprintln!("workload failure: {what}");
    c.failures.fetch_add(1, Ordering::Relaxed);
}

fn layer(n: u64) -> Vec<u8> {
    format!("shared layer {n} ")
        .repeat(200 + n as usize)
        .into_bytes()
}

/// Outcome of one push step.
enum Step {
    Ok,
    /// The registry said a referenced blob or child is gone: push again.
    Retry,
    /// The server is unreachable or broke the contract.
    Stop,
}

async fn ensure_blob(http: &Client, base: &str, repo: &str, data: &[u8], c: &Counters) -> Step {
    let d = sha256_digest(data);
    match http
        .head(format!("{base}/v2/{repo}/blobs/{d}"))
        .send()
        .await
    {
        Ok(r) if r.status() == StatusCode::OK => return Step::Ok,
        Ok(r) if r.status() == StatusCode::NOT_FOUND => {}
        Ok(r) => {
            fail(c, format!("HEAD blob {repo}: {}", r.status()));
            return Step::Stop;
        }
        Err(_) => {
            c.transport_errors.fetch_add(1, Ordering::Relaxed);
            return Step::Stop;
        }
    }
    match http
        .post(format!("{base}/v2/{repo}/blobs/uploads/?digest={d}"))
        .body(data.to_vec())
        .send()
        .await
    {
        Ok(r) if r.status() == StatusCode::CREATED => Step::Ok,
        Ok(r) => {
            fail(c, format!("push blob {repo}: {}", r.status()));
            Step::Stop
        }
        Err(_) => {
            c.transport_errors.fetch_add(1, Ordering::Relaxed);
            Step::Stop
        }
    }
}

async fn put_manifest(
    http: &Client,
    base: &str,
    repo: &str,
    reference: &str,
    mt: &str,
    body: &[u8],
    c: &Counters,
) -> Step {
    match http
        .put(format!("{base}/v2/{repo}/manifests/{reference}"))
        .header("content-type", mt)
        .body(body.to_vec())
        .send()
        .await
    {
        Ok(r) if r.status() == StatusCode::CREATED => Step::Ok,
        Ok(r) if r.status() == StatusCode::BAD_REQUEST => {
            let text = r.text().await.unwrap_or_default();
            if text.contains("MANIFEST_BLOB_UNKNOWN") {
                c.retried.fetch_add(1, Ordering::Relaxed);
                Step::Retry
            } else {
                fail(c, format!("put manifest {repo}:{reference}: 400 {text}"));
                Step::Stop
            }
        }
        Ok(r) => {
            fail(
                c,
                format!("put manifest {repo}:{reference}: {}", r.status()),
            );
            Step::Stop
        }
        Err(_) => {
            c.transport_errors.fetch_add(1, Ordering::Relaxed);
            Step::Stop
        }
    }
}

/// Now and then, pauses longer than the torture's 1-second grace period between confirming content and
/// referencing it, as a slow client would: garbage collection may take it meanwhile, and the push must then fail
/// cleanly and succeed when retried.
async fn slow_client(rng: &mut XorShift) {
    if rng.next().is_multiple_of(8) {
        tokio::time::sleep(std::time::Duration::from_millis(2100)).await;
    }
}

/// Pushes one two-platform index to `repo:tag`, as a client would: HEAD each blob, upload the missing ones, push
/// the children by digest, then the index by tag.
async fn push_index(
    http: &Client,
    base: &str,
    repo: &str,
    tag: &str,
    rng: &mut XorShift,
    c: &Counters,
) -> Step {
    let mut children = Vec::new();
    for arch in ["amd64", "arm64"] {
        let unique = format!("unique {repo} {arch} {}", rng.next()).into_bytes();
        let shared = layer(rng.range(0, SHARED_LAYERS - 1));
        let config =
            serde_json::to_vec(&json!({"architecture": arch, "os": "linux", "n": rng.next()}))
                .unwrap();
        for blob in [&config, &shared, &unique] {
            match ensure_blob(http, base, repo, blob, c).await {
                Step::Ok => {}
                other => return other,
            }
        }
        let desc = |mt: &str, b: &[u8]| json!({"mediaType": mt, "digest": sha256_digest(b), "size": b.len()});
        let m = serde_json::to_vec(&json!({
            "schemaVersion": 2, "mediaType": MANIFEST,
            "config": desc(CONFIG, &config),
            "layers": [desc(LAYER, &shared), desc(LAYER, &unique)],
        }))
        .unwrap();
        let d = sha256_digest(&m);
        slow_client(rng).await;
        match put_manifest(http, base, repo, &d, MANIFEST, &m, c).await {
            Step::Ok => {}
            other => return other,
        }
        children.push(json!({"mediaType": MANIFEST, "digest": d, "size": m.len(),
            "platform": {"architecture": arch, "os": "linux"}}));
    }
    let index =
        serde_json::to_vec(&json!({"schemaVersion": 2, "mediaType": INDEX, "manifests": children}))
            .unwrap();
    slow_client(rng).await;
    put_manifest(http, base, repo, tag, INDEX, &index, c).await
}

/// Pushes to `repo` until `stop`, re-tagging `TAGS`.
pub async fn pusher(
    base: String,
    repo: String,
    seed: u64,
    stop: Arc<AtomicBool>,
    c: Arc<Counters>,
) {
    let http = Client::new();
    let mut rng = XorShift(seed | 1);
    while !stop.load(Ordering::Relaxed) {
        let tag = TAGS[rng.range(0, TAGS.len() as u64 - 1) as usize];
        loop {
            match push_index(&http, &base, &repo, tag, &mut rng, &c).await {
                Step::Ok => {
                    c.pushes.fetch_add(1, Ordering::Relaxed);
                    break;
                }
                Step::Retry if !stop.load(Ordering::Relaxed) => continue,
                Step::Retry => break,
                Step::Stop => {
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    break;
                }
            }
        }
    }
}

/// Deletes tags and manifests in `repos` until `stop`.
pub async fn deleter(
    base: String,
    repos: Vec<String>,
    seed: u64,
    stop: Arc<AtomicBool>,
    c: Arc<Counters>,
) {
    let http = Client::new();
    let mut rng = XorShift(seed | 1);
    while !stop.load(Ordering::Relaxed) {
        tokio::time::sleep(std::time::Duration::from_millis(rng.range(20, 120))).await;
        let repo = &repos[rng.range(0, repos.len() as u64 - 1) as usize];
        let tag = TAGS[rng.range(0, TAGS.len() as u64 - 1) as usize];
        let by_digest = rng.next().is_multiple_of(2);
        let reference = if by_digest {
            match http
                .head(format!("{base}/v2/{repo}/manifests/{tag}"))
                .header("accept", INDEX)
                .send()
                .await
            {
                Ok(r) if r.status() == StatusCode::OK => {
                    match r.headers().get("docker-content-digest") {
                        Some(d) => d.to_str().unwrap_or_default().to_owned(),
                        None => {
                            fail(&c, format!("HEAD {repo}:{tag} without digest"));
                            continue;
                        }
                    }
                }
                Ok(r) if r.status() == StatusCode::NOT_FOUND => continue,
                Ok(r) => {
                    fail(&c, format!("HEAD manifest {repo}:{tag}: {}", r.status()));
                    continue;
                }
                Err(_) => {
                    c.transport_errors.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
            }
        } else {
            tag.to_owned()
        };
        match http
            .delete(format!("{base}/v2/{repo}/manifests/{reference}"))
            .send()
            .await
        {
            Ok(r) if r.status() == StatusCode::ACCEPTED => {
                let n = if by_digest {
                    &c.manifest_deletes
                } else {
                    &c.tag_deletes
                };
                n.fetch_add(1, Ordering::Relaxed);
            }
            // Gone meanwhile, or (by digest) still listed by an index: both are correct answers.
            Ok(r) if r.status() == StatusCode::NOT_FOUND || r.status() == StatusCode::CONFLICT => {}
            Ok(r) => fail(&c, format!("DELETE {repo}/{reference}: {}", r.status())),
            Err(_) => {
                c.transport_errors.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

async fn get_ok(http: &Client, url: &str, accept: Option<&str>) -> Result<Vec<u8>, String> {
    let mut rb = http.get(url);
    if let Some(a) = accept {
        rb = rb.header("accept", a);
    }
    let r = rb.send().await.map_err(|e| format!("{url}: {e}"))?;
    if r.status() != StatusCode::OK {
        return Err(format!("{url}: {}", r.status()));
    }
    Ok(r.bytes().await.map_err(|e| format!("{url}: {e}"))?.to_vec())
}

/// Pulls every tag of `repos` with all children and blobs, verifying every digest. Returns the number of tags and
/// the problems found.
pub async fn verify_all_tags(base: &str, repos: &[String]) -> (usize, Vec<String>) {
    let http = Client::new();
    let mut all = Vec::new();
    let mut n = 0;
    for repo in repos {
        let list = match get_ok(&http, &format!("{base}/v2/{repo}/tags/list"), None).await {
            Ok(b) => serde_json::from_slice::<Value>(&b).unwrap_or_default(),
            Err(e) if e.ends_with("404 Not Found") => continue,
            Err(e) => {
                all.push(e);
                continue;
            }
        };
        for tag in list["tags"].as_array().cloned().unwrap_or_default() {
            let tag = tag.as_str().unwrap_or_default();
            n += 1;
            let mut found = Vec::new();
            let problems = &mut found;
            let accept = format!("{INDEX}, {MANIFEST}");
            let index = match get_ok(
                &http,
                &format!("{base}/v2/{repo}/manifests/{tag}"),
                Some(&accept),
            )
            .await
            {
                Ok(b) => b,
                Err(e) => {
                    problems.push(e);
                    continue;
                }
            };
            let index: Value = serde_json::from_slice(&index).unwrap_or_default();
            for child in index["manifests"].as_array().cloned().unwrap_or_default() {
                let d = child["digest"].as_str().unwrap_or_default();
                let body = match get_ok(
                    &http,
                    &format!("{base}/v2/{repo}/manifests/{d}"),
                    Some(&accept),
                )
                .await
                {
                    Ok(b) => b,
                    Err(e) => {
                        problems.push(format!("{repo}:{tag} child: {e}"));
                        continue;
                    }
                };
                if sha256_digest(&body) != d {
                    problems.push(format!("{repo}:{tag} child {d}: wrong bytes"));
                }
                let m: Value = serde_json::from_slice(&body).unwrap_or_default();
                let mut blobs = vec![m["config"].clone()];
                blobs.extend(m["layers"].as_array().cloned().unwrap_or_default());
                for b in blobs {
                    let bd = b["digest"].as_str().unwrap_or_default();
                    match get_ok(&http, &format!("{base}/v2/{repo}/blobs/{bd}"), None).await {
                        Ok(bytes) if sha256_digest(&bytes) == bd => {}
                        Ok(_) => problems.push(format!("{repo}:{tag} blob {bd}: wrong bytes")),
                        Err(e) => problems.push(format!("{repo}:{tag} blob: {e}")),
                    }
                }
            }
            // The server's own retention may delete a tag between the listing and its pull (the scheduled runs go
            // on): only problems of a tag that is still listed count.
            if !found.is_empty() && still_listed(&http, base, repo, tag).await {
                all.append(&mut found);
            }
        }
    }
    (n, all)
}

async fn still_listed(http: &Client, base: &str, repo: &str, tag: &str) -> bool {
    match get_ok(http, &format!("{base}/v2/{repo}/tags/list"), None).await {
        Ok(b) => serde_json::from_slice::<Value>(&b).unwrap_or_default()["tags"]
            .as_array()
            .is_some_and(|tags| tags.iter().any(|t| t == tag)),
        // Unknown: keep the problems.
        Err(_) => true,
    }
}
