//! The listener's limits over real TCP on 127.0.0.1: the connection cap, the header timeout (slow
//! and idle connections), the whole-body deadline (a body dribbled byte by byte is cut at the
//! deadline, not kept alive by each byte), request slots, the announced-length check, graceful
//! shutdown. Bounds are generous; the only short durations are the configured limits.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use medrelay_listener::{
    BodyError, ConnectionLimits, RequestLimits, read_body, same, serve_bounded,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;

const BOUND: Duration = Duration::from_secs(30);

/// Answers with the status of [`read_body`] and the body's length.
async fn echo(State(limits): State<RequestLimits>, headers: HeaderMap, body: Body) -> String {
    match read_body(&headers, body, &limits).await {
        Ok((b, _slot)) => format!("read {}", b.len()),
        Err(e) => format!("{e:?}"),
    }
}

/// What [`hold`] shares with the test: the limits, "slot taken", "release it".
type Holding = (RequestLimits, Arc<Notify>, Arc<Notify>);

/// Holds a request slot (saying so on `taken`) until `release` is notified.
async fn hold(
    State((limits, taken, release)): State<Holding>,
    headers: HeaderMap,
    body: Body,
) -> StatusCode {
    match read_body(&headers, body, &limits).await {
        Ok((_, _slot)) => {
            taken.notify_one();
            release.notified().await;
            StatusCode::OK
        }
        Err(BodyError::Busy) => StatusCode::SERVICE_UNAVAILABLE,
        Err(_) => StatusCode::BAD_REQUEST,
    }
}

async fn start(
    router: Router,
    limits: ConnectionLimits,
) -> (
    SocketAddr,
    Arc<Notify>,
    tokio::task::JoinHandle<std::io::Result<()>>,
) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stop = Arc::new(Notify::new());
    let s = stop.clone();
    let task = tokio::spawn(serve_bounded(listener, router, limits, async move {
        s.notified().await
    }));
    (addr, stop, task)
}

fn echo_router(limits: RequestLimits) -> Router {
    Router::new().route("/", post(echo)).with_state(limits)
}

