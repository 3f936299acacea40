//! Model families: the facts etagrid needs of each family that do not need tensors.
//!
//! This is the one place that maps `config.json`'s `model_type` to a family. The trainer's module
//! trees (`etagrid-train`) hang off [`Family`]; `init` uses it to write the right LoRA targets and
//! `max_seq_len`; export uses [`Family::fan_in_fan_out`] and [`Family::head_module`].
//! Adding a family: a variant here (with its facts in each `match`), and its module tree in
//! `etagrid-train` (see ARCHITECTURE.md).

use serde::Deserialize;
use std::path::{Path, PathBuf};

/// A supported model family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Family {
    Bert,
    Roberta,
    Gpt2,
    Llama,
}

impl Family {
    /// Every supported family.
    pub const ALL: [Family; 4] = [Family::Bert, Family::Roberta, Family::Gpt2, Family::Llama];

    /// `config.json`'s `model_type` for the family.
    pub fn model_type(self) -> &'static str {
        match self {
            Family::Bert => "bert",
            Family::Roberta => "roberta",
            Family::Gpt2 => "gpt2",
            Family::Llama => "llama",
        }
    }

    /// The family of a `model_type`, if supported.
    pub fn from_model_type(model_type: &str) -> Option<Family> {
        Family::ALL
            .into_iter()
            .find(|f| f.model_type() == model_type)
    }

    /// The supported `model_type`s, comma-separated (for error messages).
    pub fn supported() -> String {
        Family::ALL.map(Family::model_type).join(", ")
    }

    /// A decoder (causal) model: classifies from the last real token, can train as a causal LM.
    pub fn is_decoder(self) -> bool {
        matches!(self, Family::Gpt2 | Family::Llama)
    }

    /// Whether the checkpoint stores its linear weights as [in, out] (GPT-2's `Conv1D`), which
    /// PEFT's `adapter_config.json` records as `fan_in_fan_out`.
    pub fn fan_in_fan_out(self) -> bool {
        matches!(self, Family::Gpt2)
    }

    /// The sequence-classification head's module name (PEFT's `modules_to_save`).
    pub fn head_module(self) -> &'static str {
        if self.is_decoder() {
            "score"
        } else {
            "classifier"
        }
    }

    /// transformers' `base_model_prefix`: the base model's module name inside
    /// `…ForSequenceClassification`, which starts every module name PEFT matches
    /// (`bert.encoder.layer.0.attention.self.query`, `transformer.h.0.attn.c_attn`).
    pub fn base_model_prefix(self) -> &'static str {
        match self {
            Family::Bert => "bert",
            Family::Roberta => "roberta",
            Family::Gpt2 => "transformer",
            Family::Llama => "model",
        }
    }

    /// PEFT's default LoRA `target_modules` for the family (transformers' attention names).
    pub fn default_lora_targets(self) -> &'static [&'static str] {
        match self {
            Family::Bert | Family::Roberta => &["query", "value"],
            Family::Gpt2 => &["c_attn"],
            Family::Llama => &["q_proj", "v_proj"],
        }
    }
}

impl std::fmt::Display for Family {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.model_type())
    }
}

/// A model directory's `config.json` as far as etagrid needs it without tensors.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelConfig {
    pub family: Family,
    /// The longest input (in tokens) the model's position table allows. RoBERTa's positions start
    /// after the pad id, so a `max_position_embeddings` of 514 allows 512 tokens.
    pub max_tokens: usize,
    pub pad_token_id: Option<i64>,
}

#[derive(Debug, thiserror::Error)]
pub enum FamilyError {
    #[error("read {}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: {message}", path.display())]
    Config { path: PathBuf, message: String },
    #[error("{}: model_type {model_type:?} is not supported (supported: {})", path.display(), Family::supported())]
    Unsupported { path: PathBuf, model_type: String },
}

#[derive(Deserialize)]
struct RawConfig {
    model_type: Option<String>,
    max_position_embeddings: Option<i64>,
    n_positions: Option<i64>,
    pad_token_id: Option<i64>,
}

