//! Fault tests of the scheduler with a fake worker (tests/fake-worker.sh): crashes, hangs,
//! worker-reported errors and a sweep file edited between runs, and what the store says
//! afterwards. Each runs twice: `NAME::sqlite`
//! and `NAME::postgres` (the store in a fresh database of the `ETAGRID_TEST_PG` server; see
//! `etagrid_store::testing`).

use etagrid_sched::slurm::{run_task, TaskExit, TaskOptions};
use etagrid_sched::{run, RunOptions, SchedError, SlotDevice, WorkerCommand};
use etagrid_spec::protocol::{JobDevice, PackedCell, Segment, WorkerJob, PROTOCOL_VERSION};
use etagrid_spec::{PackSize, SweepSpec};
use etagrid_store::testing::{test_server, TestDatabase};
use etagrid_store::{Backend, CellState, Store, StoreUrl};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// `both_backends!(name)` beside `fn name(b: Backend)` makes the tests `name::sqlite` and
/// `name::postgres`.
macro_rules! both_backends {
    ($name:ident) => {
        mod $name {
            use super::*;
            #[test]
            fn sqlite() {
                super::$name(Backend::Sqlite)
            }
            #[test]
            fn postgres() {
                if test_server().is_some() {
                    super::$name(Backend::Postgres)
                }
            }
        }
    };
}

struct Setup {
    dir: tempfile::TempDir,
    spec: SweepSpec,
    store: StoreUrl,
    _pg: Option<TestDatabase>,
}

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(f)
}

/// The test sweep's file: two cells (η_A = 1e-4, 1e-3) of one step.
fn sweep_toml(extra_resources: &str) -> String {
    format!(
        "name = \"faults\"\n[model]\npath = \"m\"\n[task]\ntrain = \"t.csv\"\neval = \"e.csv\"\n\
         [train]\nsteps = 1\n[grid]\nlr_a = [1e-4, 1e-3]\nlr_b = [1e-3]\n[resources]\n{extra_resources}\n"
    )
}

fn setup(b: Backend, mode: &str, extra_resources: &str) -> Setup {
    let dir = tempfile::tempdir().expect("tempdir");
    let toml = sweep_toml(extra_resources);
    let spec = SweepSpec::parse(&dir.path().join("faults.toml"), &toml).expect("spec");
    std::fs::create_dir_all(dir.path().join("state")).expect("state");
    std::fs::write(dir.path().join("state/fake-mode"), mode).expect("mode");
    let (store, pg) = match b {
        Backend::Sqlite => (dir.path().join("state/etagrid.sqlite").into(), None),
        Backend::Postgres => {
            let server = test_server().expect("the postgres variant runs only with a server");
            let pg = block_on(TestDatabase::create(&server));
            (pg.store_url(), Some(pg))
        }
    };
    Setup {
        dir,
        spec,
        store,
        _pg: pg,
    }
}

impl Setup {
    fn opts(&self, retry_failed: bool) -> RunOptions {
        RunOptions {
            store: self.store.clone(),
            state_dir: self.dir.path().join("state"),
            worker: WorkerCommand {
                program: PathBuf::from("bash"),
                args: vec![Path::new(env!("CARGO_MANIFEST_DIR"))
                    .join("tests/fake-worker.sh")
                    .display()
                    .to_string()],
            },
            slots: vec![SlotDevice::Cpu, SlotDevice::Cpu],
            threads_per_cell: 1,
            progress: false,
            retry_failed,
            grace: Duration::from_millis(200),
            save_adapters: false,
            memory_fit: None,
            cells_per_worker: PackSize::Auto,
        }
    }

    fn starts(&self, cell: &str) -> u32 {
        std::fs::read_to_string(
            self.dir
                .path()
                .join("state/cells/faults")
                .join(cell)
                .join("starts"),
        )
        .map(|s| s.trim().parse().unwrap_or(0))
        .unwrap_or(0)
    }

    /// The same sweep file with `search` as its `[search]` section.
    fn with_search(&self, search: &str) -> SweepSpec {
        let toml = format!("{}[search]\n{search}", sweep_toml(""));
        SweepSpec::parse(&self.spec.source, &toml).expect("spec")
    }

