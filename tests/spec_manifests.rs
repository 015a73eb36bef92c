//! OCI distribution-spec manifest rules: push by tag and digest, pull headers, content negotiation, manifest kinds,
//! and the validation errors (MANIFEST_BLOB_UNKNOWN, MANIFEST_INVALID, DIGEST_INVALID, 413).

mod common;
#[path = "common/spec.rs"]
mod h;

use h::*;
use reqwest::Method;
use serde_json::json;

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

/// Pushes a Docker schema2 image (config + layer + manifest) and returns (digest, manifest bytes).
async fn push_docker_image(r: &Reg, repo: &str, reference: &str, seed: &str) -> (String, Vec<u8>) {
    let config =
        serde_json::to_vec(&json!({"architecture": "arm64", "os": "linux", "seed": seed})).unwrap();
    let layer = format!("docker-layer-{seed}").into_bytes();
    r.push_blob(repo, &config).await;
    r.push_blob(repo, &layer).await;
    let body = serde_json::to_vec_pretty(&json!({
        "schemaVersion": 2,
        "mediaType": DOCKER_MANIFEST,
        "config": desc(DOCKER_CONFIG, &config),
        "layers": [desc(DOCKER_LAYER, &layer)],
    }))
    .unwrap();
    let reference = if reference.is_empty() {
        sha256(&body)
    } else {
        reference.to_string()
    };
    let digest = r
        .push_manifest(repo, &reference, DOCKER_MANIFEST, &body)
        .await;
    (digest, body)
}

/// GETs a manifest with an optional Accept header and checks body, Content-Type, digest and length.
async fn check_manifest_get(r: &Reg, repo: &str, reference: &str, media_type: &str, body: &[u8]) {
    let resp = r
        .send(
            r.req(Method::GET, &format!("/v2/{repo}/manifests/{reference}"))
                .header("accept", media_type),
        )
        .await;
    assert_eq!(
        resp.status().as_u16(),
        200,
        "GET manifest {repo}:{reference}"
    );
    assert_eq!(must_header(&resp, "content-type"), media_type);
    assert_eq!(must_header(&resp, "docker-content-digest"), sha256(body));
    assert_eq!(must_header(&resp, "content-length"), body.len().to_string());
    assert_eq!(
        resp.bytes().await.unwrap().as_ref(),
        body,
        "manifest bytes must round-trip exactly"
    );
}

#[tokio::test]
async fn manifest_put_by_tag_is_201_with_location_and_digest() {
    let (_b, r) = start();
    r.push_blob("man/tag", b"{\"os\":\"linux\"}").await;
    let body = oci_manifest(&desc(OCI_CONFIG, b"{\"os\":\"linux\"}"), &[]);
    let resp = r.put_manifest("man/tag", "v1", OCI_MANIFEST, &body).await;
    assert_eq!(resp.status().as_u16(), 201);
    assert_eq!(must_header(&resp, "docker-content-digest"), sha256(&body));
    let loc = must_header(&resp, "location");
    let (_, got) = expect_status(r.get(&loc).await, 200).await;
    assert_eq!(got, body, "Location must be a pullable manifest URL");
    check_manifest_get(&r, "man/tag", "v1", OCI_MANIFEST, &body).await;
    check_manifest_get(&r, "man/tag", &sha256(&body), OCI_MANIFEST, &body).await;
}

#[tokio::test]
async fn manifest_put_by_digest_is_201() {
    let (_b, r) = start();
    let img = r.push_image("man/bydigest", "", "d1").await;
    check_manifest_get(&r, "man/bydigest", &img.digest, OCI_MANIFEST, &img.body).await;
    // Pushed by digest only: no tags.
    let resp = r.get("/v2/man/bydigest/tags/list").await;
    let (_, body) = expect_status(resp, 200).await;
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let tags = v["tags"].as_array().map(|a| a.len()).unwrap_or(0);
    assert_eq!(tags, 0, "a manifest pushed by digest creates no tag: {v}");
}

