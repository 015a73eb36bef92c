//! OCI distribution-spec "Content Discovery" rules: tag listing with pagination, the catalog, and the referrers API.

mod common;
#[path = "common/spec.rs"]
mod h;

use h::*;
use serde_json::{Value, json};

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

async fn json_of(resp: reqwest::Response) -> Value {
    let (_, body) = expect_status(resp, 200).await;
    serde_json::from_slice(&body).expect("JSON body")
}

fn strings(v: &Value, key: &str) -> Vec<String> {
    v.get(key)
        .and_then(Value::as_array)
        .map(|a| a.iter().map(|s| s.as_str().unwrap().to_string()).collect())
        .unwrap_or_default()
}

/// Strips scheme and host from a Link target so its path can be compared.
fn link_path(link: &str) -> &str {
    if let Some(rest) = link
        .strip_prefix("http://")
        .or_else(|| link.strip_prefix("https://"))
    {
        &rest[rest.find('/').unwrap_or(rest.len())..]
    } else {
        link
    }
}

#[tokio::test]
async fn tags_list_returns_all_tags_in_lexical_order() {
    let (_b, r) = start();
    r.push_tags("disc/tags", &["v2", "latest", "v10", "1.0", "alpha"])
        .await;
    let v = json_of(r.get("/v2/disc/tags/tags/list").await).await;
    assert_eq!(v["name"], "disc/tags");
    assert_eq!(strings(&v, "tags"), ["1.0", "alpha", "latest", "v10", "v2"]);
}

#[tokio::test]
async fn tags_list_n_paginates_with_link_next() {
    let (_b, r) = start();
    let all = ["a", "b", "c", "d", "e"];
    r.push_tags("disc/page", &all).await;
    let resp = r.get("/v2/disc/page/tags/list?n=2").await;
    let link = next_link(&resp).expect("Link header when more tags are available");
    let path = link_path(&link).to_string();
    assert!(
        path.starts_with("/v2/disc/page/tags/list?"),
        "Link target {link}"
    );
    assert!(
        path.contains("n=2") && path.contains("last=b"),
        "Link target {link} should carry n=2 and last=b"
    );
    let v = json_of(resp).await;
    assert_eq!(
        strings(&v, "tags"),
        ["a", "b"],
        "n=2 must return exactly 2 tags"
    );
    // Follow the links to the end.
    let mut seen = strings(&v, "tags");
    let mut next = Some(link);
    let mut pages = 1;
    while let Some(l) = next {
        let resp = r.get(&l).await;
        next = next_link(&resp);
        let v = json_of(resp).await;
        let page = strings(&v, "tags");
        assert!(!page.is_empty() && page.len() <= 2, "page {page:?}");
        seen.extend(page);
        pages += 1;
        assert!(pages < 10, "pagination does not terminate");
    }
    assert_eq!(seen, all);
}

#[tokio::test]
async fn tags_list_n_zero_is_empty_without_link() {
    let (_b, r) = start();
    r.push_tags("disc/zero", &["a", "b"]).await;
    let resp = r.get("/v2/disc/zero/tags/list?n=0").await;
    assert!(
        resp.headers().get("link").is_none(),
        "n=0 MUST NOT include a Link header"
    );
    let v = json_of(resp).await;
    assert!(
        strings(&v, "tags").is_empty(),
        "n=0 MUST return an empty list: {v}"
    );
}

#[tokio::test]
async fn tags_list_last_returns_tags_after_last() {
    let (_b, r) = start();
    r.push_tags("disc/last", &["a", "b", "c", "d"]).await;
    let v = json_of(r.get("/v2/disc/last/tags/list?last=b").await).await;
    assert_eq!(strings(&v, "tags"), ["c", "d"]);
    let v = json_of(r.get("/v2/disc/last/tags/list?n=1&last=b").await).await;
    assert_eq!(strings(&v, "tags"), ["c"]);
    // `last` need not be an existing tag.
    let v = json_of(r.get("/v2/disc/last/tags/list?last=bb").await).await;
    assert_eq!(strings(&v, "tags"), ["c", "d"]);
}

