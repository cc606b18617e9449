//! Packed web models: packing then loading gives bit-identical logits to loading the
//! original files (the shards hold exactly what the GPU reads); experts are stored expert
//! by expert; a shard that does not match its SHA-256, or a manifest that lies, is refused.

mod common;

use common::*;
use std::path::Path;
use webmoe::engine::{Engine, EngineOptions};
use webmoe::model::ModelFiles;
use webmoe::pack::{Manifest, pack};
use webmoe::platform::{DirSource, block_on};
use webmoe::tokenizer::Tokenizer;

fn write_packed(src: &Path, out: &Path, shard_bytes: usize) -> Manifest {
    let files = block_on(ModelFiles::load(&DirSource::new(model_path(src)))).expect("load");
    let tok = Tokenizer::from_model(&files).unwrap().map(|t| t.to_spec().unwrap());
    let (m, shards) = pack(&files, "fixture", tok, shard_bytes, None).expect("pack");
    std::fs::create_dir_all(out).unwrap();
    for (info, b) in m.shards.iter().zip(&shards) {
        std::fs::write(out.join(&info.file), b).unwrap();
    }
    std::fs::write(out.join("manifest.json"), serde_json::to_vec(&m).unwrap()).unwrap();
    m
}

fn engine_for(path: &Path) -> webmoe::Result<Engine> {
    block_on(Engine::load(&DirSource::new(path), EngineOptions::default(), Some(gpu())))
}

#[test]
fn packed_models_give_identical_logits() {
    let tmp = tempfile::tempdir().unwrap();
    for dir in fixtures() {
        let out = tmp.path().join(dir.file_name().unwrap());
        let m = write_packed(&dir, &out, 64 << 10);
        let r = reference(&dir);
        let want = block_on(engine_for(&model_path(&dir)).unwrap().logits(&r.tokens)).unwrap();
        let got = block_on(engine_for(&out.join("manifest.json")).unwrap().logits(&r.tokens)).unwrap();
        assert!(got == want, "{}: packed logits differ", dir.display());
        println!(
            "{:40} {} shards, {} bytes",
            dir.file_name().unwrap().to_string_lossy(),
            m.shards.len(),
            m.total_bytes
        );
    }
}

/// The page's path: each shard written straight into GPU buffers as it arrives (host
/// memory holds one shard), whole or with paged experts' bytes kept on the host, gives
/// the same logits as assembling on the host.
#[test]
fn models_assembled_on_the_gpu_give_identical_logits() {
    use webmoe::gpu::assemble::{ExpertPlace, GpuAssembler};
    use webmoe::gpu::paging::Residency;
    let tmp = tempfile::tempdir().unwrap();
    for dir in fixtures() {
        let out = tmp.path().join(dir.file_name().unwrap());
        let m = write_packed(&dir, &out, 48 << 10);
        let r = reference(&dir);
        let want = block_on(engine_for(&out.join("manifest.json")).unwrap().logits(&r.tokens)).unwrap();
        let moe = m.config.is_moe();
        for paged in if moe { vec![false, true] } else { vec![false] } {
            let place = if paged { ExpertPlace::Host } else { ExpertPlace::Gpu };
            let mut a = GpuAssembler::new(gpu(), m.clone(), place).unwrap();
            // In reverse: shards may come in any order.
            for (i, s) in m.shards.iter().enumerate().rev() {
                a.add_shard(i, &std::fs::read(out.join(&s.file)).unwrap()).unwrap();
            }
            let packed = a.finish(None).unwrap();
            let residency = Residency { experts: paged.then_some(m.config.max_top_k()), ..Default::default() };
            let opts = EngineOptions { residency, ..Default::default() };
            let mut e = block_on(Engine::from_packed(packed, opts, Some(gpu()))).unwrap();
            let got = block_on(e.logits(&r.tokens)).unwrap();
            let d = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
            assert!(d <= 1e-5, "{} (paged {paged}): assembled on the GPU, max|Δ| {d}", dir.display());
        }
    }
}

