//! HTTP client for one upstream registry: the Docker token flow (anonymous or with credentials, tokens cached per
//! scope until they expire, one token request per scope at a time), Basic auth, retries with backoff on connection
//! errors and 5xx, and timeouts so a hanging upstream never holds a client for long.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use reqwest::header::{ACCEPT, AUTHORIZATION, HeaderMap, WWW_AUTHENTICATE};
use reqwest::{Method, StatusCode};

use crate::config;
use crate::human::error_chain;
use crate::oci::media;

/// Attempts for an idempotent request before giving up on connection errors or 5xx.
const ATTEMPTS: u32 = 3;
const BACKOFF: Duration = Duration::from_millis(200);

/// Every manifest type berth stores: the upstream must never convert for us (digests must stay the upstream's).
pub const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json, \
     application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.docker.distribution.manifest.v2+json";

/// Why an upstream request failed. Cheap to clone: a failed blob fetch reports it to every waiting client.
#[derive(Debug, Clone, thiserror::Error)]
pub enum UpstreamError {
    #[error("upstream has no such {0}")]
    NotFound(&'static str),
    #[error("upstream refused access ({0}); the repository may not exist or need credentials")]
    Denied(u16),
    #[error("upstream rate limit reached")]
    TooManyRequests { retry_after: Option<u64> },
    #[error("upstream answered {0}")]
    Status(u16),
    #[error("upstream did not answer in time: {0}")]
    Timeout(String),
    #[error("cannot reach upstream: {0}")]
    Unreachable(String),
    #[error("upstream sent a bad response: {0}")]
    BadResponse(String),
    /// Berth's own stores failed while reading or filling the cache: not the upstream's doing, so the client gets
    /// a 503 when a store is unreachable (`unavailable` is then the client's message) and a 500 otherwise.
    #[error("local cache: {detail}")]
    Cache {
        unavailable: Option<&'static str>,
        detail: String,
    },
}

impl UpstreamError {
    /// A failure of the local metadata or blob store while using the cache (`what` says for what).
    pub fn cache(what: &str, e: impl Into<crate::registry::RegistryError>) -> UpstreamError {
        use crate::registry::RegistryError;
        match e.into() {
            RegistryError::Unavailable { message, detail } => UpstreamError::Cache {
                unavailable: Some(message),
                detail: format!("{what}: {detail}"),
            },
            e => UpstreamError::Cache {
                unavailable: None,
                detail: format!("{what}: {e}"),
            },
        }
    }
}

/// What the last request to the upstream found, since the server started (the mirrors page shows it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Health {
    /// No request has gone upstream yet: nothing is known, good or bad.
    NotContacted,
    /// The upstream answered (a `404` or `401` is an answer too), at this Unix time.
    Answering { at: i64 },
    /// The last request failed at this Unix time: unreachable, too slow, a server error, a rate limit or a bad
    /// response, with the error's causes.
    Failing { at: i64, error: String },
}

impl Health {
    fn after(result: &Result<reqwest::Response, UpstreamError>) -> Health {
        let at = crate::meta::now();
        match result {
            Ok(_) | Err(UpstreamError::NotFound(_) | UpstreamError::Denied(_)) => {
                Health::Answering { at }
            }
            Err(e) => Health::Failing {
                at,
                error: e.to_string(),
            },
        }
    }
}

struct CachedToken {
    value: String,
    expires: Instant,
}

pub struct Upstream {
    base: String,
    client: reqwest::Client,
    credentials: Option<(String, String)>,
    pub response_timeout: Duration,
    pub idle_timeout: Duration,
    tokens: parking_lot::Mutex<HashMap<String, CachedToken>>,
    /// Set once the upstream answered with a Basic challenge: from then on credentials are sent up front.
    basic_requested: AtomicBool,
    /// One token request per scope at a time; the others wait and reuse its result.
    token_locks: parking_lot::Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    health: parking_lot::Mutex<Health>,
}

