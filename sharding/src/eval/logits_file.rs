//! llama.cpp's base-logits file (`llama-perplexity --kl-divergence-base FILE`), read and
//! written byte for byte, so a base made by either tool serves the other.
//!
//! Layout, all little-endian:
//! - the 8 bytes `_logits_`, then `n_ctx`, `n_vocab` and `n_chunk` as 32-bit integers;
//! - the evaluated tokens, `n_chunk × n_ctx` 32-bit ids, as tokenized (a BOS put in front of
//!   each chunk at evaluation time is not stored);
//! - per chunk, one row per scored position (`n_ctx - 1 - n_ctx / 2` of them: the second
//!   half of the chunk but its last position), each `2 * ((n_vocab + 1) / 2) + 4` 16-bit
//!   words: an f32 scale and an f32 minimum log-probability (two words each), then one word
//!   per vocabulary entry (a zero word pads an odd vocabulary). Entry `i` stands for the
//!   log-probability `scale * q[i] + min`; logits more than 16 below the row's maximum are
//!   clamped to the minimum.

use std::io::{self, Read, Write};

/// The file's first 8 bytes.
pub const MAGIC: &[u8; 8] = b"_logits_";

/// Why a base-logits file could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum LogitsFileError {
    /// The underlying file failed.
    #[error(transparent)]
    Io(#[from] io::Error),
    /// The file does not start with `_logits_`.
    #[error("not a llama.cpp base-logits file (no \"_logits_\" header)")]
    NotLogits,
    /// A header field is out of range.
    #[error("bad base-logits header: {0}")]
    BadHeader(String),
    /// The file is shorter than its header says.
    #[error("base-logits file is truncated: {0}")]
    Truncated(&'static str),
    /// A row passed to the writer has the wrong length.
    #[error("a row of {got} logits for a vocabulary of {n_vocab}")]
    RowLength {
        /// Logits given.
        got: usize,
        /// The file's vocabulary.
        n_vocab: usize,
    },
    /// More chunks written than the header announced.
    #[error("the header announced {0} chunks")]
    TooManyChunks(usize),
}

/// The header of a base-logits file: the context, vocabulary and tokens it was made with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Header {
    /// Positions per chunk.
    pub n_ctx: usize,
    /// Vocabulary entries per row.
    pub n_vocab: usize,
    /// Chunks in the file.
    pub n_chunk: usize,
    /// `n_chunk × n_ctx` token ids.
    pub tokens: Vec<u32>,
}

impl Header {
    /// Rows stored per chunk: positions `n_ctx / 2 ..= n_ctx - 2`.
    pub fn rows_per_chunk(&self) -> usize {
        rows_per_chunk(self.n_ctx)
    }

    /// 16-bit words per row.
    pub fn row_words(&self) -> usize {
        row_words(self.n_vocab)
    }
}

/// Rows scored per chunk of `n_ctx` positions.
pub fn rows_per_chunk(n_ctx: usize) -> usize {
    n_ctx.saturating_sub(1 + n_ctx / 2)
}

/// 16-bit words in one row of a vocabulary of `n_vocab`.
pub fn row_words(n_vocab: usize) -> usize {
    2 * n_vocab.div_ceil(2) + 4
}

/// Largest context accepted from a file: far beyond any model here, small enough that a
/// corrupt header cannot make us allocate without bound before the length check.
const MAX_CTX: usize = 1 << 20;
/// Largest vocabulary accepted from a file.
const MAX_VOCAB: usize = 1 << 24;

/// Reads a base-logits file chunk by chunk.
pub struct BaseReader<R> {
    inner: R,
    header: Header,
    chunk: usize,
    words: Vec<u16>,
}

impl BaseReader<io::BufReader<std::fs::File>> {
    /// Opens `path`, reads its header and checks that the file holds every chunk it
    /// announces.
    pub fn open(path: &std::path::Path) -> Result<Self, LogitsFileError> {
        let file = std::fs::File::open(path)?;
        let len = file.metadata()?.len();
        let reader = BaseReader::new(io::BufReader::with_capacity(1 << 20, file))?;
        let h = &reader.header;
        let body = (h.n_chunk as u64)
            .checked_mul(h.rows_per_chunk() as u64)
            .and_then(|n| n.checked_mul(h.row_words() as u64 * 2));
        let need = body.and_then(|b| b.checked_add(20 + 4 * h.tokens.len() as u64));
        match need {
            Some(need) if need <= len => Ok(reader),
            _ => Err(LogitsFileError::Truncated("shorter than its header says")),
        }
    }
}

