//! Block quantization formats (GGUF's Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q2_K, Q3_K, Q4_K,
//! Q5_K, Q6_K, IQ4_NL, IQ4_XS, MXFP4):
//! - `dequantize`: the CPU reference, the same arithmetic as gguf-py's `dequantize`;
//! - `quantize`: Q8_0/Q4_0/Q4_1 from f32, bit-identical to gguf-py's `quantize`;
//! - `repack`: the GPU layout the kernels read (`shaders/lib/weights.wgsl`).
//!
//! GPU layout, structure-of-arrays in one buffer of u32 words, all in element order:
//!   quants  at word 0: f32/f16/bf16 values as stored; i8 (Q8_0) four per word;
//!           4-bit values (Q4_*, MXFP4, the low 4 bits of Q6_K) eight per word, element
//!           8w+k in bits 4k..4k+3 (GGUF's within-block nibble order is undone);
//!           2-bit values (Q2_K, Q3_K's low bits) sixteen per word, element 16w+k in
//!           bits 2k..2k+1;
//!   high    at word `h_off`: Q6_K's top 2 bits, sixteen per word; the fifth bit of
//!           Q5_0/Q5_1/Q5_K and Q3_K's hmask bit, 32 per word (element 32w+k in bit k);
//!   scales  at word `s_off`: f16 d per 32 (Q8_0, Q4_0, Q5_0, IQ4_NL); f16 (d, m) per 32
//!           (Q4_1, Q5_1); the E8M0 byte per 32 (MXFP4); per super-block of 256:
//!           the 16 header bytes (Q4_K, Q5_K: d, dmin, 12 packed 6-bit scales/mins);
//!           16 i8 scales + f16 d + 2 pad bytes (Q6_K, and Q3_K with its 6-bit scales
//!           unpacked, minus 32); 16 (scale, min) nibble bytes + f16 d, dmin (Q2_K);
//!           f16 d + 2 pad bytes + 8 i8 sub-block scales, minus 32 (IQ4_XS).
//! Concatenating tensors concatenates each region, so fused and stacked tensors
//! (q|k|v, experts) repack tensor by tensor.

use crate::error::{Error, Result};
use crate::tensor::DType;
use half::f16;

fn f16_at(b: &[u8], i: usize) -> f32 {
    f16::from_bits(u16::from_le_bytes([b[i], b[i + 1]])).to_f32()
}

/// Q4_K's 8 (scale, min) pairs of 6 bits, packed in 12 bytes.
pub fn q4k_scale_min(s: &[u8], j: usize) -> (u8, u8) {
    if j < 4 {
        (s[j] & 63, s[j + 4] & 63)
    } else {
        ((s[j + 4] & 0xF) | ((s[j - 4] >> 6) << 4), (s[j + 4] >> 4) | ((s[j] >> 6) << 4))
    }
}

