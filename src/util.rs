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

/// Errors when writing `out` would replace one of `inputs` (the same file under any name: links, `./`,
/// `..`), e.g. `--out` given the path of `--texts`. Outputs are written by rename, so the input would be lost.
#[cfg(not(target_arch = "wasm32"))]
pub fn refuse_overwriting(out: &Path, inputs: &[&Path]) -> Result<()> {
    let resolve = |p: &Path| -> Option<PathBuf> {
        if let Ok(real) = p.canonicalize() {
            return Some(real);
        }
        let parent = p.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
        Some(parent.canonicalize().ok()?.join(p.file_name()?))
    };
    let Some(target) = resolve(out) else { return Ok(()) };
    for input in inputs {
        if resolve(input).is_some_and(|i| i == target) {
            anyhow::bail!("{} is an input of this command: refusing to write the output over it", out.display());
        }
    }
    Ok(())
}

/// An advisory lock on `<path>.lock`, held while a run writes `path`; a second run on the same output stops
/// with a message instead of racing the first (the OS drops the lock when a process dies, so a killed run
/// never leaves a stale one).
#[cfg(not(target_arch = "wasm32"))]
pub struct OutputLock {
    path: PathBuf,
    _file: std::fs::File,
}

#[cfg(not(target_arch = "wasm32"))]
impl OutputLock {
    pub fn take(path: &Path) -> Result<Self> {
        let lock = with_suffix(path, ".lock");
        if let Some(dir) = lock.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock)
            .with_context(|| format!("creating {}", lock.display()))?;
        match file.try_lock() {
            Ok(()) => Ok(Self { path: lock, _file: file }),
            Err(std::fs::TryLockError::WouldBlock) => anyhow::bail!(
                "another tuwen run is writing {} (it holds {}): wait for it, or stop it",
                path.display(),
                lock.display()
            ),
            Err(std::fs::TryLockError::Error(e)) => Err(e).with_context(|| format!("locking {}", lock.display())),
        }
    }
}

#[cfg(not(target_arch = "wasm32"))]
impl Drop for OutputLock {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
