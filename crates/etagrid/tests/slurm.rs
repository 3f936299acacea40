//! `etagrid run --backend slurm` against a real single-node SLURM cluster with fake GPUs
//! (`scripts/slurm-local.sh`) and a PostgreSQL store (`scripts/pg-local.sh`, one database per
//! test), both started here when not running yet; `scripts/test.sh` installs slurm-wlm and
//! starts them. The tasks run the real `etagrid worker` on the tiny BERT fixture; the
//! fake GPUs' `CUDA_VISIBLE_DEVICES` mean "no CUDA usable: train on the CPU".
//!
//! Every test uses its own sweep name: the front end finds its tasks by job name.

mod common;

use common::{text, tiny_sweep, with_store, CPU_RESOURCES};
use etagrid_store::testing::TestDatabase;
use etagrid_store::{CellRow, CellState, SlurmTask, Store, StoreUrl};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// `SLURM_CONF` of the test cluster, starting it once per test binary if needed.
fn root() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn slurm_conf() -> &'static str {
    static CONF: OnceLock<String> = OnceLock::new();
    CONF.get_or_init(|| {
        if let Ok(c) = std::env::var("SLURM_CONF") {
            if Path::new(&c).exists() {
                return c;
            }
        }
        let out = Command::new("bash")
            .arg(root().join("scripts/slurm-local.sh"))
            .arg("up")
            .output()
            .expect("run scripts/slurm-local.sh");
        assert!(
            out.status.success(),
            "could not start the local SLURM cluster (needs root and `apt-get install -y slurm-wlm`; \
             scripts/test.sh does both): {}{}",
            text(&out.stdout),
            text(&out.stderr)
        );
        let base = std::env::var("ETAGRID_SLURM_BASE")
            .unwrap_or_else(|_| "/tmp/etagrid-slurm-local".to_owned());
        format!("{base}/etc/slurm.conf")
    })
}

/// A fresh PostgreSQL database for one test (dropped with the sandbox): on the server of
/// `ETAGRID_TEST_PG` (scripts/test.sh exports it), else on `scripts/pg-local.sh`'s, started here.
fn pg_database() -> TestDatabase {
    static SERVER: OnceLock<String> = OnceLock::new();
    let server = SERVER.get_or_init(|| {
        if let Ok(url) = std::env::var("ETAGRID_TEST_PG") {
            if !url.trim().is_empty() {
                return url;
            }
        }
        let script = root().join("scripts/pg-local.sh");
        let up = Command::new("bash")
            .arg(&script)
            .arg("up")
            .output()
            .expect("pg-local.sh up");
        assert!(
            up.status.success(),
            "could not start the local PostgreSQL: {}",
            text(&up.stderr)
        );
        let url = Command::new("bash")
            .arg(&script)
            .arg("url")
            .output()
            .expect("pg-local.sh url");
        text(&url.stdout).trim().to_owned()
    });
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(TestDatabase::create(server))
}

struct Sandbox {
    dir: tempfile::TempDir,
    name: String,
    /// The PostgreSQL store every command of the sandbox uses.
    db: String,
    _database: TestDatabase,
}