#[test]
fn experts_are_stored_expert_by_expert() {
    let tmp = tempfile::tempdir().unwrap();
    let m = write_packed(&fixtures_dir().join("mixtral-e16-top4-gqa4-hd16-f16"), tmp.path(), 32 << 10);
    assert!(m.shards.len() > 2, "small shards to make it interesting");
    for l in 0..m.config.layers {
        let up = m.tensors.iter().find(|t| t.slot == format!("layer.{l}.experts.gate_up")).unwrap();
        let down = m.tensors.iter().find(|t| t.slot == format!("layer.{l}.experts.down")).unwrap();
        assert_eq!((up.experts, down.experts), (16, 16));
        for e in 0..16u32 {
            let u: Vec<_> = up.pieces.iter().filter(|p| p.expert == Some(e)).collect();
            let d: Vec<_> = down.pieces.iter().filter(|p| p.expert == Some(e)).collect();
            assert_eq!((u.len(), d.len()), (1, 1), "an expert's block fits a shard and is not split");
            // Expert e's down block follows its up block directly.
            assert_eq!((d[0].shard, d[0].offset), (u[0].shard, u[0].offset + u[0].length), "layer {l} expert {e}");
        }
    }
}

#[test]
fn a_corrupt_shard_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    let m = write_packed(&fixtures_dir().join("mixtral-e4-top1-mha"), tmp.path(), 64 << 10);
    let victim = tmp.path().join(&m.shards[1].file);
    let mut b = std::fs::read(&victim).unwrap();
    b[100] ^= 1;
    std::fs::write(&victim, &b).unwrap();
    let err = engine_for(&tmp.path().join("manifest.json")).err().expect("must fail").to_string();
    assert!(err.contains(&m.shards[1].file) && err.contains("SHA-256"), "{err}");
    std::fs::remove_file(&victim).unwrap();
    let err = engine_for(&tmp.path().join("manifest.json")).err().expect("must fail").to_string();
    assert!(err.contains(&m.shards[1].file) && err.contains("not found"), "{err}");
}

#[test]
fn a_lying_manifest_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let m = write_packed(&fixtures_dir().join("mixtral-e4-top1-mha"), tmp.path(), 64 << 10);
    let mut v: serde_json::Value = serde_json::to_value(&m).unwrap();
    v["tensors"][2]["pieces"][0]["length"] = serde_json::json!(1u64 << 40);
    let err = Manifest::parse(&serde_json::to_vec(&v).unwrap()).unwrap_err().to_string();
    assert!(err.contains("manifest.json") && err.contains(m.tensors[2].slot.as_str()), "{err}");
    let mut v: serde_json::Value = serde_json::to_value(&m).unwrap();
    v["tensors"][0]["dtype"] = serde_json::json!("IQ2_XXS");
    let err = Manifest::parse(&serde_json::to_vec(&v).unwrap()).unwrap_err().to_string();
    assert!(err.contains("unknown storage type 'IQ2_XXS'") && err.contains("IQ4_XS"), "{err}");
    // A supported type whose regions the buffer does not have (Q3_K needs high bits and
    // scales; this F32 embedding has neither).
    let mut v: serde_json::Value = serde_json::to_value(&m).unwrap();
    v["tensors"][0]["dtype"] = serde_json::json!("Q3_K");
    let err = Manifest::parse(&serde_json::to_vec(&v).unwrap()).unwrap_err().to_string();
    assert!(err.contains("embed") && err.contains("not whole Q3_K blocks"), "{err}");
    assert!(Manifest::parse(b"{}").is_err());
}