    /// What a run could change in the store: each cell's state and rung, the promotions, the
    /// recorded `[search]` and the sweep file's text.
    fn stored(&self) -> String {
        block_on(async {
            let s = Store::open(&self.store).await.expect("store");
            let cells: Vec<_> = (s.cells("faults").await.expect("cells"))
                .into_iter()
                .map(|c| (c.id, c.state, c.attempts, c.rung, c.resume_step, c.pruned))
                .collect();
            let rungs = s.halving_rungs("faults").await.expect("rungs");
            let search = s.halving_search("faults").await.expect("search");
            let text = s.sweep("faults").await.expect("sweep").source_text;
            s.close().await;
            format!("{cells:?}\n{rungs:?}\n{search:?}\n{text}")
        })
    }

    fn cells(&self) -> Vec<etagrid_store::CellRow> {
        block_on(async {
            let s = Store::open(&self.store).await.expect("store");
            let c = s.cells("faults").await.expect("cells");
            s.close().await;
            c
        })
    }
}

both_backends!(a_worker_killed_by_sigkill_is_retried_and_its_cell_finishes_once);
fn a_worker_killed_by_sigkill_is_retried_and_its_cell_finishes_once(b: Backend) {
    let s = setup(b, "crash-once", "");
    let summary = run(&s.spec, &s.opts(false)).expect("run");
    assert_eq!((summary.done, summary.retried, summary.failed), (2, 2, 0));
    for c in s.cells() {
        assert_eq!(c.state, CellState::Done);
        assert_eq!(c.attempts, 2, "one crash, one success");
        assert_eq!(s.starts(&c.id), 2, "started exactly twice");
    }
}

both_backends!(a_hung_worker_times_out_and_is_retried);
fn a_hung_worker_times_out_and_is_retried(b: Backend) {
    let s = setup(b, "hang-once", "cell_timeout = \"1s\"");
    let summary = run(&s.spec, &s.opts(false)).expect("run");
    assert_eq!((summary.done, summary.retried), (2, 2));
    for c in s.cells() {
        assert_eq!((c.state, c.attempts), (CellState::Done, 2));
    }
}

both_backends!(a_cell_that_always_crashes_fails_after_max_attempts_and_a_rerun_skips_it);
fn a_cell_that_always_crashes_fails_after_max_attempts_and_a_rerun_skips_it(b: Backend) {
    let s = setup(b, "crash-always", "max_attempts = 2");
    let summary = run(&s.spec, &s.opts(false)).expect("run");
    assert_eq!((summary.done, summary.failed, summary.retried), (0, 2, 2));
    for c in s.cells() {
        assert_eq!((c.state, c.attempts), (CellState::Failed, 2));
        let err = c.error.expect("error");
        assert!(
            err.contains("without reporting a result") && err.contains("attempt 2 of 2"),
            "{err}"
        );
        assert_eq!(s.starts(&c.id), 2);
    }
    let again = run(&s.spec, &s.opts(false)).expect("rerun");
    assert_eq!(
        (again.exhausted, again.done, again.failed),
        (2, 0, 0),
        "nothing may start"
    );
    for c in s.cells() {
        assert_eq!(s.starts(&c.id), 2);
    }
    // --retry-failed gives them a fresh set of attempts; now they succeed.
    std::fs::write(s.dir.path().join("state/fake-mode"), "ok").expect("mode");
    let retried = run(&s.spec, &s.opts(true)).expect("retry");
    assert_eq!(retried.done, 2);
    assert!(s
        .cells()
        .iter()
        .all(|c| c.state == CellState::Done && c.attempts == 1));
}

both_backends!(an_error_the_worker_reports_is_not_retried);
fn an_error_the_worker_reports_is_not_retried(b: Backend) {
    let s = setup(b, "fail", "");
    let summary = run(&s.spec, &s.opts(false)).expect("run");
    assert_eq!((summary.failed, summary.retried), (2, 0));
    for c in s.cells() {
        assert_eq!((c.state, c.attempts), (CellState::Failed, 1));
        assert_eq!(c.error.as_deref(), Some("bad data at line 3"));
    }
}