impl Sandbox {
    fn new(name: &str, grid: &str, steps: u64, eval_every: u64) -> Sandbox {
        let dir = tempfile::tempdir().expect("tempdir");
        let toml = tiny_sweep(name, grid, steps, eval_every);
        std::fs::write(dir.path().join("sweep.toml"), toml).expect("write sweep");
        let database = pg_database();
        Sandbox {
            dir,
            name: name.to_owned(),
            db: database.url().to_owned(),
            _database: database,
        }
    }

    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_etagrid"));
        c.current_dir(self.dir.path())
            .env("SLURM_CONF", slurm_conf())
            .arg("--state-dir")
            .arg(self.dir.path().join("state"))
            .arg("--db")
            .arg(&self.db)
            .args(args);
        c
    }

    /// `etagrid run --backend slurm` with fast polling and a short lease.
    fn run_args(extra: &[&'static str]) -> Vec<&'static str> {
        let mut a = vec![
            "run",
            "sweep.toml",
            "--backend",
            "slurm",
            "--no-report",
            "--poll",
            "0.3",
            "--poll-max",
            "1",
            "--lease",
            "6",
        ];
        a.extend_from_slice(extra);
        a
    }

    fn run(&self) -> Output {
        self.cmd(&Self::run_args(&[]))
            .output()
            .expect("run etagrid")
    }

    fn spawn_run(&self) -> Child {
        self.cmd(&Self::run_args(&[]))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn etagrid run")
    }

    fn store<T>(&self, f: impl AsyncFnOnce(&Store) -> T) -> T {
        with_store(StoreUrl::parse(&self.db).expect("store URL"), f)
    }

    fn cells(&self) -> Vec<CellRow> {
        self.store(async |s| s.cells(&self.name).await.expect("cells"))
    }

    fn tasks(&self) -> Vec<SlurmTask> {
        self.store(async |s| s.slurm_tasks(&self.name).await.expect("tasks"))
    }

    /// Every task log (`slurm-<job>_<task>.out`) of the sweep, concatenated.
    fn task_logs(&self) -> String {
        let mut text = String::new();
        let base = self.dir.path().join("state/slurm").join(&self.name);
        for sub in std::fs::read_dir(&base).into_iter().flatten().flatten() {
            for f in std::fs::read_dir(sub.path())
                .into_iter()
                .flatten()
                .flatten()
            {
                if f.file_name().to_string_lossy().ends_with(".out") {
                    text += &std::fs::read_to_string(f.path()).unwrap_or_default();
                }
            }
        }
        text
    }
}

fn wait_for(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let end = Instant::now() + limit;
    while !cond() {
        assert!(Instant::now() < end, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn slurm(args: &[&str]) -> String {
    let out = Command::new(args[0])
        .args(&args[1..])
        .env("SLURM_CONF", slurm_conf())
        .output()
        .expect("run a SLURM command");
    assert!(out.status.success(), "{args:?}: {}", text(&out.stderr));
    text(&out.stdout)
}

/// `CUDA_VISIBLE_DEVICES=…` as the worker recorded it in the cell's device column.
fn cuda_visible(device: &str) -> &str {
    device
        .split("CUDA_VISIBLE_DEVICES=")
        .nth(1)
        .and_then(|s| s.split(',').next())
        .unwrap_or("")
}

fn wait_output(child: Child) -> (std::process::ExitStatus, String) {
    let out = child.wait_with_output().expect("wait for etagrid run");
    (out.status, text(&out.stderr))
}

#[test]
fn an_array_runs_every_cell_once_each_task_with_its_own_gpu_and_status_shows_it() {
    let sb = Sandbox::new("slurm-array", "lr_a = [1e-3, 1e-2]\nratio = [1, 16]", 8, 4);
    let out = sb.run();
    let err = text(&out.stderr);
    assert!(
        out.status.success(),
        "run failed: {err}\n{}",
        sb.task_logs()
    );
    assert!(err.contains("4 to run on SLURM"), "{err}");
    // scripts/slurm-local.sh sets MaxArraySize=4 (indices 0..=3): 4 cells are split into
    // arrays of 3 and 1 tasks.
    assert!(
        err.contains("(3 task(s))") && err.contains("(1 task(s))"),
        "{err}"
    );
    assert!(!err.contains("retrying"), "{err}");

    let tasks = sb.tasks();
    assert_eq!(tasks.len(), 4, "one task per cell: {tasks:?}");
    let mut jobs: Vec<&str> = tasks.iter().map(|t| t.job_id.as_str()).collect();
    jobs.dedup();
    assert_eq!(jobs.len(), 2, "{tasks:?}");
    assert!(tasks.iter().all(|t| t.array_index < 3), "{tasks:?}");
    let cells = sb.cells();
    let fake_gpus = ["0", "1"]; // scripts/slurm-local.sh: NGPUS=2
    for c in &cells {
        assert_eq!(c.state, CellState::Done, "{} {:?}", c.id, c.error);
        assert_eq!(c.attempts, 1, "cell {} ran {} times", c.id, c.attempts);
        let device = c.device.as_deref().unwrap_or("");
        let task = tasks
            .iter()
            .find(|t| t.cell_id == c.id)
            .expect("task of cell");
        // The task that ran the cell is the one submitted for it, and SLURM gave it one GPU.
        assert!(
            device.contains(&format!("task {}", task.slurm_id())),
            "{device}"
        );
        assert!(fake_gpus.contains(&cuda_visible(device)), "{device}");
    }
    let logs = sb.task_logs();
    for c in &cells {
        assert_eq!(
            logs.matches(&format!("claimed cell {}", c.id)).count(),
            1,
            "{logs}"
        );
        assert_eq!(
            logs.matches(&format!("cell {} done", c.id)).count(),
            1,
            "{logs}"
        );
    }
    // The fake GPU means "no CUDA here": the worker said so and trained on the CPU.
    assert!(
        logs.contains("libtorch sees no CUDA device: training on the CPU"),
        "{logs}"
    );

    let status = sb.cmd(&["status", "slurm-array"]).output().expect("status");
    let st = text(&status.stdout);
    assert!(status.status.success(), "{}", text(&status.stderr));
    assert!(st.contains("4 cells") && st.contains("4 done"), "{st}");
    assert!(
        st.contains(&format!(
            "slurm: 4 task(s) submitted in 2 job array(s), latest {}",
            tasks[3].job_id
        )),
        "{st}"
    );

    // A rerun trains nothing and submits nothing.
    let again = sb.run();
    let err = text(&again.stderr);
    assert!(again.status.success(), "{err}");
    assert!(
        err.contains("all 4 cells are done: nothing to train"),
        "{err}"
    );
    assert_eq!(sb.tasks().len(), 4);
}

#[test]
fn a_requeued_array_does_not_redo_its_finished_cells() {
    let sb = Sandbox::new("slurm-requeue", "lr_a = [1e-3, 1e-2]\nratio = [1]", 8, 4);
    let out = sb.run();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let job = sb.tasks()[0].job_id.clone();
    // As preemption with PreemptMode=REQUEUE does: every task of the array runs again.
    slurm(&["scontrol", "requeue", &job]);
    wait_for(
        "both requeued tasks to find their cells done",
        Duration::from_secs(120),
        || {
            sb.task_logs()
                .matches("is already done: nothing to do")
                .count()
                == 2
        },
    );
    for c in sb.cells() {
        assert_eq!((c.state, c.attempts), (CellState::Done, 1), "cell {}", c.id);
    }
    let logs = sb.task_logs();
    assert_eq!(logs.matches("claimed cell").count(), 2, "{logs}");
}

/// The single cell of a long sweep, once its worker has reported training steps.
fn wait_until_training(sb: &Sandbox) -> CellRow {
    let mut row = None;
    wait_for("the cell to be training", Duration::from_secs(120), || {
        row = sb
            .cells()
            .into_iter()
            .find(|c| c.state == CellState::Running && c.step.unwrap_or(0) > 0);
        row.is_some()
    });
    row.expect("running cell")
}

/// The pid of the sandbox's running `etagrid worker` (its command line names the sandbox's
/// state directory).
fn worker_pid(sb: &Sandbox) -> Option<i32> {
    let state = sb.dir.path().join("state");
    let state = state.to_string_lossy();
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid: i32 = e.file_name().to_string_lossy().parse().ok()?;
        let cmd = std::fs::read(e.path().join("cmdline")).ok()?;
        let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
        (cmd.contains(" worker ") && cmd.contains("--lease") && cmd.contains(state.as_ref()))
            .then_some(pid)
    })
}

/// kill -9 of the sandbox's task process (the batch script exec'd `etagrid worker --lease`), as
/// the OOM killer would do.
fn kill_task(sb: &Sandbox) {
    let pid = worker_pid(sb).expect("the task's process");
    // SAFETY: sending a signal to a process this test's sweep started.
    #[allow(unsafe_code)]
    let r = unsafe { libc::kill(pid, libc::SIGKILL) };
    assert_eq!(r, 0, "kill -9 {pid}");
}

/// The `<job>_<task>` that holds the cell, from its device column.
fn holder(row: &CellRow) -> String {
    let d = row.device.as_deref().unwrap_or("");
    d.split("task ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .unwrap_or_else(|| panic!("no task in device {d:?}"))
        .to_owned()
}

#[test]
fn a_task_preempted_mid_training_gives_its_cell_back_and_finishes_it_on_restart() {
    let sb = Sandbox::new("slurm-preempt", "lr_a = [1e-3]\nratio = [1]", 3000, 0);
    let front = sb.spawn_run();
    let row = wait_until_training(&sb);
    let task = holder(&row);
    // SIGTERM to the worker, then the task is queued again with the same id.
    slurm(&["scontrol", "requeue", &task]);
    let (status, err) = wait_output(front);
    let logs = sb.task_logs();
    assert!(status.success(), "{err}\n{logs}");
    let c = &sb.cells()[0];
    assert_eq!(c.state, CellState::Done, "{:?}", c.error);
    // Preemption is not the cell's fault: the interrupted attempt was refunded.
    assert_eq!(c.attempts, 1, "{logs}");
    assert!(
        logs.contains("SIGTERM (preempted, requeued or cancelled)"),
        "{logs}"
    );
    assert!(
        c.device.as_deref().unwrap_or("").contains("restart 1"),
        "{:?}",
        c.device
    );
    assert_eq!(
        sb.tasks().len(),
        1,
        "the requeued task finished it; nothing resubmitted: {err}"
    );
    assert_eq!(
        logs.matches(&format!("cell {} done", c.id)).count(),
        1,
        "{logs}"
    );
}

#[test]
fn a_worker_killed_with_sigkill_gets_its_cell_retried_and_finished_once() {
    let sb = Sandbox::new("slurm-kill", "lr_a = [1e-3]\nratio = [1]", 3000, 0);
    let front = sb.spawn_run();
    let row = wait_until_training(&sb);
    let task = holder(&row);
    kill_task(&sb);
    let (status, err) = wait_output(front);
    let logs = sb.task_logs();
    assert!(status.success(), "{err}\n{logs}");
    assert!(
        err.contains(&format!("SLURM task {task} ended"))
            && err.contains("retrying (attempt 1 of 3 used)"),
        "{err}"
    );
    let c = &sb.cells()[0];
    assert_eq!((c.state, c.attempts), (CellState::Done, 2), "{err}\n{logs}");
    let tasks = sb.tasks();
    assert_eq!(tasks.len(), 2, "resubmitted once: {tasks:?}");
    assert!(
        !c.device.as_deref().unwrap_or("").contains(&task),
        "{:?}",
        c.device
    );
    assert_eq!(
        logs.matches(&format!("cell {} done", c.id)).count(),
        1,
        "{logs}"
    );
}

#[test]
fn a_sqlite_store_is_refused_without_the_explicit_opt_in() {
    let sb = Sandbox::new("slurm-refuse", "lr_a = [1e-3]\nratio = [1]", 8, 4);
    let sqlite = sb.dir.path().join("state/etagrid.sqlite");
    let out = Command::new(env!("CARGO_BIN_EXE_etagrid"))
        .current_dir(sb.dir.path())
        .env("SLURM_CONF", slurm_conf())
        .arg("--db")
        .arg(&sqlite)
        .args(["run", "sweep.toml", "--backend", "slurm"])
        .output()
        .expect("run");
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("SQLite") && err.contains("--db postgres://"),
        "{err}"
    );
    assert!(
        !sb.dir.path().join("state/slurm").exists(),
        "nothing may be submitted"
    );
}

#[test]
fn a_rerun_of_the_front_end_reattaches_to_its_running_task_instead_of_resubmitting() {
    let sb = Sandbox::new("slurm-reattach", "lr_a = [1e-3]\nratio = [1]", 3000, 0);
    let mut front = sb.spawn_run();
    wait_until_training(&sb);
    // The front end dies (kill -9: no clean-up at all); its task keeps training.
    front.kill().expect("kill the front end");
    front.wait().expect("reap the front end");
    let out = sb.run();
    let err = text(&out.stderr);
    assert!(out.status.success(), "{err}\n{}", sb.task_logs());
    assert!(
        err.contains("re-attached to 1 queued or running task(s)"),
        "{err}"
    );
    assert!(!err.contains("submitted job array"), "{err}");
    assert_eq!(sb.tasks().len(), 1);
    let c = &sb.cells()[0];
    assert_eq!((c.state, c.attempts), (CellState::Done, 1), "{err}");
}

#[test]
fn an_impossible_submission_fails_with_slurms_own_message() {
    let sb = Sandbox::new("slurm-badpart", "lr_a = [1e-3]\nratio = [1]", 8, 4);
    let out = sb
        .cmd(&Sandbox::run_args(&["--partition", "nosuchpartition"]))
        .output()
        .expect("run");
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("SLURM: could not submit the job array")
            && err.contains("invalid partition specified: nosuchpartition"),
        "{err}"
    );
    assert!(sb.tasks().is_empty());
}

#[test]
fn a_sweep_in_packs_runs_one_pack_per_task_and_every_cell_once_with_its_pack_size() {
    let sb = Sandbox::new("slurm-pack", "lr_a = [1e-3, 1e-2]\nratio = [1, 16]", 8, 4);
    let out = sb
        .cmd(&Sandbox::run_args(&["--cells-per-worker", "2"]))
        .output()
        .expect("run");
    let err = text(&out.stderr);
    assert!(out.status.success(), "{err}\n{}", sb.task_logs());
    assert!(err.contains("(2 task(s), 4 cells in packs)"), "{err}");
    assert!(!err.contains("retrying"), "{err}");
    let tasks = sb.tasks();
    assert_eq!(tasks.len(), 4, "one row per cell: {tasks:?}");
    let mut ids: Vec<String> = tasks.iter().map(SlurmTask::slurm_id).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 2, "two tasks of two cells each: {tasks:?}");
    let logs = sb.task_logs();
    for c in sb.cells() {
        assert_eq!(
            (c.state, c.attempts),
            (CellState::Done, 1),
            "{} {:?}",
            c.id,
            c.error
        );
        assert_eq!(c.pack_size, Some(2), "cell {} trained in a pack of 2", c.id);
        let task = tasks.iter().find(|t| t.cell_id == c.id).expect("task");
        let device = c.device.as_deref().unwrap_or("");
        assert!(
            device.contains(&format!("task {}", task.slurm_id())),
            "{device}"
        );
        for line in [
            format!("claimed cell {}", c.id),
            format!("cell {} done", c.id),
        ] {
            assert_eq!(logs.matches(&line).count(), 1, "{line}: {logs}");
        }
    }
    let status = sb.cmd(&["status", "slurm-pack"]).output().expect("status");
    let st = text(&status.stdout);
    assert!(
        st.contains("4 done") && st.contains("slurm: 2 task(s) submitted in 1 job array(s)"),
        "{st}"
    );
}

