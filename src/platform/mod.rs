//! Everything that differs between native and the browser, in one place: how model files
//! are read, how the GPU is polled, and which wgpu backends are asked for. The rest of the
//! crate is written once against these functions.

use crate::error::Result;

#[cfg(not(target_arch = "wasm32"))]
mod native;
#[cfg(not(target_arch = "wasm32"))]
pub use native::*;

#[cfg(target_arch = "wasm32")]
mod web;
#[cfg(target_arch = "wasm32")]
pub use web::*;

/// Where model files come from: a directory on disk natively, an HTTP base URL in the
/// browser. `read` returns `Ok(None)` when the file does not exist (an optional index).
#[allow(async_fn_in_trait)]
pub trait ModelSource {
    async fn read(&self, name: &str) -> Result<Option<Vec<u8>>>;
    /// The full path or URL of `name`, for error messages.
    fn describe(&self, name: &str) -> String;
    /// When the source is one GGUF file rather than a directory, its name.
    fn single_file(&self) -> Option<&str>;
}

/// Splits a path or URL naming a single-file model — a `.gguf` file or a packed model's
/// `manifest.json` — into (directory, file name).
pub fn split_gguf(location: &str) -> Option<(&str, &str)> {
    let path = location.split(['?', '#']).next().unwrap_or(location);
    let lower = path.to_ascii_lowercase();
    if !lower.ends_with(".gguf") && !lower.ends_with("manifest.json") {
        return None;
    }
    match path.rfind('/') {
        Some(i) => Some((&path[..=i], &path[i + 1..])),
        None => Some(("", path)),
    }
}
