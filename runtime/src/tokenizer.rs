//! Tokenizers: text ↔ token ids, and a small JSON form so checkpoints and token files carry them.
//!
//! Three kinds, as users know them: nanoGPT's character-level vocabulary (the corpus's sorted
//! unique characters, `sorted(set(text))` in `prepare.py`), raw bytes (256 ids, llm.c-style
//! byte models), and any Hugging Face `tokenizer.json` loaded from disk through the `tokenizers`
//! crate (same ids as the Python library; nothing is fetched from a hub).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use miette::Diagnostic;
use serde::{Deserialize, Serialize};

/// Why tokenizing, detokenizing or loading a tokenizer failed.
#[derive(Debug, thiserror::Error, Diagnostic)]
pub enum TokenizerError {
    #[error("character {ch:?} (U+{code:04X}) at byte {offset} is not in the vocabulary of {vocab_size} characters")]
    #[diagnostic(
        code(tokenizer::unknown_char),
        help("a char tokenizer knows only the characters of the corpus it was built from")
    )]
    UnknownChar {
        ch: char,
        code: u32,
        offset: usize,
        vocab_size: usize,
    },
    #[error("token id {id} is outside the vocabulary of {vocab_size}")]
    #[diagnostic(code(tokenizer::invalid_id))]
    InvalidId { id: u32, vocab_size: usize },
    #[error("cannot build a char vocabulary from empty text")]
    #[diagnostic(code(tokenizer::empty_vocab))]
    EmptyVocab,
    #[error("cannot load tokenizer `{path}`: {reason}")]
    #[diagnostic(
        code(tokenizer::load),
        help("expected a Hugging Face `tokenizer.json` file")
    )]
    Load { path: PathBuf, reason: String },
    #[error("invalid saved tokenizer: {reason}")]
    #[diagnostic(code(tokenizer::saved))]
    Saved { reason: String },
    #[error("the tokenizer failed: {reason}")]
    #[diagnostic(code(tokenizer::encode))]
    Encode { reason: String },
}

/// A tokenizer of one of the three kinds.
#[derive(Debug, Clone)]
pub enum Tokenizer {
    Char(CharTokenizer),
    Byte,
    HuggingFace(HfTokenizer),
}

/// nanoGPT's character-level tokenizer: id = position in the sorted vocabulary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CharTokenizer {
    chars: Vec<char>,
    /// Ids of chars below 256, for the common case; `u32::MAX` where absent.
    ascii: Box<[u32; 256]>,
}

/// A Hugging Face tokenizer, kept with the JSON it was loaded from so it saves byte-exactly.
#[derive(Clone)]
pub struct HfTokenizer {
    json: Arc<str>,
    inner: Arc<tokenizers::Tokenizer>,
}

impl std::fmt::Debug for HfTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HfTokenizer")
            .field("vocab_size", &self.inner.get_vocab_size(true))
            .finish()
    }
}

/// The saved form (`Tokenizer::to_json`).
#[derive(Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
enum Saved {
    Char { chars: String },
    Byte,
    TokenizerJson { json: String },
}

impl CharTokenizer {
    /// The vocabulary of `text`: its unique characters sorted by code point, as
    /// `sorted(list(set(data)))` in nanoGPT's `shakespeare_char/prepare.py`.
    pub fn from_text(text: &str) -> Result<CharTokenizer, TokenizerError> {
        let set: BTreeSet<char> = text.chars().collect();
        CharTokenizer::from_chars(set.into_iter().collect())
    }

    /// A tokenizer with exactly this vocabulary (id = index). Characters must be unique.
    pub fn from_chars(chars: Vec<char>) -> Result<CharTokenizer, TokenizerError> {
        if chars.is_empty() {
            return Err(TokenizerError::EmptyVocab);
        }
        let unique: BTreeSet<char> = chars.iter().copied().collect();
        if unique.len() != chars.len() {
            return Err(TokenizerError::Saved {
                reason: "the char vocabulary has repeated characters".to_string(),
            });
        }
        let mut ascii = Box::new([u32::MAX; 256]);
        for (id, c) in chars.iter().enumerate() {
            if (*c as u32) < 256 {
                ascii[*c as usize] = id as u32;
            }
        }
        Ok(CharTokenizer { chars, ascii })
    }

