//! Browser twin: files over `fetch` with streamed progress, GPU callbacks driven by the
//! browser's event loop (so polling is a no-op), WebGPU as the only backend.

use super::ModelSource;
use crate::error::{Error, Result};
use js_sys::{Function, Object, Reflect, Uint8Array};
use wasm_bindgen::prelude::*;
use wasm_bindgen_futures::JsFuture;

#[wasm_bindgen]
extern "C" {
    // The global `fetch`, present in windows and workers alike.
    #[wasm_bindgen(js_name = fetch)]
    fn global_fetch(url: &str) -> js_sys::Promise;
}

pub struct HttpSource {
    /// Base URL of the model directory, ending in '/' (or empty for a bare file name).
    pub base: String,
    /// The `.gguf` file, when the URL names one.
    file: Option<String>,
    /// Called as `onProgress({phase, file, loaded, total})`.
    pub on_progress: Option<Function>,
}

impl HttpSource {
    pub fn new(url: &str, on_progress: Option<Function>) -> Self {
        if let Some((dir, file)) = super::split_gguf(url) {
            return HttpSource { base: dir.to_string(), file: Some(file.to_string()), on_progress };
        }
        let mut base = url.to_string();
        if !base.ends_with('/') {
            base.push('/');
        }
        HttpSource { base, file: None, on_progress }
    }

    fn report(&self, file: &str, loaded: u64, total: u64) {
        if let Some(f) = &self.on_progress {
            let o = Object::new();
            let _ = Reflect::set(&o, &"phase".into(), &"download".into());
            let _ = Reflect::set(&o, &"file".into(), &file.into());
            let _ = Reflect::set(&o, &"loaded".into(), &(loaded as f64).into());
            let _ = Reflect::set(&o, &"total".into(), &(total as f64).into());
            // A throwing progress callback must not abort the load.
            let _ = f.call1(&JsValue::NULL, &o);
        }
    }
}

fn js_err(what: &str, e: JsValue) -> String {
    let msg = e.as_string().or_else(|| Reflect::get(&e, &"message".into()).ok().and_then(|m| m.as_string()));
    format!("{what}: {}", msg.unwrap_or_else(|| format!("{e:?}")))
}

impl ModelSource for HttpSource {
    async fn read(&self, name: &str) -> Result<Option<Vec<u8>>> {
        let url = self.describe(name);
        let resp = JsFuture::from(global_fetch(&url)).await.map_err(|e| Error::io(&url, js_err("fetch failed", e)))?;
        let resp: web_sys::Response =
            resp.dyn_into().map_err(|_| Error::io(&url, "fetch did not return a Response"))?;
        if resp.status() == 404 {
            return Ok(None);
        }
        if !resp.ok() {
            return Err(Error::io(&url, format!("HTTP {} {}", resp.status(), resp.status_text())));
        }
        let total =
            resp.headers().get("content-length").ok().flatten().and_then(|s| s.parse::<u64>().ok()).unwrap_or(0);
        let Some(body) = resp.body() else { return Ok(Some(Vec::new())) };
        let reader: web_sys::ReadableStreamDefaultReader =
            body.get_reader().dyn_into().map_err(|_| Error::io(&url, "response body has no default reader"))?;
        // Grow as bytes arrive; content-length only pre-sizes within a sane bound.
        let mut out = Vec::with_capacity(total.min(1 << 30) as usize);
        self.report(name, 0, total);
        loop {
            let chunk =
                JsFuture::from(reader.read()).await.map_err(|e| Error::io(&url, js_err("download failed", e)))?;
            let done = Reflect::get(&chunk, &"done".into()).ok().and_then(|d| d.as_bool()).unwrap_or(true);
            if done {
                break;
            }
            let value = Reflect::get(&chunk, &"value".into()).map_err(|e| Error::io(&url, js_err("bad chunk", e)))?;
            let arr = Uint8Array::new(&value);
            let start = out.len();
            out.resize(start + arr.length() as usize, 0);
            arr.copy_to(&mut out[start..]);
            self.report(name, out.len() as u64, total.max(out.len() as u64));
        }
        Ok(Some(out))
    }

    fn describe(&self, name: &str) -> String {
        format!("{}{}", self.base, name)
    }
    fn single_file(&self) -> Option<&str> {
        self.file.as_deref()
    }
}

/// In the browser, map callbacks run from the event loop; nothing to drive here.
pub fn poll_wait(_device: &wgpu::Device) -> Result<()> {
    Ok(())
}

pub fn instance_descriptor() -> wgpu::InstanceDescriptor {
    let mut d = wgpu::InstanceDescriptor::new_without_display_handle();
    d.backends = wgpu::Backends::BROWSER_WEBGPU;
    d
}

/// A page has no environment variables: every switch keeps its default.
pub fn env_flag(_name: &str) -> Option<bool> {
    None
}

/// A page has no environment variables.
pub fn env_var(_name: &str) -> Option<String> {
    None
}
