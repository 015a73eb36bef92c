//! OCI distribution-spec "Push" rules for blobs: monolithic, single POST, chunked, streamed, status, cancel, mount.

mod common;
#[path = "common/spec.rs"]
mod h;

use h::*;
use reqwest::Method;

/// Starts a fresh berth, or targets the registry at `$SPEC_REGISTRY_URL` when set (to check these tests against
/// another implementation; tests that assume an empty registry then fail).
fn start() -> (Option<common::Berth>, Reg) {
    match external_registry() {
        Some(url) => (None, Reg::new(url, common::client())),
        None => {
            let b = common::Berth::start();
            let r = Reg::new(b.url(), common::client());
            (Some(b), r)
        }
    }
}

/// Asserts a 202 upload response with `Location`, `Docker-Upload-UUID` and `Range: 0-<last>`; returns the new location.
fn check_progress(r: &Reg, resp: &reqwest::Response, last: usize) -> String {
    assert_eq!(resp.status().as_u16(), 202, "{}: expected 202", resp.url());
    assert_eq!(
        must_header(resp, "range"),
        format!("0-{last}"),
        "Range after chunk"
    );
    must_header(resp, "docker-upload-uuid");
    r.resolve(&must_header(resp, "location"))
}

#[tokio::test]
async fn blob_upload_post_returns_202_with_location_and_upload_uuid() {
    let (_b, r) = start();
    let resp = r.post_upload("push/a", "").await;
    assert_eq!(resp.status().as_u16(), 202);
    let loc = must_header(&resp, "location");
    let uuid = must_header(&resp, "docker-upload-uuid");
    assert!(!uuid.is_empty());
    assert!(
        loc.contains(&uuid),
        "Location {loc} must contain the session id {uuid}"
    );
    // The location must be usable, whether relative or absolute.
    let status = r.get(&loc).await;
    assert_eq!(
        status.status().as_u16(),
        204,
        "upload status of a fresh session"
    );
}

#[tokio::test]
async fn blob_upload_post_then_put_monolithic_is_201() {
    let (_b, r) = start();
    let data = b"monolithic blob content".to_vec();
    let digest = sha256(&data);
    let loc = r.start_upload("push/mono").await;
    let resp = r.put_upload(&loc, &digest, &data).await;
    assert_eq!(resp.status().as_u16(), 201, "closing PUT");
    assert_eq!(must_header(&resp, "docker-content-digest"), digest);
    let blob_loc = must_header(&resp, "location");
    // <blob-location> is a pullable blob URL.
    let got = r.get(&blob_loc).await;
    let (_, body) = expect_status(got, 200).await;
    assert_eq!(body, data);
    let got = r.get(&format!("/v2/push/mono/blobs/{digest}")).await;
    let (headers, body) = expect_status(got, 200).await;
    assert_eq!(body, data);
    assert_eq!(
        headers
            .get("docker-content-digest")
            .unwrap()
            .to_str()
            .unwrap(),
        digest
    );
}

#[tokio::test]
async fn blob_upload_zero_length_blob_is_201() {
    let (_b, r) = start();
    let digest = sha256(b"");
    let loc = r.start_upload("push/empty").await;
    let resp = r.put_upload(&loc, &digest, b"").await;
    assert_eq!(resp.status().as_u16(), 201);
    let got = r.get(&format!("/v2/push/empty/blobs/{digest}")).await;
    let (_, body) = expect_status(got, 200).await;
    assert!(body.is_empty());
}

#[tokio::test]
async fn blob_upload_of_existing_blob_is_201() {
    let (_b, r) = start();
    let data = b"pushed twice".to_vec();
    let d1 = r.push_blob("push/twice", &data).await;
    let d2 = r.push_blob("push/twice", &data).await;
    assert_eq!(d1, d2);
    expect_status(r.get(&format!("/v2/push/twice/blobs/{d1}")).await, 200).await;
}

#[tokio::test]
async fn blob_upload_single_post_with_digest_is_201() {
    let (_b, r) = start();
    let data = b"single post blob".to_vec();
    let digest = sha256(&data);
    let rb = r
        .req(
            Method::POST,
            &format!("/v2/push/single/blobs/uploads/?digest={digest}"),
        )
        .header("content-type", "application/octet-stream")
        .body(data.clone());
    let resp = r.send(rb).await;
    assert_eq!(resp.status().as_u16(), 201, "single POST with ?digest=");
    let blob_loc = must_header(&resp, "location");
    let (_, body) = expect_status(r.get(&blob_loc).await, 200).await;
    assert_eq!(body, data);
}