    /// The vocabulary in id order.
    pub fn chars(&self) -> &[char] {
        &self.chars
    }

    fn id(&self, c: char) -> Option<u32> {
        if (c as u32) < 256 {
            let id = self.ascii[c as usize];
            return (id != u32::MAX).then_some(id);
        }
        // Non-Latin-1 characters: the vocabulary is small, a scan is fine.
        self.chars.iter().position(|x| *x == c).map(|i| i as u32)
    }
}

impl Tokenizer {
    /// Loads a Hugging Face `tokenizer.json` from disk.
    pub fn from_tokenizer_json(path: &Path) -> Result<Tokenizer, TokenizerError> {
        let json = std::fs::read_to_string(path).map_err(|e| TokenizerError::Load {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        let inner: tokenizers::Tokenizer =
            json.parse()
                .map_err(
                    |e: Box<dyn std::error::Error + Send + Sync>| TokenizerError::Load {
                        path: path.to_path_buf(),
                        reason: e.to_string(),
                    },
                )?;
        Ok(Tokenizer::HuggingFace(HfTokenizer {
            json: json.into(),
            inner: Arc::new(inner),
        }))
    }

    /// Number of token ids.
    pub fn vocab_size(&self) -> usize {
        match self {
            Tokenizer::Char(c) => c.chars.len(),
            Tokenizer::Byte => 256,
            Tokenizer::HuggingFace(h) => h.inner.get_vocab_size(true),
        }
    }

    /// Short name of the kind: `char`, `byte` or `tokenizer_json`.
    pub fn kind_name(&self) -> &'static str {
        match self {
            Tokenizer::Char(_) => "char",
            Tokenizer::Byte => "byte",
            Tokenizer::HuggingFace(_) => "tokenizer_json",
        }
    }

    /// Text to ids (no special tokens added).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, TokenizerError> {
        match self {
            Tokenizer::Char(c) => text
                .char_indices()
                .map(|(offset, ch)| {
                    c.id(ch).ok_or(TokenizerError::UnknownChar {
                        ch,
                        code: ch as u32,
                        offset,
                        vocab_size: c.chars.len(),
                    })
                })
                .collect(),
            Tokenizer::Byte => Ok(text.bytes().map(u32::from).collect()),
            Tokenizer::HuggingFace(h) => h
                .inner
                .encode(text, false)
                .map(|e| e.get_ids().to_vec())
                .map_err(|e| TokenizerError::Encode {
                    reason: e.to_string(),
                }),
        }
    }

    /// Ids to text. Byte sequences that are not UTF-8 decode with U+FFFD replacements.
    pub fn decode(&self, ids: &[u32]) -> Result<String, TokenizerError> {
        let vocab_size = self.vocab_size();
        if let Some(&id) = ids.iter().find(|&&id| id as usize >= vocab_size) {
            return Err(TokenizerError::InvalidId { id, vocab_size });
        }
        match self {
            Tokenizer::Char(c) => Ok(ids.iter().map(|&id| c.chars[id as usize]).collect()),
            Tokenizer::Byte => {
                let bytes: Vec<u8> = ids.iter().map(|&id| id as u8).collect();
                Ok(String::from_utf8_lossy(&bytes).into_owned())
            }
            Tokenizer::HuggingFace(h) => {
                h.inner
                    .decode(ids, false)
                    .map_err(|e| TokenizerError::Encode {
                        reason: e.to_string(),
                    })
            }
        }
    }

    /// The saved form: `{"kind":"char","chars":"..."}`, `{"kind":"byte"}` or
    /// `{"kind":"tokenizer_json","json":"<the tokenizer.json text>"}`.
    pub fn to_json(&self) -> String {
        let saved = match self {
            Tokenizer::Char(c) => Saved::Char {
                chars: c.chars.iter().collect(),
            },
            Tokenizer::Byte => Saved::Byte,
            Tokenizer::HuggingFace(h) => Saved::TokenizerJson {
                json: h.json.to_string(),
            },
        };
        // Serializing strings and a tag into JSON cannot fail.
        serde_json::to_string(&saved).unwrap_or_default()
    }

