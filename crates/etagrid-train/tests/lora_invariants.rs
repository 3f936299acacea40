//! LoRA's invariants on the tiny fixture, one per test.

mod common;

use common::*;
use etagrid_spec::{InitScheme, TargetModules};
use etagrid_train::bert::{Batch, BertConfig, BertForSequenceClassification};
use etagrid_train::optim::LoraPlusAdamW;
use etagrid_train::train::loss;
use etagrid_train::weights::Weights;
use tch::{Device, Kind, Tensor};

fn batch() -> Batch {
    reference_batch(&json("lora_reference.json"))
}

/// The same checkpoint with no adapters at all: the base model.
fn base_model() -> BertForSequenceClassification {
    let mut spec = lora_spec(4, 8.0, InitScheme::Lora);
    spec.target_modules = TargetModules::none();
    tiny_model(&spec, 0)
}

#[test]
fn lora_b_is_zero_initialized_so_the_output_equals_the_base_models() {
    let model = tiny_model(&lora_spec(4, 8.0, InitScheme::Lora), 7);
    let b = batch();
    let d = max_abs_diff(&model.forward(&b, false), &base_model().forward(&b, false));
    assert_eq!(d, 0.0, "with B = 0 the adapters must not change the output");
    for p in model
        .trainable()
        .iter()
        .filter(|p| p.name.contains("lora_B"))
    {
        assert_eq!(
            p.tensor.abs().max().double_value(&[]),
            0.0,
            "{} is not zero",
            p.name
        );
    }
    let a_norm: f64 = model
        .trainable()
        .iter()
        .filter(|p| p.name.contains("lora_A"))
        .map(|p| p.tensor.abs().sum(Kind::Double).double_value(&[]))
        .sum();
    assert!(a_norm > 0.0, "A must be random under the lora init");
}

#[test]
fn loraplus_init_has_a_zero_and_b_random_and_also_leaves_the_output_unchanged() {
    let model = tiny_model(&lora_spec(4, 8.0, InitScheme::Loraplus), 7);
    for p in model.trainable() {
        let norm = p.tensor.abs().sum(Kind::Double).double_value(&[]);
        if p.name.contains("lora_A") {
            assert_eq!(norm, 0.0, "{} must be zero", p.name);
        } else if p.name.contains("lora_B") {
            assert!(norm > 0.0, "{} must be random", p.name);
        }
    }
    let b = batch();
    assert_eq!(
        max_abs_diff(&model.forward(&b, false), &base_model().forward(&b, false)),
        0.0
    );
}

#[test]
fn lora_freezes_base_and_trains_adapter_and_head() {
    let model = tiny_model(&lora_spec(4, 8.0, InitScheme::Lora), 3);
    let frozen_before: Vec<Tensor> = model.frozen().iter().map(|t| t.copy()).collect();
    let trainable_before: Vec<(String, Tensor)> = model
        .trainable()
        .iter()
        .map(|p| (p.name.clone(), p.tensor.detach().copy()))
        .collect();
    let mut opt = LoraPlusAdamW::new(model.trainable(), &[1e-3], &[1e-2], 0.01);
    // With B = 0, dL/dA = 0 on the first step (only B and the head move); after the second
    // step every trainable has moved.
    for _ in 0..2 {
        let b = batch();
        let l = loss(&model.forward(&b, true), &b.labels);
        opt.zero_grad();
        l.backward();
        opt.step(1.0);
    }
    for (i, (before, now)) in frozen_before.iter().zip(model.frozen()).enumerate() {
        assert_eq!(max_abs_diff(before, &now), 0.0, "frozen tensor {i} changed");
        assert!(!now.requires_grad(), "frozen tensor {i} requires grad");
    }
    for ((name, before), p) in trainable_before.iter().zip(model.trainable()) {
        assert!(
            max_abs_diff(before, &p.tensor.detach()) > 0.0,
            "{name} did not change"
        );
    }
}

#[test]
fn stacked_adapters_give_each_cell_the_output_it_would_get_alone() {
    stacked_matches_alone(lora_spec(4, 8.0, InitScheme::Loraplus));
}

#[test]
fn stacked_embedding_adapters_give_each_cell_the_output_it_would_get_alone() {
    let mut spec = lora_spec(4, 8.0, InitScheme::Lora);
    spec.target_modules = TargetModules::list(&["query", "value", "word_embeddings"]);
    let names: Vec<String> = tiny_model(&spec, 0)
        .trainable()
        .into_iter()
        .map(|p| p.name)
        .filter(|n| n.contains("lora_embedding"))
        .collect();
    assert_eq!(
        names,
        [
            "bert.embeddings.word_embeddings.lora_embedding_A",
            "bert.embeddings.word_embeddings.lora_embedding_B",
        ]
    );
    stacked_matches_alone(spec);
}

