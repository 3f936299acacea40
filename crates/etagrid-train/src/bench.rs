//! Training-step throughput on synthetic tokens, measured the way the peer's script
//! (`shared/bench/peft_baseline.py`) measures PEFT: LoRA r = 8, α = 8, LoRA+ ratio 16, lr 1e-4,
//! random token ids in [5, 1000), random labels of 3 classes, 10 warm-up steps, then as many steps
//! as fit in a time window, synchronised only at its ends. On a GPU the frozen base runs in bf16
//! (LoRA parameters, head and optimizer state in fp32), like PEFT under bf16 autocast.
//!
//! `k > 1` trains k adapters (grid cells) on one frozen base in one process: the batch is
//! repeated k times (cells of one seed see the same batches), so a step processes k·batch samples.
//! A model with dropout draws its masks as `etagrid run` does ([`crate::dropout`]: per seed, step
//! and site; here the k cells share seed 0; attention on the path `ETAGRID_ATTENTION` picks). The
//! rows have no padding (as the peer's), so attention gets no mask, as transformers then gives
//! it none; `ETAGRID_BENCH_PAD=1` pads every other row after half its length.

use crate::dropout::{SeedLen, SeededDropout};
use crate::model::{family, load_classifier, Batch};
use crate::optim::LoraPlusAdamW;
use crate::train::loss;
use crate::weights::Weights;
use crate::{device, TrainError};
use etagrid_spec::protocol::JobDevice;
use etagrid_spec::{LoraSpec, TargetModules};
use serde::Serialize;
use std::path::PathBuf;
use std::time::{Duration, Instant};
use tch::{Device, Kind, Tensor};

#[derive(Debug, Clone)]
pub struct BenchOptions {
    pub model_dir: PathBuf,
    pub batch: i64,
    pub seq: i64,
    pub k: i64,
    pub window: Duration,
    pub targets: Vec<String>,
    pub device: JobDevice,
    /// Run the frozen base in bf16 (true) or fp32 (false); default: bf16 on a GPU, fp32 on the CPU.
    pub bf16: Option<bool>,
}

#[derive(Debug, Clone, Serialize)]
pub struct BenchResult {
    pub peer: &'static str,
    pub model_type: String,
    pub device: String,
    pub dtype: String,
    pub batch: i64,
    pub seq: i64,
    pub k: i64,
    pub steps: u64,
    pub ms_per_step: f64,
    /// Samples of all k adapters together.
    pub samples_per_s: f64,
    pub tokens_per_s: f64,
    pub base_params: i64,
    pub trainable_params: i64,
    pub final_loss: f64,
    /// "per-seed masks" (as `etagrid run`) or "none" (the model has no dropout).
    pub dropout: &'static str,
}

pub fn train_throughput(o: &BenchOptions) -> Result<BenchResult, TrainError> {
    let device = device::select(o.device)?;
    let kind = if o.bf16.unwrap_or(device != Device::Cpu) {
        Kind::BFloat16
    } else {
        Kind::Float
    };
    let weights = Weights::load(&o.model_dir, device, kind)?;
    let lora = LoraSpec::new(8, 8.0, TargetModules::List(o.targets.clone()));
    tch::manual_seed(0);
    let model_type = family(&o.model_dir)?.model_type().to_owned();
    let model = load_classifier(&o.model_dir, &weights, 3, &lora, o.k, device)?;
    let base_params = model.frozen().iter().map(|t| t.numel() as i64).sum();
    drop(weights);
    let trainable = model.trainable();
    let trainable_params = trainable.iter().map(|p| p.tensor.numel() as i64).sum();
    let lr_a = vec![1e-4; o.k as usize];
    let lr_b = vec![1.6e-3; o.k as usize];
    let mut opt = LoraPlusAdamW::new(trainable, &lr_a, &lr_b, 0.0);

    // The peer draws ids from [5, 1000); tiny test models have smaller vocabularies.
    let vocab = std::fs::read_to_string(o.model_dir.join("config.json"))
        .ok()
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
        .and_then(|v| v["vocab_size"].as_i64())
        .unwrap_or(1000);
    let ids = Tensor::randint_low(5, vocab.min(1000), [o.batch, o.seq], (Kind::Int64, device));
    let labels = Tensor::randint_low(0, 3, [o.batch], (Kind::Int64, device));
    let padded = std::env::var("ETAGRID_BENCH_PAD").is_ok_and(|v| v == "1");
    let batch = Batch {
        input_ids: ids.repeat([o.k, 1]),
        token_type_ids: Tensor::zeros([o.k * o.batch, o.seq], (Kind::Int64, device)),
        attention_mask: {
            // ETAGRID_BENCH_PAD=1: every other row is padded after half its length, as real
            // batches of unequal texts are (the attention mask then has zeros).
            let m = Tensor::ones([o.k * o.batch, o.seq], (Kind::Int64, device));
            if padded {
                let _ = m
                    .slice(0, 0, o.k * o.batch, 2)
                    .narrow(1, o.seq / 2, o.seq - o.seq / 2)
                    .fill_(0);
            }
            m
        },
        labels: labels.repeat([o.k]),
    };
    let masks = model
        .base_dropout()
        .then(|| SeededDropout::new(&vec![0; o.k as usize], device));
    let lens = [SeedLen { len: o.seq, padded }];
    let mut n = 0u64;
    let mut step = || {
        let forward = || model.forward(&batch, true);
        let logits = match &masks {
            Some(m) => m.during(n, lens, forward),
            None => forward(),
        };
        n += 1;
        let l = loss(&logits, &batch.labels);
        opt.zero_grad();
        l.backward();
        opt.step(1.0);
        l
    };
    let sync = || {
        if let Device::Cuda(i) = device {
            tch::Cuda::synchronize(i as i64);
        }
    };
    for _ in 0..10 {
        let _ = step();
    }
    sync();
    let start = Instant::now();
    let mut steps = 0u64;
    let mut last = Tensor::zeros([], (Kind::Float, device));
    while start.elapsed() < o.window {
        last = step();
        steps += 1;
    }
    sync();
    let dt = start.elapsed().as_secs_f64();
    let samples = (steps as i64 * o.k * o.batch) as f64;
    Ok(BenchResult {
        peer: "etagrid",
        model_type,
        device: device::describe(device),
        dtype: format!("{kind:?}"),
        batch: o.batch,
        seq: o.seq,
        k: o.k,
        steps,
        ms_per_step: 1e3 * dt / steps.max(1) as f64,
        samples_per_s: samples / dt,
        tokens_per_s: samples * o.seq as f64 / dt,
        base_params,
        trainable_params,
        final_loss: last.double_value(&[]),
        dropout: if masks.is_some() {
            "per-seed masks"
        } else {
            "none"
        },
    })
}
