//! Frames: a small bincode header plus an opaque payload.
//!
//! Wire layout of one frame (all integers little-endian):
//!
//! ```text
//! u32 header_len | u32 payload_len | header (bincode, header_len bytes) | payload (payload_len bytes)
//! ```
//!
//! Both lengths come first, in a fixed 8-byte prefix, so a reader checks both against its
//! [`Limits`] before it reads or allocates anything else, and knows exactly how many bytes to
//! skip to stay in sync when it rejects a frame whose header is malformed or whose payload is
//! too large. The payload is opaque here: the layer above (the pipeline's messages, the blob
//! protocol) gives it meaning, so the hot path is one `read_exact` into a reusable buffer.
//!
//! Everything here is pure (no I/O) so the decoder can be driven from tests, proptests and a
//! fuzz target over plain byte slices.

use bincode::{Decode, Encode};

/// Size of the fixed length prefix: `u32 header_len | u32 payload_len`.
pub const PREFIX_LEN: usize = 8;

/// Upper bound of an encoded [`FrameHeader`] (every varint at its widest), so a sender can
/// encode into a stack buffer. Checked by a test against a header with every field at max.
pub const MAX_ENCODED_HEADER: usize = 32;

/// What a frame is to the transport. Only the transport's own kinds are known here; every
/// pipeline message travels as [`FrameKind::Message`] with its meaning in the payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Encode, Decode)]
pub enum FrameKind {
    /// A message of the layer above (the pipeline's open, rows, close, error), opaque here.
    Message,
    /// The transport rejected something; the payload is a UTF-8 message.
    Error(ErrorCode),
    /// Liveness or latency probe; echoed by the peer as [`FrameKind::Pong`].
    Ping,
    /// Answer to [`FrameKind::Ping`].
    Pong,
    /// A request for a piece of a model file (see `crate::blob`): the payload is the file's
    /// sha256, `seq` the chunk index.
    Fetch,
    /// The answer to a [`FrameKind::Fetch`]: the requested bytes.
    Piece,
}

/// Why a peer answered with an [`FrameKind::Error`] frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Encode, Decode)]
pub enum ErrorCode {
    /// A frame exceeded the receiver's [`Limits`]; it was skipped.
    Oversized,
    /// A frame's header could not be decoded; it was skipped.
    Malformed,
    /// The frame was well formed but not valid in the receiver's state.
    Protocol,
    /// The receiver failed for its own reasons.
    Internal,
}

/// The per-frame metadata. Small and fixed-shape: it owns no heap memory, so decoding it
/// cannot allocate however hostile the bytes are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Encode, Decode)]
pub struct FrameHeader {
    /// What the frame is to the transport.
    pub kind: FrameKind,
    /// The session (or request) the frame belongs to, so a receiver can route or refuse it
    /// before it looks at the payload.
    pub session: u64,
    /// Per-session sequence number (a chunk index for [`FrameKind::Fetch`]).
    pub seq: u64,
}

impl FrameHeader {
    /// A header of `kind` for `session`.
    pub fn new(kind: FrameKind, session: u64, seq: u64) -> Self {
        Self { kind, session, seq }
    }

    /// Encodes the length prefix and this header for a payload of `payload_len` bytes.
    ///
    /// Fails with [`FrameError::PayloadTooLarge`] when the payload does not fit the prefix.
    pub fn encode_prefix(&self, payload_len: usize) -> Result<EncodedPrefix, FrameError> {
        let payload_len = u32::try_from(payload_len).map_err(|_| FrameError::PayloadTooLarge {
            len: payload_len as u64,
            max: u32::MAX,
        })?;
        let mut buf = [0u8; PREFIX_LEN + MAX_ENCODED_HEADER];
        let header_len = bincode::encode_into_slice(self, &mut buf[PREFIX_LEN..], wire_config())
            .map_err(FrameError::Encode)?;
        // header_len <= MAX_ENCODED_HEADER (the slice bounds it), so the cast is lossless.
        buf[..4].copy_from_slice(&(header_len as u32).to_le_bytes());
        buf[4..PREFIX_LEN].copy_from_slice(&payload_len.to_le_bytes());
        Ok(EncodedPrefix {
            buf,
            len: PREFIX_LEN + header_len,
        })
    }