/// K = 2 adapters on one base, each with its own (A, B, head), against two K = 1 models.
fn stacked_matches_alone(spec: etagrid_spec::LoraSpec) {
    let dir = fixture_dir();
    let weights = Weights::load(&dir, Device::Cpu, Kind::Float).expect("weights");
    let config = BertConfig::load(&dir).expect("config");
    tch::manual_seed(11);
    let stacked = BertForSequenceClassification::load(config, &weights, 3, &spec, 2, Device::Cpu)
        .expect("model");
    let one = tiny_model(&spec, 0);
    let two = tiny_model(&spec, 1);
    // Random A, B and head in both (with A = 0 both would still equal the base model).
    tch::manual_seed(2);
    tch::no_grad(|| {
        for p in one.trainable().iter().chain(two.trainable().iter()) {
            let mut t = p.tensor.shallow_clone();
            t.copy_(&(Tensor::rand_like(&t) * 0.2 - 0.1));
        }
    });
    // Give the stacked model the single models' adapters and heads (the heads come from the
    // checkpoint and are equal already; the adapters are random).
    tch::no_grad(|| {
        for ((s, a), b) in stacked
            .trainable()
            .iter()
            .zip(one.trainable())
            .zip(two.trainable())
        {
            let mut t = s.tensor.shallow_clone();
            t.copy_(&Tensor::cat(&[a.tensor.detach(), b.tensor.detach()], 0));
        }
    });
    let b = batch();
    let n = b.input_ids.size()[0];
    let doubled = Batch {
        input_ids: Tensor::cat(&[&b.input_ids, &b.input_ids], 0),
        token_type_ids: Tensor::cat(&[&b.token_type_ids, &b.token_type_ids], 0),
        attention_mask: Tensor::cat(&[&b.attention_mask, &b.attention_mask], 0),
        labels: Tensor::cat(&[&b.labels, &b.labels], 0),
    };
    let out = stacked.forward(&doubled, false);
    let d1 = max_abs_diff(&out.narrow(0, 0, n), &one.forward(&b, false));
    let d2 = max_abs_diff(&out.narrow(0, n, n), &two.forward(&b, false));
    assert!(
        d1 <= 1e-5 && d2 <= 1e-5,
        "stacked outputs differ: {d1:e}, {d2:e}"
    );
    assert!(
        max_abs_diff(&one.forward(&b, false), &two.forward(&b, false)) > 1e-4,
        "the two adapters must differ for this test to mean anything"
    );
}

#[test]
fn per_adapter_learning_rates_step_each_adapter_with_its_own_rate() {
    let dir = fixture_dir();
    let spec = lora_spec(4, 8.0, InitScheme::Loraplus);
    let weights = Weights::load(&dir, Device::Cpu, Kind::Float).expect("weights");
    let config = BertConfig::load(&dir).expect("config");
    tch::manual_seed(5);
    let model = BertForSequenceClassification::load(config, &weights, 3, &spec, 2, Device::Cpu)
        .expect("model");
    // Adapter 1 has zero learning rates: it must not move while adapter 0 does.
    let before: Vec<Tensor> = model
        .trainable()
        .iter()
        .map(|p| p.tensor.detach().copy())
        .collect();
    let mut opt = LoraPlusAdamW::new(model.trainable(), &[1e-3, 0.0], &[1e-2, 0.0], 0.0);
    let b = batch();
    let doubled = Batch {
        input_ids: Tensor::cat(&[&b.input_ids, &b.input_ids], 0),
        token_type_ids: Tensor::cat(&[&b.token_type_ids, &b.token_type_ids], 0),
        attention_mask: Tensor::cat(&[&b.attention_mask, &b.attention_mask], 0),
        labels: Tensor::cat(&[&b.labels, &b.labels], 0),
    };
    let l = loss(&model.forward(&doubled, true), &doubled.labels);
    opt.zero_grad();
    l.backward();
    opt.step(1.0);
    for (p, before) in model.trainable().iter().zip(&before) {
        let now = p.tensor.detach();
        assert_eq!(
            max_abs_diff(&now.get(1), &before.get(1)),
            0.0,
            "{}: adapter 1 moved",
            p.name
        );
        // With A = 0 (loraplus init) B has no gradient on the first step; A and the head do.
        if !p.name.contains("lora_B") {
            assert!(
                max_abs_diff(&now.get(0), &before.get(0)) > 0.0,
                "{}: adapter 0 did not move",
                p.name
            );
        }
    }
}

