//! Token pieces and streaming detokenization.
//!
//! A piece is the bytes a token stands for (llama.cpp's `token_to_piece` with
//! `special = true`). Pieces need not be valid UTF-8 on their own: a byte-level BPE token
//! or an SPM `<0xXX>` token may carry half a character. [`Decoder`] joins pieces and only
//! releases text up to the last complete character.

use super::unicode::ByteMap;
use super::vocab::{TokenAttr, Vocab};
use super::Tokenizer;

/// How the text of a normal token maps to bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum PieceStyle {
    /// GPT-2 byte-level BPE: every character stands for one byte.
    ByteLevel,
    /// SentencePiece: `▁` is a space, the rest is literal UTF-8.
    SentencePiece,
}

/// The piece of every token, computed once (llama.cpp keeps the same cache).
pub(crate) fn build_pieces(vocab: &Vocab, style: PieceStyle) -> Vec<Box<[u8]>> {
    let map = ByteMap::get();
    (0..vocab.len())
        .map(|i| {
            let id = i as u32;
            let text = vocab.text(id).unwrap_or_default();
            let attr = vocab.attr(id);
            let bytes: Vec<u8> = if attr.intersects(
                TokenAttr::UNKNOWN
                    .with(TokenAttr::CONTROL)
                    .with(TokenAttr::USER_DEFINED),
            ) {
                text.as_bytes().to_vec()
            } else if attr.intersects(TokenAttr::NORMAL) {
                match style {
                    PieceStyle::SentencePiece => text.replace('\u{2581}', " ").into_bytes(),
                    PieceStyle::ByteLevel => byte_level_decode(map, text),
                }
            } else if attr.intersects(TokenAttr::BYTE) {
                parse_byte_token(text).map(|b| vec![b]).unwrap_or_default()
            } else {
                Vec::new()
            };
            bytes.into_boxed_slice()
        })
        .collect()
}

/// Maps byte-level characters back to bytes; a character outside the map is spelled the
/// way llama.cpp spells it (`[UNK_BYTE_0x<utf8 hex><token text>]`).
fn byte_level_decode(map: &ByteMap, text: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(text.len());
    for c in text.chars() {
        match map.decode(c) {
            Some(b) => out.push(b),
            None => {
                out.extend_from_slice(b"[UNK_BYTE_0x");
                let mut buf = [0u8; 4];
                for b in c.encode_utf8(&mut buf).bytes() {
                    out.extend_from_slice(format!("{b:02x}").as_bytes());
                }
                out.extend_from_slice(text.as_bytes());
                out.push(b']');
            }
        }
    }
    out
}

/// The byte of a `<0xXX>` token.
pub(crate) fn parse_byte_token(text: &str) -> Option<u8> {
    let hex = text.strip_prefix("<0x")?.strip_suffix('>')?;
    if hex.len() != 2 {
        return None;
    }
    u8::from_str_radix(hex, 16).ok()
}

/// Streaming detokenizer: feed ids one at a time, get back text that never ends inside a
/// multi-byte character. Bytes that can never form a character are replaced by U+FFFD.
#[derive(Debug)]
pub struct Decoder<'t> {
    tokenizer: &'t Tokenizer,
    pending: Vec<u8>,
    out: String,
}

impl<'t> Decoder<'t> {
    pub(crate) fn new(tokenizer: &'t Tokenizer) -> Self {
        Decoder {
            tokenizer,
            pending: Vec::with_capacity(8),
            out: String::with_capacity(64),
        }
    }

    /// Adds token `id` and returns the text that became complete (possibly empty). Ids
    /// outside the vocabulary contribute nothing.
    pub fn push(&mut self, id: u32) -> &str {
        self.pending.extend_from_slice(self.tokenizer.piece(id));
        self.out.clear();
        let mut consumed = 0;
        loop {
            match std::str::from_utf8(&self.pending[consumed..]) {
                Ok(s) => {
                    self.out.push_str(s);
                    consumed = self.pending.len();
                    break;
                }
                Err(e) => {
                    let valid = consumed + e.valid_up_to();
                    // The prefix was just validated.
                    self.out.push_str(
                        std::str::from_utf8(&self.pending[consumed..valid]).unwrap_or_default(),
                    );
                    match e.error_len() {
                        // An incomplete character at the end: hold it back.
                        None => {
                            consumed = valid;
                            break;
                        }
                        Some(bad) => {
                            self.out.push('\u{fffd}');
                            consumed = valid + bad;
                        }
                    }
                }
            }
        }
        self.pending.drain(..consumed);
        &self.out
    }

    /// Bytes held back waiting for the rest of a character.
    pub fn pending(&self) -> &[u8] {
        &self.pending
    }

    /// Ends the stream: whatever is held back, with incomplete characters as U+FFFD.
    pub fn finish(&mut self) -> String {
        let rest = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending.clear();
        rest
    }
}
