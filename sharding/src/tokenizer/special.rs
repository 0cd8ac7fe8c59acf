//! Splitting special tokens out of raw text before the model tokenizer runs, as llama.cpp's
//! `tokenizer_st_partition`: special tokens are tried longest first; each one splits every
//! remaining raw fragment at its non-overlapping occurrences, left to right.

use std::ops::Range;

/// A piece of the input: raw text (a byte range) or an already decided token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Fragment {
    Text(Range<usize>),
    Token(u32),
}

/// Splits `text` into fragments. `specials` are `(id, text)` in priority order (longest
/// text first).
pub(crate) fn partition<'a>(
    text: &str,
    specials: impl Iterator<Item = (u32, &'a str)>,
) -> Vec<Fragment> {
    let mut fragments = Vec::new();
    if text.is_empty() {
        return fragments;
    }
    fragments.push(Fragment::Text(0..text.len()));
    // Positions of each byte value, so a special token is only compared where its first
    // byte occurs (Gemma has thousands of special tokens).
    let mut by_first_byte: Vec<Vec<usize>> = vec![Vec::new(); 256];
    for (i, b) in text.bytes().enumerate() {
        by_first_byte[usize::from(b)].push(i);
    }
    let bytes = text.as_bytes();
    let mut next = Vec::new();
    for (id, special) in specials {
        let Some(&first) = special.as_bytes().first() else {
            continue;
        };
        let candidates = &by_first_byte[usize::from(first)];
        if candidates.is_empty() {
            continue;
        }
        let mut occurrences = candidates
            .iter()
            .copied()
            .filter(|&p| bytes[p..].starts_with(special.as_bytes()))
            .peekable();
        if occurrences.peek().is_none() {
            continue;
        }
        let occurrences: Vec<usize> = occurrences.collect();
        next.clear();
        for fragment in fragments.drain(..) {
            let Fragment::Text(range) = fragment else {
                next.push(fragment);
                continue;
            };
            let mut pos = range.start;
            let first_in = occurrences.partition_point(|&p| p < pos);
            for &m in &occurrences[first_in..] {
                if m + special.len() > range.end {
                    break;
                }
                if m < pos {
                    // Overlaps the previous match.
                    continue;
                }
                if m > pos {
                    next.push(Fragment::Text(pos..m));
                }
                next.push(Fragment::Token(id));
                pos = m + special.len();
            }
            if pos < range.end {
                next.push(Fragment::Text(pos..range.end));
            }
        }
        std::mem::swap(&mut fragments, &mut next);
    }
    fragments
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn longest_special_wins_and_overlaps_are_skipped() {
        let specials = [(7u32, "<a><b>"), (1, "<a>"), (2, "xx")];
        let text = "q<a><b>r<a>xxx";
        let frags = partition(text, specials.iter().map(|&(i, s)| (i, s)));
        assert_eq!(
            frags,
            [
                Fragment::Text(0..1),
                Fragment::Token(7),
                Fragment::Text(7..8),
                Fragment::Token(1),
                Fragment::Token(2),
                Fragment::Text(13..14),
            ]
        );
    }

    #[test]
    fn text_without_specials_is_one_fragment() {
        assert_eq!(partition("abc", std::iter::empty()), [Fragment::Text(0..3)]);
        assert!(partition("", std::iter::empty()).is_empty());
    }
}