#[test]
fn targets_that_match_no_module_are_an_error_naming_the_field_and_the_modules() {
    let dir = fixture_dir();
    let weights = Weights::load(&dir, Device::Cpu, Kind::Float).expect("weights");
    for targets in [
        TargetModules::list(&["no_such_module"]),
        // A regex must match a whole name: a bare "query" matches nothing.
        TargetModules::Regex("query".into()),
    ] {
        let mut spec = lora_spec(4, 8.0, InitScheme::Lora);
        spec.target_modules = targets.clone();
        let err = BertForSequenceClassification::load(
            BertConfig::load(&dir).expect("config"),
            &weights,
            3,
            &spec,
            1,
            Device::Cpu,
        )
        .err()
        .unwrap_or_else(|| panic!("{targets} must not load"));
        let message = err.to_string();
        for needle in [
            "lora.target_modules",
            "matches no module",
            "bert.encoder.layer.*.attention.self.query",
            "bert.embeddings.word_embeddings",
        ] {
            assert!(
                message.contains(needle),
                "{needle:?} missing from: {message}"
            );
        }
    }
}

#[test]
fn regex_targets_select_whole_module_names_only() {
    let mut spec = lora_spec(4, 8.0, InitScheme::Lora);
    spec.target_modules =
        TargetModules::Regex(r"bert\.encoder\.layer\.0\.attention\.self\.(query|value)".into());
    let names: Vec<String> = tiny_model(&spec, 0)
        .trainable()
        .into_iter()
        .map(|p| p.name)
        .filter(|n| n.contains("lora_"))
        .collect();
    assert_eq!(
        names,
        [
            "bert.encoder.layer.0.attention.self.query.lora_A.weight",
            "bert.encoder.layer.0.attention.self.query.lora_B.weight",
            "bert.encoder.layer.0.attention.self.value.lora_A.weight",
            "bert.encoder.layer.0.attention.self.value.lora_B.weight",
        ]
    );
}

#[test]
fn rslora_scaling_is_alpha_over_sqrt_r_and_reaches_the_forward_pass() {
    assert_eq!(lora_spec(4, 8.0, InitScheme::Lora).scaling(), 2.0);
    let mut rs = lora_spec(4, 8.0, InitScheme::Lora);
    rs.use_rslora = true;
    assert_eq!(rs.scaling(), 4.0);
    // Same adapters (same seed), scaling 2 vs 4: different outputs.
    let b = batch();
    let out: Vec<Tensor> = [false, true]
        .into_iter()
        .map(|use_rslora| {
            let mut spec = lora_spec(4, 8.0, InitScheme::Loraplus);
            spec.use_rslora = use_rslora;
            let model = tiny_model(&spec, 3);
            tch::manual_seed(11);
            tch::no_grad(|| {
                for p in model
                    .trainable()
                    .iter()
                    .filter(|p| p.name.contains("lora_A"))
                {
                    let mut t = p.tensor.shallow_clone();
                    t.copy_(&(Tensor::rand_like(&t) * 0.1));
                }
            });
            model.forward(&b, false)
        })
        .collect();
    assert!(
        max_abs_diff(&out[0], &out[1]) > 1e-4,
        "rsLoRA did not change the output"
    );
}

/// PEFT would put LoRA on any matching Linear/Embedding, including position/type embeddings and
/// GPT-2's `wpe`; etagrid cannot, so a target that selects one is an error rather than a cell
/// that silently differs from the PEFT run it stands for.
#[test]
fn targets_that_select_layers_etagrid_cannot_adapt_are_an_error() {
    let dirs = |name: &str| fixture_dir().parent().expect("fixtures").join(name);
    let cases = [
        (
            "tiny-bert",
            TargetModules::Regex(r"bert\.embeddings\..*".into()),
            "bert.embeddings.position_embeddings",
        ),
        (
            "tiny-bert",
            TargetModules::list(&["query", "classifier"]),
            "classifier",
        ),
        (
            "tiny-gpt2",
            TargetModules::Regex(r"transformer\.(wte|wpe)".into()),
            "transformer.wpe",
        ),
        (
            "tiny-llama-gqa",
            TargetModules::list(&["q_proj", "lm_head"]),
            "lm_head",
        ),
    ];
    for (model, targets, culprit) in cases {
        let dir = dirs(model);
        let weights = Weights::load(&dir, Device::Cpu, Kind::Float).expect("weights");
        let mut spec = lora_spec(4, 8.0, InitScheme::Lora);
        spec.target_modules = targets.clone();
        let err = etagrid_train::model::load_classifier(&dir, &weights, 3, &spec, 1, Device::Cpu)
            .err()
            .unwrap_or_else(|| panic!("{model} with {targets} must not load"));
        let message = err.to_string();
        assert!(
            message.contains("lora.target_modules") && message.contains(culprit),
            "{model}: {message}"
        );
    }
    // The same model with only adaptable targets loads.
    let dir = dirs("tiny-gpt2");
    let weights = Weights::load(&dir, Device::Cpu, Kind::Float).expect("weights");
    let mut spec = lora_spec(4, 8.0, InitScheme::Lora);
    spec.target_modules = TargetModules::Regex(r"transformer\.wte".into());
    assert!(
        etagrid_train::model::load_classifier(&dir, &weights, 3, &spec, 1, Device::Cpu).is_ok()
    );
}
