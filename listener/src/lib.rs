//! Bounded HTTP serving for the endpoints medrelay exposes to other systems (the WhatsApp webhook,
//! the FHIR Subscription endpoint), shared by `medrelay-pipeline` and `medrelay-connector-fhir` so
//! both bound hostile clients the same way:
//!
//! - [`serve_bounded`]: at most `max_connections` TCP connections per listener (beyond that the
//!   listener stops accepting, so new connections wait in the kernel's backlog until one closes);
//!   a connection must deliver a complete request head within `header_timeout`, counted from the
//!   accept (or, on a kept-alive connection, from the end of the previous response), so a client
//!   that dribbles its headers, or an idle connection, is closed; a head may take at most
//!   [`MAX_HEAD_BYTES`]. HTTP/1.1 (and 1.0) only: what a TLS reverse proxy speaks upstream and what
//!   Meta and FHIR servers send, and without HTTP/2 there are no multiplexed streams to bound.
//! - [`read_body`]: called by a handler only after the request's credential header passed, so an
//!   unauthenticated body is never read; takes one of the listener's request slots
//!   ([`RequestLimits`]), refuses an announced `Content-Length` over the limit before reading,
//!   and stops at the limit or at a deadline that covers the whole body (a body dribbled one byte
//!   at a time is cut at the deadline, not kept alive by each byte).
//! - [`same`]: the constant-time compare for credentials.
//! - [`tls`]: rustls for these listeners ([`serve_bounded_tls`]) and for MLLP, with mutual TLS
//!   and reload; a site needs no TLS-terminating proxy in front of medrelay.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, header};
use futures_util::StreamExt;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio::time::Instant;
use tracing::{debug, warn};

pub mod tls;
pub use tls::ServerTls;

/// Whether two credentials are equal, in time that depends only on their lengths (`subtle`): a
/// client cannot find a secret byte by byte from response times. Only the length of the expected
/// value can leak, which says nothing about its content.
pub fn same(given: &[u8], expected: &[u8]) -> bool {
    use subtle::ConstantTimeEq;
    given.ct_eq(expected).into()
}

/// Largest request head (request line and headers): far more than any webhook or FHIR server
/// sends, small enough that hundreds of connections cannot hold much memory with it.
pub const MAX_HEAD_BYTES: usize = 64 * 1024;

/// Default connections open at once per listener.
pub const DEFAULT_MAX_CONNECTIONS: usize = 256;
/// Default time a connection has to send a complete request head.
pub const DEFAULT_HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// What a listener allows per connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// TCP connections open at once; beyond, new connections wait in the backlog.
    pub max_connections: usize,
    /// Time from accept (or the previous response) to a complete request head; else closed.
    pub header_timeout: Duration,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        ConnectionLimits {
            max_connections: DEFAULT_MAX_CONNECTIONS,
            header_timeout: DEFAULT_HEADER_TIMEOUT,
        }
    }
}

/// Serves `router` on `listener` within `limits` until `shutdown` completes: then the listener is
/// closed, idle connections are closed, requests in flight finish (a connection still sending its
/// head is closed at its header timeout), and only then does this return.
pub async fn serve_bounded(
    listener: TcpListener,
    router: Router,
    limits: ConnectionLimits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    serve_bounded_tls(listener, router, limits, None, shutdown).await
}

