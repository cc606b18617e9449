//! The browser API (wasm-bindgen). `pkg/webmoe.js` wraps it: storage of packed models,
//! the OpenAI-style `chat.completions.create`, the worker proxy. Calls are serialised there,
//! and every failure becomes a rejected promise with a readable message: nothing panics
//! across the JS boundary.

use crate::chat::Message;
use crate::engine::{Device, Engine, EngineOptions, Event, GenerateOptions};
use crate::gpu::paging::{Policy, Residency};
use crate::gpu::{Gpu, GpuOptions};
use crate::model::Progress;
use crate::gpu::assemble::{ExpertPlace, GpuAssembler};
use crate::pack::Manifest;
use crate::platform::HttpSource;
use crate::sampling::SamplingParams;
use crate::tensor::DType;
use js_sys::{Function, Object, Promise, Reflect, Uint8Array};
use serde::Deserialize;
use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;
use wasm_bindgen::prelude::*;
use wasm_bindgen_futures::{JsFuture, future_to_promise};

#[wasm_bindgen(start)]
pub fn start() {
    console_error_panic_hook::set_once();
}

struct State {
    gpu: Arc<Gpu>,
    opts: EngineOptions,
    /// Taken out while a call runs, so no borrow is held across an await.
    engine: Option<Engine>,
    loaded: bool,
    /// What was loaded (for info()).
    model_url: String,
}

#[wasm_bindgen]
pub struct WebEngine {
    state: Rc<RefCell<State>>,
}

fn err(e: impl std::fmt::Display) -> JsValue {
    js_sys::Error::new(&e.to_string()).into()
}

fn opt_usize(options: &JsValue, key: &str) -> Result<Option<usize>, JsValue> {
    if options.is_undefined() || options.is_null() {
        return Ok(None);
    }
    let v = Reflect::get(options, &key.into())?;
    if v.is_undefined() || v.is_null() {
        return Ok(None);
    }
    match v.as_f64() {
        Some(n) if n >= 1.0 && n.fract() == 0.0 && n < 1e9 => Ok(Some(n as usize)),
        _ => Err(err(format!("options.{key} must be a positive integer"))),
    }
}

/// Takes the engine out of the state for the length of one call.
fn take_engine(state: &Rc<RefCell<State>>) -> Result<Engine, JsValue> {
    let mut s = state.try_borrow_mut().map_err(|_| err("engine is busy"))?;
    if !s.loaded {
        return Err(err("no model loaded: call load(url) first"));
    }
    s.engine.take().ok_or_else(|| err("engine is busy with another call"))
}

fn put_engine(state: &Rc<RefCell<State>>, engine: Engine) {
    if let Ok(mut s) = state.try_borrow_mut() {
        s.engine = Some(engine);
    }
}

/// The bytes a JS promise (or value) resolves to, copied into the heap.
async fn js_bytes(p: JsValue) -> Result<Vec<u8>, JsValue> {
    let v = JsFuture::from(Promise::resolve(&p)).await?;
    Ok(Uint8Array::new(&v).to_vec())
}

fn js_message(e: &JsValue) -> String {
    e.dyn_ref::<js_sys::Error>().map(|e| String::from(e.message())).or_else(|| e.as_string()).unwrap_or_else(|| format!("{e:?}"))
}

/// `progress(phase, what, done, total)` as the JS object `{phase, file, loaded, total}`.
fn js_progress(f: Option<Function>) -> Option<Progress> {
    let f = f?;
    Some(Progress(Rc::new(move |p: &crate::model::LoadProgress| {
        let o = Object::new();
        let _ = Reflect::set(&o, &"phase".into(), &p.phase.into());
        let _ = Reflect::set(&o, &"file".into(), &p.what.as_str().into());
        let _ = Reflect::set(&o, &"loaded".into(), &(p.done as f64).into());
        let _ = Reflect::set(&o, &"total".into(), &(p.total as f64).into());
        let _ = f.call1(&JsValue::NULL, &o);
    })))
}

