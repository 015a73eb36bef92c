//! The object-store blob backend (docs/scale-out.md), against a real S3-compatible server: chunked uploads that
//! span several multipart parts, ranged reads, two replicas committing the same digest into one bucket, a crash in
//! the middle of a multipart chunk, and memory that stays bounded whatever the blob size.
//!
//! These run when the suite runs on S3 (`BERTH_TEST_BLOBS=s3`, `BERTH_TEST_S3_ENDPOINT`; `.ci/run` does both
//! passes); on the filesystem pass they return at once.

mod common;
#[path = "common/spec.rs"]
mod spec;
#[path = "common/tools.rs"]
mod tools;

use std::time::Duration;

use bytes::Bytes;
use common::{Berth, client};
use spec::{Reg, expect_status, sha256};

/// The backend's multipart part size (`store::object::PART_SIZE`).
const PART: usize = 8 * 1024 * 1024;

fn on_s3() -> bool {
    if common::s3_endpoint().is_none() {
        eprintln!("skipped: the suite runs on the filesystem (set BERTH_TEST_BLOBS=s3)");
        return false;
    }
    true
}

/// Deterministic, incompressible-enough bytes.
fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u32).wrapping_mul(2_654_435_761).to_le_bytes()[1] ^ seed)
        .collect()
}

/// Objects in the server's bucket under `prefix`.
fn objects(data_dir: &std::path::Path, prefix: &str) -> Vec<String> {
    let bucket = common::s3_bucket(data_dir);
    let (status, body) = common::s3_request(
        "GET",
        &format!("/{bucket}?list-type=2&prefix={prefix}"),
        &[],
    );
    assert_eq!(status, 200);
    let body = String::from_utf8_lossy(&body).to_string();
    body.split("<Key>")
        .skip(1)
        .filter_map(|s| s.split_once("</Key>").map(|(k, _)| k.to_owned()))
        .collect()
}

async fn patch(r: &Reg, loc: &str, offset: usize, data: &[u8]) -> String {
    let range = format!("{}-{}", offset, offset + data.len() - 1);
    let (h, _) = expect_status(r.patch(loc, data, Some(&range)).await, 202).await;
    let loc = h["location"].to_str().expect("location").to_owned();
    r.resolve(&loc)
}

