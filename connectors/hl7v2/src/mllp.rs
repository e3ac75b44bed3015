//! MLLP (HL7 minimal lower layer protocol): `<VT> message <FS><CR>`, and the listener.
//!
//! The codec has a maximum frame length (hl7-mllp-codec has none: one endless frame would eat the
//! memory). A frame over the limit is skipped to its end and answered with AR, so the sender keeps
//! it. Each connection is served in order: read a frame, hand it to the [`MessageSink`] (which
//! returns only once the outcome is durable), write the ACK in one write, read the next.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::{Buf, BufMut, BytesMut};
use futures_util::{SinkExt, StreamExt};
use jiff::Timestamp;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::codec::{Decoder, Encoder, Framed};

use crate::error::{ErrorCode, Hl7Error};
use crate::siu::Hl7Options;
use crate::{Outcome, Processed, process};

const VT: u8 = 0x0b;
const FS: u8 = 0x1c;
const CR: u8 = 0x0d;

/// One frame read from the wire.
#[derive(Debug, PartialEq, Eq)]
pub enum Frame {
    /// A whole message.
    Message(Vec<u8>),
    /// A frame longer than the limit, skipped (its size so far).
    TooLong(usize),
}

/// MLLP framing with a maximum message size.
#[derive(Debug)]
pub struct MllpCodec {
    max: usize,
    /// Inside a frame that exceeded the limit: discard until its end.
    skipping: Option<usize>,
}

impl MllpCodec {
    /// A codec accepting messages of at most `max` bytes.
    pub fn new(max: usize) -> Self {
        MllpCodec {
            max,
            skipping: None,
        }
    }
}

impl Decoder for MllpCodec {
    type Item = Frame;
    type Error = std::io::Error;

    fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Frame>, Self::Error> {
        loop {
            if let Some(seen) = self.skipping {
                match buf.iter().position(|&b| b == FS) {
                    Some(i) => {
                        let n = seen + i;
                        buf.advance(i + 1);
                        if buf.first() == Some(&CR) {
                            buf.advance(1);
                        }
                        self.skipping = None;
                        return Ok(Some(Frame::TooLong(n)));
                    }
                    None => {
                        self.skipping = Some(seen + buf.len());
                        buf.clear();
                        return Ok(None);
                    }
                }
            }
            // Anything before a start block is line noise between frames.
            match buf.iter().position(|&b| b == VT) {
                Some(0) => {}
                Some(i) => buf.advance(i),
                None => {
                    buf.clear();
                    return Ok(None);
                }
            }
            match buf[1..].iter().position(|&b| b == FS) {
                Some(i) if i <= self.max => {
                    let body = buf[1..1 + i].to_vec();
                    buf.advance(i + 2);
                    if buf.first() == Some(&CR) {
                        buf.advance(1);
                    }
                    return Ok(Some(Frame::Message(body)));
                }
                Some(_) => {
                    self.skipping = Some(0);
                    buf.advance(1);
                    continue;
                }
                None if buf.len() - 1 > self.max => {
                    self.skipping = Some(buf.len() - 1);
                    buf.clear();
                    return Ok(None);
                }
                None => {
                    buf.reserve(4096);
                    return Ok(None);
                }
            }
        }
    }
}

impl Encoder<&[u8]> for MllpCodec {
    type Error = std::io::Error;

    fn encode(&mut self, msg: &[u8], dst: &mut BytesMut) -> Result<(), Self::Error> {
        dst.reserve(msg.len() + 3);
        dst.put_u8(VT);
        dst.put_slice(msg);
        dst.put_u8(FS);
        dst.put_u8(CR);
        Ok(())
    }
}

impl Encoder<&str> for MllpCodec {
    type Error = std::io::Error;

    fn encode(&mut self, msg: &str, dst: &mut BytesMut) -> Result<(), Self::Error> {
        self.encode(msg.as_bytes(), dst)
    }
}

/// The largest answer [`exchange`] reads.
const MAX_ANSWER_BYTES: usize = 1024 * 1024;

/// The client side: sends `message` as one frame and reads the answer frame (some servers write
/// it in several writes; noise before it is skipped). Returns the answer without its framing.
/// Used by the write-back, the benchmark and the tests, so that there is one MLLP client.
pub async fn exchange<S>(stream: &mut S, message: &[u8]) -> std::io::Result<Vec<u8>>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut codec = MllpCodec::new(MAX_ANSWER_BYTES);
    let mut out = BytesMut::new();
    codec.encode(message, &mut out)?;
    stream.write_all(&out).await?;
    let mut buf = BytesMut::with_capacity(4096);
    loop {
        match codec.decode(&mut buf)? {
            Some(Frame::Message(answer)) => return Ok(answer),
            Some(Frame::TooLong(_)) => {
                return Err(std::io::Error::other("the answer is larger than 1 MiB"));
            }
            None => {}
        }
        if stream.read_buf(&mut buf).await? == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "the peer closed the connection before its answer",
            ));
        }
    }
}

