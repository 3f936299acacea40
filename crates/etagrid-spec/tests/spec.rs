//! The sweep file through the public API: grid expansion, error messages, defaults, cell identity,
//! the LR schedule and the worker protocol.

use std::path::{Path, PathBuf};
use std::sync::LazyLock;

use etagrid_spec::protocol::{
    CellResult, JobDevice, Measure, Metrics, ParamGroupInfo, WorkerEvent, WorkerJob,
    PROTOCOL_VERSION,
};
use etagrid_spec::testing::{edit, SWEEP};
use etagrid_spec::{InitScheme, Schedule, SweepSpec, TrainLength};

/// Where the test sweeps pretend to live (parse never touches the file system).
const PATH: &str = "/projects/lora/sweeps/unit.toml";

/// A small valid sweep (the shared test sweep with a batch size and devices); tests edit it with
/// [`edit`].
static BASE: LazyLock<String> = LazyLock::new(|| {
    let text = edit(SWEEP, "steps = 20\n", "steps = 20\nbatch_size = 8\n");
    format!("{text}[resources]\ndevices = \"cpu\"\n")
});

fn parse_at(path: &str, text: &str) -> SweepSpec {
    SweepSpec::parse(Path::new(path), text).unwrap_or_else(|e| panic!("{e}\n--- sweep:\n{text}"))
}

fn parse(text: &str) -> SweepSpec {
    parse_at(PATH, text)
}

fn grid(lines: &str) -> String {
    edit(&BASE, "lr_a = [1e-4, 1e-3]\nlr_b = [1e-4, 1e-3]", lines)
}

fn ids(text: &str) -> Vec<String> {
    parse(text).cells().into_iter().map(|c| c.id.0).collect()
}

/// (η_A, η_B, seed) of every cell, in order.
fn triples(text: &str) -> Vec<(f64, f64, u64)> {
    parse(text)
        .cells()
        .iter()
        .map(|c| (c.config.lr_a, c.config.lr_b, c.config.seed))
        .collect()
}

/// The 1-based number of the first line of `text` that contains `needle`.
fn line_of(text: &str, needle: &str) -> usize {
    text.lines()
        .position(|l| l.contains(needle))
        .unwrap_or_else(|| panic!("no line contains {needle:?}"))
        + 1
}

/// The Display of the error `text` gives; panics if it parses.
fn error(text: &str) -> String {
    match SweepSpec::parse(Path::new(PATH), text) {
        Ok(_) => panic!("expected an error for:\n{text}"),
        Err(e) => e.to_string(),
    }
}

/// Checks that the message names the file, the line of `line_needle` and every one of `words`.
fn assert_error(text: &str, line_needle: &str, words: &[&str]) {
    let message = error(text);
    let line = line_of(text, line_needle);
    assert!(
        message.contains(PATH),
        "message does not name the file:\n{message}"
    );
    // Validation errors read `path:LINE: ...`, toml's own `... at line LINE, column C`.
    let has_line = message.contains(&format!("{PATH}:{line}:"))
        || message.contains(&format!("at line {line},"));
    assert!(has_line, "message does not give line {line}:\n{message}");
    for w in words {
        assert!(
            message.contains(w),
            "message does not mention {w:?}:\n{message}"
        );
    }
}

// ---------------------------------------------------------------- grid expansion

#[test]
fn list_by_list_is_the_cartesian_product_lr_a_outer_lr_b_inner() {
    let text = grid("lr_a = [1e-4, 1e-3]\nlr_b = [1e-5, 2e-5, 3e-5]");
    assert_eq!(
        triples(&text),
        vec![
            (1e-4, 1e-5, 0),
            (1e-4, 2e-5, 0),
            (1e-4, 3e-5, 0),
            (1e-3, 1e-5, 0),
            (1e-3, 2e-5, 0),
            (1e-3, 3e-5, 0),
        ]
    );
}

#[test]
fn seeds_are_the_innermost_loop_and_multiply_the_cells() {
    let text = grid("lr_a = [1e-4, 1e-3]\nlr_b = [1e-5]\nseeds = [7, 3]");
    assert_eq!(
        triples(&text),
        vec![
            (1e-4, 1e-5, 7),
            (1e-4, 1e-5, 3),
            (1e-3, 1e-5, 7),
            (1e-3, 1e-5, 3)
        ]
    );
}

#[test]
fn seeds_default_to_zero_only() {
    let spec = parse(&BASE);
    assert_eq!(spec.seeds, vec![0]);
    assert!(spec.cells().iter().all(|c| c.config.seed == 0));
    assert_eq!(spec.cells().len(), 4);
}

#[test]
fn log2_range_expands_to_every_integer_exponent() {
    let text = grid("lr_a = { log2 = [-3, 0] }\nlr_b = [1e-3]");
    let lr_a: Vec<f64> = parse(&text).points.iter().map(|p| p.0).collect();
    assert_eq!(lr_a, vec![0.125, 0.25, 0.5, 1.0]);
}

#[test]
fn log10_range_with_half_step_gives_half_decades_rounded_to_ten_digits() {
    let text = grid("lr_a = [1e-3]\nlr_b = { log10 = [-4, -2], step = 0.5 }");
    let lr_b: Vec<f64> = parse(&text).points.iter().map(|p| p.1).collect();
    assert_eq!(lr_b, vec![1e-4, 3.16227766e-4, 1e-3, 3.16227766e-3, 1e-2]);
}

