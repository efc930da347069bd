//! Feeds arbitrary bytes to the frame decoder, whole and in pieces: it must never panic and never
//! reserve more than its limit.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use phalanx::protocol::codec::{Codec, FrameDecoder};

fuzz_target!(|data: &[u8]| {
    let codec = Codec::new(64 * 1024);
    let _ = codec.decode_frame(data);
    let mut decoder = FrameDecoder::new(codec);
    let mut buf = BytesMut::new();
    for piece in data.chunks(7) {
        buf.extend_from_slice(piece);
        loop {
            match decoder.decode(&mut buf) {
                Ok(Some(packet)) => {
                    // Whatever decodes must encode again.
                    let _ = codec.encode(&packet);
                }
                Ok(None) => break,
                Err(_) => return,
            }
        }
        assert!(buf.capacity() <= 64 * 1024 + 4 + data.len() + 64);
    }
});