#[test]
fn a_pack_task_killed_mid_training_gets_its_cells_retried_in_smaller_packs_and_finished_once() {
    let sb = Sandbox::new(
        "slurm-pack-kill",
        "lr_a = [1e-3, 1e-2]\nratio = [1]",
        3000,
        0,
    );
    let front = sb
        .cmd(&Sandbox::run_args(&["--cells-per-worker", "2"]))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn etagrid run");
    wait_for(
        "both cells of the pack to train",
        Duration::from_secs(120),
        || {
            let cells = sb.cells();
            cells.len() == 2
                && cells
                    .iter()
                    .all(|c| c.state == CellState::Running && c.step.unwrap_or(0) > 0)
        },
    );
    let task = holder(&sb.cells()[0]);
    kill_task(&sb);
    let (status, err) = wait_output(front);
    let logs = sb.task_logs();
    assert!(status.success(), "{err}\n{logs}");
    assert_eq!(
        err.matches(&format!("SLURM task {task} ended")).count(),
        2,
        "both cells of the pack taken back: {err}"
    );
    let tasks = sb.tasks();
    let retry: Vec<&SlurmTask> = tasks.iter().filter(|t| t.slurm_id() != task).collect();
    assert_eq!(retry.len(), 2, "{tasks:?}");
    assert_ne!(
        retry[0].slurm_id(),
        retry[1].slurm_id(),
        "retried in packs half as large (one cell each): {tasks:?}"
    );
    for c in sb.cells() {
        assert_eq!((c.state, c.attempts), (CellState::Done, 2), "{err}\n{logs}");
        assert_eq!(
            logs.matches(&format!("cell {} done", c.id)).count(),
            1,
            "{logs}"
        );
    }
}