/// Where processed messages go: [`MessageSink::store`] commits the event, or the raw bytes to
/// quarantine for a rejected message, and returns only once that is durable. `Err` (its text names
/// no patient data) turns the answer into AR 207 so that the sender resends.
#[async_trait::async_trait]
pub trait MessageSink: Send + Sync + 'static {
    async fn store(&self, processed: &Processed, raw: &[u8]) -> Result<(), String>;
}

/// Listener settings.
#[derive(Clone, Debug)]
pub struct ListenerOptions {
    /// The feed's name, for logs.
    pub feed: String,
    pub max_message_bytes: usize,
    /// Connections served at once; more wait in the kernel's accept queue.
    pub max_connections: usize,
    /// A frame that has started must be complete within this time, or the connection is closed
    /// (a stalled sender cannot hold a connection slot with half a message). Idle connections
    /// between frames are kept: interface engines hold them open for hours.
    pub frame_timeout: std::time::Duration,
}

impl ListenerOptions {
    /// The defaults: 1 MiB frames, 32 connections, 60 s to finish a frame.
    pub fn new(feed: &str) -> Self {
        ListenerOptions {
            feed: feed.to_owned(),
            max_message_bytes: 1024 * 1024,
            max_connections: 32,
            frame_timeout: std::time::Duration::from_secs(60),
        }
    }
}

/// The answer to one frame (after the sink has stored what needs storing).
pub async fn answer(
    frame: Frame,
    opts: &Hl7Options,
    sink: &dyn MessageSink,
    feed: &str,
    now: Timestamp,
) -> String {
    let raw = match frame {
        Frame::Message(raw) => raw,
        Frame::TooLong(n) => {
            tracing::warn!(
                feed,
                bytes = n,
                "MLLP frame over the size limit rejected (AR)"
            );
            let e = Hl7Error::reject(
                ErrorCode::ApplicationInternal,
                None,
                "the message is larger than this interface accepts (max_message_bytes)",
            );
            return crate::ack::build(None, e.ack, Some(&e), opts, now);
        }
    };
    // The receive time orders messages that share an MSH-7.
    let mut processed = process(&raw, opts, now.as_microsecond(), "mllp");
    // Where the event came from: the MLLP message's control id (an id, never patient data).
    if let (Outcome::Event(e), Some(h)) = (&mut processed.outcome, &processed.header) {
        e.raw_ref = format!("mllp MSH-10 {}", h.control_id.trim());
    }
    let control_id = processed.header.as_ref().map(|h| h.control_id.as_str());
    let stored = match sink.store(&processed, &raw).await {
        Ok(()) => true,
        Err(e) => {
            tracing::error!(feed, error = %e, "HL7 message not stored; answering AR so it is resent");
            false
        }
    };
    match &processed.outcome {
        Outcome::Rejected(e) => {
            tracing::warn!(feed, control_id, error = %e, "HL7 message quarantined")
        }
        Outcome::Ignored(why) => tracing::info!(feed, control_id, why, "HL7 message ignored"),
        Outcome::Event(_) => tracing::debug!(feed, control_id, "HL7 message accepted"),
    }
    processed.ack(stored, opts, now)
}

async fn connection(
    stream: TcpStream,
    peer: SocketAddr,
    opts: Arc<Hl7Options>,
    listener: Arc<ListenerOptions>,
    sink: Arc<dyn MessageSink>,
    now: Arc<dyn Fn() -> Timestamp + Send + Sync>,
) {
    let mut framed = Framed::new(stream, MllpCodec::new(listener.max_message_bytes));
    loop {
        // `next` is cancel-safe: a timeout loses no bytes (they stay in the read buffer).
        let frame = match tokio::time::timeout(listener.frame_timeout, framed.next()).await {
            Ok(Some(f)) => f,
            Ok(None) => return,
            Err(_) if framed.read_buffer().is_empty() => continue,
            Err(_) => {
                tracing::warn!(feed = %listener.feed, %peer, "MLLP frame not completed in time; connection closed");
                return;
            }
        };
        let frame = match frame {
            Ok(f) => f,
            Err(e) => {
                tracing::warn!(feed = %listener.feed, %peer, error = %e, "MLLP connection error");
                return;
            }
        };
        let ack = answer(frame, &opts, sink.as_ref(), &listener.feed, now()).await;
        // One write per ACK frame: some clients read the reply with a single recv.
        if let Err(e) = framed.send(ack.as_str()).await {
            tracing::warn!(feed = %listener.feed, %peer, error = %e, "could not send the ACK");
            return;
        }
    }
}

