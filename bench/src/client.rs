//! Minimal HTTP/1.1 client on raw hyper connections.
//!
//! Why not a pooled client: the workloads need exact control over how many TCP
//! connections are open (1 vs 32 concurrent clients), and one dedicated
//! connection per worker task guarantees that. It also keeps the dependency
//! tree small, which matters for CI compile time.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};

use anyhow::{Context as _, Result, bail};
use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::client::conn::http1::SendRequest;
use hyper::header::{HOST, LOCATION};
use hyper::http::request::Builder;
use hyper::http::response::Parts;
use hyper::{Method, Request, Response, StatusCode, Uri};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::blob::PoolChunks;

/// Request body: nothing, one buffer, or a streamed range of a synthetic blob.
pub enum ReqBody {
    Empty,
    Full(Bytes),
    Pool(PoolChunks),
}

impl Body for ReqBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let next = match self.get_mut() {
            ReqBody::Empty => None,
            ReqBody::Full(b) if b.is_empty() => None,
            ReqBody::Full(b) => Some(std::mem::take(b)),
            ReqBody::Pool(chunks) => chunks.next_chunk(),
        };
        Poll::Ready(next.map(|b| Ok(Frame::data(b))))
    }

    fn is_end_stream(&self) -> bool {
        self.len() == 0
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.len())
    }
}

impl ReqBody {
    pub fn len(&self) -> u64 {
        match self {
            ReqBody::Empty => 0,
            ReqBody::Full(b) => b.len() as u64,
            ReqBody::Pool(chunks) => chunks.remaining(),
        }
    }
}

/// Where a registry (or ceiling server) listens: `host:port`, plain HTTP; or several replicas of one registry, which
/// new connections take in turn, as behind a layer-4 load balancer (a connection stays with its replica).
#[derive(Clone, Debug)]
pub struct Endpoint {
    authorities: Arc<[String]>,
    next: Arc<AtomicUsize>,
}

impl Endpoint {
    /// Parses `http://host:port` (a trailing `/` is fine; a path prefix is not supported).
    pub fn parse(url: &str) -> Result<Endpoint> {
        let uri: Uri = url
            .parse()
            .with_context(|| format!("invalid URL {url:?}"))?;
        if uri.scheme_str() != Some("http") {
            bail!("URL {url:?}: only plain http:// is supported");
        }
        let authority = uri
            .authority()
            .with_context(|| format!("URL {url:?} has no host"))?;
        if !matches!(uri.path(), "" | "/") {
            bail!("URL {url:?}: registries under a path prefix are not supported");
        }
        let authority = match authority.port_u16() {
            Some(_) => authority.as_str().to_string(),
            None => format!("{}:80", authority.host()),
        };
        Ok(Endpoint::of(vec![authority]))
    }

    pub fn from_port(port: u16) -> Endpoint {
        Endpoint::round_robin(&[port])
    }

    /// Replicas on these loopback ports, one connection after the other.
    pub fn round_robin(ports: &[u16]) -> Endpoint {
        Endpoint::of(ports.iter().map(|p| format!("127.0.0.1:{p}")).collect())
    }

