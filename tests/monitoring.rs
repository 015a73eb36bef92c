//! The deployment kit in `deploy/monitoring/`: the alert rules pass `promtool check rules` and their unit tests, and
//! every berth metric the rules and the Grafana dashboard use is one a running berth exports (so a renamed metric
//! cannot silently break an alert).

mod common;
#[path = "common/image.rs"]
mod image;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

use common::{Berth, client};

fn kit(file: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("deploy/monitoring")
        .join(file)
}

/// `berth_…` metric names in a text, without the sample suffixes Prometheus adds.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while let Some(pos) = text[i..].find("berth_") {
        let start = i + pos;
        let mut end = start;
        while end < bytes.len() && (bytes[end].is_ascii_alphanumeric() || bytes[end] == b'_') {
            end += 1;
        }
        let mut name = &text[start..end];
        for suffix in ["_total", "_bucket", "_sum", "_count"] {
            name = name.strip_suffix(suffix).unwrap_or(name);
        }
        names.insert(name.to_owned());
        i = end;
    }
    names
}

#[test]
fn alert_rules_pass_promtool_and_their_unit_tests() {
    if !common::tools_available(&["promtool"], "prometheus") {
        return;
    }
    for args in [
        vec!["check", "rules", "berth-alerts.yml"],
        vec!["test", "rules", "berth-alerts.test.yml"],
    ] {
        let out = Command::new("promtool")
            .args(&args)
            .current_dir(kit(""))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "promtool {args:?}:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[tokio::test]
async fn rules_and_dashboard_use_only_metrics_berth_exports() {
    // A scrub every second, so its metrics exist; one request, so the request metrics do.
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("berth.toml");
    std::fs::write(&cfg, "[scrub]\ninterval = \"1s\"\njitter = \"0s\"\n").unwrap();
    let b = Berth::start_with(&["--config", cfg.to_str().unwrap()]);
    client()
        .get(format!("{}/v2/", b.url()))
        .send()
        .await
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let text = loop {
        let text = client()
            .get(format!("{}/metrics", b.url()))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        if text.contains("berth_scrub_problems{") || std::time::Instant::now() > deadline {
            break text;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    };
    // Every registered family announces itself with `# TYPE`, even before its first sample.
    let exported: BTreeSet<String> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_owned)
        .collect();
    let rules = std::fs::read_to_string(kit("berth-alerts.yml")).unwrap();
    let dashboard = std::fs::read_to_string(kit("grafana-dashboard.json")).unwrap();
    let dash: serde_json::Value = serde_json::from_str(&dashboard).expect("dashboard is JSON");
    let panels = dash["panels"].as_array().expect("panels");
    assert!(panels.len() >= 10);
    for p in panels {
        assert!(
            p["targets"].as_array().is_some_and(|t| !t.is_empty()),
            "panel {} has no query",
            p["title"]
        );
    }
    for (what, text) in [("rules", &rules), ("dashboard", &dashboard)] {
        let used = metric_names(text);
        assert!(used.len() > 5, "{what}: {used:?}");
        let unknown: Vec<_> = used.difference(&exported).collect();
        assert!(
            unknown.is_empty(),
            "{what} use metrics berth does not export: {unknown:?}"
        );
    }
}
