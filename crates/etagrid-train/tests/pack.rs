//! Packed cells: K grid cells trained in one worker on one frozen base end with the same numbers
//! as the same cells trained one by one (CPU, fp32), a diverging cell included.
//!
//! The model is the real all-MiniLM-L6-v2 (set up by scripts/setup.sh) with its own dropout (0.1)
//! on: a cell's masks are a function of its seed, the step and the site, not of its pack or its
//! place in it (`etagrid_train::dropout`), and on the CPU the batch of a pack with two seeds is
//! padded to other lengths than a lone cell's, which the masks must not see either. The data are
//! the first rows of the real TREC set.

use etagrid_spec::protocol::{JobDevice, PackedCell, Segment, WorkerEvent, WorkerJob};
use etagrid_spec::{CellId, SweepSpec};
use etagrid_train::dropout::AttentionDropout;
use etagrid_train::{run_job, run_pack, JobOutcome};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use tch::{Kind, Tensor};

/// libtorch's random generator is one per process and the tests of this file run as threads of
/// one process: a test seeding it (model initialisation, each dropout site) while another draws
/// from it would change the other's numbers. They take turns.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// MiniLM with its dropout set to `dropout`, and 96 train / 48 eval TREC questions.
fn inputs(dir: &Path, dropout: f64) -> (PathBuf, PathBuf, PathBuf) {
    let src = root().join("models/all-MiniLM-L6-v2");
    assert!(
        src.join("model.safetensors").exists(),
        "{} is missing: run scripts/setup.sh",
        src.display()
    );
    let model = dir.join(format!("minilm-dropout-{dropout}"));
    std::fs::create_dir_all(&model).expect("model dir");
    for f in ["model.safetensors", "tokenizer.json"] {
        std::os::unix::fs::symlink(src.join(f), model.join(f)).expect("link");
    }
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(src.join("config.json")).expect("config"))
            .expect("json");
    config["hidden_dropout_prob"] = dropout.into();
    config["attention_probs_dropout_prob"] = dropout.into();
    std::fs::write(model.join("config.json"), config.to_string()).expect("write config");
    let trec = std::fs::read_to_string(root().join("data/trec/train.csv")).expect("trec");
    let lines: Vec<&str> = trec.lines().collect();
    let train = dir.join("train.csv");
    let eval = dir.join("eval.csv");
    std::fs::write(&train, lines[..97].join("\n") + "\n").expect("train");
    std::fs::write(&eval, lines[..49].join("\n") + "\n").expect("eval");
    (model, train, eval)
}

/// The 4 cells: two seeds, different η_A/η_B, both init schemes, and one cell whose rates make
/// it diverge after its first steps; MiniLM's dropout on.
fn cells(dir: &Path) -> (SweepSpec, Vec<PackedCell>) {
    cells_with_dropout(dir, 0.1)
}

fn cells_with_dropout(dir: &Path, dropout: f64) -> (SweepSpec, Vec<PackedCell>) {
    let (model, train, eval) = inputs(dir, dropout);
    let toml = format!(
        r#"
name = "pack"
[model]
path = "{}"
[task]
train = "{}"
eval = "{}"
label_column = "coarse"
[lora]
rank = 4
alpha = 8
target_modules = ["query", "value"]
[train]
steps = 9
batch_size = 8
max_seq_len = 32
warmup_steps = 2
weight_decay = 0.01
log_every = 2
eval_every = 6
[grid]
lr_a = [1e-3]
lr_b = [1e-2]
seeds = [0]
"#,
        model.display(),
        train.display(),
        eval.display()
    );
    let path = dir.join("pack.toml");
    std::fs::write(&path, toml).expect("write sweep");
    let spec = SweepSpec::load(&path).expect("spec");
    let base = spec.cells().remove(0).config;
    let mut out = Vec::new();
    for (lr_a, lr_b, seed, init) in [
        (1e-3, 1e-2, 0, etagrid_spec::InitScheme::Lora),
        (3e-4, 5e-3, 1, etagrid_spec::InitScheme::Loraplus),
        (1e35, 1e37, 0, etagrid_spec::InitScheme::Lora),
        (2e-3, 2e-3, 1, etagrid_spec::InitScheme::Lora),
    ] {
        let mut config = base.clone();
        config.lr_a = lr_a;
        config.lr_b = lr_b;
        config.seed = seed;
        config.lora.init = init;
        let cell_id = config.id();
        out.push(PackedCell {
            out_dir: dir.join("cells").join(&cell_id.0),
            cell_id,
            config,
        });
    }
    (spec, out)
}