both_backends!(a_worker_that_cannot_start_fails_its_cells_and_leaves_none_queued);
fn a_worker_that_cannot_start_fails_its_cells_and_leaves_none_queued(b: Backend) {
    let s = setup(b, "ok", "");
    let mut opts = s.opts(false);
    opts.worker = WorkerCommand {
        program: PathBuf::from("/nonexistent/etagrid-worker"),
        args: Vec::new(),
    };
    opts.slots = vec![SlotDevice::Cpu];
    let summary = run(&s.spec, &opts).expect("run");
    assert_eq!(summary.failed, 2, "both cells were tried, on the one slot");
    for c in s.cells() {
        assert_eq!(c.state, CellState::Failed);
        assert!(c
            .error
            .as_deref()
            .unwrap_or("")
            .contains("could not start the worker"));
    }
}

/// The pack tests' sweep file: four cells of one step, packed by four.
fn pack_toml() -> String {
    "name = \"faults\"\n[model]\npath = \"m\"\n[task]\ntrain = \"t.csv\"\neval = \"e.csv\"\n\
     [train]\nsteps = 1\n[grid]\nlr_a = [1e-4, 1e-3, 1e-2, 1e-1]\nlr_b = [1e-3]\n\
     [resources]\ncells_per_worker = 4\n"
        .to_owned()
}

/// A 4-cell sweep run by the pack stand-in (tests/fake-pack-worker.sh), one CPU slot, packs of 4.
fn pack_setup(b: Backend, mode: &str) -> (Setup, RunOptions) {
    let mut s = setup(b, mode, "cells_per_worker = 4");
    s.spec = SweepSpec::parse(&s.dir.path().join("faults.toml"), &pack_toml()).expect("spec");
    let mut opts = s.opts(false);
    opts.worker.args = vec![Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fake-pack-worker.sh")
        .display()
        .to_string()];
    opts.slots = vec![SlotDevice::Cpu];
    opts.cells_per_worker = s.spec.cells_per_worker;
    (s, opts)
}