/// Parameters of a `WWW-Authenticate: Bearer realm=…,service=…,scope=…` challenge.
fn parse_bearer(h: &str) -> Option<HashMap<String, String>> {
    let rest = h
        .trim()
        .strip_prefix("Bearer ")
        .or_else(|| h.trim().strip_prefix("bearer "))?;
    let mut out = HashMap::new();
    let mut s = rest;
    while !s.is_empty() {
        let (k, v) = s.split_once('=')?;
        let k = k.trim().trim_start_matches(',').trim().to_ascii_lowercase();
        let v = v.trim_start();
        let (value, rest) = if let Some(q) = v.strip_prefix('"') {
            let end = q.find('"')?;
            (&q[..end], &q[end + 1..])
        } else {
            let end = v.find(',').unwrap_or(v.len());
            (&v[..end], &v[end..])
        };
        out.insert(k, value.to_owned());
        s = rest.trim_start_matches([',', ' ']);
    }
    Some(out)
}

fn retry_after(h: &HeaderMap) -> Option<u64> {
    h.get("retry-after")?.to_str().ok()?.trim().parse().ok()
}

impl Upstream {
    pub fn new(cfg: &config::Mirror) -> Result<Upstream, String> {
        let client = reqwest::Client::builder()
            .connect_timeout(cfg.connect_timeout)
            .pool_idle_timeout(Duration::from_secs(90))
            .user_agent(concat!("berth/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| format!("mirror {}: cannot build HTTP client: {e}", cfg.name))?;
        let password = cfg.resolved_password().map_err(|e| e.to_string())?;
        Ok(Upstream {
            base: cfg.upstream.trim_end_matches('/').to_owned(),
            client,
            credentials: cfg
                .username
                .clone()
                .map(|u| (u, password.unwrap_or_default())),
            response_timeout: cfg.response_timeout,
            idle_timeout: cfg.idle_timeout,
            tokens: Default::default(),
            basic_requested: AtomicBool::new(false),
            token_locks: Default::default(),
            health: parking_lot::Mutex::new(Health::NotContacted),
        })
    }

    /// What the last request found.
    pub fn health(&self) -> Health {
        self.health.lock().clone()
    }

    /// Drops a cached token, unless another request already replaced it.
    fn forget_token(&self, scope: &str, used: &str) {
        let mut tokens = self.tokens.lock();
        if tokens.get(scope).is_some_and(|t| t.value == used) {
            tokens.remove(scope);
        }
    }

    fn token_for(&self, scope: &str) -> Option<String> {
        let tokens = self.tokens.lock();
        tokens
            .get(scope)
            .filter(|t| t.expires > Instant::now())
            .map(|t| t.value.clone())
    }

    /// Fetches (or waits for a concurrent fetch of) a bearer token for `scope`.
    async fn fetch_token(
        &self,
        challenge: &HashMap<String, String>,
        scope: &str,
    ) -> Result<String, UpstreamError> {
        let lock = self
            .token_locks
            .lock()
            .entry(scope.to_owned())
            .or_default()
            .clone();
        let _guard = lock.lock().await;
        if let Some(t) = self.token_for(scope) {
            return Ok(t);
        }
        let realm = challenge
            .get("realm")
            .ok_or_else(|| UpstreamError::BadResponse("Bearer challenge without realm".into()))?;
        let mut req = self.client.get(realm);
        let mut query: Vec<(&str, &str)> = vec![(
            "scope",
            challenge.get("scope").map_or(scope, |s| s.as_str()),
        )];
        if let Some(service) = challenge.get("service") {
            query.push(("service", service));
        }
        req = req.query(&query);
        if let Some((u, p)) = &self.credentials {
            req = req.basic_auth(u, Some(p));
        }
        let resp = tokio::time::timeout(self.response_timeout, req.send())
            .await
            .map_err(|_| UpstreamError::Timeout("token endpoint".into()))?
            .map_err(|e| {
                UpstreamError::Unreachable(format!("token endpoint: {}", error_chain(&e)))
            })?;
        match resp.status() {
            s if s.is_success() => {}
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
                return Err(UpstreamError::Denied(resp.status().as_u16()));
            }
            s => return Err(UpstreamError::Status(s.as_u16())),
        }
        #[derive(serde::Deserialize)]
        struct TokenResponse {
            token: Option<String>,
            access_token: Option<String>,
            expires_in: Option<u64>,
        }
        let body = tokio::time::timeout(self.response_timeout, resp.bytes())
            .await
            .map_err(|_| UpstreamError::Timeout("token endpoint body".into()))?
            .map_err(|e| UpstreamError::BadResponse(error_chain(&e)))?;
        let t: TokenResponse = serde_json::from_slice(&body)
            .map_err(|e| UpstreamError::BadResponse(format!("token response: {e}")))?;
        let value = t
            .token
            .or(t.access_token)
            .ok_or_else(|| UpstreamError::BadResponse("token response without a token".into()))?;
        // Renew a little early so a token never expires mid-request.
        let lifetime = Duration::from_secs(t.expires_in.unwrap_or(60).max(10) - 5);
        self.tokens.lock().insert(
            scope.to_owned(),
            CachedToken {
                value: value.clone(),
                expires: Instant::now() + lifetime,
            },
        );
        Ok(value)
    }

    async fn send_once(
        &self,
        method: &Method,
        url: &str,
        accept: Option<&str>,
        auth: Option<&str>,
    ) -> Result<reqwest::Response, UpstreamError> {
        let mut req = self.client.request(method.clone(), url);
        if let Some(a) = accept {
            req = req.header(ACCEPT, a);
        }
        if let Some(a) = auth {
            req = req.header(AUTHORIZATION, a);
        }
        match tokio::time::timeout(self.response_timeout, req.send()).await {
            Err(_) => Err(UpstreamError::Timeout(format!(
                "no response headers within {:?}",
                self.response_timeout
            ))),
            // reqwest's own text is only "error sending request for url (…)"; why (connection refused, DNS, TLS)
            // is in its sources.
            Ok(Err(e)) if e.is_timeout() => Err(UpstreamError::Timeout(error_chain(&e))),
            Ok(Err(e)) => Err(UpstreamError::Unreachable(error_chain(&e))),
            Ok(Ok(r)) => Ok(r),
        }
    }

    /// Sends an authenticated request for `path` (below `/v2/`) in repository `repo`, retrying transient failures.
    /// Success means a 2xx response whose body has not been read yet. The outcome becomes the upstream's health.
    pub async fn request(
        &self,
        method: Method,
        repo: &str,
        path: &str,
        accept: Option<&str>,
        what: &'static str,
    ) -> Result<reqwest::Response, UpstreamError> {
        let result = self
            .request_with_retries(method, repo, path, accept, what)
            .await;
        *self.health.lock() = Health::after(&result);
        result
    }

    async fn request_with_retries(
        &self,
        method: Method,
        repo: &str,
        path: &str,
        accept: Option<&str>,
        what: &'static str,
    ) -> Result<reqwest::Response, UpstreamError> {
        let url = format!("{}/v2/{repo}/{path}", self.base);
        let scope = format!("repository:{repo}:pull");
        let mut last = UpstreamError::Unreachable("no attempt made".into());
        for attempt in 0..ATTEMPTS {
            if attempt > 0 {
                tokio::time::sleep(BACKOFF * 2u32.pow(attempt - 1)).await;
            }
            // Credentials go to the registry itself only once it asked for Basic auth; with the token flow they
            // go to the token realm alone.
            let token = self.token_for(&scope);
            let auth = match (&token, &self.credentials) {
                (Some(t), _) => Some(format!("Bearer {t}")),
                (None, Some((u, p))) if self.basic_requested.load(Ordering::Relaxed) => {
                    Some(basic(u, p))
                }
                _ => None,
            };
            let mut resp = match self.send_once(&method, &url, accept, auth.as_deref()).await {
                Ok(r) => r,
                Err(e @ UpstreamError::Unreachable(_)) => {
                    last = e;
                    continue;
                }
                Err(e) => return Err(e),
            };
            if resp.status() == StatusCode::UNAUTHORIZED {
                let challenge = resp
                    .headers()
                    .get(WWW_AUTHENTICATE)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("");
                if let Some(bearer) = parse_bearer(challenge) {
                    // A token we just used was refused (revoked, key rotated): never hand it out again.
                    if let Some(t) = &token {
                        self.forget_token(&scope, t);
                    }
                    let token = self.fetch_token(&bearer, &scope).await?;
                    resp = self
                        .send_once(&method, &url, accept, Some(&format!("Bearer {token}")))
                        .await?;
                } else if challenge
                    .trim_start()
                    .to_ascii_lowercase()
                    .starts_with("basic")
                    && let Some((u, p)) = &self.credentials
                    && auth.is_none()
                {
                    self.basic_requested.store(true, Ordering::Relaxed);
                    resp = self
                        .send_once(&method, &url, accept, Some(&basic(u, p)))
                        .await?;
                }
            }
            let status = resp.status();
            if status.is_success() {
                return Ok(resp);
            }
            match status {
                StatusCode::NOT_FOUND => return Err(UpstreamError::NotFound(what)),
                StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
                    return Err(UpstreamError::Denied(status.as_u16()));
                }
                StatusCode::TOO_MANY_REQUESTS => {
                    return Err(UpstreamError::TooManyRequests {
                        retry_after: retry_after(resp.headers()),
                    });
                }
                s if s.is_server_error() => last = UpstreamError::Status(s.as_u16()),
                s => return Err(UpstreamError::Status(s.as_u16())),
            }
        }
        Err(last)
    }