/// The body of `chat.completions.create` (OpenAI names), plus the prompt forms webmoe
/// also takes.
#[derive(Deserialize, Default)]
struct CompleteRequest {
    messages: Option<Vec<Message>>,
    prompt: Option<String>,
    prompt_ids: Option<Vec<u32>>,
    max_tokens: Option<usize>,
    temperature: Option<f32>,
    top_p: Option<f32>,
    top_k: Option<usize>,
    min_p: Option<f32>,
    seed: Option<u64>,
    stop: Option<Stop>,
    frequency_penalty: Option<f32>,
    presence_penalty: Option<f32>,
    repetition_penalty: Option<f32>,
    logit_bias: Option<HashMap<String, f32>>,
    ignore_eos: Option<bool>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Stop {
    One(String),
    Many(Vec<String>),
}

impl CompleteRequest {
    fn options(&self, context: usize) -> Result<GenerateOptions, JsValue> {
        let mut bias = Vec::new();
        for (k, v) in self.logit_bias.iter().flatten() {
            bias.push((k.parse::<u32>().map_err(|_| err(format!("logit_bias: '{k}' is not a token id")))?, *v));
        }
        Ok(GenerateOptions {
            max_tokens: self.max_tokens.unwrap_or(context),
            sampling: SamplingParams {
                temperature: self.temperature.unwrap_or(1.0),
                top_k: self.top_k.unwrap_or(0),
                top_p: self.top_p.unwrap_or(1.0),
                min_p: self.min_p.unwrap_or(0.0),
                repetition_penalty: self.repetition_penalty.unwrap_or(1.0),
                presence_penalty: self.presence_penalty.unwrap_or(0.0),
                frequency_penalty: self.frequency_penalty.unwrap_or(0.0),
                logit_bias: bias,
                seed: self.seed,
            },
            stop: match &self.stop {
                None => Vec::new(),
                Some(Stop::One(s)) => vec![s.clone()],
                Some(Stop::Many(v)) => v.clone(),
            },
            ignore_eos: self.ignore_eos.unwrap_or(false),
        })
    }
}

#[wasm_bindgen]
impl WebEngine {
    /// `WebEngine.create({ context?, prefillChunk?, gemvLanes?, kv? })`: opens the WebGPU
    /// device (`gemvLanes` 8 | 16 | 32 overrides the adapter's decode-matmul shape; `kv`
    /// 'f32' | 'f16' is the KV cache's storage).
    pub fn create(options: JsValue) -> Promise {
        future_to_promise(async move {
            let context = opt_usize(&options, "context")?;
            let chunk = opt_usize(&options, "prefillChunk")?;
            let gemv_lanes = opt_usize(&options, "gemvLanes")?.map(|l| l.min(u32::MAX as usize) as u32);
            let gpu = Gpu::with_options(GpuOptions { subgroups: None, gemv_lanes }).await.map_err(err)?;
            let kv = Reflect::get(&options, &"kv".into()).ok().and_then(|v| v.as_string());
            let kv = match kv.as_deref() {
                None | Some("f32") => DType::F32,
                Some("f16") => DType::F16,
                Some(other) => return Err(err(format!("kv '{other}': expected 'f32' or 'f16'"))),
            };
            let mut opts = EngineOptions { device: Device::Gpu, context, kv, ..Default::default() };
            if let Some(c) = chunk {
                opts.prefill_chunk = c;
            }
            let state = State { gpu: Arc::new(gpu), opts, engine: None, loaded: false, model_url: String::new() };
            Ok(WebEngine { state: Rc::new(RefCell::new(state)) }.into())
        })
    }

