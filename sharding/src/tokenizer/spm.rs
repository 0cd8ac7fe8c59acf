//! SentencePiece-style BPE with scores (`tokenizer.ggml.model = "llama"`), as llama.cpp's
//! `llm_tokenizer_spm_session`: start from single characters, repeatedly merge the adjacent
//! pair whose concatenation is the highest-scoring vocabulary entry (leftmost on ties),
//! and spell characters that never became a token as `<0xXX>` byte tokens.

use std::cmp::Ordering;
use std::collections::BinaryHeap;

use super::vocab::Vocab;

#[derive(Clone, Copy, Debug)]
struct Symbol {
    start: usize,
    len: usize,
    prev: Option<usize>,
    next: Option<usize>,
}

/// A candidate merge. Ordered so that the heap's maximum is the highest score, then the
/// leftmost pair.
#[derive(Clone, Copy, Debug)]
struct Bigram {
    score: f32,
    left: usize,
    right: usize,
    size: usize,
}

impl PartialEq for Bigram {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Bigram {}

impl PartialOrd for Bigram {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Bigram {
    fn cmp(&self, other: &Self) -> Ordering {
        self.score
            .total_cmp(&other.score)
            .then_with(|| other.left.cmp(&self.left))
    }
}

/// Reusable buffers for [`tokenize`].
#[derive(Debug, Default)]
pub(crate) struct Scratch {
    symbols: Vec<Symbol>,
    queue: BinaryHeap<Bigram>,
}

/// Appends the tokens of `text` (spaces already escaped to `▁`) to `out`. `byte_tokens[b]`
/// is the token spelling byte `b`, if the vocabulary has one.
pub(crate) fn tokenize(
    vocab: &Vocab,
    byte_tokens: &[Option<u32>; 256],
    text: &str,
    scratch: &mut Scratch,
    out: &mut Vec<u32>,
) {
    let Scratch { symbols, queue } = scratch;
    symbols.clear();
    queue.clear();
    for (i, (start, c)) in text.char_indices().enumerate() {
        let len = c.len_utf8();
        symbols.push(Symbol {
            start,
            len,
            prev: i.checked_sub(1),
            next: (start + len < text.len()).then_some(i + 1),
        });
    }
    let try_add = |symbols: &[Symbol],
                   queue: &mut BinaryHeap<Bigram>,
                   left: Option<usize>,
                   right: Option<usize>| {
        let (Some(l), Some(r)) = (left, right) else {
            return;
        };
        let size = symbols[l].len + symbols[r].len;
        let start = symbols[l].start;
        let Some(id) = vocab.id(&text[start..start + size]) else {
            return;
        };
        queue.push(Bigram {
            score: vocab.scores.get(id as usize).copied().unwrap_or(0.0),
            left: l,
            right: r,
            size,
        });
    };
    for i in 1..symbols.len() {
        try_add(symbols, queue, Some(i - 1), Some(i));
    }
    while let Some(b) = queue.pop() {
        let (left, right) = (symbols[b.left], symbols[b.right]);
        if left.len == 0 || right.len == 0 || left.len + right.len != b.size {
            continue;
        }
        symbols[b.left].len = b.size;
        symbols[b.left].next = right.next;
        symbols[b.right].len = 0;
        if let Some(n) = right.next {
            symbols[n].prev = Some(b.left);
        }
        try_add(symbols, queue, left.prev, Some(b.left));
        try_add(symbols, queue, Some(b.left), right.next);
    }
    // Every merged symbol is a vocabulary entry by construction; only single characters
    // can be missing, and those are spelled byte by byte.
    let mut cursor = (!symbols.is_empty()).then_some(0);
    while let Some(i) = cursor {
        let s = symbols[i];
        let piece = &text[s.start..s.start + s.len];
        match vocab.id(piece) {
            Some(id) => out.push(id),
            None => out.extend(piece.bytes().filter_map(|b| byte_tokens[usize::from(b)])),
        }
        cursor = s.next;
    }
}