impl Setup {
    /// The sizes of the packs the stand-in was started with, in order.
    fn packs(&self) -> Vec<usize> {
        std::fs::read_to_string(self.dir.path().join("state/packs"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect()
    }
}

both_backends!(a_pack_worker_killed_mid_pack_keeps_its_finished_cell_and_retries_the_rest_once);
fn a_pack_worker_killed_mid_pack_keeps_its_finished_cell_and_retries_the_rest_once(b: Backend) {
    let (s, opts) = pack_setup(b, "pack-crash-once");
    assert_eq!(s.spec.cells_per_worker, PackSize::Fixed(4));
    let summary = run(&s.spec, &opts).expect("run");
    assert_eq!((summary.done, summary.retried, summary.failed), (4, 3, 0));
    let cells = s.cells();
    assert_eq!(cells.len(), 4);
    // The first pack held all four cells; its three unfinished cells came back in packs of at
    // most half its size.
    let packs = s.packs();
    assert_eq!(packs[0], 4, "one pack of four first: {packs:?}");
    assert!(
        packs[1..].iter().all(|&k| k <= 2),
        "retries in smaller packs: {packs:?}"
    );
    assert_eq!(
        packs.iter().sum::<usize>(),
        4 + 3,
        "every unfinished cell ran once more"
    );
    let (finished_first, retried): (Vec<_>, Vec<_>) =
        cells.iter().partition(|c| s.starts(&c.id) == 1);
    assert_eq!(
        finished_first.len(),
        1,
        "the cell finished before the kill is not rerun"
    );
    assert_eq!(finished_first[0].attempts, 1);
    for c in &retried {
        assert_eq!(s.starts(&c.id), 2, "cell {} ran exactly twice", c.id);
        assert_eq!((c.state, c.attempts), (CellState::Done, 2));
    }
    for c in &cells {
        assert_eq!(c.state, CellState::Done);
        assert!(
            c.pack_size.is_some(),
            "a packed cell records its pack's size"
        );
    }
    // A rerun has nothing to do.
    let again = run(&s.spec, &opts).expect("rerun");
    assert_eq!((again.done, again.skipped), (0, 4));
    assert_eq!(
        s.packs().len(),
        packs.len(),
        "no worker started by the rerun"
    );
}

both_backends!(packs_fill_from_pending_cells_and_every_cell_runs_once);
fn packs_fill_from_pending_cells_and_every_cell_runs_once(b: Backend) {
    let (s, mut opts) = pack_setup(b, "ok");
    opts.cells_per_worker = PackSize::Fixed(3);
    let summary = run(&s.spec, &opts).expect("run");
    assert_eq!((summary.done, summary.retried), (4, 0));
    assert_eq!(s.packs(), vec![3, 1], "a pack of 3, then the leftover cell");
    for c in s.cells() {
        assert_eq!(
            (c.state, c.attempts, s.starts(&c.id)),
            (CellState::Done, 1, 1)
        );
    }
}

both_backends!(auto_packs_on_a_gpu_take_the_cells_a_memory_probe_says_fit);
/// `cells_per_worker = "auto"` on a GPU: a probe of two cells measures the pack's memory before
/// any cell starts, and packs take no more cells than fit, split evenly (3 fit: two packs of 2;
/// without the probe the four cells would go in one pack). A probe that fails leaves packs of
/// one cell. Either way every cell runs once.
fn auto_packs_on_a_gpu_take_the_cells_a_memory_probe_says_fit(b: Backend) {
    for (mode, packs) in [
        ("probe-fit-3", vec![2, 2]),
        ("probe-fail", vec![1, 1, 1, 1]),
    ] {
        let (s, mut opts) = pack_setup(b, mode);
        opts.cells_per_worker = PackSize::Auto;
        opts.slots = vec![SlotDevice::Gpu(0)];
        let summary = run(&s.spec, &opts).expect("run");
        assert_eq!((summary.done, summary.retried), (4, 0), "{mode}");
        let probes = std::fs::read_to_string(s.dir.path().join("state/probes")).expect("probes");
        assert_eq!(probes.trim(), "2", "{mode}: one probe, of two cells");
        assert_eq!(s.packs(), packs, "{mode}");
        for c in s.cells() {
            assert_eq!(
                (c.state, c.attempts, s.starts(&c.id)),
                (CellState::Done, 1, 1),
                "{mode}: the probe starts no cell"
            );
        }
    }
}

both_backends!(a_slurm_task_with_an_auto_pack_trains_it_in_the_parts_a_memory_probe_says_fit);
/// `cells_per_worker = "auto"` on SLURM GPU tasks (`etagrid worker --lease S --measure-pack`):
/// before it claims anything the task measures a pack of two of its cells on its GPU, then
/// trains its four cells in parts that fit (3 fit: 2 + 2), claiming each part when it starts
/// it; a cell finished before (a requeued task) takes no room (3 left: one part). A probe that
/// fails leaves parts of one cell; without `--measure-pack` the pack is trained whole. Every
/// cell is claimed and finished once, and the probe starts none.
fn a_slurm_task_with_an_auto_pack_trains_it_in_the_parts_a_memory_probe_says_fit(b: Backend) {
    for (mode, measure, finished_before, packs, probes) in [
        ("probe-fit-3", true, false, vec![2, 2], "2"),
        ("probe-fit-3", true, true, vec![3], "2"),
        ("probe-fail", true, false, vec![1, 1, 1, 1], "2"),
        ("probe-fit-3", false, false, vec![4], ""),
    ] {
        let (s, opts) = pack_setup(b, mode);
        let cells = s.spec.cells();
        block_on(async {
            let store = Store::open(&s.store).await.expect("store");
            store.enqueue(&s.spec, &cells).await.expect("enqueue");
            if finished_before {
                let diverged = etagrid_store::Outcome::Diverged {
                    step: 1,
                    loss: f64::NAN,
                    device_s: None,
                };
                store
                    .finish_cell("faults", &cells[0].id.0, &diverged)
                    .await
                    .expect("finish");
            }
            store.close().await;
        });
        let exit = slurm_task(&s, &opts.worker, measure);
        assert_eq!(exit, TaskExit::Finished { failed: false }, "{mode}");
        assert_eq!(s.packs(), packs, "{mode}, measured: {measure}");
        let probed = std::fs::read_to_string(s.dir.path().join("state/probes")).unwrap_or_default();
        assert_eq!(
            probed.trim(),
            probes,
            "{mode}: one probe of two cells, or none"
        );
        for c in s.cells() {
            let expected = if finished_before && c.id == cells[0].id.0 {
                (CellState::Diverged, 0, 0)
            } else {
                (CellState::Done, 1, 1)
            };
            assert_eq!(
                (c.state, c.attempts, s.starts(&c.id)),
                expected,
                "{mode}: {}",
                c.id
            );
        }
    }
}

/// A SLURM task listens for SIGUSR2 (and SIGTERM) process-wide, and one test sends SIGUSR2 to
/// this process: the tests' tasks take turns.
static SLURM_TASKS: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Runs a SLURM task ("7_0") on the four cells of `s` as one job file, as the front end writes
/// it (on the CPU until the task knows what SLURM granted it), with GPU 0 granted.
fn slurm_task(s: &Setup, worker: &WorkerCommand, measure_pack: bool) -> TaskExit {
    slurm_task_for(s, worker, measure_pack, None)
}

/// [`slurm_task`] with the job's segment of the budget (a halving rung's), as the front end
/// writes it.
fn slurm_task_for(
    s: &Setup,
    worker: &WorkerCommand,
    measure_pack: bool,
    segment: Option<Segment>,
) -> TaskExit {
    let _turn = SLURM_TASKS.lock().unwrap_or_else(|e| e.into_inner());
    let dir = |id: &str| s.dir.path().join("state/cells/faults").join(id);
    let packed: Vec<PackedCell> = s
        .spec
        .cells()
        .iter()
        .map(|c| {
            std::fs::create_dir_all(dir(&c.id.0)).expect("cell dir");
            PackedCell {
                cell_id: c.id.clone(),
                config: c.config.clone(),
                out_dir: dir(&c.id.0),
            }
        })
        .collect();
    let job = WorkerJob {
        protocol: PROTOCOL_VERSION,
        sweep: s.spec.name.clone(),
        cell_id: packed[0].cell_id.clone(),
        config: packed[0].config.clone(),
        model_dir: s.spec.model.dir.clone(),
        out_dir: packed[0].out_dir.clone(),
        device: JobDevice::Cpu,
        cuda_visible_devices: None,
        threads: 1,
        save_adapter: false,
        cache_dir: None,
        pack: packed[1..].to_vec(),
        segment,
    };
    let job_path = s.dir.path().join("state/task-0.json");
    std::fs::write(&job_path, serde_json::to_string(&job).expect("job")).expect("write job");
    run_task(&TaskOptions {
        store: s.store.clone(),
        job: job_path,
        owner: "7_0".into(),
        device_label: "cuda (task 7_0)".into(),
        gpus: Some("0".into()),
        lease: Duration::from_secs(60),
        max_attempts: 3,
        worker: worker.clone(),
        measure_pack,
    })
    .expect("task")
}

/// Records, as the front end does when it submits, that task 7_0 was given the cells `ids`.
async fn list_for_task_7_0(store: &Store, ids: &[String]) {
    let tasks: Vec<etagrid_store::SlurmTask> = ids
        .iter()
        .map(|id| etagrid_store::SlurmTask {
            job_id: "7".into(),
            array_index: 0,
            cell_id: id.clone(),
        })
        .collect();
    store
        .record_slurm_tasks("faults", &tasks, 0)
        .await
        .expect("record");
}

both_backends!(a_slurm_task_stopped_in_its_first_part_gives_the_later_parts_back_untried);
/// SIGUSR2 (the SLURM time limit is near) while the first of two parts trains: the task gives
/// that part's cells back to pending (the attempt counted, as for any cell the limit stops) and
/// takes the second part's cells off its list in the store without claiming them — they are not
/// counted as cells a task ended without claiming (taken for a store the task cannot reach),
/// and the front end can give them to another task at once.
fn a_slurm_task_stopped_in_its_first_part_gives_the_later_parts_back_untried(b: Backend) {
    let (s, opts) = pack_setup(b, "probe-fit-3-usr2");
    let cells = s.spec.cells();
    let ids: Vec<String> = cells.iter().map(|c| c.id.0.clone()).collect();
    block_on(async {
        let store = Store::open(&s.store).await.expect("store");
        store.enqueue(&s.spec, &cells).await.expect("enqueue");
        list_for_task_7_0(&store, &ids).await;
        store.close().await;
    });
    let exit = slurm_task(&s, &opts.worker, true);
    assert_eq!(exit, TaskExit::Released);
    assert_eq!(s.packs(), vec![2], "the second part never started");
    let listed: Vec<String> = block_on(async {
        let store = Store::open(&s.store).await.expect("store");
        let t = store.slurm_tasks("faults").await.expect("tasks");
        store.close().await;
        let mut listed: Vec<String> = t.into_iter().map(|t| t.cell_id).collect();
        listed.sort();
        listed
    });
    let mut first_part = ids[..2].to_vec();
    first_part.sort();
    assert_eq!(listed, first_part, "the first part's cells stay listed");
    for c in s.cells() {
        let first = ids[..2].contains(&c.id);
        assert_eq!(
            (c.state, c.attempts),
            (CellState::Pending, i64::from(first)),
            "{}",
            c.id
        );
    }
}

both_backends!(a_slurm_task_trains_halving_cells_only_on_the_rung_it_was_submitted_for);
/// A halving sweep on SLURM: a task trains its cells' segment of the budget for the rung it
/// was submitted for. One that starts after its cells went on to another rung (it was queued
/// while another task trained them, and the rung was decided) must not train them with its
/// old segment: it skips them unclaimed, attempts untouched, and takes them off its list in the
/// store (the front end submits them again, and counts no task that "ended without claiming").
/// With the segment of the cells' rung the same task claims and trains them.
fn a_slurm_task_trains_halving_cells_only_on_the_rung_it_was_submitted_for(b: Backend) {
    let (mut s, opts) = pack_setup(b, "ok");
    let toml = format!(
        "{}[search]\nstrategy = \"halving\"\nrungs = [0.5, 1.0]\n",
        pack_toml()
    );
    s.spec = SweepSpec::parse(&s.spec.source, &toml).expect("spec");
    let cells = s.spec.cells();
    let ids: Vec<String> = cells.iter().map(|c| c.id.0.clone()).collect();
    block_on(async {
        let store = Store::open(&s.store).await.expect("store");
        store.enqueue(&s.spec, &cells).await.expect("enqueue");
        store
            .init_halving("faults", &s.spec.search)
            .await
            .expect("rungs");
        list_for_task_7_0(&store, &ids).await;
        store.close().await;
    });
    // The cells are on the first rung; a task for the second (continue from 1/2 to the end).
    let second = Segment {
        resume_from: Some(0.5),
        pause_at: None,
    };
    let exit = slurm_task_for(&s, &opts.worker, false, Some(second));
    assert_eq!(exit, TaskExit::Skipped);
    assert!(s.packs().is_empty(), "no worker started: {:?}", s.packs());
    for c in s.cells() {
        assert_eq!((c.state, c.attempts), (CellState::Pending, 0), "{}", c.id);
    }
    let listed = block_on(async {
        let store = Store::open(&s.store).await.expect("store");
        let t = store.slurm_tasks("faults").await.expect("tasks");
        store.close().await;
        t
    });
    assert!(listed.is_empty(), "taken off the task's list: {listed:?}");

    let first = Segment {
        resume_from: None,
        pause_at: Some(0.5),
    };
    let exit = slurm_task_for(&s, &opts.worker, false, Some(first));
    assert_eq!(exit, TaskExit::Finished { failed: false });
    assert_eq!(s.packs(), vec![4]);
    for c in s.cells() {
        assert_eq!((c.attempts, s.starts(&c.id)), (1, 1), "{}", c.id);
    }
}

both_backends!(a_gpu_named_by_its_mig_id_is_passed_to_the_worker_in_its_job_as_it_is);
fn a_gpu_named_by_its_mig_id_is_passed_to_the_worker_in_its_job_as_it_is(b: Backend) {
    let s = setup(b, "ok", "");
    let mig = "MIG-4a5b6c7d-8888-9999-aaaa-bbbbccccdddd";
    let mut opts = s.opts(false);
    opts.slots = vec![SlotDevice::Named(mig.into())];
    opts.cells_per_worker = PackSize::Fixed(1); // a job file per cell
    let summary = run(&s.spec, &opts).expect("run");
    assert_eq!(summary.done, 2);
    for c in s.cells() {
        assert_eq!(
            c.device.as_deref(),
            Some(mig),
            "the slot keeps the id as its name"
        );
        let job = s
            .dir
            .path()
            .join("state/cells/faults")
            .join(&c.id)
            .join("job.json");
        let job: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&job).expect("job file")).expect("json");
        assert_eq!(job["device"], "cuda");
        assert_eq!(job["cuda_visible_devices"], mig);
    }
}