/// A manifest of an older format version is refused by name, before any field it lacks.
#[test]
fn older_manifests_are_refused_by_version() {
    let tmp = tempfile::tempdir().unwrap();
    let m = write_packed(&fixtures_dir().join("mixtral-e4-top1-mha"), tmp.path(), 64 << 10);
    let mut v: serde_json::Value = serde_json::to_value(&m).unwrap();
    v["version"] = serde_json::json!(2);
    v["config"] = serde_json::json!({"arch": "Mixtral", "hidden": 64});
    let err = Manifest::parse(&serde_json::to_vec(&v).unwrap()).unwrap_err().to_string();
    assert!(err.contains("v2 is not webmoe-packed v3") && err.contains("pack the model again"), "{err}");
}

/// Every family's plan survives the manifest: the packed config equals the loaded one.
#[test]
fn the_plan_travels_in_the_manifest() {
    let tmp = tempfile::tempdir().unwrap();
    for dir in fixtures() {
        let out = tmp.path().join(dir.file_name().unwrap());
        let m = write_packed(&dir, &out, 1 << 20);
        let files = block_on(ModelFiles::load(&DirSource::new(model_path(&dir)))).unwrap();
        let parsed = Manifest::parse(&std::fs::read(out.join("manifest.json")).unwrap()).unwrap();
        assert_eq!(parsed.config, files.config, "{}", dir.display());
        assert_eq!(m.config, files.config);
    }
}

/// Hostile manifests, as an attacker would edit a packed model's manifest.json: each is
/// refused when parsed (before any shard is read), with an error naming what is wrong.
/// Prints the table the hardening issue asks for.
#[test]
fn hostile_manifests_are_refused_by_name() {
    use serde_json::{Value, json};
    let tmp = tempfile::tempdir().unwrap();
    let m = write_packed(&fixtures_dir().join("mixtral-e4-top1-mha"), tmp.path(), 1 << 20);
    let clean = serde_json::to_value(&m).unwrap();
    let find =
        |v: &Value, slot: &str| v["tensors"].as_array().unwrap().iter().position(|t| t["slot"] == slot).expect(slot);
    let (qkv, wo, norm, up) = (
        find(&clean, "layer.0.qkv"),
        find(&clean, "layer.0.wo"),
        find(&clean, "layer.0.attn_norm"),
        find(&clean, "layer.0.experts.gate_up"),
    );
    type Edit = Box<dyn Fn(&mut Value)>;
    let cases: Vec<(&str, Edit, &[&str])> = vec![
        ("\"heads\": 0", Box::new(|v| v["config"]["heads"] = json!(0)), &["attention heads = 0 is out of range"]),
        (
            "\"top_k\": 9 (4 experts)",
            Box::new(|v| {
                for l in v["config"]["plan"].as_array_mut().unwrap() {
                    l["ffn"]["Moe"]["top_k"] = json!(9);
                }
            }),
            &["layer 0", "9 experts per token, but only 4 experts"],
        ),
        (
            "\"layers\": 4000000000",
            Box::new(|v| v["config"]["layers"] = json!(4_000_000_000u64)),
            &["layers = 4000000000 is out of range"],
        ),
        (
            "overlapping pieces",
            Box::new(move |v| {
                v["tensors"][wo]["pieces"][0]["offset"] = v["tensors"][qkv]["pieces"][0]["offset"].clone()
            }),
            &["tensors layer.0.wo and layer.0.qkv overlap in shard-00000.bin"],
        ),
        (
            "piece outside its shard",
            Box::new(move |v| {
                v["tensors"][wo]["pieces"][0]["offset"] = json!(v["shards"][0]["bytes"].as_u64().unwrap() - 8)
            }),
            &["layer.0.wo", "runs past"],
        ),
        (
            "unknown dtype",
            Box::new(move |v| v["tensors"][wo]["dtype"] = json!("Q9_K")),
            &["unknown storage type 'Q9_K'"],
        ),
        (
            "slot holding another slot's bytes",
            Box::new(move |v| {
                v["tensors"][qkv]["slot"] = json!("layer.0.wo");
                v["tensors"][wo]["slot"] = json!("layer.0.qkv");
            }),
            &["layer.0.wo", "not the 16384 bytes", "4096 F32 values the config implies"],
        ),
        (
            "norm weights not f32",
            Box::new(move |v| v["tensors"][norm]["dtype"] = json!("F16")),
            &["layer.0.attn_norm", "is F16, not F32"],
        ),
        (
            "fewer experts than the config",
            Box::new(move |v| {
                let stride = v["tensors"][up]["expert_stride"].as_u64().unwrap();
                // Two experts of twice the size: consistent regions, the same bytes.
                let t = &mut v["tensors"][up];
                t["experts"] = json!(2);
                t["expert_stride"] = json!(stride * 2);
                for k in ["h_off", "s_off"] {
                    t[k] = json!(t[k].as_u64().unwrap() * 2);
                }
            }),
            &["layer.0.experts.gate_up", "holds 2 experts, the config says 4"],
        ),
        (
            "a layer the model lacks",
            Box::new(move |v| v["tensors"][norm]["slot"] = json!("layer.7.attn_norm")),
            &["layer.7.attn_norm", "has no such tensor"],
        ),
        (
            "a slot listed twice",
            Box::new(move |v| v["tensors"][norm]["slot"] = json!("layer.0.ffn_norm")),
            &["layer.0.ffn_norm: listed twice"],
        ),
        (
            "total_bytes lies",
            Box::new(|v| v["total_bytes"] = json!(1u64 << 50)),
            &["total_bytes 1125899906842624 is not the sum"],
        ),
    ];
    for (what, edit, want) in &cases {
        let mut v = clean.clone();
        edit(&mut v);
        let err = Manifest::parse(&serde_json::to_vec(&v).unwrap())
            .err()
            .unwrap_or_else(|| panic!("{what}: accepted"))
            .to_string();
        println!("| {what} | {err} |");
        for w in *want {
            assert!(err.contains(w), "{what}: {err:?} lacks {w:?}");
        }
    }
    // The clean manifest itself parses (so each refusal above is the edit's doing).
    Manifest::parse(&serde_json::to_vec(&clean).unwrap()).unwrap();
}

