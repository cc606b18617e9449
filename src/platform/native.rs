//! Native twin: files from disk, blocking GPU polls.

use super::ModelSource;
use crate::error::{Error, Result};
use std::path::PathBuf;

/// A model directory, or a single `.gguf` file, on disk.
pub struct DirSource {
    pub dir: PathBuf,
    file: Option<String>,
    progress: Option<crate::model::Progress>,
}

impl DirSource {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        let path: PathBuf = path.into();
        let gguf = path.to_str().and_then(super::split_gguf).map(|(_, f)| f.to_string());
        match gguf {
            Some(f) => DirSource {
                dir: path.parent().map(|p| p.to_path_buf()).unwrap_or_default(),
                file: Some(f),
                progress: None,
            },
            None => DirSource { dir: path, file: None, progress: None },
        }
    }

    /// Reports bytes read, per file, as phase "read".
    pub fn with_progress(mut self, p: crate::model::Progress) -> Self {
        self.progress = Some(p);
        self
    }

    fn read_reporting(&self, path: &std::path::Path, name: &str) -> std::io::Result<Vec<u8>> {
        use std::io::Read;
        let mut f = std::fs::File::open(path)?;
        let total = f.metadata()?.len();
        let Some(p) = &self.progress else {
            let mut v = Vec::new();
            f.read_to_end(&mut v)?;
            return Ok(v);
        };
        let mut v = Vec::with_capacity(total as usize);
        let mut buf = vec![0u8; 8 << 20];
        loop {
            let n = f.read(&mut buf)?;
            if n == 0 {
                break;
            }
            v.extend_from_slice(&buf[..n]);
            p.report("read", name, v.len() as u64, total.max(v.len() as u64));
        }
        Ok(v)
    }
}

impl ModelSource for DirSource {
    async fn read(&self, name: &str) -> Result<Option<Vec<u8>>> {
        let path = self.dir.join(name);
        match self.read_reporting(&path, name) {
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

/// A boolean switch from the environment: "0"/"false"/"off" is false, anything else true.
pub fn env_flag(name: &str) -> Option<bool> {
    std::env::var(name).ok().map(|v| !matches!(v.trim(), "0" | "false" | "off" | ""))
}

/// A setting from the environment, if set.
pub fn env_var(name: &str) -> Option<String> {
    std::env::var(name).ok()
}
