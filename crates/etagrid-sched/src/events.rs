//! What a worker's lines and its exit mean for the store, as plain data: a [`Pack`] (the cells
//! of one running worker) turns each [`CellEvent`] line, and the worker's end, into
//! [`Action`]s; a [`Recorder`] applies them to the store. Both backends go through these two —
//! the local dispatcher for its worker processes, a SLURM task for the worker it starts — so a
//! cell is recorded the same way wherever it ran, and the decisions are tested without
//! processes.

use etagrid_spec::protocol::{CellEvent, WorkerEvent};
use etagrid_store::{Outcome, Store, StoreError};

/// One cell of a running worker's job.
#[derive(Debug, Clone)]
pub(crate) struct Member {
    pub id: String,
    /// For progress lines: the id and the cell's rates.
    pub label: String,
    /// This start's attempt number (1-based).
    pub attempt: i64,
    /// Its end is known (a terminal event, or the lease lost): later lines and the worker's
    /// exit do not touch it.
    pub ended: bool,
    /// It ended `done`.
    pub done: bool,
}

impl Member {
    pub(crate) fn new(id: String, label: String, attempt: i64) -> Member {
        Member {
            id,
            label,
            attempt,
            ended: false,
            done: false,
        }
    }
}

/// The cells one worker trains (one, or a pack) and what is known of them.
#[derive(Debug, Clone)]
pub(crate) struct Pack {
    pub members: Vec<Member>,
    /// For the progress line: the first cell, or "pack of K cells (…)".
    pub label: String,
    /// A `failed` line naming no cell: the whole job failed (bad data, a missing tensor).
    pub job_failed: Option<String>,
}

/// What to do with a line or an exit.
#[derive(Debug, Clone)]
pub(crate) enum Action {
    /// Store a non-terminal event of the cell (groups, curve points, current step).
    Record { id: String, event: WorkerEvent },
    /// Store the cell's end.
    Finish {
        id: String,
        label: String,
        attempt: i64,
        outcome: Outcome,
    },
    /// The worker's progress, for its slot's line.
    Status(String),
}

/// How a worker ended, as far as its unfinished cells are concerned.
#[derive(Debug, Clone)]
pub(crate) struct WorkerExit {
    /// It exited with [`crate::WORKER_INPUT_ERROR`]: an input changed after the run checked it.
    pub input_error: bool,
    /// Why it ended without reporting a cell's end (a crash, a kill, a timeout).
    pub cause: String,
}

impl Pack {
    pub(crate) fn new(members: Vec<Member>) -> Pack {
        let label = match members.as_slice() {
            [one] => one.label.clone(),
            [first, ..] => format!("pack of {} cells ({}…)", members.len(), first.id),
            [] => String::new(),
        };
        Pack {
            members,
            label,
            job_failed: None,
        }
    }

    fn member(&mut self, id: &str) -> Option<&mut Member> {
        self.members.iter_mut().find(|m| m.id == id)
    }

    /// The cells whose end is not known yet.
    pub(crate) fn live(&self) -> impl Iterator<Item = &Member> {
        self.members.iter().filter(|m| !m.ended)
    }

    /// Whether any cell ended `done` (the worker then ran a whole cell: its memory peak is a
    /// whole run's).
    pub(crate) fn any_done(&self) -> bool {
        self.members.iter().any(|m| m.done)
    }

    /// The cap on the pack size of a cell retried after this worker crashed: half the pack.
    pub(crate) fn retry_limit(&self) -> Option<usize> {
        let n = self.members.len();
        (n > 1).then(|| n.div_ceil(2))
    }

    /// Marks a cell ended without an action (its lease was lost: another worker has it now).
    pub(crate) fn drop_member(&mut self, id: &str) {
        if let Some(m) = self.member(id) {
            m.ended = true;
        }
    }

    /// A worker's line: a cell's curves, and a cell's end as soon as it is known (a later crash
    /// of the pack then leaves it finished).
    pub(crate) fn on_event(&mut self, ev: CellEvent) -> Vec<Action> {
        if let (None, WorkerEvent::Failed { error }) = (&ev.cell, &ev.event) {
            self.job_failed = Some(error.clone());
            return Vec::new();
        }
        let ids: Vec<String> = match &ev.cell {
            Some(id) => vec![id.0.clone()],
            // No cell named: every cell of the job (a one-cell worker).
            None => self.members.iter().map(|m| m.id.clone()).collect(),
        };
        let first_live = self.live().next().map(|m| m.id.clone());
        let status = status_line(&self.label, &ev.event);
        let mut actions = Vec::new();
        for id in ids {
            let Some(m) = self.member(&id) else { continue };
            if m.ended {
                continue;
            }
            if first_live.as_deref() == Some(id.as_str()) {
                actions.extend(status.clone().map(Action::Status));
            }
            match terminal_outcome(&ev.event) {
                Some(outcome) => {
                    m.ended = true;
                    m.done = matches!(outcome, Outcome::Done(_) | Outcome::Paused(_));
                    actions.push(Action::Finish {
                        id,
                        label: m.label.clone(),
                        attempt: m.attempt,
                        outcome,
                    });
                }
                None => actions.push(Action::Record {
                    id,
                    event: ev.event.clone(),
                }),
            }
        }
        actions
    }

