//! Native twin: files from disk, blocking GPU polls.

use super::ModelSource;
use crate::error::{Error, Result};
use std::path::PathBuf;

/// A model directory, or a single `.gguf` file, on disk.
pub struct DirSource {
    pub dir: PathBuf,
    file: Option<String>,
}

impl DirSource {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        let path: PathBuf = path.into();
        let gguf = path.to_str().and_then(super::split_gguf).map(|(_, f)| f.to_string());
        match gguf {
            Some(f) => DirSource { dir: path.parent().map(|p| p.to_path_buf()).unwrap_or_default(), file: Some(f) },
            None => DirSource { dir: path, file: None },
        }
    }
}

impl ModelSource for DirSource {
    async fn read(&self, name: &str) -> Result<Option<Vec<u8>>> {
        let path = self.dir.join(name);
        match std::fs::read(&path) {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if self.file.is_none() && !self.dir.is_dir() {
                    return Err(Error::io(self.dir.display(), "is not a directory"));
                }
                Ok(None)
            }
            Err(e) => Err(Error::io(path.display(), e)),
        }
    }
    fn describe(&self, name: &str) -> String {
        self.dir.join(name).display().to_string()
    }
    fn single_file(&self) -> Option<&str> {
        self.file.as_deref()
    }
}

/// Drives wgpu until queued work and its callbacks (buffer maps) are done.
pub fn poll_wait(device: &wgpu::Device) -> Result<()> {
    device
        .poll(wgpu::PollType::wait_indefinitely())
        .map(|_| ())
        .map_err(|e| Error::gpu(format!("waiting for the GPU failed: {e}")))
}

/// Native: every backend wgpu was built with; `WGPU_BACKEND` and friends override.
pub fn instance_descriptor() -> wgpu::InstanceDescriptor {
    wgpu::InstanceDescriptor::new_without_display_handle_from_env()
}

/// Runs a future to completion on this thread.
pub fn block_on<F: std::future::Future>(f: F) -> F::Output {
    pollster::block_on(f)
}