    /// `{ residentExperts?, gpuMemory?, expertPolicy?, prefetch? }` for the next load:
    /// experts kept on the GPU per MoE layer, a GPU byte budget, 'lru' | 'lfu' |
    /// 'pinned:N' | 'none', lookahead prefetch (src/gpu/paging.rs).
    #[wasm_bindgen(js_name = setResidency)]
    pub fn set_residency(&self, options: JsValue) -> Result<(), JsValue> {
        let mut s = self.state.try_borrow_mut().map_err(|_| err("engine is busy"))?;
        let get = |k: &str| Reflect::get(&options, &k.into()).ok().filter(|v| !v.is_undefined() && !v.is_null());
        let policy = match get("expertPolicy").map(|v| v.as_string()) {
            None => Policy::Lru,
            Some(Some(p)) => Policy::parse(&p).map_err(err)?,
            Some(None) => return Err(err("options.expertPolicy must be a string")),
        };
        let gpu_memory = match get("gpuMemory").map(|v| v.as_f64()) {
            None => None,
            Some(Some(b)) if b >= 1.0 && b.fract() == 0.0 && b < 9e15 => Some(b as u64),
            Some(_) => return Err(err("options.gpuMemory must be a positive whole number of bytes")),
        };
        let prefetch = get("prefetch").map(|v| v.as_bool() == Some(true)).unwrap_or(false);
        let experts = opt_usize(&options, "residentExperts")?;
        s.opts.residency = Residency { experts, gpu_memory, policy, prefetch };
        Ok(())
    }

    fn begin_load(&self, url: &str) -> Result<(Arc<Gpu>, EngineOptions), JsValue> {
        let mut s = self.state.try_borrow_mut().map_err(|_| err("engine is busy"))?;
        // Replacing a model: drop the old one first so its GPU memory is free.
        s.engine = None;
        s.loaded = false;
        s.model_url = url.to_string();
        Ok((s.gpu.clone(), s.opts.clone()))
    }

    fn finish_load(state: &Rc<RefCell<State>>, engine: Engine) -> Result<JsValue, JsValue> {
        let mut s = state.try_borrow_mut().map_err(|_| err("engine is busy"))?;
        s.engine = Some(engine);
        s.loaded = true;
        Ok(JsValue::UNDEFINED)
    }

    /// Loads a Hugging Face model directory or a .gguf file at `url`;
    /// `on_progress({phase, file, loaded, total})`.
    pub fn load(&self, url: String, on_progress: Option<Function>) -> Promise {
        let state = self.state.clone();
        let begun = self.begin_load(&url);
        future_to_promise(async move {
            let (gpu, mut opts) = begun?;
            let src = HttpSource::new(&url, on_progress.clone());
            opts.progress = js_progress(on_progress);
            let engine = Engine::load(&src, opts, Some(gpu)).await.map_err(err)?;
            Self::finish_load(&state, engine)
        })
    }

    /// Loads a packed model: `manifest` is its manifest.json text, `get_shard(i)` resolves to
    /// shard i's bytes (already verified against the manifest's SHA-256 by the caller).
    /// With `get_expert(i)`, experts are not kept: shard i holding an expert is asked for
    /// through `get_expert` when the router first needs it (src/lazy.rs), and the shards
    /// that are experts' own files (a model packed with an expert per file) are not asked
    /// for up front at all. Each shard is dropped once its bytes are in
    /// their buffers, so the heap holds the skeleton and one shard at most.
    #[wasm_bindgen(js_name = loadPacked)]
    pub fn load_packed(
        &self,
        url: String,
        manifest: String,
        get_shard: Function,
        on_progress: Option<Function>,
        get_expert: Option<Function>,
    ) -> Promise {
        let state = self.state.clone();
        let begun = self.begin_load(&url);
        future_to_promise(async move {
            let (gpu, mut opts) = begun?;
            let manifest = Manifest::parse(manifest.as_bytes()).map_err(err)?;
            let progress = js_progress(on_progress);
            // A dense model has no experts to fetch.
            let get_expert = get_expert.filter(|_| manifest.config.is_moe());
            let wanted: Vec<usize> = (0..manifest.shards.len())
                .filter(|&i| get_expert.is_none() || crate::lazy::is_skeleton(&manifest.shards[i]))
                .collect();
            // Each shard goes straight into its GPU buffers and is dropped (only buffers
            // larger than a binding stay in the heap); experts fetched through get_expert
            // are not kept at all.
            let r = &opts.residency;
            let place = match (&get_expert, r.experts.is_some() || r.gpu_memory.is_some()) {
                (Some(_), _) => ExpertPlace::Fetched,
                (None, true) => ExpertPlace::Host,
                (None, false) => ExpertPlace::Gpu,
            };
            let mut a = GpuAssembler::new(gpu.clone(), manifest, place).map_err(err)?;
            for (done, &i) in wanted.iter().enumerate() {
                let bytes = js_bytes(get_shard.call1(&JsValue::NULL, &JsValue::from(i as u32))?).await?;
                a.add_shard(i, &bytes).map_err(err)?;
                if let Some(p) = &progress {
                    p.report("upload", &a.manifest().shards[i].file, (done + 1) as u64, wanted.len() as u64);
                }
            }
            let fetch = get_expert.map(|f| -> crate::lazy::FetchShard {
                Box::new(move |i| {
                    let p = f.call1(&JsValue::NULL, &JsValue::from(i as u32));
                    Box::pin(async move {
                        let p = p.map_err(|e| crate::Error::input(js_message(&e)))?;
                        js_bytes(p).await.map_err(|e| crate::Error::input(js_message(&e)))
                    })
                })
            });
            let packed = a.finish(fetch).map_err(err)?;
            opts.progress = progress;
            let engine = Engine::from_packed(packed, opts, Some(gpu)).await.map_err(err)?;
            Self::finish_load(&state, engine)
        })
    }

