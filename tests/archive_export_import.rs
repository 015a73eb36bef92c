//! `berth export` and `berth import` (docs/export-import.md), black-box with the real binary, skopeo and containerd:
//! - an export is an OCI image layout *and* a docker-load archive: skopeo reads it both as `oci-archive:` (digests
//!   preserved, whole index) and as `docker-archive:` (the `--platform` image of an index), containerd imports it;
//! - import reads what skopeo writes as `oci-archive:` and `docker-archive:`, `docker save` archives of the old
//!   format (`<id>/layer.tar`, symlinked duplicate layers) and gzip-compressed ones, verifying every digest;
//!   re-running an import uploads nothing;
//! - both work on a data directory with the server stopped, and refuse while a server holds it;
//! - hostile or broken archives fail with a clear message and leave nothing visible in the registry.
//!
//! Skipped (with a message) when skopeo / containerd are missing and `CI` is unset.

#[path = "common/archive.rs"]
mod archive;
mod common;
#[path = "common/image.rs"]
mod image;
#[path = "common/tools.rs"]
mod tools;

use archive::{Entry, berth_fails, berth_ok, gzip, read_tar, write_tar};
use common::{Berth, sha256_digest};
use image::{
    DOCKER_MANIFEST, Layout, OCI_INDEX, XorShift, build_multiarch, http_blob, http_manifest,
};
use serde_json::{Value, json};
use std::path::Path;
use tools::{layout_ref, skopeo_ok};

fn skopeo_available() -> bool {
    common::tools_available(&["skopeo"], "skopeo")
}

/// A single-platform image in a new layout under `dir`, tagged `tag`; returns the layout and manifest descriptor.
fn single(dir: &Path, seed: u64, tag: &str) -> (Layout, image::Desc) {
    let mut rng = XorShift(seed);
    let mut l = Layout::new(dir);
    let d = l.image("amd64", &mut rng, 150 * 1024 + 5, None);
    l.finish(&d, tag);
    (l, d)
}

/// Pushes `oci:DIR:TAG` (every platform, digests preserved) to `host/repo:tag`.
fn push(home: &Path, dir: &Path, tag: &str, host: &str, target: &str) {
    skopeo_ok(
        &[
            "copy",
            "--all",
            "--preserve-digests",
            "--dest-tls-verify=false",
            &format!("oci:{}:{tag}", dir.display()),
            &format!("docker://{host}/{target}"),
        ],
        home,
    );
}

fn json_of(bytes: &[u8]) -> Value {
    serde_json::from_slice(bytes).unwrap()
}

/// Whether layout blob bytes are a manifest or index (the rest are configs and layers, served as blobs).
fn is_manifest(bytes: &[u8]) -> bool {
    serde_json::from_slice::<Value>(bytes).is_ok_and(|v| v.get("schemaVersion").is_some())
}

fn config_digest(layout: &Layout, manifest: &str) -> String {
    json_of(&layout.blobs[manifest])["config"]["digest"]
        .as_str()
        .unwrap()
        .to_string()
}

