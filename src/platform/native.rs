//! Native twin: files from disk, blocking GPU polls.

use super::ModelSource;
use crate::error::{Error, Result};
use std::path::PathBuf;

pub struct DirSource {
    pub dir: PathBuf,
}

impl DirSource {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        DirSource { dir: dir.into() }
    }
}

impl ModelSource for DirSource {
    async fn read(&self, name: &str) -> Result<Option<Vec<u8>>> {
        let path = self.dir.join(name);
        match std::fs::read(&path) {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if !self.dir.is_dir() {
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
