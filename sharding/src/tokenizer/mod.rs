//! Text to token ids and back, matching llama.cpp's `llama-vocab.cpp` id for id.
//!
//! Two vocabulary types are supported, chosen by `tokenizer.ggml.model`:
//! - `gpt2`: byte-level BPE with ranked merges, after a pre-tokenizer chosen by
//!   `tokenizer.ggml.pre`: `default`, the GPT-2 family (`gpt-2`, ...), the SmolLM /
//!   StarCoder family (`smollm`, ...), the Qwen2 family (`qwen2`, ...) and the Llama-3
//!   family (`llama3`, `llama-bpe`, ...);
//! - `llama`: SentencePiece-style BPE over scores with `<0xXX>` byte fallback.
//!
//! Encoding first splits special tokens out of the text (control tokens only when asked
//! to parse them; user-defined tokens always), then runs the model tokenizer on each raw
//! fragment. Decoding goes through per-token byte pieces ([`Tokenizer::piece`]) and the
//! streaming [`Decoder`].
//!
//! Not reproduced from llama.cpp: the per-model LSTRIP/RSTRIP special-token attributes
//! (set by model name for Phi-3 and Jina only) and `llama_detokenize`'s `clean_spaces`
//! pass (off for every model we ship); [`Tokenizer::decode`] is the plain concatenation
//! of pieces, as streamed output is.

mod bpe;
mod categories;
mod decode;
mod pretokenize;
mod special;
mod spm;
mod unicode;
mod vocab;

use std::collections::BTreeSet;
use std::ops::Range;

use crate::gguf::{Array, GgufError, Metadata, Value};

pub use decode::Decoder;
pub use vocab::TokenAttr;

use decode::PieceStyle;
use pretokenize::PreTokenizer;
use special::Fragment;
use vocab::Vocab;

