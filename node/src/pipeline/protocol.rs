//! What heads and stages say to each other: one [`Message`] per transport frame of kind
//! [`FrameKind::Message`], its meaning in the payload. The transport routes by the frame's
//! session id and knows nothing else; this module is the only place that reads or writes a
//! message, so the wire vocabulary lives in one file.
//!
//! Payload layout: a bincode [`Head`] (the message's fixed fields), then, for [`Rows`], the
//! rows' values in the [`WireDtype`] the head names. Decoding checks the head against a
//! size limit before anything is allocated, and the values' length against the announced
//! shape, so a hostile peer gets an error, never a panic or an allocation of its choosing.

use std::net::SocketAddr;

use bincode::{Decode, Encode};
use sharding::quant::wire::{Wire, WireError};
use transport::quic::{FrameHeader, FrameKind};

/// What hidden states travel as between nodes. Each sender picks its own; receivers decode
/// whatever a message says.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Encode, Decode, clap::ValueEnum)]
pub enum WireDtype {
    /// 4 bytes per value, lossless: a pipeline is bit-identical to one node.
    #[default]
    F32,
    /// 2 bytes per value (half the bytes, ~3 significant digits), for slow links.
    F16,
    /// Q8_0 blocks (34 bytes per 32 values, 0.27x of f32), for very slow links.
    Q8,
}

impl WireDtype {
    /// The engine's codec for this dtype.
    pub fn wire(self) -> Wire {
        match self {
            WireDtype::F32 => Wire::F32,
            WireDtype::F16 => Wire::F16,
            WireDtype::Q8 => Wire::Q8_0,
        }
    }
}

/// Largest number of positions sent in one prefill message; longer prompts are chunked.
pub const PREFILL_CHUNK: usize = 64;

/// Most positions a generated rows message may roll its session back (rejected drafts of
/// speculative decoding); a prompt chunk never rolls back.
pub const MAX_ROLLBACK: usize = 32;

/// Largest encoded [`Head`]: an error's message is cut to fit.
const MAX_HEAD: usize = 1024;
/// Longest error message carried (bytes); longer ones are cut at a character boundary.
const MAX_MESSAGE: usize = 768;

/// A decoded message. [`Rows`] borrow their values from the frame's payload.
#[derive(Debug, Clone, PartialEq)]
pub enum Message<'a> {
    /// Start a session on every stage of the ring; it comes back to the head as the
    /// acknowledgement.
    Open(Open),
    /// Hidden-state rows of consecutive positions.
    Rows(Rows<'a>),
    /// End a session and free its cache everywhere, or keep it for a later session's
    /// [`Open::resume`].
    Close(Close),
    /// The session failed; the message travels on to the session's head.
    Error(Failure),
}

/// The fixed fields of a session's opening.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct Open {
    /// Positions the session may reach (prompt and generated tokens).
    pub positions: u32,
    /// Where the last stage sends this session's results: the head's data address. `None`
    /// in a static pipeline whose last stage knows its head.
    pub reply: Option<SocketAddr>,
    /// Start from a cache an earlier session of the same upstream kept: the session's first
    /// positions are a copy of that cache's, and its rows start after them. A stage that
    /// does not hold it fails the session with [`FailureCode::PrefixMiss`].
    pub resume: Option<Resume>,
}

/// Which kept cache a session starts from, and how much of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Encode, Decode)]
pub struct Resume {
    /// The key the cache was kept under ([`Close::keep`]).
    pub key: u64,
    /// Positions copied from it; the session's first rows are at this position.
    pub len: u32,
}

/// The fixed fields of a session's end.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Encode, Decode)]
pub struct Close {
    /// Keep the session's cache under this key instead of freeing it (each stage bounds what
    /// it keeps and may drop it at any time).
    pub keep: Option<u64>,
}

/// Which rows of a step the last stage sends back to the head.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Encode, Decode)]
pub enum Reply {
    /// Only the last row: the next token's hidden state (a prompt chunk, a decode step).
    LastRow,
    /// Every row: a speculative verification or an evaluation needs each position's logits.
    AllRows,
}

/// Why a step ran: prompt positions or generated ones (stages batch and time them apart).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Encode, Decode)]
pub enum Phase {
    /// Prompt positions (or a replay of them).
    Prefill,
    /// Generated positions.
    Decode,
}

