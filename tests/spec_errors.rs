//! OCI distribution-spec error format and request-validation rules, the API version check, and blob range/HEAD
//! requests.

mod common;
#[path = "common/spec.rs"]
mod h;

use h::*;
use reqwest::Method;
use serde_json::Value;

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

/// Checks a raw response is `status` with a JSON error body carrying `code`.
fn check_raw_error(raw: &Raw, path: &str, status: u16, code: &str) {
    assert_eq!(
        raw.status,
        status,
        "{path}: body {:?}",
        String::from_utf8_lossy(&raw.body)
    );
    let codes = error_codes(path, &raw.body);
    assert!(
        codes.iter().any(|c| c == code),
        "{path}: expected {code}, got {codes:?}"
    );
}

#[tokio::test]
async fn api_version_check_returns_200_with_distribution_header() {
    let (_b, r) = start();
    let resp = r.get("/v2/").await;
    assert_eq!(resp.status().as_u16(), 200);
    assert_eq!(
        must_header(&resp, "docker-distribution-api-version"),
        "registry/2.0"
    );
}

#[tokio::test]
async fn error_bodies_are_json_error_envelopes() {
    let (_b, r) = start();
    r.push_image("err/envelope", "latest", "a").await;
    let missing = sha256(b"missing");
    let cases: Vec<(reqwest::Response, u16)> = vec![
        (r.get("/v2/err/envelope/manifests/nope").await, 404),
        (
            r.get(&format!("/v2/err/envelope/blobs/{missing}")).await,
            404,
        ),
        (r.get("/v2/err/nothing/tags/list").await, 404),
        (r.get("/v2/Err/Upper/tags/list").await, 400),
        (r.get("/v2/err/envelope/blobs/sha256:xyz").await, 400),
        (
            r.get("/v2/err/envelope/blobs/uploads/00000000-0000-4000-8000-000000000000")
                .await,
            404,
        ),
        (
            r.put_manifest("err/envelope", "bad", OCI_MANIFEST, b"{")
                .await,
            400,
        ),
    ];
    for (resp, status) in cases {
        let url = resp.url().to_string();
        assert_eq!(resp.status().as_u16(), status, "{url}");
        let ct = header(&resp, "content-type").unwrap_or_default();
        assert!(
            ct.starts_with("application/json"),
            "{url}: error Content-Type {ct:?}"
        );
        let body = resp.bytes().await.unwrap();
        let v: Value = serde_json::from_slice(&body).unwrap();
        error_codes(&url, &body);
        for e in v["errors"].as_array().unwrap() {
            let obj = e.as_object().unwrap();
            assert!(
                obj.get("message").is_some_and(Value::is_string),
                "{url}: message must be a string: {e}"
            );
            assert!(
                obj.contains_key("detail"),
                "{url}: berth error entries carry `detail`: {e}"
            );
        }
    }
}

#[tokio::test]
async fn name_with_uppercase_is_400_name_invalid() {
    let (_b, r) = start();
    expect_error(r.get("/v2/Foo/bar/tags/list").await, 400, &["NAME_INVALID"]).await;
    expect_error(
        r.get("/v2/foo/Bar/manifests/latest").await,
        400,
        &["NAME_INVALID"],
    )
    .await;
    expect_error(r.post_upload("MyRepo", "").await, 400, &["NAME_INVALID"]).await;
    let resp = r.put_manifest("Upper", "latest", OCI_MANIFEST, b"{}").await;
    expect_error(resp, 400, &["NAME_INVALID"]).await;
    expect_error(
        r.get(&format!("/v2/UP/blobs/{}", sha256(b"x"))).await,
        400,
        &["NAME_INVALID"],
    )
    .await;
}

