//! A strict GGUF (v2, v3) reader: metadata, tensor table, alignment and data offsets.
//! Every count, length and offset read from the file is checked against the bytes that
//! remain before anything is allocated, so a hostile file gets an error, not an
//! out-of-memory or a panic.

use crate::error::{Error, Result};
use crate::safetensors::TensorInfo;
use crate::tensor::DType;
use std::collections::BTreeMap;

const MAGIC: &[u8; 4] = b"GGUF";
/// ggml's GGML_MAX_DIMS.
const MAX_DIMS: u32 = 4;
const MAX_NAME: u64 = 1 << 16;

#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    U64(u64),
    I64(i64),
    F32(f32),
    F64(f64),
    Bool(bool),
    Str(String),
    Array(Vec<Value>),
}

impl Value {
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Value::U8(v) => Some(v as u64),
            Value::U16(v) => Some(v as u64),
            Value::U32(v) => Some(v as u64),
            Value::U64(v) => Some(v),
            Value::I8(v) => u64::try_from(v).ok(),
            Value::I16(v) => u64::try_from(v).ok(),
            Value::I32(v) => u64::try_from(v).ok(),
            Value::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Value::F32(v) => Some(v as f64),
            Value::F64(v) => Some(v),
            _ => self.as_u64().map(|v| v as f64),
        }
    }
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }
    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            Value::Bool(b) => Some(b),
            _ => None,
        }
    }
    pub fn as_array(&self) -> Option<&[Value]> {
        match self {
            Value::Array(a) => Some(a),
            _ => None,
        }
    }
}

pub struct Gguf {
    pub file: String,
    pub version: u32,
    pub metadata: BTreeMap<String, Value>,
    /// Tensor name -> location; shapes are row-major (GGUF lists dimensions innermost first).
    pub tensors: BTreeMap<String, TensorInfo>,
    pub bytes: Vec<u8>,
}

/// ggml type ids (ggml.h) to our storage types.
fn ggml_type(id: u32) -> DType {
    match id {
        0 => DType::F32,
        1 => DType::F16,
        2 => DType::Q4_0,
        3 => DType::Q4_1,
        8 => DType::Q8_0,
        12 => DType::Q4K,
        14 => DType::Q6K,
        30 => DType::BF16,
        6 => DType::Q5_0,
        7 => DType::Q5_1,
        9 => DType::Unsupported("Q8_1"),
        10 => DType::Q2K,
        11 => DType::Q3K,
        13 => DType::Q5K,
        15 => DType::Unsupported("Q8_K"),
        16 => DType::Unsupported("IQ2_XXS"),
        17 => DType::Unsupported("IQ2_XS"),
        18 => DType::Unsupported("IQ3_XXS"),
        19 => DType::Unsupported("IQ1_S"),
        20 => DType::IQ4NL,
        21 => DType::Unsupported("IQ3_S"),
        22 => DType::Unsupported("IQ2_S"),
        23 => DType::IQ4XS,
        29 => DType::Unsupported("IQ1_M"),
        24 => DType::Unsupported("I8"),
        25 => DType::Unsupported("I16"),
        26 => DType::Unsupported("I32"),
        27 => DType::Unsupported("I64"),
        28 => DType::Unsupported("F64"),
        34 => DType::Unsupported("TQ1_0"),
        35 => DType::Unsupported("TQ2_0"),
        39 => DType::MXFP4,
        _ => DType::Unsupported("unknown"),
    }
}

struct Cursor<'a> {
    b: &'a [u8],
    pos: usize,
    file: &'a str,
}

impl<'a> Cursor<'a> {
    fn err(&self, what: impl std::fmt::Display) -> Error {
        Error::format(self.file, format!("{what} (at byte {})", self.pos))
    }
    fn remaining(&self) -> u64 {
        (self.b.len() - self.pos) as u64
    }
    fn take(&mut self, n: u64, what: &str) -> Result<&'a [u8]> {
        if n > self.remaining() {
            return Err(self.err(format!("truncated: {what} needs {n} bytes, {} left", self.remaining())));
        }
        let s = &self.b[self.pos..self.pos + n as usize];
        self.pos += n as usize;
        Ok(s)
    }
    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N]> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N as u64, what)?);
        Ok(a)
    }
    fn u32(&mut self, what: &str) -> Result<u32> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }
    fn u64(&mut self, what: &str) -> Result<u64> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }
    fn string(&mut self, what: &str, max: u64) -> Result<String> {
        let n = self.u64(what)?;
        if n > max || n > self.remaining() {
            return Err(
                self.err(format!("{what}: string length {n} exceeds the {} bytes left", self.remaining().min(max)))
            );
        }
        let raw = self.take(n, what)?;
        // Vocabularies carry arbitrary bytes; keep them lossily rather than failing.
        Ok(String::from_utf8_lossy(raw).into_owned())
    }

    fn value(&mut self, ty: u32, key: &str, depth: u32) -> Result<Value> {
        Ok(match ty {
            0 => Value::U8(self.array::<1>(key)?[0]),
            1 => Value::I8(self.array::<1>(key)?[0] as i8),
            2 => Value::U16(u16::from_le_bytes(self.array(key)?)),
            3 => Value::I16(i16::from_le_bytes(self.array(key)?)),
            4 => Value::U32(self.u32(key)?),
            5 => Value::I32(i32::from_le_bytes(self.array(key)?)),
            6 => Value::F32(f32::from_le_bytes(self.array(key)?)),
            7 => match self.array::<1>(key)?[0] {
                0 => Value::Bool(false),
                1 => Value::Bool(true),
                b => return Err(self.err(format!("'{key}': bool byte {b}"))),
            },
            8 => Value::Str(self.string(key, u64::MAX)?),
            9 => {
                if depth > 2 {
                    return Err(self.err(format!("'{key}': arrays nested too deeply")));
                }
                let ety = self.u32(key)?;
                let n = self.u64(key)?;
                // Each element takes at least one byte (strings eight): bound n by what is left.
                let min = match ety {
                    0 | 1 | 7 => 1,
                    2 | 3 => 2,
                    4..=6 => 4,
                    8 | 10..=12 => 8,
                    9 => 12,
                    t => return Err(self.err(format!("'{key}': unknown array element type {t}"))),
                };
                if n.checked_mul(min).is_none_or(|b| b > self.remaining()) {
                    return Err(
                        self.err(format!("'{key}': array of {n} elements exceeds the {} bytes left", self.remaining()))
                    );
                }
                let mut v = Vec::with_capacity(n as usize);
                for _ in 0..n {
                    v.push(self.value(ety, key, depth + 1)?);
                }
                Value::Array(v)
            }
            10 => Value::U64(self.u64(key)?),
            11 => Value::I64(i64::from_le_bytes(self.array(key)?)),
            12 => Value::F64(f64::from_le_bytes(self.array(key)?)),
            t => return Err(self.err(format!("'{key}': unknown value type {t}"))),
        })
    }
}

