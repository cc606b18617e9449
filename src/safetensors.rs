//! A strict reader for the safetensors format: an 8-byte little-endian header length,
//! a JSON header `{name: {dtype, shape, data_offsets: [begin, end]}}`, then the data.
//! Every number from the file is checked against the file's real length before use;
//! nothing is allocated from an unchecked size.

use crate::error::{Error, Result};
use crate::tensor::DType;
use std::collections::BTreeMap;

/// A header larger than this is rejected before it is parsed (real headers are KBs).
const MAX_HEADER_BYTES: u64 = 100 << 20;
const MAX_DIMS: usize = 8;

#[derive(Clone, Debug)]
pub struct TensorInfo {
    pub dtype: DType,
    pub shape: Vec<usize>,
    /// Byte range inside the file (already offset past the header).
    pub start: usize,
    pub end: usize,
}

/// One parsed safetensors file: its bytes and its tensor table.
pub struct SafeTensors {
    pub file: String,
    pub bytes: Vec<u8>,
    pub tensors: BTreeMap<String, TensorInfo>,
}

impl SafeTensors {
    pub fn parse(file: &str, bytes: Vec<u8>) -> Result<Self> {
        let len = bytes.len() as u64;
        if len < 8 {
            return Err(Error::format(file, format!("truncated: {len} bytes, need at least 8 for the header length")));
        }
        let mut n = [0u8; 8];
        n.copy_from_slice(&bytes[..8]);
        let header_len = u64::from_le_bytes(n);
        if header_len > MAX_HEADER_BYTES {
            return Err(Error::format(
                file,
                format!("header length {header_len} exceeds the {MAX_HEADER_BYTES}-byte limit"),
            ));
        }
        if 8 + header_len > len {
            return Err(Error::format(
                file,
                format!(
                    "truncated: header claims {header_len} bytes but the file has only {} after the length",
                    len - 8
                ),
            ));
        }
        let data_start = 8 + header_len as usize;
        let data_len = bytes.len() - data_start;
        let header: serde_json::Value = serde_json::from_slice(&bytes[8..data_start])
            .map_err(|e| Error::format(file, format!("header is not valid JSON: {e}")))?;
        let obj = header.as_object().ok_or_else(|| Error::format(file, "header is not a JSON object"))?;

        let mut tensors = BTreeMap::new();
        for (name, v) in obj {
            if name == "__metadata__" {
                continue;
            }
            let bad = |reason: String| Error::tensor(file, name, reason);
            let dtype_s = v.get("dtype").and_then(|d| d.as_str()).ok_or_else(|| bad("no dtype".into()))?;
            let dtype = DType::from_safetensors(dtype_s);
            let shape_v = v.get("shape").and_then(|s| s.as_array()).ok_or_else(|| bad("no shape".into()))?;
            if shape_v.len() > MAX_DIMS {
                return Err(bad(format!("{} dimensions (at most {MAX_DIMS})", shape_v.len())));
            }
            let mut shape = Vec::with_capacity(shape_v.len());
            for d in shape_v {
                let d = d.as_u64().ok_or_else(|| bad(format!("shape entry {d} is not an integer")))?;
                shape.push(usize::try_from(d).map_err(|_| bad(format!("dimension {d} too large")))?);
            }
            let offs = v.get("data_offsets").and_then(|o| o.as_array()).ok_or_else(|| bad("no data_offsets".into()))?;
            let (b, e) = match offs.as_slice() {
                [b, e] => (
                    b.as_u64().ok_or_else(|| bad("data_offsets[0] is not an integer".into()))?,
                    e.as_u64().ok_or_else(|| bad("data_offsets[1] is not an integer".into()))?,
                ),
                _ => return Err(bad("data_offsets must have two entries".into())),
            };
            if b > e {
                return Err(bad(format!("data_offsets [{b}, {e}] run backwards")));
            }
            if e > data_len as u64 {
                return Err(bad(format!(
                    "data_offsets end {e} is past the end of the data ({data_len} bytes; file truncated or header lies)"
                )));
            }
            let elems = shape.iter().try_fold(1u64, |acc, &d| acc.checked_mul(d as u64));
            let Some(elems) = elems else { return Err(bad(format!("shape {shape:?} overflows"))) };
            if let Some(want) = dtype.block().map(|_| dtype.bytes_for(elems))
                && want != Some(e - b)
            {
                return Err(bad(format!(
                    "shape {shape:?} of {dtype_s} needs {} bytes but data_offsets span {}",
                    want.map_or("too many".to_string(), |w| w.to_string()),
                    e - b
                )));
            }
            tensors.insert(
                name.clone(),
                TensorInfo { dtype, shape, start: data_start + b as usize, end: data_start + e as usize },
            );
        }
        Ok(SafeTensors { file: file.to_string(), bytes, tensors })
    }

    pub fn data(&self, info: &TensorInfo) -> &[u8] {
        &self.bytes[info.start..info.end]
    }
}

/// `model.safetensors.index.json`: which shard holds each tensor. Returns the shard
/// file names in first-seen order and the map tensor -> shard.
pub fn parse_index(bytes: &[u8]) -> Result<(Vec<String>, BTreeMap<String, String>)> {
    const FILE: &str = "model.safetensors.index.json";
    let v: serde_json::Value =
        serde_json::from_slice(bytes).map_err(|e| Error::format(FILE, format!("not valid JSON: {e}")))?;
    let map =
        v.get("weight_map").and_then(|m| m.as_object()).ok_or_else(|| Error::format(FILE, "no 'weight_map' object"))?;
    let mut files: Vec<String> = Vec::new();
    let mut out = BTreeMap::new();
    for (tensor, f) in map {
        let f = f.as_str().ok_or_else(|| Error::format(FILE, format!("weight_map['{tensor}'] is not a string")))?;
        // Shard names are plain file names next to the index; refuse paths.
        if f.contains('/') || f.contains('\\') || f.starts_with('.') || !f.ends_with(".safetensors") {
            return Err(Error::format(
                FILE,
                format!("shard name '{f}' for '{tensor}' is not a plain .safetensors file name"),
            ));
        }
        if !files.iter().any(|x| x == f) {
            files.push(f.to_string());
        }
        out.insert(tensor.clone(), f.to_string());
    }
    files.sort();
    Ok((files, out))
}
