//! How pipeline messages map onto transport frames.

use transport::quic::payload;
use transport::quic::{Dtype, FrameHeader, FrameKind};

/// What hidden states travel as between nodes. Each sender picks its own; receivers decode
/// whatever a frame's header says.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum WireDtype {
    /// 4 bytes per value, lossless: a pipeline is bit-identical to one node.
    #[default]
    F32,
    /// 2 bytes per value (half the bytes, ~3 significant digits), for slow links.
    F16,
    /// Block q8 (34 bytes per 32 values, 0.27x of f32), for very slow links.
    Q8,
}

impl WireDtype {
    /// The frame dtype hidden states are sent as.
    pub fn dtype(self) -> Dtype {
        match self {
            WireDtype::F32 => Dtype::F32,
            WireDtype::F16 => Dtype::F16,
            WireDtype::Q8 => Dtype::Q8Block,
        }
    }
}

/// Replaces `out` with `values` encoded as `wire` says.
pub fn encode_hidden(values: &[f32], wire: WireDtype, out: &mut Vec<u8>) {
    out.clear();
    match wire {
        WireDtype::F32 => payload::f32_to_bytes(values, out),
        WireDtype::F16 => payload::f32_to_f16_bytes(values, out),
        WireDtype::Q8 => payload::f32_to_q8_bytes(values, out),
    }
}

/// Replaces `out` with the `count` hidden-state values of a `dtype` payload; `None` when the
/// dtype is not a hidden-state encoding or the payload does not hold `count` values.
pub fn decode_hidden(dtype: Dtype, bytes: &[u8], count: usize, out: &mut Vec<f32>) -> Option<()> {
    out.clear();
    let decoded = match dtype {
        Dtype::F32 => payload::f32_from_bytes(bytes, out),
        Dtype::F16 => payload::f32_from_f16_bytes(bytes, out),
        Dtype::Q8Block => payload::f32_from_q8_bytes(bytes, count, out),
        Dtype::Bytes | Dtype::U32 => return None,
    };
    (decoded.is_ok() && out.len() == count).then_some(())
}

/// Largest number of positions sent in one prefill frame; longer prompts are chunked.
pub const PREFILL_CHUNK: usize = 64;

/// Header of a frame carrying `rows` hidden-state rows for positions `pos..pos + rows`,
/// encoded as `wire`.
pub fn hidden(
    kind: FrameKind,
    session: u64,
    seq: u64,
    pos: usize,
    rows: usize,
    n_embd: usize,
    wire: WireDtype,
) -> FrameHeader {
    FrameHeader {
        kind,
        session,
        seq,
        pos: pos as u32,
        n_pos: rows as u32,
        dtype: wire.dtype(),
        rows: rows as u32,
        cols: n_embd as u32,
    }
}

/// Header of an `Open` reserving `positions` positions of context, with a payload of
/// `reply_len` bytes: the head's reply address as text, or nothing.
pub fn open(session: u64, positions: usize, reply_len: usize) -> FrameHeader {
    let header = if reply_len == 0 {
        FrameHeader::empty(FrameKind::Open, session, 0)
    } else {
        FrameHeader {
            rows: 1,
            cols: reply_len as u32,
            ..FrameHeader::empty(FrameKind::Open, session, 0)
        }
    };
    FrameHeader {
        n_pos: positions as u32,
        ..header
    }
}
