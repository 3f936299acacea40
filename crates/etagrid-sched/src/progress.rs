//! Terminal progress: an overall bar and one line per slot when stderr is a terminal; plain
//! log lines otherwise (CI logs, pipes).

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::IsTerminal;

pub struct Progress {
    multi: Option<MultiProgress>,
    overall: ProgressBar,
    slots: Vec<ProgressBar>,
}

impl Progress {
    pub fn new(total: u64, slots: usize, enabled: bool) -> Progress {
        let live = enabled && std::io::stderr().is_terminal();
        let multi = live.then(|| MultiProgress::with_draw_target(ProgressDrawTarget::stderr()));
        let overall = ProgressBar::new(total);
        overall.set_style(
            ProgressStyle::with_template(
                "{prefix:>8} [{bar:30}] {pos}/{len} cells  {elapsed_precise} (eta {eta})",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
        overall.set_prefix("sweep");
        let mut slot_bars = Vec::new();
        if let Some(m) = &multi {
            let overall = m.add(overall.clone());
            let _ = overall;
            for i in 0..slots {
                let b = m.add(ProgressBar::new(1));
                b.set_style(
                    ProgressStyle::with_template("{prefix:>8} {msg}")
                        .unwrap_or_else(|_| ProgressStyle::default_bar()),
                );
                b.set_prefix(format!("slot {i}"));
                b.set_message("idle");
                slot_bars.push(b);
            }
        } else {
            overall.set_draw_target(ProgressDrawTarget::hidden());
        }
        Progress {
            multi,
            overall,
            slots: slot_bars,
        }
    }

    /// A line that stays in the output.
    pub fn line(&self, msg: &str) {
        match &self.multi {
            Some(m) => {
                let _ = m.println(msg);
            }
            None => eprintln!("{msg}"),
        }
    }

    pub fn slot(&self, i: usize, msg: String) {
        if let Some(b) = self.slots.get(i) {
            b.set_message(msg);
        }
    }

    /// More cells to run (the next rung of a halving sweep).
    pub fn add_cells(&self, n: u64) {
        self.overall.inc_length(n);
    }

    pub fn cell_finished(&self) {
        self.overall.inc(1);
    }

    pub fn finish(&self) {
        for b in &self.slots {
            b.finish_and_clear();
        }
        self.overall.finish_and_clear();
    }
}
