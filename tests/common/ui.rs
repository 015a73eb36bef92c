//! Fixture for the web UI tests: a secure berth with users, policies, a retention policy, a mirror of a second
//! berth, and images with everything the UI shows (config fields, labels with markup in them, a multi-arch index,
//! a signature and an SBOM referring to an image); plus sign-in over plain HTTP.
//!
//! Included with `#[path = "common/ui.rs"] mod ui;` next to `mod common;`, `mod spec;` and `mod auth;`.
#![allow(dead_code)]

use reqwest::header::{AUTHORIZATION, HeaderMap, HeaderValue};
use serde_json::{Value, json};

use crate::auth::{Secure, add_user, secure_berth};
use crate::common::{self, Berth};
use crate::spec::{OCI_CONFIG, OCI_EMPTY, OCI_INDEX, OCI_LAYER, OCI_MANIFEST, Reg, desc, sha256};

pub const XSS_LABEL: &str = "<script>alert('xss')</script>";
pub const XSS_ANNOTATION: &str = "\"><img src=x onerror=alert(1)>";
pub const ALICE: (&str, &str) = ("alice", "alice-password-1");
pub const BOB: (&str, &str) = ("bob", "bob-password-1");
pub const SIG_TYPE: &str = "application/vnd.dev.cosign.artifact.sig.v1+json";
pub const SBOM_TYPE: &str = "application/spdx+json";

pub struct Seeded {
    pub berth: Secure,
    /// The upstream the `up` mirror caches (open access).
    pub upstream: Berth,
    /// team/app:v1
    pub v1: String,
    /// team/app:v2 and :latest
    pub v2: String,
    pub index: String,
    pub signature: String,
    pub sbom: String,
}

/// A client sending `user:password` with every request.
pub fn basic_client(user: &str, password: &str) -> reqwest::Client {
    use base64::Engine as _;
    let mut h = HeaderMap::new();
    let v = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    h.insert(
        AUTHORIZATION,
        HeaderValue::from_str(&format!("Basic {v}")).unwrap(),
    );
    reqwest::Client::builder()
        .default_headers(h)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

pub fn admin_reg(b: &Berth) -> Reg {
    Reg::new(b.url(), basic_client("admin", common::ADMIN_PASSWORD))
}

fn rich_config(seed: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "architecture": "amd64", "os": "linux", "created": "2026-01-02T03:04:05Z",
        "config": {
            "Entrypoint": ["/usr/bin/app", "--serve"],
            "Cmd": ["--port", "8080"],
            "Env": ["PATH=/usr/bin", "APP_MODE=production"],
            "Labels": {"org.opencontainers.image.source": "https://example.com/app", "evil": XSS_LABEL},
            "WorkingDir": "/srv",
            "ExposedPorts": {"8080/tcp": {}}
        },
        "rootfs": {"type": "layers", "diff_ids": []},
        "seed": seed
    }))
    .unwrap()
}

/// An image with the rich config and two layers; returns its digest.
pub async fn push_rich(r: &Reg, repo: &str, reference: &str, seed: &str) -> String {
    let config = rich_config(seed);
    r.push_blob(repo, &config).await;
    let (l1, l2) = rich_layers(seed);
    r.push_blob(repo, &l1).await;
    r.push_blob(repo, &l2).await;
    r.push_manifest(repo, reference, OCI_MANIFEST, &rich_manifest(seed))
        .await
}

fn rich_layers(seed: &str) -> (Vec<u8>, Vec<u8>) {
    (format!("layer-one-{seed}").into_bytes(), vec![b'x'; 4096])
}

/// The manifest `push_rich` pushes for `seed`.
fn rich_manifest(seed: &str) -> Vec<u8> {
    let (l1, l2) = rich_layers(seed);
    serde_json::to_vec(&json!({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": desc(OCI_CONFIG, &rich_config(seed)),
        "layers": [desc(OCI_LAYER, &l1), desc(OCI_LAYER, &l2)],
        "annotations": {"org.opencontainers.image.description": XSS_ANNOTATION}
    }))
    .unwrap()
}