#[tokio::test]
async fn manifest_put_stores_exact_bytes() {
    let (_b, r) = start();
    let config = b"{}".to_vec();
    r.push_blob("man/exact", &config).await;
    // Odd whitespace and key order that any re-serialisation would change.
    let body = format!(
        "{{\n\t\"layers\" : [ ],   \"config\":{{\"size\":2,\"digest\":\"{}\",  \"mediaType\":\"{}\"}},\n\"mediaType\": \"{}\", \"schemaVersion\":2 }}\n\n",
        sha256(&config),
        OCI_CONFIG,
        OCI_MANIFEST
    )
    .into_bytes();
    r.push_manifest("man/exact", "odd", OCI_MANIFEST, &body)
        .await;
    check_manifest_get(&r, "man/exact", "odd", OCI_MANIFEST, &body).await;
}

#[tokio::test]
async fn manifest_head_by_tag_and_digest_returns_headers_without_body() {
    let (_b, r) = start();
    let img = r.push_image("man/head", "latest", "h").await;
    for reference in ["latest", img.digest.as_str()] {
        let resp = r
            .send(
                r.req(Method::HEAD, &format!("/v2/man/head/manifests/{reference}"))
                    .header("accept", OCI_MANIFEST),
            )
            .await;
        assert_eq!(resp.status().as_u16(), 200, "HEAD manifest {reference}");
        assert_eq!(must_header(&resp, "content-type"), OCI_MANIFEST);
        assert_eq!(must_header(&resp, "docker-content-digest"), img.digest);
        assert_eq!(
            must_header(&resp, "content-length"),
            img.body.len().to_string()
        );
        assert!(
            resp.bytes().await.unwrap().is_empty(),
            "HEAD must not carry a body"
        );
    }
}

#[tokio::test]
async fn manifest_put_by_digest_with_tag_params_tags_all() {
    let (_b, r) = start();
    let config = b"{\"tagged\":true}".to_vec();
    r.push_blob("man/multitag", &config).await;
    let body = oci_manifest(&desc(OCI_CONFIG, &config), &[]);
    let digest = sha256(&body);
    let resp = r
        .put_manifest(
            "man/multitag",
            &format!("{digest}?tag=a&tag=b"),
            OCI_MANIFEST,
            &body,
        )
        .await;
    assert_eq!(resp.status().as_u16(), 201);
    assert_eq!(must_header(&resp, "docker-content-digest"), digest);
    for tag in ["a", "b"] {
        check_manifest_get(&r, "man/multitag", tag, OCI_MANIFEST, &body).await;
    }
}

/// Spec (main, after v1.1.1): a registry supporting `?tag=` MUST return an `OCI-Tag` header for each accepted tag.
#[tokio::test]
async fn manifest_put_with_tag_params_returns_oci_tag_header() {
    let (_b, r) = start();
    let config = b"{\"tagged\":1}".to_vec();
    r.push_blob("man/ocitag", &config).await;
    let body = oci_manifest(&desc(OCI_CONFIG, &config), &[]);
    let digest = sha256(&body);
    let resp = r
        .put_manifest(
            "man/ocitag",
            &format!("{digest}?tag=1.2.3&tag=latest"),
            OCI_MANIFEST,
            &body,
        )
        .await;
    assert_eq!(resp.status().as_u16(), 201);
    let tags: Vec<String> = headers_all(&resp, "oci-tag")
        .iter()
        .flat_map(|v| {
            v.split(',')
                .map(|t| t.trim().to_string())
                .collect::<Vec<_>>()
        })
        .collect();
    assert!(
        tags.contains(&"1.2.3".to_string()) && tags.contains(&"latest".to_string()),
        "OCI-Tag headers: {tags:?}"
    );
}

#[tokio::test]
async fn manifest_put_overwrites_existing_tag() {
    let (_b, r) = start();
    let one = r.push_image("man/retag", "latest", "one").await;
    let two = r.push_image("man/retag", "latest", "two").await;
    assert_ne!(one.digest, two.digest);
    check_manifest_get(&r, "man/retag", "latest", OCI_MANIFEST, &two.body).await;
    check_manifest_get(&r, "man/retag", &one.digest, OCI_MANIFEST, &one.body).await;
}

#[tokio::test]
async fn manifest_get_docker_schema2_has_docker_content_type() {
    let (_b, r) = start();
    let (_, body) = push_docker_image(&r, "man/docker", "v2", "x").await;
    check_manifest_get(&r, "man/docker", "v2", DOCKER_MANIFEST, &body).await;
}