fn job(spec: &SweepSpec, cells: &[PackedCell], tag: &str) -> WorkerJob {
    let relocate = |c: &PackedCell| PackedCell {
        out_dir: c.out_dir.with_file_name(format!("{}-{tag}", c.cell_id)),
        ..c.clone()
    };
    let first = relocate(&cells[0]);
    WorkerJob {
        protocol: etagrid_spec::protocol::PROTOCOL_VERSION,
        sweep: spec.name.clone(),
        cell_id: first.cell_id,
        config: first.config,
        model_dir: spec.model.dir.clone(),
        out_dir: first.out_dir,
        device: JobDevice::Cpu,
        cuda_visible_devices: None,
        threads: 2,
        save_adapter: true,
        cache_dir: None,
        pack: cells[1..].iter().map(relocate).collect(),
        segment: None,
    }
}

/// Every tensor of a saved adapter.
fn adapter(dir: &Path) -> BTreeMap<String, Tensor> {
    Tensor::read_safetensors(dir.join("adapter/adapter_model.safetensors"))
        .expect("adapter")
        .into_iter()
        .collect()
}

fn rel(a: f64, b: f64) -> f64 {
    (a - b).abs() / a.abs().max(b.abs()).max(1e-12)
}

#[test]
fn packed_cells_end_with_the_numbers_they_get_alone() {
    let _serial = serial();
    packed_equals_alone();
}

/// The same on the GPU's path for long sequences: attention's dropout drawn by one fused call per
/// cell (`AttentionDropout::PerCell`; on the CPU only when asked for). On the CPU libtorch's
/// attention draws its dropout mask with `bernoulli_` over the probabilities' shape from the
/// generator the path seeded, which is what the explicit path draws, so a cell's run there is the
/// explicit path's up to rounding (on a GPU the fused kernels draw other masks).
#[test]
fn packed_cells_end_with_the_numbers_they_get_alone_with_fused_attention_per_cell() {
    let _serial = serial();
    struct Reset;
    impl Drop for Reset {
        fn drop(&mut self) {
            AttentionDropout::Auto.set();
        }
    }
    let _reset = Reset;
    AttentionDropout::Explicit.set();
    let explicit = packed_equals_alone();
    AttentionDropout::PerCell.set();
    let per_cell = packed_equals_alone();
    assert_eq!(explicit.len(), per_cell.len());
    for (i, (e, p)) in explicit.iter().zip(&per_cell).enumerate() {
        assert_eq!(e.len(), p.len(), "cell {i}");
        for ((se, le), (sp, lp)) in e.iter().zip(p) {
            assert_eq!(se, sp);
            assert!(rel(*le, *lp) <= 1e-5, "cell {i} step {se}: {le} vs {lp}");
        }
    }
    // Other kernels ran: the last bits differ somewhere.
    assert_ne!(explicit, per_cell, "the per-cell path was not taken");
}