#[tokio::test]
async fn name_with_dot_dot_is_400_name_invalid() {
    let (_b, r) = start();
    expect_error(
        r.get("/v2/foo..bar/tags/list").await,
        400,
        &["NAME_INVALID"],
    )
    .await;
    // A `..` path segment: sent raw, since URL libraries would resolve it away.
    for path in [
        "/v2/foo/../bar/tags/list",
        "/v2/foo/../bar/manifests/latest",
        "/v2/../foo/tags/list",
    ] {
        let raw = r.raw("GET", path, &[]).await;
        check_raw_error(&raw, path, 400, "NAME_INVALID");
    }
    let raw = r.raw("POST", "/v2/foo/../bar/blobs/uploads/", &[]).await;
    check_raw_error(
        &raw,
        "POST /v2/foo/../bar/blobs/uploads/",
        400,
        "NAME_INVALID",
    );
}

#[tokio::test]
async fn name_of_256_characters_is_400_name_invalid() {
    let (_b, r) = start();
    let name = format!("{}/{}", "a".repeat(127), "b".repeat(128));
    assert_eq!(name.len(), 256);
    expect_error(
        r.get(&format!("/v2/{name}/tags/list")).await,
        400,
        &["NAME_INVALID"],
    )
    .await;
    expect_error(r.post_upload(&name, "").await, 400, &["NAME_INVALID"]).await;
    let long = "c".repeat(300);
    expect_error(
        r.get(&format!("/v2/{long}/manifests/latest")).await,
        400,
        &["NAME_INVALID"],
    )
    .await;
}

#[tokio::test]
async fn name_of_255_characters_is_accepted() {
    let (_b, r) = start();
    let name = format!("{}/{}", "a".repeat(127), "b".repeat(127));
    assert_eq!(name.len(), 255);
    let digest = r.push_blob(&name, b"long name").await;
    expect_status(r.get(&format!("/v2/{name}/blobs/{digest}")).await, 200).await;
}

#[tokio::test]
async fn name_with_empty_component_is_400_name_invalid() {
    let (_b, r) = start();
    for path in [
        "/v2/foo//bar/tags/list",
        "/v2//foo/tags/list",
        "/v2/foo//manifests/latest",
    ] {
        let raw = r.raw("GET", path, &[]).await;
        check_raw_error(&raw, path, 400, "NAME_INVALID");
    }
}

#[tokio::test]
async fn name_component_with_bad_separators_is_400_name_invalid() {
    let (_b, r) = start();
    for name in [
        "-foo",
        "foo-",
        "foo/_bar",
        "foo___bar",
        "foo.",
        "fo%20o",
        "foo/bar:baz",
    ] {
        let resp = r.get(&format!("/v2/{name}/tags/list")).await;
        expect_error(resp, 400, &["NAME_INVALID"]).await;
    }
    // Valid separators per `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*`: these names work.
    for name in ["foo__bar", "foo---bar", "a.b-c_d/e"] {
        r.push_blob(name, b"valid name").await;
    }
}

#[tokio::test]
async fn invalid_digest_in_url_is_400_digest_invalid() {
    let (_b, r) = start();
    r.push_image("err/digest", "latest", "a").await;
    for d in [
        "sha256:xyz",
        "sha256:abc",
        "sha256:",
        "notadigest",
        "sha256:ZZZZ",
    ] {
        let resp = r.get(&format!("/v2/err/digest/blobs/{d}")).await;
        expect_error(resp, 400, &["DIGEST_INVALID"]).await;
        let resp = r.delete(&format!("/v2/err/digest/blobs/{d}")).await;
        expect_error(resp, 400, &["DIGEST_INVALID"]).await;
    }
    // Registered algorithms fix the encoding: sha256 is 64 lowercase hex characters, sha512 is 128.
    let upper = format!("sha256:{}", "A".repeat(64));
    let short512 = format!("sha512:{}", "a".repeat(64));
    let long256 = format!("sha256:{}", "a".repeat(65));
    for d in [upper, short512, long256] {
        let resp = r.get(&format!("/v2/err/digest/blobs/{d}")).await;
        expect_error(resp, 400, &["DIGEST_INVALID"]).await;
    }
    // In the manifests endpoint, a reference with ':' is a digest; a malformed one is DIGEST_INVALID.
    for d in ["sha256:xyz", "sha256:abc"] {
        let resp = r.get(&format!("/v2/err/digest/manifests/{d}")).await;
        expect_error(resp, 400, &["DIGEST_INVALID"]).await;
    }
    let resp = r.get("/v2/err/digest/referrers/sha256:xyz").await;
    expect_error(resp, 400, &["DIGEST_INVALID"]).await;
    let resp = r
        .post_upload("err/digest", "?mount=sha256:xyz&from=err/other")
        .await;
    assert!(
        matches!(resp.status().as_u16(), 400 | 202),
        "mount of a malformed digest: 400 DIGEST_INVALID or a plain upload session, got {}",
        resp.status()
    );
}

