//! Writing GGUF files: tests build tiny models with it, and received shards are cached in it.

use std::io::{self, Write};

use super::value::{Array, Value};
use super::DEFAULT_ALIGNMENT;
use crate::quant::GgmlType;

/// A GGUF v3 file under construction, held in memory.
#[derive(Default)]
pub struct GgufWriter {
    metadata: Vec<(String, Value)>,
    tensors: Vec<(String, Vec<u64>, GgmlType, Vec<u8>)>,
}

impl GgufWriter {
    /// An empty file.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a metadata entry.
    pub fn meta(&mut self, key: &str, value: Value) -> &mut Self {
        self.metadata.push((key.to_owned(), value));
        self
    }

    /// Adds a tensor with dimensions `dims` (innermost first) and raw data in type `ty`.
    ///
    /// # Panics
    /// If `data` does not have the size `dims` and `ty` imply (a bug in the caller).
    pub fn tensor(&mut self, name: &str, dims: &[u64], ty: GgmlType, data: Vec<u8>) -> &mut Self {
        let elements: u64 = dims.iter().product();
        let expected = ty
            .row_bytes(elements as usize)
            .expect("whole number of blocks");
        assert_eq!(data.len(), expected, "tensor {name}: data size");
        self.tensors
            .push((name.to_owned(), dims.to_vec(), ty, data));
        self
    }

    /// Serializes the file.
    pub fn write_to(&self, out: &mut impl Write) -> io::Result<()> {
        let mut head = Vec::new();
        head.extend_from_slice(b"GGUF");
        head.extend_from_slice(&3u32.to_le_bytes());
        head.extend_from_slice(&(self.tensors.len() as u64).to_le_bytes());
        head.extend_from_slice(&(self.metadata.len() as u64).to_le_bytes());
        for (key, value) in &self.metadata {
            put_string(&mut head, key);
            head.extend_from_slice(&(value.value_type() as u32).to_le_bytes());
            put_value(&mut head, value);
        }
        let align = DEFAULT_ALIGNMENT as usize;
        let mut offset = 0usize;
        for (name, dims, ty, data) in &self.tensors {
            put_string(&mut head, name);
            head.extend_from_slice(&(dims.len() as u32).to_le_bytes());
            for d in dims {
                head.extend_from_slice(&d.to_le_bytes());
            }
            head.extend_from_slice(&ty.id().to_le_bytes());
            head.extend_from_slice(&(offset as u64).to_le_bytes());
            offset = (offset + data.len()).next_multiple_of(align);
        }
        head.resize(head.len().next_multiple_of(align), 0);
        out.write_all(&head)?;
        for (_, _, _, data) in &self.tensors {
            out.write_all(data)?;
            let pad = data.len().next_multiple_of(align) - data.len();
            out.write_all(&vec![0u8; pad])?;
        }
        Ok(())
    }

    /// Serializes the file into a byte vector.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut v = Vec::new();
        self.write_to(&mut v).expect("writing to a Vec cannot fail");
        v
    }
}

fn put_string(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn put_value(out: &mut Vec<u8>, v: &Value) {
    match v {
        Value::U8(x) => out.push(*x),
        Value::I8(x) => out.push(*x as u8),
        Value::U16(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::I16(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::U32(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::I32(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::F32(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::U64(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::I64(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::F64(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::Bool(x) => out.push(u8::from(*x)),
        Value::String(s) => put_string(out, s),
        Value::Array(a) => put_array(out, a),
    }
}

fn put_array(out: &mut Vec<u8>, a: &Array) {
    use super::ValueType as T;
    macro_rules! each {
        ($t:expr, $v:expr, |$out:ident, $x:ident| $body:expr) => {{
            out.extend_from_slice(&($t as u32).to_le_bytes());
            out.extend_from_slice(&($v.len() as u64).to_le_bytes());
            for $x in $v {
                let $out = &mut *out;
                $body;
            }
        }};
    }
    match a {
        Array::U8(v) => each!(T::U8, v, |o, x| o.push(*x)),
        Array::I8(v) => each!(T::I8, v, |o, x| o.push(*x as u8)),
        Array::Bool(v) => each!(T::Bool, v, |o, x| o.push(u8::from(*x))),
        Array::U16(v) => each!(T::U16, v, |o, x| o.extend_from_slice(&x.to_le_bytes())),
        Array::I16(v) => each!(T::I16, v, |o, x| o.extend_from_slice(&x.to_le_bytes())),
        Array::U32(v) => each!(T::U32, v, |o, x| o.extend_from_slice(&x.to_le_bytes())),
        Array::I32(v) => each!(T::I32, v, |o, x| o.extend_from_slice(&x.to_le_bytes())),
        Array::F32(v) => each!(T::F32, v, |o, x| o.extend_from_slice(&x.to_le_bytes())),
        Array::U64(v) => each!(T::U64, v, |o, x| o.extend_from_slice(&x.to_le_bytes())),
        Array::I64(v) => each!(T::I64, v, |o, x| o.extend_from_slice(&x.to_le_bytes())),
        Array::F64(v) => each!(T::F64, v, |o, x| o.extend_from_slice(&x.to_le_bytes())),
        Array::String(v) => each!(T::String, v, |o, x| put_string(o, x)),
        Array::Array(v) => each!(T::Array, v, |o, x| put_array(o, x)),
    }
}