impl ModelConfig {
    /// Reads `dir/config.json`.
    pub fn read(dir: &Path) -> Result<ModelConfig, FamilyError> {
        let path = dir.join("config.json");
        let text = std::fs::read_to_string(&path).map_err(|source| FamilyError::Io {
            path: path.clone(),
            source,
        })?;
        ModelConfig::parse(&path, &text)
    }

    /// Parses the text of the `config.json` at `path` (named in errors).
    pub fn parse(path: &Path, text: &str) -> Result<ModelConfig, FamilyError> {
        let config_error = |message: String| FamilyError::Config {
            path: path.to_owned(),
            message,
        };
        let raw: RawConfig = serde_json::from_str(text).map_err(|e| config_error(e.to_string()))?;
        let Some(model_type) = raw.model_type else {
            return Err(config_error(format!(
                "no `model_type`: a Hugging Face config.json names its family (one of {})",
                Family::supported()
            )));
        };
        let family =
            Family::from_model_type(&model_type).ok_or_else(|| FamilyError::Unsupported {
                path: path.to_owned(),
                model_type: model_type.clone(),
            })?;
        let (field, positions) = match family {
            Family::Gpt2 => (
                "n_positions",
                raw.n_positions.or(raw.max_position_embeddings),
            ),
            _ => ("max_position_embeddings", raw.max_position_embeddings),
        };
        let positions = positions.ok_or_else(|| config_error(format!("`{field}` is missing")))?;
        let max_tokens = match family {
            Family::Roberta => positions - raw.pad_token_id.unwrap_or(1) - 1,
            _ => positions,
        };
        if max_tokens < 1 {
            return Err(config_error(format!(
                "`{field}` = {positions} leaves no room for a token"
            )));
        }
        Ok(ModelConfig {
            family,
            max_tokens: max_tokens as usize,
            pad_token_id: raw.pad_token_id,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<ModelConfig, FamilyError> {
        ModelConfig::parse(Path::new("m/config.json"), text)
    }

    #[test]
    fn every_family_round_trips_its_model_type() {
        for f in Family::ALL {
            assert_eq!(Family::from_model_type(f.model_type()), Some(f));
        }
        assert_eq!(Family::from_model_type("t5"), None);
    }

    #[test]
    fn roberta_allows_two_positions_fewer_than_its_table() {
        let c = parse(r#"{"model_type":"roberta","max_position_embeddings":514,"pad_token_id":1}"#)
            .expect("parses");
        assert_eq!((c.family, c.max_tokens), (Family::Roberta, 512));
        let b = parse(r#"{"model_type":"bert","max_position_embeddings":512}"#).expect("parses");
        assert_eq!(b.max_tokens, 512);
    }

    #[test]
    fn gpt2_reads_n_positions_and_llama_max_position_embeddings() {
        let g = parse(r#"{"model_type":"gpt2","n_positions":1024}"#).expect("parses");
        assert_eq!((g.family, g.max_tokens), (Family::Gpt2, 1024));
        let l = parse(r#"{"model_type":"llama","max_position_embeddings":8192}"#).expect("parses");
        assert_eq!((l.family, l.max_tokens), (Family::Llama, 8192));
        assert!(g.family.fan_in_fan_out() && !l.family.fan_in_fan_out());
        assert_eq!(l.family.default_lora_targets(), ["q_proj", "v_proj"]);
        assert_eq!(g.family.head_module(), "score");
        assert_eq!(g.family.base_model_prefix(), "transformer");
    }

    #[test]
    fn unsupported_and_missing_fields_name_the_file_and_what_is_wrong() {
        let e = parse(r#"{"model_type":"t5"}"#).expect_err("t5").to_string();
        assert!(
            e.contains("m/config.json") && e.contains("\"t5\"") && e.contains("llama"),
            "{e}"
        );
        let e = parse(r#"{"hidden_size":8}"#)
            .expect_err("no type")
            .to_string();
        assert!(e.contains("no `model_type`"), "{e}");
        let e = parse(r#"{"model_type":"bert"}"#)
            .expect_err("no positions")
            .to_string();
        assert!(e.contains("max_position_embeddings"), "{e}");
    }
}
