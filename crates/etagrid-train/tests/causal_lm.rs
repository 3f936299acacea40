//! `[task] kind = "causal_lm"`: prompt/response tokenization, the response-only loss mask, the
//! loss against transformers' `LlamaForCausalLM(..., labels=…).loss`, training, and
//! multiple-choice scoring against transformers' next-token logits. References:
//! tests/fixtures/tiny-llama-mha/lm_reference.json from scripts/make_lm_fixtures.py on the
//! committed tests/fixtures/data/{lm.jsonl, mc.jsonl}. Tolerance: fp32, |difference| ≤ 1e-4.

mod common;

use common::*;
use etagrid_spec::protocol::{JobDevice, Measure, WorkerEvent, WorkerJob};
use etagrid_spec::{LmTaskSpec, LoraSpec, SweepSpec, TargetModules};
use etagrid_train::bert::{Batch, ParamRole};
use etagrid_train::data::{
    collate, collate_lm, encode_lm, encode_mc, load_tokenizer, mc_prompt, read_lm_examples,
    read_mc_examples, Encoded,
};
use etagrid_train::metrics::mc_predictions;
use etagrid_train::model::{load_classifier, SequenceClassifier};
use etagrid_train::optim::LoraPlusAdamW;
use etagrid_train::train::{evaluate_lm, lm_loss, lm_loss_parts, mc_letter_logits};
use etagrid_train::weights::Weights;
use etagrid_train::{run_job, JobOutcome};
use serde_json::Value;
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};

fn llama_dir() -> PathBuf {
    fixture("tiny-llama-mha")
}

fn reference() -> Value {
    let p = llama_dir().join("lm_reference.json");
    serde_json::from_str(&std::fs::read_to_string(&p).expect("read lm_reference.json"))
        .expect("json")
}

fn lm_spec(r: &Value) -> LmTaskSpec {
    LmTaskSpec {
        prompt_column: "prompt".into(),
        response_column: "response".into(),
        prompt_template: r["template"].as_str().map(Into::into),
        mc_eval: None,
        mc_eval_file: None,
    }
}

fn model(targets: &[&str]) -> Box<dyn SequenceClassifier> {
    let d = llama_dir();
    let weights = Weights::load(&d, Device::Cpu, Kind::Float).expect("weights");
    let lora = LoraSpec::new(4, 8.0, TargetModules::list(targets));
    tch::manual_seed(0);
    load_classifier(&d, &weights, 1, &lora, 1, Device::Cpu).expect("model")
}

/// The fixture's pairs, tokenized by etagrid.
fn encoded(r: &Value) -> Encoded {
    let tok = load_tokenizer(&llama_dir(), 64).expect("tokenizer");
    let path = fixture("data/lm.jsonl");
    let ex = read_lm_examples(&path, &lm_spec(r)).expect("read");
    let max_len = r["max_len"].as_u64().expect("max_len") as usize;
    encode_lm(&tok, &ex, &lm_spec(r), max_len, r["eos"].as_i64(), &path).expect("encode")
}

#[test]
fn prompt_response_tokens_and_the_response_start_match_the_reference() {
    let r = reference();
    let enc = encoded(&r);
    let want_ids: Vec<Vec<i64>> =
        serde_json::from_value(r["lm"]["input_ids"].clone()).expect("ids");
    let want_from: Vec<usize> = serde_json::from_value(r["lm"]["loss_from"].clone()).expect("from");
    assert_eq!(enc.ids, want_ids);
    assert_eq!(enc.loss_from, want_from);
    let eos = r["eos"].as_i64().expect("eos");
    assert!(
        enc.ids.iter().all(|i| i.last() == Some(&eos)),
        "every example ends with EOS"
    );
}

#[test]
fn the_loss_mask_covers_exactly_the_response_tokens_of_a_known_example() {
    // Two hand-made examples: prompt [5, 6, 7] + response [8, 9]; prompt [11] + response [12].
    let enc = Encoded {
        ids: vec![vec![5, 6, 7, 8, 9], vec![11, 12]],
        type_ids: vec![vec![0; 5], vec![0; 2]],
        labels: vec![0, 0],
        loss_from: vec![3, 1],
    };
    let b = collate_lm(&enc, &[0, 1], 0, Device::Cpu);
    let got: Vec<Vec<i64>> = Vec::<Vec<i64>>::try_from(&b.labels).expect("labels");
    assert_eq!(
        got,
        vec![
            vec![-100, -100, -100, 8, 9],
            vec![-100, 12, -100, -100, -100]
        ],
        "prompt and padding are -100, response tokens are their own ids"
    );
}