    /// The worker ended: every cell whose end is not known yet is settled from how it ended —
    /// back to pending when stopped, failed with the job's own error, retried after a crash
    /// while it has attempts left.
    pub(crate) fn on_exit(
        &mut self,
        exit: &WorkerExit,
        stopping: bool,
        max_attempts: u32,
    ) -> Vec<Action> {
        let job_failed = self.job_failed.clone();
        self.members
            .iter_mut()
            .filter(|m| !m.ended)
            .map(|m| {
                m.ended = true;
                Action::Finish {
                    id: m.id.clone(),
                    label: m.label.clone(),
                    attempt: m.attempt,
                    outcome: outcome_of(
                        m.attempt,
                        job_failed.as_deref(),
                        exit,
                        stopping,
                        max_attempts,
                    ),
                }
            })
            .collect()
    }
}

/// The slot's line for a worker's progress event.
fn status_line(pack_label: &str, ev: &WorkerEvent) -> Option<String> {
    match ev {
        WorkerEvent::Started {
            device,
            total_steps,
            ..
        } => Some(format!("{pack_label} on {device}: step 0/{total_steps}")),
        WorkerEvent::Train {
            step,
            total_steps,
            loss,
            ..
        } => Some(format!(
            "{pack_label}: step {step}/{total_steps} loss {loss:.4}"
        )),
        _ => None,
    }
}

/// The end of a cell whose worker ended before the cell's own terminal line.
fn outcome_of(
    attempt: i64,
    job_failed: Option<&str>,
    exit: &WorkerExit,
    stopping: bool,
    max_attempts: u32,
) -> Outcome {
    match job_failed {
        _ if stopping => Outcome::Interrupted,
        // An input that changed after the run checked it: no attempt used, rerun after the fix.
        Some(error) if exit.input_error => Outcome::InputError(error.to_owned()),
        // The worker's own error (a missing tensor) would recur: no retry.
        Some(error) => Outcome::Failed(error.to_owned()),
        None if attempt < i64::from(max_attempts) => Outcome::Retry(exit.cause.clone()),
        None => Outcome::Failed(format!(
            "{} (attempt {attempt} of {max_attempts})",
            exit.cause
        )),
    }
}

/// The outcome a terminal event reports (`finished`, `diverged`, `failed`, `paused`); `None`
/// for others.
pub fn terminal_outcome(ev: &WorkerEvent) -> Option<Outcome> {
    match ev {
        WorkerEvent::Finished { result } => Some(Outcome::Done(result.clone())),
        WorkerEvent::Diverged {
            step,
            loss,
            device_s,
        } => Some(Outcome::Diverged {
            step: *step,
            loss: *loss,
            device_s: *device_s,
        }),
        WorkerEvent::Failed { error } => Some(Outcome::Failed(error.clone())),
        WorkerEvent::Paused { result } => Some(Outcome::Paused(result.clone())),
        _ => None,
    }
}

/// Stores what a worker's non-terminal event says about its cell (groups, curves, current step).
pub async fn record_event(
    store: &Store,
    sweep: &str,
    cell_id: &str,
    ev: &WorkerEvent,
) -> Result<(), StoreError> {
    match ev {
        WorkerEvent::Started {
            total_steps,
            groups,
            ..
        } => store.set_groups(sweep, cell_id, groups, *total_steps).await,
        // A curve holds finite points only (a NaN has no place on a plot, and SQLite would
        // store it as NULL).
        WorkerEvent::Train { step, loss, .. } if !loss.is_finite() => {
            store.record_metrics(sweep, cell_id, *step, &[]).await
        }
        WorkerEvent::Train { step, loss, .. } => {
            store
                .record_metrics(sweep, cell_id, *step, &[("train_loss", *loss)])
                .await
        }
        WorkerEvent::Eval {
            step,
            loss,
            metrics,
        } => {
            let mut points = vec![("eval_loss", *loss)];
            points.extend(metrics.iter().map(|(m, v)| (m.curve_name(), v)));
            points.retain(|p| p.1.is_finite());
            store.record_metrics(sweep, cell_id, *step, &points).await
        }
        WorkerEvent::Finished { .. }
        | WorkerEvent::Diverged { .. }
        | WorkerEvent::Failed { .. }
        | WorkerEvent::Paused { .. } => Ok(()),
    }
}

