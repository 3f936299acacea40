//! Leases (SLURM mode: several workers write the store), through the public API. Every test runs
//! twice, `NAME::sqlite` (a file in a temp dir) and `NAME::postgres` (a fresh database on the
//! server of `ETAGRID_TEST_PG`, as in store.rs). Times are explicit unix seconds, so expiry is
//! tested without waiting.

use etagrid_spec::protocol::{CellResult, Measure, Metrics};
use etagrid_spec::testing::{self, edit};
use etagrid_spec::{Cell, SweepSpec};
use etagrid_store::both_backends;
use etagrid_store::testing::{test_server, TestDatabase};
use etagrid_store::{Backend, CellRow, CellState, Claim, Outcome, SlurmTask, Store, StoreUrl};
use std::sync::LazyLock;
use tempfile::TempDir;

/// A 2 × 1 grid: the shared test sweep with one η_B.
static SWEEP: LazyLock<String> =
    LazyLock::new(|| edit(testing::SWEEP, "lr_b = [1e-4, 1e-3]", "lr_b = [1e-3]"));
const NAME: &str = "leased";
const T0: i64 = 1_800_000_000;
const LEASE: i64 = 60;
const MAX: i64 = 3;

struct F {
    _dir: TempDir,
    _pg: Option<TestDatabase>,
    store: Store,
    cells: Vec<Cell>,
}

impl F {
    fn id(&self, i: usize) -> &str {
        &self.cells[i].id.0
    }
    async fn row(&self, i: usize) -> CellRow {
        let rows = self.store.cells(NAME).await.expect("cells");
        rows.into_iter()
            .find(|r| r.id == self.id(i))
            .expect("cell row")
    }
    async fn claim(&self, i: usize, owner: &str, now: i64) -> Claim {
        self.store
            .claim(
                NAME,
                self.id(i),
                owner,
                &format!("dev-{owner}"),
                now,
                LEASE,
                MAX,
                None,
            )
            .await
            .expect("claim")
    }
}

async fn fixture(b: Backend) -> F {
    let dir = tempfile::tempdir().expect("temp dir");
    let (url, pg) = match b {
        Backend::Sqlite => (StoreUrl::from(dir.path().join("s.sqlite")), None),
        Backend::Postgres => {
            let server = test_server().expect("the postgres variant runs only with a server");
            let pg = TestDatabase::create(&server).await;
            (pg.store_url(), Some(pg))
        }
    };
    let store = Store::open(url).await.expect("open");
    let spec = SweepSpec::parse(&dir.path().join(format!("{NAME}.toml")), &SWEEP).expect("spec");
    let cells = spec.cells();
    store.enqueue(&spec, &cells).await.expect("enqueue");
    F {
        _dir: dir,
        _pg: pg,
        store,
        cells,
    }
}

fn result() -> CellResult {
    CellResult {
        metric: 0.75,
        eval_loss: 0.5,
        metrics: Metrics::new().with(Measure::Accuracy, 0.75),
        train_loss: 0.25,
        steps: 20,
        wall_s: 3.0,
        train_samples_per_s: 10.0,
        pack_size: None,
    }
}

both_backends!(a_claim_takes_a_pending_cell_once_and_records_owner_device_and_attempt);
async fn a_claim_takes_a_pending_cell_once_and_records_owner_device_and_attempt(b: Backend) {
    let f = fixture(b).await;
    assert_eq!(f.claim(0, "7_0", T0).await, Claim::Claimed { attempt: 1 });
    let r = f.row(0).await;
    assert_eq!(r.state, CellState::Running);
    assert_eq!(r.device.as_deref(), Some("dev-7_0"));
    let leases = f.store.leases(NAME).await.expect("leases");
    assert_eq!(leases.len(), 1);
    assert_eq!(
        (leases[0].owner.as_str(), leases[0].expires),
        ("7_0", Some(T0 + LEASE))
    );
    // Another task (a duplicate submission) finds it held and leaves it alone.
    assert_eq!(
        f.claim(0, "8_0", T0 + 1).await,
        Claim::Held {
            owner: "7_0".into(),
            expires: T0 + LEASE
        }
    );
    assert_eq!(f.row(0).await.attempts, 1);
}

