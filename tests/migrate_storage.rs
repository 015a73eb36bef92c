//! `berth migrate-storage` (docs/scale-out.md, "Moving to the scale-out shape"), black-box with the real binary:
//! - a registry with a multi-platform index, a referrer, several tags, a second repository, a user and a personal
//!   access token, and an image cached through a mirror, is moved to another store with its server stopped; a
//!   berth started on the copy serves every manifest and blob byte for byte, the referrers and tag lists, the
//!   mirror's cache with its upstream gone, and accepts the user's password and token;
//! - SQLite + filesystem to SQLite + filesystem always; with `BERTH_TEST_METADATA=postgres` (CI's scale-out pass)
//!   also to PostgreSQL + S3 and back again;
//! - a run stopped by a broken source blob reports it, exits non-zero and publishes nothing wrong; once the source
//!   is repaired a re-run completes, copying only what was missing; a lost destination blob is restored by a
//!   re-run; a destination holding other metadata or served by a running berth is refused.
//!
//! Each server is started with its own config file and none of the suite's `BERTH_*` shape overrides, since the
//! two sides of a migration are deliberately on different shapes.

#[path = "common/auth.rs"]
mod auth;
mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use auth::{Creds, send, sha256};
use reqwest::Method;
use serde_json::{Value, json};

const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const ALICE_PASSWORD: &str = "alice-password-1";

/// A storage shape for one side of a migration.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Shape {
    SqliteFs,
    PostgresS3,
}

/// A data directory with its config file for one shape.
struct Store {
    dir: PathBuf,
    config: PathBuf,
    shape: Shape,
}

impl Store {
    fn new(root: &Path, name: &str, shape: Shape) -> Store {
        Self::with(root, name, shape, "")
    }

    /// A store whose config file ends with `extra` (TOML tables such as `[[mirror]]`).
    fn with(root: &Path, name: &str, shape: Shape, extra: &str) -> Store {
        let dir = root.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        let mut toml = format!("[storage]\ndata_dir = {:?}\n", dir.join("data"));
        if shape == Shape::PostgresS3 {
            let endpoint =
                common::s3_endpoint().expect("BERTH_TEST_BLOBS=s3 for the scale-out shape");
            toml.push_str(&format!(
                "metadata = \"postgres\"\npostgres_url = {:?}\nblobs = \"s3\"\n\n[storage.s3]\nbucket = {:?}\n\
                 endpoint = {endpoint:?}\nregion = \"us-east-1\"\npath_style = true\nallow_http = true\n",
                common::postgres_url(&dir),
                common::s3_bucket(&dir),
            ));
        }
        toml.push_str(extra);
        let config = dir.join("berth.toml");
        std::fs::write(&config, toml).unwrap();
        Store { dir, config, shape }
    }

    fn data(&self) -> PathBuf {
        self.dir.join("data")
    }

    fn config(&self) -> &str {
        self.config.to_str().unwrap()
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        if self.shape == Shape::PostgresS3 {
            common::drop_database(&self.dir);
        }
    }
}

/// The berth binary with none of the `BERTH_*` shape overrides (each store's config file says where it is).
fn berth_cmd() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_berth"));
    for var in [
        "BERTH_METADATA",
        "BERTH_POSTGRES_URL",
        "BERTH_BLOBS",
        "BERTH_S3_BUCKET",
        "BERTH_S3_ENDPOINT",
        "BERTH_DATA_DIR",
        "BERTH_CONFIG",
        "BERTH_OPEN_ACCESS",
    ] {
        c.env_remove(var);
    }
    c.env("AWS_ACCESS_KEY_ID", "berth-test")
        .env("AWS_SECRET_ACCESS_KEY", "berth-test")
        .env("BERTH_ADMIN_PASSWORD", common::ADMIN_PASSWORD)
        .env("RUST_LOG", "warn");
    c
}

fn run(args: &[&str], stdin: &str) -> Output {
    let mut cmd = berth_cmd();
    cmd.args(args);
    common::run_piped(cmd, args, stdin)
}

fn run_ok(args: &[&str], stdin: &str) -> String {
    let out = run(args, stdin);
    assert!(out.status.success(), "berth {args:?} failed");
    String::from_utf8(out.stdout).unwrap()
}

