//! `etagrid predict --device` (issue 13): a device predict cannot use is an error naming it and
//! saying what to do, never a quiet run on the CPU (`--device cuda:1` used to run on the CPU).

mod common;

use common::fixture;
use etagrid_spec::protocol::JobDevice;
use etagrid_train::predict::{parse_device, predict, PredictOptions};
use std::path::Path;

fn options(input: &Path, device: JobDevice) -> PredictOptions {
    PredictOptions {
        model_dir: fixture("tiny-bert"),
        adapter: None,
        input: input.to_owned(),
        max_len: 16,
        batch_size: 4,
        lm: false,
        device,
    }
}

#[test]
fn a_gpu_index_other_than_the_first_visible_is_refused_naming_it_and_what_to_do() {
    let message = parse_device("cuda:1").expect_err("cuda:1").to_string();
    for needle in ["\"cuda:1\"", "CUDA_VISIBLE_DEVICES=1", "--device cuda"] {
        assert!(
            message.contains(needle),
            "{needle:?} missing from: {message}"
        );
    }
}

#[test]
fn an_unknown_device_is_refused_naming_the_devices_predict_knows() {
    for device in ["gpu", "mps", "cuda:x", ""] {
        let message = parse_device(device).expect_err(device).to_string();
        assert!(
            message.contains(&format!("{device:?}")) && message.contains("\"cpu\" or \"cuda\""),
            "{device:?}: {message}"
        );
    }
}

#[test]
fn cpu_and_the_first_gpu_parse_and_cpu_predicts() {
    assert_eq!(parse_device("cpu").expect("cpu"), JobDevice::Cpu);
    assert_eq!(parse_device("cuda").expect("cuda"), JobDevice::Cuda);
    assert_eq!(parse_device("cuda:0").expect("cuda:0"), JobDevice::Cuda);
    let dir = tempfile::tempdir().expect("tempdir");
    let input = dir.path().join("in.jsonl");
    std::fs::write(&input, "{\"text\": \"a short input\"}\n").expect("write inputs");
    let mut rows = Vec::new();
    predict(&options(&input, JobDevice::Cpu), &mut |v| rows.push(v)).expect("predict on cpu");
    assert_eq!(rows.len(), 1);
}

/// Without a usable GPU, `--device cuda` is an error rather than a run on the CPU.
#[test]
fn cuda_without_a_gpu_is_an_error_not_a_cpu_run() {
    if etagrid_train::device::init_cuda() {
        return; // a GPU machine: cuda is usable
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let input = dir.path().join("in.jsonl");
    std::fs::write(&input, "{\"text\": \"a short input\"}\n").expect("write inputs");
    let mut rows = Vec::new();
    let err =
        predict(&options(&input, JobDevice::Cuda), &mut |v| rows.push(v)).expect_err("no GPU here");
    assert!(rows.is_empty() && err.to_string().contains("CUDA"), "{err}");
}