both_backends!(a_finished_cell_is_never_claimed_again);
async fn a_finished_cell_is_never_claimed_again(b: Backend) {
    let f = fixture(b).await;
    f.claim(0, "7_0", T0).await;
    assert!(f
        .store
        .finish_leased(NAME, f.id(0), "7_0", &Outcome::Done(result()))
        .await
        .expect("finish"));
    let r = f.row(0).await;
    assert_eq!(
        (r.state, r.attempts, r.metric),
        (CellState::Done, 1, Some(0.75))
    );
    assert!(f.store.leases(NAME).await.expect("leases").is_empty());
    // The same task requeued after preemption, and a later one: both skip it.
    assert_eq!(
        f.claim(0, "7_0", T0 + 5).await,
        Claim::Finished(CellState::Done)
    );
    assert_eq!(
        f.claim(0, "9_0", T0 + 5).await,
        Claim::Finished(CellState::Done)
    );
    assert_eq!(f.row(0).await.attempts, 1);
}

both_backends!(
    an_expired_lease_is_claimable_with_the_attempt_counted_and_the_old_owner_is_shut_out
);
async fn an_expired_lease_is_claimable_with_the_attempt_counted_and_the_old_owner_is_shut_out(
    b: Backend,
) {
    let f = fixture(b).await;
    f.claim(0, "7_0", T0).await;
    assert!(f
        .store
        .heartbeat(NAME, f.id(0), "7_0", T0 + 30, LEASE)
        .await
        .expect("beat"));
    // Renewed to T0 + 90: still held at T0 + 80.
    assert!(matches!(
        f.claim(0, "8_0", T0 + 80).await,
        Claim::Held { .. }
    ));
    // The node died: no heartbeat after T0 + 30; at T0 + 91 the lease is over.
    assert_eq!(
        f.claim(0, "8_0", T0 + 91).await,
        Claim::Claimed { attempt: 2 }
    );
    // The old owner wakes up: it may neither renew nor write a result.
    assert!(!f
        .store
        .heartbeat(NAME, f.id(0), "7_0", T0 + 92, LEASE)
        .await
        .expect("beat"));
    assert!(!f
        .store
        .finish_leased(NAME, f.id(0), "7_0", &Outcome::Done(result()))
        .await
        .expect("finish"));
    assert_eq!(f.row(0).await.state, CellState::Running);
    assert!(f
        .store
        .finish_leased(NAME, f.id(0), "8_0", &Outcome::Done(result()))
        .await
        .expect("finish"));
    let r = f.row(0).await;
    assert_eq!((r.state, r.attempts), (CellState::Done, 2));
}

both_backends!(a_requeued_task_takes_back_its_own_cell_at_once);
async fn a_requeued_task_takes_back_its_own_cell_at_once(b: Backend) {
    let f = fixture(b).await;
    f.claim(0, "7_0", T0).await;
    // SIGKILLed before it could release; SLURM requeued it with the same id.
    assert_eq!(
        f.claim(0, "7_0", T0 + 10).await,
        Claim::Claimed { attempt: 2 }
    );
}

both_backends!(release_on_preemption_refunds_the_attempt_and_on_time_limit_keeps_it);
async fn release_on_preemption_refunds_the_attempt_and_on_time_limit_keeps_it(b: Backend) {
    let f = fixture(b).await;
    f.claim(0, "7_0", T0).await;
    assert!(f
        .store
        .release(NAME, f.id(0), "7_0", true, "SIGTERM")
        .await
        .expect("release"));
    let r = f.row(0).await;
    assert_eq!((r.state, r.attempts), (CellState::Pending, 0));
    assert_eq!(r.device, None);
    f.claim(0, "7_0", T0 + 1).await;
    assert!(f
        .store
        .release(NAME, f.id(0), "7_0", false, "SIGUSR2")
        .await
        .expect("release"));
    let r = f.row(0).await;
    assert_eq!((r.state, r.attempts), (CellState::Pending, 1));
    assert_eq!(r.error.as_deref(), Some("SIGUSR2"));
    // Not ours (any more): nothing happens.
    assert!(!f
        .store
        .release(NAME, f.id(0), "7_0", true, "again")
        .await
        .expect("release"));
}

