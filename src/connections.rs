//! Accepting and serving HTTP connections, with the bounds `axum::serve` has no settings for: how long a client
//! may take to send a request's headers (`server.header_read_timeout`) and how many connections are served at
//! once (`server.max_connections`). Without them, a few hundred clients that drip their headers a byte at a time,
//! or connect and send nothing, hold a task and a file descriptor each for as long as they like.
//!
//! At the connection limit the accept loop stops accepting: further connections wait in the kernel's accept
//! queue (`listen` backlog) and are served as slots free up. Waiting, not refusing, because a legitimate client
//! in a burst is then only delayed; the header timeout frees any slot a slow client holds within
//! `header_read_timeout`, so that is the longest a client waits behind an attack of slow connections. A refusal
//! would have to accept the connection and read a request to answer `503`, which is the work the limit saves.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{Semaphore, watch};

/// What every connection of a group of listeners shares.
#[derive(Clone, Debug)]
pub struct ConnectionLimits {
    /// A request's headers must be complete this long after the server starts reading them.
    pub header_read_timeout: Duration,
    /// One permit per connection being served; listeners sharing it share the limit.
    pub slots: Arc<Semaphore>,
}

impl ConnectionLimits {
    pub fn new(header_read_timeout: Duration, max_connections: usize) -> ConnectionLimits {
        ConnectionLimits {
            header_read_timeout,
            slots: Arc::new(Semaphore::new(max_connections)),
        }
    }
}

/// Serves `app` on every connection `listener` accepts until `stop` turns true, then lets the open connections
/// finish their requests (graceful shutdown) and returns once all are closed.
pub async fn serve<L>(
    mut listener: L,
    app: Router,
    limits: ConnectionLimits,
    mut stop: watch::Receiver<bool>,
) where
    L: axum::serve::Listener<Addr = SocketAddr>,
{
    // Every connection task holds a receiver; `closed()` resolves when the last one is gone.
    let (open_tx, open_rx) = watch::channel(());
    loop {
        let permit = tokio::select! {
            p = limits.slots.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
            _ = stopped(&mut stop) => break,
        };
        let (io, peer) = tokio::select! {
            c = listener.accept() => c,
            _ = stopped(&mut stop) => break,
        };
        let (app, mut stop, open) = (app.clone(), stop.clone(), open_rx.clone());
        let timeout = limits.header_read_timeout;
        tokio::spawn(async move {
            let _slot = permit;
            let _open = open;
            let service = hyper::service::service_fn(
                move |mut req: hyper::Request<hyper::body::Incoming>| {
                    req.extensions_mut().insert(ConnectInfo(peer));
                    tower::ServiceExt::oneshot(app.clone(), req)
                },
            );
            let mut builder = Builder::new(TokioExecutor::new());
            builder
                .http1()
                .timer(TokioTimer::new())
                .header_read_timeout(timeout);
            let io = TokioIo::new(FirstBytes::new(io, timeout));
            let conn = builder.serve_connection_with_upgrades(io, service);
            tokio::pin!(conn);
            tokio::select! {
                r = conn.as_mut() => {
                    if let Err(e) = r {
                        tracing::debug!(%peer, error = %e, "connection ended with an error");
                    }
                }
                _ = stopped(&mut stop) => {
                    conn.as_mut().graceful_shutdown();
                    let _ = conn.await;
                }
            }
        });
    }
    drop(open_rx);
    open_tx.closed().await;
}

/// Resolves once `stop` is true (or its sender is gone). The borrow `wait_for` returns is dropped here, not held
/// by a `select!` branch across the awaits in its handler.
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// The HTTP/2 connection preface: what the version detection of `auto::Builder` waits for before it hands the
/// connection to HTTP/1 or HTTP/2.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Bounds the time until a connection has shown which HTTP version it speaks. hyper's HTTP/1 header timer only
/// starts once the version detection has seen a byte that is not the HTTP/2 preface, so a connection that sends
/// nothing, or drips the preface, would otherwise be held forever. Once the version is known the deadline is
/// disarmed: HTTP/1 has hyper's header timer from then on.
struct FirstBytes<I> {
    io: I,
    seen: usize,
    deadline: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<I> FirstBytes<I> {
    fn new(io: I, timeout: Duration) -> FirstBytes<I> {
        FirstBytes {
            io,
            seen: 0,
            deadline: Some(Box::pin(tokio::time::sleep(timeout))),
        }
    }

    /// Notes bytes just read; disarms the deadline once they leave the preface or complete it.
    fn saw(&mut self, bytes: &[u8]) {
        let start = self.seen.min(H2_PREFACE.len());
        let end = (self.seen + bytes.len()).min(H2_PREFACE.len());
        let still_preface = bytes[..end - start] == H2_PREFACE[start..end];
        self.seen += bytes.len();
        if !still_preface || self.seen >= H2_PREFACE.len() {
            self.deadline = None;
        }
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for FirstBytes<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        let before = buf.filled().len();
        match Pin::new(&mut this.io).poll_read(cx, buf) {
            Poll::Ready(r) => {
                if this.deadline.is_some() {
                    this.saw(&buf.filled()[before..]);
                }
                Poll::Ready(r)
            }
            Poll::Pending => {
                if let Some(d) = this.deadline.as_mut()
                    && d.as_mut().poll(cx).is_ready()
                {
                    return Poll::Ready(Err(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "no request within the header read timeout",
                    )));
                }
                Poll::Pending
            }
        }
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for FirstBytes<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn armed(chunks: &[&str]) -> bool {
        let mut f = FirstBytes::new((), Duration::from_secs(1));
        for c in chunks {
            f.saw(c.as_bytes());
        }
        f.deadline.is_some()
    }

    #[tokio::test]
    async fn deadline_holds_until_the_version_is_known() {
        assert!(armed(&[]), "nothing sent yet");
        assert!(armed(&["PRI * HT"]), "a prefix of the HTTP/2 preface");
        assert!(armed(&["P", "R", "I"]), "the preface dripped");
        assert!(!armed(&["G"]), "HTTP/1: hyper's header timer takes over");
        assert!(!armed(&["PRI", " * HTTP/1.1"]), "diverges from the preface");
        assert!(
            !armed(&["PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"]),
            "HTTP/2 preface complete"
        );
        assert!(
            !armed(&["PRI * HTTP/2.0\r\n\r\nSM\r\n\r\nmore"]),
            "preface and a frame"
        );
    }
}