#[tokio::test]
async fn tags_list_last_past_the_end_is_empty_without_link() {
    let (_b, r) = start();
    r.push_tags("disc/pastend", &["a", "b"]).await;
    let resp = r.get("/v2/disc/pastend/tags/list?n=5&last=b").await;
    assert!(resp.headers().get("link").is_none());
    assert!(strings(&json_of(resp).await, "tags").is_empty());
}

#[tokio::test]
async fn tags_list_of_repository_without_tags_is_200_empty() {
    let (_b, r) = start();
    let digest = r.push_tags("disc/untagged", &["only"]).await;
    let resp = r.delete("/v2/disc/untagged/manifests/only").await;
    assert_eq!(resp.status().as_u16(), 202);
    // The repository still holds the manifest (by digest), so it is found; its tag list is empty.
    expect_status(
        r.get(&format!("/v2/disc/untagged/manifests/{digest}"))
            .await,
        200,
    )
    .await;
    let v = json_of(r.get("/v2/disc/untagged/tags/list").await).await;
    assert_eq!(v["name"], "disc/untagged");
    assert!(strings(&v, "tags").is_empty(), "{v}");
}

#[tokio::test]
async fn tags_list_n_beyond_count_returns_all_without_link() {
    let (_b, r) = start();
    r.push_tags("disc/few", &["x", "y", "z"]).await;
    let resp = r.get("/v2/disc/few/tags/list?n=100").await;
    assert!(
        resp.headers().get("link").is_none(),
        "no Link when no more tags are available"
    );
    assert_eq!(strings(&json_of(resp).await, "tags"), ["x", "y", "z"]);
}

#[tokio::test]
async fn tags_list_of_unknown_repository_is_404_name_unknown() {
    let (_b, r) = start();
    r.push_tags("disc/known", &["a"]).await;
    expect_error(
        r.get("/v2/disc/unknown/tags/list").await,
        404,
        &["NAME_UNKNOWN"],
    )
    .await;
}

#[tokio::test]
async fn catalog_lists_repositories_in_lexical_order() {
    let (_b, r) = start();
    for repo in ["zeta", "alpha/one", "alpha", "mid/x/y"] {
        r.push_tags(repo, &["t"]).await;
    }
    let v = json_of(r.get("/v2/_catalog").await).await;
    assert_eq!(
        strings(&v, "repositories"),
        ["alpha", "alpha/one", "mid/x/y", "zeta"]
    );
}

#[tokio::test]
async fn catalog_n_paginates_with_link_next() {
    let (_b, r) = start();
    let all = ["r1", "r2", "r3", "r4", "r5"];
    for repo in all {
        r.push_tags(repo, &["t"]).await;
    }
    let resp = r.get("/v2/_catalog?n=2").await;
    let link = next_link(&resp).expect("Link header when more repositories are available");
    let path = link_path(&link).to_string();
    assert!(path.starts_with("/v2/_catalog?"), "Link target {link}");
    assert!(
        path.contains("n=2") && path.contains("last=r2"),
        "Link target {link}"
    );
    let v = json_of(resp).await;
    let mut seen = strings(&v, "repositories");
    assert_eq!(seen, ["r1", "r2"]);
    let mut next = Some(link);
    let mut pages = 1;
    while let Some(l) = next {
        let resp = r.get(&l).await;
        next = next_link(&resp);
        seen.extend(strings(&json_of(resp).await, "repositories"));
        pages += 1;
        assert!(pages < 10, "pagination does not terminate");
    }
    assert_eq!(seen, all);
    let v = json_of(r.get("/v2/_catalog?n=2&last=r4").await).await;
    assert_eq!(strings(&v, "repositories"), ["r5"]);
}

#[tokio::test]
async fn catalog_n_zero_is_empty_without_link() {
    let (_b, r) = start();
    r.push_tags("one", &["t"]).await;
    let resp = r.get("/v2/_catalog?n=0").await;
    assert!(resp.headers().get("link").is_none());
    assert!(strings(&json_of(resp).await, "repositories").is_empty());
}

