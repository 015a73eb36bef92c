//! `berth import-distribution` (docs/export-import.md) on a storage root written by a real CNCF distribution
//! (Debian's `docker-registry`): images pushed with skopeo, the registry stopped, some of its content damaged on
//! purpose (a layer's data deleted, one truncated, a config corrupted, an index child's revision removed). Asserts
//! exactly what is imported and exactly what is reported, that a re-run only re-reports (nothing re-uploaded), and
//! that the command refuses a data directory a server holds.
//!
//! Skipped (with a message) when skopeo or docker-registry is missing and `CI` is unset.

#[path = "common/archive.rs"]
mod archive;
mod common;
#[path = "common/image.rs"]
mod image;
#[path = "common/tools.rs"]
mod tools;

use archive::{Distribution, berth, berth_fails};
use common::{Berth, sha256_digest};
use image::{Layout, XorShift, build_multiarch, http_blob, http_manifest};
use serde_json::Value;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use tools::skopeo_ok;

fn single(dir: &Path, seed: u64) -> (Layout, image::Desc) {
    let mut rng = XorShift(seed);
    let mut l = Layout::new(dir);
    let d = l.image("amd64", &mut rng, 64 * 1024 + 9, None);
    l.finish(&d, "v1");
    (l, d)
}

fn manifest_json(l: &Layout, d: &str) -> Value {
    serde_json::from_slice(&l.blobs[d]).unwrap()
}

fn config_of(l: &Layout, d: &str) -> String {
    manifest_json(l, d)["config"]["digest"]
        .as_str()
        .unwrap()
        .into()
}

fn layer_of(l: &Layout, d: &str) -> String {
    manifest_json(l, d)["layers"][0]["digest"]
        .as_str()
        .unwrap()
        .into()
}

fn data_file(v2: &Path, digest: &str) -> PathBuf {
    let hex = &digest[7..];
    v2.join("blobs/sha256")
        .join(&hex[..2])
        .join(hex)
        .join("data")
}

/// The `problem: …` lines of a run's stdout.
fn problems(stdout: &str) -> BTreeSet<String> {
    stdout
        .lines()
        .filter(|l| l.starts_with("problem: "))
        .map(str::to_owned)
        .collect()
}