/// Successive halving on SLURM (3 × 3 grid, rungs at 1, 3 and 9 steps): the front end submits
/// each rung's cells, makes each promotion once none of the rung is left to run, and submits
/// the promoted cells with the next rung's segment. The result is the local backend's to the
/// last bit — the same sweep run by `etagrid run` on a SQLite store, both one thread a cell:
/// the same promotions, the same cells pruned at the same rungs and steps, the same metrics.
/// Every cell is claimed once per rung it reached (with `max_attempts = 2`: the tasks that
/// claimed a cell on earlier rungs are no tasks that ended without claiming it), and a rerun of
/// the front end trains nothing.
#[test]
fn a_halving_sweep_runs_rung_by_rung_and_ends_as_the_local_run_of_it() {
    let name = "slurm-halving";
    let sb = Sandbox::new(name, "", 9, 0);
    let sweep = tiny_sweep(
        name,
        "lr_a = [1e-3, 3e-3, 1e-2]\nlr_b = [1e-2, 3e-2, 1e-1]\nseeds = [0]",
        9,
        0,
    ) + CPU_RESOURCES
        // Two attempts a rung: a cell that reaches the last rung had two tasks before (which
        // claimed it), and they must not count as tasks that ended without claiming it.
        + "max_attempts = 2\n"
        + "[search]\nstrategy = \"halving\"\nkeep_per_row = 1\nmin_tau = -1.0\nrefine = true\n";
    std::fs::write(sb.dir.path().join("sweep.toml"), &sweep).expect("write sweep");
    let out = sb.run();
    let err = text(&out.stderr);
    let logs = sb.task_logs();
    assert!(out.status.success(), "{err}\n{logs}");
    assert!(err.contains("paused at step 1"), "{err}");
    assert!(!err.contains("failed"), "no cell failed: {err}");
    // Each rung is submitted after the promotion before it (arrays of at most the cluster's
    // MaxArraySize = 4 tasks).
    let (first, rest) = err
        .split_once("rung 1/3: 9 points")
        .expect("rung 1 decided");
    let (second, third) = rest.split_once("rung 2/3:").expect("rung 2 decided");
    for (rung, text) in [(1, first), (2, second), (3, third)] {
        assert!(text.contains("submitted job array"), "rung {rung}: {err}");
    }

    // `refine = true`: the refined sweep (3 × 3 around the pick, full budget) went to SLURM
    // too, in the same run, its centre the pick trained again.
    let refine = format!("{name}-refine");
    assert!(
        err.contains(&format!("[search] refine: running ./{refine}.toml")),
        "{err}"
    );
    let refined = sb.store(async |s| s.cells(&refine).await.expect("refined cells"));
    assert_eq!(refined.len(), 9);
    assert!(
        refined.iter().all(|c| c.state == CellState::Done),
        "{refined:#?}"
    );
    let pick = sb
        .cells()
        .into_iter()
        .filter(|c| c.state == CellState::Done && !c.pruned && c.rung == Some(2))
        .max_by(|a, b| a.metric.partial_cmp(&b.metric).expect("finite"))
        .expect("a pick");
    // The refined file gives η_A and λ as decimal text: the same point within rounding.
    let close = |x: f64, y: f64| (x / y - 1.0).abs() < 1e-9;
    let centre = refined
        .iter()
        .find(|c| close(c.lr_a, pick.lr_a) && close(c.lr_b, pick.lr_b))
        .expect("the refined sweep's centre is the pick's point");
    assert_eq!(
        centre.metric, pick.metric,
        "the centre is the pick trained again"
    );

    // The same sweep on the local backend (it finds the refined file and runs it as it is).
    let local_db = sb.dir.path().join("local.sqlite");
    let local = Command::new(env!("CARGO_BIN_EXE_etagrid"))
        .current_dir(sb.dir.path())
        .arg("--state-dir")
        .arg(sb.dir.path().join("local-state"))
        .arg("--db")
        .arg(&local_db)
        .args(["run", "sweep.toml", "--no-report"])
        .output()
        .expect("local run");
    assert!(local.status.success(), "{}", text(&local.stderr));
    let local_store = || StoreUrl::parse(&local_db.display().to_string()).expect("sqlite url");
    let outcome = |rows: Vec<CellRow>| -> Vec<_> {
        rows.into_iter()
            .map(|c| {
                let metric = c.metric.map(f64::to_bits);
                (c.id, c.state, c.rung, c.step, c.pruned, metric)
            })
            .collect()
    };
    let on_slurm = outcome(sb.cells());
    let at_home = outcome(with_store(local_store(), async |s| {
        s.cells(name).await.expect("cells")
    }));
    assert_eq!(on_slurm, at_home, "SLURM against the local run");
    let rungs = |rows: Vec<etagrid_store::RungRow>| -> Vec<_> {
        rows.into_iter()
            .map(|r| (r.rung, r.points, r.promoted, r.reason))
            .collect()
    };
    let slurm_rungs = rungs(sb.store(async |s| s.halving_rungs(name).await.expect("rungs")));
    assert_eq!(slurm_rungs.len(), 2, "two promotions: {slurm_rungs:?}");
    let local_rungs = rungs(with_store(local_store(), async |s| {
        s.halving_rungs(name).await.expect("rungs")
    }));
    assert_eq!(slurm_rungs, local_rungs);
    let cells = sb.cells();
    assert!(cells.iter().any(|c| c.pruned), "{cells:#?}");
    assert!(cells.iter().any(|c| c.rung == Some(2) && !c.pruned));
    for c in &cells {
        let reached = c.rung.expect("on a rung") + 1;
        assert_eq!(
            logs.matches(&format!("claimed cell {} ", c.id)).count() as i64,
            reached,
            "cell {} claimed once per rung it reached: {logs}",
            c.id
        );
        // A promotion counts a cell's attempts afresh: one a rung.
        assert_eq!(c.attempts, 1, "cell {}", c.id);
    }

    let again = sb.run();
    let err = text(&again.stderr);
    assert!(again.status.success(), "{err}");
    assert!(!err.contains("submitted job array"), "{err}");
    assert_eq!(outcome(sb.cells()), on_slurm);
}
