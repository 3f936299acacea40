//! The LoRA+ optimizer against PEFT's `create_loraplus_optimizer` with `torch.optim.AdamW`
//! (lr 1e-3, ratio 16, weight decay 0.01): same groups, and after 3 steps on the same batch
//! every trainable tensor agrees within 1e-5 (fp32, CPU).
//!
//! BERT: against the recorded lora_reference.json. RoBERTa, GPT-2 and Llama (with a regex target,
//! rsLoRA and LoRA on embeddings): live, through scripts/peft_loraplus_steps.py in the venv
//! (transformers + PEFT): etagrid exports its random adapter and head, PEFT loads them
//! trainable, both take 3 steps on the same token ids, and every tensor and group is compared.

mod common;

use common::*;
use etagrid_spec::{InitScheme, LoraSpec, TargetModules};
use etagrid_train::data::{collate, load_tokenizer};
use etagrid_train::export::save_peft_adapter;
use etagrid_train::model::{load_classifier, model_type};
use etagrid_train::optim::{Group, LoraPlusAdamW};
use etagrid_train::train::loss;
use etagrid_train::weights::Weights;
use tch::{Device, Kind, Tensor};

/// libtorch's generator is one per process and this file's tests run as threads of one process:
/// a test building a model (its adapters are drawn from the seeded generator) while another
/// draws would start from other adapters. Every test takes its turn.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

fn setup() -> (
    etagrid_train::bert::BertForSequenceClassification,
    LoraPlusAdamW,
    serde_json::Value,
) {
    let r = json("lora_reference.json");
    let model = tiny_model(&lora_spec(4, 8.0, InitScheme::Lora), 0);
    tch::no_grad(|| {
        for p in model.trainable() {
            if let Some(v) = r["adapter"].get(peft_name(&p.name)) {
                let mut t = p.tensor.shallow_clone();
                t.copy_(&tensor(v, Kind::Float).unsqueeze(0));
            }
        }
    });
    let lr = r["train"]["lr"].as_f64().expect("lr");
    let ratio = r["train"]["loraplus_lr_ratio"].as_f64().expect("ratio");
    let wd = r["train"]["loraplus_weight_decay"].as_f64().expect("wd");
    let opt = LoraPlusAdamW::new(model.trainable(), &[lr], &[lr * ratio], wd);
    (model, opt, r)
}

#[test]
fn parameter_groups_have_the_same_members_rates_and_decay_as_peft() {
    let _serial = serial();
    let (_model, opt, r) = setup();
    let groups = r["train"]["param_groups"].as_array().expect("groups");
    // PEFT's order: A, embedding (empty here), B, B without decay.
    let peft = |i: usize| -> (f64, f64, Vec<String>) {
        let g = &groups[i];
        let mut names: Vec<String> = serde_json::from_value(g["params"].clone()).expect("names");
        names.sort();
        (
            g["lr"].as_f64().expect("lr"),
            g["weight_decay"].as_f64().expect("wd"),
            names,
        )
    };
    assert!(
        peft(1).2.is_empty(),
        "the fixture has no LoRA on embeddings"
    );
    let lr = r["train"]["lr"].as_f64().expect("lr");
    let info = opt.groups(lr, lr * 16.0);
    for (ours, theirs) in [(Group::A, 0), (Group::B, 2), (Group::BNoDecay, 3)] {
        let mut names: Vec<String> = opt.members(ours).iter().map(|n| peft_name(n)).collect();
        names.sort();
        let (plr, pwd, pnames) = peft(theirs);
        assert_eq!(names, pnames, "members of group {}", ours.name());
        let g = info.iter().find(|g| g.name == ours.name()).expect("group");
        assert!(
            (g.lr - plr).abs() < 1e-12,
            "lr of group {}: {} vs {plr}",
            g.name,
            g.lr
        );
        assert!(
            (g.weight_decay - pwd).abs() < 1e-12,
            "wd of group {}",
            g.name
        );
        assert_eq!(g.members, pnames.len());
    }
}

