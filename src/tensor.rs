//! Element types of stored weights: plain floats and GGUF block quantizations. Conversion
//! to f32 (the CPU reference reads every format through `to_f32`) lives in `quant`.

/// Storage type of a weight tensor. On the GPU every type stays in its packed form (see
/// `quant::repack`); kernels dequantize in registers, so no shader-f16 is needed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DType {
    F32,
    F16,
    BF16,
    /// Blocks of 32: f16 scale, 32 x i8.
    Q8_0,
    /// Blocks of 32: f16 scale, 32 x 4-bit (value = d * (q - 8)).
    Q4_0,
    /// Blocks of 32: f16 scale and min, 32 x 4-bit (value = d * q + m).
    Q4_1,
    /// Super-blocks of 256: f16 d and dmin, 8 six-bit (scale, min) pairs, 256 x 4-bit.
    Q4K,
    /// Super-blocks of 256: 256 x 6-bit, 16 i8 scales, f16 d.
    Q6K,
    /// Blocks of 32: an E8M0 scale byte, 32 x 4-bit E2M1 (OCP microscaling; gpt-oss experts).
    MXFP4,
    /// Any other stored type: parsed so a header is accepted, rejected when used.
    Unsupported(&'static str),
}

impl DType {
    /// The storage types weights can have, as `name` spells them (for error messages).
    pub const SUPPORTED: &'static [&'static str] =
        &["F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q4_K", "Q6_K", "MXFP4"];

    /// A type by its `name`.
    pub fn from_name(name: &str) -> Option<DType> {
        Some(match name {
            "F32" => DType::F32,
            "F16" => DType::F16,
            "BF16" => DType::BF16,
            "Q8_0" => DType::Q8_0,
            "Q4_0" => DType::Q4_0,
            "Q4_1" => DType::Q4_1,
            "Q4_K" => DType::Q4K,
            "Q6_K" => DType::Q6K,
            "MXFP4" => DType::MXFP4,
            _ => return None,
        })
    }

    pub fn from_safetensors(s: &str) -> DType {
        match s {
            "F32" => DType::F32,
            "F16" => DType::F16,
            "BF16" => DType::BF16,
            "F64" => DType::Unsupported("F64"),
            "I64" => DType::Unsupported("I64"),
            "I32" => DType::Unsupported("I32"),
            "I16" => DType::Unsupported("I16"),
            "I8" => DType::Unsupported("I8"),
            "U8" => DType::Unsupported("U8"),
            "BOOL" => DType::Unsupported("BOOL"),
            "F8_E4M3" => DType::Unsupported("F8_E4M3"),
            "F8_E5M2" => DType::Unsupported("F8_E5M2"),
            _ => DType::Unsupported("unknown"),
        }
    }

    /// (elements per block, bytes per block). Plain types are blocks of one element.
    pub fn block(self) -> Option<(usize, usize)> {
        Some(match self {
            DType::F32 => (1, 4),
            DType::F16 | DType::BF16 => (1, 2),
            DType::Q8_0 => (32, 34),
            DType::Q4_0 => (32, 18),
            DType::Q4_1 => (32, 20),
            DType::Q4K => (256, 144),
            DType::Q6K => (256, 210),
            DType::MXFP4 => (32, 17),
            DType::Unsupported("F64") | DType::Unsupported("I64") => (1, 8),
            DType::Unsupported("I32") => (1, 4),
            DType::Unsupported("I16") => (1, 2),
            DType::Unsupported("I8" | "U8" | "BOOL" | "F8_E4M3" | "F8_E5M2") => (1, 1),
            DType::Unsupported(_) => return None,
        })
    }

    /// Bytes `numel` elements occupy, `None` if unsized, not whole blocks, or overflowing.
    pub fn bytes_for(self, numel: u64) -> Option<u64> {
        let (b, bytes) = self.block()?;
        if !numel.is_multiple_of(b as u64) {
            return None;
        }
        (numel / b as u64).checked_mul(bytes as u64)
    }

    pub fn is_supported(self) -> bool {
        !matches!(self, DType::Unsupported(_))
    }

    pub fn name(self) -> &'static str {
        match self {
            DType::F32 => "F32",
            DType::F16 => "F16",
            DType::BF16 => "BF16",
            DType::Q8_0 => "Q8_0",
            DType::Q4_0 => "Q4_0",
            DType::Q4_1 => "Q4_1",
            DType::Q4K => "Q4_K",
            DType::Q6K => "Q6_K",
            DType::MXFP4 => "MXFP4",
            DType::Unsupported(s) => s,
        }
    }

    /// The code the WGSL weight loader switches on (`shaders/lib/weights.wgsl`).
    pub fn shader_code(self) -> u32 {
        match self {
            DType::F32 => 0,
            DType::F16 => 1,
            DType::BF16 => 2,
            DType::Q8_0 => 3,
            DType::Q4_0 => 4,
            DType::Q4_1 => 5,
            DType::Q4K => 6,
            DType::Q6K => 7,
            DType::MXFP4 => 8,
            DType::Unsupported(_) => u32::MAX,
        }
    }
}

/// Stored bytes of `dtype` to f32 (dequantizing block types exactly as gguf-py does).
/// `bytes.len()` must be whole blocks (the readers guarantee it).
pub fn to_f32(dtype: DType, bytes: &[u8]) -> Vec<f32> {
    crate::quant::dequantize(dtype, bytes)
}

/// f32 values to the little-endian bytes of a plain float `dtype` (round to nearest even).
pub fn from_f32(dtype: DType, v: &[f32]) -> Vec<u8> {
    match dtype {
        DType::F32 => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        DType::F16 => v.iter().flat_map(|x| half::f16::from_f32(*x).to_bits().to_le_bytes()).collect(),
        DType::BF16 => v.iter().flat_map(|x| half::bf16::from_f32(*x).to_bits().to_le_bytes()).collect(),
        _ => Vec::new(),
    }
}