/// Stored bytes to f32, exactly as gguf-py computes it (f32 arithmetic, same order).
pub fn dequantize(dtype: DType, bytes: &[u8]) -> Vec<f32> {
    match dtype {
        DType::F32 => bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect(),
        DType::F16 => {
            bytes.chunks_exact(2).map(|c| f16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f32()).collect()
        }
        DType::BF16 => {
            bytes.chunks_exact(2).map(|c| half::bf16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f32()).collect()
        }
        DType::Q8_0 => bytes
            .chunks_exact(34)
            .flat_map(|b| {
                let d = f16_at(b, 0);
                b[2..].iter().map(move |&q| q as i8 as f32 * d)
            })
            .collect(),
        DType::Q4_0 => bytes
            .chunks_exact(18)
            .flat_map(|b| {
                let d = f16_at(b, 0);
                let qs = &b[2..];
                (0..32).map(move |i| d * (nibble(qs, i) as i8 - 8) as f32)
            })
            .collect(),
        DType::Q4_1 => bytes
            .chunks_exact(20)
            .flat_map(|b| {
                let (d, m) = (f16_at(b, 0), f16_at(b, 2));
                let qs = &b[4..];
                (0..32).map(move |i| d * nibble(qs, i) as f32 + m)
            })
            .collect(),
        DType::Q4K => bytes
            .chunks_exact(144)
            .flat_map(|b| {
                let (d, dmin) = (f16_at(b, 0), f16_at(b, 2));
                let (sc, qs) = (&b[4..16], &b[16..]);
                (0..256).map(move |e| {
                    let (s, m) = q4k_scale_min(sc, e / 32);
                    (d * s as f32) * q4k_nibble(qs, e) as f32 - dmin * m as f32
                })
            })
            .collect(),
        DType::Q6K => bytes
            .chunks_exact(210)
            .flat_map(|b| {
                let d = f16_at(b, 208);
                (0..256).map(move |e| (d * (b[192 + e / 16] as i8) as f32) * (q6k_value(b, e) as i32 - 32) as f32)
            })
            .collect(),
        DType::MXFP4 => bytes
            .chunks_exact(17)
            .flat_map(|b| {
                let d = e8m0_half(b[0]);
                let qs = &b[1..];
                (0..32).map(move |i| d * MXFP4_VALUES[nibble(qs, i) as usize] as f32)
            })
            .collect(),
        DType::Q5_0 => bytes
            .chunks_exact(22)
            .flat_map(|b| {
                let d = f16_at(b, 0);
                let qh = u32::from_le_bytes([b[2], b[3], b[4], b[5]]);
                let qs = &b[6..];
                (0..32).map(move |i| d * (q5(qs, qh, i) as i8 - 16) as f32)
            })
            .collect(),
        DType::Q5_1 => bytes
            .chunks_exact(24)
            .flat_map(|b| {
                let (d, m) = (f16_at(b, 0), f16_at(b, 2));
                let qh = u32::from_le_bytes([b[4], b[5], b[6], b[7]]);
                let qs = &b[8..];
                (0..32).map(move |i| d * q5(qs, qh, i) as f32 + m)
            })
            .collect(),
        DType::Q5K => bytes
            .chunks_exact(176)
            .flat_map(|b| {
                let (d, dmin) = (f16_at(b, 0), f16_at(b, 2));
                let (sc, qh, qs) = (&b[4..16], &b[16..48], &b[48..]);
                (0..256).map(move |e| {
                    let (s, m) = q4k_scale_min(sc, e / 32);
                    let q = q4k_nibble(qs, e) | (q5k_high(qh, e) << 4);
                    (d * s as f32) * q as f32 - dmin * m as f32
                })
            })
            .collect(),
        DType::Q2K => bytes
            .chunks_exact(84)
            .flat_map(|b| {
                let (d, dmin) = (f16_at(b, 80), f16_at(b, 82));
                (0..256).map(move |e| {
                    let sc = b[e / 16];
                    (d * (sc & 0xF) as f32) * q2(&b[16..80], e) as f32 - dmin * (sc >> 4) as f32
                })
            })
            .collect(),
        DType::Q3K => bytes
            .chunks_exact(110)
            .flat_map(|b| {
                let d = f16_at(b, 108);
                (0..256).map(move |e| (d * q3k_scale(&b[96..108], e / 16) as f32) * q3k_value(b, e) as f32)
            })
            .collect(),
        DType::IQ4NL => bytes
            .chunks_exact(18)
            .flat_map(|b| {
                let d = f16_at(b, 0);
                let qs = &b[2..];
                (0..32).map(move |i| d * IQ4NL_VALUES[nibble(qs, i) as usize] as f32)
            })
            .collect(),
        DType::IQ4XS => bytes
            .chunks_exact(136)
            .flat_map(|b| {
                let d = f16_at(b, 0);
                (0..256).map(move |e| {
                    let dl = d * iq4xs_scale(b, e / 32) as f32;
                    dl * IQ4NL_VALUES[nibble(&b[8 + 16 * (e / 32)..], e % 32) as usize] as f32
                })
            })
            .collect(),
        DType::Unsupported(_) => Vec::new(),
    }
}