#[test]
fn the_response_loss_matches_transformers_with_labels_minus_100_on_the_prompt() {
    let r = reference();
    let enc = encoded(&r);
    let m = model(&["q_proj", "v_proj"]);
    let all: Vec<usize> = (0..enc.len()).collect();
    let got = lm_loss(
        m.as_ref(),
        &collate_lm(&enc, &all, m.pad_token_id(), Device::Cpu),
        false,
    )
    .expect("loss")
    .double_value(&[]);
    let want = r["lm"]["batch_loss"].as_f64().expect("batch_loss");
    assert!(
        (got - want).abs() <= 1e-4,
        "padded batch: {got} vs transformers {want}"
    );
    for (i, want) in r["lm"]["example_losses"]
        .as_array()
        .expect("losses")
        .iter()
        .enumerate()
    {
        let got = lm_loss(
            m.as_ref(),
            &collate_lm(&enc, &[i], m.pad_token_id(), Device::Cpu),
            false,
        )
        .expect("loss")
        .double_value(&[]);
        let want = want.as_f64().expect("f64");
        assert!(
            (got - want).abs() <= 1e-4,
            "example {i}: {got} vs transformers {want}"
        );
    }
}

#[test]
fn prompt_positions_carry_no_loss() {
    let r = reference();
    let enc = encoded(&r);
    let m = model(&["q_proj", "v_proj"]);
    let b = collate_lm(&enc, &[0, 3], m.pad_token_id(), Device::Cpu);
    let (hidden, head) = m.lm_hidden(&b, false).expect("an LM head");
    let base = lm_loss_parts(&hidden, &head, &b.labels).0.double_value(&[]);
    // Position t predicts token t + 1: positions before loss_from - 1 predict prompt tokens.
    let from = enc.loss_from[0] as i64;
    let noise = Tensor::randn(hidden.size(), (Kind::Float, Device::Cpu)) * 10.0;
    let prompt_only = Tensor::zeros(hidden.size(), (Kind::Float, Device::Cpu));
    // Row 0 only: row 1's prompt is shorter.
    prompt_only
        .narrow(0, 0, 1)
        .narrow(1, 0, from - 1)
        .copy_(&noise.narrow(0, 0, 1).narrow(1, 0, from - 1));
    let changed = lm_loss_parts(&(&hidden + &prompt_only), &head, &b.labels)
        .0
        .double_value(&[]);
    assert!(
        (changed - base).abs() < 1e-6,
        "prompt positions moved the loss: {base} → {changed}"
    );
    // No gradient reaches a position that predicts a prompt token or padding; every position
    // that predicts a response token gets one.
    let h = hidden.detach().set_requires_grad(true);
    lm_loss_parts(&h, &head, &b.labels).0.backward();
    let g = h.grad().abs().sum_dim_intlist(-1, false, Kind::Float);
    let targets = b.labels.narrow(1, 1, b.labels.size()[1] - 1).ne(-100);
    let g = g.narrow(1, 0, g.size()[1] - 1);
    let zero_where_masked = g
        .masked_select(&targets.logical_not())
        .abs()
        .max()
        .double_value(&[]);
    assert_eq!(
        zero_where_masked, 0.0,
        "prompt/padding positions got a gradient"
    );
    let min_where_target = g.masked_select(&targets).min().double_value(&[]);
    assert!(
        min_where_target > 0.0,
        "a response position got no gradient"
    );
    // …while one response position does change it.
    let resp = Tensor::zeros(hidden.size(), (Kind::Float, Device::Cpu));
    resp.narrow(0, 0, 1)
        .narrow(1, from, 1)
        .copy_(&noise.narrow(0, 0, 1).narrow(1, from, 1));
    let moved = lm_loss_parts(&(&hidden + &resp), &head, &b.labels)
        .0
        .double_value(&[]);
    assert!(
        (moved - base).abs() > 1e-3,
        "a response position must count"
    );
    // And a loss over the prompt too (labels = ids everywhere) is a different number.
    let unmasked = b
        .input_ids
        .where_self(&b.attention_mask.eq(1), &Tensor::from(-100i64));
    let all = lm_loss_parts(&hidden, &head, &unmasked).0.double_value(&[]);
    assert!((all - base).abs() > 1e-3);
}

