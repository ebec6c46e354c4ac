//! Framing of the control protocol: one JSON object per line, each line at most a fixed number of
//! bytes. Both ends decode through [`JsonLines`], so neither the daemon nor a client ever holds
//! more than one maximal frame (plus one read) of a peer's bytes, whatever the peer sends.
//!
//! The line splitting and the length bound are tokio-util's `LinesCodec`; this module adds the
//! JSON layer and errors that say which bound was hit.

use std::{io, marker::PhantomData};

use bytes::BytesMut;
use serde::{Serialize, de::DeserializeOwned};
use tokio_util::codec::{Decoder, Encoder, LinesCodec, LinesCodecError};

/// Longest request line on the agent socket. Agent requests name an agent and nothing more; a
/// few hundred bytes suffice.
pub const MAX_AGENT_REQUEST: usize = 64 * 1024;

/// Longest request line on the administrator socket. `policy apply` carries the whole policy
/// text, and a policy of 10,000 rules is a few hundred KiB once JSON-escaped.
pub const MAX_ADMIN_REQUEST: usize = 8 * 1024 * 1024;

/// Longest reply line a client accepts (`status` lists every instance and its processes).
pub const MAX_REPLY: usize = 16 * 1024 * 1024;

/// Why a frame could not be decoded. After any of these the connection is closed: the stream
/// is no longer in a known state.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The peer sent more than `max` bytes without ending the line.
    #[error("message longer than {max} bytes")]
    TooLong {
        /// The bound.
        max: usize,
    },
    /// The line is not UTF-8, or the stream failed.
    #[error("cannot read the message: {0}")]
    Io(#[from] io::Error),
    /// The line is not a JSON message of the expected shape.
    #[error("malformed message: {0}")]
    Malformed(#[source] serde_json::Error),
    /// The message could not be encoded (a bug: every protocol type serializes).
    #[error("cannot encode the message: {0}")]
    Encode(#[source] serde_json::Error),
}

/// A codec for JSON lines: decodes `In` values, encodes any serializable value as one line.
#[derive(Debug)]
pub struct JsonLines<In> {
    lines: LinesCodec,
    max: usize,
    _in: PhantomData<fn() -> In>,
}

impl<In> JsonLines<In> {
    /// A codec refusing lines longer than `max` bytes.
    pub fn new(max: usize) -> Self {
        Self {
            lines: LinesCodec::new_with_max_length(max),
            max,
            _in: PhantomData,
        }
    }

    /// The bound given to [`JsonLines::new`].
    pub fn max_length(&self) -> usize {
        self.max
    }

    fn lift(&self, e: LinesCodecError) -> FrameError {
        match e {
            LinesCodecError::MaxLineLengthExceeded => FrameError::TooLong { max: self.max },
            LinesCodecError::Io(e) => FrameError::Io(e),
        }
    }

    fn parse(line: Option<String>) -> Result<Option<In>, FrameError>
    where
        In: DeserializeOwned,
    {
        line.map(|l| serde_json::from_str(&l).map_err(FrameError::Malformed))
            .transpose()
    }
}

impl<In: DeserializeOwned> Decoder for JsonLines<In> {
    type Item = In;
    type Error = FrameError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<In>, FrameError> {
        let line = self.lines.decode(src).map_err(|e| self.lift(e))?;
        Self::parse(line)
    }

    fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<In>, FrameError> {
        let line = self.lines.decode_eof(src).map_err(|e| self.lift(e))?;
        Self::parse(line)
    }
}

impl<In, Out: Serialize> Encoder<&Out> for JsonLines<In> {
    type Error = FrameError;

    fn encode(&mut self, item: &Out, dst: &mut BytesMut) -> Result<(), FrameError> {
        let text = serde_json::to_string(item).map_err(FrameError::Encode)?;
        dst.reserve(text.len() + 1);
        dst.extend_from_slice(text.as_bytes());
        dst.extend_from_slice(b"\n");
        Ok(())
    }
}

/// Encodes one value as a line (for the blocking client and for refusals written without a
/// codec at hand).
pub fn encode_line<T: Serialize>(item: &T) -> Result<BytesMut, FrameError> {
    let mut out = BytesMut::new();
    JsonLines::<()>::new(usize::MAX).encode(item, &mut out)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::proto::{Request, Response};

    #[test]
    fn decodes_split_lines() -> Result<(), FrameError> {
        let mut codec = JsonLines::<Request>::new(MAX_AGENT_REQUEST);
        let mut buf = BytesMut::from(&br#"{"op":"pi"#[..]);
        assert!(codec.decode(&mut buf)?.is_none());
        buf.extend_from_slice(b"ng\"}\n{\"op\":\"status\"}\n");
        assert_eq!(codec.decode(&mut buf)?, Some(Request::Ping));
        assert_eq!(codec.decode(&mut buf)?, Some(Request::Status));
        assert!(codec.decode(&mut buf)?.is_none());
        Ok(())
    }

    #[test]
    fn an_endless_line_is_refused_at_the_bound() {
        let mut codec = JsonLines::<Request>::new(16);
        let mut buf = BytesMut::from(&[b'a'; 16][..]);
        assert!(matches!(codec.decode(&mut buf), Ok(None)));
        buf.extend_from_slice(b"a");
        assert!(matches!(
            codec.decode(&mut buf),
            Err(FrameError::TooLong { max: 16 })
        ));
    }

    #[test]
    fn garbage_and_bad_utf8_are_errors() {
        let mut codec = JsonLines::<Request>::new(64);
        let mut buf = BytesMut::from(&b"{\"op\":\"launch-missiles\"}\n"[..]);
        assert!(matches!(
            codec.decode(&mut buf),
            Err(FrameError::Malformed(_))
        ));
        let mut codec = JsonLines::<Request>::new(64);
        let mut buf = BytesMut::from(&b"\xff\xfe\n"[..]);
        assert!(matches!(codec.decode(&mut buf), Err(FrameError::Io(_))));
    }

    #[test]
    fn round_trip() -> Result<(), FrameError> {
        let line = encode_line(&Response::Error("no".into()))?;
        assert_eq!(&line[..], b"{\"error\":\"no\"}\n");
        let mut codec = JsonLines::<Response>::new(MAX_REPLY);
        let mut buf = line;
        assert_eq!(codec.decode(&mut buf)?, Some(Response::Error("no".into())));
        Ok(())
    }
}
