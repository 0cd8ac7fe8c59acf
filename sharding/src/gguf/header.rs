use std::collections::HashMap;

use super::value::{Array, Metadata, Value, ValueType};
use super::GgufError;
use crate::quant::GgmlType;

/// Data alignment when the file does not set `general.alignment`.
pub const DEFAULT_ALIGNMENT: u64 = 32;
const MAGIC: [u8; 4] = *b"GGUF";
const MAX_DIMS: u32 = 4;
/// Nesting depth of arrays of arrays we accept (real files use none).
const MAX_ARRAY_DEPTH: u32 = 4;

/// One entry of the tensor index, validated against the file.
#[derive(Clone, Debug, PartialEq)]
pub struct TensorInfo {
    /// Tensor name, e.g. `blk.3.attn_q.weight`.
    pub name: String,
    /// Dimensions, innermost (row length) first, as ggml stores them.
    pub dims: Vec<u64>,
    /// The ggml type id as stored.
    pub type_id: u32,
    /// The type, when this build supports it.
    pub ty: Option<GgmlType>,
    /// Absolute byte offset of the data in the file.
    pub start: usize,
    /// Data length in bytes (0 when the type is unsupported: the size is then unknown).
    pub len: usize,
}

impl TensorInfo {
    /// Number of elements.
    pub fn elements(&self) -> u64 {
        self.dims.iter().product()
    }

    /// Row length (the innermost dimension).
    pub fn row_len(&self) -> usize {
        self.dims.first().copied().unwrap_or(1) as usize
    }

    /// Number of rows (product of the outer dimensions).
    pub fn rows(&self) -> usize {
        self.dims.iter().skip(1).product::<u64>() as usize
    }
}

/// A parsed GGUF header: version, metadata and the validated tensor index.
#[derive(Clone, Debug)]
pub struct Header {
    /// GGUF version (2 or 3).
    pub version: u32,
    /// All metadata.
    pub metadata: Metadata,
    /// Tensor index in file order.
    pub tensors: Vec<TensorInfo>,
    /// Absolute offset of the data section.
    pub data_offset: usize,
    /// The data alignment.
    pub alignment: u64,
    by_name: HashMap<String, usize>,
}

impl Header {
    /// Parses and validates the header of a GGUF file held in `bytes`.
    ///
    /// Every tensor of a supported type is checked to lie inside `bytes`; tensors of other
    /// types are indexed (so the error can name them) and fail only when used.
    pub fn parse(bytes: &[u8]) -> Result<Self, GgufError> {
        Self::parse_prefix(bytes, bytes.len())
    }

    /// Parses the header from the first bytes of a file of `file_len` bytes, checking tensors
    /// against `file_len` instead of the bytes at hand: what a node that fetches a model from
    /// peers piece by piece does before it has the data. Any error may mean the prefix is too
    /// short; a prefix holding the whole header parses exactly as the whole file would.
    pub fn parse_prefix(bytes: &[u8], file_len: usize) -> Result<Self, GgufError> {
        let file_len = file_len.max(bytes.len());
        let mut r = Reader { bytes, pos: 0 };
        let magic: [u8; 4] = r.take(4, "magic")?.try_into().expect("took 4 bytes");
        if magic != MAGIC {
            return Err(GgufError::BadMagic(magic));
        }
        let version = r.u32("version")?;
        if !(2..=3).contains(&version) {
            return Err(GgufError::UnsupportedVersion(version));
        }
        let n_tensors = r.count("tensor count", 8)?;
        let n_kv = r.count("metadata count", 9)?;

        let mut metadata = Metadata::default();
        for _ in 0..n_kv {
            let key = r.string("metadata key")?;
            let type_id = r.u32("metadata value type")?;
            let ty = ValueType::from_id(type_id).ok_or_else(|| GgufError::BadValueType {
                key: key.clone(),
                type_id,
            })?;
            let value = r.value(ty, &key, 0)?;
            metadata.insert(key, value);
        }

        let alignment = match metadata.get("general.alignment") {
            None => DEFAULT_ALIGNMENT,
            Some(v) => v.as_u64().unwrap_or(0),
        };
        if alignment == 0 || !alignment.is_power_of_two() {
            return Err(GgufError::BadAlignment(alignment));
        }

        let mut raw = Vec::with_capacity(n_tensors);
        for _ in 0..n_tensors {
            let name = r.string("tensor name")?;
            let n_dims = r.u32("tensor dimension count")?;
            if n_dims == 0 || n_dims > MAX_DIMS {
                return Err(GgufError::BadShape {
                    name,
                    dims: vec![],
                    why: "dimension count must be 1 to 4",
                });
            }
            let mut dims = Vec::with_capacity(n_dims as usize);
            for _ in 0..n_dims {
                dims.push(r.u64("tensor dimension")?);
            }
            let type_id = r.u32("tensor type")?;
            let offset = r.u64("tensor offset")?;
            raw.push((name, dims, type_id, offset));
        }
        let data_offset = align_up(r.pos as u64, alignment)
            .filter(|&o| o <= file_len as u64)
            .ok_or(GgufError::Truncated {
                what: "data section",
                offset: r.pos,
                needed: 1,
                len: file_len,
            })? as usize;

        let mut tensors = Vec::with_capacity(raw.len());
        let mut by_name = HashMap::with_capacity(raw.len());
        for (name, dims, type_id, offset) in raw {
            let info = validate_tensor(
                name,
                dims,
                type_id,
                offset,
                data_offset,
                alignment,
                file_len,
            )?;
            if by_name.insert(info.name.clone(), tensors.len()).is_some() {
                return Err(GgufError::DuplicateTensor(info.name));
            }
            tensors.push(info);
        }
        Ok(Header {
            version,
            metadata,
            tensors,
            data_offset,
            alignment,
            by_name,
        })
    }

