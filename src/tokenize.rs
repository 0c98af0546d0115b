//! Text → token ids: BERT WordPiece exactly as HF `BertTokenizer` does it for Chinese-CLIP
//! (clean text, split CJK characters, lower-case and strip accents, `[CLS] … [SEP]`, at most 52 tokens).

use crate::config::{Recipe, CONTEXT_LENGTH};
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
        Self::for_recipe(vocab_txt, Recipe::Transformers)
    }

    /// The tokenizer as `recipe`'s code builds it from `vocab.txt`: `transformers`' `BertTokenizer` keeps the
    /// special tokens whole when a text contains them and makes a word of over 100 characters `[UNK]`;
    /// `cn_clip`'s `FullTokenizer` tokenizes `[CLS]` in a text like any other text, and allows 200.
    pub fn for_recipe(vocab_txt: &str, recipe: Recipe) -> Result<Self> {
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
            .max_input_chars_per_word(match recipe {
                Recipe::Transformers => 100,
                Recipe::CnClip => 200,
            })
            .build()
            .map_err(|e| anyhow!("building WordPiece: {e}"))?;
        let mut inner = tokenizers::Tokenizer::new(wordpiece);
        // clean_text, handle_chinese_chars, strip_accents = follow lowercase (HF's None), lowercase.
        inner
            .with_normalizer(Some(BertNormalizer::new(true, true, None, true)))
            .map_err(|e| anyhow!("setting the normalizer: {e}"))?;
        inner.with_pre_tokenizer(Some(BertPreTokenizer));
        inner.with_post_processor(Some(BertProcessing::new(("[SEP]".into(), sep), ("[CLS]".into(), cls))));
        if recipe == Recipe::Transformers {
            inner
                .add_special_tokens(SPECIAL_TOKENS.map(|t| AddedToken::from(t, true)))
                .map_err(|e| anyhow!("adding the special tokens: {e}"))?;
        }
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
        let text = enough_of(text, self.context_length);
        let encoding = self
            .inner
            .encode(text, true)
            .map_err(|e| anyhow!("tokenizing {text:?}: {e}"))
            .context("tokenizer failure")?;
        Ok(encoding.get_ids().to_vec())
    }
}

/// A prefix of `text` that tokenizes to the same first `tokens` tokens as the whole text, so that a caption of
/// megabytes costs what a short one does (the tokenizer would otherwise build offsets for every character
/// before truncating). The prefix ends where BERT's pre-tokenizer splits for certain (whitespace, a CJK
/// character, ASCII punctuation) after enough pieces that each give at least one token.
fn enough_of(text: &str, tokens: usize) -> &str {
    if text.len() <= 4096 {
        return text;
    }
    let splits_alone = |c: char| c.is_ascii_punctuation() || is_cjk(c);
    let (mut pieces, mut in_word, mut word_counts) = (0usize, false, false);
    for (at, c) in text.char_indices() {
        // Only the whitespace every BERT implementation splits on (not U+2028 and the like).
        let boundary = matches!(c, ' ' | '\t' | '\n' | '\r') || splits_alone(c);
        if boundary {
            if in_word && word_counts {
                pieces += 1;
            }
            in_word = false;
            word_counts = false;
            // Margin: [CLS], [SEP] and pieces that might be dropped by cleaning.
            if pieces >= tokens + 8 {
                return &text[..at];
            }
            if splits_alone(c) {
                pieces += 1;
            }
        } else {
            in_word = true;
            // A run of control or combining characters alone may give no token: count runs with a letter or digit.
            word_counts |= c.is_alphanumeric();
        }
    }
    text
}

/// The CJK ranges BERT's tokenizer puts spaces around (`_is_chinese_char`).
fn is_cjk(c: char) -> bool {
    matches!(c as u32,
        0x4E00..=0x9FFF | 0x3400..=0x4DBF | 0x20000..=0x2A6DF | 0x2A700..=0x2B73F | 0x2B740..=0x2B81F
        | 0x2B820..=0x2CEAF | 0xF900..=0xFAFF | 0x2F800..=0x2FA1F)
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
    fn a_huge_caption_gives_the_tokens_of_its_beginning() {
        let t = tiny();
        let parts = ["图", "文", "hello", "HELLOs", " ", ",", "\u{2028}", "\u{0301}", "\u{7}", "猫", "x", "é", "，", "\t", "😀"];
        let mut seed = 7u64;
        for round in 0..40 {
            let mut text = String::new();
            if round % 5 == 0 {
                text.push_str(&"y".repeat(5000)); // one word longer than WordPiece takes: a single [UNK]
            }
            while text.len() < 6000 + round * 300 {
                seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                let part = parts[(seed >> 33) as usize % parts.len()];
                text.push_str(&part.repeat(1 + (seed >> 50) as usize % 3));
            }
            let whole = t.inner.encode(text.as_str(), true).unwrap().get_ids().to_vec();
            assert_eq!(t.encode(&text).unwrap(), whole, "round {round}");
            assert!(enough_of(&text, CONTEXT_LENGTH).len() < text.len() || round % 5 == 0, "round {round} was not shortened");
        }
    }

    #[test]
    fn rejects_vocab_without_specials() {
        let err = TextTokenizer::from_vocab_txt("a\nb\n").err().unwrap().to_string();
        assert!(err.contains("[PAD]"), "{err}");
    }
}