fn migrate(from: &Store, to: &Store, extra: &[&str]) -> Output {
    let mut args = vec![
        "migrate-storage",
        "--from",
        from.config(),
        "--to",
        to.config(),
    ];
    args.extend_from_slice(extra);
    run(&args, "")
}

fn migrate_ok(from: &Store, to: &Store, extra: &[&str]) -> String {
    let out = migrate(from, to, extra);
    assert!(out.status.success(), "migrate-storage failed");
    String::from_utf8(out.stdout).unwrap()
}

/// `berth serve --config` on a store, with its secure defaults.
struct Server {
    child: Child,
    port: u16,
}

impl Server {
    fn start(store: &Store) -> Server {
        let port = common::free_port();
        let child = berth_cmd()
            .args(["serve", "--config", store.config(), "--listen"])
            .arg(format!("127.0.0.1:{port}"))
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "berth did not start on {port}");
            std::thread::sleep(Duration::from_millis(20));
        }
        Server { child, port }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn stop(mut self) {
        self.kill();
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

fn admin() -> Creds {
    Creds::basic("admin", common::ADMIN_PASSWORD)
}

async fn push_blob(base: &str, repo: &str, data: &[u8]) -> String {
    let digest = sha256(data);
    let (s, _, b) = send(
        Method::POST,
        &format!("{base}/v2/{repo}/blobs/uploads/?digest={digest}"),
        &admin(),
        &[("Content-Type", "application/octet-stream")],
        data.to_vec(),
    )
    .await;
    assert_eq!(s, 201, "blob push: {}", String::from_utf8_lossy(&b));
    digest
}

async fn push_manifest(base: &str, repo: &str, reference: &str, media_type: &str, body: &[u8]) {
    let (s, _, b) = send(
        Method::PUT,
        &format!("{base}/v2/{repo}/manifests/{reference}"),
        &admin(),
        &[("Content-Type", media_type)],
        body.to_vec(),
    )
    .await;
    assert_eq!(s, 201, "manifest push: {}", String::from_utf8_lossy(&b));
}

fn descriptor(media_type: &str, data: &[u8]) -> Value {
    json!({"mediaType": media_type, "digest": sha256(data), "size": data.len()})
}

fn pseudo_random(seed: u64, n: usize) -> Vec<u8> {
    let mut x = seed | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// What was pushed: (repository, reference, manifest bytes) and (repository, blob digest, bytes).
#[derive(Default)]
struct Pushed {
    manifests: Vec<(String, String, Vec<u8>)>,
    blobs: Vec<(String, String, Vec<u8>)>,
    index: String,
    referrer: String,
    token: String,
}

/// Fills a running berth: a two-platform index tagged three times with a referrer in `team/app`, a single image
/// with a 3 MiB layer in `team/other`, and `alice` with a pull token for `team/*`.
async fn fill(server: &Server, store: &Store) -> Pushed {
    let base = server.url();
    let mut p = Pushed::default();
    let mut children = Vec::new();
    for (i, arch) in ["amd64", "arm64"].iter().enumerate() {
        let config = json!({"architecture": arch, "os": "linux"})
            .to_string()
            .into_bytes();
        let layer = pseudo_random(i as u64 + 7, 200_000 + i);
        for blob in [&config, &layer] {
            let d = push_blob(&base, "team/app", blob).await;
            p.blobs.push(("team/app".into(), d, blob.clone()));
        }
        let manifest = serde_json::to_vec(&json!({
            "schemaVersion": 2, "mediaType": OCI_MANIFEST,
            "config": descriptor("application/vnd.oci.image.config.v1+json", &config),
            "layers": [descriptor("application/vnd.oci.image.layer.v1.tar", &layer)],
        }))
        .unwrap();
        let digest = sha256(&manifest);
        push_manifest(&base, "team/app", &digest, OCI_MANIFEST, &manifest).await;
        p.manifests
            .push(("team/app".into(), digest, manifest.clone()));
        let mut d = descriptor(OCI_MANIFEST, &manifest);
        d["platform"] = json!({"os": "linux", "architecture": arch});
        children.push(d);
    }
    let index = serde_json::to_vec(&json!({
        "schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": children,
    }))
    .unwrap();
    p.index = sha256(&index);
    for tag in ["v1", "v1.0", "latest"] {
        push_manifest(&base, "team/app", tag, OCI_INDEX, &index).await;
        p.manifests
            .push(("team/app".into(), tag.into(), index.clone()));
    }
    let sbom = b"{\"sbom\":true}".to_vec();
    let empty = b"{}".to_vec();
    for blob in [&sbom, &empty] {
        push_blob(&base, "team/app", blob).await;
    }
    let referrer = serde_json::to_vec(&json!({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "artifactType": "application/vnd.example.sbom",
        "config": descriptor("application/vnd.oci.empty.v1+json", &empty),
        "layers": [descriptor("application/json", &sbom)],
        "subject": descriptor(OCI_INDEX, &index),
    }))
    .unwrap();
    p.referrer = sha256(&referrer);
    push_manifest(&base, "team/app", &p.referrer, OCI_MANIFEST, &referrer).await;
    p.manifests
        .push(("team/app".into(), p.referrer.clone(), referrer));

    let config = b"{\"architecture\":\"amd64\",\"os\":\"linux\",\"other\":1}".to_vec();
    let layer = pseudo_random(99, 3 << 20);
    for blob in [&config, &layer] {
        let d = push_blob(&base, "team/other", blob).await;
        p.blobs.push(("team/other".into(), d, blob.clone()));
    }
    let manifest = auth::manifest_for(&config, &layer);
    push_manifest(&base, "team/other", "v2", OCI_MANIFEST, &manifest).await;
    p.manifests
        .push(("team/other".into(), "v2".into(), manifest));

    run_ok(
        &["user", "add", "alice", "--config", store.config()],
        &format!("{ALICE_PASSWORD}\n"),
    );
    p.token = run_ok(
        &[
            "token",
            "create",
            "--user",
            "alice",
            "--name",
            "ci",
            "--scope",
            "team/*:pull",
            "--config",
            store.config(),
        ],
        "",
    )
    .trim()
    .to_owned();
    p
}

/// Everything `fill` pushed is served by `server`, byte for byte, and alice's password and token still work.
async fn check(server: &Server, p: &Pushed) {
    let base = server.url();
    // Every manifest as admin; alice's password and token on one each (every Basic login hashes a password).
    let logins = [
        (admin(), &p.manifests[..]),
        (Creds::basic("alice", ALICE_PASSWORD), &p.manifests[..1]),
        (Creds::basic("alice", &p.token), &p.manifests[..1]),
    ];
    for (creds, manifests) in logins {
        for (repo, reference, bytes) in manifests {
            let (s, h, body) = send(
                Method::GET,
                &format!("{base}/v2/{repo}/manifests/{reference}"),
                &creds,
                &[("Accept", &format!("{OCI_INDEX}, {OCI_MANIFEST}"))],
                Vec::new(),
            )
            .await;
            assert_eq!(s, 200, "{repo}:{reference} with {creds:?}");
            assert_eq!(&body, bytes, "{repo}:{reference} byte for byte");
            assert_eq!(
                h.get("docker-content-digest").unwrap().to_str().unwrap(),
                sha256(bytes)
            );
        }
    }
    for (repo, digest, bytes) in &p.blobs {
        let (s, _, body) = send(
            Method::GET,
            &format!("{base}/v2/{repo}/blobs/{digest}"),
            &admin(),
            &[],
            Vec::new(),
        )
        .await;
        assert_eq!(s, 200, "blob {repo}@{digest}");
        assert!(&body == bytes, "blob {repo}@{digest} byte for byte");
    }
    let (s, _, body) = send(
        Method::GET,
        &format!("{base}/v2/team/app/tags/list"),
        &admin(),
        &[],
        Vec::new(),
    )
    .await;
    assert_eq!(s, 200);
    let tags: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(tags["tags"], json!(["latest", "v1", "v1.0"]));
    let (s, _, body) = send(
        Method::GET,
        &format!("{base}/v2/team/app/referrers/{}", p.index),
        &admin(),
        &[],
        Vec::new(),
    )
    .await;
    assert_eq!(s, 200);
    let referrers: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(referrers["manifests"][0]["digest"], json!(p.referrer));
    assert_eq!(
        referrers["manifests"][0]["artifactType"],
        json!("application/vnd.example.sbom")
    );
    // The token's scope came along: pull only.
    let (s, _, _) = send(
        Method::PUT,
        &format!("{base}/v2/team/app/manifests/new"),
        &Creds::basic("alice", &p.token),
        &[("Content-Type", OCI_INDEX)],
        b"{}".to_vec(),
    )
    .await;
    assert!(s == 401 || s == 403, "a pull token cannot push ({s})");
}

/// The image `round_trip` caches through the mirror `local` (the upstream is stopped before the first move).
struct Mirrored {
    upstream: common::Berth,
    image: auth::Pushed,
}

impl Mirrored {
    async fn start() -> Mirrored {
        let upstream = common::Berth::start();
        let image = auth::push_image(
            &upstream.url(),
            &Creds::Anonymous,
            "team/up",
            "v1",
            "cached upstream image",
        )
        .await;
        Mirrored { upstream, image }
    }

    fn config(&self) -> String {
        format!(
            "\n[[mirror]]\nname = \"local\"\nupstream = {:?}\n",
            self.upstream.url()
        )
    }

    /// Pulls the image's manifest by tag and its blobs through the mirror: the cache now holds them.
    async fn pull(&self, server: &Server) -> Vec<Vec<u8>> {
        let mut bodies = Vec::new();
        let base = server.url();
        let (s, _, body) = send(
            Method::GET,
            &format!("{base}/v2/local/team/up/manifests/v1"),
            &admin(),
            &[("Accept", OCI_MANIFEST)],
            Vec::new(),
        )
        .await;
        assert_eq!(
            s,
            200,
            "mirror manifest: {}",
            String::from_utf8_lossy(&body)
        );
        assert_eq!(sha256(&body), self.image.manifest);
        bodies.push(body);
        for digest in [&self.image.config, &self.image.layer] {
            let (s, _, body) = send(
                Method::GET,
                &format!("{base}/v2/local/team/up/blobs/{digest}"),
                &admin(),
                &[],
                Vec::new(),
            )
            .await;
            assert_eq!(s, 200, "mirror blob {digest}");
            assert_eq!(&sha256(&body), digest);
            bodies.push(body);
        }
        bodies
    }
}

/// Fills a berth on the first shape (and caches an image through a mirror), then moves it along `shapes` one
/// migration at a time, checking each copy; the copies serve the mirror's cache with the upstream gone.
async fn round_trip(shapes: &[(&str, Shape)]) {
    let root = tempfile::tempdir().unwrap();
    let mut mirrored = Mirrored::start().await;
    let stores: Vec<Store> = shapes
        .iter()
        .map(|(name, shape)| Store::with(root.path(), name, *shape, &mirrored.config()))
        .collect();
    let server = Server::start(&stores[0]);
    let pushed = fill(&server, &stores[0]).await;
    check(&server, &pushed).await;
    let cached = mirrored.pull(&server).await;
    server.stop();
    mirrored.upstream.kill9();
    for (hop, pair) in stores.windows(2).enumerate() {
        let out = migrate_ok(&pair[0], &pair[1], &["--verify"]);
        // The mirror cache adds a repository, a manifest, a tag and 3 blobs; each hop also carries the repository
        // the previous hop's check pushed (one image: 3 blobs).
        let summary = format!(
            "metadata: copied {} repositories, {} manifests, {} tags, 2 users, 1 token",
            3 + hop,
            6 + hop,
            5 + hop
        );
        assert!(out.contains(&summary), "{out}");
        assert!(
            out.contains(&format!("blobs: {} copied", 16 + 3 * hop)),
            "{out}"
        );
        assert!(out.contains("verified"), "{out}");
        let server = Server::start(&pair[1]);
        check(&server, &pushed).await;
        assert_eq!(
            mirrored.pull(&server).await,
            cached,
            "the mirror cache came along"
        );
        // New rows get ids after the copied ones (PostgreSQL sequences moved past them).
        let repo = format!("team/new{hop}");
        auth::push_image(&server.url(), &admin(), &repo, "v1", &repo).await;
        check(&server, &pushed).await;
        server.stop();
    }
}

#[tokio::test]
async fn sqlite_fs_moves_to_another_sqlite_fs_store_byte_for_byte() {
    round_trip(&[("a", Shape::SqliteFs), ("b", Shape::SqliteFs)]).await;
}

#[tokio::test]
async fn sqlite_fs_moves_to_postgres_s3_and_back() {
    if !common::on_postgres() || common::s3_endpoint().is_none() {
        eprintln!(
            "skipped: the scale-out shape needs BERTH_TEST_METADATA=postgres and BERTH_TEST_BLOBS=s3 (CI's second pass)"
        );
        return;
    }
    round_trip(&[
        ("single", Shape::SqliteFs),
        ("scale-out", Shape::PostgresS3),
        ("single-again", Shape::SqliteFs),
    ])
    .await;
}

/// The destination of the resumability test: the scale-out shape on CI's second pass, else another directory.
fn destination_shape() -> Shape {
    if common::on_postgres() && common::s3_endpoint().is_some() {
        Shape::PostgresS3
    } else {
        Shape::SqliteFs
    }
}

fn fs_blob_path(store: &Store, digest: &str) -> PathBuf {
    let hex = digest.strip_prefix("sha256:").unwrap();
    store.data().join("blobs/sha256").join(&hex[..2]).join(hex)
}

/// Whether the destination store holds bytes under `digest`.
fn destination_has(store: &Store, digest: &str) -> bool {
    match store.shape {
        Shape::SqliteFs => fs_blob_path(store, digest).exists(),
        Shape::PostgresS3 => {
            let bucket = common::s3_bucket(&store.dir);
            let key = format!(
                "/{bucket}/blobs/sha256/{}",
                digest.strip_prefix("sha256:").unwrap()
            );
            common::s3_request("HEAD", &key, &[]).0 == 200
        }
    }
}

fn remove_destination_blob(store: &Store, digest: &str) {
    match store.shape {
        Shape::SqliteFs => std::fs::remove_file(fs_blob_path(store, digest)).unwrap(),
        Shape::PostgresS3 => {
            let bucket = common::s3_bucket(&store.dir);
            let key = format!(
                "/{bucket}/blobs/sha256/{}",
                digest.strip_prefix("sha256:").unwrap()
            );
            assert_eq!(common::s3_request("DELETE", &key, &[]).0, 204);
        }
    }
}

#[tokio::test]
async fn broken_source_blob_stops_the_copy_and_a_rerun_finishes_it() {
    let root = tempfile::tempdir().unwrap();
    let src = Store::new(root.path(), "src", Shape::SqliteFs);
    let dst = Store::new(root.path(), "dst", destination_shape());
    let server = Server::start(&src);
    let pushed = fill(&server, &src).await;
    server.stop();
    let (_, big, big_bytes) = pushed
        .blobs
        .iter()
        .find(|(_, _, b)| b.len() == 3 << 20)
        .cloned()
        .unwrap();

    // Same size, other bytes: only the digest check can tell.
    let mut corrupt = big_bytes.clone();
    corrupt[1000] ^= 0xff;
    std::fs::write(fs_blob_path(&src, &big), &corrupt).unwrap();
    let out = migrate(&src, &dst, &[]);
    assert!(!out.status.success(), "a corrupt source blob fails the run");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(&big) && stderr.contains("hash"), "{stderr}");
    assert!(stderr.contains("no metadata was written"), "{stderr}");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("metadata: not copied"),
        "the summary says so too"
    );
    assert!(
        !destination_has(&dst, &big),
        "bytes that do not hash to their digest are never published"
    );

    // Repaired: the re-run copies the one missing blob and skips the rest.
    std::fs::write(fs_blob_path(&src, &big), &big_bytes).unwrap();
    let dry = String::from_utf8(migrate(&src, &dst, &["--dry-run"]).stdout).unwrap();
    assert!(dry.contains("blobs: 1 would copy"), "{dry}");
    // team/app: 2 configs, 2 layers, 2 manifests, the index, 2 referrer blobs, the referrer; team/other: 3.
    let total_blobs = 13;
    let out = migrate_ok(&src, &dst, &[]);
    assert!(
        out.contains(&format!(
            "blobs: 1 copied (3.0 MiB), {} already present",
            total_blobs - 1
        )),
        "{out}"
    );

    // A finished migration run again: nothing to do; a blob lost at the destination is copied again.
    remove_destination_blob(&dst, &big);
    let out = migrate_ok(&src, &dst, &["--verify"]);
    assert!(out.contains("already migrated"), "{out}");
    assert!(out.contains("blobs: 1 copied"), "{out}");
    let server = Server::start(&dst);
    check(&server, &pushed).await;

    // Refused while a berth serves the destination (its data-directory lock).
    let out = migrate(&src, &dst, &[]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("in use"));
    server.stop();

    // A destination with other metadata is refused, unless --force replaces it.
    let other = Store::new(root.path(), "other", Shape::SqliteFs);
    let server = Server::start(&other);
    auth::push_image(&server.url(), &admin(), "elsewhere/app", "v1", "other").await;
    server.stop();
    let out = migrate(&other, &dst, &[]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--force"),
        "the refusal names the way out"
    );
    let server = Server::start(&dst);
    check(&server, &pushed).await;
    server.stop();
    migrate_ok(&other, &dst, &["--force"]);
    let server = Server::start(&dst);
    let (s, _, _) = send(
        Method::GET,
        &format!("{}/v2/elsewhere/app/manifests/v1", server.url()),
        &admin(),
        &[("Accept", OCI_MANIFEST)],
        Vec::new(),
    )
    .await;
    assert_eq!(s, 200);
    let (s, _, _) = send(
        Method::GET,
        &format!("{}/v2/team/app/manifests/v1", server.url()),
        &admin(),
        &[("Accept", OCI_INDEX)],
        Vec::new(),
    )
    .await;
    assert_eq!(s, 404, "--force replaced the destination's metadata");
}