both_backends!(reclaiming_a_dead_owners_cell_retries_it_until_max_attempts_then_fails_it);
async fn reclaiming_a_dead_owners_cell_retries_it_until_max_attempts_then_fails_it(b: Backend) {
    let f = fixture(b).await;
    for attempt in 1..=MAX {
        let owner = format!("{attempt}_0");
        assert_eq!(f.claim(0, &owner, T0).await, Claim::Claimed { attempt });
        let st = f
            .store
            .reclaim(NAME, f.id(0), &owner, "task ended", MAX, None)
            .await
            .expect("reclaim");
        let want = if attempt < MAX {
            CellState::Pending
        } else {
            CellState::Failed
        };
        assert_eq!(st, Some(want));
        assert_eq!(f.row(0).await.error.as_deref(), Some("task ended"));
    }
    assert_eq!(
        f.claim(0, "9_0", T0).await,
        Claim::Finished(CellState::Failed)
    );
    // Reclaiming from an owner that no longer holds the cell changes nothing.
    assert_eq!(
        f.store
            .reclaim(NAME, f.id(0), "1_0", "late", MAX, None)
            .await
            .expect("reclaim"),
        None
    );
}

both_backends!(pending_cells_out_of_attempts_are_not_claimable_and_fail_exhausted_marks_them);
async fn pending_cells_out_of_attempts_are_not_claimable_and_fail_exhausted_marks_them(b: Backend) {
    let f = fixture(b).await;
    for a in 1..=MAX {
        f.claim(1, "5_1", T0).await;
        f.store
            .release(NAME, f.id(1), "5_1", false, "time limit")
            .await
            .expect("release");
        assert_eq!(f.row(1).await.attempts, a);
    }
    assert_eq!(
        f.claim(1, "6_1", T0).await,
        Claim::Exhausted { attempts: MAX }
    );
    assert_eq!(f.store.fail_exhausted(NAME, MAX).await.expect("fail"), 1);
    assert_eq!(f.row(1).await.state, CellState::Failed);
    assert_eq!(f.row(0).await.state, CellState::Pending);
}

both_backends!(submitted_tasks_read_back_with_their_slurm_ids);
async fn submitted_tasks_read_back_with_their_slurm_ids(b: Backend) {
    let f = fixture(b).await;
    let tasks = vec![
        SlurmTask {
            job_id: "41".into(),
            array_index: 0,
            cell_id: f.id(0).into(),
        },
        SlurmTask {
            job_id: "41".into(),
            array_index: 1,
            cell_id: f.id(1).into(),
        },
    ];
    f.store
        .record_slurm_tasks(NAME, &tasks, T0)
        .await
        .expect("record");
    let back = f.store.slurm_tasks(NAME).await.expect("tasks");
    assert_eq!(back, tasks);
    assert_eq!(back[1].slurm_id(), "41_1");
    // A task gives back a cell it never reached: only its own row of that cell goes.
    let forget = |job: &'static str, index: i64, cell: &str| {
        let cells = vec![cell.to_owned()];
        let store = &f.store;
        async move {
            store
                .forget_slurm_task_cells(NAME, job, index, &cells)
                .await
                .expect("forget")
        }
    };
    assert_eq!(forget("41", 0, f.id(1)).await, 0, "not task 41_0's cell");
    assert_eq!(forget("41", 1, f.id(1)).await, 1);
    assert_eq!(
        f.store.slurm_tasks(NAME).await.expect("tasks"),
        tasks[..1].to_vec()
    );
}