#[test]
fn ratio_axis_sets_lr_b_to_lambda_times_lr_a() {
    let text = grid("lr_a = [1e-4, 1e-3]\nratio = { log2 = [0, 4] }");
    // λ·η_A is rounded to 10 significant digits, so η_B is exactly the decimal value.
    assert_eq!(
        triples(&text),
        vec![
            (1e-4, 1e-4, 0),
            (1e-4, 2e-4, 0),
            (1e-4, 4e-4, 0),
            (1e-4, 8e-4, 0),
            (1e-4, 1.6e-3, 0),
            (1e-3, 1e-3, 0),
            (1e-3, 2e-3, 0),
            (1e-3, 4e-3, 0),
            (1e-3, 8e-3, 0),
            (1e-3, 1.6e-2, 0),
        ]
    );
}

#[test]
fn duplicate_grid_points_collapse_to_one_cell_with_contiguous_indices() {
    // 0.001 and 1e-3 are the same η_B: the grid has 4 points but 2 distinct configurations.
    let text = grid("lr_a = [1e-4, 1e-4]\nlr_b = [1e-3, 0.001]");
    assert_eq!(parse(&text).points.len(), 4);
    let cells = parse(&text).cells();
    assert_eq!(cells.len(), 1);

    let text = grid("lr_a = [1e-4, 1e-3]\nlr_b = [1e-3, 0.001, 1e-2]");
    let cells = parse(&text).cells();
    let got: Vec<(f64, f64)> = cells
        .iter()
        .map(|c| (c.config.lr_a, c.config.lr_b))
        .collect();
    assert_eq!(
        got,
        vec![(1e-4, 1e-3), (1e-4, 1e-2), (1e-3, 1e-3), (1e-3, 1e-2)]
    );
    let indices: Vec<usize> = cells.iter().map(|c| c.index).collect();
    assert_eq!(indices, vec![0, 1, 2, 3]);
}

#[test]
fn integer_and_float_list_entries_are_the_same_value() {
    let ints = triples(&grid("lr_a = [1, 2]\nlr_b = [1]"));
    let floats = triples(&grid("lr_a = [1.0, 2.0]\nlr_b = [1.0]"));
    assert_eq!(ints, floats);
    assert_eq!(ints, vec![(1.0, 1.0, 0), (2.0, 1.0, 0)]);
}

// ---------------------------------------------------------------- errors

#[test]
fn unknown_key_is_reported_with_its_name_and_line() {
    let text = edit(&BASE, "steps = 20\n", "steps = 20\nlerning_rate = 1\n");
    assert_error(&text, "lerning_rate", &["lerning_rate", "unknown field"]);
}

#[test]
fn unknown_top_level_section_is_reported_with_its_name() {
    let text = format!("{}\n[optimiser]\nbetas = [0.9, 0.999]\n", *BASE);
    assert_error(&text, "[optimiser]", &["optimiser"]);
}

#[test]
fn wrong_type_is_reported_with_the_key_and_line() {
    let text = edit(&BASE, "batch_size = 8", "batch_size = \"32\"");
    assert_error(
        &text,
        "batch_size",
        &["batch_size", "invalid type", "string"],
    );
}

#[test]
fn empty_lr_list_is_reported_as_empty() {
    let text = grid("lr_a = []\nlr_b = [1e-3]");
    assert_error(&text, "lr_a = []", &["`grid.lr_a`", "empty"]);
}

#[test]
fn descending_log_range_is_reported_as_empty() {
    let text = grid("lr_a = [1e-3]\nlr_b = { log2 = [0, -3] }");
    assert_error(&text, "log2 = [0, -3]", &["`grid.lr_b`", "empty"]);
}

#[test]
fn range_with_too_many_or_non_finite_exponents_is_an_error() {
    for (range, why) in [
        ("{ log2 = [0, 20000] }", "at most 10000"),
        ("{ log10 = [0, 1e30] }", "at most 10000"),
        ("{ log2 = [-8, 0], step = 1e-300 }", "at most 10000"),
        ("{ log2 = [0, inf] }", "finite"),
        ("{ log2 = [nan, 0] }", "finite"),
    ] {
        let text = grid(&format!("lr_a = [1e-3]\nlr_b = {range}"));
        assert_error(&text, "lr_b =", &["`grid.lr_b`", why]);
    }
}

#[test]
fn giving_both_lr_b_and_ratio_is_an_error() {
    let text = grid("lr_a = [1e-3]\nlr_b = [1e-3]\nratio = [1, 2]");
    assert_error(
        &text,
        "ratio = [1, 2]",
        &["`grid.ratio`", "lr_b", "not both"],
    );
}

#[test]
fn giving_neither_lr_b_nor_ratio_is_an_error_at_the_grid_header() {
    let text = grid("lr_a = [1e-3]");
    assert_error(&text, "[grid]", &["`grid.lr_b`", "missing", "ratio"]);
}

#[test]
fn empty_seed_list_is_an_error() {
    let text = grid("lr_a = [1e-3]\nlr_b = [1e-3]\nseeds = []");
    assert_error(&text, "seeds = []", &["`grid.seeds`", "empty"]);
}

#[test]
fn repeated_seed_is_an_error() {
    let text = grid("lr_a = [1e-3]\nlr_b = [1e-3]\nseeds = [1, 2, 1]");
    assert_error(&text, "seeds = [1, 2, 1]", &["`grid.seeds`", "twice"]);
}

#[test]
fn negative_or_zero_learning_rate_is_an_error() {
    for (lines, needle, field) in [
        (
            "lr_a = [1e-3, -1e-4]\nlr_b = [1e-3]",
            "lr_a =",
            "`grid.lr_a`",
        ),
        ("lr_a = [1e-3]\nlr_b = [0]", "lr_b =", "`grid.lr_b`"),
        ("lr_a = [1e-3]\nratio = [-2]", "ratio =", "`grid.ratio`"),
    ] {
        assert_error(&grid(lines), needle, &[field, "positive"]);
    }
}

#[test]
fn unknown_init_scheme_is_an_error_naming_the_choices() {
    let text = format!("{}\n[lora]\ninit = \"gaussian\"\n", *BASE);
    assert_error(&text, "gaussian", &["`lora.init`", "gaussian", "loraplus"]);
}

