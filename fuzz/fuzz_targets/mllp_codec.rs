//! The MLLP decoder on arbitrary bytes, fed in the chunks a TCP peer might choose.
//!
//! Properties: no panic; the frames do not depend on how the bytes were split (the first byte picks
//! the split points); a message frame never holds the end byte and never exceeds the limit; a
//! message framed by our encoder decodes to itself.

#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use medrelay_connector_hl7v2::mllp::{Frame, MllpCodec};
use tokio_util::codec::{Decoder, Encoder};

/// A small limit so that the fuzzer reaches the over-the-limit paths with short inputs.
const MAX: usize = 64;

fn decode_all(chunks: &[&[u8]]) -> Vec<Frame> {
    let mut codec = MllpCodec::new(MAX);
    let mut buf = BytesMut::new();
    let mut frames = Vec::new();
    for chunk in chunks {
        buf.extend_from_slice(chunk);
        while let Some(frame) = codec.decode(&mut buf).expect("the decoder never fails") {
            frames.push(frame);
        }
    }
    frames
}

fuzz_target!(|data: &[u8]| {
    let Some((&split, input)) = data.split_first() else {
        return;
    };
    let whole = decode_all(&[input]);
    // Split points every `step` bytes (1..=16), as a slow peer would send them.
    let step = usize::from(split % 16) + 1;
    let chunks: Vec<&[u8]> = input.chunks(step).collect();
    let chunked = decode_all(&chunks);
    assert_eq!(whole, chunked, "frames depend on how the bytes were split");
    for frame in &whole {
        if let Frame::Message(m) = frame {
            assert!(m.len() <= MAX, "a frame over the limit was returned");
            assert!(!m.contains(&0x1c), "a frame holds the end byte");
        }
    }
    // Round trip: our own framing of a valid message decodes to exactly that message.
    if input.len() <= MAX && !input.contains(&0x1c) {
        let mut codec = MllpCodec::new(MAX);
        let mut out = BytesMut::new();
        codec.encode(input, &mut out).expect("encoding never fails");
        let frames = decode_all(&[&out]);
        assert_eq!(frames, vec![Frame::Message(input.to_vec())]);
    }
});
