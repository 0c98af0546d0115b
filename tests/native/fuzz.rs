//! Property and fuzz tests of the parsers that take user files — CSV, bundle, GGUF, and image bytes up to the
//! pixel tensor: whatever the bytes, an answer or an error, never a panic or a hang. Bounded (a fixed number of
//! cases, seeded by proptest) so CI runs them every time; a failure proptest finds is saved under
//! tests/fuzz.proptest-regressions and replayed first on every later run.

use crate::common;
use common::*;
use proptest::prelude::*;
use proptest::test_runner::{Config, FileFailurePersistence};
use tuwen::bundle::{Bundle, Kind, ModelStamp, NewBundle, Storage};

fn config(cases: u32) -> Config {
    Config {
        cases,
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct("tests/fuzz.proptest-regressions"))),
        ..Config::default()
    }
}

/// Damage to a valid file: flipped bytes, a cut, inserted or removed bytes.
#[derive(Debug, Clone)]
enum Damage {
    Flip { at: usize, xor: u8 },
    Cut { at: usize },
    Insert { at: usize, bytes: Vec<u8> },
    Remove { at: usize, len: usize },
}

fn damage() -> impl Strategy<Value = Vec<Damage>> {
    let one = prop_oneof![
        4 => (any::<usize>(), 1..=255u8).prop_map(|(at, xor)| Damage::Flip { at, xor }),
        1 => any::<usize>().prop_map(|at| Damage::Cut { at }),
        1 => (any::<usize>(), proptest::collection::vec(any::<u8>(), 1..16)).prop_map(|(at, bytes)| Damage::Insert { at, bytes }),
        1 => (any::<usize>(), 1..64usize).prop_map(|(at, len)| Damage::Remove { at, len }),
    ];
    proptest::collection::vec(one, 1..4)
}

/// Applies `damage`, aiming at the first `focus` bytes half of the time (headers are where parsers trust).
fn apply(bytes: &[u8], damage: &[Damage], focus: usize) -> Vec<u8> {
    let mut out = bytes.to_vec();
    for (i, d) in damage.iter().enumerate() {
        if out.is_empty() {
            break;
        }
        let span = if i % 2 == 0 { focus.min(out.len()) } else { out.len() };
        match d {
            Damage::Flip { at, xor } => {
                let at = at % span;
                out[at] ^= xor;
            }
            Damage::Cut { at } => out.truncate(at % out.len()),
            Damage::Insert { at, bytes } => {
                let at = at % span;
                out.splice(at..at, bytes.iter().copied());
            }
            Damage::Remove { at, len } => {
                let at = at % span;
                let end = (at + len).min(out.len());
                out.drain(at..end);
            }
        }
    }
    out
}

fn valid_bundle(storage: Storage, captions: bool) -> Vec<u8> {
    let ids: Vec<String> = (0..5).map(|i| format!("图{i}.jpg")).collect();
    let texts: Vec<String> = (0..5).map(|i| format!("第{i}条\n说明")).collect();
    let rows: Vec<Vec<f32>> = (0..5).map(|i| (0..3).map(|j| if j == i % 3 { 1.0 } else { 0.0 }).collect()).collect();
    NewBundle {
        kind: if captions { Kind::Text } else { Kind::Image },
        storage,
        model: ModelStamp { fingerprint: "sha256:x".into(), dtype: "f32".into(), random_weights: None },
        ids: &ids,
        captions: captions.then_some(&texts[..]),
        rows: &rows,
        shard: None,
        source: None,
    }
    .to_bytes()
    .unwrap()
}

proptest! {
    #![proptest_config(config(400))]

    /// Any CSV written by a standard writer reads back as exactly its records, whatever the captions hold
    /// (quotes, commas, line breaks, `<人名>`), with CRLF or LF and an optional BOM.
    #[test]
    fn csv_round_trips(
        rows in proptest::collection::vec(("[a-z0-9]{1,8}", "[\\PC\"\n\r,<>人名 ]{1,24}"), 1..12),
        crlf in any::<bool>(),
        bom in any::<bool>(),
    ) {
        let mut seen = std::collections::HashSet::new();
        let rows: Vec<(String, String)> = rows.into_iter().filter(|(id, c)| seen.insert(id.clone()) && !c.trim().is_empty()).collect();
        prop_assume!(!rows.is_empty());
        let terminator = if crlf { csv::Terminator::CRLF } else { csv::Terminator::Any(b'\n') };
        let mut w = csv::WriterBuilder::new().terminator(terminator).from_writer(Vec::new());
        w.write_record(["text_id", "caption"]).unwrap();
        for (id, c) in &rows {
            w.write_record([id, c]).unwrap();
        }
        let mut bytes = if bom { "\u{feff}".as_bytes().to_vec() } else { Vec::new() };
        bytes.extend(w.into_inner().unwrap());
        let read = tuwen::gallery::files::parse_columns(&bytes, &["text_id", "caption"]).unwrap();
        let got: Vec<(String, String)> = read.into_iter().map(|r| (r.fields[0].clone(), r.fields[1].clone())).collect();
        prop_assert_eq!(got, rows);
    }

    /// Arbitrary bytes, and damaged valid CSVs: rows or an error, never a panic.
    #[test]
    fn csv_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512), d in damage()) {
        let _ = tuwen::gallery::files::parse_columns(&bytes, &["image_id", "caption"]);
        let valid = "\u{feff}image_id,caption\r\na.jpg,\"多行\r\n说明\"\r\nb.jpg,《绿色北京》<人名>\r\n".as_bytes();
        let _ = tuwen::gallery::files::parse_columns(&apply(valid, &d, 32), &["image_id", "caption"]);
    }

    /// Damaged bundles are refused (or, if the damage missed everything checked, read) — never a panic.
    #[test]
    fn bundles_never_panic(d in damage(), which in 0..3usize) {
        let valid = match which {
            0 => valid_bundle(Storage::F16, false),
            1 => valid_bundle(Storage::Int8, false),
            _ => valid_bundle(Storage::F16, true),
        };
        let len = u64::from_le_bytes(valid[..8].try_into().unwrap()) as usize;
        if let Ok(b) = Bundle::from_bytes(apply(&valid, &d, len + 8)) {
            for i in 0..b.len() {
                let _ = b.row(i);
            }
        }
    }
}

proptest! {
    #![proptest_config(config(48))]

    /// Damaged GGUF models: a load error, never a panic (the tiny fixture, quantized to q8_0).
    #[test]
    fn gguf_models_never_panic(d in damage()) {
        thread_local!(static GGUF: Vec<u8> = tiny_q8_0_gguf());
        let damaged = GGUF.with(|g| apply(g, &d, 4096));
        if let Ok(encoder) = tuwen::Encoder::from_gguf_bytes(&damaged, tuwen::Towers::Both) {
            let _ = encoder.embed_text("猫");
        }
    }

    /// Damaged images of every format the fixtures hold, up to the pixel tensor: pixels or an error.
    #[test]
    fn images_never_panic(d in damage(), which in 0..10usize) {
        let dir = fixtures().join("images");
        let mut names: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).collect();
        names.sort();
        let bytes = std::fs::read(&names[which % names.len()]).unwrap();
        let config = tuwen::config::PreprocessConfig::for_vision(&Default::default());
        if let Ok(px) = tuwen::preprocess::preprocess(&apply(&bytes, &d, 256), "fuzz", &config) {
            prop_assert_eq!(px.data.len(), 3 * 224 * 224);
            prop_assert!(px.data.iter().all(|x| x.is_finite()));
        }
    }
}