    fn of(authorities: Vec<String>) -> Endpoint {
        Endpoint {
            authorities: authorities.into(),
            next: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// `http://host:port` of the first replica; all of them, comma-separated, with [`Endpoint::describe`].
    pub fn url(&self) -> String {
        format!("http://{}", self.authority())
    }

    /// Every replica's URL, for reports.
    pub fn describe(&self) -> String {
        self.authorities
            .iter()
            .map(|a| format!("http://{a}"))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// `host:port` (of the first replica).
    pub fn authority(&self) -> &str {
        &self.authorities[0]
    }

    /// The port of the first replica.
    pub fn port(&self) -> u16 {
        self.authority()
            .rsplit_once(':')
            .and_then(|(_, p)| p.parse().ok())
            .unwrap_or(80)
    }

    /// Opens one keep-alive connection, to the next replica in turn.
    pub async fn connect(&self) -> Result<Conn> {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.authorities.len();
        let authority = self.authorities[i].clone();
        Ok(Conn {
            sender: open(&authority).await?,
            authority,
        })
    }
}

async fn open(authority: &str) -> Result<SendRequest<ReqBody>> {
    let stream = TcpStream::connect(authority)
        .await
        .with_context(|| format!("connecting to {authority}"))?;
    stream.set_nodelay(true).context("setting TCP_NODELAY")?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .with_context(|| format!("HTTP handshake with {authority}"))?;
    // Connection errors surface through the sender; nothing to do with them here.
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(sender)
}

/// One HTTP/1.1 connection that transparently reconnects if the server
/// closed it between requests (never in the middle of one).
pub struct Conn {
    /// The replica this connection (and any reconnection) goes to.
    authority: String,
    sender: SendRequest<ReqBody>,
}

impl Conn {
    /// A request builder for `path` (origin form, e.g. `/v2/`) with `Host` set.
    pub fn request(&self, method: Method, path: &str) -> Builder {
        Request::builder()
            .method(method)
            .uri(path)
            .header(HOST, &self.authority)
    }

    pub async fn send(&mut self, req: Request<ReqBody>) -> Result<Response<Incoming>> {
        if self.sender.is_closed() || self.sender.ready().await.is_err() {
            self.sender = open(&self.authority).await?;
            self.sender
                .ready()
                .await
                .context("connection not ready after reconnect")?;
        }
        let what = format!("{} {}", req.method(), req.uri());
        self.sender
            .send_request(req)
            .await
            .with_context(|| format!("{what} against {}", self.authority))
    }

    /// Sends `req`, reads the whole response body and checks the status.
    pub async fn call(
        &mut self,
        req: Request<ReqBody>,
        want: StatusCode,
    ) -> Result<(Parts, Bytes)> {
        let what = format!("{} {}", req.method(), req.uri());
        let resp = self.send(req).await?;
        read_expect(resp, want)
            .await
            .with_context(|| format!("{what} against {}", self.authority))
    }
}

/// Drains a response (needed to reuse the connection) and checks its status,
/// quoting the start of the body on mismatch: registries explain errors there.
pub async fn read_expect(resp: Response<Incoming>, want: StatusCode) -> Result<(Parts, Bytes)> {
    let (parts, body) = resp.into_parts();
    let bytes = body
        .collect()
        .await
        .context("reading response body")?
        .to_bytes();
    if parts.status != want {
        let excerpt = String::from_utf8_lossy(&bytes[..bytes.len().min(400)]).into_owned();
        bail!("expected {want}, got {}: {excerpt}", parts.status);
    }
    Ok((parts, bytes))
}

/// Passes `resp` through if its status is `want`; otherwise reads the body
/// into the error. For streamed responses that must not be collected.
pub async fn expect_status(
    resp: Response<Incoming>,
    want: StatusCode,
) -> Result<Response<Incoming>> {
    if resp.status() == want {
        return Ok(resp);
    }
    read_expect(resp, want).await?;
    bail!("unexpected status")
}

/// The `Location` header as an origin-form path with query. Registries may
/// answer with an absolute URL (distribution does) or an absolute path.
pub fn location(parts: &Parts) -> Result<String> {
    let raw = parts
        .headers
        .get(LOCATION)
        .context("response has no Location header")?
        .to_str()
        .context("Location header is not ASCII")?;
    if raw.starts_with('/') {
        return Ok(raw.to_string());
    }
    let uri: Uri = raw
        .parse()
        .with_context(|| format!("unparseable Location {raw:?}"))?;
    match uri.path_and_query() {
        Some(pq) if uri.scheme().is_some() => Ok(pq.as_str().to_string()),
        _ => bail!("unsupported relative Location {raw:?}"),
    }
}

/// Appends a query parameter to a path that may already have a query.
pub fn with_query(path: &str, key: &str, value: &str) -> String {
    let sep = if path.contains('?') { '&' } else { '?' };
    format!("{path}{sep}{key}={value}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_endpoint() {
        assert_eq!(
            Endpoint::parse("http://127.0.0.1:5000")
                .unwrap()
                .authority(),
            "127.0.0.1:5000"
        );
        assert_eq!(
            Endpoint::parse("http://localhost/").unwrap().authority(),
            "localhost:80"
        );
        assert!(Endpoint::parse("https://x:1").is_err());
        assert!(Endpoint::parse("http://x:1/prefix").is_err());
    }

    #[test]
    fn query_append() {
        assert_eq!(with_query("/a", "digest", "d"), "/a?digest=d");
        assert_eq!(with_query("/a?s=1", "digest", "d"), "/a?s=1&digest=d");
    }
}