#[test]
fn three_adamw_steps_match_peft_within_1e_5() {
    let _serial = serial();
    let (model, mut opt, r) = setup();
    let batch = reference_batch(&r);
    let want_losses: Vec<f64> =
        serde_json::from_value(r["train"]["losses"].clone()).expect("losses");
    for (step, want) in want_losses.iter().enumerate() {
        let l = loss(&model.forward(&batch, false), &batch.labels);
        let got = l.double_value(&[]);
        assert!(
            (got - want).abs() <= 1e-5,
            "loss before step {step}: {got} vs PEFT {want}"
        );
        opt.zero_grad();
        l.backward();
        opt.step(1.0);
    }
    let after = &r["train"]["params_after"];
    let mut checked = 0;
    for p in model.trainable() {
        let name = peft_name(&p.name);
        let want = tensor(&after[&name], Kind::Float).unsqueeze(0);
        let d = max_abs_diff(&p.tensor.detach(), &want);
        assert!(d <= 1e-5, "{name} differs from PEFT after 3 steps by {d:e}");
        checked += 1;
    }
    assert_eq!(
        checked,
        after.as_object().expect("params").len(),
        "every PEFT trainable is ours too"
    );
}

/// 3 LoRA+ AdamW steps of etagrid and of PEFT from the same exported adapter on `fixture`;
/// asserts equal groups (members, lr, decay), losses and every trainable tensor within 1e-5.
fn three_steps_against_live_peft(fixture: &str, lora: LoraSpec, expect_embedding: bool) {
    // One at a time, on one thread, like the PyTorch side: the seeds and the RNG are global, and
    // concurrent tests would interleave their draws, so each run would start from other random
    // adapters; AdamW's m/√v then amplifies the reduction-order noise of near-zero gradients.
    // Serialised, every run is the same computation (deterministic, not a looser tolerance).
    let _one_at_a_time = serial();
    tch::set_num_threads(1);
    let (lr, ratio, wd) = (1e-3, 16.0, 0.01);
    let dir = common::fixture(fixture);
    let weights = Weights::load(&dir, Device::Cpu, Kind::Float).expect("weights");
    tch::manual_seed(0);
    let model = load_classifier(&dir, &weights, 3, &lora, 1, Device::Cpu).expect("model");
    // Random adapters and head (B ≠ 0, so every tensor gets a gradient at step 1).
    tch::manual_seed(5);
    tch::no_grad(|| {
        for p in model.trainable() {
            let mut t = p.tensor.shallow_clone();
            t.copy_(&(Tensor::rand_like(&t) * 0.4 - 0.2));
        }
    });
    let before: Vec<Tensor> = model
        .trainable()
        .iter()
        .map(|p| p.tensor.detach().copy())
        .collect();
    let tmp = tempfile::tempdir().expect("tempdir");
    let adapter = tmp.path().join("adapter");
    save_peft_adapter(
        &model.trainable(),
        0,
        &lora,
        &model_type(&dir).expect("model type"),
        &dir.display().to_string(),
        &adapter,
    )
    .expect("export");

    let tok = load_tokenizer(&dir, 64).expect("tokenizer");
    let enc = encode_inputs(
        &tok,
        &[
            ("good", None),
            ("The movie was great fun.", Some("I liked it")),
            ("the film was dull and far too long", None),
            ("an odd one", Some("not sure")),
        ],
    );
    let mut batch = collate(&enc, &[0, 1, 2, 3], model.pad_token_id(), Device::Cpu);
    batch.labels = Tensor::from_slice(&[0i64, 2, 1, 2]);
    let ids = |t: &Tensor| Vec::<Vec<i64>>::try_from(t).expect("ids");
    let job = serde_json::json!({
        "input_ids": ids(&batch.input_ids),
        "attention_mask": ids(&batch.attention_mask),
        // Decoders take no token types.
        "token_type_ids": (model_type(&dir).expect("type") != "gpt2"
            && model_type(&dir).expect("type") != "llama")
            .then(|| ids(&batch.token_type_ids)),
        "labels": [0, 2, 1, 2],
        "lr": lr, "ratio": ratio, "weight_decay": wd, "lr_embedding": lora.embedding_lr,
        "steps": 3,
    });
    let job_path = tmp.path().join("job.json");
    std::fs::write(&job_path, job.to_string()).expect("write job");
    let out = run_script("peft_loraplus_steps.py", [&dir, &adapter, &job_path]);
    let r: serde_json::Value = serde_json::from_slice(&out).expect("json");

    let mut opt = LoraPlusAdamW::new(model.trainable(), &[lr], &[lr * ratio], wd)
        .with_embedding_lr(lora.embedding_lr);
    // Groups: PEFT's order is A, embedding, B, B without decay.
    let info = opt.groups(lr, lr * ratio);
    for (i, ours) in [Group::A, Group::Embedding, Group::B, Group::BNoDecay]
        .into_iter()
        .enumerate()
    {
        let g = &r["groups"][i];
        let mut theirs: Vec<String> = serde_json::from_value(g["params"].clone()).expect("names");
        theirs.sort();
        let mut names: Vec<String> = opt.members(ours).iter().map(|n| peft_name(n)).collect();
        names.sort();
        assert_eq!(names, theirs, "{fixture}: members of group {}", ours.name());
        if names.is_empty() {
            continue;
        }
        let mine = info.iter().find(|x| x.name == ours.name()).expect("group");
        let (plr, pwd) = (
            g["lr"].as_f64().expect("lr"),
            g["weight_decay"].as_f64().expect("wd"),
        );
        assert!(
            (mine.lr - plr).abs() < 1e-15,
            "{fixture}: lr of {}",
            mine.name
        );
        assert!(
            (mine.weight_decay - pwd).abs() < 1e-15,
            "{fixture}: wd of {}",
            mine.name
        );
    }
    assert_eq!(
        !opt.members(Group::Embedding).is_empty(),
        expect_embedding,
        "{fixture}: embedding group"
    );

    let want: Vec<f64> = serde_json::from_value(r["losses"].clone()).expect("losses");
    for (step, want) in want.iter().enumerate() {
        let l = loss(&model.forward(&batch, false), &batch.labels);
        let got = l.double_value(&[]);
        assert!(
            (got - want).abs() <= 1e-5,
            "{fixture}: loss before step {step}: {got} vs PEFT {want}"
        );
        opt.zero_grad();
        l.backward();
        opt.step(1.0);
    }
    let after = &r["params_after"];
    let trainable = model.trainable();
    for (p, b) in trainable.iter().zip(&before) {
        let name = peft_name(&p.name);
        let theirs = tensor(&after[&name], Kind::Float).unsqueeze(0);
        let d = max_abs_diff(&p.tensor.detach(), &theirs);
        assert!(
            d <= 1e-5,
            "{fixture}: {name} differs from PEFT after 3 steps by {d:e}"
        );
        // The steps moved it by far more than the tolerance, so the comparison means something.
        let moved = max_abs_diff(&p.tensor.detach(), b);
        assert!(moved > 1e-4, "{fixture}: {name} moved only {moved:e}");
    }
    assert_eq!(
        trainable.len(),
        after.as_object().expect("params").len(),
        "{fixture}: every PEFT trainable is ours too"
    );
}

