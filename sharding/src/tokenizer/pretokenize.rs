//! Pre-tokenizers: split text into words before BPE, exactly as llama.cpp's
//! `unicode_regex_split` does for the pre-tokenizer types we support.
//!
//! llama.cpp applies a list of patterns in sequence; each pattern re-splits every piece the
//! previous one produced, keeping both the matches and the text between them. Lookahead
//! (`\s+(?!\S)`) therefore sees the end of the *piece*, not of the text. The GPT-2 and
//! Llama-3 patterns run through hand-written matchers in llama.cpp (which we mirror); the
//! others run through `std::regex` over a text where every non-ASCII code point is
//! collapsed to its category, which for the simple character-class patterns below is the
//! same as testing the category directly.

use std::ops::Range;

use super::unicode::{flags, Flags};

/// A named pre-tokenizer (`tokenizer.ggml.pre`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum PreTokenizer {
    /// llama.cpp's fallback for BPE vocabularies (`default` or missing).
    Default,
    /// Plain GPT-2 (`gpt-2`, `phi-2`, ...).
    Gpt2,
    /// StarCoder family, SmolLM (`smollm`, `starcoder`, `refact`, ...): every digit alone,
    /// then GPT-2.
    Smollm,
    /// Qwen2 family: Llama-3's pattern with single digits.
    Qwen2,
    /// Llama-3 family: numbers in groups of up to three digits.
    Llama3,
}

impl PreTokenizer {
    /// The pre-tokenizer llama.cpp picks for `tokenizer.ggml.pre` = `name`, if we support it.
    pub(crate) fn from_name(name: &str) -> Option<Self> {
        Some(match name {
            "default" => PreTokenizer::Default,
            "gpt-2" | "phi-2" | "jina-es" | "jina-de" | "gigachat" | "jina-v2-es"
            | "jina-v2-de" | "a.x-4.0" | "mellum" | "exaone4" | "mpt" | "olmo" => {
                PreTokenizer::Gpt2
            }
            "smollm" | "starcoder" | "refact" | "command-r" | "codeshell" | "exaone"
            | "minerva-7b" => PreTokenizer::Smollm,
            "qwen2" | "deepseek-r1-qwen" | "megrez" | "stablelm2" => PreTokenizer::Qwen2,
            "llama3" | "llama-v3" | "llama-bpe" | "falcon3" | "pixtral" | "dbrx" | "smaug-bpe" => {
                PreTokenizer::Llama3
            }
            _ => return None,
        })
    }

    /// Whether a word found whole in the vocabulary skips BPE merging (llama.cpp's
    /// `ignore_merges`, set for the Llama-3 family).
    pub(crate) fn ignore_merges(self) -> bool {
        self == PreTokenizer::Llama3
    }

    /// Whether llama.cpp adds BOS for this family when the GGUF does not say.
    pub(crate) fn default_add_bos(self) -> bool {
        self == PreTokenizer::Llama3
    }

    /// Appends the byte ranges of the words of `text` to `out`.
    pub(crate) fn split(self, text: &str, out: &mut Vec<Range<usize>>) {
        let text_cpts = Cpts::new(text);
        let mut pieces = vec![text_cpts.len()];
        let t = &text_cpts;
        match self {
            PreTokenizer::Default => {
                let punct = |f: Flags, c: char| {
                    f.is_punctuation() || matches!(c, '$' | '+' | '<' | '=' | '>' | '^' | '~' | '|')
                };
                pieces = class_runs(t, &pieces, punct, usize::MAX);
                pieces = gpt2(t, &pieces);
                pieces = class_runs(t, &pieces, |f, _| f.is_number(), usize::MAX);
                pieces = three_ascii_digits(t, &pieces);
            }
            PreTokenizer::Gpt2 => pieces = gpt2(t, &pieces),
            PreTokenizer::Smollm => {
                pieces = class_runs(t, &pieces, |f, _| f.is_number(), 1);
                pieces = gpt2(t, &pieces);
            }
            PreTokenizer::Qwen2 => pieces = llama3(t, &pieces, 1),
            PreTokenizer::Llama3 => pieces = llama3(t, &pieces, 3),
        }
        let mut start = 0;
        for len in pieces {
            let end = start + len;
            out.push(t.byte[start]..t.byte[end]);
            start = end;
        }
    }
}

/// The code points of a text with their classes and byte offsets.
struct Cpts {
    chars: Vec<char>,
    flags: Vec<Flags>,
    /// Byte offset of each code point, plus the text length at the end.
    byte: Vec<usize>,
}

impl Cpts {
    fn new(text: &str) -> Self {
        let mut chars = Vec::with_capacity(text.len());
        let mut byte = Vec::with_capacity(text.len() + 1);
        for (i, c) in text.char_indices() {
            chars.push(c);
            byte.push(i);
        }
        byte.push(text.len());
        let flags = chars.iter().map(|&c| flags(c)).collect();
        Cpts { chars, flags, byte }
    }