#[tokio::test]
async fn blob_upload_single_post_with_wrong_digest_is_400_digest_invalid() {
    let (_b, r) = start();
    let data = b"single post blob".to_vec();
    let wrong = sha256(b"something else");
    let rb = r
        .req(
            Method::POST,
            &format!("/v2/push/single/blobs/uploads/?digest={wrong}"),
        )
        .header("content-type", "application/octet-stream")
        .body(data);
    expect_error(r.send(rb).await, 400, &["DIGEST_INVALID"]).await;
    assert_eq!(
        r.head(&format!("/v2/push/single/blobs/{wrong}"))
            .await
            .status()
            .as_u16(),
        404
    );
}

#[tokio::test]
async fn blob_upload_chunked_patch_with_content_range() {
    let (_b, r) = start();
    let data = b"0123456789abcdefghij".to_vec();
    let digest = sha256(&data);
    let loc = r.start_upload("push/chunked").await;
    let resp = r.patch(&loc, &data[0..5], Some("0-4")).await;
    let loc = check_progress(&r, &resp, 4);
    let resp = r.patch(&loc, &data[5..12], Some("5-11")).await;
    let loc = check_progress(&r, &resp, 11);
    let resp = r.patch(&loc, &data[12..], Some("12-19")).await;
    let loc = check_progress(&r, &resp, 19);
    let resp = r.put_upload(&loc, &digest, b"").await;
    assert_eq!(resp.status().as_u16(), 201, "closing PUT without body");
    assert_eq!(must_header(&resp, "docker-content-digest"), digest);
    let (_, body) = expect_status(r.get(&must_header(&resp, "location")).await, 200).await;
    assert_eq!(body, data);
}

#[tokio::test]
async fn blob_upload_final_chunk_in_closing_put() {
    let (_b, r) = start();
    let data = b"first-chunk|final-chunk".to_vec();
    let digest = sha256(&data);
    let loc = r.start_upload("push/finalput").await;
    let resp = r.patch(&loc, &data[..12], Some("0-11")).await;
    let loc = check_progress(&r, &resp, 11);
    let rb = r
        .req(Method::PUT, &add_query(&loc, &format!("digest={digest}")))
        .header("content-type", "application/octet-stream")
        .header("content-range", format!("12-{}", data.len() - 1))
        .body(data[12..].to_vec());
    let resp = r.send(rb).await;
    assert_eq!(
        resp.status().as_u16(),
        201,
        "closing PUT carrying the final chunk"
    );
    let (_, body) = expect_status(
        r.get(&format!("/v2/push/finalput/blobs/{digest}")).await,
        200,
    )
    .await;
    assert_eq!(body, data);
}

#[tokio::test]
async fn blob_upload_streamed_patch_without_content_range() {
    let (_b, r) = start();
    let part1 = vec![b'x'; 70_000];
    let part2 = b"tail of the streamed upload".to_vec();
    let data = [part1.clone(), part2.clone()].concat();
    let digest = sha256(&data);
    let loc = r.start_upload("push/stream").await;
    // Chunked transfer encoding, no Content-Length and no Content-Range.
    let chunks: Vec<Result<bytes::Bytes, std::io::Error>> = part1
        .chunks(16_384)
        .map(|c| Ok(bytes::Bytes::copy_from_slice(c)))
        .collect();
    let rb = r
        .req(Method::PATCH, &loc)
        .header("content-type", "application/octet-stream")
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
            chunks,
        )));
    let resp = r.send(rb).await;
    let loc = check_progress(&r, &resp, part1.len() - 1);
    // A second streamed PATCH appends.
    let resp = r.patch(&loc, &part2, None).await;
    let loc = check_progress(&r, &resp, data.len() - 1);
    let resp = r.put_upload(&loc, &digest, b"").await;
    assert_eq!(resp.status().as_u16(), 201);
    let (_, body) =
        expect_status(r.get(&format!("/v2/push/stream/blobs/{digest}")).await, 200).await;
    assert_eq!(body, data);
}

#[tokio::test]
async fn blob_upload_patch_out_of_order_is_416() {
    let (_b, r) = start();
    let loc = r.start_upload("push/ooo").await;
    let resp = r.patch(&loc, b"01234", Some("0-4")).await;
    let loc = check_progress(&r, &resp, 4);
    let resp = r.patch(&loc, b"abcde", Some("10-14")).await;
    assert_eq!(resp.status().as_u16(), 416, "chunk leaving a gap");
}

