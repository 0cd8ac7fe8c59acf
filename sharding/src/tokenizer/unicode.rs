//! Code point classes as llama.cpp's `unicode.cpp` sees them, and GPT-2's byte-to-unicode map.
//!
//! The pre-tokenizers only ask a handful of questions about a code point: is it a letter
//! (`\p{L}`), a number (`\p{N}`), whitespace (`\s`), and which of the other top-level
//! general categories it falls in. The answers come from [`super::categories`], a range
//! table generated from the Unicode database (see `gen_categories.py`).

use std::sync::OnceLock;

use super::categories::RANGES;

/// Top-level Unicode general category (the first letter of `Lu`, `Nd`, `Zs`, ...).
/// Unassigned code points are [`Category::Other`], as in llama.cpp.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Category {
    Number,
    Letter,
    Separator,
    Mark,
    Punctuation,
    Symbol,
    Other,
}

/// The classes of one code point that the splitters test.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Flags {
    pub(crate) category: Category,
    pub(crate) whitespace: bool,
}

impl Flags {
    pub(crate) fn is_letter(self) -> bool {
        self.category == Category::Letter
    }

    pub(crate) fn is_number(self) -> bool {
        self.category == Category::Number
    }

    pub(crate) fn is_punctuation(self) -> bool {
        self.category == Category::Punctuation
    }
}

/// Unicode `White_Space`, the set llama.cpp uses for `\s`.
fn is_white_space(c: char) -> bool {
    matches!(
        c,
        '\u{9}'..='\u{d}'
            | ' '
            | '\u{85}'
            | '\u{a0}'
            | '\u{1680}'
            | '\u{2000}'..='\u{200a}'
            | '\u{2028}'
            | '\u{2029}'
            | '\u{202f}'
            | '\u{205f}'
            | '\u{3000}'
    )
}

/// The general category of `c` (binary search over the range table).
pub(crate) fn category(c: char) -> Category {
    let cp = u32::from(c);
    // `RANGES[0].0 == 0`, so the partition point is at least 1.
    let idx = RANGES.partition_point(|&(start, _)| start <= cp);
    RANGES[idx.saturating_sub(1)].1
}

/// Classes of `c`, with an ASCII fast path.
pub(crate) fn flags(c: char) -> Flags {
    static ASCII: OnceLock<[Flags; 128]> = OnceLock::new();
    if c.is_ascii() {
        let table = ASCII.get_or_init(|| {
            let mut t = [Flags {
                category: Category::Other,
                whitespace: false,
            }; 128];
            for (b, slot) in t.iter_mut().enumerate() {
                let ch = char::from(b as u8);
                *slot = Flags {
                    category: category(ch),
                    whitespace: is_white_space(ch),
                };
            }
            t
        });
        return table[c as usize];
    }
    Flags {
        category: category(c),
        whitespace: is_white_space(c),
    }
}

/// GPT-2's reversible byte-to-character map: printable Latin-1 bytes map to themselves,
/// the other 68 bytes to U+0100.. in byte order, so every byte string becomes printable text
/// without spaces or control characters.
pub(crate) struct ByteMap {
    to_char: [char; 256],
    /// Indexed by code point; every mapped character is below U+0144.
    from_char: [Option<u8>; 0x144],
}

impl ByteMap {
    /// The shared map.
    pub(crate) fn get() -> &'static ByteMap {
        static MAP: OnceLock<ByteMap> = OnceLock::new();
        MAP.get_or_init(|| {
            let mut to_char = ['\0'; 256];
            let mut from_char = [None; 0x144];
            let mut next = 0x100u32;
            for b in 0..=255u8 {
                let printable = matches!(b, 0x21..=0x7e | 0xa1..=0xac | 0xae..=0xff);
                let cp = if printable {
                    u32::from(b)
                } else {
                    next += 1;
                    next - 1
                };
                // Every value is below 0x144: a valid scalar value and index.
                to_char[usize::from(b)] = char::from_u32(cp).unwrap_or('\u{fffd}');
                from_char[cp as usize] = Some(b);
            }
            ByteMap { to_char, from_char }
        })
    }

    /// The character standing for byte `b`.
    pub(crate) fn encode(&self, b: u8) -> char {
        self.to_char[usize::from(b)]
    }

    /// The byte that `c` stands for, if any.
    pub(crate) fn decode(&self, c: char) -> Option<u8> {
        self.from_char.get(c as usize).copied().flatten()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn categories_of_common_characters() {
        assert_eq!(category('a'), Category::Letter);
        assert_eq!(category('é'), Category::Letter);
        assert_eq!(category('中'), Category::Letter);
        assert_eq!(category('7'), Category::Number);
        assert_eq!(category('²'), Category::Number);
        assert_eq!(category('\u{301}'), Category::Mark);
        assert_eq!(category(','), Category::Punctuation);
        assert_eq!(category('$'), Category::Symbol);
        assert_eq!(category('😀'), Category::Symbol);
        assert_eq!(category(' '), Category::Separator);
        assert_eq!(category('\n'), Category::Other);
        assert_eq!(category('\u{10ffff}'), Category::Other);
        assert!(flags('\u{3000}').whitespace);
        assert!(!flags('\u{1c}').whitespace);
    }

    #[test]
    fn byte_map_round_trips() {
        let map = ByteMap::get();
        assert_eq!(map.encode(b' '), 'Ġ');
        assert_eq!(map.encode(b'\n'), 'Ċ');
        assert_eq!(map.encode(b'A'), 'A');
        for b in 0..=255u8 {
            assert_eq!(map.decode(map.encode(b)), Some(b));
        }
        assert_eq!(map.decode('中'), None);
    }
}