/// Hidden states of positions `pos..pos + rows`, `width` values each.
#[derive(Debug, Clone, PartialEq)]
pub struct Rows<'a> {
    /// The shape and meaning of the values.
    pub head: RowsHead,
    /// The encoded values, `dtype`'s byte length of `rows × width` values.
    pub data: &'a [u8],
}

/// The fixed fields of a [`Rows`] message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Encode, Decode)]
pub struct RowsHead {
    /// Position of the first row. For generated rows, up to [`MAX_ROLLBACK`] below the
    /// session's length, it rolls the session back to it first (rejected speculative
    /// positions).
    pub pos: u32,
    /// Rows (positions).
    pub rows: u32,
    /// Values per row: the model's hidden size.
    pub width: u32,
    /// How the values are encoded.
    pub dtype: WireDtype,
    /// Prompt or generated positions.
    pub phase: Phase,
    /// What the last stage sends back.
    pub reply: Reply,
}

/// Why a session failed, as a stage tells its head.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct Failure {
    /// What kind of failure: the head decides from it whether to replay elsewhere.
    pub code: FailureCode,
    /// What happened, for the client and the logs.
    pub message: String,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}: {}", self.code, self.message)
    }
}

/// The kinds of [`Failure`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Encode, Decode)]
pub enum FailureCode {
    /// The request itself cannot run (its position, shape or length is wrong, its context
    /// is full): replaying it elsewhere would fail the same way.
    Refused,
    /// A stage could not pass the session on (its next hop is unreachable): the plan is
    /// broken, the request may continue on another.
    Unroutable,
    /// A stage has no room for the session now (sessions, cache).
    Busy,
    /// The stage is shutting down (its plan was retired).
    Stopping,
    /// The stage failed for its own reasons.
    Internal,
    /// The stage does not hold the kept cache the open asked to resume (evicted, restarted,
    /// a new plan): the same request without `resume` would run.
    PrefixMiss,
}

impl FailureCode {
    /// Whether the same request may succeed on another plan.
    pub fn is_recoverable(self) -> bool {
        matches!(self, FailureCode::Unroutable | FailureCode::Stopping)
    }
}

/// The bincode part of a message.
#[derive(Debug, Clone, PartialEq, Encode, Decode)]
enum Head {
    Open(Open),
    Rows(RowsHead),
    Close(Close),
    Error(Failure),
}