async fn status(url: &str) -> u16 {
    common::client()
        .get(url)
        .header("accept", image::ACCEPT_ALL)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn import_distribution_imports_what_is_sound_and_reports_each_problem() {
    if !common::tools_available(&["skopeo"], "skopeo")
        || !common::tools_available(&["docker-registry"], "docker-registry")
    {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("home");
    std::fs::create_dir_all(&home).unwrap();
    let root = tmp.path().join("storage");
    let mut dist = Distribution::start(&root);
    let push = |dir: &Path, target: &str| {
        skopeo_ok(
            &[
                "copy",
                "--all",
                "--preserve-digests",
                "--dest-tls-verify=false",
                &format!("oci:{}:v1", dir.display()),
                &format!("docker://{}/{target}", dist.host()),
            ],
            &home,
        );
    };
    let p = |n: &str| tmp.path().join(n);
    let (a, a_d) = single(&p("a"), 0xD157_0001);
    let (b, b_d) = single(&p("b"), 0xD157_0002);
    let (m, m_d, m_children) = build_multiarch(&p("m"), 0xD157_0003, "v1");
    let (c, c_d) = single(&p("c"), 0xD157_0004);
    let (d, d_d) = single(&p("d"), 0xD157_0005);
    let (e, e_d) = single(&p("e"), 0xD157_0006);
    let (g, g_d) = single(&p("g"), 0xD157_0007);
    let (_f, f_d, f_children) = build_multiarch(&p("f"), 0xD157_0008, "v1");
    push(&p("a"), "team/app:v1");
    push(&p("a"), "team/app:latest");
    push(&p("b"), "team/app:v2");
    push(&p("m"), "team/multi:v1");
    push(&p("c"), "other/img:latest");
    push(&p("d"), "broken/missing:v1");
    push(&p("e"), "broken/truncated:v1");
    push(&p("g"), "broken/corrupt:v1");
    push(&p("f"), "broken/index:v1");
    dist.stop();

    // The damage.
    let v2 = root.join("docker/registry/v2");
    let d_layer = layer_of(&d, &d_d.digest);
    std::fs::remove_file(data_file(&v2, &d_layer)).unwrap();
    let e_layer = layer_of(&e, &e_d.digest);
    let e_size = e.blobs[&e_layer].len();
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(data_file(&v2, &e_layer))
        .unwrap();
    f.set_len(e_size as u64 / 2).unwrap();
    drop(f);
    let g_config = config_of(&g, &g_d.digest);
    let mut bytes = std::fs::read(data_file(&v2, &g_config)).unwrap();
    bytes[10] ^= 0x20;
    std::fs::write(data_file(&v2, &g_config), &bytes).unwrap();
    let g_corrupt = sha256_digest(&bytes);
    let f_arm = &f_children[1].digest;
    std::fs::remove_dir_all(
        v2.join("repositories/broken/index/_manifests/revisions/sha256")
            .join(&f_arm[7..]),
    )
    .unwrap();

    let data = tmp.path().join("berth-data");
    let args = [
        "import-distribution",
        root.to_str().unwrap(),
        "--data-dir",
        data.to_str().unwrap(),
    ];
    let out = berth(&args);
    assert!(!out.status.success(), "problems must fail the run");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(stderr.contains("8 problems found"), "{stderr}");
    let skipped = "tag skipped: its manifest could not be imported";
    let expected: BTreeSet<String> = [
        format!(
            "problem: broken/corrupt@{}: blob {g_config}: data file is corrupt: it hashes to {g_corrupt}; manifest skipped",
            g_d.digest
        ),
        format!("problem: broken/corrupt:v1@{}: {skipped}", g_d.digest),
        format!(
            "problem: broken/index@{f_d}: index child {f_arm} is not a manifest of the repository; index skipped",
            f_d = f_d.digest
        ),
        format!("problem: broken/index:v1@{}: {skipped}", f_d.digest),
        format!(
            "problem: broken/missing@{}: blob {d_layer}: data file is missing; manifest skipped",
            d_d.digest
        ),
        format!("problem: broken/missing:v1@{}: {skipped}", d_d.digest),
        format!(
            "problem: broken/truncated@{}: blob {e_layer}: data file is {} bytes, the manifest says {e_size} (truncated?); manifest skipped",
            e_d.digest,
            e_size / 2
        ),
        format!("problem: broken/truncated:v1@{}: {skipped}", e_d.digest),
    ]
    .into_iter()
    .collect();
    assert_eq!(problems(&stdout), expected, "{stdout}");
    // 7 manifests: a, b, the index m and its 2 children, c, and f's sound amd64 child (untagged). Blobs: 2 each
    // for a, b, c; 5 for m (its shared layer counted once, then present for the second child); 3 for f's amd64
    // child; the sound config of d and e and the sound layer of g.
    assert!(
        stdout.contains("imported 7 repositories, 5 tags, 7 manifests, 17 blobs ("),
        "{stdout}"
    );
    assert!(
        stdout.contains("already present: 0 manifests, 1 blob; 8 problems"),
        "{stdout}"
    );

    // What berth serves now.
    let mut server = Berth::start_on(&data, &[]);
    let host = server.host();
    for (repo, tag, want) in [
        ("team/app", "v1", &a_d.digest),
        ("team/app", "latest", &a_d.digest),
        ("team/app", "v2", &b_d.digest),
        ("team/multi", "v1", &m_d.digest),
        ("other/img", "latest", &c_d.digest),
    ] {
        let (_, dcd, _) = http_manifest(&host, repo, tag).await;
        assert_eq!(&dcd, want, "{repo}:{tag}");
    }
    let (_, _, body) = http_manifest(&host, "team/multi", "v1").await;
    assert_eq!(body, m.blobs[&m_d.digest], "index bytes preserved");
    for child in &m_children {
        http_manifest(&host, "team/multi", &child.digest).await;
    }
    for (l, desc, repo) in [
        (&a, &a_d, "team/app"),
        (&b, &b_d, "team/app"),
        (&c, &c_d, "other/img"),
    ] {
        for digest in [config_of(l, &desc.digest), layer_of(l, &desc.digest)] {
            assert_eq!(http_blob(&host, repo, &digest).await, l.blobs[&digest]);
        }
    }
    let url = server.url();
    for path in [
        "broken/missing/manifests/v1".to_string(),
        format!("broken/missing/manifests/{}", d_d.digest),
        "broken/truncated/manifests/v1".to_string(),
        "broken/corrupt/manifests/v1".to_string(),
        format!("broken/corrupt/manifests/{}", g_d.digest),
        "broken/index/manifests/v1".to_string(),
        format!("broken/index/manifests/{}", f_d.digest),
        format!("broken/index/manifests/{f_arm}"),
        format!("broken/corrupt/blobs/{g_config}"),
        format!("broken/missing/blobs/{d_layer}"),
        format!("broken/truncated/blobs/{e_layer}"),
    ] {
        assert_eq!(status(&format!("{url}/v2/{path}")).await, 404, "{path}");
    }
    assert_eq!(
        status(&format!(
            "{url}/v2/broken/index/manifests/{}",
            f_children[0].digest
        ))
        .await,
        200,
        "the sound child of the broken index is imported, untagged"
    );

    // While the server holds the data directory, the command refuses to run.
    let err = berth_fails(&args);
    assert!(err.contains("in use by another berth process"), "{err}");

    // A re-run re-reports the same problems and uploads nothing again: imported manifests are recognised whole,
    // and of the broken images only their sound blobs (d's and e's configs, g's layer) are looked at.
    server.kill9();
    let out = berth(&args);
    assert!(!out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(problems(&stdout), expected, "{stdout}");
    assert!(
        stdout.contains(
            "imported 7 repositories, 5 tags, 0 manifests, 0 blobs (0 B); already present: 7 manifests, 3 blobs; 8 problems"
        ),
        "{stdout}"
    );

    // Repairing the source (the deleted layer put back) and re-running imports just what was missing.
    std::fs::write(data_file(&v2, &d_layer), &d.blobs[&d_layer]).unwrap();
    let out = berth(&args);
    assert!(!out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let remaining: BTreeSet<String> = expected
        .iter()
        .filter(|p| !p.starts_with("problem: broken/missing"))
        .cloned()
        .collect();
    assert_eq!(problems(&stdout), remaining, "{stdout}");
    assert!(
        stdout.contains(&format!(
            "imported 7 repositories, 6 tags, 1 manifest, 1 blob ({}); already present: 7 manifests, 3 blobs; 6 problems",
            bytesize::ByteSize(d.blobs[&d_layer].len() as u64).display().iec()
        )),
        "{stdout}"
    );
    let server = Berth::start_on(&data, &[]);
    let (_, dcd, _) = http_manifest(&server.host(), "broken/missing", "v1").await;
    assert_eq!(dcd, d_d.digest);
    drop(server);
    std::fs::remove_file(data_file(&v2, &d_layer)).unwrap();

    // Over HTTP into a running berth: the same report and the same result.
    let live = Berth::start();
    let out = berth(&[
        "import-distribution",
        root.to_str().unwrap(),
        "--server",
        &live.url(),
    ]);
    assert!(!out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(problems(&stdout), expected, "{stdout}");
    assert!(
        stdout.contains("imported 7 repositories, 5 tags, 7 manifests, 17 blobs ("),
        "{stdout}"
    );
    let (_, dcd, _) = http_manifest(&live.host(), "team/multi", "v1").await;
    assert_eq!(dcd, m_d.digest);
    assert_eq!(
        status(&format!("{}/v2/broken/index/manifests/v1", live.url())).await,
        404
    );
}

#[test]
fn import_distribution_refuses_a_directory_that_is_not_a_storage_root() {
    let tmp = tempfile::tempdir().unwrap();
    let err = berth_fails(&[
        "import-distribution",
        tmp.path().to_str().unwrap(),
        "--data-dir",
        tmp.path().join("data").to_str().unwrap(),
    ]);
    assert!(err.contains("is not a distribution storage root"), "{err}");
}
