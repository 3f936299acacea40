//! `etagrid predict`: logits of a base model, optionally with a PEFT-format LoRA adapter (one
//! that etagrid exported, or one PEFT saved), for JSONL inputs `{"text": …, "text_pair": …}`.
//! Inputs are tokenized with the model's `tokenizer.json` exactly as in training and run in
//! batches (padding changes no result). The head is the sequence classifier (the adapter's, or
//! the checkpoint's), or with `--lm` the causal LM's next-token logits after the last token.

use crate::data::{collate, load_tokenizer, tokenize, Encoded};
use crate::model::{family, load_classifier, ParamRole, SequenceClassifier};
use crate::weights::Weights;
use crate::{device, TrainError};
use etagrid_spec::protocol::JobDevice;
use etagrid_spec::{LoraSpec, TargetModules};
use safetensors::SafeTensors;
use std::path::{Path, PathBuf};
use tch::{Kind, Tensor};

#[derive(Debug, Clone)]
pub struct PredictOptions {
    pub model_dir: PathBuf,
    pub adapter: Option<PathBuf>,
    pub input: PathBuf,
    pub max_len: usize,
    pub batch_size: usize,
    /// Next-token logits of the causal LM instead of the classifier's.
    pub lm: bool,
    pub device: JobDevice,
}

struct Adapter {
    lora: LoraSpec,
    file: PathBuf,
    tensors: Vec<(String, Tensor)>,
}

fn read_adapter(dir: &Path) -> Result<Adapter, TrainError> {
    let cfg_path = dir.join("adapter_config.json");
    let text = std::fs::read_to_string(&cfg_path).map_err(|source| TrainError::Io {
        path: cfg_path.clone(),
        source,
    })?;
    let cfg: serde_json::Value = serde_json::from_str(&text).map_err(|e| TrainError::Config {
        path: cfg_path.clone(),
        message: e.to_string(),
    })?;
    let field = |name: &str| {
        cfg.get(name).ok_or_else(|| TrainError::Config {
            path: cfg_path.clone(),
            message: format!("missing `{name}`"),
        })
    };
    let targets = match field("target_modules")? {
        serde_json::Value::Array(a) => TargetModules::List(
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect(),
        ),
        serde_json::Value::String(r) => TargetModules::Regex(r.clone()),
        _ => {
            return Err(TrainError::Config {
                path: cfg_path,
                message: "`target_modules` must be a list of module names or one regex string"
                    .into(),
            })
        }
    };
    let rank = field("r")?.as_u64().unwrap_or(8) as usize;
    let mut lora = LoraSpec::new(
        rank,
        field("lora_alpha")?.as_f64().unwrap_or(rank as f64),
        targets,
    );
    lora.use_rslora = cfg
        .get("use_rslora")
        .and_then(|v| v.as_bool())
        .unwrap_or(false);
    let file = dir.join("adapter_model.safetensors");
    let bytes = std::fs::read(&file).map_err(|source| TrainError::Io {
        path: file.clone(),
        source,
    })?;
    let st = SafeTensors::deserialize(&bytes).map_err(|source| TrainError::Safetensors {
        path: file.clone(),
        source,
    })?;
    let mut tensors = Vec::new();
    for (name, view) in st.tensors() {
        let t = crate::weights::to_tensor(&name, &view, &file)?.to_kind(Kind::Float);
        let name = name
            .strip_prefix("base_model.model.")
            .unwrap_or(&name)
            .replace(".default.", ".");
        tensors.push((name, t));
    }
    Ok(Adapter {
        lora,
        file,
        tensors,
    })
}

/// Labels of the classification head: the adapter's head rows, else config.json's `id2label`.
fn num_labels(model_dir: &Path, adapter: Option<&Adapter>) -> i64 {
    if let Some(a) = adapter {
        for head in [
            "classifier.weight",
            "classifier.out_proj.weight",
            "score.weight",
        ] {
            if let Some((_, t)) = a.tensors.iter().find(|(n, _)| n == head) {
                return t.size()[0];
            }
        }
    }
    std::fs::read_to_string(model_dir.join("config.json"))
        .ok()
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
        .and_then(|v| v["id2label"].as_object().map(|m| m.len() as i64))
        .unwrap_or(2)
}

/// With `lm` (next-token logits) the classification head is not used, so an adapter without one
/// (a `causal_lm` cell's) is complete.
fn apply_adapter(model: &dyn SequenceClassifier, a: &Adapter, lm: bool) -> Result<(), TrainError> {
    let params = model.trainable();
    for (name, t) in &a.tensors {
        let p = params.iter().find(|p| &p.name == name).ok_or_else(|| TrainError::MissingTensor {
            name: format!("{name} (the model has no such LoRA/head parameter: was the adapter made for another model?)"),
            file: a.file.clone(),
        })?;
        let want = p.tensor.get(0).size();
        if t.size() != want {
            return Err(TrainError::Shape {
                name: name.clone(),
                file: a.file.clone(),
                expected: want,
                found: t.size(),
            });
        }
        tch::no_grad(|| p.tensor.get(0).copy_(&t.to_device(p.tensor.device())));
    }
    // Every trainable — LoRA and the head (PEFT's modules_to_save) — must come from the adapter:
    // a head left at its random initialisation would give meaningless logits.
    for p in &params {
        let head = matches!(p.role, ParamRole::Other { .. });
        if lm && head {
            continue;
        }
        if !a.tensors.iter().any(|(n, _)| n == &p.name) {
            return Err(TrainError::MissingTensor {
                name: format!(
                    "{} (adapters for predict need the LoRA weights and the trained head, saved by PEFT as modules_to_save)",
                    p.name
                ),
                file: a.file.clone(),
            });
        }
    }
    Ok(())
}