/// IQ4_NL's (and IQ4_XS's) 16 non-linear levels (ggml's kvalues_iq4nl).
pub const IQ4NL_VALUES: [i8; 16] = [-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113];

/// Q5_0/Q5_1: element i's 5-bit value, the nibble plus bit i of qh as bit 4.
fn q5(qs: &[u8], qh: u32, i: usize) -> u8 {
    nibble(qs, i) | ((((qh >> i) & 1) as u8) << 4)
}

/// Q5_K: the fifth bit of element e (qh: 32 bytes; byte e % 32, bit e / 32).
fn q5k_high(qh: &[u8], e: usize) -> u8 {
    (qh[e % 32] >> (e / 32)) & 1
}

/// Q2_K/Q3_K: element e's 2-bit value (64 bytes: each 32-byte half holds 128 elements,
/// four 32-element rows per byte at shifts 0, 2, 4, 6).
fn q2(qs: &[u8], e: usize) -> u8 {
    let (h, r) = (e / 128, e % 128);
    (qs[h * 32 + r % 32] >> (2 * (r / 32))) & 3
}

/// Q3_K: element e's signed 3-bit value, the 2-bit value minus 4 unless its hmask bit
/// (byte e % 32, bit e / 32) is set.
fn q3k_value(b: &[u8], e: usize) -> i8 {
    let high = (b[e % 32] >> (e / 32)) & 1;
    q2(&b[32..96], e) as i8 - if high == 1 { 0 } else { 4 }
}

/// Q3_K: the 16 six-bit scales (minus 32) packed in 12 bytes: low 4 bits in bytes 0..8
/// (low nibbles for scales 0..8, high nibbles for 8..16), top 2 bits in bytes 8..12.
pub fn q3k_scale(s: &[u8], j: usize) -> i8 {
    let low = if j < 8 { s[j] & 0xF } else { s[j - 8] >> 4 };
    let high = (s[8 + j % 4] >> (2 * (j / 4))) & 3;
    (low | (high << 4)) as i8 - 32
}

/// IQ4_XS: sub-block j's scale (minus 32): 4 bits from scales_l, 2 from scales_h.
pub fn iq4xs_scale(b: &[u8], j: usize) -> i8 {
    let sh = u16::from_le_bytes([b[2], b[3]]);
    let low = (b[4 + j / 2] >> (4 * (j % 2))) & 0xF;
    let high = ((sh >> (2 * j)) & 3) as u8;
    (low | (high << 4)) as i8 - 32
}

/// MXFP4's E2M1 values, doubled (ggml's kvalues_mxfp4).
pub const MXFP4_VALUES: [i8; 16] = [0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12];

/// Half the E8M0 scale 2^(e - 127), as ggml_e8m0_to_fp32_half computes it.
pub fn e8m0_half(e: u8) -> f32 {
    let bits = if e < 2 { 0x0020_0000u32 << e } else { ((e as u32) - 1) << 23 };
    f32::from_bits(bits)
}

/// Element i of a 32-element block of nibbles: low nibbles hold 0..16, high 16..32.
fn nibble(qs: &[u8], i: usize) -> u8 {
    if i < 16 { qs[i] & 0xF } else { qs[i - 16] >> 4 }
}

/// Q4_K: each 32-byte chunk holds 64 elements, low nibbles first.
fn q4k_nibble(qs: &[u8], e: usize) -> u8 {
    let (chunk, r) = (e / 64, e % 64);
    let byte = qs[chunk * 32 + r % 32];
    if r < 32 { byte & 0xF } else { byte >> 4 }
}

/// Q6_K: the 6-bit value of element e of a super-block (ql: 128 bytes, qh: 64 bytes).
fn q6k_value(b: &[u8], e: usize) -> u8 {
    let (h, r) = (e / 128, e % 128);
    let lb = b[h * 64 + r % 64];
    let lo = if r < 64 { lb & 0xF } else { lb >> 4 };
    let hi = (b[128 + h * 32 + r % 32] >> (2 * (r / 32))) & 3;
    lo | (hi << 4)
}

