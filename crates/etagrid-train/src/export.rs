//! Adapters out, in the format `peft.PeftModel.from_pretrained` loads: `adapter_config.json` and
//! `adapter_model.safetensors` with PEFT's saved names (`base_model.model.<module>.lora_A.weight`,
//! and the trained head under `modules_to_save` as `base_model.model.classifier.weight` or
//! `base_model.model.score.weight`).

use crate::model::TrainParam;
use crate::TrainError;
use etagrid_data::family::Family;
use etagrid_spec::LoraSpec;
use safetensors::tensor::TensorView;
use safetensors::Dtype;
use std::path::Path;
use tch::{Device, Kind};

/// Writes adapter `k` of the stacked `params` of a `model_type` model to `out` (created; replaced
/// atomically: a crash leaves the previous adapter or none, never half of one).
pub fn save_peft_adapter(
    params: &[TrainParam],
    k: i64,
    lora: &LoraSpec,
    model_type: &str,
    base_model: &str,
    out: &Path,
) -> Result<(), TrainError> {
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| TrainError::Io { path, source }
    };
    let family =
        Family::from_model_type(model_type).ok_or_else(|| TrainError::UnsupportedModel {
            path: Path::new(base_model).join("config.json"),
            model_type: model_type.to_owned(),
        })?;
    let tmp = out.with_extension("tmp");
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(io(&tmp))?;
    }
    std::fs::create_dir_all(&tmp).map_err(io(&tmp))?;

    let mut blobs = Vec::new();
    for p in params {
        let t = p
            .tensor
            .get(k)
            .detach()
            .to_device(Device::Cpu)
            .to_kind(Kind::Float)
            .contiguous();
        let shape: Vec<usize> = t.size().iter().map(|&d| d as usize).collect();
        let values = Vec::<f32>::try_from(t.flatten(0, -1))?;
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        blobs.push((format!("base_model.model.{}", p.name), shape, bytes));
    }
    let views = blobs
        .iter()
        .map(|(name, shape, bytes)| {
            TensorView::new(Dtype::F32, shape.clone(), bytes)
                .map(|v| (name.clone(), v))
                .map_err(|source| TrainError::Safetensors {
                    path: tmp.join("adapter_model.safetensors"),
                    source,
                })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let st_path = tmp.join("adapter_model.safetensors");
    safetensors::serialize_to_file(views, None, &st_path).map_err(|source| {
        TrainError::Safetensors {
            path: st_path.clone(),
            source,
        }
    })?;

    let config = serde_json::json!({
        "peft_type": "LORA",
        "task_type": "SEQ_CLS",
        "base_model_name_or_path": base_model,
        "r": lora.rank,
        "lora_alpha": lora.alpha,
        "lora_dropout": lora.dropout,
        "target_modules": lora.target_modules,
        "modules_to_save": [family.head_module()],
        "fan_in_fan_out": family.fan_in_fan_out(),
        "bias": "none",
        "use_rslora": lora.use_rslora,
        "use_dora": false,
        "init_lora_weights": true,
        "inference_mode": true,
    });
    let cfg_path = tmp.join("adapter_config.json");
    let text = serde_json::to_vec_pretty(&config).map_err(|source| TrainError::Serialize {
        what: cfg_path.display().to_string(),
        source,
    })?;
    std::fs::write(&cfg_path, text).map_err(io(&cfg_path))?;
    if out.exists() {
        std::fs::remove_dir_all(out).map_err(io(out))?;
    }
    std::fs::rename(&tmp, out).map_err(io(out))?;
    Ok(())
}