/// An adapter whose bindings hold a layer's stacked down blocks but not its gate/up
/// blocks: a page's load keeps both on the host (never one on the GPU and one not), the
/// layer gets a pool of all its experts split over bindings, and the logits hold.
#[test]
fn experts_over_one_binding_are_assembled_together() {
    use webmoe::gpu::assemble::{ExpertPlace, GpuAssembler};
    let tmp = tempfile::tempdir().unwrap();
    let dir = fixtures_dir().join("learned-moe");
    let m = write_packed(&dir, tmp.path(), 1 << 20);
    let size = |slot: &str| m.tensors.iter().find(|t| t.slot == slot).unwrap().bytes;
    let (gu, dn) = (size("layer.0.experts.gate_up"), size("layer.0.experts.down"));
    assert!(dn < gu);
    let prompt = reference(&dir).tokens;
    let opts = || EngineOptions { prefill_chunk: 16, context: Some(prompt.len() + 8), ..Default::default() };
    let want = {
        let mut e = block_on(Engine::load(&DirSource::new(tmp.path().join("manifest.json")), opts(), Some(gpu()))).unwrap();
        block_on(e.logits(&prompt)).unwrap()
    };
    let mut g = fresh_gpu();
    g.limits.max_storage_buffer_binding_size = (gu + dn) / 2;
    let g = std::sync::Arc::new(g);
    let mut a = GpuAssembler::new(g.clone(), m.clone(), ExpertPlace::Gpu).unwrap();
    for (i, s) in m.shards.iter().enumerate() {
        a.add_shard(i, &std::fs::read(tmp.path().join(&s.file)).unwrap()).unwrap();
    }
    let packed = a.finish(None).unwrap();
    let mut e = block_on(Engine::from_packed(packed, opts(), Some(g))).unwrap();
    assert!(e.gpu_model().unwrap().is_paged(), "a pool split over bindings");
    let got = block_on(e.logits(&prompt)).unwrap();
    let d = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
    assert!(d <= 1e-5, "max|Δ| {d}");
}