#[test]
fn roberta_regex_target_with_embedding_lora_matches_peft_loraplus_steps() {
    // A regex that selects query/value of every layer and the word embeddings (padding_idx 1).
    let lora = LoraSpec {
        embedding_lr: 5e-3,
        ..LoraSpec::new(
            4,
            8.0,
            TargetModules::Regex(
                r"roberta\.(encoder\.layer\.\d+\.attention\.self\.(query|value)|embeddings\.word_embeddings)"
                    .into(),
            ),
        )
    };
    // The token-type fixture: pair inputs with type-1 segments go through training too.
    three_steps_against_live_peft("tiny-roberta-tt", lora, true);
}

#[test]
fn gpt2_rslora_with_wte_lora_matches_peft_loraplus_steps() {
    let lora = LoraSpec {
        use_rslora: true,
        embedding_lr: 5e-3,
        ..LoraSpec::new(
            4,
            8.0,
            TargetModules::list(&["c_attn", "c_proj", "c_fc", "wte"]),
        )
    };
    three_steps_against_live_peft("tiny-gpt2", lora, true);
}

#[test]
fn llama_all_projections_rslora_loraplus_init_matches_peft_loraplus_steps() {
    let lora = LoraSpec {
        use_rslora: true,
        init: InitScheme::Loraplus,
        ..LoraSpec::new(4, 16.0, TargetModules::list(LLAMA_ALL_PROJ))
    };
    three_steps_against_live_peft("tiny-llama-gqa", lora, false);
}

#[test]
fn llama_embed_tokens_lora_matches_peft_loraplus_steps() {
    let mut targets = LLAMA_ALL_PROJ.to_vec();
    targets.push("embed_tokens");
    let lora = LoraSpec {
        embedding_lr: 2e-3,
        ..LoraSpec::new(4, 8.0, TargetModules::list(&targets))
    };
    three_steps_against_live_peft("tiny-llama-mha", lora, true);
}
