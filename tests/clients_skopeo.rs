//! Interoperability with skopeo (Debian package `skopeo`): multi-arch OCI index round trip with preserved digests,
//! docker schema2 conversion round trip, and `skopeo list-tags`.
//!
//! Every image is generated locally by the test as an OCI image layout. Skipped (with a message) only when skopeo is
//! missing and `CI` is unset; under CI a missing skopeo is a failure.
//!
//! Set `BERTH_TEST_REGISTRY=HOST:PORT` to run the same checks against another registry (e.g. a reference registry)
//! instead of a freshly started berth.

mod common;

use common::{Berth, sha256_digest};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

// ---------------------------------------------------------------------------------------------------------------
// Tool discovery and registry target
// ---------------------------------------------------------------------------------------------------------------

/// True when skopeo can be used; false (skip) when it is missing outside CI; panics when missing under CI.
fn skopeo_available() -> bool {
    let found = Command::new("which")
        .arg("skopeo")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !found {
        if std::env::var_os("CI").is_some() {
            panic!(
                "skopeo is not installed but CI is set: .ci/run must `apt-get install -y skopeo`"
            );
        }
        eprintln!(
            "SKIPPED: skopeo is not installed (apt-get install -y skopeo); this test did not run"
        );
    }
    found
}

/// The registry under test: a fresh berth, or `BERTH_TEST_REGISTRY` when set.
struct Target {
    _berth: Option<Berth>,
    host: String,
    /// Appended to repository names so runs against a shared external registry do not collide.
    suffix: String,
}

fn target() -> Target {
    match std::env::var("BERTH_TEST_REGISTRY") {
        Ok(h) if !h.is_empty() => Target {
            _berth: None,
            host: h,
            suffix: format!(
                "-{}",
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_nanos()
            ),
        },
        _ => {
            let b = Berth::start();
            Target {
                host: b.host(),
                _berth: Some(b),
                suffix: String::new(),
            }
        }
    }
}