#[tokio::test(flavor = "multi_thread")]
async fn chunked_push_larger_than_two_parts_is_published_whole_and_ranges_read_exactly() {
    if !on_s3() {
        return;
    }
    let b = Berth::start();
    let r = Reg::new(b.url(), client());
    // Small chunks (staged objects of one PUT each), then one chunk larger than two parts (a multipart upload of
    // its own), then a final chunk with the PUT.
    let data = pattern(3 * 1024 * 1024 + 2 * PART + 5000 + 777, 1);
    let digest = sha256(&data);
    let mut loc = r.start_upload("os/chunked").await;
    let cuts = [
        0,
        1024 * 1024,
        3 * 1024 * 1024,
        3 * 1024 * 1024 + 2 * PART + 5000,
    ];
    for w in cuts.windows(2) {
        loc = patch(&r, &loc, w[0], &data[w[0]..w[1]]).await;
    }
    let staged = objects(&b.data_dir, "uploads/");
    assert_eq!(staged.len(), 3, "one staged object per chunk: {staged:?}");
    let last = cuts[cuts.len() - 1];
    expect_status(r.put_upload(&loc, &digest, &data[last..]).await, 201).await;
    assert!(
        objects(&b.data_dir, "uploads/").is_empty(),
        "staged objects stay after publishing"
    );
    assert_eq!(
        common::read_blob(&b.data_dir, &digest).map(|b| b.len()),
        Some(data.len())
    );

    let (_, body) =
        expect_status(r.get(&format!("/v2/os/chunked/blobs/{digest}")).await, 200).await;
    assert_eq!(sha256(&body), digest);

    // Ranges: inside a part, across the boundary between chunks, the last byte.
    for (start, end) in [
        (10usize, 20usize),
        (PART - 3, PART + 3),
        (3 * 1024 * 1024 - 1, 3 * 1024 * 1024),
        (data.len() - 1, data.len() - 1),
    ] {
        let resp = r
            .send(
                r.req(
                    reqwest::Method::GET,
                    &format!("/v2/os/chunked/blobs/{digest}"),
                )
                .header("range", format!("bytes={start}-{end}")),
            )
            .await;
        let (h, body) = expect_status(resp, 206).await;
        assert_eq!(
            h["content-range"].to_str().unwrap(),
            format!("bytes {start}-{end}/{}", data.len())
        );
        assert_eq!(body, &data[start..=end], "range {start}-{end}");
    }
    let resp = r
        .send(
            r.req(
                reqwest::Method::GET,
                &format!("/v2/os/chunked/blobs/{digest}"),
            )
            .header("range", format!("bytes={}-", data.len())),
        )
        .await;
    expect_status(resp, 416).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn two_replicas_committing_the_same_digest_both_succeed_with_one_object() {
    if !on_s3() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (dir_a, dir_b) = (tmp.path().join("a"), tmp.path().join("b"));
    common::share_bucket(&dir_b, &dir_a);
    let a = Berth::start_on(&dir_a, &[]);
    let b = Berth::start_on(&dir_b, &[]);
    let data = pattern(PART + 4321, 2);
    let digest = sha256(&data);
    for round in 0..4 {
        let repo = format!("os/same{round}");
        let pushes = [&a, &b].map(|s| {
            let r = Reg::new(s.url(), client());
            let (data, digest, repo) = (data.clone(), digest.clone(), repo.clone());
            tokio::spawn(async move {
                let loc = r.start_upload(&repo).await;
                // Half the rounds chunked (an assembled object is copied), half monolithic (a staged chunk is).
                let loc = if round % 2 == 0 {
                    patch(&r, &loc, 0, &data[..PART / 2]).await
                } else {
                    loc
                };
                let rest = if round % 2 == 0 {
                    &data[PART / 2..]
                } else {
                    &data[..]
                };
                let resp = r.put_upload(&loc, &digest, rest).await;
                resp.status().as_u16()
            })
        });
        for p in pushes {
            assert_eq!(p.await.unwrap(), 201, "round {round}");
        }
        for s in [&a, &b] {
            let r = Reg::new(s.url(), client());
            let (_, body) =
                expect_status(r.get(&format!("/v2/{repo}/blobs/{digest}")).await, 200).await;
            assert_eq!(sha256(&body), digest);
        }
    }
    let hex = digest.strip_prefix("sha256:").unwrap();
    assert_eq!(
        objects(&dir_a, "blobs/"),
        vec![format!("blobs/sha256/{hex}")]
    );
    assert!(objects(&dir_a, "uploads/").is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn kill9_in_the_middle_of_a_multipart_chunk_then_the_session_resumes() {
    if !on_s3() {
        return;
    }
    let mut b = Berth::start();
    let r = Reg::new(b.url(), client());
    let data = pattern(3 * PART, 3);
    let digest = sha256(&data);
    let loc = r.start_upload("os/crash").await;
    let first = PART / 2;
    let loc = patch(&r, &loc, 0, &data[..first]).await;

    // A second chunk of two and a half parts, of which only the first part and a half ever arrive: berth has
    // started a multipart upload and sent a part when it is killed.
    let (sent_tx, sent_rx) = tokio::sync::oneshot::channel::<()>();
    let head = Bytes::copy_from_slice(&data[first..first + PART + PART / 2]);
    let body = futures_util::stream::unfold((Some(head), Some(sent_tx)), |(head, tx)| async move {
        if let Some(h) = head {
            return Some((Ok::<Bytes, std::io::Error>(h), (None, tx)));
        }
        if let Some(tx) = tx {
            let _ = tx.send(());
        }
        // Never finishes: the server dies first.
        std::future::pending::<()>().await;
        None
    });
    let range = format!("{}-{}", first, data.len() - 1);
    let patch_loc = loc.clone();
    let hung = tokio::spawn(async move {
        client()
            .patch(patch_loc)
            .header("content-range", range)
            .header("content-type", "application/octet-stream")
            .body(reqwest::Body::wrap_stream(body))
            .send()
            .await
    });
    sent_rx.await.unwrap();
    // Let berth take the bytes off the socket and hand the first part to the object store.
    tokio::time::sleep(Duration::from_secs(2)).await;
    b.restart_after_kill9();
    hung.abort();

    // Only the whole first chunk survived; the interrupted one left no visible object.
    let staged = objects(&b.data_dir, "uploads/");
    assert_eq!(staged.len(), 1, "{staged:?}");
    let st = r.get(&loc).await;
    let (h, _) = expect_status(st, 204).await;
    assert_eq!(h["range"].to_str().unwrap(), format!("0-{}", first - 1));
    let loc = patch(&r, &loc, first, &data[first..]).await;
    expect_status(r.put_upload(&loc, &digest, &[]).await, 201).await;
    let (_, body) = expect_status(r.get(&format!("/v2/os/crash/blobs/{digest}")).await, 200).await;
    assert_eq!(sha256(&body), digest);
    assert!(objects(&b.data_dir, "uploads/").is_empty());
}

/// Peak resident memory of a process, from `/proc` (Linux).
fn peak_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_300_mib_blob_is_pushed_and_pulled_in_bounded_memory() {
    if !on_s3() {
        return;
    }
    const LEN: usize = 300 * 1024 * 1024;
    const PIECE: usize = 1024 * 1024;
    let b = Berth::start();
    let r = Reg::new(b.url(), client());
    // Generated on the fly: neither side holds the blob.
    let piece = Bytes::from(pattern(PIECE, 4));
    let digest = {
        use sha2::Digest;
        let mut h = sha2::Sha256::new();
        for i in 0..LEN / PIECE {
            h.update(&piece);
            h.update([i as u8]);
        }
        format!("sha256:{}", hex::encode(h.finalize()))
    };
    let body = {
        let piece = piece.clone();
        futures_util::stream::iter((0..LEN / PIECE).flat_map(move |i| {
            [
                Ok::<Bytes, std::io::Error>(piece.clone()),
                Ok(Bytes::from(vec![i as u8])),
            ]
        }))
    };
    let total = LEN + LEN / PIECE;
    let loc = r.start_upload("os/big").await;
    let resp = r
        .send(
            r.req(
                reqwest::Method::PUT,
                &spec::add_query(&loc, &format!("digest={digest}")),
            )
            .header("content-type", "application/octet-stream")
            .header("content-length", total.to_string())
            .body(reqwest::Body::wrap_stream(body)),
        )
        .await;
    expect_status(resp, 201).await;
    let after_push = peak_rss_kib(b.child.id());

    let mut resp = r.get(&format!("/v2/os/big/blobs/{digest}")).await;
    assert_eq!(resp.status(), 200);
    let mut h = {
        use sha2::Digest;
        sha2::Sha256::new()
    };
    let mut got = 0usize;
    while let Some(c) = resp.chunk().await.unwrap() {
        use sha2::Digest;
        got += c.len();
        h.update(&c);
    }
    assert_eq!(got, total);
    {
        use sha2::Digest;
        assert_eq!(format!("sha256:{}", hex::encode(h.finalize())), digest);
    }
    let after_pull = peak_rss_kib(b.child.id());
    eprintln!(
        "berth peak RSS: {:?} KiB after pushing {} MiB, {:?} KiB after pulling it",
        after_push,
        total >> 20,
        after_pull
    );
    if let Some(peak) = after_pull {
        // Buffering the blob would need at least its 300 MiB; the backend holds a part or two per transfer.
        assert!(peak < 160 * 1024, "peak RSS {peak} KiB");
    }
}

/// `storage.redirect_ttl`: a blob GET is answered with a 307 to a pre-signed URL the client can read without
/// credentials (ranges included); unknown blobs still get the registry's 404, and HEAD is answered by berth.
#[tokio::test]
async fn blob_gets_redirect_to_presigned_urls_when_configured() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("berth.toml");
    std::fs::write(&config, "[storage]\nredirect_ttl = \"5m\"\n").expect("write config");
    if !on_s3() {
        // On the filesystem the setting is refused at start rather than ignored.
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_berth"))
            .args(["config", "check", "--config"])
            .arg(&config)
            .output()
            .expect("run berth");
        assert!(!out.status.success());
        assert!(
            String::from_utf8_lossy(&out.stderr)
                .contains("storage.redirect_ttl needs an object store"),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        return;
    }
    let b = Berth::start_with(&["--config", config.to_str().expect("utf-8 path")]);
    let r = Reg::new(b.url(), client());
    let data = pattern(300_000, 7);
    let digest = r.push_blob("redirect/app", &data).await;

    let resp = r.get(&format!("/v2/redirect/app/blobs/{digest}")).await;
    assert_eq!(resp.status().as_u16(), 307);
    assert_eq!(spec::must_header(&resp, "docker-content-digest"), digest);
    let location = spec::must_header(&resp, "location");
    let endpoint = common::s3_endpoint().expect("on S3");
    assert!(
        location.starts_with(endpoint.trim_end_matches('/'))
            && location.contains("X-Amz-Signature="),
        "not a pre-signed URL of the bucket: {location}"
    );
    // The object store serves it to a client holding no credentials, whole and by range.
    let plain = reqwest::Client::new();
    let whole = plain
        .get(&location)
        .send()
        .await
        .expect("GET pre-signed URL");
    assert_eq!(whole.status().as_u16(), 200);
    assert_eq!(
        whole.bytes().await.expect("body"),
        Bytes::from(data.clone())
    );
    let part = plain
        .get(&location)
        .header("Range", "bytes=1000-1999")
        .send()
        .await
        .expect("ranged GET");
    assert_eq!(part.status().as_u16(), 206);
    assert_eq!(
        part.bytes().await.expect("body").as_ref(),
        &data[1000..2000]
    );

    // A real client follows the redirect for layers and configs (skopeo, as containerd and Docker do).
    let image = r.push_image("redirect/app", "v1", "redirected").await;
    let out = tempfile::tempdir().expect("tempdir");
    let dest = out.path().join("copy");
    tools::skopeo_ok(
        &[
            "copy",
            "--src-tls-verify=false",
            &format!("docker://{}/redirect/app:v1", b.host()),
            &format!("dir:{}", dest.display()),
        ],
        out.path(),
    );
    let layer_file = dest.join(image.layer_digest.trim_start_matches("sha256:"));
    assert_eq!(
        std::fs::read(layer_file).expect("layer copied"),
        image.layer
    );

    let head = r.head(&format!("/v2/redirect/app/blobs/{digest}")).await;
    assert_eq!(head.status().as_u16(), 200);
    assert_eq!(
        spec::must_header(&head, "content-length"),
        data.len().to_string()
    );
    let missing = sha256(b"never pushed");
    spec::expect_error(
        r.get(&format!("/v2/redirect/app/blobs/{missing}")).await,
        404,
        &["BLOB_UNKNOWN"],
    )
    .await;
    // Visible only where it is linked: another repository gets no URL for it.
    spec::expect_error(
        r.get(&format!("/v2/redirect/other/blobs/{digest}")).await,
        404,
        &["BLOB_UNKNOWN"],
    )
    .await;
}