#[test]
fn unknown_schedule_is_an_error_naming_the_choices() {
    let text = edit(&BASE, "steps = 20\n", "steps = 20\nschedule = \"step\"\n");
    assert_error(
        &text,
        "schedule =",
        &["`train.schedule`", "\"step\"", "cosine"],
    );
}

#[test]
fn steps_and_epochs_together_is_an_error_at_the_train_header() {
    let text = edit(&BASE, "steps = 20\n", "steps = 20\nepochs = 1.5\n");
    assert_error(&text, "[train]", &["steps", "epochs", "exactly one"]);
}

#[test]
fn neither_steps_nor_epochs_is_an_error_at_the_train_header() {
    let text = edit(&BASE, "steps = 20\n", "");
    assert_error(&text, "[train]", &["steps", "epochs", "exactly one"]);
}

#[test]
fn devices_gpu_is_an_error_naming_the_choices() {
    let text = edit(&BASE, "devices = \"cpu\"", "devices = \"gpu\"");
    assert_error(&text, "devices =", &["`resources.devices`", "auto", "cpu"]);
}

#[test]
fn zero_where_a_positive_count_is_needed_is_an_error() {
    for (from, to, field) in [
        ("batch_size = 8", "batch_size = 0", "`train.batch_size`"),
        ("steps = 20", "steps = 0", "`train.steps`"),
    ] {
        let text = edit(&BASE, from, to);
        assert_error(&text, to, &[field]);
    }
}

#[test]
fn toml_syntax_error_names_the_file_and_line() {
    let text = edit(&BASE, "batch_size = 8", "batch_size = ");
    assert_error(&text, "batch_size = ", &["TOML parse error"]);
}

#[test]
fn unreadable_file_names_the_path() {
    let dir = tempfile::tempdir().expect("temp dir");
    let missing = dir.path().join("nope.toml");
    let message = SweepSpec::load(&missing).expect_err("an error").to_string();
    assert!(
        message.contains(&missing.display().to_string()),
        "{message}"
    );
}

// ---------------------------------------------------------------- defaults

#[test]
fn omitted_lora_section_gives_rank_8_alpha_8_and_query_value() {
    let lora = parse(&BASE).lora;
    assert_eq!(lora.rank, 8);
    assert_eq!(lora.alpha, 8.0);
    assert_eq!(lora.dropout, 0.0);
    assert_eq!(
        lora.target_modules,
        etagrid_spec::TargetModules::list(&["query", "value"])
    );
    assert_eq!(lora.init, InitScheme::Lora);
    assert_eq!(lora.scaling(), 1.0);
}

#[test]
fn alpha_defaults_to_the_rank() {
    let text = format!("{}\n[lora]\nrank = 16\n", *BASE);
    let lora = parse(&text).lora;
    assert_eq!((lora.rank, lora.alpha), (16, 16.0));
}

#[test]
fn loraplus_init_is_accepted() {
    let text = format!("{}\n[lora]\ninit = \"loraplus\"\n", *BASE);
    assert_eq!(parse(&text).lora.init, InitScheme::Loraplus);
}

#[test]
fn train_defaults_are_linear_schedule_and_no_warmup() {
    let train = parse(&BASE).train;
    assert_eq!(train.length, TrainLength::Steps(20));
    assert_eq!(train.schedule, Schedule::Linear);
    assert_eq!(train.warmup_steps, 0);
    assert_eq!(train.max_seq_len, 128);
    assert_eq!(train.log_every, 10);
    assert_eq!(train.eval_every, 0);
}

#[test]
fn name_defaults_to_the_file_stem() {
    assert_eq!(parse(&BASE).name, "unit");
    let named = format!("name = \"lr-scan_2\"\n{}", *BASE);
    assert_eq!(parse(&named).name, "lr-scan_2");
}

#[test]
fn relative_model_and_data_paths_resolve_against_the_sweep_directory() {
    let spec = parse(&BASE);
    let dir = PathBuf::from("/projects/lora/sweeps");
    assert_eq!(spec.model.dir, dir.join("../models/tiny-bert"));
    assert_eq!(spec.task.train_file, dir.join("../data/train.csv"));
    assert_eq!(spec.task.eval_file, dir.join("../data/eval.csv"));
    // ... while the cells keep the paths as written.
    assert_eq!(spec.model.path, "../models/tiny-bert");
    assert_eq!(spec.task.train, "../data/train.csv");
}

#[test]
fn quickstart_sweep_parses_to_a_three_by_three_grid() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../sweeps/quickstart.toml");
    let spec = SweepSpec::load(&path).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(spec.name, "quickstart");
    assert_eq!(spec.cells().len(), 9);
}

// ---------------------------------------------------------------- cell identity

#[test]
fn same_text_parsed_twice_gives_the_same_ids() {
    assert_eq!(ids(&BASE), ids(&BASE));
}

#[test]
fn cell_ids_are_16_lowercase_hex_digits() {
    for id in ids(&BASE) {
        assert_eq!(id.len(), 16, "{id}");
        assert!(
            id.chars().all(|c| matches!(c, '0'..='9' | 'a'..='f')),
            "{id}"
        );
    }
}

#[test]
fn ids_are_distinct_within_a_grid() {
    let text = grid("lr_a = [1e-4, 1e-3]\nlr_b = [1e-4, 1e-3]\nseeds = [0, 1]");
    let mut ids = ids(&text);
    assert_eq!(ids.len(), 8);
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 8);
}

