//! Berth mirroring a real CNCF distribution registry (`docker-registry`, Debian package `docker-registry`):
//! - anonymous: a tag, an OCI index and its child pulled through berth are byte-identical to what was pushed to
//!   distribution (same `Docker-Content-Digest`), blobs hash-verified; once distribution is stopped, everything is
//!   still served from berth's cache (tags with `tag_ttl = "0s"`, so through the stale-if-error path);
//! - htpasswd (Basic) auth: berth with the right credentials pulls; with a wrong password or none, berth answers
//!   404 or 5xx with an OCI error body, never 200, and never echoes the password.
//!
//! - token auth: distribution trusts a token issuer run by the test (ES256 JWTs with an `x5c` certificate chain, the
//!   Docker registry token spec); berth with the right credentials goes through the token flow, without them it is
//!   refused.
//!
//! Distribution runs on a free loopback port with a generated config in a temp dir and is killed on drop. Skipped (with a message) when `docker-registry` is not
//! installed and `CI` is unset; a failure under CI.

mod common;
#[path = "common/image.rs"]
mod image;
#[path = "common/upstream.rs"]
mod upstream;

use bytes::Bytes;
use common::{free_port, sha256_digest};
use reqwest::header::CONTENT_TYPE;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use upstream::{
    ACCEPT_MANIFESTS, MirrorBerth, OCI_INDEX, OCI_MANIFEST, Outcome, TestImage, berth_with_config,
    get, get_accept, http, mirror_toml, send,
};

const REPO: &str = "team/app";
const USER: &str = "u";
const PASSWORD: &str = "berth-Test-pw-4711";
const WRONG_PASSWORD: &str = "not-the-password-9813";

// ---------------------------------------------------------------------------------------------------------------
// A distribution registry process
// ---------------------------------------------------------------------------------------------------------------

/// A running `docker-registry serve`; killed when dropped.
struct Distribution {
    child: Option<Child>,
    port: u16,
    credentials: Option<(String, String)>,
    /// Token auth: the issuer distribution trusts (pushes here use tokens it mints).
    issuer: Option<std::sync::Arc<token::Issuer>>,
    dir: tempfile::TempDir,
}

impl Distribution {
    /// Starts distribution with filesystem storage in a temp dir; with htpasswd auth when `credentials` is set.
    fn start(credentials: Option<(&str, &str)>) -> Distribution {
        Self::start_auth(credentials, None)
    }

    /// Starts distribution behind the Docker token flow of `issuer` (its certificate is the trusted root).
    fn start_token(issuer: std::sync::Arc<token::Issuer>) -> Distribution {
        Self::start_auth(None, Some(issuer))
    }