/// Reads until the server closes; what it sent. `None` if it did not close within [`BOUND`].
async fn read_to_close(s: &mut (impl AsyncReadExt + Unpin)) -> Option<String> {
    let mut all = Vec::new();
    let r = tokio::time::timeout(BOUND, async {
        let mut buf = [0u8; 4096];
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => all.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    r.ok().map(|()| String::from_utf8_lossy(&all).into_owned())
}

fn request(len: usize, body: &str) -> String {
    format!(
        "POST / HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: {len}\r\n\r\n{body}"
    )
}

#[test]
fn credentials_compare_equal_only_when_identical() {
    assert!(same(b"Bearer abc", b"Bearer abc"));
    assert!(!same(b"Bearer abd", b"Bearer abc"));
    assert!(!same(b"Bearer ab", b"Bearer abc"));
    assert!(!same(b"", b"Bearer abc"));
    assert!(same(b"", b""));
}

#[tokio::test]
async fn slow_and_idle_connections_are_closed_at_the_header_timeout() {
    let limits = ConnectionLimits {
        max_connections: 8,
        header_timeout: Duration::from_secs(1),
    };
    let (addr, _stop, _task) = start(echo_router(RequestLimits::new(1024, BOUND, 4)), limits).await;
    // Idle: never sends a byte.
    let mut idle = TcpStream::connect(addr).await.unwrap();
    // Slow: a header byte every 200 ms, never finishing.
    let mut slow = TcpStream::connect(addr).await.unwrap();
    slow.write_all(b"POST / HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let dribble = async {
        for _ in 0..(BOUND.as_millis() / 200) {
            tokio::time::sleep(Duration::from_millis(200)).await;
            if slow.write_all(b"X").await.is_err() {
                return true;
            }
            let mut b = [0u8; 64];
            if let Ok(r) = tokio::time::timeout(Duration::from_millis(1), slow.read(&mut b)).await
                && matches!(r, Ok(0) | Err(_))
            {
                return true;
            }
        }
        false
    };
    assert!(dribble.await, "the slow-header connection is closed");
    assert!(
        read_to_close(&mut idle).await.is_some(),
        "the idle connection is closed"
    );
    // A kept-alive connection that goes idle after its answer is closed too.
    let mut kept = TcpStream::connect(addr).await.unwrap();
    kept.write_all(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nok")
        .await
        .unwrap();
    let answer = read_to_close(&mut kept).await.expect("closed after idling");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.ends_with("read 2"), "{answer}");
}

#[tokio::test]
async fn connections_beyond_the_cap_wait_for_a_free_slot() {
    let limits = ConnectionLimits {
        max_connections: 2,
        header_timeout: BOUND,
    };
    let (addr, _stop, _task) = start(echo_router(RequestLimits::new(1024, BOUND, 4)), limits).await;
    let first = TcpStream::connect(addr).await.unwrap();
    let _second = TcpStream::connect(addr).await.unwrap();
    // The third is in the backlog: its request is not served while both slots are held...
    let mut third = TcpStream::connect(addr).await.unwrap();
    third.write_all(request(2, "ok").as_bytes()).await.unwrap();
    let mut b = [0u8; 64];
    assert!(
        tokio::time::timeout(Duration::from_millis(500), third.read(&mut b))
            .await
            .is_err(),
        "not served beyond the cap"
    );
    // ...and is served as soon as one closes.
    drop(first);
    let answer = read_to_close(&mut third)
        .await
        .expect("served once a slot is free");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
}

#[tokio::test]
async fn a_dribbled_body_is_cut_at_the_whole_body_deadline() {
    let (addr, _stop, _task) = start(
        echo_router(RequestLimits::new(1024, Duration::from_secs(1), 4)),
        ConnectionLimits::default(),
    )
    .await;
    let s = TcpStream::connect(addr).await.unwrap();
    let (mut r, mut w) = s.into_split();
    w.write_all(request(100, "").as_bytes()).await.unwrap();
    // One byte every 100 ms: each byte would reset an idle timer; the deadline counts the whole.
    let dribble = tokio::spawn(async move {
        for _ in 0..99 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            if w.write_all(b"x").await.is_err() {
                break;
            }
        }
    });
    let answer = read_to_close(&mut r).await.expect("an answer");
    assert!(answer.ends_with("TimedOut"), "{answer}");
    dribble.abort();
}

#[tokio::test]
async fn bodies_over_the_limit_are_refused_announced_or_read() {
    let (addr, _stop, _task) = start(
        echo_router(RequestLimits::new(1024, BOUND, 4)),
        ConnectionLimits::default(),
    )
    .await;
    // Announced: refused before a byte is sent.
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(request(1 << 30, "").as_bytes()).await.unwrap();
    let answer = read_to_close(&mut s).await.expect("an answer");
    assert!(answer.ends_with("TooLarge"), "{answer}");
    // Chunked, no length announced: stopped at the limit.
    let mut s = TcpStream::connect(addr).await.unwrap();
    let chunk = "x".repeat(600);
    s.write_all(
        format!("POST / HTTP/1.1\r\nHost: x\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\n258\r\n{chunk}\r\n258\r\n{chunk}\r\n0\r\n\r\n")
            .as_bytes(),
    )
    .await
    .unwrap();
    let answer = read_to_close(&mut s).await.expect("an answer");
    assert!(answer.ends_with("TooLarge"), "{answer}");
    // At the limit: read.
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(request(1024, &"y".repeat(1024)).as_bytes())
        .await
        .unwrap();
    let answer = read_to_close(&mut s).await.expect("an answer");
    assert!(answer.ends_with("read 1024"), "{answer}");
}

#[tokio::test]
async fn requests_beyond_the_slots_wait_then_are_refused_as_busy() {
    let limits = RequestLimits::new(1024, Duration::from_secs(1), 1);
    let (taken, release) = (Arc::new(Notify::new()), Arc::new(Notify::new()));
    let router =
        Router::new()
            .route("/", post(hold))
            .with_state((limits, taken.clone(), release.clone()));
    let (addr, stop, task) = start(router, ConnectionLimits::default()).await;
    let mut holder = TcpStream::connect(addr).await.unwrap();
    holder.write_all(request(2, "ok").as_bytes()).await.unwrap();
    tokio::time::timeout(BOUND, taken.notified())
        .await
        .expect("the holder has the one slot");
    let mut second = TcpStream::connect(addr).await.unwrap();
    second.write_all(request(2, "ok").as_bytes()).await.unwrap();
    let answer = read_to_close(&mut second).await.expect("an answer");
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    // Shutdown waits for the request in flight, which then completes.
    stop.notify_one();
    tokio::time::timeout(BOUND, async {
        while TcpStream::connect(addr).await.is_ok() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("no longer accepting after the shutdown");
    assert!(
        !task.is_finished(),
        "a request in flight holds the shutdown"
    );
    release.notify_one();
    let answer = read_to_close(&mut holder).await.expect("an answer");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    tokio::time::timeout(BOUND, task)
        .await
        .expect("stops once the request is done")
        .unwrap()
        .unwrap();
}
