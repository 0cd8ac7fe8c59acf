//! GPT-2 style byte-level BPE over one pre-tokenized word, as llama.cpp's
//! `llm_tokenizer_bpe_session` does it: start from the word's characters and repeatedly
//! merge the adjacent pair with the lowest merge rank (leftmost first on ties).

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};

use super::vocab::Vocab;

/// The merge table: `tokenizer.ggml.merges`, ranked by position.
#[derive(Debug, Default)]
pub(crate) struct Merges {
    /// Every string that appears on either side of a merge, interned.
    atoms: HashMap<Box<str>, u32>,
    /// `(left atom, right atom)` -> rank. The first occurrence of a pair wins.
    ranks: HashMap<(u32, u32), u32>,
}

impl Merges {
    /// Parses merges of the form `"left right"` (split at the first space after the first
    /// byte, as llama.cpp does; a line without one is the pair `("", "")`).
    pub(crate) fn new(lines: &[String]) -> Self {
        let mut merges = Merges {
            atoms: HashMap::with_capacity(lines.len()),
            ranks: HashMap::with_capacity(lines.len()),
        };
        for (rank, line) in lines.iter().enumerate() {
            let space = line.bytes().skip(1).position(|b| b == b' ').map(|i| i + 1);
            // A space is a character boundary, so both slices are valid.
            let (left, right) = match space {
                Some(i) => (&line[..i], &line[i + 1..]),
                None => ("", ""),
            };
            let l = merges.intern(left);
            let r = merges.intern(right);
            let rank = u32::try_from(rank).unwrap_or(u32::MAX);
            merges.ranks.entry((l, r)).or_insert(rank);
        }
        merges
    }

    fn intern(&mut self, s: &str) -> u32 {
        let next = u32::try_from(self.atoms.len()).unwrap_or(u32::MAX);
        *self.atoms.entry(s.into()).or_insert(next)
    }

    fn atom(&self, s: &str) -> Option<u32> {
        self.atoms.get(s).copied()
    }

    fn rank(&self, left: Option<u32>, right: Option<u32>) -> Option<u32> {
        self.ranks.get(&(left?, right?)).copied()
    }
}

#[derive(Clone, Copy, Debug)]
struct Symbol {
    start: usize,
    len: usize,
    prev: Option<usize>,
    next: Option<usize>,
    atom: Option<u32>,
}

/// Reusable buffers for [`merge_word`].
#[derive(Debug, Default)]
pub(crate) struct Scratch {
    symbols: Vec<Symbol>,
    /// Min-heap on `(rank, left index)`, with the right index and merged length to detect
    /// pairs made stale by an earlier merge.
    queue: BinaryHeap<Reverse<(u32, usize, usize, usize)>>,
}

/// Appends the token ids of `word` (already byte-encoded) to `out`.
pub(crate) fn merge_word(
    vocab: &Vocab,
    merges: &Merges,
    word: &str,
    scratch: &mut Scratch,
    out: &mut Vec<u32>,
) {
    let Scratch { symbols, queue } = scratch;
    symbols.clear();
    queue.clear();
    for (i, (start, c)) in word.char_indices().enumerate() {
        let len = c.len_utf8();
        symbols.push(Symbol {
            start,
            len,
            prev: i.checked_sub(1),
            next: (start + len < word.len()).then_some(i + 1),
            atom: merges.atom(&word[start..start + len]),
        });
    }
    let push_pair = |symbols: &[Symbol],
                     queue: &mut BinaryHeap<_>,
                     left: Option<usize>,
                     right: Option<usize>| {
        let (Some(l), Some(r)) = (left, right) else {
            return;
        };
        let (a, b) = (symbols[l], symbols[r]);
        if let Some(rank) = merges.rank(a.atom, b.atom) {
            queue.push(Reverse((rank, l, r, a.len + b.len)));
        }
    };
    for i in 1..symbols.len() {
        push_pair(symbols, queue, Some(i - 1), Some(i));
    }
    while let Some(Reverse((_, l, r, size))) = queue.pop() {
        let (left, right) = (symbols[l], symbols[r]);
        // Merges only ever grow a symbol, so an unchanged total length means neither side
        // has been merged with anything else since the pair was queued.
        if left.len == 0 || right.len == 0 || left.len + right.len != size {
            continue;
        }
        let merged_len = left.len + right.len;
        symbols[l].len = merged_len;
        symbols[l].next = right.next;
        symbols[l].atom = merges.atom(&word[left.start..left.start + merged_len]);
        symbols[r].len = 0;
        if let Some(n) = right.next {
            symbols[n].prev = Some(l);
        }
        push_pair(symbols, queue, left.prev, Some(l));
        push_pair(symbols, queue, Some(l), right.next);
    }
    let mut cursor = (!symbols.is_empty()).then_some(0);
    while let Some(i) = cursor {
        let s = symbols[i];
        let text = &word[s.start..s.start + s.len];
        match vocab.id(text) {
            Some(id) => out.push(id),
            None => {
                // llama.cpp falls back to one-byte tokens; only ASCII bytes can match.
                for b in text.bytes() {
                    if let Some(id) = std::str::from_utf8(&[b]).ok().and_then(|s| vocab.id(s)) {
                        out.push(id);
                    }
                }
            }
        }
        cursor = s.next;
    }
}
