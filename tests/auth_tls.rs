//! The HTTPS listener: serves the registry from PEM files, picks up a replaced certificate without a restart, and
//! leaves the plain listener available.

#[path = "common/auth.rs"]
mod auth;
mod common;

use std::net::SocketAddr;
use std::path::Path;

fn write_cert(dir: &Path) -> String {
    let rcgen::CertifiedKey { cert, signing_key } =
        rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    // Key first, certificate last, each replaced atomically, as a renewal tool does.
    for (name, pem) in [
        ("key.pem", signing_key.serialize_pem()),
        ("cert.pem", cert.pem()),
    ] {
        let tmp = dir.join(format!("{name}.tmp"));
        std::fs::write(&tmp, &pem).unwrap();
        std::fs::rename(&tmp, dir.join(name)).unwrap();
    }
    cert.pem()
}

/// A client that trusts only `ca_pem` and resolves `localhost` to the TLS listener.
fn client_trusting(ca_pem: &str, addr: SocketAddr) -> reqwest::Client {
    reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(ca_pem.as_bytes()).unwrap()])
        .resolve("localhost", addr)
        .build()
        .unwrap()
}

async fn get_v2(c: &reqwest::Client, port: u16) -> Result<reqwest::Response, reqwest::Error> {
    let (u, p) = ("admin", common::ADMIN_PASSWORD);
    c.get(format!("https://localhost:{port}/v2/"))
        .basic_auth(u, Some(p))
        .send()
        .await
}

#[tokio::test(flavor = "multi_thread")]
async fn tls_listener_serves_and_reloads_a_replaced_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let first = write_cert(dir.path());
    let port = common::free_port();
    let b = auth::secure_berth(&format!(
        "[server.tls]\nlisten = [\"127.0.0.1:{port}\"]\ncert = {:?}\nkey = {:?}\n",
        dir.path().join("cert.pem"),
        dir.path().join("key.pem")
    ));
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();

    let trusts_first = client_trusting(&first, addr);
    let r = get_v2(&trusts_first, port)
        .await
        .expect("https with the first certificate");
    assert_eq!(r.status(), 200);
    // Challenges on the HTTPS listener point at an https realm.
    let r = trusts_first
        .get(format!("https://localhost:{port}/v2/"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let realm = auth::challenge(r.headers()).unwrap()["realm"].clone();
    assert_eq!(realm, format!("https://localhost:{port}/token"));

    // Replace the certificate: new connections get the new one, with no restart.
    let second = write_cert(dir.path());
    assert_ne!(first, second);
    let trusts_second = client_trusting(&second, addr);
    let r = get_v2(&trusts_second, port)
        .await
        .expect("https with the replaced certificate");
    assert_eq!(r.status(), 200);
    let fresh_first = client_trusting(&first, addr);
    assert!(
        get_v2(&fresh_first, port).await.is_err(),
        "the old certificate is no longer served"
    );

    // A broken replacement keeps the last good pair in service.
    std::fs::write(dir.path().join("cert.pem"), "not a certificate").unwrap();
    let r = get_v2(&client_trusting(&second, addr), port)
        .await
        .expect("previous certificate kept");
    assert_eq!(r.status(), 200);

    // Plain HTTP stays available next to it.
    let r = common::client()
        .get(format!("{}/v2/", b.url()))
        .basic_auth("admin", Some(common::ADMIN_PASSWORD))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}