fn layer_digests(layout: &Layout, manifest: &str) -> Vec<String> {
    json_of(&layout.blobs[manifest])["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["digest"].as_str().unwrap().to_string())
        .collect()
}

struct Setup {
    berth: Berth,
    tmp: tempfile::TempDir,
    home: std::path::PathBuf,
    multi: (Layout, image::Desc, Vec<image::Desc>),
    single: (Layout, image::Desc),
}

/// A berth holding `team/multi:v1` (two-platform index) and `team/single:v1`.
fn setup() -> Setup {
    let berth = Berth::start();
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("home");
    std::fs::create_dir_all(&home).unwrap();
    let multi = build_multiarch(&tmp.path().join("multi"), 0xA11C_E001, "v1");
    let single = single(&tmp.path().join("single"), 0xA11C_E002, "v1");
    push(
        &home,
        &tmp.path().join("multi"),
        "v1",
        &berth.host(),
        "team/multi:v1",
    );
    push(
        &home,
        &tmp.path().join("single"),
        "v1",
        &berth.host(),
        "team/single:v1",
    );
    Setup {
        berth,
        tmp,
        home,
        multi,
        single,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_is_an_oci_layout_and_a_docker_archive_that_skopeo_reads() {
    if !skopeo_available() {
        return;
    }
    let s = setup();
    let out = s.tmp.path().join("out.tar");
    let url = s.berth.url();
    let stdout = berth_ok(&[
        "export",
        "team/multi:v1",
        "team/single:v1",
        "-o",
        out.to_str().unwrap(),
        "--server",
        &url,
        "--platform",
        "linux/arm64",
    ]);
    assert!(stdout.contains("exported 2 images"), "{stdout}");
    assert!(!Path::new(&format!("{}.partial", out.display())).exists());

    // The OCI side: every blob of both images byte for byte under its digest, and index.json naming both.
    let files = read_tar(&out);
    assert_eq!(
        json_of(&files["oci-layout"]),
        json!({"imageLayoutVersion": "1.0.0"})
    );
    for (name, data) in &files {
        if let Some(hex) = name.strip_prefix("blobs/sha256/") {
            assert_eq!(sha256_digest(data), format!("sha256:{hex}"), "{name}");
        }
    }
    for (digest, bytes) in s.multi.0.blobs.iter().chain(s.single.0.blobs.iter()) {
        let name = format!("blobs/sha256/{}", &digest[7..]);
        assert_eq!(files.get(&name), Some(bytes), "{name} missing or changed");
    }
    let index = json_of(&files["index.json"]);
    assert_eq!(index["mediaType"], OCI_INDEX);
    let entries = index["manifests"].as_array().unwrap();
    assert_eq!(entries.len(), 2, "{index}");
    assert_eq!(entries[0]["digest"], s.multi.1.digest);
    assert_eq!(entries[0]["mediaType"], OCI_INDEX);
    assert_eq!(
        entries[0]["annotations"]["org.opencontainers.image.ref.name"],
        "team/multi:v1"
    );
    assert_eq!(entries[1]["digest"], s.single.1.digest);
    assert_eq!(
        entries[1]["annotations"]["org.opencontainers.image.ref.name"],
        "team/single:v1"
    );

    // The docker side: manifest.json lists the arm64 image of the index and the single image.
    let arm = &s.multi.2[1].digest;
    let docker = json_of(&files["manifest.json"]);
    let blob = |d: &str| format!("blobs/sha256/{}", &d[7..]);
    assert_eq!(
        docker,
        json!([
            {
                "Config": blob(&config_digest(&s.multi.0, arm)),
                "RepoTags": ["team/multi:v1"],
                "Layers": layer_digests(&s.multi.0, arm).iter().map(|d| blob(d)).collect::<Vec<_>>(),
            },
            {
                "Config": blob(&config_digest(&s.single.0, &s.single.1.digest)),
                "RepoTags": ["team/single:v1"],
                "Layers": layer_digests(&s.single.0, &s.single.1.digest).iter().map(|d| blob(d)).collect::<Vec<_>>(),
            }
        ])
    );

    // skopeo reads it as an OCI archive: the whole index, every digest preserved.
    let back = s.tmp.path().join("back");
    skopeo_ok(
        &[
            "copy",
            "--all",
            "--preserve-digests",
            &format!("oci-archive:{}:team/multi:v1", out.display()),
            &format!("oci:{}:v1", back.display()),
        ],
        &s.home,
    );
    assert_eq!(layout_ref(&back, "v1"), s.multi.1.digest);

    // … and as a docker archive: the arm64 image of the index, and the single image with its config unchanged.
    let inspected = json_of(&skopeo_ok(
        &[
            "inspect",
            &format!("docker-archive:{}:team/multi:v1", out.display()),
        ],
        &s.home,
    ));
    assert_eq!(inspected["Architecture"], "arm64", "{inspected}");
    let back2 = s.tmp.path().join("back2");
    skopeo_ok(
        &[
            "copy",
            &format!("docker-archive:{}:team/single:v1", out.display()),
            &format!("oci:{}:v1", back2.display()),
        ],
        &s.home,
    );
    let raw = skopeo_ok(
        &[
            "inspect",
            "--raw",
            &format!("docker-archive:{}:team/single:v1", out.display()),
        ],
        &s.home,
    );
    assert_eq!(
        json_of(&raw)["config"]["digest"],
        config_digest(&s.single.0, &s.single.1.digest)
    );

    // By digest: exported untagged (no name in either index), still complete.
    let by_digest = s.tmp.path().join("digest.tar");
    berth_ok(&[
        "export",
        &format!("team/single@{}", s.single.1.digest),
        "-o",
        by_digest.to_str().unwrap(),
        "--server",
        &url,
    ]);
    let files = read_tar(&by_digest);
    let index = json_of(&files["index.json"]);
    assert_eq!(index["manifests"][0]["digest"], s.single.1.digest);
    assert!(index["manifests"][0].get("annotations").is_none());
    assert_eq!(json_of(&files["manifest.json"])[0]["RepoTags"], json!([]));

    // An unknown image fails clearly and leaves no file.
    let missing = s.tmp.path().join("missing.tar");
    let err = berth_fails(&[
        "export",
        "team/nope:v1",
        "-o",
        missing.to_str().unwrap(),
        "--server",
        &url,
    ]);
    assert!(
        err.contains("team/nope:v1") && err.contains("not found"),
        "{err}"
    );
    assert!(!missing.exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn import_reads_skopeo_oci_archive_and_docker_archive() {
    if !skopeo_available() {
        return;
    }
    let b = Berth::start();
    let url = b.url();
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("home");
    std::fs::create_dir_all(&home).unwrap();
    let (multi, index, _) = build_multiarch(&tmp.path().join("multi"), 0xB0B0_0001, "v1");
    let (one, one_desc) = single(&tmp.path().join("single"), 0xB0B0_0002, "v1");

    // skopeo's oci-archive of a whole index: imported byte for byte.
    let oci_tar = tmp.path().join("oci.tar");
    skopeo_ok(
        &[
            "copy",
            "--all",
            "--preserve-digests",
            &format!("oci:{}:v1", tmp.path().join("multi").display()),
            &format!("oci-archive:{}:team/multi:v1", oci_tar.display()),
        ],
        &home,
    );
    let stdout = berth_ok(&["import", oci_tar.to_str().unwrap(), "--server", &url]);
    assert!(
        stdout.contains("imported 1 image: 3 manifests stored"),
        "{stdout}"
    );
    let (_, dcd, body) = http_manifest(&b.host(), "team/multi", "v1").await;
    assert_eq!(dcd, index.digest);
    assert_eq!(body, multi.blobs[&index.digest]);
    for (digest, bytes) in &multi.blobs {
        if !is_manifest(bytes) {
            assert_eq!(&http_blob(&b.host(), "team/multi", digest).await, bytes);
        }
    }

    // Re-running uploads nothing; --tag REPO:TAG names the one image differently.
    let stdout = berth_ok(&["import", oci_tar.to_str().unwrap(), "--server", &url]);
    assert!(
        stdout.contains("0 manifests stored, 0 blobs uploaded (0 B)"),
        "{stdout}"
    );
    berth_ok(&[
        "import",
        oci_tar.to_str().unwrap(),
        "--server",
        &url,
        "--tag",
        "copies/multi:again",
    ]);
    let (_, dcd, _) = http_manifest(&b.host(), "copies/multi", "again").await;
    assert_eq!(dcd, index.digest);

    // skopeo's docker-archive (uncompressed layers, no registry manifest): a schema2 manifest is built whose
    // config is the original config and whose layers are the archive's tars; skopeo pulls it back verified.
    let docker_tar = tmp.path().join("docker.tar");
    skopeo_ok(
        &[
            "copy",
            &format!("oci:{}:v1", tmp.path().join("single").display()),
            &format!("docker-archive:{}:team/single:v2", docker_tar.display()),
        ],
        &home,
    );
    berth_ok(&["import", docker_tar.to_str().unwrap(), "--server", &url]);
    let (ct, _, body) = http_manifest(&b.host(), "team/single", "v2").await;
    assert_eq!(ct, DOCKER_MANIFEST);
    let m = json_of(&body);
    let config = config_digest(&one, &one_desc.digest);
    assert_eq!(m["config"]["digest"], config);
    let diff_ids = json_of(&one.blobs[&config])["rootfs"]["diff_ids"].clone();
    let layers: Vec<Value> = m["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["digest"].clone())
        .collect();
    assert_eq!(
        json!(layers),
        diff_ids,
        "uncompressed layers: digest = diff_id"
    );
    let back = tmp.path().join("back");
    skopeo_ok(
        &[
            "copy",
            "--src-tls-verify=false",
            &format!("docker://{}/team/single:v2", b.host()),
            &format!("oci:{}:v2", back.display()),
        ],
        &home,
    );
}

/// A `docker save` archive in the format of Docker before 25: `<id>/layer.tar` directories (a duplicate layer as a
/// symlink to the first copy), `<id>/json`, `<config-hex>.json`, `repositories`, `manifest.json`.
fn legacy_docker_save(
    dir: &Path,
    bad_diff_id: bool,
) -> (std::path::PathBuf, String, Vec<u8>, Vec<u8>) {
    let mut rng = XorShift(0xD0C_4E25);
    let l1 = image::tar(&[
        ("etc/hello", b"hello\n"),
        ("big.bin", &rng.bytes(200 * 1024)),
    ]);
    let l2 = image::tar(&[("app/run.sh", b"#!/bin/sh\necho hi\n")]);
    let config = |diff_ids: Vec<String>| {
        serde_json::to_vec(&json!({
            "architecture": "amd64",
            "os": "linux",
            "config": {"Cmd": ["/bin/true"]},
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
            "history": [{"created_by": "berth test"}]
        }))
        .unwrap()
    };
    let cfg_a = config(vec![sha256_digest(&l1)]);
    let cfg_b = config(vec![
        sha256_digest(&l1),
        if bad_diff_id {
            sha256_digest(b"something else")
        } else {
            sha256_digest(&l2)
        },
    ]);
    let (ha, hb) = (
        sha256_digest(&cfg_a)[7..].to_string(),
        sha256_digest(&cfg_b)[7..].to_string(),
    );
    let manifest = serde_json::to_vec(&json!([
        {"Config": format!("{ha}.json"), "RepoTags": ["team/legacy:a"], "Layers": ["1111/layer.tar"]},
        {"Config": format!("{hb}.json"), "RepoTags": ["team/legacy:b", "other/legacy:latest"],
         "Layers": ["3333/layer.tar", "2222/layer.tar"]},
    ]))
    .unwrap();
    let path = dir.join(if bad_diff_id {
        "bad-legacy.tar"
    } else {
        "legacy.tar"
    });
    let (fa, fb) = (format!("{ha}.json"), format!("{hb}.json"));
    write_tar(
        &path,
        &[
            Entry::Dir("1111/"),
            Entry::File("1111/VERSION", b"1.0"),
            Entry::File("1111/json", b"{\"id\":\"1111\"}"),
            Entry::File("1111/layer.tar", &l1),
            Entry::Dir("2222/"),
            Entry::File("2222/layer.tar", &l2),
            Entry::Dir("3333/"),
            Entry::Symlink("3333/layer.tar", "../1111/layer.tar"),
            Entry::File(&fa, &cfg_a),
            Entry::File(&fb, &cfg_b),
            Entry::File("repositories", b"{\"team/legacy\":{\"a\":\"1111\"}}"),
            Entry::File("manifest.json", &manifest),
        ],
    );
    (path, sha256_digest(&cfg_a), l1, l2)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn import_builds_schema2_manifests_from_legacy_and_gzipped_docker_save() {
    if !skopeo_available() {
        return;
    }
    let b = Berth::start();
    let url = b.url();
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("home");
    std::fs::create_dir_all(&home).unwrap();
    let (path, cfg_a, l1, l2) = legacy_docker_save(tmp.path(), false);

    let stdout = berth_ok(&["import", path.to_str().unwrap(), "--server", &url]);
    assert!(stdout.contains("imported 2 images"), "{stdout}");
    let (ct, _, body) = http_manifest(&b.host(), "team/legacy", "a").await;
    assert_eq!(ct, DOCKER_MANIFEST);
    let m = json_of(&body);
    assert_eq!(m["config"]["digest"], cfg_a);
    assert_eq!(
        m["config"]["mediaType"],
        "application/vnd.docker.container.image.v1+json"
    );
    assert_eq!(
        m["layers"],
        json!([{"mediaType": "application/vnd.docker.image.rootfs.diff.tar", "size": l1.len(), "digest": sha256_digest(&l1)}])
    );
    // Every RepoTag of the second image; its symlinked layer is the first image's.
    for (repo, tag) in [("team/legacy", "b"), ("other/legacy", "latest")] {
        let (_, _, body) = http_manifest(&b.host(), repo, tag).await;
        let m = json_of(&body);
        assert_eq!(m["layers"][0]["digest"], sha256_digest(&l1));
        assert_eq!(m["layers"][1]["digest"], sha256_digest(&l2));
        assert_eq!(http_blob(&b.host(), repo, &sha256_digest(&l2)).await, l2);
    }
    skopeo_ok(
        &[
            "copy",
            "--src-tls-verify=false",
            &format!("docker://{}/team/legacy:b", b.host()),
            &format!("oci:{}:b", tmp.path().join("back").display()),
        ],
        &home,
    );

    // `docker save | gzip`, into another repository with --tag REPO (tags kept).
    let gz = tmp.path().join("legacy.tar.gz");
    std::fs::write(&gz, gzip(&std::fs::read(&path).unwrap())).unwrap();
    berth_ok(&[
        "import",
        gz.to_str().unwrap(),
        "--server",
        &url,
        "--tag",
        "gz/legacy",
    ]);
    for tag in ["a", "b", "latest"] {
        http_manifest(&b.host(), "gz/legacy", tag).await;
    }

    // A layer that does not match the config's diff_ids is refused before anything of that image is stored.
    let (bad, _, _, _) = legacy_docker_save(tmp.path(), true);
    let err = berth_fails(&[
        "import",
        bad.to_str().unwrap(),
        "--server",
        &url,
        "--tag",
        "bad/legacy",
    ]);
    assert!(
        err.contains("2222/layer.tar") && err.contains("diff_ids"),
        "{err}"
    );
    let r = common::client()
        .get(format!("{url}/v2/bad/legacy/manifests/b"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_dir_mode_round_trip_and_refused_while_served() {
    if !skopeo_available() {
        return;
    }
    let mut s = setup();
    let data = s.berth.data_dir.clone();
    let data_s = data.to_str().unwrap().to_string();
    let out = s.tmp.path().join("dd.tar");
    let out_s = out.to_str().unwrap().to_string();

    // While the server runs, the data directory is locked.
    let err = berth_fails(&[
        "export",
        "team/single:v1",
        "-o",
        &out_s,
        "--data-dir",
        &data_s,
    ]);
    assert!(err.contains("in use by another berth process"), "{err}");
    assert!(!out.exists());
    let err = berth_fails(&["import", &out_s, "--data-dir", &data_s]);
    assert!(err.contains("in use by another berth process"), "{err}");

    // Stopped: export from it, import into a fresh one, serve that.
    s.berth.kill9();
    berth_ok(&[
        "export",
        "team/multi:v1",
        "team/single:v1",
        "-o",
        &out_s,
        "--data-dir",
        &data_s,
    ]);
    let fresh = s.tmp.path().join("fresh");
    let stdout = berth_ok(&["import", &out_s, "--data-dir", fresh.to_str().unwrap()]);
    assert!(
        stdout.contains("imported 2 images: 4 manifests stored"),
        "{stdout}"
    );
    let b2 = Berth::start_on(&fresh, &[]);
    let (_, dcd, _) = http_manifest(&b2.host(), "team/multi", "v1").await;
    assert_eq!(dcd, s.multi.1.digest);
    let (_, dcd, _) = http_manifest(&b2.host(), "team/single", "v1").await;
    assert_eq!(dcd, s.single.1.digest);
    for (digest, bytes) in &s.single.0.blobs {
        if !is_manifest(bytes) {
            assert_eq!(&http_blob(&b2.host(), "team/single", digest).await, bytes);
        }
    }
    // A second `berth serve` on a served data directory refuses to start, as does an import into it.
    let err = berth_fails(&["import", &out_s, "--data-dir", fresh.to_str().unwrap()]);
    assert!(err.contains("in use"), "{err}");
    let port = common::free_port().to_string();
    let err = berth_fails(&[
        "serve",
        "--listen",
        &format!("127.0.0.1:{port}"),
        "--data-dir",
        fresh.to_str().unwrap(),
    ]);
    assert!(err.contains("in use by another berth process"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn containerd_imports_an_export() {
    if !skopeo_available() || !common::tools_available(&["containerd", "ctr"], "containerd") {
        return;
    }
    let Some(ctrd) = tools::containerd_or_skip() else {
        return;
    };
    let s = setup();
    let out = s.tmp.path().join("ctr.tar");
    berth_ok(&[
        "export",
        "team/multi:v1",
        "team/single:v1",
        "-o",
        out.to_str().unwrap(),
        "--server",
        &s.berth.url(),
        "--platform",
        "linux/amd64",
    ]);
    ctrd.ctr_ok(&[
        "-n",
        "arch",
        "images",
        "import",
        "--all-platforms",
        out.to_str().unwrap(),
    ]);
    let ls = ctrd.ctr_ok(&["-n", "arch", "images", "ls"]);
    // Named from io.containerd.image.name, every platform of the index.
    let line = |name: &str| {
        ls.lines()
            .find(|l| l.split_whitespace().next() == Some(name))
            .unwrap_or_else(|| panic!("{name} not imported:\n{ls}"))
            .to_string()
    };
    let multi = line("team/multi:v1");
    assert!(
        multi.contains(&s.multi.1.digest) && multi.contains("linux/amd64,linux/arm64"),
        "{ls}"
    );
    assert!(line("team/single:v1").contains(&s.single.1.digest), "{ls}");
    let check = ctrd.ctr_ok(&["-n", "arch", "images", "check"]);
    assert!(
        !check.contains("incomplete") && !check.contains("missing"),
        "{check}"
    );
    let content = ctrd.ctr_ok(&["-n", "arch", "content", "ls", "-q"]);
    for digest in s.multi.0.blobs.keys().chain(s.single.0.blobs.keys()) {
        assert!(
            content.contains(digest.as_str()),
            "{digest} not imported:\n{content}"
        );
    }

    // And back: what `ctr images export` writes, berth imports with the same digests.
    let back = s.tmp.path().join("from-ctr.tar");
    ctrd.ctr_ok(&[
        "-n",
        "arch",
        "images",
        "export",
        "--all-platforms",
        back.to_str().unwrap(),
        "team/multi:v1",
        "team/single:v1",
    ]);
    let fresh = Berth::start();
    berth_ok(&["import", back.to_str().unwrap(), "--server", &fresh.url()]);
    let (_, dcd, _) = http_manifest(&fresh.host(), "team/multi", "v1").await;
    assert_eq!(dcd, s.multi.1.digest);
    let (_, dcd, _) = http_manifest(&fresh.host(), "team/single", "v1").await;
    assert_eq!(dcd, s.single.1.digest);
}

/// A valid one-image OCI layout as tar entries: (name, bytes) with the layer's name.
fn small_layout() -> (Vec<(String, Vec<u8>)>, String) {
    let dir = tempfile::tempdir().unwrap();
    let (l, _) = single(dir.path(), 0xBAD_0001, "bad/app:v1");
    let mut files = vec![
        (
            "oci-layout".to_string(),
            std::fs::read(dir.path().join("oci-layout")).unwrap(),
        ),
        (
            "index.json".to_string(),
            std::fs::read(dir.path().join("index.json")).unwrap(),
        ),
    ];
    let mut layer = String::new();
    for (d, b) in &l.blobs {
        if !b.starts_with(b"{") {
            layer = format!("blobs/sha256/{}", &d[7..]);
        }
        files.push((format!("blobs/sha256/{}", &d[7..]), b.clone()));
    }
    (files, layer)
}

fn tar_of(path: &Path, files: &[(String, Vec<u8>)], extra: &[Entry]) {
    let mut entries: Vec<Entry> = files
        .iter()
        .map(|(n, b)| Entry::File(n.as_str(), b.as_slice()))
        .collect();
    for e in extra {
        entries.push(match e {
            Entry::File(n, b) => Entry::File(n, b),
            Entry::Symlink(n, t) => Entry::Symlink(n, t),
            Entry::Dir(n) => Entry::Dir(n),
        });
    }
    write_tar(path, &entries);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn import_refuses_hostile_and_broken_archives_without_a_trace() {
    let b = Berth::start();
    let url = b.url();
    let tmp = tempfile::tempdir().unwrap();
    let (files, layer) = small_layout();
    assert!(!layer.is_empty());
    let case = |name: &str| tmp.path().join(name);

    // The valid archive imports (so every failure below is the damage, not the fixture).
    tar_of(&case("ok.tar"), &files, &[]);

    // Path traversal.
    tar_of(
        &case("traversal.tar"),
        &files,
        &[Entry::File("../evil", b"x")],
    );
    // A blob that is a symlink out of the archive.
    let without_layer: Vec<(String, Vec<u8>)> =
        files.iter().filter(|(n, _)| n != &layer).cloned().collect();
    tar_of(
        &case("symlink.tar"),
        &without_layer,
        &[Entry::Symlink(&layer, "../../../../etc/passwd")],
    );
    // A layer whose bytes are not its digest.
    let corrupt: Vec<(String, Vec<u8>)> = files
        .iter()
        .map(|(n, b)| {
            let mut b = b.clone();
            if n == &layer {
                let mid = b.len() / 2;
                b[mid] ^= 0xff;
            }
            (n.clone(), b)
        })
        .collect();
    tar_of(&case("corrupt.tar"), &corrupt, &[]);
    // A huge index.json.
    let mut huge = files.clone();
    for (n, b) in huge.iter_mut() {
        if n == "index.json" {
            b.resize(17 << 20, b' ');
        }
    }
    tar_of(&case("huge.tar"), &huge, &[]);
    // Truncated in the middle of the last entry's data.
    tar_of(&case("full.tar"), &files, &[]);
    let full = std::fs::read(case("full.tar")).unwrap();
    let last = files.last().unwrap();
    let cut = full.len() - 1024 - last.1.len().div_ceil(512) * 512 + last.1.len() / 2;
    std::fs::write(case("truncated.tar"), &full[..cut]).unwrap();
    // Not a tar at all.
    std::fs::write(case("garbage.tar"), image::pseudo_random(7, 10_000)).unwrap();

    for (file, expect) in [
        ("traversal.tar", "unsafe path"),
        ("symlink.tar", "outside the archive"),
        ("corrupt.tar", "hashes to"),
        ("huge.tar", "over the 16777216-byte limit"),
        ("truncated.tar", "truncated"),
        ("garbage.tar", "tar"),
    ] {
        let err = berth_fails(&["import", case(file).to_str().unwrap(), "--server", &url]);
        assert!(
            err.contains(expect),
            "{file}: expected {expect:?} in: {err}"
        );
        assert!(!err.contains("panicked"), "{file}: {err}");
        let r = common::client()
            .get(format!("{url}/v2/bad/app/manifests/v1"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 404, "{file}: the image became visible");
    }
    // The refused imports left the store usable (with SQLite, its file is in the data directory).
    assert!(common::on_postgres() || b.data_dir.join("berth.db").exists());
    berth_ok(&["import", case("ok.tar").to_str().unwrap(), "--server", &url]);
    http_manifest(&b.host(), "bad/app", "v1").await;
}
