//! `tuwen serve`: the static site on 127.0.0.1, with the MIME types browsers insist on (wasm streaming
//! compilation needs `application/wasm`; module scripts need a JavaScript type).

use anyhow::{anyhow, Context, Result};
use std::path::{Component, Path, PathBuf};

/// The content type for a file name, by extension.
pub fn mime_type(path: &Path) -> &'static str {
    match path.extension().and_then(|e| e.to_str()).map(|e| e.to_ascii_lowercase()).as_deref() {
        Some("html") => "text/html; charset=utf-8",
        Some("js" | "mjs") => "text/javascript; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("json") => "application/json",
        Some("webmanifest") => "application/manifest+json",
        Some("wasm") => "application/wasm",
        Some("jpg" | "jpeg") => "image/jpeg",
        Some("png") => "image/png",
        Some("webp") => "image/webp",
        Some("svg") => "image/svg+xml",
        Some("ico") => "image/x-icon",
        Some("txt" | "md") => "text/plain; charset=utf-8",
        Some("csv") => "text/csv; charset=utf-8",
        _ => "application/octet-stream",
    }
}

/// The file under `root` a request path names, or None when it would leave `root`.
pub fn resolve(root: &Path, url: &str) -> Option<PathBuf> {
    let path = url.split(['?', '#']).next().unwrap_or("");
    let path = percent_decode(path)?;
    let mut out = root.to_path_buf();
    for part in Path::new(path.trim_start_matches('/')).components() {
        match part {
            Component::Normal(p) => out.push(p),
            Component::CurDir => {}
            _ => return None,
        }
    }
    if out.is_dir() {
        out.push("index.html");
    }
    Some(out)
}

fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// The file to answer `url` with: inside `root` by name (see [`resolve`]) and once symbolic links are
/// followed (a link to a file outside the folder is not served).
fn servable(root: &Path, real_root: &Path, url: &str) -> Option<PathBuf> {
    let path = resolve(root, url)?;
    let real = path.canonicalize().ok()?;
    (real.starts_with(real_root) && real.is_file()).then_some(path)
}

/// Requests answered at once: a slow client holds one of these, never the others.
const WORKERS: usize = 8;

/// Serves `root` until the process is stopped. `port` 0 picks a free port; `on_ready` gets the URL.
/// `isolated` adds the COOP/COEP headers that make a page cross-origin isolated (needed by wasm threads:
/// without them tuwen's page isolates itself through its service worker, with one reload).
/// Only GET and HEAD are answered (405 otherwise), only with files inside `root`.
pub fn serve(root: &Path, port: u16, isolated: bool, on_ready: impl FnOnce(&str)) -> Result<()> {
    if !root.join("index.html").is_file() {
        return Err(anyhow!("{} has no index.html: build a site first (./build.sh site … or ./build.sh)", root.display()));
    }
    let real_root = root.canonicalize().with_context(|| format!("{}", root.display()))?;
    let server = tiny_http::Server::http(("127.0.0.1", port)).map_err(|e| anyhow!("cannot listen on 127.0.0.1:{port}: {e}"))?;
    let addr = server.server_addr().to_ip().context("no IP address")?;
    on_ready(&format!("http://{addr}/"));
    std::thread::scope(|scope| {
        for _ in 0..WORKERS {
            scope.spawn(|| {
                for request in server.incoming_requests() {
                    let response = answer(root, &real_root, &request, isolated);
                    let _ = request.respond(response);
                }
            });
        }
    });
    Ok(())
}

fn answer(root: &Path, real_root: &Path, request: &tiny_http::Request, isolated: bool) -> tiny_http::ResponseBox {
    let header = |k: &str, v: &str| tiny_http::Header::from_bytes(k.as_bytes(), v.as_bytes()).expect("valid header");
    if !matches!(request.method(), tiny_http::Method::Get | tiny_http::Method::Head) {
        return tiny_http::Response::from_string("method not allowed")
            .with_status_code(405)
            .with_header(header("Allow", "GET, HEAD"))
            .boxed();
    }
    match servable(root, real_root, request.url()) {
        Some(path) => match std::fs::File::open(&path) {
            Ok(file) => {
                let mut response = tiny_http::Response::from_file(file)
                    .with_header(header("Content-Type", mime_type(&path)))
                    // Let the page's service worker and cache decide; the server never serves stale files.
                    .with_header(header("Cache-Control", "no-cache"))
                    .with_header(header("X-Content-Type-Options", "nosniff"));
                if isolated {
                    response.add_header(header("Cross-Origin-Opener-Policy", "same-origin"));
                    response.add_header(header("Cross-Origin-Embedder-Policy", "require-corp"));
                }
                response.boxed()
            }
            Err(_) => tiny_http::Response::from_string("cannot read").with_status_code(500).boxed(),
        },
        None => tiny_http::Response::from_string("not found").with_status_code(404).boxed(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_never_leave_the_root() {
        let root = Path::new("/srv/site");
        assert_eq!(resolve(root, "/pkg/tuwen.js?v=1"), Some(root.join("pkg/tuwen.js")));
        assert_eq!(resolve(root, "/thumbnails/%31.jpg"), Some(root.join("thumbnails/1.jpg")));
        assert_eq!(resolve(root, "/../etc/passwd"), None);
        assert_eq!(resolve(root, "/a/%2e%2e/%2e%2e/etc/passwd"), None);
        assert_eq!(resolve(root, "/%zz"), None);
    }

    #[cfg(unix)]
    #[test]
    fn links_out_of_the_folder_are_not_served() {
        let outside = tempfile::tempdir().unwrap();
        let site = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("secret.txt"), b"secret").unwrap();
        std::fs::write(site.path().join("index.html"), b"<p>").unwrap();
        std::os::unix::fs::symlink(outside.path().join("secret.txt"), site.path().join("link.txt")).unwrap();
        std::os::unix::fs::symlink(outside.path(), site.path().join("dir")).unwrap();
        let real = site.path().canonicalize().unwrap();
        assert!(servable(site.path(), &real, "/index.html").is_some());
        assert_eq!(servable(site.path(), &real, "/link.txt"), None);
        assert_eq!(servable(site.path(), &real, "/dir/secret.txt"), None);
    }

    #[test]
    fn wasm_and_modules_get_their_types() {
        assert_eq!(mime_type(Path::new("pkg/tuwen_bg.wasm")), "application/wasm");
        assert_eq!(mime_type(Path::new("app.js")), "text/javascript; charset=utf-8");
        assert_eq!(mime_type(Path::new("manifest.webmanifest")), "application/manifest+json");
        assert_eq!(mime_type(Path::new("models/text.gguf")), "application/octet-stream");
    }
}
