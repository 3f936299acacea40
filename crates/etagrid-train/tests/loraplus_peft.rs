//! The LoRA+ optimizer against PEFT's `create_loraplus_optimizer` with `torch.optim.AdamW`
//! (lr 1e-3, ratio 16, weight decay 0.01): same groups, and after 3 steps on the same batch
//! every trainable tensor agrees within 1e-5 (fp32, CPU). Reference: lora_reference.json.

mod common;

use common::*;
use etagrid_spec::InitScheme;
use etagrid_train::optim::{Group, LoraPlusAdamW};
use etagrid_train::train::loss;
use tch::Kind;

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