both_backends!(a_claim_marks_the_claiming_tasks_row_and_no_other);
/// The front end counts the tasks that ended without claiming a cell from the rows a claim did
/// not mark: the claiming array task's own row, not another task's row of the same cell, nor a
/// row of a task that only released it, nor anything for an owner that is no array task.
async fn a_claim_marks_the_claiming_tasks_row_and_no_other(b: Backend) {
    let f = fixture(b).await;
    let row = |job: &str, index: i64, cell: usize| SlurmTask {
        job_id: job.into(),
        array_index: index,
        cell_id: f.id(cell).into(),
    };
    let tasks = vec![row("41", 0, 0), row("41", 0, 1), row("42", 0, 0)];
    f.store
        .record_slurm_tasks(NAME, &tasks, T0)
        .await
        .expect("record");
    // The rows of one task come in no particular order.
    let sorted = |mut rows: Vec<SlurmTask>| {
        rows.sort_by(|a, b| (&a.job_id, &a.cell_id).cmp(&(&b.job_id, &b.cell_id)));
        rows
    };
    let unclaimed = || async { sorted(f.store.unclaimed_slurm_tasks(NAME).await.expect("rows")) };
    let tasks = sorted(tasks);
    assert_eq!(unclaimed().await, tasks);
    f.claim(0, "41_0", T0).await;
    assert_eq!(unclaimed().await, vec![row("41", 0, 1), row("42", 0, 0)]);
    // Released with a refund (attempt not counted): the task did claim it.
    f.store
        .release(NAME, f.id(0), "41_0", true, "SIGTERM")
        .await
        .expect("release");
    assert_eq!(unclaimed().await, vec![row("41", 0, 1), row("42", 0, 0)]);
    // An owner outside an array (a task run by hand) marks no row.
    f.claim(1, "pid77", T0).await;
    assert_eq!(unclaimed().await, vec![row("41", 0, 1), row("42", 0, 0)]);
    // A task that finds its cell held by another reached it too: it is no task that could not
    // reach the store.
    assert!(matches!(f.claim(1, "41_0", T0).await, Claim::Held { .. }));
    assert_eq!(unclaimed().await, vec![row("42", 0, 0)]);
    assert_eq!(sorted(f.store.slurm_tasks(NAME).await.expect("all")), tasks);

    // A task can start, and claim, before the front end has recorded its submission: the claim
    // writes the row, and the front end's record of it later leaves it marked.
    f.store
        .release(NAME, f.id(1), "pid77", true, "stop")
        .await
        .expect("release");
    assert_eq!(f.claim(1, "43_0", T0).await, Claim::Claimed { attempt: 1 });
    f.store
        .record_slurm_tasks(NAME, &[row("43", 0, 1)], T0)
        .await
        .expect("record after the claim");
    assert_eq!(unclaimed().await, vec![row("42", 0, 0)]);
}