#[tokio::test]
async fn blob_upload_patch_overlapping_chunk_is_416() {
    let (_b, r) = start();
    let loc = r.start_upload("push/overlap").await;
    let resp = r.patch(&loc, b"01234", Some("0-4")).await;
    let loc = check_progress(&r, &resp, 4);
    let resp = r.patch(&loc, b"34567", Some("3-7")).await;
    assert_eq!(
        resp.status().as_u16(),
        416,
        "chunk overlapping already uploaded bytes"
    );
}

#[tokio::test]
async fn blob_upload_first_chunk_not_at_zero_is_416() {
    let (_b, r) = start();
    let loc = r.start_upload("push/notzero").await;
    let resp = r.patch(&loc, b"56789", Some("5-9")).await;
    assert_eq!(resp.status().as_u16(), 416, "first chunk must begin at 0");
}

#[tokio::test]
async fn blob_upload_put_final_chunk_out_of_order_is_416() {
    let (_b, r) = start();
    let data = b"0123456789".to_vec();
    let loc = r.start_upload("push/putooo").await;
    let resp = r.patch(&loc, &data[..5], Some("0-4")).await;
    let loc = check_progress(&r, &resp, 4);
    let rb = r
        .req(
            Method::PUT,
            &add_query(&loc, &format!("digest={}", sha256(&data))),
        )
        .header("content-type", "application/octet-stream")
        .header("content-range", "7-11")
        .body(data[5..].to_vec());
    let resp = r.send(rb).await;
    assert_eq!(
        resp.status().as_u16(),
        416,
        "final chunk out of order in closing PUT"
    );
}

#[tokio::test]
async fn blob_upload_rejected_chunk_does_not_advance_offset() {
    let (_b, r) = start();
    let data = b"0123456789".to_vec();
    let loc = r.start_upload("push/resume").await;
    let resp = r.patch(&loc, &data[..5], Some("0-4")).await;
    let loc = check_progress(&r, &resp, 4);
    assert_eq!(
        r.patch(&loc, b"zzzzz", Some("8-12"))
            .await
            .status()
            .as_u16(),
        416
    );
    // GET reports the last valid offset; the upload can be resumed from there.
    let st = r.get(&loc).await;
    assert_eq!(st.status().as_u16(), 204);
    assert_eq!(must_header(&st, "range"), "0-4");
    let loc = r.resolve(&must_header(&st, "location"));
    let resp = r.patch(&loc, &data[5..], Some("5-9")).await;
    let loc = check_progress(&r, &resp, 9);
    let resp = r.put_upload(&loc, &sha256(&data), b"").await;
    assert_eq!(resp.status().as_u16(), 201);
    let (_, body) = expect_status(
        r.get(&format!("/v2/push/resume/blobs/{}", sha256(&data)))
            .await,
        200,
    )
    .await;
    assert_eq!(body, data);
}

#[tokio::test]
async fn blob_upload_status_get_returns_204_with_range_and_location() {
    let (_b, r) = start();
    let loc = r.start_upload("push/status").await;
    let resp = r.patch(&loc, b"0123456789", Some("0-9")).await;
    let loc = check_progress(&r, &resp, 9);
    let st = r.get(&loc).await;
    assert_eq!(st.status().as_u16(), 204, "GET on an active upload");
    assert_eq!(must_header(&st, "range"), "0-9");
    let st_loc = r.resolve(&must_header(&st, "location"));
    must_header(&st, "docker-upload-uuid");
    // The returned location continues the same session.
    let resp = r.patch(&st_loc, b"abc", Some("10-12")).await;
    check_progress(&r, &resp, 12);
}

#[tokio::test]
async fn blob_upload_digest_algorithm_sha512() {
    let (_b, r) = start();
    let data = b"content addressed with sha512".to_vec();
    let digest = sha512(&data);
    let resp = r
        .post_upload("push/sha512", "?digest-algorithm=sha512")
        .await;
    assert_eq!(resp.status().as_u16(), 202, "POST ?digest-algorithm=sha512");
    let loc = r.resolve(&must_header(&resp, "location"));
    let resp = r
        .patch(&loc, &data, Some(&format!("0-{}", data.len() - 1)))
        .await;
    let loc = check_progress(&r, &resp, data.len() - 1);
    let resp = r.put_upload(&loc, &digest, b"").await;
    assert_eq!(
        resp.status().as_u16(),
        201,
        "closing PUT with a sha512 digest"
    );
    assert_eq!(must_header(&resp, "docker-content-digest"), digest);
    let got = r.get(&format!("/v2/push/sha512/blobs/{digest}")).await;
    let (headers, body) = expect_status(got, 200).await;
    assert_eq!(body, data);
    assert_eq!(
        headers
            .get("docker-content-digest")
            .unwrap()
            .to_str()
            .unwrap(),
        digest
    );
}

