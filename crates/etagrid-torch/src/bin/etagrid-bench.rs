//! `etagrid-bench`: training-step throughput of etagrid's worker code on synthetic tokens, printed
//! as one JSON line, for side-by-side runs with the peer (`shared/bench/peft_baseline.py`); see
//! `etagrid_train::bench` for what is measured and `bench/gpu/vs_peft.sh` for the comparison.

use clap::Parser;
use etagrid_spec::protocol::JobDevice;
use etagrid_train::bench::{train_throughput, BenchOptions};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

#[derive(Parser)]
#[command(
    name = "etagrid-bench",
    about = "Training-step throughput on synthetic tokens (JSON line)"
)]
struct Args {
    /// A Hugging Face model directory (config.json + model.safetensors); no tokenizer needed.
    #[arg(long)]
    model: PathBuf,
    #[arg(long, default_value_t = 32)]
    batch: i64,
    #[arg(long, default_value_t = 128)]
    seq: i64,
    /// Adapters (grid cells) trained together on one frozen base.
    #[arg(long, default_value_t = 1)]
    k: i64,
    /// Length of the timed window.
    #[arg(long, default_value_t = 12.0)]
    seconds: f64,
    /// LoRA target modules, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "query,value")]
    targets: Vec<String>,
    /// "cuda" (the first visible GPU) or "cpu".
    #[arg(long, default_value = "cuda")]
    device: String,
    /// The frozen base's dtype, "bf16" or "fp32" [default: bf16 on a GPU, fp32 on the CPU].
    #[arg(long)]
    dtype: Option<String>,
}

fn main() -> ExitCode {
    let a = Args::parse();
    let device = if a.device == "cpu" {
        JobDevice::Cpu
    } else {
        JobDevice::Cuda
    };
    let opts = BenchOptions {
        model_dir: a.model,
        batch: a.batch,
        seq: a.seq,
        k: a.k,
        window: Duration::from_secs_f64(a.seconds),
        targets: a.targets,
        device,
        bf16: match a.dtype.as_deref() {
            Some("bf16") => Some(true),
            Some("fp32") => Some(false),
            Some(other) => {
                eprintln!("error: --dtype {other:?}: use \"bf16\" or \"fp32\"");
                return ExitCode::from(2);
            }
            None => None,
        },
    };
    match train_throughput(&opts) {
        Ok(r) => match serde_json::to_string(&r) {
            Ok(line) => {
                println!("{line}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: cannot write the result as JSON: {e}");
                ExitCode::from(1)
            }
        },
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(1)
        }
    }
}