#[test]
fn a_short_training_run_lowers_the_response_loss() {
    let r = reference();
    let enc = encoded(&r);
    let m = model(&["q_proj", "k_proj", "v_proj", "o_proj"]);
    let pad = m.pad_token_id();
    let before = evaluate_lm(m.as_ref(), &enc, None, pad, Device::Cpu).expect("eval");
    let params: Vec<_> = m
        .trainable()
        .into_iter()
        .filter(|p| matches!(p.role, ParamRole::LoraA | ParamRole::LoraB))
        .collect();
    assert!(
        params.iter().all(|p| p.name.contains("lora_")),
        "LoRA only, no head"
    );
    let mut opt = LoraPlusAdamW::new(params, &[2e-3], &[3.2e-2], 0.0);
    let all: Vec<usize> = (0..enc.len()).collect();
    for _ in 0..30 {
        let l = lm_loss(m.as_ref(), &collate_lm(&enc, &all, pad, Device::Cpu), true).expect("loss");
        opt.zero_grad();
        l.backward();
        opt.step(1.0);
    }
    let after = evaluate_lm(m.as_ref(), &enc, None, pad, Device::Cpu).expect("eval");
    assert!(
        after.loss < 0.7 * before.loss,
        "response loss {:.4} → {:.4}: expected at least a 30% drop",
        before.loss,
        after.loss
    );
    assert!((after.perplexity() - after.loss.exp()).abs() < 1e-9);
    assert_eq!(after.tokens, before.tokens);
}

#[test]
fn multiple_choice_prompt_lists_lettered_choices_and_ends_with_answer() {
    assert_eq!(
        mc_prompt("Which colour? ", &["red".into(), "blue".into()]),
        "Which colour?\nA. red\nB. blue\nAnswer:"
    );
}

#[test]
fn multiple_choice_prediction_is_the_argmax_over_the_questions_own_letters() {
    // Question 0 has 3 choices: D's 9.0 must not win. Question 1 has 2: A wins over B. Question
    // 2: a tie goes to the first letter.
    let logits = Tensor::from_slice(&[
        1.0f32, 5.0, 3.0, 9.0, 2.0, 1.0, 0.0, 8.0, 4.0, 4.0, 1.0, 0.0,
    ])
    .reshape([3, 4]);
    let got: Vec<i64> = Vec::<i64>::try_from(&mc_predictions(&logits, &[3, 2, 4])).expect("vec");
    assert_eq!(got, vec![1, 0, 0]);
}

#[test]
fn multiple_choice_answers_read_as_letters_or_indices() {
    let qs = read_mc_examples(&fixture("data/mc.jsonl")).expect("read");
    let answers: Vec<usize> = qs.iter().map(|q| q.answer).collect();
    // "B", 0, "b" (lower case), 4.
    assert_eq!(answers, vec![1, 0, 1, 4]);
    assert_eq!(qs[3].choices.len(), 5);
}

#[test]
fn multiple_choice_letter_logits_and_predictions_match_transformers() {
    let r = reference();
    let path = fixture("data/mc.jsonl");
    let tok = load_tokenizer(&llama_dir(), 64).expect("tokenizer");
    let mc = encode_mc(&tok, &read_mc_examples(&path).expect("read"), &path).expect("encode");
    let want_letters: Vec<i64> =
        serde_json::from_value(r["mc"]["letter_ids"].clone()).expect("ids");
    assert_eq!(mc.letter_ids, want_letters);
    let qs = r["mc"]["questions"].as_array().expect("questions");
    for (i, q) in qs.iter().enumerate() {
        let want: Vec<i64> = serde_json::from_value(q["input_ids"].clone()).expect("ids");
        assert_eq!(
            mc.prompts.ids[i], want,
            "question {i} prompt {:?}",
            q["prompt"]
        );
    }
    let m = model(&["q_proj", "v_proj"]);
    let got = mc_letter_logits(m.as_ref(), &mc, m.pad_token_id(), Device::Cpu).expect("logits");
    let want = Tensor::stack(
        &qs.iter()
            .map(|q| tensor(&q["letter_logits"], Kind::Float))
            .collect::<Vec<_>>(),
        0,
    );
    let d = max_abs_diff(&got, &want);
    assert!(
        d <= 1e-4,
        "letter logits differ from transformers' by {d:e}"
    );
    let preds: Vec<i64> = Vec::<i64>::try_from(&mc_predictions(&got, &mc.n_choices)).expect("vec");
    let want_preds: Vec<i64> = qs
        .iter()
        .map(|q| q["prediction"].as_i64().expect("pred"))
        .collect();
    assert_eq!(preds, want_preds);
    let e = evaluate_lm(
        m.as_ref(),
        &encoded(&r),
        Some(&mc),
        m.pad_token_id(),
        Device::Cpu,
    )
    .expect("eval");
    assert_eq!(e.mc_accuracy, r["mc"]["accuracy"].as_f64());
    // The prompts are padded together in one batch: padding must not change the letters' logits.
    let b: Batch = collate(&mc.prompts, &[0, 1, 2, 3], m.pad_token_id(), Device::Cpu);
    assert_eq!(b.input_ids.size()[0], 4);
}