/// gguf-py's np_roundf: round half away from zero.
fn roundf(x: f32) -> f32 {
    let a = x.abs();
    let f = a.floor();
    let r = f + (2.0 * (a - f)).floor();
    if x < 0.0 { -r } else { r }
}

/// f32 rows to Q8_0/Q4_0/Q4_1 blocks, bit-identical to gguf-py `quantize` (which works in
/// f32 and stores scales as f16). `v.len()` must be a multiple of 32.
pub fn quantize(dtype: DType, v: &[f32]) -> Result<Vec<u8>> {
    if !v.len().is_multiple_of(32) {
        return Err(Error::input(format!(
            "{} quantization needs a multiple of 32 values, got {}",
            dtype.name(),
            v.len()
        )));
    }
    let inv = |d: f32| if d == 0.0 { 0.0 } else { 1.0 / d };
    let mut out = Vec::with_capacity(v.len() / 32 * dtype.block().map_or(0, |b| b.1));
    for b in v.chunks_exact(32) {
        match dtype {
            DType::Q8_0 => {
                let d = b.iter().fold(0.0f32, |m, x| m.max(x.abs())) / 127.0;
                let id = inv(d);
                out.extend(f16::from_f32(d).to_bits().to_le_bytes());
                out.extend(b.iter().map(|x| roundf(x * id) as i8 as u8));
            }
            DType::Q4_0 => {
                // The signed value of largest magnitude (the first on ties), as numpy argmax.
                let mut imax = 0;
                for (i, x) in b.iter().enumerate() {
                    if x.abs() > b[imax].abs() {
                        imax = i;
                    }
                }
                let d = b[imax] / -8.0;
                let id = inv(d);
                let q: Vec<u8> = b.iter().map(|x| quant_u4((x * id + 8.5).trunc())).collect();
                out.extend(f16::from_f32(d).to_bits().to_le_bytes());
                out.extend((0..16).map(|i| q[i] | (q[i + 16] << 4)));
            }
            DType::Q4_1 => {
                let max = b.iter().fold(f32::NEG_INFINITY, |m, x| m.max(*x));
                let min = b.iter().fold(f32::INFINITY, |m, x| m.min(*x));
                let d = (max - min) / 15.0;
                let id = inv(d);
                let q: Vec<u8> = b.iter().map(|x| quant_u4(((x - min) * id + 0.5).trunc())).collect();
                out.extend(f16::from_f32(d).to_bits().to_le_bytes());
                out.extend(f16::from_f32(min).to_bits().to_le_bytes());
                out.extend((0..16).map(|i| q[i] | (q[i + 16] << 4)));
            }
            other => {
                return Err(Error::input(format!(
                    "quantizing to {} is not supported (q8_0, q4_0, q4_1)",
                    other.name()
                )));
            }
        }
    }
    Ok(out)
}

/// numpy's `.astype(np.uint8).clip(0, 15)` of an already truncated float.
fn quant_u4(t: f32) -> u8 {
    (t as i64).rem_euclid(256).clamp(0, 15) as u8
}

/// A tensor (or several, concatenated) in the GPU layout described at the top of this file.
#[derive(Default, Debug, Clone)]
pub struct Packed {
    pub quants: Vec<u8>,
    pub high: Vec<u8>,
    pub scales: Vec<u8>,
}

/// A weight buffer as the kernels read it: its bytes and the word offsets of its regions.
/// Stacked experts are `experts` blocks of `expert_stride` words, each a matrix with the
/// same region offsets, so one expert's weights sit together (and can move alone).
#[derive(Clone, Debug)]
pub struct PackedBuffer {
    pub dtype: DType,
    pub bytes: Vec<u8>,
    pub s_off: u32,
    pub h_off: u32,
    pub experts: u32,
    pub expert_stride: u32,
}

/// Parts of one matrix (concatenated along the first dimension) in the GPU layout.
pub fn pack_matrix(dtype: DType, parts: &[&[u8]]) -> Result<PackedBuffer> {
    let mut p = Packed::default();
    for part in parts {
        p.append(repack(dtype, part));
    }
    p.finish(dtype)
}