    /// A background fill of lazily loaded experts: fetches and uploads up to `max` experts
    /// the router has not asked for yet, into pools that hold every expert. Resolves to how
    /// many are still missing (0: every step now runs without a read-back).
    #[wasm_bindgen(js_name = fillExperts)]
    pub fn fill_experts(&self, max: usize) -> Promise {
        let state = self.state.clone();
        future_to_promise(async move {
            let mut engine = take_engine(&state)?;
            let r = match engine.gpu_model() {
                Some(m) => m.fill_experts(max).await,
                None => Ok(0),
            };
            put_engine(&state, engine);
            Ok(JsValue::from(r.map_err(err)? as u32))
        })
    }

    /// Logits for `tokens` as a new sequence: a Float32Array of tokens.length x vocab.
    pub fn logits(&self, tokens: Vec<u32>) -> Promise {
        let state = self.state.clone();
        future_to_promise(async move {
            let mut engine = take_engine(&state)?;
            let result = engine.logits(&tokens).await;
            put_engine(&state, engine);
            let v = result.map_err(err)?;
            Ok(js_sys::Float32Array::from(v.as_slice()).into())
        })
    }

    /// Greedy continuation of `tokens` (a new sequence) by up to `max_tokens` ids;
    /// `on_token(id)` is called as each is produced and may return false to stop.
    pub fn generate(&self, tokens: Vec<u32>, max_tokens: usize, on_token: Option<Function>) -> Promise {
        let state = self.state.clone();
        future_to_promise(async move {
            let mut engine = take_engine(&state)?;
            engine.reset();
            let opts = GenerateOptions { max_tokens, ..Default::default() };
            let result = engine
                .generate(&tokens, &opts, |ev| match (&on_token, ev) {
                    (Some(f), Event::Token(id)) => {
                        f.call1(&JsValue::NULL, &JsValue::from(id)).map(|r| r.as_bool() != Some(false)).unwrap_or(false)
                    }
                    _ => true,
                })
                .await;
            put_engine(&state, engine);
            let v = result.map_err(err)?;
            Ok(js_sys::Uint32Array::from(v.tokens.as_slice()).into())
        })
    }