/// A worker job for `toml` (a sweep file written into `dir`).
fn job(dir: &Path, toml: &str) -> WorkerJob {
    let path = dir.join("sweep.toml");
    std::fs::write(&path, toml).expect("write");
    let spec = SweepSpec::load(&path).expect("spec");
    let cell = spec.cells().remove(0);
    WorkerJob {
        protocol: etagrid_spec::protocol::PROTOCOL_VERSION,
        sweep: spec.name.clone(),
        cell_id: cell.id,
        config: cell.config,
        model_dir: spec.model.dir.clone(),
        out_dir: dir.join("cell"),
        device: JobDevice::Cpu,
        cuda_visible_devices: None,
        threads: 1,
        save_adapter: true,
        cache_dir: Some(dir.join("cache")),
        pack: Vec::new(),
        segment: None,
    }
}

fn sweep(model: &Path, metric: &str) -> String {
    let data = fixture("data");
    format!(
        r#"
[model]
path = "{}"
[task]
kind = "causal_lm"
train = "{lm}"
eval = "{lm}"
prompt_template = "Q: {{prompt}}\nA:"
mc_eval = "{mc}"
metric = "{metric}"
[lora]
target_modules = ["q_proj", "v_proj"]
[train]
steps = 4
batch_size = 3
max_seq_len = 48
[grid]
lr_a = [1e-3]
ratio = [16]
"#,
        model.display(),
        lm = data.join("lm.jsonl").display(),
        mc = data.join("mc.jsonl").display(),
    )
}

#[test]
fn a_causal_lm_cell_runs_end_to_end_and_reports_its_metric() {
    let d = tempfile::tempdir().expect("tempdir");
    let j = job(d.path(), &sweep(&llama_dir(), "perplexity"));
    let mut events = Vec::new();
    let out = run_job(&j, &mut |e| events.push(e)).expect("run");
    let JobOutcome::Finished(res) = out else {
        panic!("not finished: {out:?}")
    };
    assert!(
        (res.metric - res.eval_loss.exp()).abs() < 1e-9 * res.metric,
        "metric = perplexity"
    );
    let started = events.iter().find_map(|e| match e {
        WorkerEvent::Started {
            trainable_params,
            groups,
            ..
        } => Some((*trainable_params, groups.clone())),
        _ => None,
    });
    let (params, _) = started.expect("a started event");
    // rank 8 (the default) on q and v of 2 layers: (32·8 + 8·32) per adapter, 4 adapters; no head.
    assert_eq!(params, 4 * (32 * 8 + 8 * 32));
    // Every LM metric travels in the result (no side file), and none poses as `accuracy`.
    let perplexity = res.metrics.get(Measure::Perplexity).expect("perplexity");
    assert!((perplexity - res.metric).abs() <= 1e-12 * res.metric);
    let mc = res
        .metrics
        .get(Measure::McAccuracy)
        .expect("mc_accuracy (mc_eval is set)");
    assert!((0.0..=1.0).contains(&mc), "{mc}");
    let token = res
        .metrics
        .get(Measure::TokenAccuracy)
        .expect("token_accuracy");
    assert!((0.0..=1.0).contains(&token), "{token}");
    assert_eq!(res.metrics.get(Measure::Accuracy), None);
    assert!(!j.out_dir.join("lm_eval.jsonl").exists());
    // The last `eval` event carries the same metrics as the result.
    let last_eval = events.iter().rev().find_map(|e| match e {
        WorkerEvent::Eval { loss, metrics, .. } => Some((*loss, metrics.clone())),
        _ => None,
    });
    assert_eq!(last_eval, Some((res.eval_loss, res.metrics.clone())));
    assert!(j.out_dir.join("adapter/adapter_model.safetensors").exists());
    let cfg: Value = serde_json::from_str(
        &std::fs::read_to_string(j.out_dir.join("adapter/adapter_config.json")).expect("config"),
    )
    .expect("json");
    assert_eq!(cfg["task_type"], "CAUSAL_LM");
    assert!(cfg["modules_to_save"].is_null(), "no head was trained");
}

