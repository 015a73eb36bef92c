//! Shared helpers for the real-client, crash and hostile-input tests: media types, a deterministic byte generator,
//! a local OCI image layout builder (tar, gzip with stored blocks, multi-arch index), the registry target
//! (`BERTH_TEST_REGISTRY` or a fresh berth), the "is this tool installed" skip rule, and plain-HTTP reads.
//!
//! Included by each test file that needs it with `#[path = "common/image.rs"] mod image;` next to `mod common;`
//! (it uses `crate::common`). Not every file uses every helper, hence the `dead_code` allowance.
#![allow(dead_code)]

use crate::common::{Berth, sha256_digest};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

// ---------------------------------------------------------------------------------------------------------------
// Media types
// ---------------------------------------------------------------------------------------------------------------

pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub const OCI_LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";

/// An `Accept` header naming every manifest type (OCI and docker schema2, single and multi-platform).
pub const ACCEPT_ALL: &str = "application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json, \
     application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.docker.distribution.manifest.v2+json";

// ---------------------------------------------------------------------------------------------------------------
// Deterministic pseudo-random bytes
// ---------------------------------------------------------------------------------------------------------------

/// xorshift64 generator: reproducible test data and schedules from a seed (the seed must not be 0).
pub struct XorShift(pub u64);

impl XorShift {
    /// The next value (the state after one xorshift step).
    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    /// A value in `lo..=hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo + 1)
    }

    /// `n` bytes: successive values, little-endian, truncated to `n`.
    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        let mut v = Vec::with_capacity(n + 8);
        while v.len() < n {
            v.extend_from_slice(&self.next().to_le_bytes());
        }
        v.truncate(n);
        v
    }
}

/// `n` pseudo-random bytes from `seed` (any value, 0 included).
pub fn pseudo_random(seed: u64, n: usize) -> Vec<u8> {
    XorShift(seed | 1).bytes(n)
}

// ---------------------------------------------------------------------------------------------------------------
// Archives: tar, gzip (stored blocks)
// ---------------------------------------------------------------------------------------------------------------

/// A ustar archive of regular files (mode 0644, uid/gid 0, fixed mtime), with the two closing zero blocks.
pub fn tar(files: &[(&str, &[u8])]) -> Vec<u8> {
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

/// CRC-32 (IEEE, reflected), as gzip's trailer needs.
pub fn crc32(data: &[u8]) -> u32 {
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
pub fn gzip_stored(data: &[u8]) -> Vec<u8> {
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

// ---------------------------------------------------------------------------------------------------------------
// OCI image layout
// ---------------------------------------------------------------------------------------------------------------

/// An OCI content descriptor.
#[derive(Clone, Debug)]
pub struct Desc {
    pub media_type: String,
    pub digest: String,
    pub size: usize,
}

impl Desc {
    /// `{"mediaType", "digest", "size"}`.
    pub fn json(&self) -> Value {
        json!({"mediaType": self.media_type, "digest": self.digest, "size": self.size})
    }
}

/// An OCI image layout being written to `dir`; remembers every blob written.
pub struct Layout {
    pub dir: PathBuf,
    /// Every blob written, by digest.
    pub blobs: BTreeMap<String, Vec<u8>>,
}

impl Layout {
    /// Creates `dir/oci-layout` and `dir/blobs/sha256`.
    pub fn new(dir: &Path) -> Layout {
        std::fs::create_dir_all(dir.join("blobs/sha256")).unwrap();
        std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
        Layout {
            dir: dir.to_path_buf(),
            blobs: BTreeMap::new(),
        }
    }

    /// Writes a blob and returns its descriptor.
    pub fn blob(&mut self, media_type: &str, data: Vec<u8>) -> Desc {
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

    /// A single-platform image: one gzip layer unique to the platform plus, optionally, a shared plain tar layer
    /// (its descriptor and diff_id).
    pub fn image(
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
    pub fn finish(&self, top: &Desc, tag: &str) {
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
/// Returns the layout, the index descriptor and the child manifest descriptors (amd64, arm64).
pub fn build_multiarch(dir: &Path, seed: u64, tag: &str) -> (Layout, Desc, Vec<Desc>) {
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
// Tools and registry target
// ---------------------------------------------------------------------------------------------------------------

/// The registry under test: a fresh berth, or `BERTH_TEST_REGISTRY` when set.
pub struct Target {
    pub _berth: Option<Berth>,
    pub host: String,
    /// Appended to repository names so runs against a shared external registry do not collide.
    pub suffix: String,
}

/// A fresh berth, or the registry at `BERTH_TEST_REGISTRY=HOST:PORT` (with a unique repository suffix).
pub fn target() -> Target {
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

// ---------------------------------------------------------------------------------------------------------------
// Plain HTTP
// ---------------------------------------------------------------------------------------------------------------

/// `location` as an absolute URL: unchanged when it already is one, else appended to `base` (`http://HOST:PORT`).
pub fn absolute(base: &str, location: &str) -> String {
    if location.starts_with("http://") || location.starts_with("https://") {
        location.to_string()
    } else {
        format!("{base}{location}")
    }
}

/// An upload URL with `digest=` appended to its query.
pub fn with_digest(loc: &str, digest: &str) -> String {
    let sep = if loc.contains('?') { '&' } else { '?' };
    format!("{loc}{sep}digest={digest}")
}

/// GET a manifest over HTTP with [`ACCEPT_ALL`]; asserts 200 and returns (content type, Docker-Content-Digest, body).
pub async fn http_manifest(host: &str, repo: &str, reference: &str) -> (String, String, Vec<u8>) {
    http_manifest_accept(host, repo, reference, ACCEPT_ALL).await
}

/// GET a manifest over HTTP with the given `Accept`; asserts 200 and returns (content type, Docker-Content-Digest,
/// body).
pub async fn http_manifest_accept(
    host: &str,
    repo: &str,
    reference: &str,
    accept: &str,
) -> (String, String, Vec<u8>) {
    let r = crate::common::client()
        .get(format!("http://{host}/v2/{repo}/manifests/{reference}"))
        .header("Accept", accept)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "GET manifest {repo}:{reference}");
    let h = |n: &str| {
        r.headers()
            .get(n)
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default()
    };
    let (ct, dcd) = (h("content-type"), h("docker-content-digest"));
    (ct, dcd, r.bytes().await.unwrap().to_vec())
}

/// GET a blob over HTTP; asserts 200 and returns its bytes.
pub async fn http_blob(host: &str, repo: &str, digest: &str) -> Vec<u8> {
    let r = crate::common::client()
        .get(format!("http://{host}/v2/{repo}/blobs/{digest}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "GET blob {repo}@{digest}");
    r.bytes().await.unwrap().to_vec()
}