    fn len(&self) -> usize {
        self.chars.len()
    }
}

/// Cursor over one piece `[ini, end)`: positions outside it read as "nothing", which is how
/// the matchers see the piece boundary.
struct Piece<'a> {
    t: &'a Cpts,
    ini: usize,
    end: usize,
}

impl Piece<'_> {
    fn cpt(&self, pos: usize) -> Option<char> {
        (self.ini <= pos && pos < self.end).then(|| self.t.chars[pos])
    }

    fn flags(&self, pos: usize) -> Option<Flags> {
        (self.ini <= pos && pos < self.end).then(|| self.t.flags[pos])
    }

    fn is_letter(&self, pos: usize) -> bool {
        self.flags(pos).is_some_and(|f| f.is_letter())
    }

    fn is_number(&self, pos: usize) -> bool {
        self.flags(pos).is_some_and(|f| f.is_number())
    }

    fn is_whitespace(&self, pos: usize) -> bool {
        self.flags(pos).is_some_and(|f| f.whitespace)
    }

    /// `[^\s\p{L}\p{N}]`: any code point in the piece that is none of those.
    fn is_other(&self, pos: usize) -> bool {
        self.flags(pos)
            .is_some_and(|f| !(f.whitespace || f.is_letter() || f.is_number()))
    }

    /// Length of a contraction (`'s`, `'t`, `'re`, `'ve`, `'m`, `'ll`, `'d`) at `pos`.
    fn contraction(&self, pos: usize, ignore_case: bool) -> Option<usize> {
        if self.cpt(pos) != Some('\'') || pos + 1 >= self.end {
            return None;
        }
        let fold = |c: Option<char>| {
            c.map(|c| {
                if ignore_case {
                    c.to_ascii_lowercase()
                } else {
                    c
                }
            })
        };
        let c1 = fold(self.cpt(pos + 1));
        if matches!(c1, Some('s' | 't' | 'm' | 'd')) {
            return Some(2);
        }
        if pos + 2 < self.end {
            let c2 = fold(self.cpt(pos + 2));
            if matches!(
                (c1, c2),
                (Some('r'), Some('e')) | (Some('v'), Some('e')) | (Some('l'), Some('l'))
            ) {
                return Some(3);
            }
        }
        None
    }

    /// Whitespace run at `pos`: its length and the end of its last `\r`/`\n`, if any.
    fn whitespace_run(&self, pos: usize) -> (usize, Option<usize>) {
        let mut n = 0;
        let mut last_newline_end = None;
        while self.is_whitespace(pos + n) {
            if matches!(self.cpt(pos + n), Some('\r' | '\n')) {
                last_newline_end = Some(pos + n + 1);
            }
            n += 1;
        }
        (n, last_newline_end)
    }
}