/// Why a tokenizer could not be built from GGUF metadata, or input could not be encoded.
#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    /// A required key is missing or has the wrong type.
    #[error(transparent)]
    Metadata(#[from] GgufError),
    /// `tokenizer.ggml.model` names a tokenizer we do not implement.
    #[error("unsupported tokenizer model {0:?} (supported: \"gpt2\", \"llama\")")]
    UnsupportedModel(String),
    /// `tokenizer.ggml.pre` names a pre-tokenizer we do not implement.
    #[error("unsupported pre-tokenizer {0:?}")]
    UnsupportedPreTokenizer(String),
    /// A per-token array is shorter than the token list.
    #[error("{key} has {found} entries, the vocabulary has {expected}")]
    LengthMismatch {
        /// The metadata key.
        key: &'static str,
        /// Number of tokens.
        expected: usize,
        /// Entries found.
        found: usize,
    },
    /// A per-token array has an element type llama.cpp does not accept.
    #[error("{key} has the wrong element type (expected {expected})")]
    WrongArrayType {
        /// The metadata key.
        key: &'static str,
        /// What was expected.
        expected: &'static str,
    },
    /// Two ids share one text, so text-to-id would be ambiguous.
    #[error("duplicate token {text:?} (ids {first} and {second})")]
    DuplicateToken {
        /// The text.
        text: String,
        /// The first id.
        first: u32,
        /// The second id.
        second: u32,
    },
    /// The vocabulary does not fit 32-bit ids.
    #[error("vocabulary of {0} tokens does not fit u32 ids")]
    TooManyTokens(usize),
    /// The GGUF asks for a BOS/EOS token to be added but defines none.
    #[error("{0} is true but the vocabulary has no such token")]
    MissingSpecialToken(&'static str),
    /// Input bytes are not UTF-8.
    #[error("input is not valid UTF-8 (at byte {0})")]
    InvalidUtf8(usize),
}

/// Which tokenizer algorithm runs on raw text.
#[derive(Debug)]
enum Model {
    Bpe {
        pre: PreTokenizer,
        merges: bpe::Merges,
    },
    Spm {
        add_space_prefix: bool,
        byte_tokens: Box<[Option<u32>; 256]>,
    },
}

/// A tokenizer built from a GGUF file's `tokenizer.*` metadata.
#[derive(Debug)]
pub struct Tokenizer {
    vocab: Vocab,
    model: Model,
    pieces: Vec<Box<[u8]>>,
    /// Control, user-defined and unknown tokens, longest text first.
    specials: Vec<u32>,
    bos: Option<u32>,
    eos: Option<u32>,
    eot: Option<u32>,
    eog: BTreeSet<u32>,
    add_bos: bool,
    add_eos: bool,
}

/// Token texts llama.cpp treats as end-of-turn (first match becomes [`Tokenizer::eot`]).
const EOT_TEXTS: &[&str] = &[
    "<|eot_id|>",
    "<|im_end|>",
    "<|end|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "<|end_of_text|>",
    "<EOT>",
    "_<EOT>",
    "[EOT]",
    "<｜end▁of▁sentence｜>",
    "<end_of_utterance>",
];

/// Token texts llama.cpp treats as end-of-generation.
const EOG_TEXTS: &[&str] = &[
    "<|eot_id|>",
    "<|im_end|>",
    "<|end|>",
    "<|return|>",
    "<|call|>",
    "<|flush|>",
    "<|calls|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "</s>",
    "<|eom_id|>",
    "<EOT>",
    "_<EOT>",
    "[EOT]",
    "[EOS]",
    "<|end_of_text|>",
    "<end_of_utterance>",
    "<eos>",
    "<turn|>",
    "<|tool_response>",
    "<｜end▁of▁sentence｜>",
    "[e~[",
];

/// Fill-in-the-middle pad / repo / file-separator tokens, which llama.cpp also counts as
/// end-of-generation.
const FIM_EOG_TEXTS: &[&[&str]] = &[
    &["<|fim_pad|>", "<fim-pad>", "<fim_pad>", "<PAD>", "[PAD]"],
    &[
        "<|fim_repo|>",
        "<|repo_name|>",
        "<fim-repo>",
        "<REPO>",
        "<reponame>",
    ],
    &["<|file_sep|>"],
];

impl Tokenizer {
    /// Builds the tokenizer described by `meta` (`tokenizer.ggml.*`).
    pub fn from_gguf(meta: &Metadata) -> Result<Tokenizer, TokenizerError> {
        let model_name = meta.str("tokenizer.ggml.model")?;
        let texts = meta.strings("tokenizer.ggml.tokens")?.to_vec();
        let n = texts.len();
        let scores = read_scores(meta, n)?;
        let mut attrs = read_attrs(meta, n)?;

        let (mut bos, mut eos, unk, mut add_bos) = match model_name {
            "gpt2" => (Some(11), Some(11), None, false),
            "llama" => (Some(1), Some(2), Some(0), true),
            other => return Err(TokenizerError::UnsupportedModel(other.to_owned())),
        };
        let mut unk: Option<u32> = unk;
        let in_range = |id: Option<u32>| id.filter(|&i| (i as usize) < n);
        bos = in_range(bos);
        eos = in_range(eos);
        unk = in_range(unk);
        let mut eot = None;
        let key_id = |key: &str| -> Result<Option<u32>, TokenizerError> {
            Ok(meta
                .opt_usize(key)?
                .filter(|&i| i < n)
                .and_then(|i| u32::try_from(i).ok()))
        };
        bos = key_id("tokenizer.ggml.bos_token_id")?.or(bos);
        eos = key_id("tokenizer.ggml.eos_token_id")?.or(eos);
        unk = key_id("tokenizer.ggml.unknown_token_id")?.or(unk);
        eot = key_id("tokenizer.ggml.eot_token_id")?.or(eot);

        let pre_name = meta.opt_str("tokenizer.ggml.pre")?.unwrap_or("default");
        let model = match model_name {
            "gpt2" => {
                let pre = PreTokenizer::from_name(pre_name)
                    .ok_or_else(|| TokenizerError::UnsupportedPreTokenizer(pre_name.to_owned()))?;
                add_bos = pre.default_add_bos();
                let merges = bpe::Merges::new(meta.strings("tokenizer.ggml.merges")?);
                Model::Bpe { pre, merges }
            }
            _ => Model::Spm {
                add_space_prefix: meta
                    .opt_bool("tokenizer.ggml.add_space_prefix")?
                    .unwrap_or(true),
                byte_tokens: Box::new([None; 256]),
            },
        };
        add_bos = meta
            .opt_bool("tokenizer.ggml.add_bos_token")?
            .unwrap_or(add_bos);
        let add_eos = meta
            .opt_bool("tokenizer.ggml.add_eos_token")?
            .unwrap_or(false);
        if add_bos && bos.is_none() {
            return Err(TokenizerError::MissingSpecialToken(
                "tokenizer.ggml.add_bos_token",
            ));
        }
        if add_eos && eos.is_none() {
            return Err(TokenizerError::MissingSpecialToken(
                "tokenizer.ggml.add_eos_token",
            ));
        }

        // End-of-generation set, derived from token texts as llama.cpp does; every such
        // token is forced to be a control token.
        let position = |t: &str| texts.iter().position(|x| x == t).map(|i| i as u32);
        if eot.is_none() {
            eot = EOT_TEXTS.iter().find_map(|t| position(t));
        }
        let mut eog = BTreeSet::new();
        for group in FIM_EOG_TEXTS {
            if let Some(id) = group.iter().find_map(|t| position(t)) {
                eog.insert(id);
            }
        }
        for (i, t) in texts.iter().enumerate() {
            if EOG_TEXTS.contains(&t.as_str()) {
                eog.insert(i as u32);
            }
        }
        for id in eog.iter().chain(eot.iter()) {
            attrs[*id as usize] = attrs[*id as usize].with(TokenAttr::CONTROL);
        }
        eog.extend(eos);
        eog.extend(eot);
        for (attr, text) in attrs.iter_mut().zip(&texts) {
            if attr.intersects(TokenAttr::CONTROL) && text.contains("unused") {
                *attr = attr.with(TokenAttr::UNUSED);
            }
        }

        let vocab = Vocab::new(texts, scores, attrs)?;
        let model = match model {
            Model::Spm {
                add_space_prefix, ..
            } => {
                let mut byte_tokens = Box::new([None; 256]);
                for (b, slot) in byte_tokens.iter_mut().enumerate() {
                    *slot = vocab
                        .id(&format!("<0x{b:02X}>"))
                        .or_else(|| {
                            std::str::from_utf8(&[b as u8])
                                .ok()
                                .and_then(|s| vocab.id(s))
                        })
                        .or(unk);
                }
                Model::Spm {
                    add_space_prefix,
                    byte_tokens,
                }
            }
            bpe => bpe,
        };
        let style = match model {
            Model::Bpe { .. } => PieceStyle::ByteLevel,
            Model::Spm { .. } => PieceStyle::SentencePiece,
        };
        let pieces = decode::build_pieces(&vocab, style);
        let special_attr = TokenAttr::CONTROL
            .with(TokenAttr::USER_DEFINED)
            .with(TokenAttr::UNKNOWN);
        let mut specials: Vec<u32> = (0..vocab.len() as u32)
            .filter(|&id| vocab.attr(id).intersects(special_attr))
            .collect();
        specials.sort_by_key(|&id| std::cmp::Reverse(vocab.text(id).map_or(0, str::len)));

        Ok(Tokenizer {
            vocab,
            model,
            pieces,
            specials,
            bos,
            eos,
            eot,
            eog,
            add_bos,
            add_eos,
        })
    }

    /// Token ids of `text`. With `add_special`, BOS/EOS are added where the GGUF asks for
    /// them; with `parse_special`, control tokens written in the text (`<|im_start|>`)
    /// become their ids instead of being spelled out.
    pub fn encode(&self, text: &str, add_special: bool, parse_special: bool) -> Vec<u32> {
        let specials = self.specials.iter().filter_map(|&id| {
            let attr = self.vocab.attr(id);
            if !parse_special && attr.intersects(TokenAttr::CONTROL.with(TokenAttr::UNKNOWN)) {
                return None;
            }
            Some((id, self.vocab.text(id)?))
        });
        let fragments = special::partition(text, specials);
        let mut out = Vec::with_capacity(text.len() / 3 + 2);
        if add_special && self.add_bos {
            out.extend(self.bos);
        }
        match &self.model {
            Model::Bpe { pre, merges } => {
                let mut words: Vec<Range<usize>> = Vec::new();
                let mut encoded = String::new();
                let mut scratch = bpe::Scratch::default();
                let map = unicode::ByteMap::get();
                for fragment in &fragments {
                    let range = match fragment {
                        Fragment::Token(id) => {
                            out.push(*id);
                            continue;
                        }
                        Fragment::Text(range) => range.clone(),
                    };
                    let raw = &text[range];
                    words.clear();
                    pre.split(raw, &mut words);
                    for w in &words {
                        encoded.clear();
                        encoded.extend(raw[w.clone()].bytes().map(|b| map.encode(b)));
                        if pre.ignore_merges() {
                            if let Some(id) = self.vocab.id(&encoded) {
                                out.push(id);
                                continue;
                            }
                        }
                        bpe::merge_word(&self.vocab, merges, &encoded, &mut scratch, &mut out);
                    }
                }
            }
            Model::Spm {
                add_space_prefix,
                byte_tokens,
            } => {
                let mut scratch = spm::Scratch::default();
                let mut escaped = String::new();
                let mut prev_special = true;
                for fragment in &fragments {
                    match fragment {
                        Fragment::Token(id) => {
                            out.push(*id);
                            prev_special = true;
                        }
                        Fragment::Text(range) => {
                            escaped.clear();
                            if *add_space_prefix && prev_special {
                                escaped.push('\u{2581}');
                            }
                            for c in text[range.clone()].chars() {
                                escaped.push(if c == ' ' { '\u{2581}' } else { c });
                            }
                            spm::tokenize(
                                &self.vocab,
                                byte_tokens,
                                &escaped,
                                &mut scratch,
                                &mut out,
                            );
                            prev_special = false;
                        }
                    }
                }
            }
        }
        if add_special && self.add_eos {
            out.extend(self.eos);
        }
        out
    }

    /// [`Tokenizer::encode`] for bytes that should be UTF-8; anything else is an error.
    pub fn encode_bytes(
        &self,
        bytes: &[u8],
        add_special: bool,
        parse_special: bool,
    ) -> Result<Vec<u32>, TokenizerError> {
        let text =
            std::str::from_utf8(bytes).map_err(|e| TokenizerError::InvalidUtf8(e.valid_up_to()))?;
        Ok(self.encode(text, add_special, parse_special))
    }

    /// The bytes token `id` stands for, special tokens spelled out (llama.cpp's
    /// `token_to_piece(special = true)`); empty for unknown ids.
    pub fn piece(&self, id: u32) -> &[u8] {
        self.pieces.get(id as usize).map_or(&[], |p| p)
    }

    /// Text of `ids`, concatenating their pieces (invalid UTF-8 becomes U+FFFD).
    pub fn decode(&self, ids: &[u32]) -> String {
        let bytes: Vec<u8> = ids
            .iter()
            .flat_map(|&id| self.piece(id).iter().copied())
            .collect();
        String::from_utf8_lossy(&bytes).into_owned()
    }

    /// A streaming decoder over this vocabulary.
    pub fn decoder(&self) -> Decoder<'_> {
        Decoder::new(self)
    }

    /// Number of tokens in the vocabulary.
    pub fn n_vocab(&self) -> usize {
        self.vocab.len()
    }

    /// The stored text of token `id` (byte-level or `▁`-escaped, as in the GGUF).
    pub fn token_text(&self, id: u32) -> Option<&str> {
        self.vocab.text(id)
    }

    /// The id whose stored text is exactly `text`.
    pub fn token_id(&self, text: &str) -> Option<u32> {
        self.vocab.id(text)
    }

    /// Attributes of token `id` (empty for unknown ids).
    pub fn attr(&self, id: u32) -> TokenAttr {
        self.vocab.attr(id)
    }

    /// Beginning-of-sequence token.
    pub fn bos(&self) -> Option<u32> {
        self.bos
    }

    /// End-of-sequence token.
    pub fn eos(&self) -> Option<u32> {
        self.eos
    }

    /// End-of-turn token (`<|im_end|>`, `<end_of_turn>`, ...), if the vocabulary has one.
    pub fn eot(&self) -> Option<u32> {
        self.eot
    }

    /// Whether generation should stop at `id`.
    pub fn is_eog(&self, id: u32) -> bool {
        self.eog.contains(&id)
    }

    /// All end-of-generation tokens, ascending.
    pub fn eog_ids(&self) -> impl Iterator<Item = u32> + '_ {
        self.eog.iter().copied()
    }

    /// Whether [`Tokenizer::encode`] prepends BOS when asked to add special tokens.
    pub fn adds_bos(&self) -> bool {
        self.add_bos
    }
}