fn skopeo(args: &[&str], home: &Path) -> Output {
    let out = Command::new("skopeo")
        .arg("--insecure-policy")
        .args(args)
        .env("HOME", home)
        .env("XDG_RUNTIME_DIR", home)
        .output()
        .expect("run skopeo");
    eprintln!(
        "$ skopeo {}\n  -> {}\n  stderr: {}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
    out
}

fn skopeo_ok(args: &[&str], home: &Path) -> Vec<u8> {
    let out = skopeo(args, home);
    assert!(
        out.status.success(),
        "skopeo {} failed: {}\nstdout: {}\nstderr: {}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

// ---------------------------------------------------------------------------------------------------------------
// Local image generation: tar, gzip (stored blocks), OCI layout
// ---------------------------------------------------------------------------------------------------------------

const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
const OCI_LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";

struct XorShift(u64);
impl XorShift {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        let mut v = Vec::with_capacity(n + 8);
        while v.len() < n {
            v.extend_from_slice(&self.next().to_le_bytes());
        }
        v.truncate(n);
        v
    }
}

/// A ustar archive of regular files.
fn tar(files: &[(&str, &[u8])]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, data) in files {
        let mut h = [0u8; 512];
        h[..name.len()].copy_from_slice(name.as_bytes());
        h[100..108].copy_from_slice(b"0000644\0");
        h[108..116].copy_from_slice(b"0000000\0");
        h[116..124].copy_from_slice(b"0000000\0");
        h[124..136].copy_from_slice(format!("{:011o}\0", data.len()).as_bytes());
        h[136..148].copy_from_slice(format!("{:011o}\0", 1_700_000_000u64).as_bytes());
        h[148..156].copy_from_slice(b"        ");
        h[156] = b'0';
        h[257..263].copy_from_slice(b"ustar\0");
        h[263..265].copy_from_slice(b"00");
        let sum: u32 = h.iter().map(|&b| b as u32).sum();
        h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
        out.extend_from_slice(&h);
        out.extend_from_slice(data);
        out.resize(out.len().div_ceil(512) * 512, 0);
    }
    out.resize(out.len() + 1024, 0);
    out
}

fn crc32(data: &[u8]) -> u32 {
    let mut table = [0u32; 256];
    for (i, e) in table.iter_mut().enumerate() {
        let mut c = i as u32;
        for _ in 0..8 {
            c = if c & 1 != 0 {
                0xEDB8_8320 ^ (c >> 1)
            } else {
                c >> 1
            };
        }
        *e = c;
    }
    let mut crc = !0u32;
    for &b in data {
        crc = table[((crc ^ b as u32) & 0xff) as usize] ^ (crc >> 8);
    }
    !crc
}

/// A valid gzip stream using uncompressed ("stored") deflate blocks.
fn gzip_stored(data: &[u8]) -> Vec<u8> {
    let mut out = vec![0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 255];
    let mut chunks: Vec<&[u8]> = data.chunks(65535).collect();
    if chunks.is_empty() {
        chunks.push(&[]);
    }
    let n = chunks.len();
    for (i, c) in chunks.into_iter().enumerate() {
        out.push(if i + 1 == n { 1 } else { 0 });
        let len = c.len() as u16;
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(&(!len).to_le_bytes());
        out.extend_from_slice(c);
    }
    out.extend_from_slice(&crc32(data).to_le_bytes());
    out.extend_from_slice(&(data.len() as u32).to_le_bytes());
    out
}

#[derive(Clone, Debug)]
struct Desc {
    media_type: String,
    digest: String,
    size: usize,
}

impl Desc {
    fn json(&self) -> Value {
        json!({"mediaType": self.media_type, "digest": self.digest, "size": self.size})
    }
}

/// An OCI image layout being written to `dir`; remembers every blob written.
struct Layout {
    dir: PathBuf,
    blobs: BTreeMap<String, Vec<u8>>,
}

impl Layout {
    fn new(dir: &Path) -> Layout {
        std::fs::create_dir_all(dir.join("blobs/sha256")).unwrap();
        std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
        Layout {
            dir: dir.to_path_buf(),
            blobs: BTreeMap::new(),
        }
    }

    fn blob(&mut self, media_type: &str, data: Vec<u8>) -> Desc {
        let digest = sha256_digest(&data);
        std::fs::write(self.dir.join("blobs/sha256").join(&digest[7..]), &data).unwrap();
        let d = Desc {
            media_type: media_type.into(),
            digest: digest.clone(),
            size: data.len(),
        };
        self.blobs.insert(digest, data);
        d
    }

    /// A single-platform image: one gzip layer unique to the platform plus, optionally, a shared plain tar layer.
    fn image(
        &mut self,
        arch: &str,
        rng: &mut XorShift,
        big: usize,
        shared: Option<(&Desc, &str)>,
    ) -> Desc {
        let payload = rng.bytes(big);
        let hello = format!("hello from {arch}\n");
        let layer_tar = tar(&[("hello.txt", hello.as_bytes()), ("data.bin", &payload)]);
        let diff_id = sha256_digest(&layer_tar);
        let layer = self.blob(OCI_LAYER_GZIP, gzip_stored(&layer_tar));
        let mut layers = vec![];
        let mut diff_ids = vec![];
        if let Some((d, diff)) = shared {
            layers.push(d.json());
            diff_ids.push(json!(diff));
        }
        layers.push(layer.json());
        diff_ids.push(json!(diff_id));
        let config = json!({
            "created": "2024-01-01T00:00:00Z",
            "architecture": arch,
            "os": "linux",
            "config": {"Cmd": ["/bin/true"], "Env": ["PATH=/bin"]},
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
            "history": [{"created": "2024-01-01T00:00:00Z", "created_by": "berth test"}]
        });
        let config = self.blob(OCI_CONFIG, serde_json::to_vec(&config).unwrap());
        let manifest = json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": config.json(),
            "layers": layers,
            "annotations": {"org.opencontainers.image.title": format!("berth-test-{arch}")}
        });
        self.blob(OCI_MANIFEST, serde_json::to_vec_pretty(&manifest).unwrap())
    }

    /// Writes index.json naming `top` with `tag`.
    fn finish(&self, top: &Desc, tag: &str) {
        let mut d = top.json();
        d["annotations"] = json!({"org.opencontainers.image.ref.name": tag});
        let index = json!({"schemaVersion": 2, "manifests": [d]});
        std::fs::write(
            self.dir.join("index.json"),
            serde_json::to_vec(&index).unwrap(),
        )
        .unwrap();
    }
}