#[test]
fn layout_comments_resources_and_name_do_not_change_ids() {
    let reordered = r#"
[grid]
lr_b = [1e-4, 1e-3]
lr_a = [1e-4, 1e-3]

[train]
batch_size = 8
steps = 20

[task]
eval = "../data/eval.csv"
train = "../data/train.csv"

[model]
path = "../models/tiny-bert"
"#;
    let cases: Vec<(&str, String)> = vec![
        ("keys and sections reordered, [resources] dropped", reordered.to_owned()),
        ("comments and blank lines", BASE.replace('\n', "   # note\n\n")),
        ("inline tables instead of sections", {
            let t = edit(&BASE, "[model]\npath = \"../models/tiny-bert\"\n", "");
            format!("model = {{ path = \"../models/tiny-bert\" }}\n{t}")
        }),
        ("different resources", edit(&BASE, "devices = \"cpu\"", "devices = [0, 1]\ncells_per_device = 2\nthreads_per_cell = 3")),
        ("a name", format!("name = \"other\"\n{}", *BASE)),
        ("defaults written out", format!(
            "{}\n[lora]\nrank = 8\nalpha = 8\ndropout = 0.0\ntarget_modules = [\"query\", \"value\"]\ninit = \"lora\"\n",
            edit(&BASE, "steps = 20\n", "steps = 20\nschedule = \"linear\"\nwarmup_steps = 0\nmax_seq_len = 128\nlog_every = 10\n")
        )),
        ("learning rates written differently", grid("lr_a = [0.0001, 0.001]\nlr_b = [1.0e-4, 10e-4]")),
    ];
    let base = ids(&BASE);
    for (what, text) in cases {
        assert_eq!(ids(&text), base, "{what} changed the ids:\n{text}");
    }
}

#[test]
fn training_settings_seeds_learning_rates_and_paths_change_ids() {
    let cases: Vec<(&str, String)> = vec![
        ("steps", edit(&BASE, "steps = 20", "steps = 21")),
        (
            "batch size",
            edit(&BASE, "batch_size = 8", "batch_size = 16"),
        ),
        (
            "schedule",
            edit(&BASE, "steps = 20\n", "steps = 20\nschedule = \"cosine\"\n"),
        ),
        (
            "warm-up",
            edit(&BASE, "steps = 20\n", "steps = 20\nwarmup_steps = 2\n"),
        ),
        ("rank", format!("{}\n[lora]\nrank = 4\n", *BASE)),
        ("init", format!("{}\n[lora]\ninit = \"loraplus\"\n", *BASE)),
        (
            "metric",
            edit(&BASE, "[task]\n", "[task]\nmetric = \"eval_loss\"\n"),
        ),
        ("model path", edit(&BASE, "tiny-bert", "tiny-bert-v2")),
        (
            "train data path",
            edit(&BASE, "../data/train.csv", "../data/train2.csv"),
        ),
    ];
    let base = ids(&BASE);
    for (what, text) in cases {
        let changed = ids(&text);
        assert_eq!(changed.len(), base.len(), "{what}");
        for (a, b) in base.iter().zip(&changed) {
            assert_ne!(a, b, "changing the {what} kept id {a}");
        }
    }
}

#[test]
fn seed_changes_the_id() {
    let zero = ids(&grid("lr_a = [1e-3]\nlr_b = [1e-3]\nseeds = [0]"));
    let one = ids(&grid("lr_a = [1e-3]\nlr_b = [1e-3]\nseeds = [1]"));
    assert_ne!(zero, one);
}

#[test]
fn a_learning_rate_changes_only_its_own_cells_ids() {
    let before = ids(&grid("lr_a = [1e-4, 1e-3]\nlr_b = [1e-3]"));
    let after = ids(&grid("lr_a = [1e-4, 2e-3]\nlr_b = [1e-3]"));
    assert_eq!(before[0], after[0]);
    assert_ne!(before[1], after[1]);
}

#[test]
fn same_cell_from_lr_b_or_ratio_grid_has_the_same_id() {
    let by_lr_b = ids(&grid("lr_a = [1e-4]\nlr_b = [1.6e-3]"));
    let by_ratio = ids(&grid("lr_a = [1e-4]\nratio = [16]"));
    assert_eq!(by_lr_b, by_ratio);
}

#[test]
fn moving_the_sweep_to_another_directory_keeps_the_ids() {
    let mut loaded = Vec::new();
    for _ in 0..2 {
        let root = tempfile::tempdir().expect("temp dir");
        let file = root.path().join("sweeps").join("unit.toml");
        std::fs::create_dir_all(file.parent().expect("parent")).expect("mkdir");
        std::fs::write(&file, &*BASE).expect("write sweep");
        let spec = SweepSpec::load(&file).unwrap_or_else(|e| panic!("{e}"));
        assert!(spec.model.dir.starts_with(root.path()));
        loaded.push(spec);
    }
    assert_ne!(loaded[0].model.dir, loaded[1].model.dir);
    assert_ne!(loaded[0].task.train_file, loaded[1].task.train_file);
    let ids = |s: &SweepSpec| s.cells().into_iter().map(|c| c.id).collect::<Vec<_>>();
    assert_eq!(ids(&loaded[0]), ids(&loaded[1]));
}

#[test]
fn cell_id_of_a_fixed_config_is_pinned() {
    // GOLDEN. The id is the key of every stored result: if this fails, every cell already in
    // every user's store would be orphaned (rerun from scratch). Do not update the string to make
    // the test pass; if the hashed form must change, bump HASH_VERSION in cell.rs on purpose and
    // then paste the new id here.
    let text = r#"
[model]
path = "models/m"
[task]
train = "train.csv"
eval = "eval.csv"
[train]
steps = 10
[grid]
lr_a = [1e-4]
lr_b = [2e-3]
seeds = [1]
"#;
    let cells = parse(text).cells();
    assert_eq!(cells.len(), 1);
    assert_eq!(cells[0].id.0, "e5064093e17de633");
}

