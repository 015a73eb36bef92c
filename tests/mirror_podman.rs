//! podman pulling through berth as a `registries.conf` mirror, the set-up the README documents for podman / CRI-O:
//!
//! ```toml
//! [[registry]]
//! prefix = "UPSTREAM"
//! location = "UPSTREAM"
//! [[registry.mirror]]
//! location = "BERTH/up"
//! ```
//!
//! The upstream is the counting fake (tests/common/upstream.rs), mirrored by berth as `up`. podman must get the
//! whole image from berth: the fake sees only berth's requests (User-Agent `berth/...`), each blob once, and a second
//! pull after `podman rmi` succeeds with the fake down.
//!
//! The image's layers are real gzipped tars with matching diff_ids (not [`TestImage::new`]'s random bytes, which
//! podman could not unpack into its storage).
//!
//! podman runs isolated the way tests/clients_podman.rs runs it, with the runner in tests/common/tools.rs (storage,
//! run state, configuration and HOME in a temporary directory). Skipped (with a message) when podman is missing and
//! `CI` is unset, or when it cannot run in this environment; under CI both are failures.

mod common;
#[path = "common/image.rs"]
mod image;
#[path = "common/tools.rs"]
mod tools;
#[path = "common/upstream.rs"]
mod upstream;

use bytes::Bytes;
use common::sha256_digest;
use serde_json::json;
use std::time::Instant;
use tools::Podman;
use upstream::{OCI_CONFIG, OCI_LAYER, OCI_MANIFEST, TestImage, Upstream, berth_mirroring};

// ---------------------------------------------------------------------------------------------------------------
// An isolated podman (tests/common/tools.rs, with the registries.conf given by the caller)
// ---------------------------------------------------------------------------------------------------------------

/// An isolated podman with `registries`, or None (the caller skips) when podman is missing or cannot run here
/// outside CI; panics under CI.
fn podman_or_skip(registries: &str) -> Option<Podman> {
    if !common::tools_available(&["podman"], "podman") {
        return None;
    }
    tools::podman_or_skip(registries)
}

// ---------------------------------------------------------------------------------------------------------------
// An image podman can unpack
// ---------------------------------------------------------------------------------------------------------------

/// A single-platform OCI image whose layers are gzipped tars (one file of `size` pseudo-random bytes each) and
/// whose config lists their diff_ids, so podman can store it; also returns the diff_ids.
fn unpackable_image(seed: u64, sizes: &[usize]) -> (TestImage, Vec<String>) {
    let mut layers = vec![];
    let mut diff_ids = vec![];
    for (i, size) in sizes.iter().enumerate() {
        let payload =
            upstream::random_bytes(seed.wrapping_mul(31).wrapping_add(i as u64 + 1), *size);
        let name = format!("layer{i}.bin");
        let tar = image::tar(&[(name.as_str(), &payload[..])]);
        diff_ids.push(sha256_digest(&tar));
        let gz = Bytes::from(image::gzip_stored(&tar));
        layers.push((sha256_digest(&gz), gz));
    }
    let config = Bytes::from(
        serde_json::to_vec(&json!({
            "architecture": "amd64",
            "os": "linux",
            "config": {"Env": [format!("SEED={seed}")]},
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
        }))
        .unwrap(),
    );
    let desc = |mt: &str, d: &str, n: usize| json!({"mediaType": mt, "digest": d, "size": n});
    let manifest = Bytes::from(
        serde_json::to_vec_pretty(&json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": desc(OCI_CONFIG, &sha256_digest(&config), config.len()),
            "layers": layers.iter().map(|(d, b)| desc(OCI_LAYER, d, b.len())).collect::<Vec<_>>(),
        }))
        .unwrap(),
    );
    let img = TestImage {
        digest: sha256_digest(&manifest),
        manifest,
        config: (sha256_digest(&config), config),
        layers,
    };
    (img, diff_ids)
}

// ---------------------------------------------------------------------------------------------------------------
// Test
// ---------------------------------------------------------------------------------------------------------------

/// The README's podman / CRI-O `registries.conf`, with the fake as the registry and `BERTH/up` as its mirror: podman
/// pulls `UPSTREAM/team/app:v1` entirely from berth, and again from berth's cache alone once the fake is down.
#[test]
fn podman_pulls_through_a_registries_conf_mirror() {
    let started = Instant::now();
    let up = Upstream::start();
    let (img, diff_ids) = unpackable_image(0x90D3_A11C_0000_0001, &[300 * 1024, 64 * 1024 + 3]);
    up.put_image("team/app", "v1", &img);
    let berth = berth_mirroring(&up, "up", &[]);

    let registries = format!(
        r#"unqualified-search-registries = []

[[registry]]
prefix = "{up}"
location = "{up}"
insecure = true

[[registry.mirror]]
location = "{berth}/up"
insecure = true
"#,
        up = up.host(),
        berth = berth.host()
    );
    let Some(pm) = podman_or_skip(&registries) else {
        return;
    };
    eprintln!(
        "registries.conf ({}):\n{registries}",
        pm.path("registries.conf").display()
    );
    let image = format!("{}/team/app:v1", up.host());
    let config_hex = &img.config.0["sha256:".len()..];

    // First pull: through berth.
    let id = pm.ok(&["pull", "-q", &image]);
    assert_eq!(id.trim(), config_hex, "image ID printed by podman pull");
    let seen = up.seen();
    assert!(!seen.is_empty(), "the fake upstream saw no request at all");
    for s in &seen {
        assert!(
            s.user_agent
                .as_deref()
                .is_some_and(|ua| ua.starts_with("berth/")),
            "the upstream saw a request not from berth (podman bypassed the mirror?): {} {} User-Agent {:?}\n\
             all requests: {seen:#?}",
            s.method,
            s.path,
            s.user_agent
        );
    }
    for (digest, _) in img.blobs() {
        assert_eq!(
            up.blob_gets("team/app", &digest),
            1,
            "upstream GETs of blob {digest}; requests: {seen:#?}"
        );
    }
    let info = pm.inspect(&image);
    assert_eq!(
        info["Id"].as_str().map(|id| format!("sha256:{id}")),
        Some(img.config.0.clone()),
        "image ID vs the config digest: {info}"
    );
    assert_eq!(
        info["Digest"],
        img.digest.as_str(),
        "manifest digest: {info}"
    );
    assert_eq!(
        info["RootFS"]["Layers"],
        json!(diff_ids),
        "diff_ids: {info}"
    );

    // Second pull, after removing the image, with the upstream gone: from berth's cache alone.
    up.down();
    pm.ok(&["rmi", "-f", &image]);
    assert_eq!(
        pm.ok(&["images", "-q"]).trim(),
        "",
        "storage not empty after rmi"
    );
    let id = pm.ok(&["pull", "-q", &image]);
    assert_eq!(id.trim(), config_hex, "image ID after the second pull");
    let info = pm.inspect(&image);
    assert_eq!(
        info["Digest"],
        img.digest.as_str(),
        "manifest digest: {info}"
    );
    assert_eq!(
        info["RootFS"]["Layers"],
        json!(diff_ids),
        "diff_ids: {info}"
    );
    eprintln!("took {:?}", started.elapsed());
}