/// A platform image (by digest) for an index; returns its descriptor.
async fn platform_image(r: &Reg, repo: &str, arch: &str) -> Value {
    let config =
        serde_json::to_vec(&json!({"architecture": arch, "os": "linux", "config": {}})).unwrap();
    let layer = format!("layer-{arch}").into_bytes();
    r.push_blob(repo, &config).await;
    r.push_blob(repo, &layer).await;
    let body = crate::spec::oci_manifest(&desc(OCI_CONFIG, &config), &[desc(OCI_LAYER, &layer)]);
    let d = r
        .push_manifest(repo, &sha256(&body), OCI_MANIFEST, &body)
        .await;
    json!({"mediaType": OCI_MANIFEST, "digest": d, "size": body.len(),
           "platform": {"os": "linux", "architecture": arch}})
}

/// An artifact referring to `subject` of `size` bytes; returns its digest. The size is passed in, not read back:
/// reading the subject would count as a pull, and the tests check that pushed images show "never" pulled.
pub async fn push_referrer(
    r: &Reg,
    repo: &str,
    subject: &str,
    size: usize,
    artifact_type: &str,
    payload: &[u8],
) -> String {
    r.push_blob(repo, b"{}").await;
    r.push_blob(repo, payload).await;
    let body = serde_json::to_vec(&json!({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST, "artifactType": artifact_type,
        "config": desc(OCI_EMPTY, b"{}"),
        "layers": [desc("application/octet-stream", payload)],
        "subject": {"mediaType": OCI_MANIFEST, "digest": subject, "size": size},
        "annotations": {"org.opencontainers.image.created": "2026-01-02T03:04:05Z"}
    }))
    .unwrap();
    r.push_manifest(repo, &sha256(&body), OCI_MANIFEST, &body)
        .await
}

/// Starts and fills the fixture.
pub async fn seeded() -> Seeded {
    let upstream = Berth::start();
    let up = Reg::new(upstream.url(), common::client());
    up.push_image("team/base", "1", "upstream-base").await;

    let berth = secure_berth(&format!(
        r#"
[[mirror]]
name = "up"
upstream = "{}"
cache_budget = "10 MiB"

[[auth.policy]]
repositories = ["mirrors"]
pull = ["@users"]

[[auth.policy]]
repositories = ["team/**"]
pull = ["@users"]
push = ["@users"]
delete = ["alice"]

[[auth.policy]]
repositories = ["secret/**"]
pull = ["alice"]
push = ["alice"]

[[retention.policy]]
repositories = ["team/app"]
keep_newest = 1
keep_tags = ["latest"]
"#,
        upstream.url()
    ));
    add_user(&berth, ALICE.0, ALICE.1);
    add_user(&berth, BOB.0, BOB.1);
    let r = admin_reg(&berth);
    let v1 = push_rich(&r, "team/app", "v1", "one").await;
    // Push times have one-second resolution; retention's "newest" needs them apart.
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let v2 = push_rich(&r, "team/app", "v2", "two").await;
    push_rich(&r, "team/app", "latest", "two").await;
    let amd = platform_image(&r, "team/multi", "amd64").await;
    let arm = platform_image(&r, "team/multi", "arm64").await;
    let index = serde_json::to_vec(
        &json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [amd, arm]}),
    )
    .unwrap();
    let index = r
        .push_manifest("team/multi", "1.0", OCI_INDEX, &index)
        .await;
    let v1_size = rich_manifest("one").len();
    let signature = push_referrer(&r, "team/app", &v1, v1_size, SIG_TYPE, b"signature-bytes").await;
    let sbom = push_referrer(
        &r,
        "team/app",
        &v1,
        v1_size,
        SBOM_TYPE,
        b"{\"spdxVersion\":\"SPDX-2.3\"}",
    )
    .await;
    push_rich(&r, "secret/vault", "1", "secret").await;
    // Through the mirror twice: a miss, then a hit.
    for _ in 0..2 {
        let m = r.get("/v2/up/team/base/manifests/1").await;
        assert_eq!(m.status(), 200, "pull through the mirror");
        let body: Value = m.json().await.unwrap();
        for l in body["layers"].as_array().unwrap() {
            let d = l["digest"].as_str().unwrap();
            let b = r.get(&format!("/v2/up/team/base/blobs/{d}")).await;
            assert_eq!(b.status(), 200);
            b.bytes().await.unwrap();
        }
    }
    Seeded {
        berth,
        upstream,
        v1,
        v2,
        index,
        signature,
        sbom,
    }
}

