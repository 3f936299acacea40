//! Tokenisation with the model's `tokenizer.json` (the `tokenizers` crate): classification inputs,
//! and causal-LM prompt/response pairs with the prompt masked out of the loss.

use crate::{DataError, Example, LabelMap};
use etagrid_spec::LmTaskSpec;
use std::path::Path;
use tokenizers::{EncodeInput, Tokenizer, TruncationParams};

/// Tokenized examples.
#[derive(serde::Serialize, serde::Deserialize)]
pub struct Encoded {
    pub ids: Vec<Vec<i64>>,
    pub type_ids: Vec<Vec<i64>>,
    pub labels: Vec<i64>,
    /// `causal_lm` only: per example, the index of its first response token; the tokens before
    /// it (the prompt) carry no loss. Empty for classification.
    #[serde(default)]
    pub loss_from: Vec<usize>,
}

impl Encoded {
    pub fn len(&self) -> usize {
        self.labels.len()
    }
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }
}

/// The model's `tokenizer.json`, with its own padding switched off (batches are padded here,
/// per batch) and truncation set to `max_len` tokens including the special tokens.
pub fn load_tokenizer(model_dir: &Path, max_len: usize) -> Result<Tokenizer, DataError> {
    let path = model_dir.join("tokenizer.json");
    let terr = |message: String| DataError::Tokenizer {
        path: path.clone(),
        message,
    };
    if !path.exists() {
        return Err(terr(
            "file not found (the model directory needs a tokenizer.json)".into(),
        ));
    }
    let mut tok = Tokenizer::from_file(&path).map_err(|e| terr(e.to_string()))?;
    tok.with_padding(None);
    tok.with_truncation(Some(TruncationParams {
        max_length: max_len,
        ..Default::default()
    }))
    .map_err(|e| terr(e.to_string()))?;
    Ok(tok)
}

/// One id list per input.
pub type TokenIds = Vec<Vec<i64>>;

/// Tokenizes texts, each with an optional second text of a pair, exactly as training does (in
/// parallel, inside `tokenizers`): token ids and token-type ids per input. `path` names the file
/// the texts came from, for errors.
pub fn tokenize(
    tok: &Tokenizer,
    texts: &[(&str, Option<&str>)],
    path: &Path,
) -> Result<(TokenIds, TokenIds), DataError> {
    let inputs: Vec<EncodeInput> = texts
        .iter()
        .map(|&(t, p)| match p {
            Some(p) => EncodeInput::Dual(t.into(), p.into()),
            None => EncodeInput::Single(t.into()),
        })
        .collect();
    let encs = tok
        .encode_batch(inputs, true)
        .map_err(|e| DataError::Tokenizer {
            path: path.to_owned(),
            message: e.to_string(),
        })?;
    let widen = |v: &[u32]| v.iter().map(|&i| i as i64).collect::<Vec<i64>>();
    Ok((
        encs.iter().map(|e| widen(e.get_ids())).collect(),
        encs.iter().map(|e| widen(e.get_type_ids())).collect(),
    ))
}

/// Tokenizes `examples` and maps labels through `labels`; a label `labels` does not know is an
/// error naming the file and line.
pub fn encode(
    tok: &Tokenizer,
    examples: &[Example],
    labels: &LabelMap,
    path: &Path,
) -> Result<Encoded, DataError> {
    let label_ids = labels.ids(examples, path)?;
    let texts: Vec<(&str, Option<&str>)> = examples
        .iter()
        .map(|e| (e.text.as_str(), e.text_pair.as_deref()))
        .collect();
    let (ids, type_ids) = tokenize(tok, &texts, path)?;
    Ok(Encoded {
        ids,
        type_ids,
        labels: label_ids,
        loss_from: Vec::new(),
    })
}

/// Tokenizes prompt/response pairs for causal-LM training: the rendered prompt (with the
/// tokenizer's special tokens, e.g. a BOS), then the response (without), then `eos`; cut to
/// `max_len` tokens from the right. `loss_from` is the prompt's length: only the tokens after it
/// are targets. An example whose response does not start within `max_len` tokens is dropped
/// (it has nothing to learn from); if every one is, that is an error.
pub fn encode_lm(
    tok: &Tokenizer,
    examples: &[Example],
    lm: &LmTaskSpec,
    max_len: usize,
    eos: Option<i64>,
    path: &Path,
) -> Result<Encoded, DataError> {
    let terr = |e: tokenizers::Error| DataError::Tokenizer {
        path: path.to_owned(),
        message: e.to_string(),
    };
    let prompts: Vec<EncodeInput> = examples
        .iter()
        .map(|e| EncodeInput::Single(lm.render(&e.text).into()))
        .collect();
    let responses: Vec<EncodeInput> = examples
        .iter()
        .map(|e| EncodeInput::Single(e.text_pair.clone().unwrap_or_default().into()))
        .collect();
    let p = tok.encode_batch(prompts, true).map_err(terr)?;
    let r = tok.encode_batch(responses, false).map_err(terr)?;
    let mut out = Encoded {
        ids: Vec::new(),
        type_ids: Vec::new(),
        labels: Vec::new(),
        loss_from: Vec::new(),
    };
    for (pe, re) in p.iter().zip(&r) {
        let mut ids: Vec<i64> = pe.get_ids().iter().map(|&i| i as i64).collect();
        let from = ids.len();
        ids.extend(re.get_ids().iter().map(|&i| i as i64));
        ids.extend(eos);
        ids.truncate(max_len);
        if ids.len() <= from {
            continue;
        }
        out.type_ids.push(vec![0; ids.len()]);
        out.ids.push(ids);
        out.labels.push(0);
        out.loss_from.push(from);
    }
    if out.ids.is_empty() {
        return Err(DataError::Data {
            path: path.to_owned(),
            line: None,
            message: format!(
                "no example has a response token within train.max_seq_len = {max_len} tokens: \
                 raise max_seq_len or shorten the prompts"
            ),
        });
    }
    Ok(out)
}