/// Trains the 4 cells packed and one by one, checks they agree; returns each finished cell's
/// train and eval curve alone (eval steps + 1000).
fn packed_equals_alone() -> Vec<Vec<(u64, f64)>> {
    let d = tempfile::tempdir().expect("tempdir");
    let (spec, cells) = cells(d.path());
    let mut curves = Vec::new();

    let packed_job = job(&spec, &cells, "packed");
    let mut packed_events: BTreeMap<CellId, Vec<WorkerEvent>> = BTreeMap::new();
    let packed: BTreeMap<CellId, JobOutcome> = run_pack(&packed_job, &mut |c, e| {
        packed_events.entry(c.clone()).or_default().push(e)
    })
    .expect("pack")
    .into_iter()
    .collect();
    assert_eq!(packed.len(), 4);
    let mut worst = 0f64;

    for (i, c) in cells.iter().enumerate() {
        let alone_job = job(&spec, std::slice::from_ref(c), "alone");
        let mut alone_events = Vec::new();
        let alone = run_job(&alone_job, &mut |e| alone_events.push(e)).expect("alone");
        let in_pack = &packed[&c.cell_id];
        let pack_events = &packed_events[&c.cell_id];
        // A cell's own parameter counts, not the pack's.
        let started = |ev: &[WorkerEvent]| {
            ev.iter().find_map(|e| match e {
                WorkerEvent::Started {
                    trainable_params,
                    groups,
                    ..
                } => Some((
                    *trainable_params,
                    groups
                        .iter()
                        .map(|g| (g.name.clone(), g.lr, g.params))
                        .collect::<Vec<_>>(),
                )),
                _ => None,
            })
        };
        assert_eq!(
            started(&alone_events),
            started(pack_events),
            "cell {i}: started"
        );
        match (&alone, in_pack) {
            (JobOutcome::Finished(a), JobOutcome::Finished(p)) => {
                assert_eq!(p.pack_size, Some(4));
                assert_eq!(a.pack_size, None);
                let mut pairs = vec![
                    ("metric", a.metric, p.metric),
                    ("eval_loss", a.eval_loss, p.eval_loss),
                    ("train_loss", a.train_loss, p.train_loss),
                ];
                // Every other metric (accuracy, macro-F1, MCC), present in both.
                let names = |m: &etagrid_spec::protocol::Metrics| {
                    m.iter().map(|(k, _)| k.name()).collect::<Vec<_>>()
                };
                assert_eq!(names(&a.metrics), ["accuracy", "macro_f1", "mcc"]);
                assert_eq!(names(&a.metrics), names(&p.metrics));
                for ((m, x), (_, y)) in a.metrics.iter().zip(p.metrics.iter()) {
                    pairs.push((m.name(), x, y));
                }
                for (what, x, y) in pairs {
                    assert!(rel(x, y) <= 1e-5, "cell {i} {what}: alone {x}, packed {y}");
                }
                let (ta, tp) = (
                    adapter(&alone_job.out_dir),
                    adapter(&packed_job.cells()[i].out_dir),
                );
                assert_eq!(ta.keys().collect::<Vec<_>>(), tp.keys().collect::<Vec<_>>());
                // Relative error of each tensor as a whole, ‖Δ‖ / ‖x‖: a pack's GEMMs have other
                // shapes than a lone cell's, so the last bits of a few elements differ (AdamW can
                // magnify them where a moment nearly cancels), the tensors as a whole do not.
                for (name, x) in &ta {
                    let y = &tp[name];
                    let x = x.to_kind(Kind::Double);
                    let norm = x.norm().double_value(&[]).max(1e-12);
                    let diff = (&x - y.to_kind(Kind::Double)).norm().double_value(&[]);
                    worst = worst.max(diff / norm);
                    assert!(
                        diff / norm <= 1e-5,
                        "cell {i} {name}: ‖Δ‖ {diff} against ‖x‖ {norm}"
                    );
                }
                // Curves: the same train losses and evaluations at the same steps.
                let curve = |ev: &[WorkerEvent]| -> Vec<(u64, f64)> {
                    ev.iter()
                        .filter_map(|e| match e {
                            WorkerEvent::Train { step, loss, .. } => Some((*step, *loss)),
                            WorkerEvent::Eval { step, loss, .. } => Some((*step + 1000, *loss)),
                            _ => None,
                        })
                        .collect()
                };
                let (ca, cp) = (curve(&alone_events), curve(pack_events));
                assert_eq!(ca.len(), cp.len(), "cell {i}: {ca:?} vs {cp:?}");
                assert!(ca.len() >= 4, "train and eval points: {ca:?}");
                curves.push(ca.clone());
                for ((sa, la), (sp, lp)) in ca.iter().zip(&cp) {
                    assert_eq!(sa, sp);
                    assert!(rel(*la, *lp) <= 1e-5, "cell {i} step {sa}: {la} vs {lp}");
                }
                assert!(packed_job.cells()[i].out_dir.join("labels.json").exists());
            }
            (JobOutcome::Diverged { step: sa, .. }, JobOutcome::Diverged { step: sp, .. }) => {
                assert_eq!(i, 2, "only the cell with huge rates diverges");
                assert_eq!(sa, sp, "diverged at the same step");
                assert!(*sa > 1 && *sa < 9, "mid-run: step {sa}");
                // Its share of the worker's device time so far comes with it (the store adds it
                // to the cell's device seconds, as for a finished cell).
                assert!(
                    matches!(
                        pack_events.last(),
                        Some(WorkerEvent::Diverged { device_s: Some(s), .. }) if *s > 0.0
                    ),
                    "{:?}",
                    pack_events.last()
                );
                assert!(!packed_job.cells()[i]
                    .out_dir
                    .join("adapter/adapter_model.safetensors")
                    .exists());
            }
            other => panic!("cell {i}: alone and packed differ: {other:?}"),
        }
    }
    assert!(matches!(
        packed[&cells[2].cell_id],
        JobOutcome::Diverged { .. }
    ));
    eprintln!("largest relative difference of a saved tensor, packed vs alone: {worst:.2e}");
    curves
}

