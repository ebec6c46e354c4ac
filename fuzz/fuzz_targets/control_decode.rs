//! The control protocol decoder against arbitrary bytes, delivered in arbitrary pieces, as a
//! hostile client (to the daemon) or a hostile server (to the CLI) could send them.
//!
//! Checked besides "never panics": the decoder never buffers more than its bound while it waits
//! for the end of a line (the daemon's memory per connection), and whatever it accepts survives
//! an encode/decode round trip unchanged.

#![no_main]

use agentguard::control::{
    frame::{JsonLines, encode_line},
    proto::{Request, Response},
};
use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use serde::{Serialize, de::DeserializeOwned};
use tokio_util::codec::Decoder;

/// Small enough that inputs of a few KiB cross it; the logic does not depend on the value.
const MAX: usize = 512;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    // The low bits pick the piece size, so the same bytes arrive split in different places.
    let piece = usize::from(mode >> 1) + 1;
    if mode & 1 == 0 {
        feed::<Request>(rest, piece);
    } else {
        feed::<Response>(rest, piece);
    }
});

fn feed<T: DeserializeOwned + Serialize + PartialEq + std::fmt::Debug>(data: &[u8], piece: usize) {
    let mut codec = JsonLines::<T>::new(MAX);
    let mut buf = BytesMut::new();
    for chunk in data.chunks(piece) {
        buf.extend_from_slice(chunk);
        loop {
            match codec.decode(&mut buf) {
                Ok(Some(value)) => round_trip(&value),
                Ok(None) => {
                    assert!(
                        buf.len() <= MAX,
                        "decoder holds {} bytes of an unfinished line",
                        buf.len()
                    );
                    break;
                }
                // The server closes the connection on any error; so does the fuzz input.
                Err(_) => return,
            }
        }
    }
    if let Ok(Some(value)) = codec.decode_eof(&mut buf) {
        round_trip(&value);
    }
}

fn round_trip<T: DeserializeOwned + Serialize + PartialEq + std::fmt::Debug>(value: &T) {
    let Ok(mut line) = encode_line(value) else {
        panic!("a decoded value does not encode: {value:?}");
    };
    let mut codec = JsonLines::<T>::new(usize::MAX);
    match codec.decode(&mut line) {
        Ok(Some(again)) => assert_eq!(&again, value, "round trip changed the value"),
        other => panic!("an encoded value does not decode: {value:?} -> {other:?}"),
    }
}