#[tokio::test]
async fn manifest_get_with_accept_excluding_stored_type_is_404_manifest_unknown() {
    let (_b, r) = start();
    let (digest, _) = push_docker_image(&r, "man/neg", "v2", "neg").await;
    for reference in ["v2", digest.as_str()] {
        let rb = r
            .req(Method::GET, &format!("/v2/man/neg/manifests/{reference}"))
            .header("accept", format!("{OCI_MANIFEST}, {OCI_INDEX}"));
        let v = expect_error(r.send(rb).await, 404, &["MANIFEST_UNKNOWN"]).await;
        let msg = v["errors"][0]["message"].as_str().unwrap_or("");
        assert!(
            !msg.is_empty(),
            "a 404 from negotiation should explain itself: {v}"
        );
        let rb = r
            .req(Method::HEAD, &format!("/v2/man/neg/manifests/{reference}"))
            .header("accept", OCI_MANIFEST);
        assert_eq!(
            r.send(rb).await.status().as_u16(),
            404,
            "HEAD with non-matching Accept"
        );
    }
}

#[tokio::test]
async fn manifest_get_with_accept_listing_stored_type_serves_it() {
    let (_b, r) = start();
    let (_, body) = push_docker_image(&r, "man/neg2", "v2", "neg2").await;
    // Comma-separated list with parameters.
    let rb = r.req(Method::GET, "/v2/man/neg2/manifests/v2").header(
        "accept",
        format!("{OCI_MANIFEST}, {DOCKER_MANIFEST};q=0.9, {OCI_INDEX}"),
    );
    let resp = r.send(rb).await;
    assert_eq!(
        resp.status().as_u16(),
        200,
        "Accept list containing the stored type"
    );
    assert_eq!(must_header(&resp, "content-type"), DOCKER_MANIFEST);
    assert_eq!(resp.bytes().await.unwrap().as_ref(), body.as_slice());
    // Several Accept headers, as docker and containerd send them.
    let rb = r
        .req(Method::GET, "/v2/man/neg2/manifests/v2")
        .header("accept", OCI_MANIFEST)
        .header("accept", DOCKER_LIST)
        .header("accept", DOCKER_MANIFEST);
    let resp = r.send(rb).await;
    assert_eq!(
        resp.status().as_u16(),
        200,
        "multiple Accept headers containing the stored type"
    );
    assert_eq!(must_header(&resp, "content-type"), DOCKER_MANIFEST);
}

#[tokio::test]
async fn manifest_get_with_wildcard_accept_serves_stored_type() {
    let (_b, r) = start();
    let (_, body) = push_docker_image(&r, "man/wild", "v2", "wild").await;
    let rb = r
        .req(Method::GET, "/v2/man/wild/manifests/v2")
        .header("accept", format!("{OCI_MANIFEST}, */*"));
    let resp = r.send(rb).await;
    assert_eq!(resp.status().as_u16(), 200);
    assert_eq!(must_header(&resp, "content-type"), DOCKER_MANIFEST);
    assert_eq!(resp.bytes().await.unwrap().as_ref(), body.as_slice());
}

#[tokio::test]
async fn manifest_get_without_accept_serves_stored_type() {
    let (_b, r) = start();
    let (_, body) = push_docker_image(&r, "man/noaccept", "v2", "na").await;
    // reqwest adds `Accept: */*` by default, so send a raw request with no Accept header at all.
    let raw = r.raw("GET", "/v2/man/noaccept/manifests/v2", &[]).await;
    assert_eq!(
        raw.status,
        200,
        "GET without Accept: {:?}",
        String::from_utf8_lossy(&raw.body)
    );
    assert_eq!(raw.header("content-type"), Some(DOCKER_MANIFEST));
    assert_eq!(raw.body, body);
}

#[tokio::test]
async fn manifest_oci_index_roundtrip() {
    let (_b, r) = start();
    let amd = r.push_image("man/index", "", "amd64").await;
    let arm = r.push_image("man/index", "", "arm64").await;
    let body = serde_json::to_vec_pretty(&json!({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [
            {"mediaType": OCI_MANIFEST, "digest": amd.digest, "size": amd.body.len(),
             "platform": {"architecture": "amd64", "os": "linux"}},
            {"mediaType": OCI_MANIFEST, "digest": arm.digest, "size": arm.body.len(),
             "platform": {"architecture": "arm64", "os": "linux"}},
        ],
    }))
    .unwrap();
    r.push_manifest("man/index", "multi", OCI_INDEX, &body)
        .await;
    check_manifest_get(&r, "man/index", "multi", OCI_INDEX, &body).await;
    check_manifest_get(&r, "man/index", &sha256(&body), OCI_INDEX, &body).await;
}