/// `tokenizer.ggml.scores` as floats (integers are accepted, as llama.cpp does); zeros
/// when absent.
fn read_scores(meta: &Metadata, n: usize) -> Result<Vec<f32>, TokenizerError> {
    const KEY: &str = "tokenizer.ggml.scores";
    let scores: Vec<f32> = match meta.get(KEY) {
        None => return Ok(vec![0.0; n]),
        Some(Value::Array(Array::F32(v))) => v.clone(),
        Some(Value::Array(Array::I32(v))) => v.iter().map(|&s| s as f32).collect(),
        Some(_) => {
            return Err(TokenizerError::WrongArrayType {
                key: KEY,
                expected: "f32 or i32",
            })
        }
    };
    if scores.len() < n {
        return Err(TokenizerError::LengthMismatch {
            key: KEY,
            expected: n,
            found: scores.len(),
        });
    }
    Ok(scores)
}

/// Token attributes from `tokenizer.ggml.token_type`; all normal when absent.
fn read_attrs(meta: &Metadata, n: usize) -> Result<Vec<TokenAttr>, TokenizerError> {
    const KEY: &str = "tokenizer.ggml.token_type";
    let types = match meta.get(KEY) {
        None => return Ok(vec![TokenAttr::NORMAL; n]),
        Some(Value::Array(Array::I32(v))) => v,
        Some(_) => {
            return Err(TokenizerError::WrongArrayType {
                key: KEY,
                expected: "i32",
            })
        }
    };
    if types.len() < n {
        return Err(TokenizerError::LengthMismatch {
            key: KEY,
            expected: n,
            found: types.len(),
        });
    }
    Ok(types[..n]
        .iter()
        .map(|&t| TokenAttr::from_type(t))
        .collect())
}
