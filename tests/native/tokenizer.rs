//! Token ids identical to HF `BertTokenizer` on the released vocabulary (../shared), for every caption of
//! the Teddy sample and the edge cases (ids recorded by scripts/make_fixtures.py).

use crate::common;
use common::*;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use tuwen::tokenize::TextTokenizer;

#[derive(Deserialize)]
struct RealVocab {
    edge_cases: Vec<EdgeCase>,
    captions: HashMap<String, CaptionIds>,
}
#[derive(Deserialize)]
struct EdgeCase {
    text: String,
    ids: Vec<u32>,
}
#[derive(Deserialize)]
struct CaptionIds {
    len: usize,
    sha256: String,
}

fn digest(ids: &[u32]) -> String {
    let joined = ids.iter().map(|i| i.to_string()).collect::<Vec<_>>().join(",");
    Sha256::digest(joined.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn real_vocab_matches_hf_bert_tokenizer() {
    let Some(shared) = shared("chinese-clip-vit-base-patch16/vocab.txt") else { return };
    let model = shared.join("chinese-clip-vit-base-patch16");
    let vocab = std::fs::read_to_string(model.join("vocab.txt")).unwrap();
    let tokenizer = TextTokenizer::from_vocab_txt(&vocab).unwrap();
    assert_eq!(tokenizer.vocab_size(), 21128);
    let reference: RealVocab =
        serde_json::from_str(&std::fs::read_to_string(fixtures().join("real_vocab.json")).unwrap()).unwrap();
    for case in &reference.edge_cases {
        assert_eq!(tokenizer.encode(&case.text).unwrap(), case.ids, "{:?}", case.text);
    }
    let captions = sample_captions(&shared);
    assert_eq!(captions.len(), 300);
    assert!(captions.iter().any(|(_, c)| c.contains('\n')), "quoted multi-line captions are part of the sample");
    let mut longest = 0;
    for (id, caption) in &captions {
        let ids = tokenizer.encode(caption).unwrap();
        let expected = &reference.captions[id];
        assert_eq!(ids.len(), expected.len, "{id}: {caption:?} → {ids:?}");
        assert_eq!(digest(&ids), expected.sha256, "{id}: {caption:?} → {ids:?}");
        longest = longest.max(ids.len());
    }
    eprintln!("{} captions and {} edge cases identical to BertTokenizer; longest {longest} tokens",
        captions.len(), reference.edge_cases.len());

    // The same tokenizer built from tokenizer.json agrees (used when a model ships no vocab.txt).
    let fast = TextTokenizer::from_tokenizer_json(&std::fs::read(model.join("tokenizer.json")).unwrap()).unwrap();
    for case in &reference.edge_cases {
        assert_eq!(fast.encode(&case.text).unwrap(), case.ids, "tokenizer.json: {:?}", case.text);
    }
}