#[tokio::test]
async fn manifest_docker_manifest_list_roundtrip() {
    let (_b, r) = start();
    let (d1, b1) = push_docker_image(&r, "man/list", "", "l1").await;
    let (d2, b2) = push_docker_image(&r, "man/list", "", "l2").await;
    let body = serde_json::to_vec_pretty(&json!({
        "schemaVersion": 2,
        "mediaType": DOCKER_LIST,
        "manifests": [
            {"mediaType": DOCKER_MANIFEST, "digest": d1, "size": b1.len(),
             "platform": {"architecture": "amd64", "os": "linux"}},
            {"mediaType": DOCKER_MANIFEST, "digest": d2, "size": b2.len(),
             "platform": {"architecture": "arm64", "os": "linux", "variant": "v8"}},
        ],
    }))
    .unwrap();
    r.push_manifest("man/list", "multi", DOCKER_LIST, &body)
        .await;
    check_manifest_get(&r, "man/list", "multi", DOCKER_LIST, &body).await;
}

#[tokio::test]
async fn manifest_artifact_with_empty_config_roundtrip() {
    let (_b, r) = start();
    assert_eq!(sha256(b"{}"), EMPTY_DIGEST);
    assert_eq!(r.push_blob("man/artifact", b"{}").await, EMPTY_DIGEST);
    let sbom = b"{\"spdxVersion\":\"SPDX-2.3\"}".to_vec();
    r.push_blob("man/artifact", &sbom).await;
    let body = serde_json::to_vec_pretty(&json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": "application/vnd.example.sbom.v1",
        "config": {"mediaType": OCI_EMPTY, "digest": EMPTY_DIGEST, "size": 2},
        "layers": [desc("application/spdx+json", &sbom)],
        "annotations": {"org.opencontainers.image.created": "2024-01-01T00:00:00Z"},
    }))
    .unwrap();
    r.push_manifest("man/artifact", "sbom", OCI_MANIFEST, &body)
        .await;
    check_manifest_get(&r, "man/artifact", "sbom", OCI_MANIFEST, &body).await;
}

#[tokio::test]
async fn manifest_put_rejects_missing_layer() {
    let (_b, r) = start();
    let config = b"{\"c\":1}".to_vec();
    r.push_blob("man/missing", &config).await;
    let body = oci_manifest(
        &desc(OCI_CONFIG, &config),
        &[desc(OCI_LAYER, b"never pushed layer")],
    );
    let resp = r
        .put_manifest("man/missing", "v1", OCI_MANIFEST, &body)
        .await;
    expect_error(resp, 400, &["MANIFEST_BLOB_UNKNOWN"]).await;
    assert_eq!(
        r.get("/v2/man/missing/manifests/v1")
            .await
            .status()
            .as_u16(),
        404
    );
}

#[tokio::test]
async fn manifest_put_rejects_missing_config() {
    let (_b, r) = start();
    let layer = b"present layer".to_vec();
    r.push_blob("man/missingcfg", &layer).await;
    let body = oci_manifest(
        &desc(OCI_CONFIG, b"{\"never\":\"pushed\"}"),
        &[desc(OCI_LAYER, &layer)],
    );
    let resp = r
        .put_manifest("man/missingcfg", "v1", OCI_MANIFEST, &body)
        .await;
    expect_error(resp, 400, &["MANIFEST_BLOB_UNKNOWN"]).await;
}

#[tokio::test]
async fn index_put_rejects_missing_child_manifest() {
    let (_b, r) = start();
    let present = r.push_image("man/badindex", "", "present").await;
    let body = serde_json::to_vec_pretty(&json!({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [
            present.desc(),
            {"mediaType": OCI_MANIFEST, "digest": sha256(b"no such manifest"), "size": 16},
        ],
    }))
    .unwrap();
    let resp = r
        .put_manifest("man/badindex", "multi", OCI_INDEX, &body)
        .await;
    expect_error(resp, 400, &["MANIFEST_BLOB_UNKNOWN"]).await;
}