/// Stacked experts: expert e's matrix is the concatenation of `experts[e]`'s parts (gate
/// and up rows for the up-projection, the down matrix alone for the down-projection).
pub fn pack_experts(dtype: DType, experts: &[Vec<&[u8]>]) -> Result<PackedBuffer> {
    let mut bytes = Vec::new();
    let mut first: Option<PackedBuffer> = None;
    for (e, parts) in experts.iter().enumerate() {
        let b = pack_matrix(dtype, parts)?;
        if let Some(f) = &first
            && (b.bytes.len(), b.s_off, b.h_off) != (f.bytes.len(), f.s_off, f.h_off)
        {
            return Err(Error::input(format!("expert {e} does not have the shape of expert 0")));
        }
        bytes.extend_from_slice(&b.bytes);
        first.get_or_insert(b);
    }
    let f = first.ok_or_else(|| Error::input("no experts"))?;
    let stride = u32::try_from(f.bytes.len() / 4).map_err(|_| Error::gpu("an expert exceeds 16 GiB"))?;
    Ok(PackedBuffer {
        dtype,
        bytes,
        s_off: f.s_off,
        h_off: f.h_off,
        experts: experts.len() as u32,
        expert_stride: stride,
    })
}

impl Packed {
    pub fn append(&mut self, other: Packed) {
        self.quants.extend(other.quants);
        self.high.extend(other.high);
        self.scales.extend(other.scales);
    }

    pub fn finish(mut self, dtype: DType) -> Result<PackedBuffer> {
        // Regions (and so stacked experts) start on 16 bytes: kernels load vec4<u32>s.
        let pad = |v: &mut Vec<u8>| v.resize(v.len().next_multiple_of(16), 0);
        pad(&mut self.quants);
        pad(&mut self.high);
        pad(&mut self.scales);
        let h_off = self.quants.len() / 4;
        let s_off = h_off + self.high.len() / 4;
        let s_off_u32 = u32::try_from(s_off).map_err(|_| Error::gpu("a weight tensor exceeds 16 GiB"))?;
        let mut bytes = self.quants;
        bytes.extend(self.high);
        bytes.extend(self.scales);
        Ok(PackedBuffer { dtype, bytes, s_off: s_off_u32, h_off: h_off as u32, experts: 1, expert_stride: 0 })
    }
}

/// Bytes one block of `dtype` takes in each region of the GPU layout: (elements, quants,
/// high bits, scales). Every region is in element order, so rows of a matrix are
/// contiguous runs in each.
fn region_bytes(dtype: DType) -> Option<(usize, usize, usize, usize)> {
    Some(match dtype {
        DType::F32 => (1, 4, 0, 0),
        DType::F16 | DType::BF16 => (1, 2, 0, 0),
        DType::Q8_0 => (32, 32, 0, 2),
        DType::Q4_0 | DType::IQ4NL => (32, 16, 0, 2),
        DType::Q4_1 => (32, 16, 0, 4),
        DType::MXFP4 => (32, 16, 0, 1),
        DType::Q5_0 => (32, 16, 4, 2),
        DType::Q5_1 => (32, 16, 4, 4),
        DType::Q4K => (256, 128, 0, 16),
        DType::Q5K => (256, 128, 32, 16),
        DType::Q6K => (256, 128, 64, 20),
        DType::Q2K => (256, 64, 0, 20),
        DType::Q3K => (256, 64, 32, 20),
        DType::IQ4XS => (256, 128, 0, 12),
        DType::Unsupported(_) => return None,
    })
}

/// Whether a buffer of `dtype` whose regions are `quants`, `high` and `scales` bytes long
/// (each padded to 16) holds whole blocks consistently: the same block count in each.
/// A packed manifest's claims about a tensor are checked with it.
pub fn regions_consistent(dtype: DType, quants: u64, high: u64, scales: u64) -> bool {
    let Some((_, q, h, s)) = region_bytes(dtype) else { return false };
    let pad = |n: u64| n.next_multiple_of(16);
    let (q, h, s) = (q as u64, h as u64, s as u64);
    // The block count the quants region allows (it is padded by less than 16 bytes).
    let hi = quants / q;
    let lo = quants.saturating_sub(15).div_ceil(q);
    (lo..=hi).any(|n| pad(n * q) == quants && pad(n * h) == high && pad(n * s) == scales)
}

