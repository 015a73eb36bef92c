//! A minimal W3C WebDriver client over reqwest, enough to drive Debian's `chromedriver` + headless `chromium`:
//! navigate, find, type, click, accept a `confirm()`, read text and take screenshots. Kept here instead of a
//! dependency (fantoccini, thirtyfour) because the handful of JSON calls below is all the tests need.
//!
//! Included with `#[path = "common/webdriver.rs"] mod webdriver;` next to `mod common;`.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::{Value, json};

const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// A running `chromedriver` on a loopback port; killed when dropped.
pub struct Driver {
    child: Child,
    pub url: String,
    _profile: tempfile::TempDir,
}

/// One browser session.
pub struct Browser {
    http: reqwest::Client,
    base: String,
    _driver: Driver,
    shots: PathBuf,
    shot_no: std::cell::Cell<u32>,
}

/// An element handle.
#[derive(Clone, Debug)]
pub struct El(String);

/// Where screenshots go: `target/ui-screenshots/` (CI keeps them as artifacts).
pub fn screenshot_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target"));
    target.join("ui-screenshots")
}

impl Browser {
    /// Starts chromedriver and a headless Chromium with a fresh profile and no background networking.
    pub async fn start() -> Browser {
        let port = crate::common::free_port();
        let child = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn chromedriver");
        let profile = tempfile::tempdir().expect("tempdir");
        let driver = Driver {
            child,
            url: format!("http://127.0.0.1:{port}"),
            _profile: profile,
        };
        let http = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(r) = http.get(format!("{}/status", driver.url)).send().await
                && let Ok(v) = r.json::<Value>().await
                && v["value"]["ready"] == true
            {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "chromedriver did not become ready"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "unhandledPromptBehavior": "ignore",
            "goog:chromeOptions": {
                "binary": "/usr/bin/chromium",
                "args": [
                    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                    "--disable-background-networking", "--disable-component-update", "--disable-sync",
                    "--disable-dev-shm-usage", "--window-size=1280,900",
                    format!("--user-data-dir={}", driver._profile.path().display()),
                ]
            }
        }}});
        let r: Value = http
            .post(format!("{}/session", driver.url))
            .json(&caps)
            .send()
            .await
            .expect("new session")
            .json()
            .await
            .expect("new session body");
        let id = r["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no session: {r}"))
            .to_owned();
        let shots = screenshot_dir();
        std::fs::create_dir_all(&shots).expect("screenshot dir");
        Browser {
            http,
            base: format!("{}/session/{id}", driver.url),
            _driver: driver,
            shots,
            shot_no: std::cell::Cell::new(0),
        }
    }

    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let mut rb = self
            .http
            .request(method.clone(), format!("{}{path}", self.base));
        if let Some(b) = body {
            rb = rb.json(&b);
        } else if method == reqwest::Method::POST {
            rb = rb.json(&json!({}));
        }
        let resp = rb.send().await.expect("webdriver request");
        let status = resp.status();
        let v: Value = resp.json().await.expect("webdriver body");
        assert!(
            status.is_success(),
            "webdriver {method} {path}: {status} {v}"
        );
        v["value"].clone()
    }

    async fn try_call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Value,
    ) -> Result<Value, Value> {
        let mut rb = self.http.request(method, format!("{}{path}", self.base));
        if !body.is_null() {
            rb = rb.json(&body);
        }
        let resp = rb.send().await.expect("webdriver request");
        let ok = resp.status().is_success();
        let v: Value = resp.json().await.expect("webdriver body");
        if ok {
            Ok(v["value"].clone())
        } else {
            Err(v["value"].clone())
        }
    }

    pub async fn goto(&self, url: &str) {
        self.call(reqwest::Method::POST, "/url", Some(json!({ "url": url })))
            .await;
    }

    pub async fn current_url(&self) -> String {
        self.call(reqwest::Method::GET, "/url", None)
            .await
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    pub async fn source(&self) -> String {
        self.call(reqwest::Method::GET, "/source", None)
            .await
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    /// All elements matching a CSS selector.
    pub async fn find_all(&self, css: &str) -> Vec<El> {
        self.call(
            reqwest::Method::POST,
            "/elements",
            Some(json!({"using": "css selector", "value": css})),
        )
        .await
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .filter_map(|e| e[ELEMENT].as_str().map(|s| El(s.to_owned())))
        .collect()
    }

    /// The element matching a CSS selector, waiting up to 10 s for it to appear.
    pub async fn find(&self, css: &str) -> El {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let r = self
                .try_call(
                    reqwest::Method::POST,
                    "/element",
                    json!({"using": "css selector", "value": css}),
                )
                .await;
            if let Ok(v) = &r
                && let Some(id) = v[ELEMENT].as_str()
            {
                return El(id.to_owned());
            }
            if Instant::now() >= deadline {
                panic!(
                    "no element {css:?} on {} ({r:?}); page:\n{}",
                    self.current_url().await,
                    self.source().await
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub async fn text(&self, el: &El) -> String {
        self.call(
            reqwest::Method::GET,
            &format!("/element/{}/text", el.0),
            None,
        )
        .await
        .as_str()
        .unwrap_or_default()
        .to_owned()
    }

    /// Text of the element matching `css`.
    pub async fn text_of(&self, css: &str) -> String {
        let el = self.find(css).await;
        self.text(&el).await
    }

    /// Waits up to 10 s for an element's text to become `want` (for what script changes asynchronously).
    pub async fn wait_text(&self, el: &El, want: &str) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let got = self.text(el).await;
            if got == want {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "text stayed {got:?}, want {want:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub async fn click(&self, el: &El) {
        self.call(
            reqwest::Method::POST,
            &format!("/element/{}/click", el.0),
            None,
        )
        .await;
    }

    pub async fn type_into(&self, css: &str, text: &str) {
        let el = self.find(css).await;
        self.call(
            reqwest::Method::POST,
            &format!("/element/{}/clear", el.0),
            None,
        )
        .await;
        self.call(
            reqwest::Method::POST,
            &format!("/element/{}/value", el.0),
            Some(json!({ "text": text })),
        )
        .await;
    }

    /// Accepts an open `confirm()`, returning its text (waits up to 5 s for it).
    pub async fn accept_alert(&self) -> String {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if let Ok(t) = self
                .try_call(reqwest::Method::GET, "/alert/text", Value::Null)
                .await
            {
                self.call(reqwest::Method::POST, "/alert/accept", None)
                    .await;
                return t.as_str().unwrap_or_default().to_owned();
            }
            assert!(Instant::now() < deadline, "no dialog opened");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Runs a script in the page and returns its result.
    pub async fn eval(&self, script: &str) -> Value {
        self.call(
            reqwest::Method::POST,
            "/execute/sync",
            Some(json!({"script": script, "args": []})),
        )
        .await
    }

    /// Saves a PNG of the whole page (the window is stretched to the page's height, up to 4000 px) as
    /// `target/ui-screenshots/NN-name.png`.
    pub async fn screenshot(&self, name: &str) -> PathBuf {
        let height = self
            .eval("return document.documentElement.scrollHeight")
            .await
            .as_u64()
            .unwrap_or(900)
            .clamp(900, 4000);
        self.call(
            reqwest::Method::POST,
            "/window/rect",
            Some(json!({"width": 1280, "height": height + 140})),
        )
        .await;
        let b64 = self.call(reqwest::Method::GET, "/screenshot", None).await;
        self.call(
            reqwest::Method::POST,
            "/window/rect",
            Some(json!({"width": 1280, "height": 900})),
        )
        .await;
        let png = base64::engine::general_purpose::STANDARD
            .decode(b64.as_str().unwrap_or_default())
            .expect("screenshot is base64");
        let n = self.shot_no.get() + 1;
        self.shot_no.set(n);
        let path = self.shots.join(format!("{n:02}-{name}.png"));
        std::fs::write(&path, png).expect("write screenshot");
        path
    }

    pub async fn quit(&self) {
        let _ = self.http.delete(&self.base).send().await;
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Browser {
    /// Ends the session even when the test panicked: killing chromedriver alone would leave Chromium running.
    /// Synchronous (a raw HTTP/1.1 DELETE), since `Drop` cannot await.
    fn drop(&mut self) {
        use std::io::{Read, Write};
        let Some(rest) = self.base.strip_prefix("http://") else {
            return;
        };
        let Some((addr, path)) = rest.split_once('/') else {
            return;
        };
        let Ok(mut s) = std::net::TcpStream::connect(addr) else {
            return;
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(15)));
        let req = format!(
            "DELETE /{path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        );
        if s.write_all(req.as_bytes()).is_ok() {
            let mut sink = Vec::new();
            let _ = s.read_to_end(&mut sink);
        }
    }
}

/// True when `chromium` and `chromedriver` are installed. When not: false (the caller skips, with a message)
/// outside CI, a panic when `CI` is set, so CI never passes without having run the browser tests.
pub fn browser_available() -> bool {
    crate::common::tools_available(&["chromium", "chromedriver"], "chromium chromium-driver")
}