#[tokio::test]
async fn manifest_put_content_type_mismatch_is_400_manifest_invalid() {
    let (_b, r) = start();
    let config = b"{\"ct\":1}".to_vec();
    r.push_blob("man/ct", &config).await;
    let body = oci_manifest(&desc(OCI_CONFIG, &config), &[]);
    let resp = r.put_manifest("man/ct", "v1", DOCKER_MANIFEST, &body).await;
    expect_error(resp, 400, &["MANIFEST_INVALID"]).await;
    let resp = r.put_manifest("man/ct", "v1", OCI_INDEX, &body).await;
    expect_error(resp, 400, &["MANIFEST_INVALID"]).await;
}

#[tokio::test]
async fn manifest_put_malformed_json_is_400_manifest_invalid() {
    let (_b, r) = start();
    let body = format!("{{\"schemaVersion\": 2, \"mediaType\": \"{OCI_MANIFEST}\", \"config\": ")
        .into_bytes();
    let resp = r
        .put_manifest("man/garbage", "v1", OCI_MANIFEST, &body)
        .await;
    expect_error(resp, 400, &["MANIFEST_INVALID"]).await;
    let resp = r
        .put_manifest("man/garbage", "v1", OCI_MANIFEST, b"not json at all")
        .await;
    expect_error(resp, 400, &["MANIFEST_INVALID"]).await;
}

fn schema1_body(layer_digest: &str) -> Vec<u8> {
    serde_json::to_vec_pretty(&json!({
        "schemaVersion": 1,
        "name": "man/schema1",
        "tag": "latest",
        "architecture": "amd64",
        "fsLayers": [{"blobSum": layer_digest}],
        "history": [{"v1Compatibility": "{\"id\":\"abc\"}"}],
        "signatures": [{
            "header": {"jwk": {"crv": "P-256", "kid": "X", "kty": "EC", "x": "a", "y": "b"}, "alg": "ES256"},
            "signature": "c2lnbmF0dXJl",
            "protected": "cHJvdGVjdGVk"
        }]
    }))
    .unwrap()
}

#[tokio::test]
async fn manifest_put_schema1_signed_is_400_manifest_invalid() {
    let (_b, r) = start();
    let layer = r.push_blob("man/schema1", b"schema1 layer").await;
    let resp = r
        .put_manifest(
            "man/schema1",
            "latest",
            SCHEMA1_SIGNED,
            &schema1_body(&layer),
        )
        .await;
    expect_error(resp, 400, &["MANIFEST_INVALID"]).await;
}

#[tokio::test]
async fn manifest_put_schema1_unsigned_is_400_manifest_invalid() {
    let (_b, r) = start();
    let layer = r.push_blob("man/schema1", b"schema1 layer").await;
    let resp = r
        .put_manifest("man/schema1", "latest", SCHEMA1, &schema1_body(&layer))
        .await;
    expect_error(resp, 400, &["MANIFEST_INVALID"]).await;
}

/// A valid manifest padded with an annotation so that its JSON is exactly `total` bytes.
async fn padded_manifest(r: &Reg, repo: &str, total: usize) -> Vec<u8> {
    let config = b"{\"big\":true}".to_vec();
    r.push_blob(repo, &config).await;
    let make = |pad: usize| {
        serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": desc(OCI_CONFIG, &config),
            "layers": [],
            "annotations": {"pad": "p".repeat(pad)},
        }))
        .unwrap()
    };
    let overhead = make(0).len();
    let body = make(total - overhead);
    assert_eq!(body.len(), total);
    body
}

#[tokio::test]
async fn manifest_put_over_4mib_is_413() {
    let (_b, r) = start();
    let body = padded_manifest(&r, "man/big", 4 * 1024 * 1024 + 1).await;
    // Sent raw: the server may answer 413 before reading the whole body, which reqwest reports as a broken pipe
    // instead of returning the response.
    let path = "/v2/man/big/manifests/big";
    let raw = raw_with_body(
        &r.host(),
        "PUT",
        path,
        &[("Content-Type", OCI_MANIFEST)],
        body,
    )
    .await;
    assert_eq!(raw.status, 413, "{:?}", String::from_utf8_lossy(&raw.body));
    let codes = error_codes(path, &raw.body);
    assert!(
        codes
            .iter()
            .any(|c| c == "SIZE_INVALID" || c == "MANIFEST_INVALID"),
        "{codes:?}"
    );
    assert_eq!(
        r.get("/v2/man/big/manifests/big").await.status().as_u16(),
        404
    );
}

