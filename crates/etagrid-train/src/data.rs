//! Task data as tensors: batches padded and collated on the device. Reading, labels, the split,
//! tokenisation and the token cache are tch-free and live in `etagrid_data`; they are re-exported
//! here so `crate::data::…` paths keep working.

use crate::bert::Batch;
use crate::TrainError;
use etagrid_data::DataError;
use tch::{Device, Tensor};

pub use etagrid_data::{
    detect_columns, encode, encode_lm, encode_mc, eval_examples, eval_subset, load_examples,
    load_tokenizer, mc_letter_ids, mc_prompt, read_examples, read_lm_examples, read_mc_examples,
    read_table, stratified_split, tokenize, BatchOrder, ColumnChoice, ColumnStats, Detected,
    Encoded, Example, LabelMap, McEncoded, McExample, Table, TaskData, TokenIds, TokenSource,
    MC_LETTERS,
};

/// Each data error becomes the trainer's error of the same kind, so callers (and
/// `validate::is_input_error`) see what they saw when the readers lived here.
impl From<DataError> for TrainError {
    fn from(e: DataError) -> TrainError {
        match e {
            DataError::Io { path, source } => TrainError::Io { path, source },
            DataError::Tokenizer { path, message } => TrainError::Tokenizer { path, message },
            DataError::Data {
                path,
                line,
                message,
            } => TrainError::Data {
                path,
                line,
                message,
            },
            // TrainError has no variant with a serde source; the cause goes into the message.
            DataError::Serialize { what, path, source } => TrainError::Data {
                path,
                line: None,
                message: format!("cannot serialise {what}: {source}"),
            },
        }
    }
}

/// Pads the examples `idx` of `data` to their longest length (pad id `pad`).
pub fn collate(data: &Encoded, idx: &[usize], pad: i64, device: Device) -> Batch {
    collate_to(data, idx, pad, 1, device)
}

/// Pads the examples `idx` of `data` to their longest length or `min_len`, whichever is longer:
/// the cells of a pack share one padded length.
pub fn collate_to(
    data: &Encoded,
    idx: &[usize],
    pad: i64,
    min_len: usize,
    device: Device,
) -> Batch {
    let t = idx
        .iter()
        .map(|&i| data.ids[i].len())
        .max()
        .unwrap_or(1)
        .max(min_len)
        .max(1);
    let n = idx.len();
    let mut ids = vec![pad; n * t];
    let mut types = vec![0i64; n * t];
    let mut mask = vec![0i64; n * t];
    for (row, &i) in idx.iter().enumerate() {
        for (j, (&id, &ty)) in data.ids[i].iter().zip(&data.type_ids[i]).enumerate() {
            ids[row * t + j] = id;
            types[row * t + j] = ty;
            mask[row * t + j] = 1;
        }
    }
    let labels: Vec<i64> = idx.iter().map(|&i| data.labels[i]).collect();
    let shape = [n as i64, t as i64];
    Batch {
        input_ids: Tensor::from_slice(&ids).reshape(shape).to_device(device),
        token_type_ids: Tensor::from_slice(&types).reshape(shape).to_device(device),
        attention_mask: Tensor::from_slice(&mask).reshape(shape).to_device(device),
        labels: Tensor::from_slice(&labels).to_device(device),
    }
}

/// Right-pads the `causal_lm` examples `idx` of `data` and builds transformers-style labels
/// [b, T]: the token id where the token is a target (a response token or EOS), -100 on prompt
/// and padding. The next-token shift is the loss's job ([`crate::train::lm_loss`]).
pub fn collate_lm(data: &Encoded, idx: &[usize], pad: i64, device: Device) -> Batch {
    collate_lm_to(data, idx, pad, 1, device)
}

/// [`collate_lm`] padded to at least `min_len`.
pub fn collate_lm_to(
    data: &Encoded,
    idx: &[usize],
    pad: i64,
    min_len: usize,
    device: Device,
) -> Batch {
    let mut b = collate_to(data, idx, pad, min_len, device);
    let s = b.input_ids.size();
    let (n, t) = (s[0] as usize, s[1] as usize);
    let mut labels = vec![-100i64; n * t];
    for (row, &i) in idx.iter().enumerate() {
        let from = data.loss_from.get(i).copied().unwrap_or(0);
        for (j, &id) in data.ids[i].iter().enumerate().skip(from) {
            labels[row * t + j] = id;
        }
    }
    b.labels = Tensor::from_slice(&labels)
        .reshape([n as i64, t as i64])
        .to_device(device);
    b
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    #[test]
    fn a_serialisation_failure_becomes_a_data_error_naming_the_file_and_the_cause() {
        let source = serde_json::from_str::<u8>("x").expect_err("not a number");
        let cause = source.to_string();
        let e = TrainError::from(DataError::Serialize {
            what: "the tokenized data",
            path: PathBuf::from("cache/tokens-0.json"),
            source,
        });
        let TrainError::Data {
            path,
            line: None,
            message,
        } = e
        else {
            panic!("{e:?}");
        };
        assert_eq!(path, PathBuf::from("cache/tokens-0.json"));
        assert_eq!(
            message,
            format!("cannot serialise the tokenized data: {cause}")
        );
    }
}
