//! `config.json`: kept whole as JSON (so an export writes back what an import read), with typed
//! accessors that turn a missing or mistyped field into a diagnostic naming the file and key.
//!
//! Families spell the same hyperparameter differently (GPT-2 `n_embd`, LLaMA `hidden_size`, T5
//! `d_model`), as `transformers`' `attribute_map`s say; the family-neutral accessors try each
//! spelling in turn.

use std::path::{Path, PathBuf};

use serde_json::Value;

use super::HfError;

/// A model's `config.json`.
#[derive(Debug, Clone, PartialEq)]
pub struct HfConfig {
    /// Where it was read from (for diagnostics).
    pub path: PathBuf,
    /// The whole object.
    pub value: Value,
}

impl HfConfig {
    /// Reads and parses `path`; the top level must be an object.
    pub fn from_file(path: &Path) -> Result<HfConfig, HfError> {
        let text = std::fs::read_to_string(path).map_err(|e| super::io_err(path, e))?;
        let value: Value = serde_json::from_str(&text).map_err(|e| HfError::Config {
            path: path.to_path_buf(),
            reason: format!("invalid JSON: {e}"),
        })?;
        HfConfig::from_value(path, value)
    }

    /// Wraps an already parsed config; `path` is only used in diagnostics.
    pub fn from_value(path: &Path, value: Value) -> Result<HfConfig, HfError> {
        if !value.is_object() {
            return Err(HfError::Config {
                path: path.to_path_buf(),
                reason: "the top level is not a JSON object".to_string(),
            });
        }
        Ok(HfConfig {
            path: path.to_path_buf(),
            value,
        })
    }

    fn err(&self, key: &str, reason: &str) -> HfError {
        HfError::Config {
            path: self.path.clone(),
            reason: format!("field `{key}` {reason}"),
        }
    }