#[tokio::test]
async fn blob_upload_put_wrong_digest_is_400_digest_invalid() {
    let (_b, r) = start();
    let data = b"the real content".to_vec();
    let wrong = sha256(b"claimed content");
    let loc = r.start_upload("push/wrong").await;
    expect_error(
        r.put_upload(&loc, &wrong, &data).await,
        400,
        &["DIGEST_INVALID"],
    )
    .await;
    // Nothing was stored under either digest.
    assert_eq!(
        r.head(&format!("/v2/push/wrong/blobs/{wrong}"))
            .await
            .status()
            .as_u16(),
        404
    );
    assert_eq!(
        r.head(&format!("/v2/push/wrong/blobs/{}", sha256(&data)))
            .await
            .status()
            .as_u16(),
        404
    );
}

#[tokio::test]
async fn blob_upload_put_malformed_digest_is_400_digest_invalid() {
    let (_b, r) = start();
    let loc = r.start_upload("push/malformed").await;
    expect_error(
        r.put_upload(&loc, "sha256:not-hex", b"abc").await,
        400,
        &["DIGEST_INVALID"],
    )
    .await;
}

#[tokio::test]
async fn blob_upload_put_unsupported_algorithm_is_400() {
    let (_b, r) = start();
    let loc = r.start_upload("push/md5").await;
    let resp = r
        .put_upload(&loc, "md5:900150983cd24fb0d6963f7d28e17f72", b"abc")
        .await;
    expect_error(resp, 400, &["DIGEST_INVALID", "UNSUPPORTED"]).await;
}

#[tokio::test]
async fn blob_upload_put_without_digest_is_400() {
    let (_b, r) = start();
    let loc = r.start_upload("push/nodigest").await;
    let rb = r
        .req(Method::PUT, &loc)
        .header("content-type", "application/octet-stream")
        .body(b"abc".to_vec());
    expect_error(
        r.send(rb).await,
        400,
        &["DIGEST_INVALID", "BLOB_UPLOAD_INVALID"],
    )
    .await;
}

#[tokio::test]
async fn blob_upload_cancel_delete_is_204_then_404_blob_upload_unknown() {
    let (_b, r) = start();
    let loc = r.start_upload("push/cancel").await;
    let resp = r.patch(&loc, b"01234", Some("0-4")).await;
    let loc = check_progress(&r, &resp, 4);
    let del = r
        .send(r.req(Method::DELETE, &loc).header("content-length", "0"))
        .await;
    assert_eq!(del.status().as_u16(), 204, "DELETE upload session");
    expect_error(r.get(&loc).await, 404, &["BLOB_UPLOAD_UNKNOWN"]).await;
    expect_error(
        r.patch(&loc, b"56789", Some("5-9")).await,
        404,
        &["BLOB_UPLOAD_UNKNOWN"],
    )
    .await;
    expect_error(
        r.put_upload(&loc, &sha256(b"01234"), b"").await,
        404,
        &["BLOB_UPLOAD_UNKNOWN"],
    )
    .await;
}

#[tokio::test]
async fn blob_upload_session_is_gone_after_completion() {
    let (_b, r) = start();
    let data = b"complete me".to_vec();
    let loc = r.start_upload("push/done").await;
    assert_eq!(
        r.put_upload(&loc, &sha256(&data), &data)
            .await
            .status()
            .as_u16(),
        201
    );
    expect_error(r.get(&loc).await, 404, &["BLOB_UPLOAD_UNKNOWN"]).await;
    expect_error(
        r.patch(&loc, b"more", Some("11-14")).await,
        404,
        &["BLOB_UPLOAD_UNKNOWN"],
    )
    .await;
}

#[tokio::test]
async fn blob_mount_from_other_repo_is_201_with_location() {
    let (_b, r) = start();
    let data = b"mount me".to_vec();
    let digest = r.push_blob("mount/src", &data).await;
    assert_eq!(
        r.head(&format!("/v2/mount/dst/blobs/{digest}"))
            .await
            .status()
            .as_u16(),
        404
    );
    let resp = r
        .post_upload("mount/dst", &format!("?mount={digest}&from=mount/src"))
        .await;
    assert_eq!(resp.status().as_u16(), 201, "cross-repository mount");
    if let Some(d) = header(&resp, "docker-content-digest") {
        assert_eq!(d, digest);
    }
    let loc = must_header(&resp, "location");
    assert!(
        loc.contains("/v2/mount/dst/blobs/"),
        "Location {loc} should point at the target repository's blob"
    );
    let (_, body) = expect_status(r.get(&loc).await, 200).await;
    assert_eq!(body, data);
    let (_, body) = expect_status(r.get(&format!("/v2/mount/dst/blobs/{digest}")).await, 200).await;
    assert_eq!(body, data);
}