/// [`serve_bounded`], over TLS when `tls` is set: each accepted connection first completes the
/// handshake (within [`tls::HANDSHAKE_TIMEOUT`], holding its connection slot), then is served as
/// HTTP/1.1. A failed handshake (no or a refused client certificate, plain HTTP on a TLS port) is
/// logged without anything the client sent and the connection closed.
pub async fn serve_bounded_tls(
    listener: TcpListener,
    router: Router,
    limits: ConnectionLimits,
    tls: Option<ServerTls>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let max = limits.max_connections.clamp(1, Semaphore::MAX_PERMITS);
    let slots = Arc::new(Semaphore::new(max));
    let (closing_tx, closing_rx) = watch::channel(false);
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .max_buf_size(MAX_HEAD_BYTES)
        .keep_alive(true);
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        // A slot first, then accept: at the limit, connections wait in the backlog.
        let permit = tokio::select! {
            p = slots.clone().acquire_owned() => p.expect("the semaphore is never closed"),
            _ = &mut shutdown => break,
        };
        let stream = tokio::select! {
            r = listener.accept() => match r {
                Ok(accepted) => accepted,
                Err(e) => {
                    // EMFILE and the like: wait a little instead of spinning; never stop serving.
                    warn!(error = %e, "accept failed; retrying");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        let (stream, peer) = stream;
        let _ = stream.set_nodelay(true);
        // Handlers can tell clients apart (`ConnectInfo<SocketAddr>`), as with axum's own serve.
        let service = TowerToHyperService::new(
            router
                .clone()
                .layer(axum::Extension(axum::extract::ConnectInfo(peer))),
        );
        let builder = builder.clone();
        let closing = closing_rx.clone();
        let tls = tls.clone();
        tokio::spawn(async move {
            let _slot = permit;
            match tls {
                None => serve_connection(&builder, stream, service, closing).await,
                Some(tls) => match tls.accept(stream).await {
                    Ok(stream) => serve_connection(&builder, stream, service, closing).await,
                    Err(e) => warn!(%peer, error = %e, "TLS connection refused"),
                },
            }
        });
    }
    drop(listener);
    closing_tx.send_replace(true);
    // Every connection holds a slot until it is done.
    let _all = slots.acquire_many(max as u32).await;
    Ok(())
}

/// One connection's requests, until it closes or the listener closes (then gracefully).
async fn serve_connection<S>(
    builder: &hyper::server::conn::http1::Builder,
    stream: S,
    service: TowerToHyperService<Router>,
    mut closing: watch::Receiver<bool>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let conn = builder.serve_connection(TokioIo::new(stream), service);
    let mut conn = std::pin::pin!(conn);
    let result = tokio::select! {
        r = conn.as_mut() => r,
        _ = async { drop(closing.wait_for(|c| *c).await) } => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = result {
        // Header timeouts, resets, malformed requests: the peer's problem, not ours.
        debug!(error = %e, "connection ended with an error");
    }
}

/// What a handler allows per request once its head passed the credential check.
#[derive(Clone, Debug)]
pub struct RequestLimits {
    /// Largest accepted body, in bytes.
    pub body_limit: usize,
    /// From the end of the head: a request slot must be free and the whole body read by then.
    pub body_timeout: Duration,
    /// Requests being read or processed at once (shared by every clone).
    pub slots: Arc<Semaphore>,
}

impl RequestLimits {
    /// Limits with `max_requests` slots.
    pub fn new(body_limit: usize, body_timeout: Duration, max_requests: usize) -> Self {
        RequestLimits {
            body_limit,
            body_timeout,
            slots: Arc::new(Semaphore::new(
                max_requests.clamp(1, Semaphore::MAX_PERMITS),
            )),
        }
    }
}

/// Why a body was not read.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum BodyError {
    /// No request slot became free before the deadline (answer 503: deliver again).
    #[error("busy: no request slot before the deadline")]
    Busy,
    /// Larger than the limit, announced or read (answer 413).
    #[error("body over the limit")]
    TooLarge,
    /// Not complete by the deadline (answer 408).
    #[error("body not received in time")]
    TimedOut,
    /// The connection broke or the framing was invalid (answer 400).
    #[error("body could not be read")]
    Broken,
}

/// Reads a whole body within `limits`: refuses an announced `Content-Length` over the limit before
/// reading, takes a request slot (held by the returned permit until the request is answered), and
/// stops at the limit or at the deadline (`body_timeout` from now, covering the wait for a slot).
/// Memory: at most the limit per slot.
pub async fn read_body(
    headers: &HeaderMap,
    body: Body,
    limits: &RequestLimits,
) -> Result<(Bytes, tokio::sync::OwnedSemaphorePermit), BodyError> {
    let deadline = Instant::now() + limits.body_timeout;
    let announced = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if announced.is_some_and(|n| n > limits.body_limit as u64) {
        return Err(BodyError::TooLarge);
    }
    let permit = tokio::time::timeout_at(deadline, limits.slots.clone().acquire_owned())
        .await
        .map_err(|_| BodyError::Busy)?
        .expect("the semaphore is never closed");
    let read = async {
        let mut stream = body.into_data_stream();
        // Sized from the announced length (at most the limit, and only once a slot is held), and
        // grown never past the limit: one request holds at most `body_limit` bytes.
        let limit = limits.body_limit;
        let mut buf: Vec<u8> = Vec::with_capacity(announced.map_or(0, |n| n as usize));
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|_| BodyError::Broken)?;
            let needed = buf.len() + chunk.len();
            if needed > limit {
                return Err(BodyError::TooLarge);
            }
            if needed > buf.capacity() {
                let grown = needed.max(buf.capacity() * 2).min(limit);
                buf.reserve_exact(grown - buf.len());
            }
            buf.extend_from_slice(&chunk);
        }
        Ok(Bytes::from(buf))
    };
    let bytes = tokio::time::timeout_at(deadline, read)
        .await
        .map_err(|_| BodyError::TimedOut)??;
    Ok((bytes, permit))
}