#[tokio::test]
async fn migration_killed_mid_copy_finishes_when_run_again() {
    let root = tempfile::tempdir().unwrap();
    let src = Store::new(root.path(), "src", Shape::SqliteFs);
    let dst = Store::new(root.path(), "dst", Shape::SqliteFs);
    let server = Server::start(&src);
    let config = b"{\"architecture\":\"amd64\",\"os\":\"linux\"}".to_vec();
    let layer = pseudo_random(5, 32 << 20);
    let big = push_blob(&server.url(), "big/app", &layer).await;
    push_blob(&server.url(), "big/app", &config).await;
    let manifest = auth::manifest_for(&config, &layer);
    push_manifest(&server.url(), "big/app", "v1", OCI_MANIFEST, &manifest).await;
    server.stop();

    // Killed as soon as the big blob's upload object at the destination has bytes (or, on a machine fast enough
    // to finish first, not at all: the assertions below hold either way).
    let mut child = berth_cmd()
        .args([
            "migrate-storage",
            "--jobs",
            "1",
            "--from",
            src.config(),
            "--to",
        ])
        .arg(dst.config())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let uploads = dst.data().join("uploads");
    let interrupted = loop {
        if child.try_wait().unwrap().is_some() {
            break false;
        }
        let writing = std::fs::read_dir(&uploads).is_ok_and(|entries| {
            entries
                .filter_map(Result::ok)
                .any(|e| e.metadata().is_ok_and(|m| m.len() > 0))
        });
        if writing {
            child.kill().unwrap();
            child.wait().unwrap();
            break true;
        }
        std::thread::sleep(Duration::from_millis(1));
    };
    eprintln!("migrate-storage killed mid-copy: {interrupted}");
    if let Ok(bytes) = std::fs::read(fs_blob_path(&dst, &big)) {
        assert!(
            bytes == layer,
            "a published blob is whole, even after kill -9"
        );
    }

    let out = migrate_ok(&src, &dst, &["--verify"]);
    assert!(out.contains("verified"), "{out}");
    assert_eq!(
        std::fs::read_dir(&uploads).unwrap().count(),
        0,
        "the killed run's upload object was removed"
    );
    let server = Server::start(&dst);
    let (s, _, body) = send(
        Method::GET,
        &format!("{}/v2/big/app/blobs/{big}", server.url()),
        &admin(),
        &[],
        Vec::new(),
    )
    .await;
    assert_eq!(s, 200);
    assert!(body == layer, "the big blob byte for byte");
    let (s, _, body) = send(
        Method::GET,
        &format!("{}/v2/big/app/manifests/v1", server.url()),
        &admin(),
        &[("Accept", OCI_MANIFEST)],
        Vec::new(),
    )
    .await;
    assert_eq!(s, 200);
    assert_eq!(body, manifest);
}
