//! `FrameDecoder` fed arbitrary bytes in arbitrary chunking.
//!
//! Invariants: no panic; `buffered()` never above the frame limit (or the
//! 9-byte prefix), `allocated()` never above the frame limit, and nothing
//! allocated when an oversized frame is refused; decoding in chunks gives
//! the same frames, the same error at the same byte as decoding in one go;
//! a reader that takes no more than `bytes_wanted()` never leaves bytes
//! behind; well-formed frames come back exactly.
#![no_main]

use arbitrary::Arbitrary;
use dcutr_core::wire::{CodecError, FrameDecoder};
use libfuzzer_sys::fuzz_target;

/// The longest varint prefix the decoder keeps.
const MAX_PREFIX_LEN: usize = 9;

#[derive(Arbitrary, Debug)]
enum Segment {
    /// A correctly length-prefixed frame with this payload.
    Frame(Vec<u8>),
    /// Raw bytes.
    Raw(Vec<u8>),
}

#[derive(Arbitrary, Debug)]
struct Case {
    max_frame: u16,
    segments: Vec<Segment>,
    chunks: Vec<u8>,
}

fn varint(mut n: usize, out: &mut Vec<u8>) {
    while n >= 0x80 {
        out.push((n as u8) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

/// What decoding produced: the frames, then the error and the number of
/// bytes consumed when it struck (if it did).
#[derive(Debug, PartialEq, Eq)]
struct Decoded {
    frames: Vec<Vec<u8>>,
    error: Option<(CodecError, usize)>,
}

fn check_bounds(d: &FrameDecoder, max_frame: usize) {
    assert!(
        d.buffered() <= max_frame.max(MAX_PREFIX_LEN),
        "buffered {} with a limit of {max_frame}",
        d.buffered()
    );
    assert!(
        d.allocated() <= max_frame,
        "allocated {} with a limit of {max_frame}",
        d.allocated()
    );
    assert!(d.bytes_wanted() >= 1, "a decoder always wants a byte");
    assert!(d.bytes_wanted() <= max_frame.max(1));
}

/// Feeds `stream` in pieces chosen by `next_len` (given the decoder).
fn decode(
    stream: &[u8],
    max_frame: usize,
    mut next_len: impl FnMut(&FrameDecoder) -> usize,
    single_call: bool,
) -> Decoded {
    let mut d = FrameDecoder::new(max_frame);
    let mut out = Decoded {
        frames: Vec::new(),
        error: None,
    };
    let mut pos = 0;
    while pos < stream.len() {
        let len = next_len(&d).clamp(1, stream.len() - pos);
        let piece = &stream[pos..pos + len];
        let mut input = piece;
        while !input.is_empty() {
            let before = input.len();
            match d.decode(&mut input) {
                Ok(Some(frame)) => {
                    assert!(frame.len() <= max_frame, "frame above the limit");
                    out.frames.push(frame);
                }
                Ok(None) => assert!(input.is_empty(), "Ok(None) with input left"),
                Err(err) => {
                    let consumed = pos + (piece.len() - input.len());
                    if let CodecError::FrameTooLarge { len, max } = &err {
                        assert!(*len > max_frame as u64 && *max == max_frame);
                        assert_eq!(d.allocated(), 0, "allocated for an oversized frame");
                    }
                    assert!(d.buffered() <= MAX_PREFIX_LEN.max(max_frame));
                    out.error = Some((err, consumed));
                    return out;
                }
            }
            assert!(input.len() < before, "no progress");
            check_bounds(&d, max_frame);
            if single_call {
                assert!(input.is_empty(), "bytes_wanted() reached past a frame");
            }
        }
        pos += len;
    }
    out
}

fuzz_target!(|case: Case| {
    let max_frame = usize::from(case.max_frame);
    let mut stream = Vec::new();
    let mut expected = Vec::new();
    let mut all_valid = true;
    for seg in &case.segments {
        match seg {
            Segment::Frame(payload) => {
                varint(payload.len(), &mut stream);
                stream.extend_from_slice(payload);
                all_valid &= payload.len() <= max_frame;
                expected.push(payload.clone());
            }
            Segment::Raw(raw) => {
                stream.extend_from_slice(raw);
                all_valid &= raw.is_empty();
            }
        }
    }

    let one_shot = decode(&stream, max_frame, |_| usize::MAX, false);
    let mut chunks = case.chunks.iter().cycle();
    let chunked = decode(
        &stream,
        max_frame,
        |_| chunks.next().map_or(usize::MAX, |c| usize::from(*c)),
        false,
    );
    assert_eq!(one_shot, chunked, "decoding depends on the chunking");
    let careful = decode(&stream, max_frame, FrameDecoder::bytes_wanted, true);
    assert_eq!(
        one_shot, careful,
        "reading bytes_wanted() changes the result"
    );
    if all_valid {
        assert_eq!(one_shot.error, None);
        assert_eq!(one_shot.frames, expected, "well-formed frames come back");
    }
});