both_backends!(a_task_claims_a_halving_cell_only_on_the_rung_it_was_submitted_for);
/// A SLURM task of a halving sweep claims a cell only while it is on the task's rung, checked in
/// the claiming statement: a cell promoted since (pending on the next rung) is `OtherRung` and
/// left as it was. A failed cell the promotion pruned is final: `requeue_failed` (a rerun of the
/// front end) leaves it failed.
async fn a_task_claims_a_halving_cell_only_on_the_rung_it_was_submitted_for(b: Backend) {
    let f = fixture(b).await;
    let search = etagrid_search::SearchSpec {
        strategy: etagrid_search::Strategy::Halving,
        rungs: Some(vec![0.5, 1.0]),
        ..etagrid_search::SearchSpec::default()
    };
    assert_eq!(f.store.init_halving(NAME, &search).await.expect("rungs"), 2);
    let claim = |i: usize, owner: &'static str, rung: i64| {
        let (store, id) = (&f.store, f.id(i).to_owned());
        async move {
            store
                .claim(NAME, &id, owner, "cpu", T0, LEASE, MAX, Some(rung))
                .await
                .expect("claim")
        }
    };
    assert_eq!(claim(0, "1_0", 1).await, Claim::OtherRung { rung: 0 });
    assert_eq!(
        (f.row(0).await.state, f.row(0).await.attempts),
        (CellState::Pending, 0)
    );
    // Rung 0: cell 0 fails (one attempt of three used), cell 1 pauses at its end.
    assert_eq!(claim(0, "1_0", 0).await, Claim::Claimed { attempt: 1 });
    assert_eq!(claim(1, "1_1", 0).await, Claim::Claimed { attempt: 1 });
    let failed = Outcome::Failed("bad batch".into());
    let paused = Outcome::Paused(CellResult {
        steps: 10,
        ..result()
    });
    for (i, owner, outcome) in [(0, "1_0", &failed), (1, "1_1", &paused)] {
        f.store
            .finish_leased(NAME, f.id(i), owner, outcome)
            .await
            .expect("finish");
    }
    let decided = etagrid_store::RungRow {
        rung: 0,
        points: 2,
        promoted: 1,
        tau: None,
        stopped_pruning: false,
        reason: "rung 1/2".into(),
    };
    f.store
        .promote(NAME, &decided, &[f.id(1).to_owned()], &[f.id(0).to_owned()])
        .await
        .expect("promote");
    // A task of rung 0 that started late finds cell 1 on rung 1: not claimed, nothing changed.
    let before = f.row(1).await;
    assert_eq!(claim(1, "2_0", 0).await, Claim::OtherRung { rung: 1 });
    let after = f.row(1).await;
    assert_eq!(
        (after.state, after.attempts, after.rung, after.resume_step),
        (
            before.state,
            before.attempts,
            before.rung,
            before.resume_step
        )
    );
    assert_eq!(claim(1, "3_0", 1).await, Claim::Claimed { attempt: 1 });
    assert_eq!(f.store.requeue_failed(NAME, MAX).await.expect("requeue"), 0);
    let pruned = f.row(0).await;
    assert_eq!((pruned.state, pruned.pruned), (CellState::Failed, true));
}

both_backends!(requeue_failed_gives_back_only_failed_cells_with_attempts_left);
async fn requeue_failed_gives_back_only_failed_cells_with_attempts_left(b: Backend) {
    let f = fixture(b).await;
    // Cell 0: failed by its worker on attempt 1; cell 1: failed after its last attempt.
    f.claim(0, "1_0", T0).await;
    f.store
        .finish_leased(NAME, f.id(0), "1_0", &Outcome::Failed("bad batch".into()))
        .await
        .expect("finish");
    for a in 1..=MAX {
        let owner = format!("{a}_1");
        f.claim(1, &owner, T0).await;
        f.store
            .reclaim(NAME, f.id(1), &owner, "node died", MAX, None)
            .await
            .expect("reclaim");
    }
    assert_eq!(f.store.requeue_failed(NAME, MAX).await.expect("requeue"), 1);
    assert_eq!(f.row(0).await.state, CellState::Pending);
    assert_eq!(f.row(1).await.state, CellState::Failed);
    assert_eq!(f.claim(0, "9_0", T0).await, Claim::Claimed { attempt: 2 });
}

both_backends!(a_local_runs_recovery_leaves_cells_leased_by_slurm_tasks_alone);
async fn a_local_runs_recovery_leaves_cells_leased_by_slurm_tasks_alone(b: Backend) {
    let f = fixture(b).await;
    f.claim(0, "3_0", T0).await;
    f.store
        .start_cell(NAME, f.id(1), "cpu")
        .await
        .expect("start");
    // Cell 1 was left running by a crashed local run; cell 0 is a SLURM task's.
    assert_eq!(f.store.recover_running(NAME).await.expect("recover"), 1);
    assert_eq!(f.row(1).await.state, CellState::Pending);
    let r = f.row(0).await;
    assert_eq!((r.state, r.attempts), (CellState::Running, 1));
    assert!(f
        .store
        .heartbeat(NAME, f.id(0), "3_0", T0 + 1, LEASE)
        .await
        .expect("beat"));
}

