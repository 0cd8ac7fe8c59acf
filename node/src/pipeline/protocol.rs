//! How pipeline messages map onto transport frames.

use transport::quic::{Dtype, FrameHeader, FrameKind};

/// Largest number of positions sent in one prefill frame; longer prompts are chunked.
pub const PREFILL_CHUNK: usize = 64;

/// Header of a frame carrying `rows` hidden-state rows for positions `pos..pos + rows`.
pub fn hidden(
    kind: FrameKind,
    session: u64,
    seq: u64,
    pos: usize,
    rows: usize,
    n_embd: usize,
) -> FrameHeader {
    FrameHeader {
        kind,
        session,
        seq,
        pos: pos as u32,
        n_pos: rows as u32,
        dtype: Dtype::F32,
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

/// Replaces `out` with `values` as little-endian bytes.
pub fn f32_bytes(values: &[f32], out: &mut Vec<u8>) {
    out.clear();
    transport::quic::payload::f32_to_bytes(values, out);
}

/// Replaces `out` with the little-endian f32s of `bytes`; `None` when the length is not a
/// multiple of 4.
pub fn f32_values(bytes: &[u8], out: &mut Vec<f32>) -> Option<()> {
    out.clear();
    transport::quic::payload::f32_from_bytes(bytes, out).ok()
}