#[tokio::test]
async fn manifest_put_of_4_megabytes_is_accepted() {
    let (_b, r) = start();
    // "Client and registry implementations SHOULD expect to be able to support manifest pushes of at least 4
    // megabytes": 4,000,000 bytes, below the 4 MiB limit.
    let body = padded_manifest(&r, "man/fourmb", 4_000_000).await;
    r.push_manifest("man/fourmb", "big", OCI_MANIFEST, &body)
        .await;
    check_manifest_get(&r, "man/fourmb", "big", OCI_MANIFEST, &body).await;
}

#[tokio::test]
async fn manifest_put_by_digest_mismatch_is_400_digest_invalid() {
    let (_b, r) = start();
    let config = b"{\"dm\":1}".to_vec();
    r.push_blob("man/dmis", &config).await;
    let body = oci_manifest(&desc(OCI_CONFIG, &config), &[]);
    let wrong = sha256(b"a different manifest");
    let resp = r
        .put_manifest("man/dmis", &wrong, OCI_MANIFEST, &body)
        .await;
    expect_error(resp, 400, &["DIGEST_INVALID"]).await;
    assert_eq!(
        r.get(&format!("/v2/man/dmis/manifests/{wrong}"))
            .await
            .status()
            .as_u16(),
        404
    );
}

#[tokio::test]
async fn manifest_put_by_sha512_digest() {
    let (_b, r) = start();
    let config = b"{\"sha\":512}".to_vec();
    r.push_blob("man/sha512", &config).await;
    let body = oci_manifest(&desc(OCI_CONFIG, &config), &[]);
    let digest = sha512(&body);
    let resp = r
        .put_manifest("man/sha512", &digest, OCI_MANIFEST, &body)
        .await;
    assert_eq!(resp.status().as_u16(), 201, "PUT manifest by sha512 digest");
    assert_eq!(
        must_header(&resp, "docker-content-digest"),
        digest,
        "MUST equal the client-provided digest"
    );
    let resp = r.get(&format!("/v2/man/sha512/manifests/{digest}")).await;
    let (headers, got) = expect_status(resp, 200).await;
    assert_eq!(got, body);
    assert_eq!(
        headers.get("content-type").unwrap().to_str().unwrap(),
        OCI_MANIFEST
    );
}

#[tokio::test]
async fn manifest_put_accepts_subject_that_does_not_exist() {
    let (_b, r) = start();
    r.push_blob("man/subject", b"{}").await;
    let missing = sha256(b"a manifest pushed later");
    let body = serde_json::to_vec_pretty(&json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": "application/vnd.example.sig.v1",
        "config": {"mediaType": OCI_EMPTY, "digest": EMPTY_DIGEST, "size": 2},
        "layers": [{"mediaType": OCI_EMPTY, "digest": EMPTY_DIGEST, "size": 2}],
        "subject": {"mediaType": OCI_MANIFEST, "digest": missing, "size": 123},
    }))
    .unwrap();
    let digest = r
        .push_manifest("man/subject", &sha256(&body), OCI_MANIFEST, &body)
        .await;
    check_manifest_get(&r, "man/subject", &digest, OCI_MANIFEST, &body).await;
}

#[tokio::test]
async fn manifest_put_ignores_content_type_parameters() {
    let (_b, r) = start();
    let config = b"{\"params\":1}".to_vec();
    r.push_blob("man/params", &config).await;
    let body = oci_manifest(&desc(OCI_CONFIG, &config), &[]);
    let ct = format!("{OCI_MANIFEST}; charset=utf-8");
    let resp = r.put_manifest("man/params", "v1", &ct, &body).await;
    assert_eq!(
        resp.status().as_u16(),
        201,
        "registry SHOULD ignore Content-Type parameters"
    );
    // Served without parameters.
    check_manifest_get(&r, "man/params", "v1", OCI_MANIFEST, &body).await;
}

#[tokio::test]
async fn manifest_put_without_media_type_field_is_accepted() {
    let (_b, r) = start();
    let config = b"{\"nomt\":1}".to_vec();
    r.push_blob("man/nomt", &config).await;
    // `mediaType` is optional in an OCI image manifest; Content-Type then tells the type.
    let body = serde_json::to_vec_pretty(&json!({
        "schemaVersion": 2,
        "config": desc(OCI_CONFIG, &config),
        "layers": [],
    }))
    .unwrap();
    r.push_manifest("man/nomt", "v1", OCI_MANIFEST, &body).await;
    check_manifest_get(&r, "man/nomt", "v1", OCI_MANIFEST, &body).await;
}

