//! `tuwen fetch-model`: the released weights from the Hugging Face hub (or the mirror in `HF_ENDPOINT`).

use crate::weights::hf::{
    CONFIG_FILE, PREPROCESSOR_FILE, PYTORCH_FILE, SAFETENSORS_FILE, TOKENIZER_FILE, VOCAB_FILE,
};
use anyhow::{bail, Context, Result};
use std::net::{TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::time::Duration;

pub const DEFAULT_REPO: &str = "OFA-Sys/chinese-clip-vit-base-patch16";
const DEFAULT_ENDPOINT: &str = "https://huggingface.co";

/// The hub's base URL: `HF_ENDPOINT` (e.g. `https://hf-mirror.com`) or huggingface.co.
pub fn endpoint() -> String {
    std::env::var("HF_ENDPOINT").ok().filter(|e| !e.is_empty()).unwrap_or_else(|| DEFAULT_ENDPOINT.into())
}

/// Fails within seconds, with advice, when the endpoint cannot be reached (instead of a long hang).
fn check_reachable(endpoint: &str) -> Result<()> {
    let (tls, rest) = match endpoint.split_once("://") {
        Some(("https", rest)) => (true, rest),
        Some(("http", rest)) => (false, rest),
        _ => bail!("HF_ENDPOINT {endpoint:?} is not an http(s) URL"),
    };
    let authority = rest.split('/').next().unwrap_or_default();
    let address = if authority.contains(':') {
        authority.to_string()
    } else {
        format!("{authority}:{}", if tls { 443 } else { 80 })
    };
    let offline = |why: String| {
        anyhow::anyhow!(
            "cannot reach {endpoint} ({why}). You appear to be offline. Either set HF_ENDPOINT to a mirror you can \
             reach (e.g. HF_ENDPOINT=https://hf-mirror.com), or download {DEFAULT_REPO} elsewhere and pass its \
             directory (config.json, vocab.txt, model.safetensors or pytorch_model.bin) with --model DIR"
        )
    };
    let addrs: Vec<_> = address.to_socket_addrs().map_err(|e| offline(format!("name lookup failed: {e}")))?.collect();
    let mut last = String::from("no address");
    for addr in addrs {
        match TcpStream::connect_timeout(&addr, Duration::from_secs(10)) {
            Ok(_) => return Ok(()),
            Err(e) => last = format!("connecting to {addr}: {e}"),
        }
    }
    Err(offline(last))
}

/// Seconds without a byte arriving after which a download is given up (`TUWEN_FETCH_STALL_SECONDS`).
fn stall_limit() -> Duration {
    let seconds = std::env::var("TUWEN_FETCH_STALL_SECONDS").ok().and_then(|s| s.parse().ok()).unwrap_or(60u64);
    Duration::from_secs(seconds.max(1))
}

/// Total bytes of the files under `dir` (the hub cache, where downloads grow).
fn bytes_under(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
    entries
        .flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => bytes_under(&e.path()),
            Ok(t) if t.is_file() => e.metadata().map_or(0, |m| m.len()),
            _ => 0,
        })
        .sum()
}

/// The hub client has no read timeout: a server that accepts the connection and never answers would hang
/// the command forever. This watchdog ends the process with a message when the cache has not grown for
/// `limit` (a request waiting on an answer counts as not growing).
fn stall_watchdog(cache: PathBuf, endpoint: String, limit: Duration) -> std::sync::mpsc::Sender<()> {
    let (done, stop) = std::sync::mpsc::channel::<()>();
    std::thread::spawn(move || {
        let (mut last, mut since) = (bytes_under(&cache), std::time::Instant::now());
        loop {
            match stop.recv_timeout(Duration::from_millis(500)) {
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
                _ => return,
            }
            let now = bytes_under(&cache);
            if now != last {
                (last, since) = (now, std::time::Instant::now());
            } else if since.elapsed() >= limit {
                eprintln!(
                    "error: no data from {endpoint} for {} s: the download stalled (files downloaded so far stay in {} \
                     and are reused by the next try; TUWEN_FETCH_STALL_SECONDS sets this limit)",
                    limit.as_secs(),
                    cache.display()
                );
                std::process::exit(1);
            }
        }
    });
    done
}

/// Downloads `repo` into `out` in the HF layout and returns `out`.
pub fn fetch_model(repo: &str, out: &Path) -> Result<PathBuf> {
    let endpoint = endpoint();
    check_reachable(&endpoint)?;
    let cache = hf_hub::Cache::from_env().path().clone();
    let _watchdog = stall_watchdog(cache, endpoint.clone(), stall_limit());
    let api = hf_hub::api::sync::ApiBuilder::from_env()
        .with_endpoint(endpoint.clone())
        .with_progress(true)
        .build()
        .context("setting up the hub client")?;
    let model = api.model(repo.to_string());
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let copy = |file: &str, required: bool| -> Result<bool> {
        match model.get(file) {
            Ok(cached) => {
                std::fs::copy(&cached, out.join(file)).with_context(|| format!("writing {}", out.join(file).display()))?;
                Ok(true)
            }
            Err(e) if required => Err(e).with_context(|| format!("downloading {file} of {repo} from {endpoint}")),
            Err(_) => Ok(false),
        }
    };
    copy(CONFIG_FILE, true)?;
    copy(VOCAB_FILE, true)?;
    for optional in [PREPROCESSOR_FILE, TOKENIZER_FILE, "tokenizer_config.json", "special_tokens_map.json"] {
        copy(optional, false)?;
    }
    if !copy(SAFETENSORS_FILE, false)? {
        copy(PYTORCH_FILE, true)?;
    }
    Ok(out.to_path_buf())
}
