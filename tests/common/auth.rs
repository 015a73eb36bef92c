//! Helpers for the access-control tests: a berth with its secure defaults and a policy file, the `berth user` /
//! `berth token` commands run against its data directory while it serves, and requests with credentials.
//!
//! Included with `#[path = "common/auth.rs"] mod auth;` next to `mod common;`.
#![allow(dead_code)]

use std::path::Path;
use std::process::{Command, Output};

use base64::Engine as _;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::common::{self, Berth};

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

/// A berth with its secure defaults and `toml` as its config file.
pub struct Secure {
    pub berth: Berth,
    pub config: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl std::ops::Deref for Secure {
    type Target = Berth;
    fn deref(&self) -> &Berth {
        &self.berth
    }
}

pub fn secure_berth(toml: &str) -> Secure {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("berth.toml");
    std::fs::write(&config, toml).unwrap();
    let berth = Berth::start_secure(&["--config", config.to_str().unwrap()]);
    Secure {
        berth,
        config,
        _dir: dir,
    }
}

/// Runs `berth ARGS --data-dir DIR` with `stdin` piped in.
pub fn cli(data_dir: &Path, args: &[&str], stdin: &str) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_berth"));
    crate::common::blob_env(&mut cmd, data_dir);
    cmd.args(args)
        .arg("--data-dir")
        .arg(data_dir)
        .envs(crate::common::metadata_env(data_dir));
    common::run_piped(cmd, args, stdin)
}

pub fn cli_ok(data_dir: &Path, args: &[&str], stdin: &str) -> String {
    let out = cli(data_dir, args, stdin);
    assert!(
        out.status.success(),
        "berth {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

pub fn add_user(b: &Berth, name: &str, password: &str) {
    cli_ok(
        &b.data_dir,
        &["user", "add", name],
        &format!("{password}\n"),
    );
}

/// `berth token create`; returns the token (the whole of stdout, trimmed).
pub fn create_token(b: &Berth, user: &str, scopes: &[&str], expires: Option<&str>) -> String {
    let mut args = vec!["token", "create", "--user", user, "--name", "test"];
    for s in scopes {
        args.push("--scope");
        args.push(s);
    }
    if let Some(e) = expires {
        args.push("--expires");
        args.push(e);
    }
    let out = cli_ok(&b.data_dir, &args, "");
    let token = out.trim().to_owned();
    assert!(
        token.starts_with("berth_pat_") && !token.contains('\n'),
        "stdout must be the token alone: {out:?}"
    );
    token
}

/// The id of a personal access token (`berth_pat_<id>_<secret>`).
pub fn token_id(token: &str) -> String {
    token
        .strip_prefix("berth_pat_")
        .and_then(|t| t.split('_').next())
        .unwrap()
        .to_owned()
}

#[derive(Clone, Debug)]
pub enum Creds {
    Anonymous,
    Basic(String, String),
    Bearer(String),
}

impl Creds {
    pub fn basic(u: &str, p: &str) -> Creds {
        Creds::Basic(u.into(), p.into())
    }

    pub fn header(&self) -> Option<String> {
        match self {
            Creds::Anonymous => None,
            Creds::Basic(u, p) => Some(format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"))
            )),
            Creds::Bearer(t) => Some(format!("Bearer {t}")),
        }
    }
}

pub fn admin() -> Creds {
    Creds::basic("admin", common::ADMIN_PASSWORD)
}

/// Sends a request with credentials; returns status, headers and body.
pub async fn send(
    method: Method,
    url: &str,
    creds: &Creds,
    headers: &[(&str, &str)],
    body: Vec<u8>,
) -> (StatusCode, reqwest::header::HeaderMap, Vec<u8>) {
    let mut rb = common::client().request(method, url).body(body);
    if let Some(h) = creds.header() {
        rb = rb.header("Authorization", h);
    }
    for (k, v) in headers {
        rb = rb.header(*k, *v);
    }
    let resp = rb.send().await.unwrap();
    let (status, h) = (resp.status(), resp.headers().clone());
    let body = resp.bytes().await.unwrap().to_vec();
    (status, h, body)
}

/// The first OCI error code of a body ("" when there is none).
pub fn code(body: &[u8]) -> String {
    serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| v["errors"][0]["code"].as_str().map(str::to_owned))
        .unwrap_or_default()
}

pub fn sha256(data: &[u8]) -> String {
    common::sha256_digest(data)
}

/// A pushed image: manifest digest and the digests of its config and layer.
#[derive(Debug, Clone)]
pub struct Pushed {
    pub manifest: String,
    pub config: String,
    pub layer: String,
}

/// Pushes a one-layer image to `repo:tag` with monolithic blob uploads; panics unless every step succeeds.
pub async fn push_image(base: &str, creds: &Creds, repo: &str, tag: &str, seed: &str) -> Pushed {
    let config = json!({"architecture": "amd64", "os": "linux", "seed": seed})
        .to_string()
        .into_bytes();
    let layer = format!("layer of {seed}").into_bytes();
    for blob in [&config, &layer] {
        let (s, _, b) = send(
            Method::POST,
            &format!("{base}/v2/{repo}/blobs/uploads/?digest={}", sha256(blob)),
            creds,
            &[("Content-Type", "application/octet-stream")],
            blob.clone(),
        )
        .await;
        assert_eq!(
            s,
            201,
            "blob push to {repo}: {}",
            String::from_utf8_lossy(&b)
        );
    }
    let manifest = manifest_for(&config, &layer);
    let (s, _, b) = send(
        Method::PUT,
        &format!("{base}/v2/{repo}/manifests/{tag}"),
        creds,
        &[("Content-Type", OCI_MANIFEST)],
        manifest.clone(),
    )
    .await;
    assert_eq!(
        s,
        201,
        "manifest push to {repo}: {}",
        String::from_utf8_lossy(&b)
    );
    Pushed {
        manifest: sha256(&manifest),
        config: sha256(&config),
        layer: sha256(&layer),
    }
}

pub fn manifest_for(config: &[u8], layer: &[u8]) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": sha256(config), "size": config.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": sha256(layer), "size": layer.len()}],
    }))
    .unwrap()
}

/// The parameters of a `WWW-Authenticate: Bearer …` challenge.
pub fn challenge(
    h: &reqwest::header::HeaderMap,
) -> Option<std::collections::HashMap<String, String>> {
    let v = h.get("www-authenticate")?.to_str().ok()?;
    let rest = v.strip_prefix("Bearer ")?;
    let mut m = std::collections::HashMap::new();
    for part in rest.split("\",") {
        let (k, v) = part.split_once('=')?;
        m.insert(k.trim().to_owned(), v.trim_matches('"').to_owned());
    }
    Some(m)
}

/// Runs the token flow: fetches `realm?service=…&scope=…` with `creds`; returns the JSON answer.
pub async fn fetch_token(base: &str, creds: &Creds, scopes: &[&str]) -> (StatusCode, Value) {
    let mut url = format!("{base}/token?service=berth");
    for s in scopes {
        url.push_str(&format!("&scope={}", s.replace(' ', "%20")));
    }
    let (s, _, b) = send(Method::GET, &url, creds, &[], vec![]).await;
    (s, serde_json::from_slice(&b).unwrap_or(Value::Null))
}

/// The claims of a JWT, decoded without verification (to inspect what was granted).
pub fn claims(token: &str) -> Value {
    let payload = token.split('.').nth(1).unwrap();
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .unwrap();
    serde_json::from_slice(&bytes).unwrap()
}