#[tokio::test]
async fn docker_manifest_put_rejects_missing_layer() {
    let (_b, r) = start();
    let config = b"{\"docker\":1}".to_vec();
    r.push_blob("man/dockermiss", &config).await;
    let body = serde_json::to_vec_pretty(&json!({
        "schemaVersion": 2,
        "mediaType": DOCKER_MANIFEST,
        "config": desc(DOCKER_CONFIG, &config),
        "layers": [desc(DOCKER_LAYER, b"never pushed docker layer")],
    }))
    .unwrap();
    let resp = r
        .put_manifest("man/dockermiss", "v1", DOCKER_MANIFEST, &body)
        .await;
    expect_error(resp, 400, &["MANIFEST_BLOB_UNKNOWN"]).await;
}

#[tokio::test]
async fn docker_manifest_list_put_rejects_missing_child() {
    let (_b, r) = start();
    let (d1, b1) = push_docker_image(&r, "man/listmiss", "", "present").await;
    let body = serde_json::to_vec_pretty(&json!({
        "schemaVersion": 2,
        "mediaType": DOCKER_LIST,
        "manifests": [
            {"mediaType": DOCKER_MANIFEST, "digest": d1, "size": b1.len(),
             "platform": {"architecture": "amd64", "os": "linux"}},
            {"mediaType": DOCKER_MANIFEST, "digest": sha256(b"missing child"), "size": 13,
             "platform": {"architecture": "arm64", "os": "linux"}},
        ],
    }))
    .unwrap();
    let resp = r
        .put_manifest("man/listmiss", "multi", DOCKER_LIST, &body)
        .await;
    expect_error(resp, 400, &["MANIFEST_BLOB_UNKNOWN"]).await;
}

#[tokio::test]
async fn manifest_put_of_exactly_4mib_is_accepted() {
    let (_b, r) = start();
    // Only manifests *over* 4 MiB are refused.
    let body = padded_manifest(&r, "man/exact4mib", 4 * 1024 * 1024).await;
    r.push_manifest("man/exact4mib", "big", OCI_MANIFEST, &body)
        .await;
    check_manifest_get(&r, "man/exact4mib", "big", OCI_MANIFEST, &body).await;
}

#[tokio::test]
async fn manifest_put_over_4mib_without_content_length_is_413() {
    let (_b, r) = start();
    let body = padded_manifest(&r, "man/bigchunked", 4 * 1024 * 1024 + 1).await;
    // Chunked transfer encoding: the limit must hold without a Content-Length to check up front.
    let path = "/v2/man/bigchunked/manifests/big";
    let raw = raw_chunked(
        &r.host(),
        "PUT",
        path,
        &[("Content-Type", OCI_MANIFEST)],
        &body,
        65536,
    )
    .await;
    assert_eq!(raw.status, 413, "{:?}", String::from_utf8_lossy(&raw.body));
    let codes = error_codes(path, &raw.body);
    assert!(
        codes
            .iter()
            .any(|c| c == "SIZE_INVALID" || c == "MANIFEST_INVALID"),
        "{codes:?}"
    );
    assert_eq!(r.get(path).await.status().as_u16(), 404);
}

#[tokio::test]
async fn manifest_put_with_chunked_body_is_accepted() {
    let (_b, r) = start();
    let config = b"{\"chunked\":1}".to_vec();
    r.push_blob("man/chunked", &config).await;
    let body = oci_manifest(&desc(OCI_CONFIG, &config), &[]);
    let path = "/v2/man/chunked/manifests/v1";
    let raw = raw_chunked(
        &r.host(),
        "PUT",
        path,
        &[("Content-Type", OCI_MANIFEST)],
        &body,
        50,
    )
    .await;
    assert_eq!(raw.status, 201, "{:?}", String::from_utf8_lossy(&raw.body));
    assert_eq!(
        raw.header("docker-content-digest"),
        Some(sha256(&body).as_str())
    );
    check_manifest_get(&r, "man/chunked", "v1", OCI_MANIFEST, &body).await;
}