both_backends!(an_expiry_reclaim_loses_to_a_heartbeat_and_never_takes_a_cell_being_finished);
async fn an_expiry_reclaim_loses_to_a_heartbeat_and_never_takes_a_cell_being_finished(b: Backend) {
    let f = fixture(b).await;
    f.claim(0, "7_0", T0).await;
    // The front end saw the lease expired at T0 + 61, but the worker renewed it just before the
    // reclaim ran: nothing is taken.
    f.store
        .heartbeat(NAME, f.id(0), "7_0", T0 + 60, LEASE)
        .await
        .expect("beat");
    let r = f
        .store
        .reclaim(NAME, f.id(0), "7_0", "expired", MAX, Some(T0 + 61))
        .await
        .expect("reclaim");
    assert_eq!(r, None);
    assert_eq!(f.row(0).await.state, CellState::Running);
    // Really expired: taken back, attempt counted.
    let r = f
        .store
        .reclaim(NAME, f.id(0), "7_0", "expired", MAX, Some(T0 + 121))
        .await
        .expect("reclaim");
    assert_eq!(r, Some(CellState::Pending));
    // A lease whose owner is writing its result (expiry cleared) is not expired.
    f.claim(1, "8_1", T0).await;
    assert!(f
        .store
        .finish_leased(NAME, f.id(1), "8_1", &Outcome::Done(result()))
        .await
        .expect("finish"));
    let r = f
        .store
        .reclaim(NAME, f.id(1), "8_1", "expired", MAX, Some(T0 + 1_000))
        .await
        .expect("reclaim");
    assert_eq!(r, None);
    assert_eq!(f.row(1).await.state, CellState::Done);
}

both_backends!(a_local_run_cannot_start_a_cell_a_slurm_task_holds_or_finished);
async fn a_local_run_cannot_start_a_cell_a_slurm_task_holds_or_finished(b: Backend) {
    // The local scheduler read its queue before the task claimed the cell: its start must not
    // take the cell over (a second attempt, the task's curve deleted, two trainings).
    let f = fixture(b).await;
    assert_eq!(f.claim(0, "7_0", T0).await, Claim::Claimed { attempt: 1 });
    f.store
        .record_metrics(NAME, f.id(0), 2, &[("train_loss", 0.5)])
        .await
        .expect("curve");
    let started = f
        .store
        .start_cell(NAME, f.id(0), "cpu")
        .await
        .expect("start");
    assert!(!started, "a leased cell must not start locally");
    let row = f.row(0).await;
    assert_eq!((row.attempts, row.device.as_deref()), (1, Some("dev-7_0")));
    assert_eq!(
        f.store
            .curve(NAME, f.id(0), "train_loss")
            .await
            .expect("curve"),
        vec![(2, 0.5)],
        "the task's curve is kept"
    );
    // A finished cell does not start again either; a pending one does.
    f.store
        .finish_leased(NAME, f.id(0), "7_0", &Outcome::Done(result()))
        .await
        .expect("finish");
    assert!(!f
        .store
        .start_cell(NAME, f.id(0), "cpu")
        .await
        .expect("start"));
    assert!(f
        .store
        .start_cell(NAME, f.id(1), "cpu")
        .await
        .expect("start"));
}

both_backends!(slurm_tasks_sort_job_ids_as_numbers);
async fn slurm_tasks_sort_job_ids_as_numbers(b: Backend) {
    // Two arrays submitted in the same second across a digit boundary: 99 is older than 100.
    let f = fixture(b).await;
    let task = |job: &str, i: usize| SlurmTask {
        job_id: job.into(),
        array_index: 0,
        cell_id: f.id(i).into(),
    };
    f.store
        .record_slurm_tasks(NAME, &[task("100", 1), task("99", 0)], T0)
        .await
        .expect("record");
    let jobs: Vec<String> = f
        .store
        .slurm_tasks(NAME)
        .await
        .expect("tasks")
        .into_iter()
        .map(|t| t.job_id)
        .collect();
    assert_eq!(jobs, vec!["99", "100"]);
}
