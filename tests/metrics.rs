//! `/metrics` exposes Prometheus text that moves with the traffic it describes.

mod common;

use common::{Berth, client};

use common::metric_sample as sample;

#[tokio::test]
async fn metrics_count_requests_by_endpoint_and_status() {
    let b = Berth::start();
    let text = common::metrics_text(&b.url()).await;
    assert!(text.contains("berth_build_info{version=\""), "{text}");
    let key = r#"berth_http_requests_total{route="manifest",method="GET",status="404"}"#;
    let before = sample(&text, key);
    for _ in 0..3 {
        let r = client()
            .get(format!("{}/v2/team/app/manifests/missing", b.url()))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 404);
    }
    let text = common::metrics_text(&b.url()).await;
    assert_eq!(sample(&text, key), before + 3.0, "{text}");
    assert!(
        text.contains(r#"berth_http_request_duration_seconds_bucket{le="#)
            || text.contains("berth_http_request_duration_seconds_count")
    );
}

/// One JSON access line per request: the request id (the client's, echoed back, or a fresh one), repository,
/// principal, status, bytes; and byte counters that move with the traffic.
#[tokio::test(flavor = "multi_thread")]
async fn access_log_lines_carry_id_principal_repository_and_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("berth.toml");
    std::fs::write(&cfg, "mirror = []\n[log]\nformat = \"json\"\n").unwrap();
    let log_path = dir.path().join("server.log");
    let port = common::free_port();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_berth"))
        .args([
            "serve",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--config",
        ])
        .arg(&cfg)
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .env("BERTH_ADMIN_PASSWORD", common::ADMIN_PASSWORD)
        .env_remove("BERTH_OPEN_ACCESS")
        .env("RUST_LOG", "warn,berth::access=info")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log_path).unwrap())
        .spawn()
        .unwrap();
    let base = format!("http://127.0.0.1:{port}");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(std::time::Instant::now() < deadline, "server did not start");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let blob = vec![7u8; 4096];
    let digest = common::sha256_digest(&blob);
    let r = client()
        .post(format!("{base}/v2/team/app/blobs/uploads/?digest={digest}"))
        .basic_auth("admin", Some(common::ADMIN_PASSWORD))
        .header("x-request-id", "push-1")
        .body(blob.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    assert_eq!(r.headers()["x-request-id"], "push-1");
    let r = client()
        .get(format!("{base}/v2/team/app/blobs/{digest}"))
        .basic_auth("admin", Some(common::ADMIN_PASSWORD))
        .header("x-request-id", "bad id with spaces")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let fresh = r.headers()["x-request-id"].to_str().unwrap().to_owned();
    assert_eq!(
        fresh.len(),
        16,
        "a malformed client id is replaced: {fresh}"
    );
    let r = client()
        .get(format!("{base}/v2/team/app/tags/list"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let metrics = common::metrics_text(&base).await;
    assert!(
        sample(&metrics, "berth_upload_bytes_total") >= 4096.0,
        "{metrics}"
    );
    assert!(sample(&metrics, r#"berth_http_response_bytes_total{route="blob"}"#) >= 4096.0);
    let _ = child.kill();
    let _ = child.wait();

    let lines: Vec<serde_json::Value> = std::fs::read_to_string(&log_path)
        .unwrap()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .filter(|v: &serde_json::Value| v["target"] == "berth::access")
        .collect();
    let find = |pred: &dyn Fn(&serde_json::Value) -> bool| {
        lines
            .iter()
            .find(|l| pred(&l["fields"]))
            .unwrap_or_else(|| panic!("no such access line in {lines:#?}"))
            .clone()
    };
    let push = find(&|f| f["id"] == "push-1");
    assert_eq!(push["fields"]["principal"], "admin");
    assert_eq!(push["fields"]["repository"], "team/app");
    assert_eq!(push["fields"]["status"], 201);
    assert_eq!(push["fields"]["bytes_in"], 4096);
    let pull = find(&|f| f["id"] == fresh.as_str());
    assert_eq!(pull["fields"]["bytes_out"], 4096);
    let refused = find(&|f| f["status"] == 401 && f["path"] == "/v2/team/app/tags/list");
    assert_eq!(refused["fields"]["principal"], "");
    assert_eq!(refused["fields"]["repository"], "team/app");
}

/// `server.metrics_listen`: a port with the operations endpoints only.
#[tokio::test]
async fn a_separate_metrics_listener_serves_only_operations_endpoints() {
    let dir = tempfile::tempdir().unwrap();
    let port = common::free_port();
    let cfg = dir.path().join("berth.toml");
    std::fs::write(
        &cfg,
        format!("[server]\nmetrics_listen = [\"127.0.0.1:{port}\"]\n"),
    )
    .unwrap();
    let _b = Berth::start_with(&["--config", cfg.to_str().unwrap()]);
    let ops = format!("http://127.0.0.1:{port}");
    let text = common::metrics_text(&ops).await;
    assert!(text.contains("berth_build_info"), "{text}");
    for path in ["/healthz", "/readyz"] {
        assert_eq!(
            client()
                .get(format!("{ops}{path}"))
                .send()
                .await
                .unwrap()
                .status(),
            200,
            "{path}"
        );
    }
    for path in ["/v2/", "/ui", "/token"] {
        assert_eq!(
            client()
                .get(format!("{ops}{path}"))
                .send()
                .await
                .unwrap()
                .status(),
            404,
            "{path}"
        );
    }
}