/// Builds a two-platform (linux/amd64, linux/arm64) image index in a new layout under `dir`.
/// Returns the layout, the index descriptor and the child manifest descriptors.
fn build_multiarch(dir: &Path, seed: u64, tag: &str) -> (Layout, Desc, Vec<Desc>) {
    let mut rng = XorShift(seed);
    let mut l = Layout::new(dir);
    let shared_tar = tar(&[
        ("etc/os-release", b"ID=berth-test\n"),
        ("shared.bin", &rng.bytes(300 * 1024)),
    ]);
    let shared_diff = sha256_digest(&shared_tar);
    let shared = l.blob(OCI_LAYER_TAR, shared_tar);
    let amd = l.image(
        "amd64",
        &mut rng,
        2 * 1024 * 1024 + 17,
        Some((&shared, &shared_diff)),
    );
    let arm = l.image(
        "arm64",
        &mut rng,
        700 * 1024 + 3,
        Some((&shared, &shared_diff)),
    );
    let mut entries = vec![];
    for (d, arch) in [(&amd, "amd64"), (&arm, "arm64")] {
        let mut e = d.json();
        e["platform"] = json!({"architecture": arch, "os": "linux"});
        entries.push(e);
    }
    let index = json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": entries});
    let index = l.blob(OCI_INDEX, serde_json::to_vec_pretty(&index).unwrap());
    l.finish(&index, tag);
    (l, index, vec![amd, arm])
}

// ---------------------------------------------------------------------------------------------------------------
// Direct HTTP checks
// ---------------------------------------------------------------------------------------------------------------

const ACCEPT_ALL: &str = "application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json, \
     application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.docker.distribution.manifest.v2+json";

/// GET a manifest over HTTP; returns (content type, Docker-Content-Digest, body).
async fn http_manifest(host: &str, repo: &str, reference: &str) -> (String, String, Vec<u8>) {
    let r = common::client()
        .get(format!("http://{host}/v2/{repo}/manifests/{reference}"))
        .header("Accept", ACCEPT_ALL)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "GET manifest {repo}:{reference}");
    let ct = r
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    let dcd = r
        .headers()
        .get("docker-content-digest")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    (ct, dcd, r.bytes().await.unwrap().to_vec())
}