#[test]
fn cell_id_does_not_depend_on_the_resolved_paths() {
    let spec = parse(&BASE);
    let cell = &spec.cells()[0];
    let mut moved = cell.config.clone();
    moved.task.train_file = PathBuf::from("/elsewhere/train.csv");
    moved.task.eval_file = PathBuf::from("/elsewhere/eval.csv");
    assert_eq!(moved.id(), cell.id);
    let mut other = cell.config.clone();
    other.task.train = "elsewhere/train.csv".into();
    assert_ne!(other.id(), cell.id);
}

// ---------------------------------------------------------------- schedule

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-12
}

#[test]
fn warmup_ramps_linearly_from_zero_for_every_schedule() {
    for s in [Schedule::Constant, Schedule::Linear, Schedule::Cosine] {
        for (step, want) in [(0, 0.0), (5, 0.5), (9, 0.9)] {
            let got = s.multiplier(step, 10, 110);
            assert!(close(got, want), "{s:?} step {step}: {got} != {want}");
        }
        assert!(close(s.multiplier(10, 10, 110), 1.0), "{s:?} after warm-up");
    }
}

#[test]
fn linear_decays_to_zero_at_total() {
    for (step, want) in [(10, 1.0), (35, 0.75), (60, 0.5), (110, 0.0), (500, 0.0)] {
        let got = Schedule::Linear.multiplier(step, 10, 110);
        assert!(close(got, want), "step {step}: {got} != {want}");
    }
}

#[test]
fn constant_stays_one_after_warmup() {
    for step in [0, 1, 50, 99, 100, 1000] {
        assert_eq!(
            Schedule::Constant.multiplier(step, 0, 100),
            1.0,
            "step {step}"
        );
    }
}

#[test]
fn cosine_is_half_at_the_middle_of_the_decay_and_zero_at_total() {
    for (step, want) in [(10, 1.0), (60, 0.5), (110, 0.0)] {
        let got = Schedule::Cosine.multiplier(step, 10, 110);
        assert!(close(got, want), "step {step}: {got} != {want}");
    }
}

// ---------------------------------------------------------------- protocol

fn all_events() -> Vec<(WorkerEvent, &'static str, bool)> {
    vec![
        (
            WorkerEvent::Started {
                device: "cpu".into(),
                total_steps: 100,
                train_examples: 640,
                eval_examples: 64,
                trainable_params: 73_728,
                groups: vec![ParamGroupInfo {
                    name: "lora_b".into(),
                    lr: 1.6e-3,
                    weight_decay: 0.0,
                    members: 12,
                    params: 36_864,
                }],
            },
            "started",
            false,
        ),
        (
            WorkerEvent::Train {
                step: 10,
                total_steps: 100,
                loss: 0.69,
                lr_a: 1e-4,
                lr_b: 1.6e-3,
            },
            "train",
            false,
        ),
        (
            WorkerEvent::Eval {
                step: 100,
                loss: 0.41,
                metrics: Metrics::new()
                    .with(Measure::Accuracy, 0.83)
                    .with(Measure::MacroF1, 0.82)
                    .with(Measure::Mcc, 0.66),
            },
            "eval",
            false,
        ),
        (
            WorkerEvent::Finished {
                result: CellResult {
                    metric: 0.83,
                    eval_loss: 0.41,
                    metrics: Metrics::new()
                        .with(Measure::Accuracy, 0.83)
                        .with(Measure::MacroF1, 0.82)
                        .with(Measure::Mcc, 0.66),
                    train_loss: 0.38,
                    steps: 100,
                    wall_s: 12.5,
                    train_samples_per_s: 51.2,
                    pack_size: None,
                },
            },
            "finished",
            true,
        ),
        (
            WorkerEvent::Diverged {
                step: 7,
                loss: f64::INFINITY,
                device_s: Some(1.5),
            },
            "diverged",
            true,
        ),
        (
            WorkerEvent::Failed {
                error: "out of memory".into(),
            },
            "failed",
            true,
        ),
    ]
}

#[test]
fn worker_events_are_tagged_with_a_snake_case_event_field() {
    for (event, tag, _) in all_events() {
        let json: serde_json::Value = serde_json::to_value(&event).expect("serialize");
        assert_eq!(json["event"], tag, "{json}");
    }
}

#[test]
fn worker_events_round_trip_through_json_lines() {
    for (event, _, _) in all_events() {
        let line = serde_json::to_string(&event).expect("serialize");
        assert!(!line.contains('\n'), "{line}");
        let back: WorkerEvent = serde_json::from_str(&line).expect("deserialize");
        assert_eq!(back, event);
    }
}

#[test]
fn worker_event_is_read_from_the_documented_json() {
    let line =
        r#"{"event":"train","step":10,"total_steps":100,"loss":0.5,"lr_a":0.0001,"lr_b":0.0016}"#;
    let event: WorkerEvent = serde_json::from_str(line).expect("deserialize");
    assert_eq!(
        event,
        WorkerEvent::Train {
            step: 10,
            total_steps: 100,
            loss: 0.5,
            lr_a: 1e-4,
            lr_b: 1.6e-3
        }
    );
}

#[test]
fn diverged_event_keeps_a_nan_or_infinite_loss_through_json() {
    for loss in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
        let ev = WorkerEvent::Diverged {
            step: 3,
            loss,
            device_s: Some(0.25),
        };
        let line = serde_json::to_string(&ev).expect("serialize");
        match serde_json::from_str::<WorkerEvent>(&line) {
            Ok(WorkerEvent::Diverged {
                step: 3,
                loss: back,
                device_s: Some(0.25),
            }) => {
                assert!(
                    back.is_nan() == loss.is_nan() && (loss.is_nan() || back == loss),
                    "{line}"
                );
            }
            other => panic!("{line} read back as {other:?}"),
        }
    }
}

