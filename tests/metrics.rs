//! `/metrics` exposes Prometheus text that moves with the traffic it describes.

mod common;

use common::{Berth, client};

fn sample(text: &str, prefix: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test]
async fn metrics_count_requests_by_endpoint_and_status() {
    let b = Berth::start();
    let text = client()
        .get(format!("{}/metrics", b.url()))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
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
    let text = client()
        .get(format!("{}/metrics", b.url()))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(sample(&text, key), before + 3.0, "{text}");
    assert!(
        text.contains(r#"berth_http_request_duration_seconds_bucket{le="#)
            || text.contains("berth_http_request_duration_seconds_count")
    );
}