#[test]
fn causal_lm_on_an_encoder_model_is_a_clear_error() {
    let d = tempfile::tempdir().expect("tempdir");
    let j = job(d.path(), &sweep(&fixture("tiny-bert"), "eval_loss"));
    let err = run_job(&j, &mut |_| {})
        .expect_err("BERT cannot be a causal LM")
        .to_string();
    for want in ["config.json", "causal_lm", "decoder", "\"bert\""] {
        assert!(err.contains(want), "{err:?} lacks {want:?}");
    }
}

fn temp(name: &str, text: &str) -> (tempfile::TempDir, PathBuf) {
    let d = tempfile::tempdir().expect("tempdir");
    let p = d.path().join(name);
    std::fs::write(&p, text).expect("write");
    (d, p)
}

#[test]
fn bad_prompt_response_data_names_the_file_the_line_and_the_key() {
    let r = reference();
    let (_d, p) = temp(
        "lm.jsonl",
        "{\"prompt\": \"a\", \"response\": \"b\"}\n{\"prompt\": \"a\", \"reply\": \"b\"}\n",
    );
    let e = read_lm_examples(&p, &lm_spec(&r))
        .expect_err("missing")
        .to_string();
    for want in ["lm.jsonl:2", "`response`", "response_column"] {
        assert!(e.contains(want), "{e:?} lacks {want:?}");
    }
    let (_d, p) = temp("lm.csv", "prompt,response\nhello,\n");
    let e = read_lm_examples(&p, &lm_spec(&r))
        .expect_err("empty")
        .to_string();
    assert!(e.contains("lm.csv:2") && e.contains("is empty"), "{e}");
    // A CSV works like JSONL.
    let (_d, p) = temp("lm.csv", "prompt,response\n\"hi, you\",hello\n");
    let ex = read_lm_examples(&p, &lm_spec(&r)).expect("csv");
    assert_eq!(
        (ex[0].text.as_str(), ex[0].text_pair.as_deref()),
        ("hi, you", Some("hello"))
    );
}

#[test]
fn bad_multiple_choice_data_names_the_file_and_the_line() {
    for (text, want) in [
        (
            "{\"question\": \"q\", \"choices\": [\"a\", \"b\"], \"answer\": \"C\"}",
            "`answer` must be a letter A–B",
        ),
        (
            "{\"question\": \"q\", \"choices\": [\"a\"], \"answer\": 0}",
            "has 1 choices",
        ),
        (
            "{\"question\": \"q\", \"choices\": \"a, b\", \"answer\": 0}",
            "`choices` is missing or not a list",
        ),
        (
            "{\"choices\": [\"a\", \"b\"], \"answer\": 0}",
            "`question` is missing",
        ),
    ] {
        let (_d, p) = temp(
            "mc.jsonl",
            &format!(
                "{{\"question\": \"ok\", \"choices\": [\"x\", \"y\"], \"answer\": 1}}\n{text}\n"
            ),
        );
        let e = read_mc_examples(&p).expect_err(text).to_string();
        assert!(
            e.contains("mc.jsonl:2") && e.contains(want),
            "{e:?} lacks {want:?}"
        );
    }
}