/// Re-splits every piece with `split_piece`, which returns the end of each word it finds.
fn resplit(
    t: &Cpts,
    pieces: &[usize],
    mut split_piece: impl FnMut(&Piece<'_>, &mut Vec<usize>),
) -> Vec<usize> {
    let mut out = Vec::with_capacity(pieces.len());
    let mut ends = Vec::new();
    let mut start = 0;
    for &len in pieces {
        let piece = Piece {
            t,
            ini: start,
            end: start + len,
        };
        ends.clear();
        split_piece(&piece, &mut ends);
        let mut prev = start;
        for &e in &ends {
            if e > prev {
                out.push(e - prev);
                prev = e;
            }
        }
        if piece.end > prev {
            out.push(piece.end - prev);
        }
        start = piece.end;
    }
    out
}

/// A single character-class pattern (`X` with `max == 1`, `X+` with `max == usize::MAX`):
/// matches and the gaps between them both become pieces.
fn class_runs(
    t: &Cpts,
    pieces: &[usize],
    class: impl Fn(Flags, char) -> bool,
    max: usize,
) -> Vec<usize> {
    resplit(t, pieces, |p, ends| {
        let mut pos = p.ini;
        while pos < p.end {
            if class(t.flags[pos], t.chars[pos]) {
                ends.push(pos);
                let start = pos;
                while pos < p.end && pos - start < max && class(t.flags[pos], t.chars[pos]) {
                    pos += 1;
                }
                ends.push(pos);
            } else {
                pos += 1;
            }
        }
    })
}

/// `[0-9][0-9][0-9]`, searched left to right.
fn three_ascii_digits(t: &Cpts, pieces: &[usize]) -> Vec<usize> {
    resplit(t, pieces, |p, ends| {
        let mut pos = p.ini;
        while pos + 3 <= p.end {
            if t.chars[pos..pos + 3].iter().all(char::is_ascii_digit) {
                ends.push(pos);
                ends.push(pos + 3);
                pos += 3;
            } else {
                pos += 1;
            }
        }
    })
}

/// GPT-2: `'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+`.
fn gpt2(t: &Cpts, pieces: &[usize]) -> Vec<usize> {
    resplit(t, pieces, |p, ends| {
        let mut pos = p.ini;
        while pos < p.end {
            if let Some(n) = p.contraction(pos, false) {
                pos += n;
                ends.push(pos);
                continue;
            }
            // An optional leading space joins the word that follows it.
            let space = usize::from(p.cpt(pos) == Some(' '));
            let head = pos + space;
            let class: Option<fn(&Piece<'_>, usize) -> bool> = if p.is_letter(head) {
                Some(|p, i| p.is_letter(i))
            } else if p.is_number(head) {
                Some(|p, i| p.is_number(i))
            } else if p.is_other(head) {
                Some(|p, i| p.is_other(i))
            } else {
                None
            };
            if let Some(class) = class {
                pos = head;
                while class(p, pos) {
                    pos += 1;
                }
                ends.push(pos);
                continue;
            }
            let (n, _) = p.whitespace_run(pos);
            pos += if n > 1 && pos + n < p.end {
                // `\s+(?!\S)`: leave the last space to the word that follows.
                n - 1
            } else {
                n.max(1)
            };
            ends.push(pos);
        }
    })
}

/// Llama-3 / Qwen2: `(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,k}|
/// ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+` with `k = max_digits`.
fn llama3(t: &Cpts, pieces: &[usize], max_digits: usize) -> Vec<usize> {
    resplit(t, pieces, |p, ends| {
        let mut pos = p.ini;
        while pos < p.end {
            if let Some(n) = p.contraction(pos, true) {
                pos += n;
                ends.push(pos);
                continue;
            }
            let c = p.cpt(pos);
            let f = p.t.flags[pos];
            // `[^\r\n\p{L}\p{N}]?\p{L}+`
            if !matches!(c, Some('\r' | '\n'))
                && !f.is_number()
                && (f.is_letter() || p.is_letter(pos + 1))
            {
                pos += 1;
                while p.is_letter(pos) {
                    pos += 1;
                }
                ends.push(pos);
                continue;
            }
            // `\p{N}{1,k}`
            if f.is_number() {
                let mut start = pos;
                while p.is_number(pos) {
                    pos += 1;
                    if pos - start >= max_digits {
                        ends.push(pos);
                        start = pos;
                    }
                }
                ends.push(pos);
                continue;
            }
            // ` ?[^\s\p{L}\p{N}]+[\r\n]*`; a lone trailing space also lands here.
            let space = c == Some(' ');
            if !space && p.is_other(pos) || space && (pos + 1 >= p.end || p.is_other(pos + 1)) {
                pos += usize::from(space);
                while p.is_other(pos) {
                    pos += 1;
                }
                while matches!(p.cpt(pos), Some('\r' | '\n')) {
                    pos += 1;
                }
                ends.push(pos);
                continue;
            }
            let (n, last_newline_end) = p.whitespace_run(pos);
            pos = if let Some(e) = last_newline_end {
                // `\s*[\r\n]+`
                e
            } else if n > 1 && pos + n < p.end {
                // `\s+(?!\S)`
                pos + n - 1
            } else {
                pos + n.max(1)
            };
            ends.push(pos);
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(pre: PreTokenizer, text: &str) -> Vec<&str> {
        let mut ranges = Vec::new();
        pre.split(text, &mut ranges);
        ranges.into_iter().map(|r| &text[r]).collect()
    }

    #[test]
    fn gpt2_splits_words_spaces_and_contractions() {
        assert_eq!(
            words(PreTokenizer::Gpt2, "Hello world's  end!!\n\n  x"),
            ["Hello", " world", "'s", " ", " end", "!!", "\n\n ", " x"]
        );
        assert_eq!(words(PreTokenizer::Gpt2, "a  "), ["a", "  "]);
        // GPT-2's contractions are case-sensitive (Llama-3's are not).
        assert_eq!(words(PreTokenizer::Gpt2, "I'M"), ["I", "'", "M"]);
    }

    #[test]
    fn smollm_splits_every_digit() {
        assert_eq!(
            words(PreTokenizer::Smollm, "x 12345, 6"),
            ["x", " ", "1", "2", "3", "4", "5", ",", " ", "6"]
        );
    }

    #[test]
    fn llama3_groups_three_digits_and_newlines() {
        assert_eq!(
            words(PreTokenizer::Llama3, "1234567 ok\n\n  x I'M"),
            ["123", "456", "7", " ok", "\n\n", " ", " x", " I", "'M"]
        );
        assert_eq!(
            words(PreTokenizer::Qwen2, "2024!\n"),
            ["2", "0", "2", "4", "!\n"]
        );
    }

    #[test]
    fn empty_text_has_no_words() {
        for pre in [
            PreTokenizer::Default,
            PreTokenizer::Gpt2,
            PreTokenizer::Smollm,
            PreTokenizer::Qwen2,
            PreTokenizer::Llama3,
        ] {
            assert!(words(pre, "").is_empty());
        }
    }
}
