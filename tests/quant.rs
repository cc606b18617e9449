//! Block formats against gguf-py (tests/fixtures/generate_gguf.py wrote the fixtures):
//! our dequantization must give gguf-py's values bit for bit, and our Q8_0/Q4_0/Q4_1
//! quantization gguf-py's blocks byte for byte. The GPU side of each format is checked
//! against this CPU dequantization in tests/kernels.rs.

mod common;

use common::fixtures_dir;
use webmoe::quant::quantize;
use webmoe::tensor::{DType, to_f32};

fn read(name: &str) -> Vec<u8> {
    std::fs::read(fixtures_dir().join("quant").join(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
}

fn f32s(b: &[u8]) -> Vec<f32> {
    b.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
}

/// Every block format (the plain float types have no blocks).
fn formats() -> impl Iterator<Item = DType> {
    DType::ALL.iter().copied().filter(|d| d.block().unwrap().0 > 1)
}

#[test]
fn dequantization_matches_gguf_py_bitwise() {
    for dt in formats() {
        let blocks = read(&format!("{}.blocks", dt.name()));
        let want = f32s(&read(&format!("{}.dequant", dt.name())));
        let got = to_f32(dt, &blocks);
        assert_eq!(got.len(), want.len(), "{}", dt.name());
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            assert!(g.to_bits() == w.to_bits(), "{} element {i}: {g} != gguf-py {w}", dt.name());
        }
    }
}

#[test]
fn quantization_matches_gguf_py_bytewise() {
    for dt in [DType::Q8_0, DType::Q4_0, DType::Q4_1] {
        let input = f32s(&read(&format!("{}.input", dt.name())));
        let want = read(&format!("{}.blocks", dt.name()));
        let got = quantize(dt, &input).unwrap();
        assert_eq!(got.len(), want.len(), "{}", dt.name());
        if let Some(i) = got.iter().zip(&want).position(|(a, b)| a != b) {
            let block = i / dt.block().unwrap().1;
            panic!("{}: byte {i} (block {block}) is {} but gguf-py wrote {}", dt.name(), got[i], want[i]);
        }
    }
}

#[test]
fn quantizing_a_partial_block_is_an_error() {
    let err = quantize(DType::Q8_0, &[1.0; 33]).unwrap_err().to_string();
    assert!(err.contains("multiple of 32"), "{err}");
    let err = quantize(DType::Q4K, &[1.0; 256]).unwrap_err().to_string();
    assert!(err.contains("not supported"), "{err}");
}