/// The GPU layout of `elements` values of `dtype` (one matrix or vector, one expert):
/// (where the high bits start, where the scales start, total), in bytes, each region
/// padded to 16 as `Packed::finish` pads it. `None` when the type has no layout or the
/// count is not whole blocks. A packed manifest's tensors are checked against it.
pub fn layout_bytes(dtype: DType, elements: u64) -> Option<(u64, u64, u64)> {
    let (e, q, h, s) = region_bytes(dtype)?;
    if !elements.is_multiple_of(e as u64) {
        return None;
    }
    let n = elements / e as u64;
    let pad = |b: u64| b.checked_next_multiple_of(16);
    let (q, h, s) = (pad(n.checked_mul(q as u64)?)?, pad(n.checked_mul(h as u64)?)?, pad(n.checked_mul(s as u64)?)?);
    Some((q, q + h, q.checked_add(h)?.checked_add(s)?))
}

/// A matrix of `rows` x `cols` in the GPU layout (one expert) cut into row ranges of at
/// most `max_bytes` each, for tables larger than one storage binding (a 262k-token
/// embedding): (the range's buffer, its first row, its row count).
pub fn split_rows(
    b: &PackedBuffer,
    rows: usize,
    cols: usize,
    max_bytes: usize,
) -> Result<Vec<(PackedBuffer, usize, usize)>> {
    let (elems, q, h, s) =
        region_bytes(b.dtype).ok_or_else(|| Error::input(format!("{} has no layout", b.dtype.name())))?;
    if b.experts != 1 || !cols.is_multiple_of(elems) {
        return Err(Error::input(format!("cannot split a {} matrix of {rows}x{cols} by rows", b.dtype.name())));
    }
    let blocks = cols / elems;
    let (qr, hr, sr) = (blocks * q, blocks * h, blocks * s);
    // Each range pads every region to 16 bytes.
    let per_row = qr + hr + sr;
    let fit = (max_bytes.saturating_sub(48) / per_row.max(1)).max(1);
    let (h_at, s_at) = (b.h_off as usize * 4, b.s_off as usize * 4);
    if rows * qr > h_at || h_at + rows * hr > s_at || s_at + rows * sr > b.bytes.len() {
        return Err(Error::input(format!("the {} buffer does not hold {rows}x{cols} weights", b.dtype.name())));
    }
    let mut out = Vec::new();
    let mut r0 = 0;
    while r0 < rows {
        let n = fit.min(rows - r0);
        let part = Packed {
            quants: b.bytes[r0 * qr..(r0 + n) * qr].to_vec(),
            high: b.bytes[h_at + r0 * hr..h_at + (r0 + n) * hr].to_vec(),
            scales: b.bytes[s_at + r0 * sr..s_at + (r0 + n) * sr].to_vec(),
        };
        out.push((part.finish(b.dtype)?, r0, n));
        r0 += n;
    }
    Ok(out)
}