    /// The index entry of tensor `name`.
    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.by_name.get(name).map(|&i| &self.tensors[i])
    }
}

fn validate_tensor(
    name: String,
    dims: Vec<u64>,
    type_id: u32,
    offset: u64,
    data_offset: usize,
    alignment: u64,
    file_len: usize,
) -> Result<TensorInfo, GgufError> {
    let bad = |name: String, dims: Vec<u64>, why| GgufError::BadShape { name, dims, why };
    if dims.contains(&0) {
        return Err(bad(name, dims, "zero-sized dimension"));
    }
    let Some(elements) = dims.iter().try_fold(1u64, |acc, &d| acc.checked_mul(d)) else {
        return Err(bad(name, dims, "element count overflows"));
    };
    if !offset.is_multiple_of(alignment) {
        return Err(GgufError::Misaligned {
            name,
            offset,
            alignment,
        });
    }
    let ty = GgmlType::from_id(type_id).filter(|t| t.is_weight_type());
    let len = match ty {
        None => 0,
        Some(t) => {
            if !dims[0].is_multiple_of(t.block_len() as u64) {
                return Err(bad(
                    name,
                    dims,
                    "row length is not a whole number of blocks",
                ));
            }
            let blocks = elements / t.block_len() as u64;
            blocks
                .checked_mul(t.block_bytes() as u64)
                .ok_or_else(|| bad(name.clone(), dims.clone(), "byte size overflows"))?
        }
    };
    let start = (data_offset as u64).checked_add(offset);
    let end = start.and_then(|s| s.checked_add(len));
    match (start, end) {
        (Some(start), Some(end)) if end <= file_len as u64 => Ok(TensorInfo {
            name,
            dims,
            type_id,
            ty,
            start: start as usize,
            len: len as usize,
        }),
        _ => Err(GgufError::OutOfBounds {
            name,
            start: data_offset as u64 + offset.min(u64::MAX - data_offset as u64),
            end: (data_offset as u64)
                .saturating_add(offset)
                .saturating_add(len),
            len: file_len,
        }),
    }
}

fn align_up(x: u64, alignment: u64) -> Option<u64> {
    x.checked_add(alignment - 1)
        .map(|v| v / alignment * alignment)
}