#[tokio::test]
async fn invalid_tag_in_url_is_400() {
    let (_b, r) = start();
    r.push_image("err/tag", "latest", "a").await;
    let img = r.push_image("err/tag", "", "b").await;
    // Tags are at most 128 characters of [a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}.
    let long = "t".repeat(129);
    for tag in [long.as_str(), ".dot", "-dash"] {
        let resp = r
            .put_manifest("err/tag", tag, OCI_MANIFEST, &img.body)
            .await;
        assert_eq!(
            resp.status().as_u16(),
            400,
            "PUT manifest with invalid tag {tag:?}"
        );
    }
    let ok = "T".repeat(128);
    r.push_manifest("err/tag", &ok, OCI_MANIFEST, &img.body)
        .await;
}

#[tokio::test]
async fn unknown_upload_uuid_is_404_blob_upload_unknown() {
    let (_b, r) = start();
    r.push_blob("err/upload", b"make the repository exist")
        .await;
    let loc = "/v2/err/upload/blobs/uploads/2b3c1e5e-8d0a-4c1e-9a53-6f0b9c1d2e3f";
    expect_error(r.get(loc).await, 404, &["BLOB_UPLOAD_UNKNOWN"]).await;
    expect_error(
        r.patch(loc, b"abc", Some("0-2")).await,
        404,
        &["BLOB_UPLOAD_UNKNOWN"],
    )
    .await;
    expect_error(
        r.put_upload(loc, &sha256(b"abc"), b"abc").await,
        404,
        &["BLOB_UPLOAD_UNKNOWN"],
    )
    .await;
    expect_error(r.delete(loc).await, 404, &["BLOB_UPLOAD_UNKNOWN"]).await;
    // Not even a UUID.
    expect_error(
        r.get("/v2/err/upload/blobs/uploads/not-a-uuid").await,
        404,
        &["BLOB_UPLOAD_UNKNOWN"],
    )
    .await;
}

#[tokio::test]
async fn upload_session_is_bound_to_its_repository() {
    let (_b, r) = start();
    let loc = r.start_upload("err/sess-a").await;
    r.push_blob("err/sess-b", b"make b exist").await;
    let uuid = loc
        .split("/blobs/uploads/")
        .nth(1)
        .unwrap()
        .split('?')
        .next()
        .unwrap()
        .to_string();
    let other = format!("/v2/err/sess-b/blobs/uploads/{uuid}");
    expect_error(r.get(&other).await, 404, &["BLOB_UPLOAD_UNKNOWN"]).await;
    expect_error(
        r.patch(&other, b"abc", Some("0-2")).await,
        404,
        &["BLOB_UPLOAD_UNKNOWN"],
    )
    .await;
    // Still alive in its own repository.
    assert_eq!(r.get(&loc).await.status().as_u16(), 204);
}

#[tokio::test]
async fn bogus_content_range_is_rejected() {
    let (_b, r) = start();
    for range in ["bytes=abc", "abc", "5-2", "0-"] {
        let loc = r.start_upload("err/range").await;
        let resp = r.patch(&loc, b"abc", Some(range)).await;
        let status = resp.status().as_u16();
        assert!(
            status == 400 || status == 416,
            "Content-Range {range:?}: expected 400 or 416, got {status}"
        );
        if status == 400 {
            expect_error(resp, 400, &["BLOB_UPLOAD_INVALID"]).await;
        }
    }
    // Content-Range that disagrees with the body length.
    let loc = r.start_upload("err/range").await;
    let resp = r.patch(&loc, b"abc", Some("0-9")).await;
    let status = resp.status().as_u16();
    assert!(
        status == 400 || status == 416,
        "Content-Range 0-9 with 3 bytes: expected 400 or 416, got {status}"
    );
}