// ---- referrers ----

const SBOM: &str = "application/vnd.example.sbom.v1";
const SIG_CONFIG: &str = "application/vnd.example.signature.config.v1+json";

/// Pushes an artifact manifest (by digest) with `subject`; `artifact_type` None means the type comes from the
/// config's media type. Returns (digest, body).
async fn push_referrer(
    r: &Reg,
    repo: &str,
    subject: &Value,
    artifact_type: Option<&str>,
    annotations: Value,
    seed: &str,
) -> (String, Vec<u8>) {
    let layer = format!("referrer payload {seed}").into_bytes();
    r.push_blob(repo, &layer).await;
    let mut m = json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "layers": [desc("application/octet-stream", &layer)],
        "subject": subject,
        "annotations": annotations,
    });
    match artifact_type {
        Some(t) => {
            r.push_blob(repo, b"{}").await;
            m["artifactType"] = json!(t);
            m["config"] = json!({"mediaType": OCI_EMPTY, "digest": EMPTY_DIGEST, "size": 2});
        }
        None => {
            let config = format!("{{\"sig\":\"{seed}\"}}").into_bytes();
            r.push_blob(repo, &config).await;
            m["config"] = desc(SIG_CONFIG, &config);
        }
    }
    let body = serde_json::to_vec_pretty(&m).unwrap();
    let digest = r
        .push_manifest(repo, &sha256(&body), OCI_MANIFEST, &body)
        .await;
    (digest, body)
}

async fn referrers(
    r: &Reg,
    repo: &str,
    digest: &str,
    query: &str,
) -> (reqwest::header::HeaderMap, Value) {
    let resp = r
        .get(&format!("/v2/{repo}/referrers/{digest}{query}"))
        .await;
    let (headers, body) = expect_status(resp, 200).await;
    assert_eq!(
        headers.get("content-type").map(|v| v.to_str().unwrap()),
        Some(OCI_INDEX),
        "referrers Content-Type"
    );
    let v: Value = serde_json::from_slice(&body).expect("referrers JSON");
    assert_eq!(v["schemaVersion"], 2, "{v}");
    assert_eq!(v["mediaType"], OCI_INDEX, "{v}");
    assert!(v["manifests"].is_array(), "manifests must be a list: {v}");
    (headers, v)
}

fn find<'a>(v: &'a Value, digest: &str) -> Option<&'a Value> {
    v["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["digest"] == digest)
}

#[tokio::test]
async fn referrers_lists_manifests_with_subject() {
    let (_b, r) = start();
    let img = r.push_image("disc/ref", "latest", "subject").await;
    let other = r.push_image("disc/ref", "other", "unrelated").await;
    let ann = json!({"org.opencontainers.image.created": "2024-01-01T00:00:00Z", "org.example.format": "json"});
    let (sbom, sbom_body) =
        push_referrer(&r, "disc/ref", &img.desc(), Some(SBOM), ann.clone(), "s").await;
    let sig_ann = json!({"org.example.fingerprint": "abcd"});
    let (sig, sig_body) =
        push_referrer(&r, "disc/ref", &img.desc(), None, sig_ann.clone(), "g").await;
    // Referrer of a different subject: must not appear.
    let (unrel, _) = push_referrer(
        &r,
        "disc/ref",
        &other.desc(),
        Some(SBOM),
        json!({"x": "y"}),
        "u",
    )
    .await;

    let (_, v) = referrers(&r, "disc/ref", &img.digest, "").await;
    assert_eq!(v["manifests"].as_array().unwrap().len(), 2, "{v}");
    let d = find(&v, &sbom).unwrap_or_else(|| panic!("sbom referrer missing: {v}"));
    assert_eq!(d["mediaType"], OCI_MANIFEST);
    assert_eq!(d["size"], sbom_body.len());
    assert_eq!(d["artifactType"], SBOM);
    assert_eq!(d["annotations"], ann);
    let d = find(&v, &sig).unwrap_or_else(|| panic!("signature referrer missing: {v}"));
    assert_eq!(d["mediaType"], OCI_MANIFEST);
    assert_eq!(d["size"], sig_body.len());
    assert_eq!(
        d["artifactType"], SIG_CONFIG,
        "artifactType falls back to config.mediaType"
    );
    assert_eq!(d["annotations"], sig_ann);
    assert!(find(&v, &unrel).is_none());
}