/// Serves MLLP on `listener` until the task is dropped; one task per connection.
pub async fn serve(
    listener: TcpListener,
    opts: Arc<Hl7Options>,
    listener_opts: ListenerOptions,
    sink: Arc<dyn MessageSink>,
    now: Arc<dyn Fn() -> Timestamp + Send + Sync>,
) -> std::io::Result<()> {
    let slots = Arc::new(tokio::sync::Semaphore::new(
        listener_opts.max_connections.max(1),
    ));
    let listener_opts = Arc::new(listener_opts);
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return Ok(());
        };
        let (stream, peer) = match listener.accept().await {
            Ok(c) => c,
            // Out of file descriptors, a connection reset before accept: transient, keep serving.
            Err(e) => {
                tracing::warn!(feed = %listener_opts.feed, error = %e, "MLLP accept failed; retrying");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let (opts, listener_opts, sink, now) = (
            opts.clone(),
            listener_opts.clone(),
            sink.clone(),
            now.clone(),
        );
        tokio::spawn(async move {
            connection(stream, peer, opts, listener_opts, sink, now).await;
            drop(slot);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A store that is down: every commit fails.
    struct Unavailable;

    #[async_trait::async_trait]
    impl MessageSink for Unavailable {
        async fn store(&self, _: &Processed, _: &[u8]) -> Result<(), String> {
            Err("database is locked".into())
        }
    }

    #[tokio::test]
    async fn a_stalled_half_frame_closes_the_connection_but_idle_ones_stay() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut o = ListenerOptions::new("test");
        o.frame_timeout = std::time::Duration::from_millis(200);
        let server = tokio::spawn(serve(
            listener,
            Arc::new(Hl7Options::new("s", "site", "UTC", "US")),
            o,
            Arc::new(Unavailable),
            Arc::new(Timestamp::now),
        ));
        let mut idle = TcpStream::connect(addr).await.unwrap();
        let mut stalled = TcpStream::connect(addr).await.unwrap();
        stalled.write_all(b"\x0bMSH|^~\\&|A").await.unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(600)).await;
        let mut buf = [0u8; 16];
        assert_eq!(
            stalled.read(&mut buf).await.unwrap(),
            0,
            "closed by the server"
        );
        // The idle connection still works: a message on it is answered.
        idle.write_all(b"\x0bnot hl7\x1c\r").await.unwrap();
        let n = idle.read(&mut buf).await.unwrap();
        assert!(n > 0 && buf[0] == 0x0b, "answered");
        server.abort();
    }

    #[tokio::test]
    async fn a_message_that_cannot_be_stored_is_answered_ar_so_the_sender_resends() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let opts = Arc::new(Hl7Options::new("s", "site", "UTC", "US"));
        let server = tokio::spawn(serve(
            listener,
            opts,
            ListenerOptions::new("test"),
            Arc::new(Unavailable),
            Arc::new(Timestamp::now),
        ));
        let mut s = TcpStream::connect(addr).await.unwrap();
        let msg =
            "MSH|^~\\&|A|B|C|D|20261201||SIU^S12|X1|P|2.5\rSCH|1|2||||||||||^^^202612021000\r";
        let ack = String::from_utf8(exchange(&mut s, msg.as_bytes()).await.unwrap()).unwrap();
        assert!(ack.contains("\rMSA|AR|X1\r"), "{ack}");
        assert!(
            ack.contains("|207^Application internal error^HL70357|"),
            "{ack}"
        );
        assert!(
            !ack.contains("locked"),
            "internal errors stay in the log: {ack}"
        );
        server.abort();
    }

    fn decode_all(codec: &mut MllpCodec, bytes: &[u8]) -> Vec<Frame> {
        let mut buf = BytesMut::from(bytes);
        let mut out = Vec::new();
        while let Some(f) = codec.decode(&mut buf).unwrap() {
            out.push(f);
        }
        out
    }

    #[test]
    fn frames_noise_and_split_reads() {
        let mut c = MllpCodec::new(100);
        let f = decode_all(&mut c, b"noise\x0bMSH|1\r\x1c\r\r\n\x0bMSH|2\r\x1c\r");
        assert_eq!(
            f,
            [
                Frame::Message(b"MSH|1\r".to_vec()),
                Frame::Message(b"MSH|2\r".to_vec())
            ]
        );
        // A frame arriving in pieces.
        let mut buf = BytesMut::from(&b"\x0bMSH|"[..]);
        assert_eq!(c.decode(&mut buf).unwrap(), None);
        buf.extend_from_slice(b"3\r\x1c");
        assert_eq!(
            c.decode(&mut buf).unwrap(),
            Some(Frame::Message(b"MSH|3\r".to_vec()))
        );
    }

    #[test]
    fn an_oversized_frame_is_skipped_and_the_next_one_read() {
        let mut c = MllpCodec::new(8);
        let mut buf = BytesMut::from(&b"\x0bMSH|0123456789"[..]);
        assert_eq!(c.decode(&mut buf).unwrap(), None);
        assert!(buf.is_empty(), "memory is not kept for an oversized frame");
        buf.extend_from_slice(b"more\x1c\r\x0bMSH|ok\x1c\r");
        assert_eq!(c.decode(&mut buf).unwrap(), Some(Frame::TooLong(18)));
        assert_eq!(
            c.decode(&mut buf).unwrap(),
            Some(Frame::Message(b"MSH|ok".to_vec()))
        );
    }
}