impl<R: Read> BaseReader<R> {
    /// Reads the header from `inner`.
    pub fn new(mut inner: R) -> Result<Self, LogitsFileError> {
        let mut magic = [0u8; 8];
        read_exact(&mut inner, &mut magic, "header")?;
        if &magic != MAGIC {
            return Err(LogitsFileError::NotLogits);
        }
        let n_ctx = read_i32(&mut inner)?;
        let n_vocab = read_i32(&mut inner)?;
        let n_chunk = read_i32(&mut inner)?;
        let (n_ctx, n_vocab, n_chunk) = match (
            usize::try_from(n_ctx),
            usize::try_from(n_vocab),
            usize::try_from(n_chunk),
        ) {
            (Ok(c), Ok(v), Ok(k)) if (2..=MAX_CTX).contains(&c) && (1..=MAX_VOCAB).contains(&v) => {
                (c, v, k)
            }
            _ => {
                return Err(LogitsFileError::BadHeader(format!(
                    "n_ctx {n_ctx}, n_vocab {n_vocab}, n_chunk {n_chunk}"
                )))
            }
        };
        if n_chunk == 0 || n_chunk > MAX_CTX {
            return Err(LogitsFileError::BadHeader(format!("n_chunk {n_chunk}")));
        }
        let mut bytes = vec![0u8; 4 * n_ctx * n_chunk];
        read_exact(&mut inner, &mut bytes, "tokens")?;
        let tokens = bytes
            .chunks_exact(4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect::<Vec<_>>();
        if let Some(bad) = tokens.iter().find(|&&t| t as usize >= n_vocab) {
            return Err(LogitsFileError::BadHeader(format!(
                "token {bad} outside the vocabulary of {n_vocab}"
            )));
        }
        Ok(BaseReader {
            inner,
            header: Header {
                n_ctx,
                n_vocab,
                n_chunk,
                tokens,
            },
            chunk: 0,
            words: Vec::new(),
        })
    }

    /// The file's header.
    pub fn header(&self) -> &Header {
        &self.header
    }

    /// The next chunk's rows, `rows_per_chunk × row_words` words; `None` after the last.
    pub fn next_chunk(&mut self) -> Result<Option<&[u16]>, LogitsFileError> {
        if self.chunk == self.header.n_chunk {
            return Ok(None);
        }
        let words = self.header.rows_per_chunk() * self.header.row_words();
        let mut bytes = vec![0u8; words * 2];
        read_exact(&mut self.inner, &mut bytes, "log-probabilities")?;
        self.words.clear();
        self.words.extend(
            bytes
                .chunks_exact(2)
                .map(|b| u16::from_le_bytes([b[0], b[1]])),
        );
        self.chunk += 1;
        Ok(Some(&self.words))
    }
}

/// Writes a base-logits file: the header at once, then each chunk's rows.
pub struct BaseWriter<W: Write> {
    inner: W,
    n_ctx: usize,
    n_vocab: usize,
    n_chunk: usize,
    written: usize,
    words: Vec<u16>,
    bytes: Vec<u8>,
}

impl<W: Write> BaseWriter<W> {
    /// Writes the header: `tokens` holds `n_chunk × n_ctx` ids.
    pub fn new(
        mut inner: W,
        n_ctx: usize,
        n_vocab: usize,
        tokens: &[u32],
    ) -> Result<Self, LogitsFileError> {
        let n_chunk = tokens.len() / n_ctx.max(1);
        let fits = |v: usize| i32::try_from(v).is_ok();
        if n_ctx < 2
            || n_chunk == 0
            || n_chunk * n_ctx != tokens.len()
            || !fits(n_ctx)
            || !fits(n_vocab)
        {
            return Err(LogitsFileError::BadHeader(format!(
                "{} tokens for n_ctx {n_ctx}",
                tokens.len()
            )));
        }
        inner.write_all(MAGIC)?;
        for v in [n_ctx, n_vocab, n_chunk] {
            inner.write_all(&(v as i32).to_le_bytes())?;
        }
        let bytes: Vec<u8> = tokens.iter().flat_map(|t| t.to_le_bytes()).collect();
        inner.write_all(&bytes)?;
        Ok(BaseWriter {
            inner,
            n_ctx,
            n_vocab,
            n_chunk,
            written: 0,
            words: vec![0; row_words(n_vocab)],
            bytes: Vec::new(),
        })
    }