/// Stored bytes of `dtype` (whole blocks) into the GPU layout.
pub fn repack(dtype: DType, bytes: &[u8]) -> Packed {
    let mut p = Packed::default();
    match dtype {
        DType::F32 | DType::F16 | DType::BF16 => p.quants.extend_from_slice(bytes),
        DType::Q8_0 => {
            for b in bytes.chunks_exact(34) {
                p.scales.extend_from_slice(&b[..2]);
                p.quants.extend_from_slice(&b[2..]);
            }
        }
        DType::Q4_0 | DType::Q4_1 | DType::MXFP4 => {
            let hdr = match dtype {
                DType::Q4_0 => 2,
                DType::Q4_1 => 4,
                _ => 1,
            };
            for b in bytes.chunks_exact(hdr + 16) {
                p.scales.extend_from_slice(&b[..hdr]);
                let qs = &b[hdr..];
                p.quants.extend((0..16).map(|j| nibble(qs, 2 * j) | (nibble(qs, 2 * j + 1) << 4)));
            }
        }
        DType::Q4K => {
            for b in bytes.chunks_exact(144) {
                p.scales.extend_from_slice(&b[..16]);
                let qs = &b[16..];
                p.quants.extend((0..128).map(|j| q4k_nibble(qs, 2 * j) | (q4k_nibble(qs, 2 * j + 1) << 4)));
            }
        }
        DType::Q6K => {
            for b in bytes.chunks_exact(210) {
                p.scales.extend_from_slice(&b[192..210]);
                p.scales.extend([0, 0]);
                let q: Vec<u8> = (0..256).map(|e| q6k_value(b, e)).collect();
                p.quants.extend((0..128).map(|j| (q[2 * j] & 0xF) | ((q[2 * j + 1] & 0xF) << 4)));
                p.high.extend((0..64).map(|j| (0..4).fold(0u8, |acc, k| acc | ((q[4 * j + k] >> 4) << (2 * k)))));
            }
        }
        DType::Q5_0 | DType::Q5_1 => {
            let hdr = if dtype == DType::Q5_0 { 2 } else { 4 };
            for b in bytes.chunks_exact(hdr + 20) {
                p.scales.extend_from_slice(&b[..hdr]);
                p.high.extend_from_slice(&b[hdr..hdr + 4]);
                let qs = &b[hdr + 4..];
                p.quants.extend((0..16).map(|j| nibble(qs, 2 * j) | (nibble(qs, 2 * j + 1) << 4)));
            }
        }
        DType::IQ4NL => {
            for b in bytes.chunks_exact(18) {
                p.scales.extend_from_slice(&b[..2]);
                p.quants.extend((0..16).map(|j| nibble(&b[2..], 2 * j) | (nibble(&b[2..], 2 * j + 1) << 4)));
            }
        }
        DType::Q5K => {
            for b in bytes.chunks_exact(176) {
                p.scales.extend_from_slice(&b[..16]);
                let (qh, qs) = (&b[16..48], &b[48..]);
                p.quants.extend((0..128).map(|j| q4k_nibble(qs, 2 * j) | (q4k_nibble(qs, 2 * j + 1) << 4)));
                p.high.extend((0..32).map(|j| (0..8).fold(0u8, |acc, k| acc | (q5k_high(qh, 8 * j + k) << k))));
            }
        }
        DType::Q2K => {
            for b in bytes.chunks_exact(84) {
                p.scales.extend_from_slice(&b[..16]);
                p.scales.extend_from_slice(&b[80..84]);
                p.quants
                    .extend((0..64).map(|j| (0..4).fold(0u8, |acc, k| acc | (q2(&b[16..80], 4 * j + k) << (2 * k)))));
            }
        }
        DType::Q3K => {
            for b in bytes.chunks_exact(110) {
                p.scales.extend((0..16).map(|j| q3k_scale(&b[96..108], j) as u8));
                p.scales.extend_from_slice(&b[108..110]);
                p.scales.extend([0, 0]);
                p.quants
                    .extend((0..64).map(|j| (0..4).fold(0u8, |acc, k| acc | (q2(&b[32..96], 4 * j + k) << (2 * k)))));
                p.high.extend((0..32).map(|j| {
                    (0..8).fold(0u8, |acc, k| acc | (((b[(8 * j + k) % 32] >> ((8 * j + k) / 32)) & 1) << k))
                }));
            }
        }
        DType::IQ4XS => {
            for b in bytes.chunks_exact(136) {
                p.scales.extend_from_slice(&b[..2]);
                p.scales.extend([0, 0]);
                p.scales.extend((0..8).map(|j| iq4xs_scale(b, j) as u8));
                for sub in b[8..].chunks_exact(16) {
                    p.quants.extend((0..16).map(|j| nibble(sub, 2 * j) | (nibble(sub, 2 * j + 1) << 4)));
                }
            }
        }
        DType::Unsupported(_) => {}
    }
    p
}