    /// The field, treating JSON `null` as absent (`n_inner: null` means "the default").
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.value.get(key).filter(|v| !v.is_null())
    }

    /// An unsigned integer field, absent allowed.
    pub fn opt_usize(&self, key: &str) -> Result<Option<usize>, HfError> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_u64()
                .and_then(|n| usize::try_from(n).ok())
                .map(Some)
                .ok_or_else(|| self.err(key, &format!("is {v}, not an unsigned integer"))),
        }
    }

    /// An unsigned integer field that must be present.
    pub fn usize(&self, key: &str) -> Result<usize, HfError> {
        self.opt_usize(key)?
            .ok_or_else(|| self.err(key, "is missing"))
    }

    /// A number field, absent allowed (integers are accepted: `"rope_theta": 10000`).
    pub fn opt_f64(&self, key: &str) -> Result<Option<f64>, HfError> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_f64()
                .map(Some)
                .ok_or_else(|| self.err(key, &format!("is {v}, not a number"))),
        }
    }

    /// A number field that must be present.
    pub fn f64(&self, key: &str) -> Result<f64, HfError> {
        self.opt_f64(key)?
            .ok_or_else(|| self.err(key, "is missing"))
    }

    /// A boolean field, absent allowed.
    pub fn opt_bool(&self, key: &str) -> Result<Option<bool>, HfError> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_bool()
                .map(Some)
                .ok_or_else(|| self.err(key, &format!("is {v}, not true or false"))),
        }
    }

    /// A string field, absent allowed.
    pub fn opt_str(&self, key: &str) -> Result<Option<&str>, HfError> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_str()
                .map(Some)
                .ok_or_else(|| self.err(key, &format!("is {v}, not a string"))),
        }
    }

    /// A string field that must be present.
    pub fn str(&self, key: &str) -> Result<&str, HfError> {
        self.opt_str(key)?
            .ok_or_else(|| self.err(key, "is missing"))
    }

    /// The first present of several spellings of one unsigned integer.
    pub fn usize_any(&self, keys: &[&str]) -> Result<usize, HfError> {
        for key in keys {
            if let Some(n) = self.opt_usize(key)? {
                return Ok(n);
            }
        }
        Err(self.err(&keys.join("` / `"), "is missing"))
    }

    /// `model_type`: `gpt2`, `llama`, `t5`, ...
    pub fn model_type(&self) -> Result<&str, HfError> {
        self.str("model_type")
    }

    /// `architectures`: the classes that saved it (`["GPT2LMHeadModel"]`); empty when absent.
    pub fn architectures(&self) -> Vec<&str> {
        self.get("architectures")
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default()
    }

    /// Vocabulary size.
    pub fn vocab_size(&self) -> Result<usize, HfError> {
        self.usize("vocab_size")
    }

    /// Model width: `n_embd` (GPT-2), `hidden_size` (LLaMA), `d_model` (T5).
    pub fn hidden_size(&self) -> Result<usize, HfError> {
        self.usize_any(&["hidden_size", "n_embd", "d_model"])
    }

    /// Layers (per stack, for encoder-decoders): `n_layer`, `num_hidden_layers`, `num_layers`.
    pub fn num_layers(&self) -> Result<usize, HfError> {
        self.usize_any(&["num_hidden_layers", "n_layer", "num_layers"])
    }

    /// Attention heads: `n_head`, `num_attention_heads`, `num_heads`.
    pub fn num_heads(&self) -> Result<usize, HfError> {
        self.usize_any(&["num_attention_heads", "n_head", "num_heads"])
    }

    /// Key/value heads (`num_key_value_heads`); as many as query heads when absent.
    pub fn num_kv_heads(&self) -> Result<usize, HfError> {
        match self.opt_usize("num_key_value_heads")? {
            Some(n) => Ok(n),
            None => self.num_heads(),
        }
    }

    /// Norm epsilon: `layer_norm_epsilon` (GPT-2, T5), `rms_norm_eps` (LLaMA), `layer_norm_eps`.
    pub fn norm_eps(&self) -> Result<f64, HfError> {
        for key in ["rms_norm_eps", "layer_norm_epsilon", "layer_norm_eps"] {
            if let Some(x) = self.opt_f64(key)? {
                return Ok(x);
            }
        }
        Err(self.err(
            "rms_norm_eps` / `layer_norm_epsilon` / `layer_norm_eps",
            "is missing",
        ))
    }

    /// RoPE base: `rope_theta`, or `rope_parameters.rope_theta` as `transformers` 5 writes it.
    pub fn rope_theta(&self) -> Result<Option<f64>, HfError> {
        if let Some(x) = self.opt_f64("rope_theta")? {
            return Ok(Some(x));
        }
        match self.get("rope_parameters") {
            None => Ok(None),
            Some(p) => match p.get("rope_theta") {
                None | Some(Value::Null) => Ok(None),
                Some(v) => v.as_f64().map(Some).ok_or_else(|| {
                    self.err(
                        "rope_parameters.rope_theta",
                        &format!("is {v}, not a number"),
                    )
                }),
            },
        }
    }

    /// Whether the output projection reuses the input embedding; `transformers` defaults to yes.
    pub fn tie_word_embeddings(&self) -> Result<bool, HfError> {
        Ok(self.opt_bool("tie_word_embeddings")?.unwrap_or(true))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(json: &str) -> HfConfig {
        HfConfig::from_value(
            Path::new("config.json"),
            serde_json::from_str(json).unwrap(),
        )
        .unwrap()
    }

    #[test]
    fn spellings_of_one_field_resolve() {
        let gpt2 = cfg(
            r#"{"model_type":"gpt2","n_embd":32,"n_layer":2,"n_head":4,"n_inner":null,"layer_norm_epsilon":1e-5}"#,
        );
        assert_eq!(gpt2.hidden_size().unwrap(), 32);
        assert_eq!(gpt2.num_layers().unwrap(), 2);
        assert_eq!(gpt2.num_kv_heads().unwrap(), 4);
        assert_eq!(gpt2.opt_usize("n_inner").unwrap(), None);
        assert_eq!(gpt2.norm_eps().unwrap(), 1e-5);
        assert!(gpt2.tie_word_embeddings().unwrap());
        let llama = cfg(
            r#"{"hidden_size":32,"num_key_value_heads":2,"num_attention_heads":4,"rope_parameters":{"rope_theta":10000.0}}"#,
        );
        assert_eq!(llama.num_kv_heads().unwrap(), 2);
        assert_eq!(llama.rope_theta().unwrap(), Some(10000.0));
    }

    #[test]
    fn wrong_types_and_absences_name_the_key() {
        let c = cfg(r#"{"n_embd":"32","rope_theta":true,"tie_word_embeddings":1}"#);
        let e = c.hidden_size().unwrap_err().to_string();
        assert!(
            e.contains("`n_embd`") && e.contains("not an unsigned integer"),
            "{e}"
        );
        assert!(c.rope_theta().is_err());
        assert!(c.tie_word_embeddings().is_err());
        let e = c.vocab_size().unwrap_err().to_string();
        assert!(e.contains("`vocab_size` is missing"), "{e}");
        assert!(cfg(r#"{"n_embd":-3}"#).hidden_size().is_err());
        assert!(HfConfig::from_value(Path::new("c"), serde_json::json!([1])).is_err());
    }
}