    /// A manifest request (GET or HEAD) asking for every manifest type, so the upstream never converts.
    pub async fn manifest(
        &self,
        method: Method,
        repo: &crate::oci::RepoName,
        reference: &str,
    ) -> Result<reqwest::Response, UpstreamError> {
        self.request(
            method,
            repo.as_str(),
            &format!("manifests/{reference}"),
            Some(MANIFEST_ACCEPT),
            "manifest",
        )
        .await
    }

    /// The `Docker-Content-Digest` an upstream announced, if it is a digest berth understands.
    pub fn content_digest(resp: &reqwest::Response) -> Option<crate::oci::Digest> {
        resp.headers()
            .get("docker-content-digest")?
            .to_str()
            .ok()?
            .parse()
            .ok()
    }

    /// The `Content-Length` an upstream announced. Read from the header itself: for HEAD responses the client
    /// library reports the (empty) body's length instead.
    pub fn announced_length(resp: &reqwest::Response) -> Option<u64> {
        resp.headers()
            .get(reqwest::header::CONTENT_LENGTH)?
            .to_str()
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    /// Reads a small body whole (manifests), each piece within the idle timeout, refusing more than `limit` bytes.
    pub async fn read_small(
        &self,
        mut resp: reqwest::Response,
        limit: u64,
    ) -> Result<Bytes, UpstreamError> {
        let mut buf = bytes::BytesMut::new();
        loop {
            let chunk = tokio::time::timeout(self.idle_timeout, resp.chunk())
                .await
                .map_err(|_| UpstreamError::Timeout("body stalled".into()))?
                .map_err(|e| {
                    UpstreamError::BadResponse(format!("body cut off: {}", error_chain(&e)))
                })?;
            match chunk {
                Some(c) => {
                    buf.extend_from_slice(&c);
                    if buf.len() as u64 > limit {
                        return Err(UpstreamError::BadResponse(format!(
                            "body larger than {limit} bytes"
                        )));
                    }
                }
                None => return Ok(buf.freeze()),
            }
        }
    }
}

fn basic(user: &str, password: &str) -> String {
    use base64::Engine as _;
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
    )
}

/// Whether `s` is one of the manifest media types the upstream may answer with.
pub fn is_manifest_type(s: &str) -> bool {
    media::MANIFEST_TYPES.contains(&media::essence(s).as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_bearer_challenges() {
        let c = parse_bearer(r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/alpine:pull""#).unwrap();
        assert_eq!(c["realm"], "https://auth.docker.io/token");
        assert_eq!(c["service"], "registry.docker.io");
        assert_eq!(c["scope"], "repository:library/alpine:pull");
        let c = parse_bearer("Bearer realm=http://x/token,service=svc").unwrap();
        assert_eq!(c["realm"], "http://x/token");
        assert_eq!(c["service"], "svc");
        assert!(parse_bearer("Basic realm=x").is_none());
    }
}