#[tokio::test]
async fn referrers_index_without_artifact_type_omits_it() {
    let (_b, r) = start();
    let img = r.push_image("disc/refidx", "latest", "subject").await;
    let child = r.push_image("disc/refidx", "", "child").await;
    let ann = json!({"org.opencontainers.image.created": "2023-01-01T07:21:33Z"});
    let body = serde_json::to_vec_pretty(&json!({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [child.desc()],
        "subject": img.desc(),
        "annotations": ann,
    }))
    .unwrap();
    let idx = r
        .push_manifest("disc/refidx", &sha256(&body), OCI_INDEX, &body)
        .await;
    let (_, v) = referrers(&r, "disc/refidx", &img.digest, "").await;
    let d = find(&v, &idx).unwrap_or_else(|| panic!("index referrer missing: {v}"));
    assert_eq!(d["mediaType"], OCI_INDEX);
    assert_eq!(d["size"], body.len());
    assert_eq!(d["annotations"], ann);
    assert!(
        d.get("artifactType").is_none_or(|t| t.is_null()),
        "index without artifactType: omit it: {d}"
    );
}

#[tokio::test]
async fn referrers_filter_by_artifact_type_sets_oci_filters_applied() {
    let (_b, r) = start();
    let img = r.push_image("disc/filter", "latest", "subject").await;
    let (sbom, _) = push_referrer(
        &r,
        "disc/filter",
        &img.desc(),
        Some(SBOM),
        json!({"a": "1"}),
        "s",
    )
    .await;
    let (sig, _) =
        push_referrer(&r, "disc/filter", &img.desc(), None, json!({"b": "2"}), "g").await;
    let (headers, v) = referrers(
        &r,
        "disc/filter",
        &img.digest,
        "?artifactType=application%2Fvnd.example.sbom.v1",
    )
    .await;
    assert_eq!(
        headers
            .get("oci-filters-applied")
            .map(|v| v.to_str().unwrap()),
        Some("artifactType"),
        "OCI-Filters-Applied header"
    );
    assert_eq!(v["manifests"].as_array().unwrap().len(), 1, "{v}");
    assert!(find(&v, &sbom).is_some());
    // The fallback artifactType (config media type) is filterable too.
    let (_, v) = referrers(
        &r,
        "disc/filter",
        &img.digest,
        "?artifactType=application%2Fvnd.example.signature.config.v1%2Bjson",
    )
    .await;
    assert_eq!(v["manifests"].as_array().unwrap().len(), 1, "{v}");
    assert!(find(&v, &sig).is_some());
    // A filter that matches nothing gives an empty list.
    let (_, v) = referrers(
        &r,
        "disc/filter",
        &img.digest,
        "?artifactType=application%2Fnothing",
    )
    .await;
    assert!(v["manifests"].as_array().unwrap().is_empty(), "{v}");
}

#[tokio::test]
async fn referrers_of_unknown_digest_is_200_with_empty_list() {
    let (_b, r) = start();
    r.push_image("disc/empty", "latest", "x").await;
    let (_, v) = referrers(&r, "disc/empty", &sha256(b"never pushed"), "").await;
    assert!(v["manifests"].as_array().unwrap().is_empty(), "{v}");
}

#[tokio::test]
async fn referrers_invalid_digest_is_400() {
    let (_b, r) = start();
    r.push_image("disc/baddigest", "latest", "x").await;
    let resp = r
        .get("/v2/disc/baddigest/referrers/sha256:not-a-digest")
        .await;
    assert_eq!(resp.status().as_u16(), 400);
}