#[tokio::test]
async fn blob_head_returns_200_with_length_and_digest_without_body() {
    let (_b, r) = start();
    let data = b"head of a blob, twenty-nine b".to_vec();
    let digest = r.push_blob("err/head", &data).await;
    let resp = r.head(&format!("/v2/err/head/blobs/{digest}")).await;
    assert_eq!(resp.status().as_u16(), 200);
    assert_eq!(must_header(&resp, "content-length"), data.len().to_string());
    assert_eq!(must_header(&resp, "docker-content-digest"), digest);
    assert!(
        resp.bytes().await.unwrap().is_empty(),
        "HEAD must not carry a body"
    );
    // On the wire too.
    let raw = r
        .raw("HEAD", &format!("/v2/err/head/blobs/{digest}"), &[])
        .await;
    assert_eq!(raw.status, 200);
    assert!(
        raw.body.is_empty(),
        "raw HEAD carried {} body bytes",
        raw.body.len()
    );
}

#[tokio::test]
async fn blob_get_range_returns_206_partial_content() {
    let (_b, r) = start();
    let data = b"0123456789abcdefghijklmnopqrstuvwxyz".to_vec();
    let digest = r.push_blob("err/range206", &data).await;
    let url = format!("/v2/err/range206/blobs/{digest}");
    let resp = r
        .send(r.req(Method::GET, &url).header("range", "bytes=0-9"))
        .await;
    assert_eq!(resp.status().as_u16(), 206);
    assert_eq!(
        must_header(&resp, "content-range"),
        format!("bytes 0-9/{}", data.len())
    );
    assert_eq!(must_header(&resp, "content-length"), "10");
    assert_eq!(resp.bytes().await.unwrap().as_ref(), &data[..10]);
    let resp = r
        .send(r.req(Method::GET, &url).header("range", "bytes=30-"))
        .await;
    assert_eq!(resp.status().as_u16(), 206, "open-ended range");
    assert_eq!(
        must_header(&resp, "content-range"),
        format!("bytes 30-35/{}", data.len())
    );
    assert_eq!(resp.bytes().await.unwrap().as_ref(), &data[30..]);
    let resp = r
        .send(r.req(Method::GET, &url).header("range", "bytes=-4"))
        .await;
    assert_eq!(resp.status().as_u16(), 206, "suffix range");
    assert_eq!(
        resp.bytes().await.unwrap().as_ref(),
        &data[data.len() - 4..]
    );
    // A last-byte-pos past the end is clamped (RFC 9110 14.1.2).
    let resp = r
        .send(r.req(Method::GET, &url).header("range", "bytes=20-1000"))
        .await;
    assert_eq!(resp.status().as_u16(), 206, "range running past the end");
    assert_eq!(resp.bytes().await.unwrap().as_ref(), &data[20..]);
}

#[tokio::test]
async fn blob_get_unsatisfiable_range_is_416() {
    let (_b, r) = start();
    let data = b"twenty bytes of data".to_vec();
    let digest = r.push_blob("err/range416", &data).await;
    let url = format!("/v2/err/range416/blobs/{digest}");
    let resp = r
        .send(r.req(Method::GET, &url).header("range", "bytes=100-200"))
        .await;
    assert_eq!(resp.status().as_u16(), 416);
    if let Some(cr) = header(&resp, "content-range") {
        assert_eq!(cr, format!("bytes */{}", data.len()), "416 Content-Range");
    }
    let resp = r
        .send(r.req(Method::GET, &url).header("range", "bytes=20-"))
        .await;
    assert_eq!(resp.status().as_u16(), 416, "first-byte-pos == length");
}
