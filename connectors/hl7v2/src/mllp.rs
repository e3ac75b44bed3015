//! MLLP (HL7 minimal lower layer protocol): `<VT> message <FS><CR>`, and the listener.
//!
//! The codec has a maximum frame length (hl7-mllp-codec has none: one endless frame would eat the
//! memory). A frame over the limit is skipped to its end and answered with AR, so the sender keeps
//! it. On the listener a frame ends only at FS followed by CR: an FS inside the content is content
//! (and then an AE, see [`crate::limits::check_controls`]), never a silent end of the message.
//!
//! Each connection is served in order: read a frame, parse it on a bounded pool of blocking
//! threads within a time budget, hand it to the [`MessageSink`] (which returns only once the
//! outcome is durable), write the ACK in one write within a timeout, read the next. Every
//! connection has deadlines that no trickle of bytes can push back: `idle_timeout` while no frame
//! has started (noise without a start byte does not count as a start), `frame_timeout` from a
//! frame's first byte to its end. Connections are admitted by source address (`allow_from`), at
//! most `max_connections_per_source` per address, and the last `reserved_connections` of
//! `max_connections` only for `reserved_for` (the EHR's own engine can always get in).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering as AtomicOrdering};
use std::time::{Duration, Instant};

use bytes::{Buf, BufMut, BytesMut};
use jiff::Timestamp;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::codec::{Decoder, Encoder};

use crate::access::Network;
use crate::error::{ErrorCode, Hl7Error};
use crate::limits::{ParseLimits, header_only};
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
    /// A frame whose end block FS was not followed by CR in time (listener only): where the
    /// message ends is unknown, so it is rejected rather than read as complete.
    Unterminated(Vec<u8>),
}

/// Where the end block of a frame is, if it has arrived.
enum End {
    /// At this index, followed by this many framing bytes (FS, or FS CR).
    Found(usize, usize),
    /// An FS is the last byte so far (strict mode: it ends the frame only if CR follows).
    Pending(usize),
    /// No end yet.
    NotYet,
}

/// MLLP framing with a maximum message size.
#[derive(Debug)]
pub struct MllpCodec {
    max: usize,
    /// Inside a frame that exceeded the limit: discard until its end.
    skipping: Option<usize>,
    /// A frame ends only at FS CR (the listener); otherwise at FS (reading a peer's ACK).
    strict: bool,
    /// How far the current frame has been searched for its end, so that a frame arriving in
    /// many small reads is scanned once, not once per read.
    scanned: usize,
}

impl MllpCodec {
    /// A lenient codec accepting messages of at most `max` bytes: a frame ends at FS (CR
    /// optional). For reading the answers of peers, some of which omit the CR.
    pub fn new(max: usize) -> Self {
        MllpCodec {
            max,
            skipping: None,
            strict: false,
            scanned: 0,
        }
    }

    /// The listener's codec: a frame ends only at FS CR, so an FS byte inside a field does not
    /// cut the message short.
    pub fn strict(max: usize) -> Self {
        MllpCodec {
            strict: true,
            ..Self::new(max)
        }
    }

    /// Whether a frame has started and not ended (what is left in `buf` after [`Decoder::decode`]
    /// returned `None`).
    pub fn in_frame(&self, buf: &BytesMut) -> bool {
        self.skipping.is_some() || buf.first() == Some(&VT)
    }

    /// Whether the frame so far ends with an FS that waits for its CR.
    pub fn awaiting_cr(&self, buf: &BytesMut) -> bool {
        self.strict && self.in_frame(buf) && buf.last() == Some(&FS)
    }

    /// Ends a frame whose FS never got its CR (see [`MllpCodec::awaiting_cr`]): the frame as
    /// received, for a NAK and quarantine.
    pub fn take_unterminated(&mut self, buf: &mut BytesMut) -> Option<Frame> {
        if !self.awaiting_cr(buf) {
            return None;
        }
        self.scanned = 0;
        if let Some(seen) = self.skipping.take() {
            buf.clear();
            return Some(Frame::TooLong(seen));
        }
        let body = buf[1..buf.len() - 1].to_vec();
        buf.clear();
        Some(Frame::Unterminated(body))
    }