    /// Encodes and writes one chunk: `logits` holds its scored rows (`n_vocab` floats each)
    /// and `targets` the token each row predicts. Returns each row's negative
    /// log-likelihood, as llama.cpp computes it while writing.
    pub fn write_chunk(
        &mut self,
        logits: &[f32],
        targets: &[u32],
    ) -> Result<Vec<f64>, LogitsFileError> {
        if self.written == self.n_chunk {
            return Err(LogitsFileError::TooManyChunks(self.n_chunk));
        }
        let rows = rows_per_chunk(self.n_ctx);
        if logits.len() != rows * self.n_vocab || targets.len() != rows {
            return Err(LogitsFileError::RowLength {
                got: logits.len() / rows.max(1),
                n_vocab: self.n_vocab,
            });
        }
        let mut nll = Vec::with_capacity(rows);
        self.bytes.clear();
        for (row, &target) in logits.chunks_exact(self.n_vocab).zip(targets) {
            nll.push(encode_row(row, target as usize, &mut self.words));
            self.bytes
                .extend(self.words.iter().flat_map(|w| w.to_le_bytes()));
        }
        self.inner.write_all(&self.bytes)?;
        self.written += 1;
        Ok(nll)
    }

    /// Flushes and returns the inner writer.
    pub fn finish(mut self) -> Result<W, LogitsFileError> {
        self.inner.flush()?;
        Ok(self.inner)
    }
}

/// Encodes one row of logits into `out` (`row_words(logits.len())` words) as llama.cpp
/// does, and returns the negative log-likelihood of `target`.
pub fn encode_row(logits: &[f32], target: usize, out: &mut [u16]) -> f64 {
    let mut max = logits[0];
    let mut min = logits[0];
    for &l in &logits[1..] {
        max = max.max(l);
        min = min.min(l);
    }
    let min = min.max(max - 16.0);
    let sum_exp: f64 = logits.iter().map(|&l| f64::from((l - max).exp())).sum();
    let log_sum_exp = sum_exp.ln() as f32;
    let min_log_prob = min - max - log_sum_exp;
    let scale = (max - min) / 65535.0;
    let (s, m) = (scale.to_le_bytes(), min_log_prob.to_le_bytes());
    out[0] = u16::from_le_bytes([s[0], s[1]]);
    out[1] = u16::from_le_bytes([s[2], s[3]]);
    out[2] = u16::from_le_bytes([m[0], m[1]]);
    out[3] = u16::from_le_bytes([m[2], m[3]]);
    let q = &mut out[4..];
    q.fill(0);
    if scale != 0.0 {
        let inv = 1.0 / scale;
        for (q, &l) in q.iter_mut().zip(logits) {
            if l > min {
                // llama.cpp's nearest_int: round half to even, then keep the low 16 bits.
                *q = (inv * (l - min)).round_ties_even() as i32 as u16;
            }
        }
    }
    f64::from(max + log_sum_exp - logits[target])
}

/// A stored row's scale and minimum log-probability, and its vocabulary words.
pub fn decode_row(row: &[u16]) -> (f32, f32, &[u16]) {
    let f = |a: u16, b: u16| {
        let (a, b) = (a.to_le_bytes(), b.to_le_bytes());
        f32::from_le_bytes([a[0], a[1], b[0], b[1]])
    };
    (f(row[0], row[1]), f(row[2], row[3]), &row[4..])
}

fn read_exact<R: Read>(
    r: &mut R,
    buf: &mut [u8],
    what: &'static str,
) -> Result<(), LogitsFileError> {
    r.read_exact(buf).map_err(|e| match e.kind() {
        io::ErrorKind::UnexpectedEof => LogitsFileError::Truncated(what),
        _ => LogitsFileError::Io(e),
    })
}

fn read_i32<R: Read>(r: &mut R) -> Result<i32, LogitsFileError> {
    let mut b = [0u8; 4];
    read_exact(r, &mut b, "header")?;
    Ok(i32::from_le_bytes(b))
}

#[cfg(test)]
mod tests;