    /// Decodes a header from exactly `bytes`.
    pub fn decode(bytes: &[u8]) -> Result<Self, FrameError> {
        let (header, used): (Self, usize) =
            bincode::decode_from_slice(bytes, wire_config()).map_err(FrameError::Decode)?;
        if used != bytes.len() {
            return Err(FrameError::TrailingHeaderBytes {
                extra: bytes.len() - used,
            });
        }
        Ok(header)
    }
}

/// The encoded `prefix | header` of one frame, held on the stack; write it, then the payload.
#[derive(Debug, Clone)]
pub struct EncodedPrefix {
    buf: [u8; PREFIX_LEN + MAX_ENCODED_HEADER],
    len: usize,
}

impl EncodedPrefix {
    /// The bytes to put on the wire before the payload.
    pub fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

/// Size limits a receiver enforces on every frame before reading it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest accepted encoded header. A larger one means the stream is garbage or hostile.
    pub max_header: u32,
    /// Largest accepted payload. A larger frame is skipped and reported, the stream survives.
    pub max_payload: u32,
}

impl Limits {
    /// Checks the length prefix against these limits.
    pub fn check(&self, prefix: Prefix) -> Result<(), FrameError> {
        if prefix.header_len > self.max_header {
            return Err(FrameError::HeaderTooLarge {
                len: prefix.header_len,
                max: self.max_header,
            });
        }
        if prefix.payload_len > self.max_payload {
            return Err(FrameError::PayloadTooLarge {
                len: u64::from(prefix.payload_len),
                max: self.max_payload,
            });
        }
        Ok(())
    }
}

impl Default for Limits {
    /// Generous defaults: a header is under [`MAX_ENCODED_HEADER`] bytes; 64 MiB of payload
    /// holds a 2048-position prefill of a 8192-wide f32 hidden state.
    fn default() -> Self {
        Self {
            max_header: 256,
            max_payload: 64 << 20,
        }
    }
}

/// The fixed 8-byte length prefix of a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Prefix {
    /// Encoded header size in bytes.
    pub header_len: u32,
    /// Payload size in bytes.
    pub payload_len: u32,
}

impl Prefix {
    /// Parses the prefix. Any 8 bytes are a prefix; [`Limits::check`] decides if it is sane.
    pub fn parse(bytes: [u8; PREFIX_LEN]) -> Self {
        let [a, b, c, d, e, f, g, h] = bytes;
        Self {
            header_len: u32::from_le_bytes([a, b, c, d]),
            payload_len: u32::from_le_bytes([e, f, g, h]),
        }
    }

    /// Total frame size on the wire, prefix included.
    pub fn frame_len(&self) -> u64 {
        PREFIX_LEN as u64 + u64::from(self.header_len) + u64::from(self.payload_len)
    }
}

/// A decoded frame borrowing its payload from the input (or from a reader's buffer).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frame<'a> {
    /// The frame's metadata.
    pub header: FrameHeader,
    /// The payload, opaque to the transport.
    pub payload: &'a [u8],
}

impl<'a> Frame<'a> {
    /// Decodes the first frame of `buf`, returning it and the number of bytes it used.
    ///
    /// Pure and total: any input yields a frame or a [`FrameError`], never a panic, and no
    /// allocation proportional to the input. [`FrameError::Incomplete`] means "feed more
    /// bytes"; the other errors describe the frame at the front of `buf`.
    pub fn decode(buf: &'a [u8], limits: &Limits) -> Result<(Self, usize), FrameError> {
        let Some((prefix_bytes, rest)) = buf.split_first_chunk::<PREFIX_LEN>() else {
            return Err(FrameError::Incomplete {
                needed: PREFIX_LEN as u64,
            });
        };
        let prefix = Prefix::parse(*prefix_bytes);
        limits.check(prefix)?;
        let total = prefix.frame_len();
        if (buf.len() as u64) < total {
            return Err(FrameError::Incomplete { needed: total });
        }
        let (header_bytes, rest) = rest.split_at(prefix.header_len as usize);
        let header = FrameHeader::decode(header_bytes)?;
        let payload = &rest[..prefix.payload_len as usize];
        // `total` <= buf.len(), which is a usize.
        Ok((Self { header, payload }, total as usize))
    }