    fn find_end(&self, buf: &[u8], from: usize) -> End {
        let mut k = from;
        while let Some(p) = buf.get(k..).and_then(|b| b.iter().position(|&b| b == FS)) {
            let i = k + p;
            match buf.get(i + 1) {
                Some(&CR) => return End::Found(i, 2),
                _ if !self.strict => return End::Found(i, 1),
                Some(_) => k = i + 1,
                None => return End::Pending(i),
            }
        }
        End::NotYet
    }
}

impl Decoder for MllpCodec {
    type Item = Frame;
    type Error = std::io::Error;

    fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Frame>, Self::Error> {
        loop {
            if let Some(seen) = self.skipping {
                match self.find_end(buf, 0) {
                    End::Found(i, len) => {
                        buf.advance(i + len);
                        self.skipping = None;
                        self.scanned = 0;
                        return Ok(Some(Frame::TooLong(seen + i)));
                    }
                    End::Pending(i) => {
                        // Keep the FS: the next byte says whether the frame ended.
                        self.skipping = Some(seen + i);
                        buf.advance(i);
                        return Ok(None);
                    }
                    End::NotYet => {
                        self.skipping = Some(seen + buf.len());
                        buf.clear();
                        return Ok(None);
                    }
                }
            }
            // Anything before a start block is line noise between frames.
            match buf.iter().position(|&b| b == VT) {
                Some(0) => {}
                Some(i) => {
                    buf.advance(i);
                    self.scanned = 0;
                }
                None => {
                    buf.clear();
                    self.scanned = 0;
                    return Ok(None);
                }
            }
            match self.find_end(buf, self.scanned.max(1)) {
                End::Found(i, len) if i - 1 <= self.max => {
                    let body = buf[1..i].to_vec();
                    buf.advance(i + len);
                    self.scanned = 0;
                    return Ok(Some(Frame::Message(body)));
                }
                End::Found(..) => {
                    self.skipping = Some(0);
                    self.scanned = 0;
                    buf.advance(1);
                    continue;
                }
                End::Pending(i) if i - 1 > self.max => {
                    self.skipping = Some(i - 1);
                    self.scanned = 0;
                    buf.advance(i);
                    return Ok(None);
                }
                End::Pending(i) => {
                    self.scanned = i;
                    return Ok(None);
                }
                End::NotYet if buf.len() - 1 > self.max => {
                    self.skipping = Some(buf.len() - 1);
                    self.scanned = 0;
                    buf.clear();
                    return Ok(None);
                }
                End::NotYet => {
                    self.scanned = buf.len();
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
    let mut codec = MllpCodec::new(MAX_ANSWER_BYTES);
    let mut out = BytesMut::new();
    codec.encode(message, &mut out)?;
    stream.write_all(&out).await?;
    // A TLS stream holds records until flushed (a no-op on plain TCP).
    stream.flush().await?;
    let mut buf = BytesMut::with_capacity(4096);
    loop {
        match codec.decode(&mut buf)? {
            Some(Frame::Message(answer)) => return Ok(answer),
            Some(_) => {
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

/// The quarantine quota: asked before the raw bytes of a rejected message from `source` go to
/// the [`MessageSink`], so that a hostile sender cannot fill the disk. `false` means over the
/// quota: the message is answered (AE / AR as usual) but not stored, and the gate counts it.
#[async_trait::async_trait]
pub trait QuarantineGate: Send + Sync + 'static {
    async fn admit(&self, source: IpAddr, bytes: usize) -> bool;
}

/// Watches the answers: `acked` is called once an ACK is written, with its MSA-1 code (`AA`,
/// `AE`, `AR`; `CA`... in enhanced mode) and the time from the complete frame to the written
/// ACK, which includes the commit that precedes every ACK.
pub trait AckObserver: Send + Sync + 'static {
    fn acked(&self, feed: &str, code: &str, elapsed: Duration);
}

/// The MSA-1 code of an ACK message (empty when it has none).
fn ack_code(ack: &str) -> &str {
    ack.split(['\r', '\n'])
        .find_map(|seg| seg.strip_prefix("MSA"))
        .and_then(|rest| {
            let mut fields = rest.get(1..)?.split(rest.get(..1)?);
            fields.next()
        })
        .unwrap_or_default()
}

/// Listener settings.
#[derive(Clone)]
pub struct ListenerOptions {
    /// The feed's name, for logs.
    pub feed: String,
    pub max_message_bytes: usize,
    /// Connections served at once; more are closed as soon as they are accepted.
    pub max_connections: usize,
    /// A frame must be complete this long after its first byte, whatever arrives meanwhile, or
    /// the connection is closed (a stalled or dribbling sender cannot hold a slot).
    pub frame_timeout: Duration,
    /// A connection on which no frame starts for this long is closed (noise without a start
    /// byte does not count as activity). Interface engines reconnect when they next send.
    pub idle_timeout: Duration,
    /// An ACK must be written (into the socket buffer) within this time, or the connection is
    /// dropped: a client that never reads its ACKs cannot hold a slot.
    pub write_timeout: Duration,
    /// Connections one source address may hold at once.
    pub max_connections_per_source: usize,
    /// Source networks that may connect; empty: any.
    pub allow_from: Vec<Network>,
    /// Source networks that may use the last [`ListenerOptions::reserved_connections`] slots.
    pub reserved_for: Vec<Network>,
    /// Slots of `max_connections` kept for `reserved_for`.
    pub reserved_connections: usize,
    /// How much structure one message may have (checked before it is parsed).
    pub limits: ParseLimits,
    /// Longest a message's parse may take; beyond it the answer is AR and the raw quarantined.
    pub parse_budget: Duration,
    /// Messages parsed at once (threads of the blocking pool); more wait their turn in order.
    pub parse_workers: usize,
    /// How long an FS at the end of what was received waits for its CR before the frame is
    /// answered AR as unterminated.
    pub end_grace: Duration,
    /// The quarantine quota, if any.
    pub quarantine_gate: Option<Arc<dyn QuarantineGate>>,
    /// Told of every ACK written (for the service's latency histograms), if any.
    pub observer: Option<Arc<dyn AckObserver>>,
    /// TLS: when set, every connection completes a TLS handshake (with a client certificate the
    /// configured CA signed, under mutual TLS) before its first frame is read.
    pub tls: Option<medrelay_listener::ServerTls>,
}

impl std::fmt::Debug for ListenerOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ListenerOptions")
            .field("feed", &self.feed)
            .field("max_message_bytes", &self.max_message_bytes)
            .field("max_connections", &self.max_connections)
            .field("frame_timeout", &self.frame_timeout)
            .field("idle_timeout", &self.idle_timeout)
            .field("write_timeout", &self.write_timeout)
            .field(
                "max_connections_per_source",
                &self.max_connections_per_source,
            )
            .field("allow_from", &self.allow_from)
            .field("reserved_for", &self.reserved_for)
            .field("reserved_connections", &self.reserved_connections)
            .field("limits", &self.limits)
            .field("parse_budget", &self.parse_budget)
            .field("parse_workers", &self.parse_workers)
            .field("quarantine_gate", &self.quarantine_gate.is_some())
            .field("observer", &self.observer.is_some())
            .field("tls", &self.tls.as_ref().map(|t| t.mutual()))
            .finish_non_exhaustive()
    }
}

impl ListenerOptions {
    /// The defaults: 1 MiB frames, 32 connections (8 per source address, any address, none
    /// reserved), 60 s to finish a frame, 300 s idle, 10 s to write an ACK, the default parse
    /// limits, 5 s per parse on up to 4 threads.
    pub fn new(feed: &str) -> Self {
        ListenerOptions {
            feed: feed.to_owned(),
            max_message_bytes: 1024 * 1024,
            max_connections: 32,
            frame_timeout: Duration::from_secs(60),
            idle_timeout: Duration::from_secs(300),
            write_timeout: Duration::from_secs(10),
            max_connections_per_source: 8,
            allow_from: Vec::new(),
            reserved_for: Vec::new(),
            reserved_connections: 0,
            limits: ParseLimits::DEFAULT,
            parse_budget: Duration::from_secs(5),
            parse_workers: std::thread::available_parallelism()
                .map_or(2, |n| n.get())
                .clamp(2, 4),
            end_grace: Duration::from_secs(1),
            quarantine_gate: None,
            observer: None,
            tls: None,
        }
    }
}

/// Counts events of one kind and says which to log (the 1st, 2nd, 4th, 8th... and every 1000th),
/// so that a flood of hostile connections cannot flood the log.
#[derive(Default)]
struct LogSome(AtomicU64);

impl LogSome {
    fn tick(&self) -> Option<u64> {
        let n = self.0.fetch_add(1, AtomicOrdering::Relaxed) + 1;
        (n.is_power_of_two() || n.is_multiple_of(1000)).then_some(n)
    }
}

/// Why a connection was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Refusal {
    NotAllowed,
    SourceLimit,
    Full,
}

/// Connection slots: in total, per source address, and the reserved ones.
struct Slots {
    max: usize,
    reserved: usize,
    per_source: usize,
    state: std::sync::Mutex<SlotState>,
}

#[derive(Default)]
struct SlotState {
    total: usize,
    by_source: HashMap<IpAddr, usize>,
}

/// A held connection slot, given back when dropped.
struct Slot {
    slots: Arc<Slots>,
    ip: IpAddr,
}

impl Slots {
    fn lock(&self) -> std::sync::MutexGuard<'_, SlotState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A slot for a connection from `ip` (`reserved`: it may use the reserved slots).
    fn take(self: &Arc<Self>, ip: IpAddr, reserved: bool) -> Result<Slot, Refusal> {
        let mut s = self.lock();
        let mine = s.by_source.get(&ip).copied().unwrap_or(0);
        if mine >= self.per_source {
            return Err(Refusal::SourceLimit);
        }
        let open_to_all = self.max.saturating_sub(self.reserved);
        if s.total >= self.max || (!reserved && s.total >= open_to_all) {
            return Err(Refusal::Full);
        }
        s.total += 1;
        *s.by_source.entry(ip).or_insert(0) += 1;
        Ok(Slot {
            slots: self.clone(),
            ip,
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut s = self.slots.lock();
        s.total = s.total.saturating_sub(1);
        if let Some(n) = s.by_source.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                s.by_source.remove(&self.ip);
            }
        }
    }
}

/// Everything a connection task needs.
struct Served {
    opts: Arc<Hl7Options>,
    listener: ListenerOptions,
    sink: Arc<dyn MessageSink>,
    now: Arc<dyn Fn() -> Timestamp + Send + Sync>,
    parsers: Arc<Semaphore>,
    slots: Arc<Slots>,
    refused: [LogSome; 3],
    over_quota: LogSome,
    handshakes_failed: LogSome,
}

/// A rejected message that was not (fully) parsed: its header from the MSH line alone.
fn rejected(raw: &[u8], e: Hl7Error) -> Processed {
    Processed {
        header: header_only(raw),
        outcome: Outcome::Rejected(e),
    }
}

/// Parses a message on the blocking pool (at most `parse_workers` at once, in arrival order),
/// held to the parse limits first and to the time budget: a parse that takes longer is answered
/// AR (its thread finishes on its own, still holding its pool slot, so the pool stays bounded).
async fn parse(served: &Served, raw: &Arc<Vec<u8>>, arrival: crate::Arrival) -> Processed {
    let l = &served.listener;
    let budget = l.parse_budget;
    let Ok(permit) = served.parsers.clone().acquire_owned().await else {
        return rejected(
            raw,
            Hl7Error::reject(
                ErrorCode::ApplicationInternal,
                None,
                "the listener is stopping",
            ),
        );
    };
    let job = tokio::task::spawn_blocking({
        let (raw, opts, limits) = (raw.clone(), served.opts.clone(), l.limits);
        move || {
            let _permit = permit;
            let started = Instant::now();
            let processed = match crate::limits::check(&raw, &limits) {
                Err(e) => rejected(&raw, e),
                Ok(()) => process(&raw, &opts, arrival, "mllp"),
            };
            (processed, started.elapsed())
        }
    });
    match tokio::time::timeout(budget, job).await {
        Ok(Ok((processed, took))) if took <= budget => processed,
        Ok(Ok(_)) | Err(_) => {
            tracing::warn!(feed = %l.feed, bytes = raw.len(), "HL7 message over the parse budget rejected (AR)");
            rejected(
                raw,
                Hl7Error::reject(
                    ErrorCode::ApplicationInternal,
                    None,
                    format!(
                        "the message took longer to read than this interface allows (parse_budget_ms = {})",
                        budget.as_millis()
                    ),
                ),
            )
        }
        Ok(Err(e)) => {
            tracing::error!(feed = %l.feed, panicked = e.is_panic(), "HL7 message processing failed; answering AR");
            rejected(
                raw,
                Hl7Error::reject(
                    ErrorCode::ApplicationInternal,
                    None,
                    "the message could not be processed",
                ),
            )
        }
    }
}

/// The answer to one frame, after the sink has stored what needs storing (and the quarantine
/// quota allowed it): one ACK, or in the enhanced acknowledgment mode the frames the sender's
/// MSH-15 / MSH-16 ask for (possibly none; see [`Processed::answers`]).
async fn respond(served: &Served, frame: Frame, peer: IpAddr) -> Vec<String> {
    let now = (served.now)();
    let feed = served.listener.feed.as_str();
    let (mut processed, raw) = match frame {
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
            return vec![crate::ack::build(None, e.ack, Some(&e), &served.opts, now)];
        }
        Frame::Unterminated(raw) => {
            let e = Hl7Error::reject(
                ErrorCode::SegmentSequence,
                None,
                "the frame's end block (FS) is not followed by CR, so where the message ends is unknown",
            );
            (rejected(&raw, e), Arc::new(raw))
        }
        Frame::Message(raw) => {
            // The receive order, taken before the parse (which runs on another thread).
            let arrival = crate::Arrival::received(now);
            let raw = Arc::new(raw);
            (parse(served, &raw, arrival).await, raw)
        }
    };
    // Where the event came from: the MLLP message's control id (an id, never patient data).
    if let (Outcome::Event(e), Some(h)) = (&mut processed.outcome, &processed.header) {
        *e.raw_ref_mut() = format!("mllp MSH-10 {}", h.control_id.trim());
    }
    let control_id = processed.header.as_ref().map(|h| h.control_id.as_str());
    let kept = match (&processed.outcome, &served.listener.quarantine_gate) {
        (Outcome::Rejected(_), Some(gate)) => gate.admit(peer, raw.len()).await,
        _ => true,
    };
    let stored = if !kept {
        if let Some(n) = served.over_quota.tick() {
            tracing::warn!(feed, %peer, dropped = n, "quarantine quota reached: rejected message answered but not kept");
        }
        true
    } else {
        match served.sink.store(&processed, &raw).await {
            Ok(()) => true,
            Err(e) => {
                tracing::error!(feed, error = %e, "HL7 message not stored; answering AR so it is resent");
                false
            }
        }
    };
    if let Outcome::Rejected(e) = &processed.outcome {
        if kept {
            tracing::warn!(feed, control_id, error = %e, "HL7 message quarantined");
        } else {
            tracing::debug!(feed, control_id, error = %e, "HL7 message rejected, not kept (quarantine quota)");
        }
    } else if let Outcome::Ignored(why) = &processed.outcome {
        tracing::info!(feed, control_id, why, "HL7 message ignored");
    } else {
        tracing::debug!(feed, control_id, "HL7 message accepted");
    }
    processed.answers(stored, &served.opts, now)
}

/// Writes every answer frame of one message, each in one write; false when the connection failed.
async fn send_answers<S>(
    stream: &mut S,
    answers: &[String],
    served: &Served,
    peer: SocketAddr,
    complete: Instant,
) -> bool
where
    S: tokio::io::AsyncWrite + Unpin,
{
    let l = &served.listener;
    for ack in answers {
        if !send_ack(stream, ack, l, peer).await {
            return false;
        }
    }
    if let Some(o) = &l.observer {
        let code = answers.first().map_or("none", |a| ack_code(a));
        o.acked(&l.feed, code, complete.elapsed());
    }
    true
}

/// Read buffers start (and are given back to) this size.
const READ_CHUNK: usize = 8 * 1024;

/// After a frame of `frame_len` bytes: a buffer that grew for a large message is replaced by a
/// small one (what is left of it copied), so that an idle connection does not keep the peak
/// capacity; then room for the next read.
fn prepare_read(buf: &mut BytesMut, frame_len: usize) {
    if frame_len > 8 * READ_CHUNK && buf.len() <= READ_CHUNK {
        let mut small = BytesMut::with_capacity(READ_CHUNK);
        small.extend_from_slice(buf);
        *buf = small;
    }
    buf.reserve(READ_CHUNK);
}

/// Writes one ACK frame in one write, within the write timeout.
async fn send_ack<S>(stream: &mut S, ack: &str, l: &ListenerOptions, peer: SocketAddr) -> bool
where
    S: tokio::io::AsyncWrite + Unpin,
{
    let mut out = BytesMut::with_capacity(ack.len() + 3);
    let _ = MllpCodec::new(0).encode(ack, &mut out);
    let write = async {
        stream.write_all(&out).await?;
        // A TLS stream holds records until flushed (a no-op on plain TCP).
        stream.flush().await
    };
    match tokio::time::timeout(l.write_timeout, write).await {
        Ok(Ok(())) => true,
        Ok(Err(e)) => {
            tracing::warn!(feed = %l.feed, %peer, error = %e, "could not send the ACK");
            false
        }
        Err(_) => {
            tracing::warn!(feed = %l.feed, %peer, "ACK not taken by the client in time (write_timeout); connection closed");
            false
        }
    }
}

async fn connection<S>(mut stream: S, peer: SocketAddr, served: Arc<Served>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let l = &served.listener;
    let mut codec = MllpCodec::strict(l.max_message_bytes);
    let mut buf = BytesMut::with_capacity(READ_CHUNK);
    // No frame started since then: the idle deadline counts from here.
    let mut idle_since = Instant::now();
    // The current frame's first byte arrived then: its deadline counts from here, fixed.
    let mut frame_started: Option<Instant> = None;
    // The frame so far has ended with an FS (waiting for its CR) since then.
    let mut fs_since: Option<Instant> = None;
    loop {
        // Answer every complete frame already received, in order.
        loop {
            let frame = match codec.decode(&mut buf) {
                Ok(Some(f)) => f,
                Ok(None) => break,
                Err(e) => {
                    tracing::warn!(feed = %l.feed, %peer, error = %e, "MLLP connection error");
                    return;
                }
            };
            let frame_len = match &frame {
                Frame::Message(b) | Frame::Unterminated(b) => b.len(),
                Frame::TooLong(n) => *n,
            };
            let complete = Instant::now();
            let answers = respond(&served, frame, peer.ip().to_canonical()).await;
            if !send_answers(&mut stream, &answers, &served, peer, complete).await {
                return;
            }
            prepare_read(&mut buf, frame_len);
            frame_started = None;
            fs_since = None;
            idle_since = Instant::now();
        }
        let now = Instant::now();
        if codec.in_frame(&buf) {
            frame_started.get_or_insert(now);
        }
        if codec.awaiting_cr(&buf) {
            fs_since.get_or_insert(now);
        } else {
            fs_since = None;
        }
        let deadline = match frame_started {
            Some(t) => t + l.frame_timeout,
            None => idle_since + l.idle_timeout,
        };
        let grace = fs_since.map(|t| t + l.end_grace).filter(|g| *g < deadline);
        buf.reserve(READ_CHUNK);
        let read =
            tokio::time::timeout_at(grace.unwrap_or(deadline).into(), stream.read_buf(&mut buf))
                .await;
        match read {
            Ok(Ok(0)) => return,
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                tracing::debug!(feed = %l.feed, %peer, error = %e, "MLLP connection closed by an error");
                return;
            }
            Err(_) if grace.is_some() => {
                let Some(frame) = codec.take_unterminated(&mut buf) else {
                    continue;
                };
                tracing::warn!(feed = %l.feed, %peer, "MLLP frame ended with FS but no CR; answered AR");
                let complete = Instant::now();
                let answers = respond(&served, frame, peer.ip().to_canonical()).await;
                if !send_answers(&mut stream, &answers, &served, peer, complete).await {
                    return;
                }
                prepare_read(&mut buf, usize::MAX);
                frame_started = None;
                fs_since = None;
                idle_since = Instant::now();
            }
            Err(_) if frame_started.is_some() => {
                tracing::warn!(feed = %l.feed, %peer, "MLLP frame not completed in time (frame_timeout); connection closed");
                return;
            }
            Err(_) => {
                tracing::info!(feed = %l.feed, %peer, "MLLP connection idle (idle_timeout); closed");
                return;
            }
        }
    }
}

/// Serves MLLP on `listener` until the task is dropped; one task per admitted connection.
pub async fn serve(
    listener: TcpListener,
    opts: Arc<Hl7Options>,
    listener_opts: ListenerOptions,
    sink: Arc<dyn MessageSink>,
    now: Arc<dyn Fn() -> Timestamp + Send + Sync>,
) -> std::io::Result<()> {
    let served = Arc::new(Served {
        slots: Arc::new(Slots {
            max: listener_opts.max_connections.max(1),
            reserved: listener_opts.reserved_connections,
            per_source: listener_opts.max_connections_per_source.max(1),
            state: Default::default(),
        }),
        parsers: Arc::new(Semaphore::new(listener_opts.parse_workers.max(1))),
        opts,
        listener: listener_opts,
        sink,
        now,
        refused: Default::default(),
        over_quota: LogSome::default(),
        handshakes_failed: LogSome::default(),
    });
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(c) => c,
            // Out of file descriptors, a connection reset before accept: transient, keep serving.
            Err(e) => {
                tracing::warn!(feed = %served.listener.feed, error = %e, "MLLP accept failed; retrying");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let ip = peer.ip().to_canonical();
        let l = &served.listener;
        let admitted = if !l.allow_from.is_empty() && !Network::any_contains(&l.allow_from, ip) {
            Err(Refusal::NotAllowed)
        } else {
            served
                .slots
                .take(ip, Network::any_contains(&l.reserved_for, ip))
        };
        let slot = match admitted {
            Ok(slot) => slot,
            Err(why) => {
                // Closed at once: nothing of it is read, and it holds nothing.
                drop(stream);
                let (i, text) = match why {
                    Refusal::NotAllowed => (0, "MLLP connection from outside allow_from refused"),
                    Refusal::SourceLimit => (
                        1,
                        "MLLP connection refused: this source holds max_connections_per_source",
                    ),
                    Refusal::Full => (2, "MLLP connection refused: max_connections reached"),
                };
                if let Some(n) = served.refused[i].tick() {
                    tracing::warn!(feed = %l.feed, %peer, refused = n, "{text}");
                }
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let served = served.clone();
        tokio::spawn(async move {
            match served.listener.tls.clone() {
                None => connection(stream, peer, served).await,
                // The handshake holds the connection's slot, and has its own deadline.
                Some(tls) => match tls.accept(stream).await {
                    Ok(stream) => connection(stream, peer, served).await,
                    Err(e) => {
                        if let Some(n) = served.handshakes_failed.tick() {
                            tracing::warn!(feed = %served.listener.feed, %peer, refused = n, error = %e, "MLLP TLS handshake failed; connection closed");
                        }
                    }
                },
            }
            drop(slot);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    #[test]
    fn the_ack_code_is_msa_1_whatever_the_field_separator() {
        assert_eq!(
            ack_code("MSH|^~\\&|MEDRELAY|X|||20261202||ACK^S12|1|P|2.5\rMSA|AE|CTRL1\rERR|||207"),
            "AE"
        );
        assert_eq!(ack_code("MSH#^~\\&#A\rMSA#AA#9\r"), "AA");
        assert_eq!(ack_code("MSH|^~\\&|A"), "");
    }

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
        for mut c in [MllpCodec::new(100), MllpCodec::strict(100)] {
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
            if c.strict {
                assert_eq!(c.decode(&mut buf).unwrap(), None, "FS waits for its CR");
                assert!(c.awaiting_cr(&buf));
                buf.extend_from_slice(b"\r");
            }
            assert_eq!(
                c.decode(&mut buf).unwrap(),
                Some(Frame::Message(b"MSH|3\r".to_vec()))
            );
        }
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

    #[test]
    fn an_fs_not_followed_by_cr_does_not_end_the_frame() {
        let mut c = MllpCodec::strict(1000);
        let f = decode_all(&mut c, b"\x0bMSH|1\rPID|||9||Smi\x1cth\r\x1c\r");
        assert_eq!(f, [Frame::Message(b"MSH|1\rPID|||9||Smi\x1cth\r".to_vec())]);
        // Also when the FS arrives at the end of one read and the content in the next.
        let mut buf = BytesMut::from(&b"\x0bMSH|1\rPID|||9||Smi\x1c"[..]);
        assert_eq!(c.decode(&mut buf).unwrap(), None);
        buf.extend_from_slice(b"th\r\x1c\r");
        assert_eq!(
            c.decode(&mut buf).unwrap(),
            Some(Frame::Message(b"MSH|1\rPID|||9||Smi\x1cth\r".to_vec()))
        );
        // An FS that never gets its CR is taken as an unterminated frame, not a message.
        let mut buf = BytesMut::from(&b"\x0bMSH|2\x1c"[..]);
        assert_eq!(c.decode(&mut buf).unwrap(), None);
        assert_eq!(
            c.take_unterminated(&mut buf),
            Some(Frame::Unterminated(b"MSH|2".to_vec()))
        );
        assert!(buf.is_empty() && !c.in_frame(&buf));
    }

    #[test]
    fn a_frame_dribbled_byte_by_byte_is_scanned_once() {
        let mut c = MllpCodec::strict(1 << 20);
        let mut buf = BytesMut::from(&b"\x0b"[..]);
        for _ in 0..10_000 {
            buf.extend_from_slice(b"x");
            assert_eq!(c.decode(&mut buf).unwrap(), None);
            assert_eq!(
                c.scanned,
                buf.len(),
                "the next search starts where this one ended"
            );
        }
    }

    #[test]
    fn read_buffer_is_given_back_after_a_large_message() {
        let mut buf = BytesMut::with_capacity(READ_CHUNK);
        buf.extend_from_slice(&vec![b'x'; 1 << 20]);
        buf.advance(1 << 20);
        prepare_read(&mut buf, 1 << 20);
        assert!(buf.capacity() < 64 * 1024, "{}", buf.capacity());
        // A small frame keeps its buffer.
        let mut small = BytesMut::with_capacity(READ_CHUNK);
        let before = small.as_ptr();
        prepare_read(&mut small, 100);
        assert_eq!(small.as_ptr(), before);
    }

    #[test]
    fn slots_are_kept_for_reserved_sources_and_limited_per_source() {
        let slots = Arc::new(Slots {
            max: 4,
            reserved: 2,
            per_source: 2,
            state: Default::default(),
        });
        let ip = |n: u8| IpAddr::from([127, 0, 0, n]);
        let a1 = slots.take(ip(2), false).unwrap();
        let _a2 = slots.take(ip(2), false).unwrap();
        assert_eq!(slots.take(ip(2), false).err(), Some(Refusal::SourceLimit));
        assert_eq!(
            slots.take(ip(3), false).err(),
            Some(Refusal::Full),
            "2 are reserved"
        );
        let _e1 = slots.take(ip(1), true).unwrap();
        let _e2 = slots.take(ip(1), true).unwrap();
        assert_eq!(slots.take(ip(4), true).err(), Some(Refusal::Full));
        drop(a1);
        assert!(slots.take(ip(3), false).is_err(), "still full for others");
        assert!(slots.take(ip(4), true).is_ok());
    }
}