#[tokio::test]
async fn referrers_include_manifest_pushed_before_subject() {
    let (_b, r) = start();
    // Compute the subject image's manifest without pushing it yet.
    let config =
        serde_json::to_vec(&json!({"architecture": "amd64", "os": "linux", "seed": "later"}))
            .unwrap();
    let layer = b"layer-bytes-later".to_vec();
    let body = oci_manifest(&desc(OCI_CONFIG, &config), &[desc(OCI_LAYER, &layer)]);
    let subject = json!({"mediaType": OCI_MANIFEST, "digest": sha256(&body), "size": body.len()});
    let (sbom, _) = push_referrer(
        &r,
        "disc/early",
        &subject,
        Some(SBOM),
        json!({"k": "v"}),
        "e",
    )
    .await;
    let (_, v) = referrers(&r, "disc/early", &sha256(&body), "").await;
    assert!(
        find(&v, &sbom).is_some(),
        "referrer pushed before its subject: {v}"
    );
    r.push_blob("disc/early", &config).await;
    r.push_blob("disc/early", &layer).await;
    r.push_manifest("disc/early", "latest", OCI_MANIFEST, &body)
        .await;
    let (_, v) = referrers(&r, "disc/early", &sha256(&body), "").await;
    assert!(find(&v, &sbom).is_some(), "after the subject arrives: {v}");
}

#[tokio::test]
async fn referrers_are_scoped_to_the_repository() {
    let (_b, r) = start();
    let img = r.push_image("disc/scope-a", "latest", "subject").await;
    // Same subject digest referenced from another repository.
    let (other, _) = push_referrer(
        &r,
        "disc/scope-b",
        &img.desc(),
        Some(SBOM),
        json!({"k": "v"}),
        "b",
    )
    .await;
    let (_, v) = referrers(&r, "disc/scope-a", &img.digest, "").await;
    assert!(
        find(&v, &other).is_none(),
        "referrer from another repository leaked: {v}"
    );
    let (_, v) = referrers(&r, "disc/scope-b", &img.digest, "").await;
    assert!(find(&v, &other).is_some(), "{v}");
}

#[tokio::test]
async fn referrers_exclude_deleted_manifests() {
    let (_b, r) = start();
    let img = r.push_image("disc/refdel", "latest", "subject").await;
    let (sbom, _) = push_referrer(
        &r,
        "disc/refdel",
        &img.desc(),
        Some(SBOM),
        json!({"k": "v"}),
        "d",
    )
    .await;
    let resp = r.delete(&format!("/v2/disc/refdel/manifests/{sbom}")).await;
    assert_eq!(resp.status().as_u16(), 202);
    let (_, v) = referrers(&r, "disc/refdel", &img.digest, "").await;
    assert!(
        find(&v, &sbom).is_none(),
        "deleted referrer still listed: {v}"
    );
}

#[tokio::test]
async fn manifest_put_with_subject_returns_oci_subject_header() {
    let (_b, r) = start();
    let img = r.push_image("disc/ocisubject", "latest", "subject").await;
    r.push_blob("disc/ocisubject", b"{}").await;
    let body = serde_json::to_vec_pretty(&json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": SBOM,
        "config": {"mediaType": OCI_EMPTY, "digest": EMPTY_DIGEST, "size": 2},
        "layers": [{"mediaType": OCI_EMPTY, "digest": EMPTY_DIGEST, "size": 2}],
        "subject": img.desc(),
    }))
    .unwrap();
    let resp = r
        .put_manifest("disc/ocisubject", &sha256(&body), OCI_MANIFEST, &body)
        .await;
    assert_eq!(resp.status().as_u16(), 201);
    assert_eq!(must_header(&resp, "oci-subject"), img.digest);
    // A manifest without subject carries no OCI-Subject header.
    let plain = oci_manifest(&desc(OCI_CONFIG, &img.config), &[]);
    let resp = r
        .put_manifest("disc/ocisubject", "plain", OCI_MANIFEST, &plain)
        .await;
    assert_eq!(resp.status().as_u16(), 201);
    assert!(header(&resp, "oci-subject").is_none());
}