    fn start_auth(
        credentials: Option<(&str, &str)>,
        issuer: Option<std::sync::Arc<token::Issuer>>,
    ) -> Distribution {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let root = dir.path().join("storage");
        std::fs::create_dir_all(&root).unwrap();
        let mut yaml = format!(
            "version: 0.1\n\
             log:\n  level: error\n  accesslog:\n    disabled: true\n\
             storage:\n  filesystem:\n    rootdirectory: {root:?}\n\
             http:\n  addr: 127.0.0.1:{port}\n  secret: berth-mirror-distribution-test\n"
        );
        if let Some((user, password)) = credentials {
            // Cost 4 keeps both hashing here and distribution's check of every request fast.
            let hash = bcrypt::hash_with_result(password, 4)
                .unwrap()
                .format_for_version(bcrypt::Version::TwoY);
            let htpasswd = dir.path().join("htpasswd");
            std::fs::write(&htpasswd, format!("{user}:{hash}\n")).unwrap();
            yaml.push_str(&format!(
                "auth:\n  htpasswd:\n    realm: basic-realm\n    path: {htpasswd:?}\n"
            ));
        }
        if let Some(issuer) = &issuer {
            let bundle = dir.path().join("token-root.pem");
            std::fs::write(&bundle, &issuer.cert_pem).unwrap();
            yaml.push_str(&format!(
                "auth:\n  token:\n    realm: {}/token\n    service: {}\n    issuer: {}\n    rootcertbundle: {bundle:?}\n",
                issuer.url(),
                token::SERVICE,
                token::ISSUER
            ));
        }
        let config = dir.path().join("config.yml");
        std::fs::write(&config, &yaml).unwrap();
        let log = std::fs::File::create(dir.path().join("registry.log")).unwrap();
        let mut cmd = Command::new("docker-registry");
        cmd.arg("serve")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        // REGISTRY_* variables override the config file; none may leak in from the environment.
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("REGISTRY_") {
                cmd.env_remove(k);
            }
        }
        let child = cmd.spawn().expect("spawn docker-registry");
        let mut d = Distribution {
            child: Some(child),
            port,
            credentials: credentials.map(|(u, p)| (u.to_string(), p.to_string())),
            issuer,
            dir,
        };
        d.wait_ready();
        d
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("registry.log")).unwrap_or_default()
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Some(st) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!(
                    "docker-registry exited ({st}) before listening on {}; its log:\n{}",
                    self.port,
                    self.log()
                );
            }
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!(
            "docker-registry did not listen on {} within 30 s; its log:\n{}",
            self.port,
            self.log()
        );
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Kills the process and waits until its port refuses connections.
    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        assert!(
            std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err(),
            "port {} still accepts connections after distribution was stopped",
            self.port
        );
    }

    fn authed(&self, req: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        if let Some(issuer) = &self.issuer {
            return req.bearer_auth(issuer.mint(&format!("repository:{REPO}:pull,push")));
        }
        match &self.credentials {
            Some((u, p)) => req.basic_auth(u, Some(p)),
            None => req,
        }
    }

    /// Monolithic upload: `POST .../blobs/uploads/` then `PUT <Location>&digest=`.
    async fn push_blob(&self, repo: &str, data: &Bytes) {
        let digest = sha256_digest(data);
        let c = http();
        let r = self
            .authed(c.post(format!("{}/v2/{repo}/blobs/uploads/", self.url())))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 202, "distribution: start upload of {digest}");
        let loc = r.headers()["location"].to_str().unwrap().to_string();
        let put = image::with_digest(&image::absolute(&self.url(), &loc), &digest);
        let r = self
            .authed(c.put(put))
            .header(CONTENT_TYPE, "application/octet-stream")
            .body(data.clone())
            .send()
            .await
            .unwrap();
        let status = r.status();
        let dcd = header(r.headers(), "docker-content-digest");
        assert_eq!(
            status,
            201,
            "distribution: finish upload of {digest}: {}",
            r.text().await.unwrap_or_default()
        );
        assert_eq!(dcd.as_deref(), Some(digest.as_str()));
    }

    /// `PUT /v2/<repo>/manifests/<tag>`; asserts 201 and that distribution computed the digest of `bytes`.
    async fn push_manifest(&self, repo: &str, tag: &str, media_type: &str, bytes: &Bytes) {
        let r = self
            .authed(http().put(format!("{}/v2/{repo}/manifests/{tag}", self.url())))
            .header(CONTENT_TYPE, media_type)
            .body(bytes.clone())
            .send()
            .await
            .unwrap();
        let status = r.status();
        let dcd = header(r.headers(), "docker-content-digest");
        assert_eq!(
            status,
            201,
            "distribution: PUT manifest {repo}:{tag}: {}",
            r.text().await.unwrap_or_default()
        );
        assert_eq!(dcd, Some(sha256_digest(bytes)), "{repo}:{tag}");
    }

    /// The manifest as distribution itself serves it: (content type, Docker-Content-Digest, bytes).
    async fn manifest(&self, repo: &str, reference: &str) -> (String, String, Bytes) {
        let r = self
            .authed(http().get(format!("{}/v2/{repo}/manifests/{reference}", self.url())))
            .header("Accept", ACCEPT_MANIFESTS)
            .send()
            .await
            .unwrap();
        assert_eq!(
            r.status(),
            200,
            "distribution: GET manifest {repo}:{reference}"
        );
        let ct = header(r.headers(), "content-type").unwrap_or_default();
        let dcd = header(r.headers(), "docker-content-digest").unwrap_or_default();
        (ct, dcd, r.bytes().await.unwrap())
    }
}

