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
    /// Blocks of 32: f16 scale, 32 high bits, 32 x 4-bit (value = d * (q - 16), q 5-bit).
    Q5_0,
    /// Blocks of 32: f16 scale and min, 32 high bits, 32 x 4-bit (value = d * q + m).
    Q5_1,
    /// Super-blocks of 256: Q4_K's header, 256 high bits, 256 x 4-bit (5-bit q).
    Q5K,
    /// Super-blocks of 256: 16 bytes of 4-bit (scale, min), 256 x 2-bit, f16 d and dmin.
    Q2K,
    /// Super-blocks of 256: 256 high bits, 256 x 2-bit, 16 six-bit scales, f16 d.
    Q3K,
    /// Blocks of 32: f16 scale, 32 x 4-bit indices into a 16-value non-linear table.
    IQ4NL,
    /// Super-blocks of 256: f16 d, 8 six-bit sub-block scales, 256 x 4-bit IQ4_NL indices.
    IQ4XS,
    /// Any other stored type: parsed so a header is accepted, rejected when used.
    Unsupported(&'static str),
}

impl DType {
    /// The storage types weights can have, as `name` spells them (for error messages).
    pub const SUPPORTED: &'static [&'static str] = &[
        "F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "IQ4_NL",
        "IQ4_XS", "MXFP4",
    ];

    /// Every supported type, in `SUPPORTED`'s order.
    pub const ALL: &'static [DType] = &[
        DType::F32,
        DType::F16,
        DType::BF16,
        DType::Q8_0,
        DType::Q4_0,
        DType::Q4_1,
        DType::Q5_0,
        DType::Q5_1,
        DType::Q2K,
        DType::Q3K,
        DType::Q4K,
        DType::Q5K,
        DType::Q6K,
        DType::IQ4NL,
        DType::IQ4XS,
        DType::MXFP4,
    ];

    /// A type by its `name`.
    pub fn from_name(name: &str) -> Option<DType> {
        DType::ALL.iter().copied().find(|d| d.name() == name)
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
            DType::Q5_0 => (32, 22),
            DType::Q5_1 => (32, 24),
            DType::Q5K => (256, 176),
            DType::Q2K => (256, 84),
            DType::Q3K => (256, 110),
            DType::IQ4NL => (32, 18),
            DType::IQ4XS => (256, 136),
            // GGML types webmoe reads past but does not compute with (ggml's type sizes).
            DType::Unsupported("Q8_1") => (32, 36),
            DType::Unsupported("Q8_K") => (256, 292),
            DType::Unsupported("IQ2_XXS" | "TQ2_0") => (256, 66),
            DType::Unsupported("IQ2_XS") => (256, 74),
            DType::Unsupported("IQ2_S") => (256, 82),
            DType::Unsupported("IQ3_XXS") => (256, 98),
            DType::Unsupported("IQ3_S") => (256, 110),
            DType::Unsupported("IQ1_S") => (256, 50),
            DType::Unsupported("IQ1_M") => (256, 56),
            DType::Unsupported("TQ1_0") => (256, 54),
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

    /// As a KV cache's storage: whether it is f16 (packed two per u32), or f32.
    pub fn kv16(self) -> crate::error::Result<bool> {
        match self {
            DType::F32 => Ok(false),
            DType::F16 => Ok(true),
            other => Err(crate::error::Error::input(format!("a KV cache is f32 or f16, not {}", other.name()))),
        }
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
            DType::Q5_0 => "Q5_0",
            DType::Q5_1 => "Q5_1",
            DType::Q5K => "Q5_K",
            DType::Q2K => "Q2_K",
            DType::Q3K => "Q3_K",
            DType::IQ4NL => "IQ4_NL",
            DType::IQ4XS => "IQ4_XS",
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
            DType::Q5_0 => 9,
            DType::Q5_1 => 10,
            DType::Q5K => 11,
            DType::Q2K => 12,
            DType::Q3K => 13,
            DType::IQ4NL => 14,
            DType::IQ4XS => 15,
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