/// Reads `{"text": …, "text_pair": …}` lines.
fn read_inputs(path: &Path) -> Result<Vec<(String, Option<String>)>, TrainError> {
    let text = std::fs::read_to_string(path).map_err(|source| TrainError::Io {
        path: path.to_owned(),
        source,
    })?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let err = |message: String| TrainError::Data {
            path: path.to_owned(),
            line: Some(i as u64 + 1),
            message,
        };
        let v: serde_json::Value =
            serde_json::from_str(line).map_err(|e| err(format!("not a JSON object: {e}")))?;
        let t = v["text"]
            .as_str()
            .ok_or_else(|| err("needs a string field `text`".into()))?;
        out.push((t.to_owned(), v["text_pair"].as_str().map(str::to_owned)));
    }
    Ok(out)
}

/// Without `--lm` and without an adapter, the logits come from the checkpoint's classification
/// head. A causal-LM checkpoint (GPT-2, Llama) has none: predict would print the logits of a
/// randomly initialised head, so it refuses and names `--lm`.
fn refuse_invented_head(
    o: &PredictOptions,
    has_adapter: bool,
    weights: &Weights,
) -> Result<(), TrainError> {
    if o.lm || has_adapter {
        return Ok(());
    }
    let family = family(&o.model_dir)?;
    if family.is_decoder() && !weights.contains("score.weight") {
        let config: serde_json::Value = crate::model::read_config(&o.model_dir)?;
        let arch = config["architectures"]
            .as_array()
            .and_then(|a| a.first())
            .and_then(|a| a.as_str())
            .unwrap_or(family.model_type());
        return Err(TrainError::Config {
            path: o.model_dir.join("config.json"),
            message: format!(
                "{arch} is a causal LM checkpoint with no classification head (`score.weight`): \
                 pass --lm for its next-token logits, or --adapter with a trained head \
                 (`etagrid export` of a classification cell)"
            ),
        });
    }
    Ok(())
}

/// `--device`: `cpu`, or `cuda` (also `cuda:0`) for the first GPU that `CUDA_VISIBLE_DEVICES`
/// shows. Any other GPU index or name is an error that says what to do instead: predict would
/// otherwise run somewhere the user did not ask for.
pub fn parse_device(device: &str) -> Result<JobDevice, TrainError> {
    match device.trim() {
        "cpu" => Ok(JobDevice::Cpu),
        "cuda" | "cuda:0" => Ok(JobDevice::Cuda),
        other => {
            let hint = match other.strip_prefix("cuda:") {
                Some(i) if i.parse::<u32>().is_ok() => format!(
                    "predict uses the first visible GPU: run it with CUDA_VISIBLE_DEVICES={i} and \
                     --device cuda"
                ),
                _ => "give \"cpu\" or \"cuda\"".to_owned(),
            };
            Err(TrainError::Device(format!(
                "device {other:?} is not supported: {hint}"
            )))
        }
    }
}

/// Emits one JSON object per input, in input order.
pub fn predict(
    o: &PredictOptions,
    emit: &mut dyn FnMut(serde_json::Value),
) -> Result<(), TrainError> {
    if o.max_len == 0 {
        return Err(TrainError::Config {
            path: o.model_dir.join("config.json"),
            message: "--max-len 0 leaves no room for a token: give at least 1 (default 512)".into(),
        });
    }
    let inputs = read_inputs(&o.input)?;
    if inputs.is_empty() {
        return Err(TrainError::Data {
            path: o.input.clone(),
            line: None,
            message: "has no input: give one JSON object a line, {\"text\": …}".into(),
        });
    }
    let device = device::select(o.device)?;
    let adapter = o.adapter.as_deref().map(read_adapter).transpose()?;
    let lora = adapter
        .as_ref()
        .map(|a| a.lora.clone())
        .unwrap_or(LoraSpec::new(1, 1.0, TargetModules::none()));
    let weights = Weights::load(&o.model_dir, device, Kind::Float)?;
    refuse_invented_head(o, adapter.is_some(), &weights)?;
    tch::manual_seed(0);
    let model = load_classifier(
        &o.model_dir,
        &weights,
        num_labels(&o.model_dir, adapter.as_ref()),
        &lora,
        1,
        device,
    )?;
    drop(weights);
    if let Some(a) = &adapter {
        apply_adapter(model.as_ref(), a, o.lm)?;
    }
    let tok = load_tokenizer(&o.model_dir, o.max_len.min(model.max_tokens() as usize))?;
    for chunk in inputs.chunks(o.batch_size.max(1)) {
        let texts: Vec<(&str, Option<&str>)> = chunk
            .iter()
            .map(|(t, p)| (t.as_str(), p.as_deref()))
            .collect();
        let (ids, type_ids) = tokenize(&tok, &texts, &o.input)?;
        let enc = Encoded {
            labels: vec![0; ids.len()],
            ids,
            type_ids,
            loss_from: Vec::new(),
        };
        let idx: Vec<usize> = (0..enc.len()).collect();
        let batch = collate(&enc, &idx, model.pad_token_id(), device);
        let logits = tch::no_grad(|| {
            if o.lm {
                model.next_token_logits(&batch).ok_or_else(|| TrainError::Config {
                    path: o.model_dir.join("config.json"),
                    message: "this model has no causal LM head (GPT-2, or Llama with lm_head.weight or tied embeddings)".into(),
                })
            } else {
                Ok(model.forward(&batch, false))
            }
        })?;
        let rows: Vec<Vec<f32>> =
            Vec::<Vec<f32>>::try_from(logits.to_kind(Kind::Float).to_device(tch::Device::Cpu))?;
        for (row, ids) in rows.into_iter().zip(&enc.ids) {
            emit(serde_json::json!({ "tokens": ids.len(), "logits": row }));
        }
    }
    Ok(())
}
