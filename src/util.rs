//! Small helpers: atomic file writes, and running a future that is already complete.

use anyhow::{Context, Result};
use std::io::Write;
use std::path::{Path, PathBuf};

/// `path` with `suffix` appended to its file name (`a.bundle` + `.partial` → `a.bundle.partial`).
pub fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    name.push(suffix);
    path.with_file_name(name)
}

/// Writes `bytes` to `path` through a synced temporary file and a rename, so readers (and a crash)
/// only ever see the old file or the complete new one.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let tmp = with_suffix(path, ".tmp");
    let mut file = std::fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    file.write_all(bytes).with_context(|| format!("writing {}", tmp.display()))?;
    file.sync_all().with_context(|| format!("syncing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))
}

/// Runs a future that completes without waiting on anything outside this thread: the CPU backend's, and
/// the GPU backend's natively (wgpu answers adapter and device requests at once, and a read-back polls the
/// device until done). In the browser a GPU read-back must go through the async API instead.
pub fn resolve_now<F: std::future::Future>(future: F) -> anyhow::Result<F::Output> {
    let mut future = std::pin::pin!(future);
    match future.as_mut().poll(&mut std::task::Context::from_waker(std::task::Waker::noop())) {
        std::task::Poll::Ready(value) => Ok(value),
        std::task::Poll::Pending => {
            anyhow::bail!("this needs the async API (the GPU in a browser answers asynchronously)")
        }
    }
}

/// Runs `job(0..n)` on rayon's persistent pool natively (every thread busy, no thread started per call),
/// one after another in wasm (the page's module is single-threaded).
pub fn parallel_for(n: usize, job: impl Fn(usize) + Sync + Send) {
    #[cfg(not(target_arch = "wasm32"))]
    {
        use rayon::prelude::*;
        if n == 1 {
            return job(0);
        }
        (0..n).into_par_iter().for_each(job);
    }
    #[cfg(target_arch = "wasm32")]
    (0..n).for_each(job);
}