/// What applying an action did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Applied {
    Done,
    /// A `Finish` of a leased cell whose lease is no longer ours: nothing written.
    LeaseLost,
}

/// Applies [`Action`]s to the store: directly for the local scheduler (the only writer of its
/// cells), or under the lease of `lease_owner` for a SLURM task.
pub(crate) struct Recorder<'a> {
    pub store: &'a Store,
    pub sweep: &'a str,
    pub lease_owner: Option<&'a str>,
}

impl Recorder<'_> {
    pub(crate) async fn apply(&self, action: &Action) -> Result<Applied, StoreError> {
        let (store, sweep) = (self.store, self.sweep);
        let kept = match (action, self.lease_owner) {
            (Action::Status(_), _) => true,
            (Action::Record { id, event }, _) => {
                record_event(store, sweep, id, event).await?;
                true
            }
            (Action::Finish { id, outcome, .. }, None) => {
                store.finish_cell(sweep, id, outcome).await?;
                true
            }
            // Leased: back to pending through the lease (counted or refunded as finish_cell
            // would), or the end written if the lease is still ours.
            (Action::Finish { id, outcome, .. }, Some(owner)) => match outcome {
                Outcome::Retry(why) => store.release(sweep, id, owner, false, why).await?,
                Outcome::Interrupted => {
                    store
                        .release(sweep, id, owner, true, "interrupted: back to pending")
                        .await?
                }
                o => store.finish_leased(sweep, id, owner, o).await?,
            },
        };
        Ok(if kept {
            Applied::Done
        } else {
            Applied::LeaseLost
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use etagrid_spec::protocol::CellResult;
    use etagrid_spec::CellId;

    fn pack(n: usize) -> Pack {
        Pack::new(
            (0..n)
                .map(|i| Member::new(format!("c{i}"), format!("c{i} label"), 1))
                .collect(),
        )
    }

    fn line(cell: Option<&str>, event: WorkerEvent) -> CellEvent {
        CellEvent {
            cell: cell.map(|c| CellId(c.to_owned())),
            event,
        }
    }

    fn finished() -> WorkerEvent {
        WorkerEvent::Finished {
            result: CellResult {
                metric: 0.5,
                eval_loss: 0.7,
                metrics: etagrid_spec::protocol::Metrics::new()
                    .with(etagrid_spec::protocol::Measure::Accuracy, 0.5),
                train_loss: 0.7,
                steps: 1,
                wall_s: 0.1,
                train_samples_per_s: 1.0,
                pack_size: Some(4),
            },
        }
    }

    fn crash() -> WorkerExit {
        WorkerExit {
            input_error: false,
            cause: "worker signal: 9 (SIGKILL) without reporting a result".into(),
        }
    }

    fn finishes(actions: &[Action]) -> Vec<(String, Outcome)> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Finish { id, outcome, .. } => Some((id.clone(), outcome.clone())),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_packs_cell_finishing_is_stored_at_once_and_a_later_crash_leaves_it_done() {
        let mut p = pack(4);
        let a = p.on_event(line(Some("c1"), finished()));
        let f = finishes(&a);
        assert_eq!(f.len(), 1);
        assert!(f[0].0 == "c1" && matches!(f[0].1, Outcome::Done(_)));
        assert!(p.any_done());
        // The worker is killed: only the three others are settled, each retried.
        let a = p.on_exit(&crash(), false, 3);
        let f = finishes(&a);
        assert_eq!(
            f.iter().map(|(id, _)| id.as_str()).collect::<Vec<_>>(),
            ["c0", "c2", "c3"]
        );
        assert!(f.iter().all(|(_, o)| matches!(o, Outcome::Retry(_))));
        assert_eq!(p.live().count(), 0);
    }

    #[test]
    fn a_killed_packs_unfinished_cells_retry_in_packs_half_as_large() {
        assert_eq!(pack(4).retry_limit(), Some(2));
        assert_eq!(pack(5).retry_limit(), Some(3));
        assert_eq!(
            pack(1).retry_limit(),
            None,
            "a lone cell retries alone anyway"
        );
    }

    #[test]
    fn a_worker_exiting_without_a_terminal_event_retries_then_fails_on_the_last_attempt() {
        let mut p = pack(1);
        let a = p.on_event(line(
            None,
            WorkerEvent::Train {
                step: 2,
                total_steps: 8,
                loss: 0.5,
                lr_a: 1e-3,
                lr_b: 1e-3,
            },
        ));
        assert!(matches!(&a[0], Action::Status(s) if s.contains("step 2/8")));
        assert!(matches!(&a[1], Action::Record { id, .. } if id == "c0"));
        let f = finishes(&p.on_exit(&crash(), false, 3));
        assert!(matches!(&f[0].1, Outcome::Retry(why) if why.contains("SIGKILL")));

        let mut last = Pack::new(vec![Member::new("c0".into(), "c0".into(), 3)]);
        let f = finishes(&last.on_exit(&crash(), false, 3));
        assert!(
            matches!(&f[0].1, Outcome::Failed(e) if e.ends_with("(attempt 3 of 3)")),
            "{f:?}"
        );
    }

    #[test]
    fn a_job_level_failure_fails_every_unfinished_cell_without_retry() {
        let mut p = pack(2);
        let a = p.on_event(line(
            None,
            WorkerEvent::Failed {
                error: "no tensor x".into(),
            },
        ));
        assert!(a.is_empty());
        let f = finishes(&p.on_exit(&crash(), false, 3));
        assert!(f
            .iter()
            .all(|(_, o)| matches!(o, Outcome::Failed(e) if e == "no tensor x")));
        let mut p = pack(2);
        p.on_event(line(
            None,
            WorkerEvent::Failed {
                error: "changed".into(),
            },
        ));
        let input = WorkerExit {
            input_error: true,
            ..crash()
        };
        let f = finishes(&p.on_exit(&input, false, 3));
        assert!(f.iter().all(|(_, o)| matches!(o, Outcome::InputError(_))));
    }

    #[test]
    fn a_stopped_worker_gives_its_unfinished_cells_back_and_ignores_later_lines() {
        let mut p = pack(2);
        let f = finishes(&p.on_exit(&crash(), true, 3));
        assert!(f.iter().all(|(_, o)| matches!(o, Outcome::Interrupted)));
        assert!(p.on_event(line(Some("c0"), finished())).is_empty());
    }

    #[test]
    fn a_member_whose_lease_was_lost_takes_no_more_lines() {
        let mut p = pack(2);
        p.drop_member("c0");
        assert!(p.on_event(line(Some("c0"), finished())).is_empty());
        assert_eq!(finishes(&p.on_exit(&crash(), false, 3)).len(), 1);
    }

    /// The SLURM side of the Recorder: a retry goes back to pending through the lease with the
    /// attempt counted, and an end reported after the lease was lost writes nothing.
    #[test]
    fn a_leased_recorder_releases_retries_and_writes_nothing_once_the_lease_is_lost() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async {
            let dir = tempfile::tempdir().expect("tempdir");
            let store = Store::open(dir.path().join("s.sqlite"))
                .await
                .expect("store");
            let spec = crate::testing::sweep(1);
            store.enqueue(&spec, &spec.cells()).await.expect("enqueue");
            let id = spec.cells()[0].id.0.clone();
            let claim = |owner: &'static str, now: i64| {
                let (store, id) = (&store, &id);
                async move {
                    store
                        .claim("s", id, owner, "cpu", now, 60, 3, None)
                        .await
                        .expect("claim")
                }
            };
            claim("7_0", 1000).await;
            let rec = Recorder {
                store: &store,
                sweep: "s",
                lease_owner: Some("7_0"),
            };
            let retry = Action::Finish {
                id: id.clone(),
                label: id.clone(),
                attempt: 1,
                outcome: Outcome::Retry("worker crashed".into()),
            };
            assert_eq!(rec.apply(&retry).await.expect("apply"), Applied::Done);
            let row = store.cells("s").await.expect("cells").remove(0);
            assert_eq!(row.state, etagrid_store::CellState::Pending);
            assert_eq!(row.attempts, 1, "the crash's attempt stays counted");
            // Another task takes the cell; the first one's late result is not written.
            claim("8_0", 1000).await;
            let done = Action::Finish {
                id: id.clone(),
                label: id.clone(),
                attempt: 1,
                outcome: terminal_outcome(&finished()).expect("terminal"),
            };
            assert_eq!(rec.apply(&done).await.expect("apply"), Applied::LeaseLost);
            let row = store.cells("s").await.expect("cells").remove(0);
            assert_eq!(row.state, etagrid_store::CellState::Running);
            store.close().await;
        });
    }
}