    /// Reads the saved form written by [`Tokenizer::to_json`].
    pub fn from_json(text: &str) -> Result<Tokenizer, TokenizerError> {
        let saved: Saved = serde_json::from_str(text).map_err(|e| TokenizerError::Saved {
            reason: e.to_string(),
        })?;
        match saved {
            Saved::Char { chars } => Ok(Tokenizer::Char(CharTokenizer::from_chars(
                chars.chars().collect(),
            )?)),
            Saved::Byte => Ok(Tokenizer::Byte),
            Saved::TokenizerJson { json } => {
                let inner: tokenizers::Tokenizer =
                    json.parse()
                        .map_err(|e: Box<dyn std::error::Error + Send + Sync>| {
                            TokenizerError::Saved {
                                reason: e.to_string(),
                            }
                        })?;
                Ok(Tokenizer::HuggingFace(HfTokenizer {
                    json: json.into(),
                    inner: Arc::new(inner),
                }))
            }
        }
    }
}

impl PartialEq for Tokenizer {
    fn eq(&self, other: &Tokenizer) -> bool {
        match (self, other) {
            (Tokenizer::Char(a), Tokenizer::Char(b)) => a == b,
            (Tokenizer::Byte, Tokenizer::Byte) => true,
            (Tokenizer::HuggingFace(a), Tokenizer::HuggingFace(b)) => a.json == b.json,
            (Tokenizer::Char(_) | Tokenizer::Byte | Tokenizer::HuggingFace(_), _) => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn char_vocab_is_sorted_unique_and_round_trips() {
        let t = Tokenizer::Char(CharTokenizer::from_text("hello world").unwrap());
        assert_eq!(t.vocab_size(), 8);
        let Tokenizer::Char(c) = &t else {
            unreachable!()
        };
        assert_eq!(c.chars().iter().collect::<String>(), " dehlorw");
        assert_eq!(t.encode("hold").unwrap(), vec![3, 5, 4, 1]);
        assert_eq!(t.decode(&[3, 5, 4, 1]).unwrap(), "hold");
        let back = Tokenizer::from_json(&t.to_json()).unwrap();
        assert_eq!(back, t);
        assert!(matches!(
            t.encode("hex"),
            Err(TokenizerError::UnknownChar {
                ch: 'x',
                offset: 2,
                ..
            })
        ));
        assert!(matches!(
            t.decode(&[8]),
            Err(TokenizerError::InvalidId { id: 8, .. })
        ));
    }

    #[test]
    fn non_ascii_chars_sort_by_code_point() {
        let c = CharTokenizer::from_text("zé a€").unwrap();
        assert_eq!(c.chars(), &[' ', 'a', 'z', 'é', '€']);
        let t = Tokenizer::Char(c);
        assert_eq!(t.encode("€é").unwrap(), vec![4, 3]);
    }

    #[test]
    fn bytes_are_identity() {
        let t = Tokenizer::Byte;
        assert_eq!(t.encode("aé").unwrap(), vec![97, 0xC3, 0xA9]);
        assert_eq!(t.decode(&[97, 0xC3, 0xA9]).unwrap(), "aé");
        assert!(t.decode(&[256]).is_err());
        assert_eq!(Tokenizer::from_json(&t.to_json()).unwrap(), t);
    }

    #[test]
    fn bad_saved_forms_are_errors() {
        assert!(Tokenizer::from_json("{\"kind\":\"char\",\"chars\":\"aa\"}").is_err());
        assert!(Tokenizer::from_json("{\"kind\":\"char\",\"chars\":\"\"}").is_err());
        assert!(Tokenizer::from_json("{\"kind\":\"bpe\"}").is_err());
        assert!(Tokenizer::from_json("not json").is_err());
    }
}