/// A trained causal_lm cell's adapter loads in PEFT onto `AutoModelForCausalLM` and gives the
/// next-token logits `etagrid predict --lm --adapter` gives (scripts/peft_lm_logits.py; ≤ 1e-4),
/// and training moved them away from the base model's.
#[test]
fn a_causal_lm_adapter_loads_in_peft_with_the_same_next_token_logits() {
    use etagrid_train::predict::{predict, PredictOptions};
    let d = tempfile::tempdir().expect("tempdir");
    let text = sweep(&llama_dir(), "eval_loss")
        .replace("steps = 4", "steps = 12")
        .replace("lr_a = [1e-3]", "lr_a = [1e-2]");
    let j = job(d.path(), &text);
    assert!(matches!(
        run_job(&j, &mut |_| {}).expect("run"),
        JobOutcome::Finished(_)
    ));
    let adapter = j.out_dir.join("adapter");
    let prompts = [
        "Q: What is the capital of France?\nA:",
        "Q: good\nA: This is",
    ];
    let input = d.path().join("in.jsonl");
    let lines: Vec<String> = prompts
        .iter()
        .map(|p| serde_json::json!({ "text": p }).to_string())
        .collect();
    std::fs::write(&input, lines.join("\n")).expect("write");
    let logits = |adapter: Option<PathBuf>| {
        let mut rows = Vec::new();
        let o = PredictOptions {
            model_dir: llama_dir(),
            adapter,
            input: input.clone(),
            max_len: 64,
            batch_size: 8,
            lm: true,
            device: JobDevice::Cpu,
        };
        predict(&o, &mut |v| rows.push(tensor(&v["logits"], Kind::Float))).expect("predict");
        Tensor::stack(&rows, 0)
    };
    let ours = logits(Some(adapter.clone()));
    let base = logits(None);
    let tok = load_tokenizer(&llama_dir(), 64).expect("tokenizer");
    let pairs: Vec<(&str, Option<&str>)> = prompts.iter().map(|p| (*p, None)).collect();
    let ids = serde_json::to_string(&encode_inputs(&tok, &pairs).ids).expect("ids");
    let out = run_script(
        "peft_lm_logits.py",
        [
            &llama_dir().display().to_string(),
            &adapter.display().to_string(),
            &ids,
        ],
    );
    let peft: Value = serde_json::from_slice(&out).expect("json");
    let d_peft = max_abs_diff(&ours, &tensor(&peft, Kind::Float));
    assert!(
        d_peft <= 1e-4,
        "etagrid vs PEFT next-token logits: {d_peft:e}"
    );
    let moved = max_abs_diff(&ours, &base);
    assert!(
        moved > 0.1,
        "training should move the logits, moved {moved:e}"
    );
}

#[test]
fn a_causal_lm_cell_trains_and_saves_lora_on_the_token_embeddings() {
    let d = tempfile::tempdir().expect("tempdir");
    let toml = sweep(&llama_dir(), "eval_loss").replace(
        r#"target_modules = ["q_proj", "v_proj"]"#,
        r#"target_modules = ["q_proj", "v_proj", "embed_tokens"]"#,
    );
    let j = job(d.path(), &toml);
    let mut events = Vec::new();
    let out = run_job(&j, &mut |e| events.push(e)).expect("run");
    assert!(matches!(out, JobOutcome::Finished(_)), "{out:?}");
    let groups = events
        .iter()
        .find_map(|e| match e {
            WorkerEvent::Started { groups, .. } => Some(groups.clone()),
            _ => None,
        })
        .expect("a started event");
    let emb = groups
        .iter()
        .find(|g| g.name == "embedding")
        .unwrap_or_else(|| panic!("no embedding group in {groups:?}"));
    assert_eq!(emb.members, 2, "lora_embedding_A and _B: {groups:?}");
    let saved =
        std::fs::read(j.out_dir.join("adapter/adapter_model.safetensors")).expect("adapter");
    let header = String::from_utf8_lossy(&saved[..saved.len().min(4096)]).to_string();
    assert!(
        header.contains("lora_embedding_A") && header.contains("lora_embedding_B"),
        "the adapter lacks the embedding LoRA: {header}"
    );
}

#[test]
fn a_multiple_choice_answer_written_as_a_digit_is_an_index() {
    let (_d, p) = temp(
        "mc.jsonl",
        "{\"question\": \"q\", \"choices\": [\"x\", \"y\", \"z\"], \"answer\": \"1\"}\n\
         {\"question\": \"q\", \"choices\": [\"x\", \"y\", \"z\"], \"answer\": \"C\"}\n",
    );
    let qs = read_mc_examples(&p).expect("read");
    assert_eq!(qs.iter().map(|q| q.answer).collect::<Vec<_>>(), vec![1, 2]);
}
