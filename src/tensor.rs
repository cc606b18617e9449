//! Element types of stored weights and their conversion to f32.

/// Storage type of a weight tensor. On the GPU, F16/BF16 stay two-per-`u32` (no
/// shader-f16 needed); kernels unpack them in registers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DType {
    F32,
    F16,
    BF16,
    /// Any other safetensors dtype: parsed so a header is accepted, rejected when used.
    Unsupported(&'static str),
}

impl DType {
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

    /// Bytes per element, `None` for dtypes we cannot size.
    pub fn size_bytes(self) -> Option<usize> {
        match self {
            DType::F32 => Some(4),
            DType::F16 | DType::BF16 => Some(2),
            DType::Unsupported("F64") | DType::Unsupported("I64") => Some(8),
            DType::Unsupported("I32") => Some(4),
            DType::Unsupported("I16") => Some(2),
            DType::Unsupported("I8") | DType::Unsupported("U8") | DType::Unsupported("BOOL") => Some(1),
            DType::Unsupported("F8_E4M3") | DType::Unsupported("F8_E5M2") => Some(1),
            DType::Unsupported(_) => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            DType::F32 => "F32",
            DType::F16 => "F16",
            DType::BF16 => "BF16",
            DType::Unsupported(s) => s,
        }
    }

    /// The code the WGSL weight loader switches on (`shaders/lib/weights.wgsl`).
    pub fn shader_code(self) -> u32 {
        match self {
            DType::F32 => 0,
            DType::F16 => 1,
            DType::BF16 => 2,
            DType::Unsupported(_) => u32::MAX,
        }
    }
}

/// Little-endian raw bytes of `dtype` to f32. `bytes.len()` must be a multiple of the
/// element size (the safetensors reader guarantees it).
pub fn to_f32(dtype: DType, bytes: &[u8]) -> Vec<f32> {
    match dtype {
        DType::F32 => bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect(),
        DType::F16 => {
            bytes.chunks_exact(2).map(|c| half::f16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f32()).collect()
        }
        DType::BF16 => {
            bytes.chunks_exact(2).map(|c| half::bf16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f32()).collect()
        }
        DType::Unsupported(_) => Vec::new(),
    }
}

/// f32 values to the little-endian bytes of `dtype` (round to nearest even).
pub fn from_f32(dtype: DType, v: &[f32]) -> Vec<u8> {
    match dtype {
        DType::F32 => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        DType::F16 => v.iter().flat_map(|x| half::f16::from_f32(*x).to_bits().to_le_bytes()).collect(),
        DType::BF16 => v.iter().flat_map(|x| half::bf16::from_f32(*x).to_bits().to_le_bytes()).collect(),
        DType::Unsupported(_) => Vec::new(),
    }
}
