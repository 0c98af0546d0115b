//! Text → token ids: BERT WordPiece exactly as HF `BertTokenizer` does it for Chinese-CLIP
//! (clean text, split CJK characters, lower-case and strip accents, `[CLS] … [SEP]`, at most 52 tokens).

use crate::config::CONTEXT_LENGTH;
use anyhow::{anyhow, bail, Context, Result};
use tokenizers::models::wordpiece::WordPiece;
use tokenizers::normalizers::BertNormalizer;
use tokenizers::pre_tokenizers::bert::BertPreTokenizer;
use tokenizers::processors::bert::BertProcessing;
use tokenizers::{AddedToken, TruncationParams};

const SPECIAL_TOKENS: [&str; 5] = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"];

pub struct TextTokenizer {
    inner: tokenizers::Tokenizer,
    vocab_size: usize,
    context_length: usize,
}

impl TextTokenizer {
    /// Builds the tokenizer from the text of a BERT `vocab.txt` (one token per line, id = line number).
    pub fn from_vocab_txt(vocab_txt: &str) -> Result<Self> {
        let mut vocab = ahash::AHashMap::new();
        for (id, line) in vocab_txt.lines().enumerate() {
            // HF `load_vocab` strips only the line break, so a token may legitimately contain spaces.
            vocab.entry(line.to_string()).or_insert(id as u32);
        }
        let vocab_size = vocab_txt.lines().count();
        if vocab_size == 0 {
            bail!("the vocabulary is empty");
        }
        for token in SPECIAL_TOKENS {
            if !vocab.contains_key(token) {
                bail!("the vocabulary lacks the special token {token}");
            }
        }
        let (cls, sep) = (vocab["[CLS]"], vocab["[SEP]"]);
        let wordpiece = WordPiece::builder()
            .vocab(vocab)
            .unk_token("[UNK]".into())
            .continuing_subword_prefix("##".into())
            .max_input_chars_per_word(100)
            .build()
            .map_err(|e| anyhow!("building WordPiece: {e}"))?;
        let mut inner = tokenizers::Tokenizer::new(wordpiece);
        // clean_text, handle_chinese_chars, strip_accents = follow lowercase (HF's None), lowercase.
        inner.with_normalizer(Some(BertNormalizer::new(true, true, None, true)));
        inner.with_pre_tokenizer(Some(BertPreTokenizer));
        inner.with_post_processor(Some(BertProcessing::new(("[SEP]".into(), sep), ("[CLS]".into(), cls))));
        inner.add_special_tokens(&SPECIAL_TOKENS.map(|t| AddedToken::from(t, true)));
        Self::finish(inner, vocab_size)
    }

    /// Loads a HF `tokenizer.json` (used when a model directory has no `vocab.txt`).
    pub fn from_tokenizer_json(bytes: &[u8]) -> Result<Self> {
        let inner = tokenizers::Tokenizer::from_bytes(bytes).map_err(|e| anyhow!("invalid tokenizer.json: {e}"))?;
        let vocab_size = inner.get_vocab_size(true);
        Self::finish(inner, vocab_size)
    }

    fn finish(mut inner: tokenizers::Tokenizer, vocab_size: usize) -> Result<Self> {
        inner
            .with_truncation(Some(TruncationParams { max_length: CONTEXT_LENGTH, ..Default::default() }))
            .map_err(|e| anyhow!("setting truncation: {e}"))?;
        inner.with_padding(None);
        Ok(Self { inner, vocab_size, context_length: CONTEXT_LENGTH })
    }

    pub fn vocab_size(&self) -> usize {
        self.vocab_size
    }

    /// Tokens in id order, as the lines of a `vocab.txt`.
    pub fn vocab_lines(&self) -> Vec<String> {
        let mut tokens: Vec<(u32, String)> = self.inner.get_vocab(true).into_iter().map(|(t, id)| (id, t)).collect();
        tokens.sort();
        tokens.into_iter().map(|(_, t)| t).collect()
    }

    pub fn context_length(&self) -> usize {
        self.context_length
    }

    /// `[CLS] tokens… [SEP]`, truncated to the context length, unpadded.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let encoding = self
            .inner
            .encode(text, true)
            .map_err(|e| anyhow!("tokenizing {text:?}: {e}"))
            .context("tokenizer failure")?;
        Ok(encoding.get_ids().to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny() -> TextTokenizer {
        let vocab = "[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\n图\n文\nhello\n##s\n,\n";
        TextTokenizer::from_vocab_txt(vocab).unwrap()
    }

    #[test]
    fn wraps_splits_and_lowercases() {
        let t = tiny();
        assert_eq!(t.encode("图文 HELLOs, 猫").unwrap(), vec![2, 5, 6, 7, 8, 9, 1, 3]);
        assert_eq!(t.encode("").unwrap(), vec![2, 3]);
    }

    #[test]
    fn truncates_to_context() {
        let t = tiny();
        let ids = t.encode(&"图".repeat(200)).unwrap();
        assert_eq!(ids.len(), CONTEXT_LENGTH);
        assert_eq!((ids[0], ids[CONTEXT_LENGTH - 1]), (2, 3));
    }

    #[test]
    fn rejects_vocab_without_specials() {
        let err = TextTokenizer::from_vocab_txt("a\nb\n").err().unwrap().to_string();
        assert!(err.contains("[PAD]"), "{err}");
    }
}