    /// One completion: `request` is the JSON of an OpenAI chat completion request (or
    /// `prompt` / `prompt_ids` instead of `messages`); `on_delta(text)` sees the reply as it
    /// grows and may return false to stop. Resolves to the JSON of
    /// `{text, finish_reason, prompt_tokens, completion_tokens, prefilled_tokens}`.
    /// The KV cache is kept between calls, so a chat's next turn prefills only new tokens.
    pub fn complete(&self, request: String, on_delta: Option<Function>) -> Promise {
        let state = self.state.clone();
        future_to_promise(async move {
            let req: CompleteRequest =
                serde_json::from_str(&request).map_err(|e| err(format!("bad completion request: {e}")))?;
            let mut engine = take_engine(&state)?;
            let result = async {
                let prompt = match (&req.messages, &req.prompt, &req.prompt_ids) {
                    (Some(m), _, _) => engine.encode_chat(m).map_err(err)?,
                    (_, Some(p), _) => engine.encode(p).map_err(err)?,
                    (_, _, Some(ids)) => ids.clone(),
                    _ => return Err(err("give messages, prompt or prompt_ids")),
                };
                let opts = req.options(engine.context)?;
                engine.take_paging_stats();
                // This request's routing (the tokens it prefills and generates), read back
                // with each step's token: no read-back of its own.
                engine.record_routes(false);
                engine.record_routes(true);
                let g = engine
                    .generate(&prompt, &opts, |ev| match (&on_delta, ev) {
                        (Some(f), Event::Text(t)) => {
                            f.call1(&JsValue::NULL, &t.into()).map(|r| r.as_bool() != Some(false)).unwrap_or(false)
                        }
                        _ => true,
                    })
                    .await
                    .map_err(err)?;
                let routing = engine.record_routes(false).map(|t| t.stats()).unwrap_or_default();
                // Expert paging over this request (null when every expert is resident).
                let paging = engine.take_paging_stats();
                Ok(serde_json::json!({
                    "routing": routing,
                    "paging": paging,
                    "text": g.text,
                    "finish_reason": g.finish.as_str(),
                    "prompt_tokens": g.prompt_tokens,
                    "completion_tokens": g.tokens.len(),
                    "prefilled_tokens": g.prefilled_tokens,
                })
                .to_string())
            }
            .await;
            put_engine(&state, engine);
            Ok(JsValue::from(result?))
        })
    }

    /// `webmoe bench` in the browser: `options` is the JSON of
    /// `{prompt_tokens, gen_tokens, reps, kernels}`; resolves to the report's JSON.
    pub fn bench(&self, options: String) -> Promise {
        let state = self.state.clone();
        future_to_promise(async move {
            #[derive(Deserialize)]
            struct O {
                prompt_tokens: Option<usize>,
                gen_tokens: Option<usize>,
                reps: Option<usize>,
                kernels: Option<bool>,
            }
            let o: O = serde_json::from_str(&options).map_err(|e| err(format!("bad bench options: {e}")))?;
            let d = crate::bench::BenchOptions::default();
            let opts = crate::bench::BenchOptions {
                prompt_tokens: o.prompt_tokens.unwrap_or(d.prompt_tokens),
                gen_tokens: o.gen_tokens.unwrap_or(d.gen_tokens),
                reps: o.reps.unwrap_or(d.reps),
                kernels: o.kernels.unwrap_or(false),
            };
            let mut engine = take_engine(&state)?;
            let r = crate::bench::run(&mut engine, &opts).await;
            put_engine(&state, engine);
            Ok(JsValue::from(serde_json::to_string(&r.map_err(err)?).map_err(err)?))
        })
    }

    /// Per layer, how often each expert was chosen since the last call (MoE models).
    #[wasm_bindgen(js_name = expertCounts)]
    pub fn expert_counts(&self) -> Promise {
        let state = self.state.clone();
        future_to_promise(async move {
            let mut engine = take_engine(&state)?;
            let r = engine.take_expert_counts().await;
            put_engine(&state, engine);
            Ok(JsValue::from(serde_json::to_string(&r.map_err(err)?).unwrap_or_default()))
        })
    }

    pub fn tokenize(&self, text: String, add_special: bool) -> Result<js_sys::Uint32Array, JsValue> {
        let s = self.state.try_borrow().map_err(|_| err("engine is busy"))?;
        let e = s.engine.as_ref().ok_or_else(|| err("no model loaded"))?;
        let t = e.tokenizer.as_ref().ok_or_else(|| err("this model carries no tokenizer"))?;
        Ok(js_sys::Uint32Array::from(t.encode(&text, add_special).map_err(err)?.as_slice()))
    }