#[test]
fn metrics_are_plain_keys_of_the_line_and_protocol_1_lines_read_the_same() {
    // A line of a protocol-1 worker: named fields, `null` for an F1 it did not measure, and a
    // `labels` list in `started` that the map era dropped.
    let eval = r#"{"event":"eval","step":5,"loss":0.4,"accuracy":0.8,"macro_f1":null,"mcc":0.5}"#;
    let want = WorkerEvent::Eval {
        step: 5,
        loss: 0.4,
        metrics: Metrics::new()
            .with(Measure::Accuracy, 0.8)
            .with(Measure::Mcc, 0.5),
    };
    assert_eq!(
        serde_json::from_str::<WorkerEvent>(eval).expect("eval"),
        want
    );
    let line = serde_json::to_value(&want).expect("serialize");
    assert_eq!(line["accuracy"], 0.8, "{line}");
    assert!(line.get("metrics").is_none(), "flattened: {line}");
    let started = r#"{"event":"started","device":"cpu","total_steps":1,"train_examples":2,
        "eval_examples":2,"trainable_params":3,"groups":[],"labels":["a","b"]}"#;
    assert!(serde_json::from_str::<WorkerEvent>(started).is_ok());
    // A key this build does not know (a newer worker's) is skipped, not an error.
    let newer = r#"{"event":"eval","step":5,"loss":0.4,"accuracy":0.8,"bleu":31.2}"#;
    match serde_json::from_str::<WorkerEvent>(newer).expect("newer") {
        WorkerEvent::Eval { metrics, .. } => {
            assert_eq!(metrics, Metrics::new().with(Measure::Accuracy, 0.8))
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_sweeps_metric_is_read_from_the_map_by_name_and_eval_loss_from_the_loss() {
    use etagrid_spec::spec::Metric;
    // Every metric a sweep can rank by, but the loss, is a key of the map.
    for m in Metric::ALL {
        assert_eq!(
            Measure::from_name(m.name()).is_some(),
            m != Metric::EvalLoss,
            "{}",
            m.name()
        );
    }
    let lm = Metrics::new()
        .with(Measure::Perplexity, 7.5)
        .with(Measure::TokenAccuracy, 0.25);
    assert_eq!(lm.value_of(Metric::Perplexity, 2.0), 7.5);
    assert_eq!(lm.value_of(Metric::EvalLoss, 2.0), 2.0);
    assert!(
        lm.value_of(Metric::McAccuracy, 2.0).is_nan(),
        "no mc_eval: NaN"
    );
    assert!(lm.value_of(Metric::Accuracy, 2.0).is_nan());
}

#[test]
fn causal_lm_metrics_travel_in_the_map_and_an_infinite_perplexity_survives_json() {
    let result = CellResult {
        metric: f64::INFINITY,
        eval_loss: 800.0,
        metrics: Metrics::new()
            .with(Measure::Perplexity, f64::INFINITY)
            .with(Measure::TokenAccuracy, 0.25)
            .with(Measure::McAccuracy, 0.5),
        train_loss: 3.0,
        steps: 10,
        wall_s: 1.0,
        train_samples_per_s: 8.0,
        pack_size: None,
    };
    let line = serde_json::to_string(&WorkerEvent::Finished {
        result: CellResult {
            metric: 7.0,
            ..result.clone()
        },
    })
    .expect("serialize");
    assert!(line.contains(r#""perplexity":"inf""#), "{line}");
    match serde_json::from_str::<WorkerEvent>(&line).expect("read back") {
        WorkerEvent::Finished { result: back } => {
            assert_eq!(back.metrics, result.metrics);
            assert_eq!(back.metrics.get(Measure::Accuracy), None);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_job_of_a_newer_protocol_is_refused_by_name_and_an_old_one_reads_as_version_1() {
    let spec = parse(&BASE);
    let cell = spec.cells().remove(0);
    let job = WorkerJob {
        protocol: PROTOCOL_VERSION,
        sweep: spec.name.clone(),
        cell_id: cell.id,
        config: cell.config,
        model_dir: "m".into(),
        out_dir: "o".into(),
        device: JobDevice::Cpu,
        cuda_visible_devices: None,
        threads: 1,
        save_adapter: true,
        cache_dir: None,
        pack: Vec::new(),
        segment: None,
    };
    assert_eq!(job.check_protocol(), Ok(()));
    let mut v = serde_json::to_value(&job).expect("serialize");
    v.as_object_mut().expect("object").remove("protocol");
    let old: WorkerJob = serde_json::from_value(v.clone()).expect("a job file without a version");
    assert_eq!(old.protocol, 1);
    assert_eq!(old.check_protocol(), Ok(()));
    v["protocol"] = (PROTOCOL_VERSION + 1).into();
    let newer: WorkerJob = serde_json::from_value(v).expect("reads");
    let err = newer.check_protocol().expect_err("newer");
    assert!(
        err.contains(&format!("protocol {}", PROTOCOL_VERSION + 1))
            && err.contains("same etagrid build"),
        "{err}"
    );
}

#[test]
fn diverged_event_with_a_null_loss_reads_as_nan() {
    let line = r#"{"event":"diverged","step":3,"loss":null}"#;
    match serde_json::from_str::<WorkerEvent>(line) {
        // An older line: no device time.
        Ok(WorkerEvent::Diverged {
            step: 3,
            loss,
            device_s: None,
        }) => assert!(loss.is_nan()),
        other => panic!("read back as {other:?}"),
    }
}

#[test]
fn is_terminal_exactly_for_finished_diverged_and_failed() {
    for (event, tag, terminal) in all_events() {
        assert_eq!(event.is_terminal(), terminal, "{tag}");
    }
}

// ---------------------------------------------------------------- [task] split and metric

fn with_split(split: &str) -> String {
    edit(&BASE, "eval = \"../data/eval.csv\"\n", split)
}

#[test]
fn a_split_takes_the_eval_set_out_of_the_train_file() {
    let spec = parse(&with_split("split = { eval_fraction = 0.25, seed = 3 }\n"));
    let split = spec.task.split.expect("split");
    assert_eq!((split.eval_fraction, split.seed), (0.25, 3));
    assert_eq!(spec.task.eval_file, spec.task.train_file);
    assert_eq!(spec.task.eval, "../data/train.csv");
}

#[test]
fn a_split_seed_defaults_to_zero() {
    let spec = parse(&with_split("split = { eval_fraction = 0.2 }\n"));
    assert_eq!(spec.task.split.expect("split").seed, 0);
}

#[test]
fn a_split_changes_the_cell_ids_and_so_does_its_seed() {
    let a = ids(&with_split("split = { eval_fraction = 0.2, seed = 0 }\n"));
    let b = ids(&with_split("split = { eval_fraction = 0.2, seed = 1 }\n"));
    assert_ne!(a, ids(&BASE));
    assert_ne!(a, b);
}

#[test]
fn giving_both_eval_and_split_is_an_error_at_the_split() {
    let text = edit(
        &BASE,
        "eval = \"../data/eval.csv\"\n",
        "eval = \"../data/eval.csv\"\nsplit = { eval_fraction = 0.2 }\n",
    );
    assert_error(&text, "split =", &["task.split", "not both"]);
}

#[test]
fn giving_neither_eval_nor_split_is_an_error_at_the_task_header() {
    assert_error(&with_split(""), "[task]", &["task.eval", "split = {"]);
}

#[test]
fn a_split_fraction_outside_0_and_1_is_an_error() {
    for f in ["0.0", "1.0", "1.5", "-0.2"] {
        let text = with_split(&format!("split = {{ eval_fraction = {f} }}\n"));
        assert_error(
            &text,
            "split =",
            &["task.split.eval_fraction", "between 0 and 1"],
        );
    }
}

#[test]
fn every_metric_name_parses_and_knows_which_way_is_better() {
    use etagrid_spec::spec::Metric;
    for (name, metric, higher) in [
        ("accuracy", Metric::Accuracy, true),
        ("macro_f1", Metric::MacroF1, true),
        ("mcc", Metric::Mcc, true),
        ("eval_loss", Metric::EvalLoss, false),
    ] {
        let spec = parse(&edit(
            &BASE,
            "[task]\n",
            &format!("[task]\nmetric = \"{name}\"\n"),
        ));
        assert_eq!(spec.task.metric, metric);
        assert_eq!(metric.name(), name);
        assert_eq!(metric.higher_is_better(), higher, "{name}");
    }
}

#[test]
fn an_unknown_metric_lists_the_known_ones() {
    let text = edit(&BASE, "[task]\n", "[task]\nmetric = \"f1\"\n");
    assert_error(
        &text,
        "metric =",
        &[
            "task.metric",
            "\"accuracy\"",
            "\"macro_f1\"",
            "\"mcc\"",
            "\"eval_loss\"",
        ],
    );
}

// ---------------------------------------------------------------- issue 12: values that parse but cannot train

#[test]
fn negative_alpha_weight_decay_long_warmup_and_zero_threads_are_errors_naming_key_and_line() {
    let cases = [
        (
            edit(&BASE, "[train]", "[lora]\nalpha = -8\n[train]"),
            "alpha =",
            "`lora.alpha`",
        ),
        (
            edit(&BASE, "[train]", "[lora]\nalpha = 0\n[train]"),
            "alpha =",
            "`lora.alpha`",
        ),
        (
            edit(
                &BASE,
                "batch_size = 8",
                "batch_size = 8\nweight_decay = -0.01",
            ),
            "weight_decay =",
            "`train.weight_decay`",
        ),
        (
            edit(&BASE, "batch_size = 8", "batch_size = 8\nwarmup_steps = 21"),
            "warmup_steps =",
            "`train.warmup_steps`",
        ),
        (
            edit(
                &BASE,
                "devices = \"cpu\"",
                "devices = \"cpu\"\nthreads_per_cell = 0",
            ),
            "threads_per_cell =",
            "`resources.threads_per_cell`",
        ),
    ];
    for (text, needle, field) in &cases {
        assert_error(text, needle, &[field]);
    }
    // The limits themselves are fine: warm-up over every step, no weight decay, one thread.
    let ok = edit(
        &BASE,
        "batch_size = 8",
        "batch_size = 8\nwarmup_steps = 20\nweight_decay = 0.0",
    );
    let ok = edit(
        &ok,
        "devices = \"cpu\"",
        "devices = \"cpu\"\nthreads_per_cell = 1",
    );
    let spec = parse(&ok);
    assert_eq!(spec.train.warmup_steps, 20);
    assert_eq!(spec.threads_per_cell, Some(1));
}

/// A sweep on disk with its model and data files, for the content digest.
fn sweep_with_files(root: &Path) -> PathBuf {
    let model = root.join("models/tiny-bert");
    std::fs::create_dir_all(&model).expect("mkdir");
    for (f, text) in [
        ("config.json", "{\"model_type\": \"bert\"}"),
        ("tokenizer.json", "{}"),
        ("model.safetensors", "weights"),
    ] {
        std::fs::write(model.join(f), text).expect("write model file");
    }
    std::fs::create_dir_all(root.join("data")).expect("mkdir");
    std::fs::write(root.join("data/train.csv"), "text,label\na,x\nb,y\n").expect("write");
    std::fs::write(root.join("data/eval.csv"), "text,label\nc,x\n").expect("write");
    let sweep = root.join("sweeps/unit.toml");
    std::fs::create_dir_all(root.join("sweeps")).expect("mkdir");
    std::fs::write(&sweep, &*BASE).expect("write sweep");
    sweep
}

fn content_ids(sweep: &Path) -> Vec<String> {
    SweepSpec::load(sweep)
        .and_then(SweepSpec::with_inputs)
        .unwrap_or_else(|e| panic!("{e}"))
        .cells()
        .into_iter()
        .map(|c| c.id.0)
        .collect()
}

#[test]
fn cell_ids_change_with_the_content_of_every_data_and_model_file() {
    let root = tempfile::tempdir().expect("tempdir");
    let sweep = sweep_with_files(root.path());
    let before = content_ids(&sweep);
    // Without the digest the ids are the path-only (v1) ones, unchanged for old stores.
    let path_only = ids(&BASE);
    assert_ne!(before, path_only);
    assert_eq!(content_ids(&sweep), before, "same content, same ids");
    for f in [
        "data/train.csv",
        "data/eval.csv",
        "models/tiny-bert/config.json",
        "models/tiny-bert/tokenizer.json",
        "models/tiny-bert/model.safetensors",
    ] {
        let p = root.path().join(f);
        let old = std::fs::read(&p).expect("read");
        let mut new = old.clone();
        // One byte changed, same length (a relabelled row, a retrained checkpoint).
        let last = new.len() - 1;
        new[last] ^= 1;
        std::fs::write(&p, &new).expect("write");
        let changed = content_ids(&sweep);
        assert_eq!(changed.len(), before.len());
        for (a, b) in changed.iter().zip(&before) {
            assert_ne!(a, b, "editing {f} must change every cell id");
        }
        std::fs::write(&p, &old).expect("restore");
    }
    assert_eq!(
        content_ids(&sweep),
        before,
        "restored content, same ids again"
    );
}

#[test]
fn a_missing_input_file_is_an_error_naming_it() {
    let root = tempfile::tempdir().expect("tempdir");
    let sweep = sweep_with_files(root.path());
    std::fs::remove_file(root.path().join("models/tiny-bert/model.safetensors")).expect("rm");
    let e = SweepSpec::load(&sweep)
        .and_then(SweepSpec::with_inputs)
        .expect_err("missing weights")
        .to_string();
    assert!(e.contains("model.safetensors"), "{e}");
}

// ---------------------------------------------------------------- packed cells

#[test]
fn cells_per_worker_is_auto_by_default_and_takes_a_number_or_auto() {
    use etagrid_spec::PackSize;
    assert_eq!(parse(&BASE).cells_per_worker, PackSize::Auto);
    let with = |v: &str| {
        edit(
            &BASE,
            "devices = \"cpu\"",
            &format!("devices = \"cpu\"\ncells_per_worker = {v}"),
        )
    };
    assert_eq!(parse(&with("8")).cells_per_worker, PackSize::Fixed(8));
    assert_eq!(parse(&with("\"auto\"")).cells_per_worker, PackSize::Auto);
    for bad in ["0", "\"many\"", "-2", "2.5"] {
        assert_error(
            &with(bad),
            "cells_per_worker",
            &["resources.cells_per_worker", "auto"],
        );
    }
}

#[test]
fn cells_that_differ_only_in_rates_seed_and_init_share_a_pack_key() {
    let spec = parse(&edit(
        &BASE,
        "lr_b = [1e-4, 1e-3]",
        "lr_b = [1e-4, 1e-3]\nseeds = [0, 1]",
    ));
    let cells = spec.cells();
    assert_eq!(cells.len(), 8);
    let key = cells[0].config.pack_key();
    assert!(cells.iter().all(|c| c.config.pack_key() == key));
    let mut other = cells[0].config.clone();
    other.lora.init = InitScheme::Loraplus;
    assert_eq!(other.pack_key(), key, "the init scheme is per cell");
    other.train.batch_size += 1;
    assert_ne!(
        other.pack_key(),
        key,
        "a different batch size cannot share the pack"
    );
}

#[test]
fn pack_lines_name_their_cell_and_old_lines_still_parse() {
    use etagrid_spec::protocol::CellEvent;
    let line = r#"{"cell":"0123456789abcdef","event":"diverged","step":3,"loss":"NaN"}"#;
    let ev: CellEvent = serde_json::from_str(line).expect("a pack line");
    assert_eq!(
        ev.cell.as_ref().map(|c| c.0.as_str()),
        Some("0123456789abcdef")
    );
    assert!(matches!(ev.event, WorkerEvent::Diverged { step: 3, loss, .. } if loss.is_nan()));
    let back: CellEvent =
        serde_json::from_str(&serde_json::to_string(&ev).expect("write")).expect("reread");
    assert_eq!(back.cell, ev.cell);
    assert!(matches!(back.event, WorkerEvent::Diverged { step: 3, loss, .. } if loss.is_nan()));
    let old =
        r#"{"event":"train","step":10,"total_steps":20,"loss":0.5,"lr_a":0.001,"lr_b":0.016}"#;
    let ev: CellEvent = serde_json::from_str(old).expect("a one-cell line without `cell`");
    assert_eq!(ev.cell, None);
    assert!(matches!(ev.event, WorkerEvent::Train { step: 10, .. }));
    // A result with and without pack_size.
    let done = r#"{"cell":"ab","event":"finished","result":{"metric":0.5,"eval_loss":0.7,"accuracy":0.5,"train_loss":0.7,"steps":1,"wall_s":8.0,"train_samples_per_s":100.0,"pack_size":4}}"#;
    let ev: CellEvent = serde_json::from_str(done).expect("finished");
    match ev.event {
        WorkerEvent::Finished { result } => {
            assert_eq!(result.pack_size, Some(4));
            assert_eq!(result.device_seconds(), 2.0);
        }
        other => panic!("{other:?}"),
    }
}