impl Gguf {
    pub fn parse(file: &str, bytes: Vec<u8>) -> Result<Gguf> {
        let (version, metadata, tensors) = {
            let mut c = Cursor { b: &bytes, pos: 0, file };
            if c.take(4, "magic")? != MAGIC {
                return Err(Error::format(file, "not a GGUF file (bad magic)"));
            }
            let version = c.u32("version")?;
            if !(2..=3).contains(&version) {
                return Err(Error::format(file, format!("GGUF version {version} is not supported (2 or 3)")));
            }
            let n_tensors = c.u64("tensor count")?;
            let n_kv = c.u64("metadata count")?;
            // A tensor entry is at least 8+1+4+4*8... bytes, a metadata entry at least 13.
            if n_tensors > c.remaining() / 24 {
                return Err(c.err(format!(
                    "tensor count {n_tensors} is impossible for a file of {} bytes (truncated or corrupt)",
                    bytes.len()
                )));
            }
            if n_kv > c.remaining() / 13 {
                return Err(c.err(format!(
                    "metadata count {n_kv} is impossible for a file of {} bytes (truncated or corrupt)",
                    bytes.len()
                )));
            }
            let mut metadata = BTreeMap::new();
            for _ in 0..n_kv {
                let key = c.string("metadata key", MAX_NAME)?;
                let ty = c.u32(&key)?;
                let v = c.value(ty, &key, 0)?;
                metadata.insert(key, v);
            }
            let mut raw = Vec::with_capacity(n_tensors as usize);
            for _ in 0..n_tensors {
                let name = c.string("tensor name", MAX_NAME)?;
                let n_dims = c.u32(&name)?;
                if n_dims == 0 || n_dims > MAX_DIMS {
                    return Err(Error::tensor(file, &name, format!("{n_dims} dimensions (1 to {MAX_DIMS})")));
                }
                let mut dims = Vec::with_capacity(n_dims as usize);
                for _ in 0..n_dims {
                    dims.push(c.u64(&name)?);
                }
                let ty = c.u32(&name)?;
                let off = c.u64(&name)?;
                raw.push((name, dims, ty, off));
            }
            let align = match metadata.get("general.alignment") {
                None => 32,
                Some(v) => match v.as_u64() {
                    Some(a) if a.is_power_of_two() && a <= 1 << 16 => a,
                    _ => return Err(Error::format(file, format!("general.alignment {v:?} is not a power of two"))),
                },
            };
            let data_start = (c.pos as u64).next_multiple_of(align);
            let len = bytes.len() as u64;
            let mut tensors = BTreeMap::new();
            for (name, dims, ty, off) in raw {
                let bad = |r: String| Error::tensor(file, &name, r);
                let dtype = ggml_type(ty);
                let numel = dims
                    .iter()
                    .try_fold(1u64, |a, &d| a.checked_mul(d))
                    .ok_or_else(|| bad(format!("dimensions {dims:?} overflow")))?;
                let size = dtype.bytes_for(numel).ok_or_else(|| {
                    bad(format!("{} elements of type {} ({ty}) are not whole blocks or too many", numel, dtype.name()))
                })?;
                if off % align != 0 {
                    return Err(bad(format!("data offset {off} is not aligned to {align}")));
                }
                let start = data_start.checked_add(off).filter(|s| *s <= len);
                let end = start.and_then(|s| s.checked_add(size)).filter(|e| *e <= len);
                let (Some(start), Some(end)) = (start, end) else {
                    return Err(bad(format!(
                        "data at offset {off} ({size} bytes) runs past the end of the file ({len} bytes)"
                    )));
                };
                let shape: Vec<usize> = dims.iter().rev().map(|&d| d as usize).collect();
                if tensors
                    .insert(name.clone(), TensorInfo { dtype, shape, start: start as usize, end: end as usize })
                    .is_some()
                {
                    return Err(bad("appears twice in the tensor table".into()));
                }
            }
            (version, metadata, tensors)
        };
        Ok(Gguf { file: file.to_string(), version, metadata, tensors, bytes })
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        self.metadata.get(key)
    }
}