#[tokio::test]
async fn blob_mount_without_from_is_201_when_blob_exists() {
    let (_b, r) = start();
    let data = b"mount me without from".to_vec();
    let digest = r.push_blob("mount/elsewhere", &data).await;
    let resp = r
        .post_upload("mount/nofrom", &format!("?mount={digest}"))
        .await;
    assert_eq!(
        resp.status().as_u16(),
        201,
        "mount without `from` of a blob the registry has"
    );
    let loc = must_header(&resp, "location");
    let (_, body) = expect_status(r.get(&loc).await, 200).await;
    assert_eq!(body, data);
}

#[tokio::test]
async fn blob_mount_unknown_blob_starts_upload_session_202() {
    let (_b, r) = start();
    r.push_blob("mount/other", b"unrelated").await;
    let data = b"never pushed before".to_vec();
    let digest = sha256(&data);
    let resp = r
        .post_upload(
            "mount/unknown",
            &format!("?mount={digest}&from=mount/other"),
        )
        .await;
    assert_eq!(
        resp.status().as_u16(),
        202,
        "mount of an unknown blob falls back to an upload session"
    );
    let loc = r.resolve(&must_header(&resp, "location"));
    must_header(&resp, "docker-upload-uuid");
    let resp = r.put_upload(&loc, &digest, &data).await;
    assert_eq!(
        resp.status().as_u16(),
        201,
        "the session started by the failed mount is usable"
    );
    let (_, body) = expect_status(
        r.get(&format!("/v2/mount/unknown/blobs/{digest}")).await,
        200,
    )
    .await;
    assert_eq!(body, data);
}

#[tokio::test]
async fn blob_upload_concurrent_sessions_for_same_blob_both_succeed() {
    let (_b, r) = start();
    let data = vec![b'q'; 200_000];
    let digest = sha256(&data);
    let loc1 = r.start_upload("push/race").await;
    let loc2 = r.start_upload("push/race").await;
    assert_ne!(loc1, loc2, "each POST starts its own session");
    let resp = r.patch(&loc1, &data[..100_000], Some("0-99999")).await;
    let loc1 = check_progress(&r, &resp, 99_999);
    let resp = r.patch(&loc2, &data[..150_000], Some("0-149999")).await;
    let loc2 = check_progress(&r, &resp, 149_999);
    let (a, b2) = tokio::join!(
        r.put_upload(&loc1, &digest, &data[100_000..]),
        r.put_upload(&loc2, &digest, &data[150_000..])
    );
    assert_eq!(a.status().as_u16(), 201, "first of two concurrent uploads");
    assert_eq!(
        b2.status().as_u16(),
        201,
        "second of two concurrent uploads"
    );
    let (_, body) = expect_status(r.get(&format!("/v2/push/race/blobs/{digest}")).await, 200).await;
    assert!(body == data);
}

#[tokio::test]
async fn blob_upload_post_unsupported_digest_algorithm_is_400() {
    let (_b, r) = start();
    let resp = r.post_upload("push/badalgo", "?digest-algorithm=md5").await;
    expect_error(resp, 400, &["DIGEST_INVALID", "UNSUPPORTED"]).await;
}

#[tokio::test]
async fn blob_upload_monolithic_put_with_chunked_body_is_201() {
    let (_b, r) = start();
    let data: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    let digest = sha256(&data);
    let loc = r.start_upload("push/chunkedput").await;
    let chunks: Vec<Result<bytes::Bytes, std::io::Error>> = data
        .chunks(32_768)
        .map(|c| Ok(bytes::Bytes::copy_from_slice(c)))
        .collect();
    let rb = r
        .req(Method::PUT, &add_query(&loc, &format!("digest={digest}")))
        .header("content-type", "application/octet-stream")
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
            chunks,
        )));
    let resp = r.send(rb).await;
    assert_eq!(resp.status().as_u16(), 201, "streamed monolithic PUT");
    let (_, body) = expect_status(
        r.get(&format!("/v2/push/chunkedput/blobs/{digest}")).await,
        200,
    )
    .await;
    assert!(body == data);
}