both_backends!(a_halving_sweep_run_again_with_another_search_is_refused_before_anything_changes);
/// A halving sweep's `[search]` is not part of its cell ids: a run with other rungs, or as a
/// grid, would misread its cells' rungs. It is refused, naming the file and each change, with
/// nothing stored or started; the settings it started with go on as before.
fn a_halving_sweep_run_again_with_another_search_is_refused_before_anything_changes(b: Backend) {
    let s = setup(b, "ok", "");
    let halving = "strategy = \"halving\"\nrungs = [0.5, 1.0]\nkeep_per_row = 0\n";
    let started = s.with_search(halving);
    let summary = run(&started, &s.opts(false)).expect("halving run");
    // The fake worker ends every segment `finished`: two at rung 0, one at rung 1.
    assert_eq!(summary.done, 3, "{summary:?}");
    let cells = s.cells();
    assert_eq!(
        cells.iter().map(|c| (c.rung, c.pruned)).collect::<Vec<_>>(),
        [(Some(1), false), (Some(0), true)],
        "the smaller η_A went on (a tie), the other was pruned at rung 0"
    );
    let starts = |s: &Setup| cells.iter().map(|c| s.starts(&c.id)).collect::<Vec<_>>();
    let (before, started_before) = (s.stored(), starts(&s));
    assert_eq!(started_before, [2, 1]);

    for (search, change) in [
        (
            "strategy = \"halving\"\nrungs = [0.25, 1.0]\nkeep_per_row = 0\n",
            "\n  rungs: [0.5, 1.0] → [0.25, 1.0]\n",
        ),
        (
            "strategy = \"grid\"\nrungs = [0.5, 1.0]\nkeep_per_row = 0\n",
            "\n  strategy: \"halving\" → \"grid\"\n",
        ),
    ] {
        let err = run(&s.with_search(search), &s.opts(false)).expect_err("refused");
        assert!(matches!(err, SchedError::SearchChanged(_)), "{err:?}");
        let m = err.to_string();
        let file = s.spec.source.display().to_string();
        assert!(
            m.starts_with(&format!(
                "{file}: [search] is not what sweep `faults` started"
            )),
            "{m}"
        );
        assert!(m.contains(change), "{change:?} not in {m}");
        assert!(
            m.contains("put the old values back in [search]") && m.contains("--state-dir"),
            "{m}"
        );
        assert_eq!(
            s.stored(),
            before,
            "a refused run changes nothing in the store"
        );
        assert_eq!(starts(&s), started_before, "a refused run starts no worker");
    }

    let again = run(&started, &s.opts(false)).expect("the settings it started with");
    assert_eq!((again.skipped, again.done, again.paused), (2, 0, 0));
    assert_eq!(s.stored(), before);
}

both_backends!(a_grid_sweep_turned_halving_starts_its_rungs_and_records_its_search);
/// The other direction is no change of rungs: a grid sweep has none, so turned halving its
/// cells go on rungs (those the grid finished at the last) and the settings are recorded.
fn a_grid_sweep_turned_halving_starts_its_rungs_and_records_its_search(b: Backend) {
    let s = setup(b, "ok", "");
    assert_eq!(run(&s.spec, &s.opts(false)).expect("grid run").done, 2);
    let halving = s.with_search("strategy = \"halving\"\nrungs = [0.5, 1.0]\n");
    let summary = run(&halving, &s.opts(false)).expect("halving run");
    assert_eq!((summary.skipped, summary.done), (2, 0), "{summary:?}");
    for c in s.cells() {
        assert_eq!(
            (c.state, c.rung, s.starts(&c.id)),
            (CellState::Done, Some(1), 1)
        );
    }
    let recorded = block_on(async {
        let store = Store::open(&s.store).await.expect("store");
        store.halving_search("faults").await.expect("search")
    });
    assert_eq!(recorded, Some(halving.search));
}