    /// Appends the encoded frame to `out` (tests, in-memory harnesses; the stream writer
    /// writes the prefix and payload without concatenating them).
    pub fn encode_into(&self, out: &mut Vec<u8>) -> Result<(), FrameError> {
        let prefix = self.header.encode_prefix(self.payload.len())?;
        out.extend_from_slice(prefix.as_bytes());
        out.extend_from_slice(self.payload);
        Ok(())
    }
}

/// Why a frame could not be encoded or decoded.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The input ends before the frame does; `needed` is the total bytes the frame needs.
    #[error("incomplete frame: {needed} bytes needed")]
    Incomplete {
        /// Bytes needed from the start of the frame.
        needed: u64,
    },
    /// The announced header is larger than [`Limits::max_header`].
    #[error("frame header of {len} bytes exceeds the limit of {max}")]
    HeaderTooLarge {
        /// Announced header size.
        len: u32,
        /// The limit in force.
        max: u32,
    },
    /// The announced payload is larger than [`Limits::max_payload`] (or than `u32::MAX` when
    /// encoding).
    #[error("frame payload of {len} bytes exceeds the limit of {max}")]
    PayloadTooLarge {
        /// Announced or attempted payload size.
        len: u64,
        /// The limit in force.
        max: u32,
    },
    /// The header bytes are not a valid bincode [`FrameHeader`] (unknown kind, bad varint...).
    #[error("malformed frame header: {0}")]
    Decode(#[source] bincode::error::DecodeError),
    /// The header decoded but did not use all of its announced bytes.
    #[error("frame header has {extra} unexpected trailing bytes")]
    TrailingHeaderBytes {
        /// Bytes left over after the header.
        extra: usize,
    },
    /// The header could not be encoded (does not happen for a [`FrameHeader`]; kept typed).
    #[error("frame header could not be encoded: {0}")]
    Encode(#[source] bincode::error::EncodeError),
}

impl FrameError {
    /// The [`ErrorCode`] a receiver reports to its peer for this rejection.
    pub fn code(&self) -> ErrorCode {
        match self {
            FrameError::HeaderTooLarge { .. } | FrameError::PayloadTooLarge { .. } => {
                ErrorCode::Oversized
            }
            FrameError::Incomplete { .. }
            | FrameError::Decode(_)
            | FrameError::TrailingHeaderBytes { .. } => ErrorCode::Malformed,
            FrameError::Encode(_) => ErrorCode::Internal,
        }
    }
}

/// bincode settings of the header: varint integers, little-endian. Fixed for wire stability.
fn wire_config() -> bincode::config::Configuration {
    bincode::config::standard()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn message(session: u64, seq: u64) -> FrameHeader {
        FrameHeader::new(FrameKind::Message, session, seq)
    }

    #[test]
    fn widest_header_fits_the_stack_buffer() {
        let h = FrameHeader::new(FrameKind::Error(ErrorCode::Internal), u64::MAX, u64::MAX);
        let mut buf = [0u8; 256];
        let n = bincode::encode_into_slice(h, &mut buf, wire_config()).expect("encodes");
        assert!(n <= MAX_ENCODED_HEADER, "{n}");
    }

    #[test]
    fn round_trip_and_consumed_length() {
        let payload: Vec<u8> = (0..576 * 4).map(|i| i as u8).collect();
        let frame = Frame {
            header: message(3, 9),
            payload: &payload,
        };
        let mut wire = Vec::new();
        frame.encode_into(&mut wire).expect("encode");
        wire.extend_from_slice(b"next frame");
        let (decoded, used) = Frame::decode(&wire, &Limits::default()).expect("decode");
        assert_eq!(decoded, frame);
        assert_eq!(&wire[used..], b"next frame");
    }

    #[test]
    fn every_truncation_is_incomplete() {
        let payload = [1u8; 40];
        let frame = Frame {
            header: message(1, 2),
            payload: &payload,
        };
        let mut wire = Vec::new();
        frame.encode_into(&mut wire).expect("encode");
        for cut in 0..wire.len() {
            let err = Frame::decode(&wire[..cut], &Limits::default()).expect_err("short");
            assert!(matches!(err, FrameError::Incomplete { .. }), "{cut}: {err}");
        }
    }

    #[test]
    fn limits_are_checked_before_the_body_arrives() {
        let limits = Limits {
            max_header: 64,
            max_payload: 100,
        };
        let mut wire = Vec::new();
        wire.extend_from_slice(&10u32.to_le_bytes());
        wire.extend_from_slice(&101u32.to_le_bytes());
        let err = Frame::decode(&wire, &limits).expect_err("oversized");
        assert!(matches!(
            err,
            FrameError::PayloadTooLarge { len: 101, max: 100 }
        ));
        assert_eq!(err.code(), ErrorCode::Oversized);

        wire[..4].copy_from_slice(&65u32.to_le_bytes());
        let err = Frame::decode(&wire, &limits).expect_err("oversized header");
        assert!(matches!(
            err,
            FrameError::HeaderTooLarge { len: 65, max: 64 }
        ));
    }

    #[test]
    fn malformed_headers_are_typed_errors() {
        let limits = Limits::default();
        // Unknown FrameKind variant 200.
        let header = [200u8, 0, 0];
        let mut wire = Vec::new();
        wire.extend_from_slice(&(header.len() as u32).to_le_bytes());
        wire.extend_from_slice(&0u32.to_le_bytes());
        wire.extend_from_slice(&header);
        let err = Frame::decode(&wire, &limits).expect_err("bad kind");
        assert!(matches!(err, FrameError::Decode(_)), "{err}");
        assert_eq!(err.code(), ErrorCode::Malformed);

        // A valid header with a trailing byte inside the announced header length.
        let good = message(0, 0).encode_prefix(4).expect("encode");
        let mut wire = good.as_bytes().to_vec();
        let header_len = u32::from_le_bytes([wire[0], wire[1], wire[2], wire[3]]) + 1;
        wire[..4].copy_from_slice(&header_len.to_le_bytes());
        wire.push(0);
        wire.extend_from_slice(&[0; 4]);
        let err = Frame::decode(&wire, &limits).expect_err("trailing");
        assert!(
            matches!(err, FrameError::TrailingHeaderBytes { extra: 1 }),
            "{err}"
        );
    }

    fn any_kind() -> impl Strategy<Value = FrameKind> {
        prop_oneof![
            Just(FrameKind::Message),
            Just(FrameKind::Error(ErrorCode::Oversized)),
            Just(FrameKind::Error(ErrorCode::Protocol)),
            Just(FrameKind::Ping),
            Just(FrameKind::Pong),
            Just(FrameKind::Fetch),
            Just(FrameKind::Piece),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn decoding_random_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let limits = Limits { max_header: 64, max_payload: 1 << 16 };
            if let Ok((frame, used)) = Frame::decode(&bytes, &limits) {
                prop_assert!(used <= bytes.len());
                prop_assert!(frame.payload.len() <= 1 << 16);
            }
        }

        #[test]
        fn encode_decode_round_trips(
            kind in any_kind(),
            session in any::<u64>(),
            seq in any::<u64>(),
            len in 0usize..300,
            fill in any::<u8>(),
        ) {
            let header = FrameHeader { kind, session, seq };
            let payload = vec![fill; len];
            let frame = Frame { header, payload: &payload };
            let mut wire = Vec::new();
            frame.encode_into(&mut wire).expect("encode");
            let (decoded, used) = Frame::decode(&wire, &Limits::default()).expect("decode");
            prop_assert_eq!(decoded, frame);
            prop_assert_eq!(used, wire.len());
        }

        #[test]
        fn corrupting_one_byte_never_panics(pos in any::<prop::sample::Index>(), byte in any::<u8>()) {
            let payload = [5u8; 8];
            let frame = Frame { header: message(1, 1), payload: &payload };
            let mut wire = Vec::new();
            frame.encode_into(&mut wire).expect("encode");
            let i = pos.index(wire.len());
            wire[i] = byte;
            let _ = Frame::decode(&wire, &Limits::default());
        }
    }
}