async fn http_blob(host: &str, repo: &str, digest: &str) -> Vec<u8> {
    let r = common::client()
        .get(format!("http://{host}/v2/{repo}/blobs/{digest}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "GET blob {repo}@{digest}");
    r.bytes().await.unwrap().to_vec()
}

/// Reads the top-level manifest digest named `tag` in an OCI layout's index.json.
fn layout_ref(dir: &Path, tag: &str) -> String {
    let idx: Value =
        serde_json::from_slice(&std::fs::read(dir.join("index.json")).unwrap()).unwrap();
    idx["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["annotations"]["org.opencontainers.image.ref.name"] == tag)
        .unwrap_or_else(|| panic!("tag {tag} not in {}/index.json: {idx}", dir.display()))["digest"]
        .as_str()
        .unwrap()
        .to_string()
}

fn layout_blob(dir: &Path, digest: &str) -> Vec<u8> {
    let p = dir
        .join("blobs/sha256")
        .join(digest.strip_prefix("sha256:").unwrap());
    std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

// ---------------------------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skopeo_multiarch_index_round_trip_preserves_digests() {
    if !skopeo_available() {
        return;
    }
    let t = target();
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("home");
    std::fs::create_dir_all(&home).unwrap();
    let src = tmp.path().join("src");
    let back = tmp.path().join("back");
    let (layout, index, children) = build_multiarch(&src, 0x5EED_1234_ABCD_0001, "v1");
    let repo = format!("team/app{}", t.suffix);
    let dst = format!("docker://{}/{repo}:v1", t.host);

    // Push the whole index with every platform, byte for byte.
    let src_ref = format!("oci:{}:v1", src.display());
    skopeo_ok(
        &[
            "copy",
            "--all",
            "--preserve-digests",
            "--dest-tls-verify=false",
            &src_ref,
            &dst,
        ],
        &home,
    );

    // The registry serves the exact index bytes under the tag.
    let raw = skopeo_ok(&["inspect", "--raw", "--tls-verify=false", &dst], &home);
    assert_eq!(
        sha256_digest(&raw),
        index.digest,
        "index digest changed by the round trip"
    );
    assert_eq!(raw, layout.blobs[&index.digest], "index bytes changed");
    let (ct, dcd, body) = http_manifest(&t.host, &repo, "v1").await;
    assert_eq!(ct, OCI_INDEX, "Content-Type of the index");
    assert_eq!(dcd, index.digest, "Docker-Content-Digest of the index");
    assert_eq!(body, raw);

    // Every child manifest and every blob is served unchanged.
    for child in &children {
        let by_digest = format!("docker://{}/{repo}@{}", t.host, child.digest);
        let raw = skopeo_ok(
            &["inspect", "--raw", "--tls-verify=false", &by_digest],
            &home,
        );
        assert_eq!(
            sha256_digest(&raw),
            child.digest,
            "child manifest digest changed"
        );
        let (ct, dcd, _) = http_manifest(&t.host, &repo, &child.digest).await;
        assert_eq!(ct, OCI_MANIFEST);
        assert_eq!(dcd, child.digest);
        let m: Value = serde_json::from_slice(&raw).unwrap();
        let mut blobs = vec![m["config"]["digest"].as_str().unwrap().to_string()];
        for l in m["layers"].as_array().unwrap() {
            blobs.push(l["digest"].as_str().unwrap().to_string());
        }
        for d in blobs {
            let got = http_blob(&t.host, &repo, &d).await;
            assert_eq!(sha256_digest(&got), d);
            assert_eq!(got, layout.blobs[&d]);
        }
    }

    // skopeo inspect (parsed) sees the host platform's image of the index.
    let inspected: Value = serde_json::from_slice(&skopeo_ok(
        &[
            "inspect",
            "--tls-verify=false",
            "--override-arch",
            "arm64",
            &dst,
        ],
        &home,
    ))
    .unwrap();
    // `Digest` is that of what the tag names (the index); `Layers` are those of the arm64 image.
    assert_eq!(
        inspected["Digest"], index.digest,
        "skopeo inspect --override-arch arm64: {inspected}"
    );
    assert_eq!(inspected["Architecture"], "arm64");
    let arm: Value = serde_json::from_slice(&layout.blobs[&children[1].digest]).unwrap();
    let arm_layers: Vec<Value> = arm["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["digest"].clone())
        .collect();
    assert_eq!(inspected["Layers"], json!(arm_layers), "{inspected}");

    // Copy everything back into a fresh layout: same index digest, same children, same blobs.
    let back_ref = format!("oci:{}:v1", back.display());
    skopeo_ok(
        &[
            "copy",
            "--all",
            "--preserve-digests",
            "--src-tls-verify=false",
            &dst,
            &back_ref,
        ],
        &home,
    );
    assert_eq!(
        layout_ref(&back, "v1"),
        index.digest,
        "index digest after pulling back"
    );
    for (digest, bytes) in &layout.blobs {
        let got = layout_blob(&back, digest);
        assert_eq!(
            sha256_digest(&got),
            *digest,
            "blob {digest} pulled back with other bytes"
        );
        assert_eq!(&got, bytes);
    }

    // A second copy (everything already present) is a no-op and still succeeds; also by digest.
    skopeo_ok(
        &[
            "copy",
            "--all",
            "--preserve-digests",
            "--dest-tls-verify=false",
            &src_ref,
            &dst,
        ],
        &home,
    );
    let dst_latest = format!("docker://{}/{repo}:latest", t.host);
    let by_digest = format!("docker://{}/{repo}@{}", t.host, index.digest);
    skopeo_ok(
        &[
            "copy",
            "--all",
            "--preserve-digests",
            "--src-tls-verify=false",
            "--dest-tls-verify=false",
            &by_digest,
            &dst_latest,
        ],
        &home,
    );
    let raw = skopeo_ok(
        &["inspect", "--raw", "--tls-verify=false", &dst_latest],
        &home,
    );
    assert_eq!(sha256_digest(&raw), index.digest);

    // list-tags: exactly the two tags, in lexical order.
    let repo_ref = format!("docker://{}/{repo}", t.host);
    let tags: Value = serde_json::from_slice(&skopeo_ok(
        &["list-tags", "--tls-verify=false", &repo_ref],
        &home,
    ))
    .unwrap();
    assert_eq!(
        tags["Tags"],
        json!(["latest", "v1"]),
        "skopeo list-tags: {tags}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skopeo_docker_schema2_round_trip() {
    if !skopeo_available() {
        return;
    }
    let t = target();
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("home");
    std::fs::create_dir_all(&home).unwrap();
    let src = tmp.path().join("src");
    let mut rng = XorShift(0x5EED_0000_0000_0002);
    let mut layout = Layout::new(&src);
    let image = layout.image("amd64", &mut rng, 1024 * 1024 + 5, None);
    layout.finish(&image, "single");
    let src_manifest: Value = serde_json::from_slice(&layout.blobs[&image.digest]).unwrap();
    let src_layer = src_manifest["layers"][0]["digest"]
        .as_str()
        .unwrap()
        .to_string();
    let src_config = src_manifest["config"]["digest"]
        .as_str()
        .unwrap()
        .to_string();

    let repo = format!("team/legacy{}", t.suffix);
    let dst = format!("docker://{}/{repo}:v2s2", t.host);
    let src_ref = format!("oci:{}:single", src.display());
    skopeo_ok(
        &[
            "copy",
            "--format",
            "v2s2",
            "--dest-tls-verify=false",
            &src_ref,
            &dst,
        ],
        &home,
    );

    // The registry holds a docker schema2 manifest whose digest is the sha256 of the bytes it serves.
    let raw = skopeo_ok(&["inspect", "--raw", "--tls-verify=false", &dst], &home);
    let m: Value = serde_json::from_slice(&raw).unwrap();
    assert_eq!(m["mediaType"], DOCKER_MANIFEST, "converted manifest: {m}");
    assert_eq!(m["schemaVersion"], 2);
    assert_eq!(
        m["config"]["mediaType"],
        "application/vnd.docker.container.image.v1+json"
    );
    assert_eq!(
        m["layers"][0]["mediaType"],
        "application/vnd.docker.image.rootfs.diff.tar.gzip"
    );
    // Already-gzipped layers and the config travel unchanged.
    assert_eq!(m["layers"][0]["digest"], src_layer.as_str());
    assert_eq!(m["config"]["digest"], src_config.as_str());
    let (ct, dcd, body) = http_manifest(&t.host, &repo, "v2s2").await;
    assert_eq!(ct, DOCKER_MANIFEST, "Content-Type of a schema2 manifest");
    assert_eq!(dcd, sha256_digest(&raw));
    assert_eq!(body, raw);
    let digest = sha256_digest(&raw);

    // By digest too.
    let by_digest = format!("docker://{}/{repo}@{digest}", t.host);
    let raw2 = skopeo_ok(
        &["inspect", "--raw", "--tls-verify=false", &by_digest],
        &home,
    );
    assert_eq!(raw2, raw);
    let inspected: Value =
        serde_json::from_slice(&skopeo_ok(&["inspect", "--tls-verify=false", &dst], &home))
            .unwrap();
    assert_eq!(inspected["Digest"], digest.as_str());
    assert_eq!(inspected["Architecture"], "amd64");
    assert_eq!(inspected["Os"], "linux");

    // Pull back into a `dir:` copy, keeping the schema2 manifest byte for byte.
    let back = tmp.path().join("back");
    let back_ref = format!("dir:{}", back.display());
    skopeo_ok(
        &[
            "copy",
            "--preserve-digests",
            "--src-tls-verify=false",
            &dst,
            &back_ref,
        ],
        &home,
    );
    let back_manifest = std::fs::read(back.join("manifest.json")).unwrap();
    assert_eq!(
        sha256_digest(&back_manifest),
        digest,
        "schema2 manifest changed when pulled back"
    );
    for d in [&src_layer, &src_config] {
        let got = std::fs::read(back.join(d.strip_prefix("sha256:").unwrap())).unwrap();
        assert_eq!(
            &got, &layout.blobs[d],
            "blob {d} pulled back with other bytes"
        );
    }

    // And back into an OCI layout (converted again); layers are still the original bytes.
    let back_oci = tmp.path().join("back-oci");
    let back_oci_ref = format!("oci:{}:again", back_oci.display());
    skopeo_ok(
        &[
            "copy",
            "--format",
            "oci",
            "--src-tls-verify=false",
            &dst,
            &back_oci_ref,
        ],
        &home,
    );
    let top = layout_ref(&back_oci, "again");
    let m: Value = serde_json::from_slice(&layout_blob(&back_oci, &top)).unwrap();
    assert_eq!(m["layers"][0]["digest"], src_layer.as_str());
    assert_eq!(layout_blob(&back_oci, &src_layer), layout.blobs[&src_layer]);

    let repo_ref = format!("docker://{}/{repo}", t.host);
    let tags: Value = serde_json::from_slice(&skopeo_ok(
        &["list-tags", "--tls-verify=false", &repo_ref],
        &home,
    ))
    .unwrap();
    assert_eq!(tags["Tags"], json!(["v2s2"]), "skopeo list-tags: {tags}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skopeo_list_tags_many_and_missing_repo() {
    if !skopeo_available() {
        return;
    }
    let t = target();
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("home");
    std::fs::create_dir_all(&home).unwrap();
    let src = tmp.path().join("src");
    let mut rng = XorShift(0x5EED_0000_0000_0003);
    let mut layout = Layout::new(&src);
    let image = layout.image("amd64", &mut rng, 4096, None);
    layout.finish(&image, "base");
    let repo = format!("team/tags{}", t.suffix);
    let src_ref = format!("oci:{}:base", src.display());

    // One upload, then many tags via registry-to-registry copies (blobs already present).
    let first = format!("docker://{}/{repo}:t00", t.host);
    skopeo_ok(
        &[
            "copy",
            "--preserve-digests",
            "--dest-tls-verify=false",
            &src_ref,
            &first,
        ],
        &home,
    );
    let mut expected = vec!["t00".to_string()];
    for i in 1..12 {
        let tag = format!("t{i:02}");
        let dst = format!("docker://{}/{repo}:{tag}", t.host);
        skopeo_ok(
            &[
                "copy",
                "--preserve-digests",
                "--src-tls-verify=false",
                "--dest-tls-verify=false",
                &first,
                &dst,
            ],
            &home,
        );
        expected.push(tag);
    }
    let repo_ref = format!("docker://{}/{repo}", t.host);
    let tags: Value = serde_json::from_slice(&skopeo_ok(
        &["list-tags", "--tls-verify=false", &repo_ref],
        &home,
    ))
    .unwrap();
    assert_eq!(tags["Tags"], json!(expected), "skopeo list-tags: {tags}");
    for tag in &expected {
        let (_, dcd, _) = http_manifest(&t.host, &repo, tag).await;
        assert_eq!(dcd, image.digest, "tag {tag}");
    }

    // A repository that does not exist: skopeo reports an error (registry answers 404 NAME_UNKNOWN).
    let missing = format!("docker://{}/team/does-not-exist{}", t.host, t.suffix);
    let out = skopeo(&["list-tags", "--tls-verify=false", &missing], &home);
    assert!(
        !out.status.success(),
        "list-tags of a missing repository succeeded: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    let r = common::client()
        .get(format!(
            "http://{}/v2/team/does-not-exist{}/tags/list",
            t.host, t.suffix
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["errors"][0]["code"], "NAME_UNKNOWN", "{body}");
}
