//! The browser API (wasm-bindgen). `pkg/webmoe.js` wraps it as `createEngine()`; calls are
//! serialised there, and every failure becomes a rejected promise with a readable message:
//! nothing panics across the JS boundary.

use crate::engine::{Device, Engine, EngineOptions, Event, GenerateOptions};
use crate::gpu::Gpu;
use crate::platform::HttpSource;
use js_sys::{Function, Promise, Reflect};
use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;
use wasm_bindgen::prelude::*;
use wasm_bindgen_futures::future_to_promise;

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

#[wasm_bindgen]
impl WebEngine {
    /// `WebEngine.create({ context?, prefillChunk? })`: opens the WebGPU device.
    pub fn create(options: JsValue) -> Promise {
        future_to_promise(async move {
            let context = opt_usize(&options, "context")?;
            let chunk = opt_usize(&options, "prefillChunk")?;
            let gpu = Gpu::new().await.map_err(err)?;
            let mut opts = EngineOptions { device: Device::Gpu, context, ..Default::default() };
            if let Some(c) = chunk {
                opts.prefill_chunk = c;
            }
            let state = State { gpu: Arc::new(gpu), opts, engine: None, loaded: false };
            Ok(WebEngine { state: Rc::new(RefCell::new(state)) }.into())
        })
    }

    /// Loads the Hugging Face model directory at `url`; `on_progress({phase, file, loaded, total})`.
    pub fn load(&self, url: String, on_progress: Option<Function>) -> Promise {
        let state = self.state.clone();
        future_to_promise(async move {
            let (gpu, opts) = {
                let s = state.try_borrow().map_err(|_| err("engine is busy"))?;
                (s.gpu.clone(), s.opts.clone())
            };
            let src = HttpSource::new(&url, on_progress);
            // Replacing a model: drop the old one first so its GPU memory is free.
            if let Ok(mut s) = state.try_borrow_mut() {
                s.engine = None;
                s.loaded = false;
            }
            let engine = Engine::load(&src, opts, Some(gpu)).await.map_err(err)?;
            let mut s = state.try_borrow_mut().map_err(|_| err("engine is busy"))?;
            s.engine = Some(engine);
            s.loaded = true;
            Ok(JsValue::UNDEFINED)
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
            // A new sequence, as before: generation reuses the cache only within a chat.
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