/// `application/x-www-form-urlencoded` bodies (reqwest's `form` feature is not enabled in this workspace).
pub trait FormExt {
    fn form_pairs(self, pairs: &[(&str, &str)]) -> Self;
}

impl FormExt for reqwest::RequestBuilder {
    fn form_pairs(self, pairs: &[(&str, &str)]) -> Self {
        let body = form_urlencoded::Serializer::new(String::new())
            .extend_pairs(pairs)
            .finish();
        self.header("content-type", "application/x-www-form-urlencoded")
            .body(body)
    }
}

/// A signed-in UI session over plain HTTP.
pub struct Session {
    pub http: reqwest::Client,
    pub base: String,
    pub cookie: String,
}

/// The CSRF token in a page's forms.
pub fn csrf_in(html: &str) -> String {
    let at = html
        .find("name=\"csrf\" value=\"")
        .expect("page has a CSRF field")
        + 19;
    html[at..].split('"').next().unwrap_or_default().to_owned()
}

/// Fetches the sign-in form (its nonce cookie and field), then posts it as a browser would.
pub async fn post_login(
    http: &reqwest::Client,
    base: &str,
    user: &str,
    password: &str,
) -> reqwest::Response {
    let form = http.get(format!("{base}/ui/login")).send().await.unwrap();
    let cookie = form
        .headers()
        .get("set-cookie")
        .expect("the form sets its nonce cookie")
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_owned();
    let html = form.text().await.unwrap();
    let at = html
        .find("name=\"login_csrf\" value=\"")
        .expect("nonce field")
        + 25;
    let nonce = html[at..].split('"').next().unwrap().to_owned();
    http.post(format!("{base}/ui/login"))
        .header("cookie", cookie)
        .form_pairs(&[
            ("login_csrf", &nonce),
            ("user", user),
            ("password", password),
        ])
        .send()
        .await
        .unwrap()
}

impl Session {
    /// Signs in through the login form; panics unless it succeeds.
    pub async fn login(b: &Berth, user: &str, password: &str) -> Session {
        let http = common::client();
        let resp = post_login(&http, &b.url(), user, password).await;
        assert_eq!(resp.status(), 303, "login of {user}");
        let set = resp
            .headers()
            .get("set-cookie")
            .expect("session cookie")
            .to_str()
            .unwrap()
            .to_owned();
        let cookie = set.split(';').next().unwrap().to_owned();
        Session {
            http,
            base: b.url(),
            cookie,
        }
    }

    pub async fn get(&self, path: &str) -> (u16, String) {
        let r = self
            .http
            .get(format!("{}{path}", self.base))
            .header("cookie", &self.cookie)
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.text().await.unwrap())
    }

    pub async fn post(&self, path: &str, form: &[(&str, &str)]) -> (u16, String) {
        let r = self
            .http
            .post(format!("{}{path}", self.base))
            .header("cookie", &self.cookie)
            .form_pairs(form)
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.text().await.unwrap())
    }

    /// The CSRF token of this session, read from a page.
    pub async fn csrf(&self) -> String {
        let (status, html) = self.get("/ui").await;
        assert_eq!(status, 200);
        csrf_in(&html)
    }
}