    pub fn detokenize(&self, ids: Vec<u32>, skip_special: bool) -> Result<String, JsValue> {
        let s = self.state.try_borrow().map_err(|_| err("engine is busy"))?;
        let e = s.engine.as_ref().ok_or_else(|| err("no model loaded"))?;
        e.decode(&ids, skip_special).map_err(err)
    }

    /// Adapter, features, limits and (once loaded) model facts, as JSON.
    pub fn info(&self) -> Result<String, JsValue> {
        let s = self.state.try_borrow().map_err(|_| err("engine is busy"))?;
        let l = &s.gpu.limits;
        let model = s.engine.as_ref().map(|e| e.describe());
        Ok(serde_json::json!({
            "adapter": s.gpu.adapter_name(),
            "backend": format!("{:?}", s.gpu.info.backend),
            "features": {"shader_f16": false, "subgroups": s.gpu.subgroups, "gemv_lanes": s.gpu.lanes, "note": "no kernel needs shader-f16; subgroups are used where the adapter has them"},
            "limits": {
                "max_storage_buffer_binding_size": l.max_storage_buffer_binding_size,
                "max_buffer_size": l.max_buffer_size,
                "max_compute_workgroup_storage_size": l.max_compute_workgroup_storage_size,
            },
            "device_lost": s.gpu.lost(),
            "model_url": if s.loaded { Some(s.model_url.clone()) } else { None },
            "model": model,
        })
        .to_string())
    }

    /// Why the device was lost, or null while it works. A lost device never comes back:
    /// `pkg/webmoe.js` then creates a new engine and moves the conversation onto it.
    #[wasm_bindgen(getter, js_name = deviceLost)]
    pub fn device_lost(&self) -> Option<String> {
        self.state.try_borrow().ok().and_then(|s| s.gpu.lost())
    }

    /// The tokens the KV cache holds (the conversation so far), kept on the host so that
    /// they survive a lost device. Empty while no model is loaded or a call runs.
    #[wasm_bindgen(js_name = cachedTokens)]
    pub fn cached_tokens(&self) -> js_sys::Uint32Array {
        let s = self.state.try_borrow();
        let ids = s.as_ref().ok().and_then(|s| s.engine.as_ref()).map(|e| e.cached().to_vec()).unwrap_or_default();
        js_sys::Uint32Array::from(ids.as_slice())
    }

    /// Prefills `tokens` into a fresh cache (a conversation moved from a lost device), so
    /// that the next completion extending them prefills only what is new.
    pub fn restore(&self, tokens: Vec<u32>) -> Promise {
        let state = self.state.clone();
        future_to_promise(async move {
            let mut engine = take_engine(&state)?;
            let r = engine.restore(&tokens).await;
            put_engine(&state, engine);
            r.map_err(err)?;
            Ok(JsValue::UNDEFINED)
        })
    }

    /// Test hook: destroys this engine's GPU device, as a driver reset would lose it. It
    /// may be called while another call runs (that call then fails).
    #[wasm_bindgen(js_name = destroyDeviceForTest)]
    pub fn destroy_device_for_test(&self) -> Result<(), JsValue> {
        let s = self.state.try_borrow().map_err(|_| err("engine is busy"))?;
        s.gpu.destroy_for_test();
        Ok(())
    }

    /// Frees the model (its GPU buffers go with it).
    pub fn unload(&self) -> Result<(), JsValue> {
        let mut s = self.state.try_borrow_mut().map_err(|_| err("engine is busy"))?;
        s.engine = None;
        s.loaded = false;
        Ok(())
    }

    /// Vocabulary size of the loaded model (0 before load).
    #[wasm_bindgen(getter, js_name = vocabSize)]
    pub fn vocab_size(&self) -> usize {
        self.state.try_borrow().ok().and_then(|s| s.engine.as_ref().map(|e| e.vocab)).unwrap_or(0)
    }

    /// The adapter the engine runs on.
    #[wasm_bindgen(getter)]
    pub fn adapter(&self) -> String {
        self.state.try_borrow().map(|s| s.gpu.adapter_name()).unwrap_or_default()
    }
}
