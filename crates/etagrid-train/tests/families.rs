//! Model families as one building block (issue 13): the registry loads every family from its
//! `config.json`, and one walk over the module tree names each tensor as the checkpoint does, so
//! the frozen half is exactly the checkpoint's base and the trained half its head plus the LoRA
//! adapters PEFT would add.

mod common;

use common::fixture;
use etagrid_data::family::{Family, ModelConfig};
use etagrid_spec::{LoraSpec, TargetModules};
use etagrid_train::model::{load_classifier, Role, SequenceClassifier};
use etagrid_train::weights::Weights;
use safetensors::SafeTensors;
use std::collections::BTreeSet;
use std::path::Path;
use tch::{Device, Kind};

const FIXTURES: [&str; 6] = [
    "tiny-bert",
    "tiny-roberta",
    "tiny-roberta-tt",
    "tiny-gpt2",
    "tiny-llama-gqa",
    "tiny-llama-mha",
];

fn checkpoint_names(dir: &Path) -> BTreeSet<String> {
    let bytes = std::fs::read(dir.join("model.safetensors")).expect("read weights");
    let st = SafeTensors::deserialize(&bytes).expect("safetensors");
    st.names().into_iter().map(str::to_owned).collect()
}

fn model(dir: &Path, family: Family) -> Box<dyn SequenceClassifier> {
    let weights = Weights::load(dir, Device::Cpu, Kind::Float).expect("weights");
    let lora = LoraSpec::new(4, 8.0, TargetModules::list(family.default_lora_targets()));
    tch::manual_seed(0);
    load_classifier(dir, &weights, 3, &lora, 2, Device::Cpu).expect("model")
}

#[test]
fn the_walk_names_every_checkpoint_tensor_once_frozen_base_and_trained_head() {
    for name in FIXTURES {
        let dir = fixture(name);
        let family = ModelConfig::read(&dir).expect("config").family;
        let m = model(&dir, family);
        let (mut frozen, mut head, mut lora) = (Vec::new(), Vec::new(), Vec::new());
        m.visit(&mut |n, _, role| match role {
            Role::Frozen => frozen.push(n.to_owned()),
            Role::Train(etagrid_train::model::ParamRole::Other { .. }) => head.push(n.to_owned()),
            Role::Train(_) => lora.push(n.to_owned()),
        });
        let in_checkpoint = checkpoint_names(&dir);
        let head_prefix = format!("{}.", family.head_module());
        let (ckpt_head, ckpt_base): (BTreeSet<String>, BTreeSet<String>) = in_checkpoint
            .into_iter()
            .partition(|n| n.starts_with(&head_prefix));
        let frozen_set: BTreeSet<String> = frozen.iter().cloned().collect();
        assert_eq!(
            frozen_set.len(),
            frozen.len(),
            "{name}: a tensor walked twice"
        );
        assert_eq!(
            frozen_set, ckpt_base,
            "{name}: frozen half ≠ checkpoint base"
        );
        let head_set: BTreeSet<String> = head.into_iter().collect();
        assert_eq!(
            head_set, ckpt_head,
            "{name}: trained head ≠ checkpoint head"
        );
        let prefix = format!("{}.", family.base_model_prefix());
        assert!(
            !lora.is_empty(),
            "{name}: the default targets select nothing"
        );
        for n in &lora {
            let module = n
                .rsplit_once(".lora_")
                .map(|(m, _)| m)
                .unwrap_or_else(|| panic!("{name}: {n} is not a LoRA name"));
            let target = family
                .default_lora_targets()
                .iter()
                .any(|t| module.ends_with(&format!(".{t}")));
            assert!(n.starts_with(&prefix) && target, "{name}: {n}");
        }
        assert_eq!(
            m.trainable().len() + m.frozen().len(),
            frozen.len() + head_set.len() + lora.len(),
            "{name}: trainable() and frozen() are the two halves of the walk"
        );
    }
}

#[test]
fn an_unsupported_model_type_is_refused_naming_the_supported_families() {
    let dir = tempfile::tempdir().expect("tempdir");
    let src = fixture("tiny-bert");
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(src.join("config.json")).expect("read"))
            .expect("json");
    config["model_type"] = "t5".into();
    std::fs::write(dir.path().join("config.json"), config.to_string()).expect("write");
    std::fs::copy(
        src.join("model.safetensors"),
        dir.path().join("model.safetensors"),
    )
    .expect("copy");
    let weights = Weights::load(dir.path(), Device::Cpu, Kind::Float).expect("weights");
    let lora = LoraSpec::new(4, 8.0, TargetModules::list(&["query"]));
    let Err(err) = load_classifier(dir.path(), &weights, 3, &lora, 1, Device::Cpu) else {
        panic!("t5 is not a family");
    };
    let err = err.to_string();
    for needle in ["\"t5\"", "bert", "roberta", "gpt2", "llama", "config.json"] {
        assert!(err.contains(needle), "{needle:?} missing from: {err}");
    }
}