impl Drop for Distribution {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn header(h: &reqwest::header::HeaderMap, name: &str) -> Option<String> {
    h.get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

// ---------------------------------------------------------------------------------------------------------------
// The pushed content
// ---------------------------------------------------------------------------------------------------------------

/// What was pushed: an image (`v1`) and an OCI index over it (`multi`).
struct Pushed {
    img: TestImage,
    index: Bytes,
    index_digest: String,
}

/// Pushes config + two layers of a few hundred KB + OCI manifest as `REPO:v1`, and an OCI index naming that
/// manifest as `REPO:multi`; checks distribution serves both back unchanged.
async fn push_image(d: &Distribution, seed: u64) -> Pushed {
    let img = TestImage::new(seed, &[300 * 1024 + 7, 450 * 1024 + 11]);
    for (_, b) in img.blobs() {
        d.push_blob(REPO, &b).await;
    }
    d.push_manifest(REPO, "v1", OCI_MANIFEST, &img.manifest)
        .await;
    // Pretty-printed with annotations, so a client re-serialising the JSON would change the digest.
    let index = Bytes::from(
        serde_json::to_vec_pretty(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": [{
                "mediaType": OCI_MANIFEST,
                "digest": img.digest,
                "size": img.manifest.len(),
                "platform": {"architecture": "amd64", "os": "linux"},
            }],
            "annotations": {"org.example.seed": seed.to_string()},
        }))
        .unwrap(),
    );
    d.push_manifest(REPO, "multi", OCI_INDEX, &index).await;
    let index_digest = sha256_digest(&index);
    for (tag, mt, bytes, digest) in [
        ("v1", OCI_MANIFEST, &img.manifest, &img.digest),
        ("multi", OCI_INDEX, &index, &index_digest),
    ] {
        let (ct, dcd, got) = d.manifest(REPO, tag).await;
        assert_eq!(ct, mt, "distribution's content type for {tag}");
        assert_eq!(&dcd, digest, "distribution's digest for {tag}");
        assert!(got == bytes, "distribution changed the bytes of {tag}");
    }
    Pushed {
        img,
        index,
        index_digest,
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Pulling through berth
// ---------------------------------------------------------------------------------------------------------------

fn mirror(d: &Distribution, extra: &[(&str, &str)]) -> MirrorBerth {
    let mut opts = vec![
        ("connect_timeout", "2s"),
        ("response_timeout", "10s"),
        ("idle_timeout", "10s"),
    ];
    opts.extend_from_slice(extra);
    berth_with_config(&mirror_toml("dist", &d.url(), &opts))
}

/// GET (and HEAD) a manifest through berth: 200, the exact bytes, digest and media type.
async fn check_manifest(url: &str, want: &[u8], digest: &str, media_type: &str, when: &str) {
    let o = get_accept(url, ACCEPT_MANIFESTS).await;
    assert_eq!(o.status, 200, "{when}: GET {url}: {}", o.describe());
    assert_eq!(
        o.header("docker-content-digest").as_deref(),
        Some(digest),
        "{when}: GET {url}: Docker-Content-Digest"
    );
    assert_eq!(
        o.header("content-type").as_deref(),
        Some(media_type),
        "{when}: GET {url}: Content-Type"
    );
    assert_eq!(
        sha256_digest(o.bytes()),
        digest,
        "{when}: GET {url}: body digest"
    );
    assert!(
        o.bytes() == want,
        "{when}: GET {url}: bytes differ from the pushed ones"
    );

    let o = send(
        http().head(url).header("Accept", ACCEPT_MANIFESTS),
        Duration::from_secs(60),
    )
    .await;
    assert_eq!(o.status, 200, "{when}: HEAD {url}: {}", o.describe());
    assert_eq!(
        o.header("docker-content-digest").as_deref(),
        Some(digest),
        "{when}: HEAD {url}: Docker-Content-Digest"
    );
    assert_eq!(
        o.header("content-length"),
        Some(want.len().to_string()),
        "{when}: HEAD {url}: Content-Length"
    );
}

/// Pulls the tag, the index, its child by digest and every blob through berth, checking every byte.
async fn pull_all(b: &MirrorBerth, p: &Pushed, when: &str) {
    let base = format!("{}/v2/dist/{REPO}", b.url());
    let img = &p.img;
    check_manifest(
        &format!("{base}/manifests/v1"),
        &img.manifest,
        &img.digest,
        OCI_MANIFEST,
        when,
    )
    .await;
    check_manifest(
        &format!("{base}/manifests/multi"),
        &p.index,
        &p.index_digest,
        OCI_INDEX,
        when,
    )
    .await;
    check_manifest(
        &format!("{base}/manifests/{}", p.index_digest),
        &p.index,
        &p.index_digest,
        OCI_INDEX,
        when,
    )
    .await;
    // The index's child, by the digest the index names.
    let index: serde_json::Value = serde_json::from_slice(&p.index).unwrap();
    for m in index["manifests"].as_array().unwrap() {
        let d = m["digest"].as_str().unwrap();
        check_manifest(
            &format!("{base}/manifests/{d}"),
            &img.manifest,
            d,
            OCI_MANIFEST,
            when,
        )
        .await;
    }
    for (digest, bytes) in img.blobs() {
        let url = format!("{base}/blobs/{digest}");
        let o = get(&url).await;
        assert_eq!(o.status, 200, "{when}: GET {url}: {}", o.describe());
        assert_eq!(
            sha256_digest(o.bytes()),
            digest,
            "{when}: GET {url}: body digest"
        );
        assert!(o.bytes() == bytes, "{when}: GET {url}: bytes differ");
        assert_eq!(
            o.header("docker-content-digest").as_deref(),
            Some(digest.as_str()),
            "{when}: GET {url}: Docker-Content-Digest"
        );
    }
}

/// Asserts a pull through berth failed the way a client can act on: 404 or 5xx with an OCI error body that does not
/// echo `secret`.
fn assert_refused(o: &Outcome, what: &str, secret: &str) {
    assert!(
        o.status == 404 || (500..600).contains(&o.status),
        "{what}: expected 404 or 5xx, got {}",
        o.describe()
    );
    assert!(
        o.error_code().is_some(),
        "{what}: no OCI error body: {}",
        o.describe()
    );
    let body = String::from_utf8_lossy(o.bytes()).to_string();
    assert!(
        !body.contains(secret),
        "{what}: the error body echoes the password: {body}"
    );
}

// ---------------------------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mirror_of_distribution_serves_identical_content() {
    if !common::tools_available(&["docker-registry"], "docker-registry") {
        return;
    }
    let started = Instant::now();
    let mut dist = Distribution::start(None);
    let r = http()
        .get(format!("{}/v2/", dist.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "anonymous distribution: GET /v2/");
    let pushed = push_image(&dist, 0xD157_0000_0000_0001).await;

    // tag_ttl 0: every tag pull revalidates against distribution (HEAD), and once it is gone goes stale-if-error.
    let b = mirror(&dist, &[("tag_ttl", "0s")]);
    pull_all(&b, &pushed, "distribution up").await;
    // Again while distribution is up: cached tags revalidated, blobs and digests from the cache.
    pull_all(&b, &pushed, "distribution up, second pull").await;

    dist.stop();
    pull_all(&b, &pushed, "distribution stopped").await;
    eprintln!(
        "mirror_of_distribution_serves_identical_content: {:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mirror_of_distribution_with_basic_auth() {
    if !common::tools_available(&["docker-registry"], "docker-registry") {
        return;
    }
    let started = Instant::now();
    let dist = Distribution::start(Some((USER, PASSWORD)));

    // Distribution itself: a Basic challenge for anonymous requests, 200 with the credentials.
    let r = http()
        .get(format!("{}/v2/", dist.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401, "htpasswd distribution: anonymous GET /v2/");
    let challenge = header(r.headers(), "www-authenticate").unwrap_or_default();
    assert!(
        challenge.starts_with("Basic") && challenge.contains("basic-realm"),
        "unexpected challenge {challenge:?}"
    );
    let r = http()
        .get(format!("{}/v2/", dist.url()))
        .basic_auth(USER, Some(WRONG_PASSWORD))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401, "htpasswd distribution: wrong password");
    let r = dist
        .authed(http().get(format!("{}/v2/", dist.url())))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "htpasswd distribution: right password");

    let pushed = push_image(&dist, 0xD157_0000_0000_0002).await;

    let good = mirror(&dist, &[("username", USER), ("password", PASSWORD)]);
    pull_all(&good, &pushed, "with credentials").await;
    pull_all(&good, &pushed, "with credentials, second pull").await;

    let img = &pushed.img;
    for (label, creds) in [
        ("wrong password", Some(WRONG_PASSWORD)),
        ("no credentials", None),
    ] {
        let b = match creds {
            Some(pw) => mirror(&dist, &[("username", USER), ("password", pw)]),
            None => mirror(&dist, &[]),
        };
        let base = format!("{}/v2/dist/{REPO}", b.url());
        for path in [
            "manifests/v1".to_string(),
            "manifests/multi".to_string(),
            format!("manifests/{}", img.digest),
            format!("blobs/{}", img.config.0),
            format!("blobs/{}", img.layers[0].0),
        ] {
            let url = format!("{base}/{path}");
            let o = get_accept(&url, ACCEPT_MANIFESTS).await;
            assert_refused(&o, &format!("{label}: GET {url}"), WRONG_PASSWORD);
            assert_refused(&o, &format!("{label}: GET {url}"), PASSWORD);
            let o = send(
                http().head(&url).header("Accept", ACCEPT_MANIFESTS),
                Duration::from_secs(60),
            )
            .await;
            assert!(
                o.status == 404 || (500..600).contains(&o.status),
                "{label}: HEAD {url}: expected 404 or 5xx, got {}",
                o.describe()
            );
        }
    }
    eprintln!(
        "mirror_of_distribution_with_basic_auth: {:?}",
        started.elapsed()
    );
}

// ---------------------------------------------------------------------------------------------------------------
// Token auth
// ---------------------------------------------------------------------------------------------------------------

/// A Docker-registry token issuer for distribution (a test tool): Basic-authenticated `GET /token?service=&scope=`
/// answers an ES256 JWT whose header carries the issuer's self-signed certificate (`x5c`), which distribution
/// verifies against its `rootcertbundle`.
mod token {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use axum::extract::{Query, State};
    use axum::http::{HeaderMap, StatusCode};
    use axum::response::{IntoResponse, Response};
    use base64::Engine;
    use jsonwebtoken::{Algorithm, EncodingKey, Header};

    pub const SERVICE: &str = "berth-test-registry";
    pub const ISSUER: &str = "berth-test-issuer";

    pub struct Issuer {
        pub port: u16,
        pub cert_pem: String,
        key: EncodingKey,
        x5c: String,
        user: (String, String),
        /// Tokens handed out over HTTP (to berth), not the ones the test mints for its own pushes.
        pub served: AtomicUsize,
        pub refused: AtomicUsize,
    }

    impl Issuer {
        pub async fn start(user: &str, password: &str) -> Arc<Issuer> {
            let rcgen::CertifiedKey { cert, signing_key } =
                rcgen::generate_simple_self_signed(vec!["token-issuer".to_string()]).unwrap();
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let issuer = Arc::new(Issuer {
                port: listener.local_addr().unwrap().port(),
                cert_pem: cert.pem(),
                key: EncodingKey::from_ec_der(&signing_key.serialize_der()),
                x5c: base64::engine::general_purpose::STANDARD.encode(cert.der()),
                user: (user.to_owned(), password.to_owned()),
                served: AtomicUsize::new(0),
                refused: AtomicUsize::new(0),
            });
            let app = axum::Router::new()
                .route("/token", axum::routing::get(serve_token))
                .with_state(issuer.clone());
            tokio::spawn(async move {
                let _ = axum::serve(listener, app).await;
            });
            issuer
        }

        pub fn url(&self) -> String {
            format!("http://127.0.0.1:{}", self.port)
        }

        /// A token granting what `scope` (`repository:NAME:ACTIONS`, space-separated) asks for.
        pub fn mint(&self, scope: &str) -> String {
            let access: Vec<serde_json::Value> = scope
                .split(' ')
                .filter_map(|s| {
                    let mut parts = s.splitn(3, ':');
                    let (kind, name, actions) = (parts.next()?, parts.next()?, parts.next()?);
                    Some(serde_json::json!({"type": kind, "name": name, "actions": actions.split(',').collect::<Vec<_>>()}))
                })
                .collect();
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_secs();
            let claims = serde_json::json!({
                "iss": ISSUER, "sub": self.user.0, "aud": SERVICE,
                "exp": now + 300, "nbf": now - 10, "iat": now,
                "jti": format!("{now}-{}", self.served.load(Ordering::Relaxed)),
                "access": access,
            });
            let mut header = Header::new(Algorithm::ES256);
            header.x5c = Some(vec![self.x5c.clone()]);
            jsonwebtoken::encode(&header, &claims, &self.key).unwrap()
        }
    }

    async fn serve_token(
        State(issuer): State<Arc<Issuer>>,
        Query(q): Query<Vec<(String, String)>>,
        headers: HeaderMap,
    ) -> Response {
        let expected = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD
                .encode(format!("{}:{}", issuer.user.0, issuer.user.1))
        );
        let given = headers.get("authorization").and_then(|v| v.to_str().ok());
        if given != Some(expected.as_str()) {
            issuer.refused.fetch_add(1, Ordering::Relaxed);
            return (StatusCode::UNAUTHORIZED, "bad credentials").into_response();
        }
        let scope: Vec<&str> = q
            .iter()
            .filter(|(k, _)| k == "scope")
            .map(|(_, v)| v.as_str())
            .collect();
        let token = issuer.mint(&scope.join(" "));
        issuer.served.fetch_add(1, Ordering::Relaxed);
        axum::Json(serde_json::json!({"token": token, "access_token": token, "expires_in": 300}))
            .into_response()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mirror_of_distribution_with_token_auth() {
    if !common::tools_available(&["docker-registry"], "docker-registry") {
        return;
    }
    let issuer = token::Issuer::start(USER, PASSWORD).await;
    let dist = Distribution::start_token(issuer.clone());

    // Distribution itself: a Bearer challenge naming the issuer; a minted token opens it.
    let r = http()
        .get(format!("{}/v2/", dist.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401, "token distribution: anonymous GET /v2/");
    let challenge = header(r.headers(), "www-authenticate").unwrap_or_default();
    assert!(
        challenge.starts_with("Bearer") && challenge.contains(&issuer.url()),
        "unexpected challenge {challenge:?}"
    );
    let pushed = push_image(&dist, 0xD157_0000_0000_0003).await;

    let good = mirror(&dist, &[("username", USER), ("password", PASSWORD)]);
    pull_all(&good, &pushed, "token flow with credentials").await;
    let served = issuer.served.load(std::sync::atomic::Ordering::Relaxed);
    assert!(served >= 1, "berth never asked the issuer for a token");
    pull_all(&good, &pushed, "token flow, second pull").await;

    for (label, creds) in [
        ("wrong password", Some(WRONG_PASSWORD)),
        ("no credentials", None),
    ] {
        let b = match creds {
            Some(pw) => mirror(&dist, &[("username", USER), ("password", pw)]),
            None => mirror(&dist, &[]),
        };
        let url = format!("{}/v2/dist/{REPO}/manifests/v1", b.url());
        let o = get_accept(&url, ACCEPT_MANIFESTS).await;
        assert_refused(&o, &format!("{label}: GET {url}"), PASSWORD);
        let url = format!(
            "{}/v2/dist/{REPO}/blobs/{}",
            b.url(),
            pushed.img.layers[0].0
        );
        assert_refused(&get(&url).await, &format!("{label}: GET {url}"), PASSWORD);
    }
    assert!(issuer.refused.load(std::sync::atomic::Ordering::Relaxed) >= 1);
}