#[test]
fn cells_that_differ_in_more_than_rates_seed_and_init_are_not_packed() {
    let _serial = serial();
    let d = tempfile::tempdir().expect("tempdir");
    let (spec, mut cells) = cells(d.path());
    cells[1].config.train.batch_size = 4;
    let err = run_pack(&job(&spec, &cells[..2], "bad"), &mut |_, _| {}).expect_err("an error");
    assert!(
        err.to_string().contains("cannot share a frozen base"),
        "{err}"
    );
}

/// A train or eval point of a cell's events, as (kind, step, loss).
fn curve_points(ev: &[WorkerEvent]) -> Vec<(&'static str, u64, f64)> {
    ev.iter()
        .filter_map(|e| match e {
            WorkerEvent::Train { step, loss, .. } => Some(("train", *step, *loss)),
            WorkerEvent::Eval { step, loss, .. } => Some(("eval", *step, *loss)),
            _ => None,
        })
        .collect()
}

/// Successive halving's resumable cells: a pack paused at 1/3 and 2/3 of its budget and resumed
/// from its checkpoints ends with the numbers of the same pack trained without a stop — with
/// MiniLM's own dropout (0.1) on, so the dropout masks and the batch order must be restored too,
/// not only the adapters, head and AdamW moments. The survivors re-pack as in a halving run:
/// the second segment trains two of the three cells in the other order, the third one cell.
#[test]
fn a_pack_paused_at_rungs_and_resumed_ends_as_one_uninterrupted_run() {
    let _serial = serial();
    let d = tempfile::tempdir().expect("tempdir");
    let (spec, mut cells) = cells_with_dropout(d.path(), 0.1);
    cells.remove(2); // the diverging one: a halving run never resumes a diverged cell
    let whole_job = job(&spec, &cells, "whole");
    let mut whole_events: BTreeMap<CellId, Vec<WorkerEvent>> = BTreeMap::new();
    let whole: BTreeMap<CellId, JobOutcome> = run_pack(&whole_job, &mut |c, e| {
        whole_events.entry(c.clone()).or_default().push(e)
    })
    .expect("uninterrupted")
    .into_iter()
    .collect();

    let mut seg_events: BTreeMap<CellId, Vec<WorkerEvent>> = BTreeMap::new();
    let mut outcomes: BTreeMap<CellId, JobOutcome> = BTreeMap::new();
    let survivors: [Vec<usize>; 3] = [vec![0, 1, 2], vec![2, 0], vec![0]];
    let segments = [
        (None, Some(1.0 / 3.0)),
        (Some(1.0 / 3.0), Some(2.0 / 3.0)),
        (Some(2.0 / 3.0), None),
    ];
    for (n, (resume_from, pause_at)) in segments.into_iter().enumerate() {
        let pack: Vec<PackedCell> = survivors[n].iter().map(|&i| cells[i].clone()).collect();
        let mut seg_job = job(&spec, &pack, "segments");
        seg_job.segment = Some(Segment {
            resume_from,
            pause_at,
        });
        let out = run_pack(&seg_job, &mut |c, e| {
            seg_events.entry(c.clone()).or_default().push(e)
        })
        .expect("segment");
        for (i, (c, (id, o))) in seg_job.cells().iter().zip(out).enumerate() {
            if n < 2 {
                let JobOutcome::Paused(r) = &o else {
                    panic!("segment {n} cell {i}: {o:?}")
                };
                assert_eq!(r.steps, 3 * (n as u64 + 1), "paused at the rung's step");
                assert!(c.out_dir.join(format!("checkpoint-{}", r.steps)).is_dir());
                assert!(
                    !c.out_dir.join("adapter").exists(),
                    "no adapter before the end"
                );
            }
            if n == 2 {
                // The checkpoint of rung 1 is gone once rung 2's is resumed from.
                assert!(!c.out_dir.join("checkpoint-3").exists());
                assert!(c.out_dir.join("checkpoint-6").is_dir());
            }
            outcomes.insert(id, o);
        }
    }
    let seg_job = job(&spec, &cells, "segments");
    let mut worst = 0f64;

    for (i, c) in cells.iter().enumerate() {
        // Where the cell stopped: the end (cell 0), step 6 (cell 2), step 3 (cell 1).
        let stop = match i {
            0 => 9,
            2 => 6,
            _ => 3,
        };
        if stop == 9 {
            let (JobOutcome::Finished(a), JobOutcome::Finished(b)) =
                (&whole[&c.cell_id], &outcomes[&c.cell_id])
            else {
                panic!(
                    "cell {i}: {:?} / {:?}",
                    whole[&c.cell_id], outcomes[&c.cell_id]
                );
            };
            let mut pairs = vec![
                ("metric", a.metric, b.metric),
                ("eval_loss", a.eval_loss, b.eval_loss),
                ("train_loss", a.train_loss, b.train_loss),
            ];
            for ((m, x), (_, y)) in a.metrics.iter().zip(b.metrics.iter()) {
                pairs.push((m.name(), x, y));
            }
            for (what, x, y) in pairs {
                worst = worst.max(rel(x, y));
                assert!(rel(x, y) <= 1e-6, "cell {i} {what}: whole {x}, resumed {y}");
            }
            let (ta, tb) = (
                adapter(&whole_job.cells()[i].out_dir),
                adapter(&seg_job.cells()[i].out_dir),
            );
            assert_eq!(ta.keys().collect::<Vec<_>>(), tb.keys().collect::<Vec<_>>());
            for (name, x) in &ta {
                let x = x.to_kind(Kind::Double);
                let norm = x.norm().double_value(&[]).max(1e-12);
                let diff = (&x - tb[name].to_kind(Kind::Double))
                    .norm()
                    .double_value(&[]);
                worst = worst.max(diff / norm);
                assert!(
                    diff / norm <= 1e-6,
                    "cell {i} {name}: ‖Δ‖ {diff} against ‖x‖ {norm}"
                );
            }
        }
        // The same curve up to where the cell stopped: every train-loss point (one spans the
        // pause at step 3) and evaluation; the rung evaluations at 3 (and 6) are extra.
        let ca: Vec<_> = curve_points(&whole_events[&c.cell_id])
            .into_iter()
            .filter(|p| p.1 <= stop)
            .collect();
        let cb: Vec<_> = curve_points(&seg_events[&c.cell_id])
            .into_iter()
            .filter(|p| (p.0, p.1) != ("eval", 3) && !(p.0 == "eval" && p.1 == 6 && stop == 6))
            .collect();
        if stop == 9 {
            assert_eq!(
                ca.iter().filter(|p| p.0 == "eval").count(),
                2,
                "evaluations at step 6 and at the end: {ca:?}"
            );
        }
        let ca: Vec<_> = ca
            .into_iter()
            .filter(|p| !(p.0 == "eval" && p.1 == 6 && stop == 6))
            .collect();
        assert_eq!(
            ca.iter().map(|p| (p.0, p.1)).collect::<Vec<_>>(),
            cb.iter().map(|p| (p.0, p.1)).collect::<Vec<_>>(),
            "cell {i}: the same points"
        );
        for (x, y) in ca.iter().zip(&cb) {
            worst = worst.max(rel(x.2, y.2));
            assert!(rel(x.2, y.2) <= 1e-6, "cell {i} {x:?} vs {y:?}");
        }
    }
    eprintln!("largest relative difference, resumed vs uninterrupted: {worst:.2e}");
}

#[test]
fn a_segment_whose_checkpoint_is_gone_fails_naming_the_cell_and_the_step() {
    let _serial = serial();
    let d = tempfile::tempdir().expect("tempdir");
    let (spec, cells) = cells(d.path());
    let mut j = job(&spec, &cells[..1], "lost");
    j.segment = Some(Segment {
        resume_from: Some(1.0 / 3.0),
        pause_at: None,
    });
    let err = run_pack(&j, &mut |_, _| {}).expect_err("no checkpoint");
    let msg = err.to_string();
    assert!(
        msg.contains(&cells[0].cell_id.to_string())
            && msg.contains("step 3")
            && msg.contains("checkpoint-3"),
        "{msg}"
    );
}
