//! The vocabulary: token texts, scores, attributes and the reverse lookup.

use std::collections::HashMap;

/// What kind of token an id is, from `tokenizer.ggml.token_type` (llama.cpp's
/// `llama_token_attr`, reduced to the bits the tokenizer uses).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TokenAttr(u8);

impl TokenAttr {
    /// Type 2: the unknown token.
    pub const UNKNOWN: TokenAttr = TokenAttr(1 << 0);
    /// Type 5, or a control token whose text contains "unused".
    pub const UNUSED: TokenAttr = TokenAttr(1 << 1);
    /// Type 1: ordinary text.
    pub const NORMAL: TokenAttr = TokenAttr(1 << 2);
    /// Type 3: control tokens such as `<|im_start|>`; never produced from text unless
    /// special tokens are parsed.
    pub const CONTROL: TokenAttr = TokenAttr(1 << 3);
    /// Type 4: user-defined tokens, always split out of text before BPE.
    pub const USER_DEFINED: TokenAttr = TokenAttr(1 << 4);
    /// Type 6: SentencePiece byte-fallback tokens `<0xXX>`.
    pub const BYTE: TokenAttr = TokenAttr(1 << 5);

    /// The attribute llama.cpp assigns to GGUF token type `t` (undefined types get none).
    pub(crate) fn from_type(t: i32) -> TokenAttr {
        match t {
            1 => TokenAttr::NORMAL,
            2 => TokenAttr::UNKNOWN,
            3 => TokenAttr::CONTROL,
            4 => TokenAttr::USER_DEFINED,
            5 => TokenAttr::UNUSED,
            6 => TokenAttr::BYTE,
            _ => TokenAttr(0),
        }
    }

    /// Whether any bit of `other` is set in `self`.
    pub fn intersects(self, other: TokenAttr) -> bool {
        self.0 & other.0 != 0
    }

    pub(crate) fn with(self, other: TokenAttr) -> TokenAttr {
        TokenAttr(self.0 | other.0)
    }
}

/// Token texts and their ids.
#[derive(Debug)]
pub(crate) struct Vocab {
    pub(crate) texts: Vec<String>,
    pub(crate) scores: Vec<f32>,
    pub(crate) attrs: Vec<TokenAttr>,
    ids: HashMap<String, u32>,
}

impl Vocab {
    /// Builds the reverse map; empty texts become `[EMPTY_<id>]` as in llama.cpp.
    pub(crate) fn new(
        mut texts: Vec<String>,
        scores: Vec<f32>,
        attrs: Vec<TokenAttr>,
    ) -> Result<Self, super::TokenizerError> {
        let mut ids = HashMap::with_capacity(texts.len());
        for (i, text) in texts.iter_mut().enumerate() {
            let id = u32::try_from(i).map_err(|_| super::TokenizerError::TooManyTokens(i))?;
            if text.is_empty() {
                *text = format!("[EMPTY_{id}]");
            }
            if let Some(first) = ids.insert(text.clone(), id) {
                return Err(super::TokenizerError::DuplicateToken {
                    text: text.clone(),
                    first,
                    second: id,
                });
            }
        }
        Ok(Vocab {
            texts,
            scores,
            attrs,
            ids,
        })
    }

    pub(crate) fn len(&self) -> usize {
        self.texts.len()
    }

    pub(crate) fn id(&self, text: &str) -> Option<u32> {
        self.ids.get(text).copied()
    }

    pub(crate) fn attr(&self, id: u32) -> TokenAttr {
        self.attrs.get(id as usize).copied().unwrap_or_default()
    }

    pub(crate) fn text(&self, id: u32) -> Option<&str> {
        self.texts.get(id as usize).map(String::as_str)
    }
}