/// A bounds-checked little-endian cursor.
struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], GgufError> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.bytes.len());
        let Some(end) = end else {
            return Err(GgufError::Truncated {
                what,
                offset: self.pos,
                needed: n,
                len: self.bytes.len(),
            });
        };
        let s = &self.bytes[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N], GgufError> {
        Ok(self.take(N, what)?.try_into().expect("took N bytes"))
    }

    fn u32(&mut self, what: &'static str) -> Result<u32, GgufError> {
        self.array(what).map(u32::from_le_bytes)
    }

    fn u64(&mut self, what: &'static str) -> Result<u64, GgufError> {
        self.array(what).map(u64::from_le_bytes)
    }

    /// A count of items each at least `min_item_bytes` long: rejected when the rest of the
    /// input could not hold that many, so no allocation is ever sized by a lying header.
    fn count(&mut self, what: &'static str, min_item_bytes: usize) -> Result<usize, GgufError> {
        let n = self.u64(what)?;
        let remaining = (self.bytes.len() - self.pos) as u64;
        if n.saturating_mul(min_item_bytes.max(1) as u64) > remaining {
            return Err(GgufError::Implausible { what, value: n });
        }
        Ok(n as usize)
    }

    fn string(&mut self, what: &'static str) -> Result<String, GgufError> {
        let len = self.u64(what)?;
        let len = usize::try_from(len).map_err(|_| GgufError::Implausible { what, value: len })?;
        let offset = self.pos;
        let raw = self.take(len, what)?;
        String::from_utf8(raw.to_vec()).map_err(|_| GgufError::BadUtf8 { what, offset })
    }

    fn value(&mut self, ty: ValueType, key: &str, depth: u32) -> Result<Value, GgufError> {
        const W: &str = "metadata value";
        Ok(match ty {
            ValueType::U8 => Value::U8(self.array::<1>(W)?[0]),
            ValueType::I8 => Value::I8(self.array::<1>(W)?[0] as i8),
            ValueType::U16 => Value::U16(u16::from_le_bytes(self.array(W)?)),
            ValueType::I16 => Value::I16(i16::from_le_bytes(self.array(W)?)),
            ValueType::U32 => Value::U32(u32::from_le_bytes(self.array(W)?)),
            ValueType::I32 => Value::I32(i32::from_le_bytes(self.array(W)?)),
            ValueType::F32 => Value::F32(f32::from_le_bytes(self.array(W)?)),
            ValueType::U64 => Value::U64(u64::from_le_bytes(self.array(W)?)),
            ValueType::I64 => Value::I64(i64::from_le_bytes(self.array(W)?)),
            ValueType::F64 => Value::F64(f64::from_le_bytes(self.array(W)?)),
            ValueType::Bool => Value::Bool(self.array::<1>(W)?[0] != 0),
            ValueType::String => Value::String(self.string(W)?),
            ValueType::Array => Value::Array(self.array_value(key, depth)?),
        })
    }

    fn array_value(&mut self, key: &str, depth: u32) -> Result<Array, GgufError> {
        const W: &str = "metadata array";
        if depth >= MAX_ARRAY_DEPTH {
            return Err(GgufError::Implausible {
                what: "array nesting depth",
                value: depth.into(),
            });
        }
        let type_id = self.u32(W)?;
        let ty = ValueType::from_id(type_id).ok_or_else(|| GgufError::BadValueType {
            key: key.to_owned(),
            type_id,
        })?;
        // Strings need at least their 8-byte length, arrays their 12-byte header.
        let min = ty
            .fixed_size()
            .unwrap_or(if ty == ValueType::String { 8 } else { 12 });
        let n = self.count(W, min)?;
        macro_rules! fixed {
            ($variant:ident, $t:ty) => {{
                let raw = self.take(n * std::mem::size_of::<$t>(), W)?;
                Array::$variant(
                    raw.chunks_exact(std::mem::size_of::<$t>())
                        .map(|c| <$t>::from_le_bytes(c.try_into().expect("exact chunk")))
                        .collect(),
                )
            }};
        }
        Ok(match ty {
            ValueType::U8 => Array::U8(self.take(n, W)?.to_vec()),
            ValueType::I8 => Array::I8(self.take(n, W)?.iter().map(|&b| b as i8).collect()),
            ValueType::Bool => Array::Bool(self.take(n, W)?.iter().map(|&b| b != 0).collect()),
            ValueType::U16 => fixed!(U16, u16),
            ValueType::I16 => fixed!(I16, i16),
            ValueType::U32 => fixed!(U32, u32),
            ValueType::I32 => fixed!(I32, i32),
            ValueType::F32 => fixed!(F32, f32),
            ValueType::U64 => fixed!(U64, u64),
            ValueType::I64 => fixed!(I64, i64),
            ValueType::F64 => fixed!(F64, f64),
            ValueType::String => {
                let mut v = Vec::with_capacity(n);
                for _ in 0..n {
                    v.push(self.string(W)?);
                }
                Array::String(v)
            }
            ValueType::Array => {
                let mut v = Vec::with_capacity(n);
                for _ in 0..n {
                    v.push(self.array_value(key, depth + 1)?);
                }
                Array::Array(v)
            }
        })
    }
}