/// A message payload that cannot be understood.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// Its fixed part is not a message.
    #[error("malformed message: {0}")]
    Malformed(#[source] bincode::error::DecodeError),
    /// Its values do not match the shape it announces.
    #[error("rows do not match their shape: {0}")]
    Shape(#[source] WireError),
    /// Its shape is absurd (overflows, or zero rows).
    #[error("rows of an impossible shape: {rows} x {width}")]
    Impossible {
        /// Rows announced.
        rows: u32,
        /// Width announced.
        width: u32,
    },
}

fn config() -> bincode::config::Configuration<
    bincode::config::LittleEndian,
    bincode::config::Varint,
    bincode::config::Limit<MAX_HEAD>,
> {
    bincode::config::standard().with_limit::<MAX_HEAD>()
}

impl<'a> Message<'a> {
    /// Decodes a frame payload.
    pub fn decode(payload: &'a [u8]) -> Result<Message<'a>, DecodeError> {
        let (head, used): (Head, usize) =
            bincode::decode_from_slice(payload, config()).map_err(DecodeError::Malformed)?;
        let rest = &payload[used..];
        let trailing = |what| {
            if rest.is_empty() {
                Ok(())
            } else {
                Err(DecodeError::Malformed(
                    bincode::error::DecodeError::OtherString(format!(
                        "{} bytes after {what}",
                        rest.len()
                    )),
                ))
            }
        };
        Ok(match head {
            Head::Open(open) => {
                trailing("an open")?;
                Message::Open(open)
            }
            Head::Close(close) => {
                trailing("a close")?;
                Message::Close(close)
            }
            Head::Error(failure) => {
                trailing("an error")?;
                Message::Error(failure)
            }
            Head::Rows(head) => {
                let count = head.count().ok_or(DecodeError::Impossible {
                    rows: head.rows,
                    width: head.width,
                })?;
                if head.dtype.wire().byte_len(count) != Some(rest.len()) {
                    return Err(DecodeError::Shape(WireError {
                        wire: head.dtype.wire(),
                        len: rest.len(),
                        count,
                    }));
                }
                Message::Rows(Rows { head, data: rest })
            }
        })
    }
}

impl RowsHead {
    /// Values the rows hold, `None` when there are none or too many to count.
    pub fn count(&self) -> Option<usize> {
        let n = usize::try_from(u64::from(self.rows) * u64::from(self.width)).ok()?;
        (self.rows > 0 && self.width > 0).then_some(n)
    }

    /// Positions `pos..pos + rows`.
    pub fn positions(&self) -> std::ops::Range<usize> {
        self.pos as usize..self.pos as usize + self.rows as usize
    }
}

impl Rows<'_> {
    /// Replaces `out` with the rows' values.
    pub fn values(&self, out: &mut Vec<f32>) -> Result<(), DecodeError> {
        out.clear();
        let count = self.head.count().ok_or(DecodeError::Impossible {
            rows: self.head.rows,
            width: self.head.width,
        })?;
        self.head
            .dtype
            .wire()
            .decode(self.data, count, out)
            .map_err(DecodeError::Shape)
    }
}

/// Replaces `out` with the payload of an open.
pub fn encode_open(open: &Open, out: &mut Vec<u8>) {
    encode_head(&Head::Open(open.clone()), out);
}

/// Replaces `out` with the payload of a close that frees the session's cache.
pub fn encode_close(out: &mut Vec<u8>) {
    encode_head(&Head::Close(Close::default()), out);
}

/// Replaces `out` with the payload of a close that keeps the session's cache under `key`.
pub fn encode_close_keeping(key: u64, out: &mut Vec<u8>) {
    encode_head(&Head::Close(Close { keep: Some(key) }), out);
}

/// Replaces `out` with the payload of an error, its message cut to fit.
pub fn encode_error(code: FailureCode, message: &str, out: &mut Vec<u8>) {
    let mut cut = message.len().min(MAX_MESSAGE);
    while !message.is_char_boundary(cut) {
        cut -= 1;
    }
    let failure = Failure {
        code,
        message: message[..cut].to_owned(),
    };
    encode_head(&Head::Error(failure), out);
}

/// Replaces `out` with the payload of rows `values` (`head.rows × head.width` of them; a
/// receiver refuses rows whose values do not match their shape).
pub fn encode_rows(head: RowsHead, values: &[f32], out: &mut Vec<u8>) {
    encode_head(&Head::Rows(head), out);
    head.dtype.wire().encode(values, out);
}

/// Re-encodes rows as their last row only, the values already encoded: what a last stage
/// sends its head of a prompt chunk. `None` when the rows cannot be cut apart (one row, or
/// Q8_0 rows that are not whole blocks).
pub fn last_row(rows: &Rows<'_>, out: &mut Vec<u8>) -> Option<()> {
    let head = rows.head;
    let wire = head.dtype.wire();
    let row_bytes = wire.byte_len(head.width as usize)?;
    let whole_blocks = wire != Wire::Q8_0
        || (head.width as usize).is_multiple_of(sharding::quant::wire::Q8_BLOCK_VALUES);
    if head.rows <= 1 || !whole_blocks || rows.data.len() < row_bytes {
        return None;
    }
    let last = RowsHead {
        pos: head.pos + head.rows - 1,
        rows: 1,
        ..head
    };
    encode_head(&Head::Rows(last), out);
    out.extend_from_slice(&rows.data[rows.data.len() - row_bytes..]);
    Some(())
}

fn encode_head(head: &Head, out: &mut Vec<u8>) {
    out.clear();
    // A head within MAX_HEAD always encodes; error messages are cut well below it.
    if let Err(e) = bincode::encode_into_std_write(head, out, config()) {
        tracing::error!(error = %e, "a message did not encode");
        out.clear();
    }
}

/// The transport header of a message for `session`.
pub fn frame(session: u64, seq: u64) -> FrameHeader {
    FrameHeader::new(FrameKind::Message, session, seq)
}

#[cfg(test)]
mod tests;
