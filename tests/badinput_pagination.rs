//! Client-controlled page sizes and list positions: `n` is capped at `limits.max_page_size` (a larger page is cut
//! there and continues through `Link`, as the distribution spec allows a registry to return fewer than `n`), and a
//! `last` or UI search with a NUL byte is the same 400 on every metadata backend. Never a 500, never the whole
//! listing through a wrapped SQL `LIMIT`. Runs on whichever backend the suite selects.

mod common;
#[path = "common/spec.rs"]
mod h;

use h::*;
use serde_json::Value;

const HUGE_NS: [&str; 3] = [
    "9223372036854775807",
    "18446744073709551615",
    "99999999999999999999999999",
];

/// A berth whose pages hold at most 2 entries.
fn start_capped() -> (common::Berth, Reg, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("berth.toml");
    std::fs::write(&config, "[limits]\nmax_page_size = 2\n").expect("write config");
    let b = common::Berth::start_with(&["--config", config.to_str().expect("utf-8 path")]);
    let r = Reg::new(b.url(), common::client());
    (b, r, dir)
}

fn strings(v: &Value, key: &str) -> Vec<String> {
    v.get(key)
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// Follows `Link` from `first` to the end; returns every page's entries under `key`.
async fn pages(r: &Reg, first: &str, key: &str) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    let mut next = Some(first.to_string());
    while let Some(path) = next {
        let resp = r.get(&path).await;
        let link = header(&resp, "link");
        let (_, body) = expect_status(resp, 200).await;
        let v: Value = serde_json::from_slice(&body).expect("JSON page");
        out.push(strings(&v, key));
        next = link.map(|l| {
            let target = l.trim_start_matches('<');
            target[..target.find('>').expect("Link target in <>")].to_string()
        });
        assert!(out.len() < 10, "pagination does not terminate: {out:?}");
    }
    out
}

#[tokio::test]
async fn catalog_huge_n_is_a_capped_page_with_link() {
    let (_b, r, _dir) = start_capped();
    for repo in ["cap/a", "cap/b", "cap/c"] {
        r.push_tags(repo, &["v1"]).await;
    }
    for n in HUGE_NS {
        let got = pages(&r, &format!("/v2/_catalog?n={n}"), "repositories").await;
        assert_eq!(
            got,
            [vec!["cap/a", "cap/b"], vec!["cap/c"]],
            "n={n}: pages of max_page_size, then the rest"
        );
    }
}

#[tokio::test]
async fn tags_list_huge_n_is_a_capped_page_with_link() {
    let (_b, r, _dir) = start_capped();
    r.push_tags("cap/tags", &["a", "b", "c"]).await;
    for n in HUGE_NS {
        let got = pages(&r, &format!("/v2/cap/tags/tags/list?n={n}"), "tags").await;
        assert_eq!(got, [vec!["a", "b"], vec!["c"]], "n={n}");
    }
    // n within the cap is honoured as before.
    let got = pages(&r, "/v2/cap/tags/tags/list?n=1", "tags").await;
    assert_eq!(got, [vec!["a"], vec!["b"], vec!["c"]]);
}

#[tokio::test]
async fn huge_n_on_the_default_server_is_200_not_500() {
    let b = common::Berth::start();
    let r = Reg::new(b.url(), common::client());
    let subject = r.push_tags("big/n", &["a", "b"]).await;
    for n in HUGE_NS {
        for path in [
            format!("/v2/_catalog?n={n}"),
            format!("/v2/big/n/tags/list?n={n}"),
            format!("/v2/big/n/referrers/{subject}?n={n}"),
        ] {
            let resp = r.get(&path).await;
            assert!(
                header(&resp, "link").is_none(),
                "{path}: everything fits one page"
            );
            expect_status(resp, 200).await;
        }
    }
    let resp = r.get("/v2/big/n/tags/list?n=9223372036854775807").await;
    let (_, body) = expect_status(resp, 200).await;
    let v: Value = serde_json::from_slice(&body).expect("JSON");
    assert_eq!(strings(&v, "tags"), ["a", "b"]);
}

#[tokio::test]
async fn negative_or_non_numeric_n_is_400_pagination_number_invalid() {
    let b = common::Berth::start();
    let r = Reg::new(b.url(), common::client());
    r.push_tags("bad/n", &["a"]).await;
    for n in ["-1", "-9223372036854775808", "abc", "1e3", "%00"] {
        for path in [
            format!("/v2/_catalog?n={n}"),
            format!("/v2/bad/n/tags/list?n={n}"),
        ] {
            let (_, body) = expect_status(r.get(&path).await, 400).await;
            assert_eq!(
                error_codes(&path, &body),
                ["PAGINATION_NUMBER_INVALID"],
                "{path}"
            );
        }
    }
}

#[tokio::test]
async fn nul_in_last_is_400_on_catalog_and_tags_list() {
    let b = common::Berth::start();
    let r = Reg::new(b.url(), common::client());
    r.push_tags("nul/last", &["a", "b"]).await;
    for last in ["%00", "a%00b", "nul%00"] {
        for path in [
            format!("/v2/_catalog?last={last}"),
            format!("/v2/_catalog?n=1&last={last}"),
            format!("/v2/nul/last/tags/list?last={last}"),
            format!("/v2/nul/last/tags/list?n=1&last={last}"),
        ] {
            let (_, body) = expect_status(r.get(&path).await, 400).await;
            assert_eq!(error_codes(&path, &body), ["UNSUPPORTED"], "{path}");
        }
    }
    // The server still answers normally.
    let (_, body) = expect_status(r.get("/v2/nul/last/tags/list?last=a").await, 200).await;
    let v: Value = serde_json::from_slice(&body).expect("JSON");
    assert_eq!(strings(&v, "tags"), ["b"]);
}

#[tokio::test]
async fn nul_in_ui_search_is_400() {
    let b = common::Berth::start();
    let r = Reg::new(b.url(), common::client());
    r.push_tags("nul/ui", &["a"]).await;
    for path in [
        "/ui?q=%00",
        "/ui?q=a%00b",
        "/ui?last=%00",
        "/ui/tags?repo=nul/ui&q=%00",
        "/ui/tags?repo=nul/ui&last=x%00",
    ] {
        expect_status(r.get(path).await, 400).await;
    }
    expect_status(r.get("/ui?q=nul").await, 200).await;
    expect_status(r.get("/ui/tags?repo=nul/ui&q=a").await, 200).await;
}
