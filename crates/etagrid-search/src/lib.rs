//! Grid-aware successive halving for etagrid (issue 11): the `[search]` section of a sweep file
//! ([`SearchSpec`]), the promotion policy applied after each rung ([`decide`]) and its offline
//! replay on the trajectories of a finished full-grid sweep ([`replay()`]).
//!
//! Pure Rust: no libtorch, no async, no store. The scheduler and the `etagrid replay-halving`
//! command turn their data into [`Entry`] and [`Trajectory`] values.
//!
//! # The policy, in short
//!
//! Every cell first trains to the end of rung 0 (a fraction of its step budget, see
//! [`SearchSpec::rung_step`]); after each rung but the last, [`decide`] keeps some (η_A, η_B)
//! points and prunes the rest; the kept points train on to the next rung. The rules:
//!
//! 1. Cells are grouped into points by (η_A, η_B) (compared by their f64 bit patterns). A
//!    point's value is the mean over its seeds. A point with any seed that has no finite value
//!    (diverged, failed, NaN or ±inf) is *diverged*: it is never promoted.
//! 2. With `n` finite points, the best `ceil(n / reduction)` points overall are promoted,
//!    together with the best few finite points of every η_A row (the points with the same η_A;
//!    `keep_per_row` after the first rung, none at the last promotion:
//!    [`SearchSpec::per_row_at`]), so that each row keeps a profile over η_B while the ranking
//!    is young. Everything else is pruned.
//! 3. From the second decision on, Kendall's τ-b between the previous and the current rung's
//!    values of the points (over those finite at both) measures whether the ranking has settled.
//!    When τ < `min_tau` the early ranking is not trusted: pruning stops and every finite point
//!    is promoted. τ is undefined (and does not stop pruning) with fewer than 2 common points or
//!    when either ranking is all ties. Off by default (`min_tau = -1`): see [`SearchSpec`].
//! 4. Ties in value are broken by (η_A, η_B) ascending; the input is sorted first, so the
//!    decision does not depend on the order of the entries.
//!
//! See docs/halving.md for the reasoning and the `etagrid replay-halving` command.

mod changes;
mod kendall;
mod policy;
mod replay;

pub use changes::SearchChange;
pub use kendall::kendall_tau_b;
pub use policy::{decide, Decision, Entry};
pub use replay::{replay, OneD, Replay, Trajectory};

use serde::{Deserialize, Serialize};

/// How a sweep explores its grid.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Strategy {
    /// Every cell trains its full budget (the default).
    #[default]
    Grid,
    /// Grid-aware successive halving: cells are pruned at rungs by [`decide`].
    Halving,
}

impl Strategy {
    /// The name the sweep file uses (`"grid"`, `"halving"`).
    pub fn name(self) -> &'static str {
        match self {
            Strategy::Grid => "grid",
            Strategy::Halving => "halving",
        }
    }

    /// The strategy a [`Strategy::name`] names.
    pub fn from_name(name: &str) -> Option<Strategy> {
        [Strategy::Grid, Strategy::Halving]
            .into_iter()
            .find(|s| s.name() == name)
    }
}

/// The `[search]` section of a sweep file. Every field has a default; unknown keys are errors.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SearchSpec {
    /// `grid` (default) or `halving`.
    pub strategy: Strategy,
    /// The factor by which each rung cuts the points overall (default 4: each rung keeps the best
    /// quarter, with the rows' guarantee; 3 until 2026-12-01, docs/halving.md says why); at
    /// least 2. It does not move the default rungs.
    pub reduction: u32,
    /// The rungs as fractions of each cell's full step budget: strictly increasing, each in
    /// (0, 1], the last 1.0. Default (`None`): [`DEFAULT_RUNGS`], whatever the reduction.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rungs: Option<Vec<f64>>,
    /// At least the best `keep_per_row` finite points of every η_A row are promoted after the
    /// first rung, fewer after later rungs and none at the last promotion
    /// ([`SearchSpec::per_row_at`]; default 2).
    pub keep_per_row: usize,
    /// When Kendall's τ between the previous and this rung's ranking of the survivors is below
    /// it, pruning stops: every finite survivor is promoted. In [-1, 1]; default −1, i.e. off:
    /// the survivors of a rung are the best third, near-tied, and on the benchmark's real sweeps
    /// their τ between rungs was −0.5…0.3 while pruning lost nothing (docs/halving.md).
    pub min_tau: f64,
    /// After the sweep finishes, `etagrid run` writes the sweep `<name>-refine` beside its file
    /// (η_A and λ at half-octave steps around the best point, 3 × 3, full budget: `etagrid
    /// refine`) and runs it too. Default false. Not a setting of the rungs: changing it on a
    /// started sweep changes nothing of what it ran.
    pub refine: bool,
}

/// [`SearchSpec::reduction`]'s default.
pub const DEFAULT_REDUCTION: u32 = 4;
/// [`SearchSpec::rungs`]' default: 1/9, 1/3 and all of the budget, whatever the reduction. Until
/// 2026-12-01 the default rungs were `[1/r², 1/r, 1]` for reduction r; with r = 4 that puts the
/// first rung at 1/16, where replays of real grids lost up to 0.62 points (docs/halving.md).
pub const DEFAULT_RUNGS: [f64; 3] = [1.0 / 9.0, 1.0 / 3.0, 1.0];
/// [`SearchSpec::keep_per_row`]'s default.
pub const DEFAULT_KEEP_PER_ROW: usize = 2;
/// [`SearchSpec::min_tau`]'s default.
pub const DEFAULT_MIN_TAU: f64 = -1.0;

impl Default for SearchSpec {
    fn default() -> SearchSpec {
        SearchSpec {
            strategy: Strategy::Grid,
            reduction: DEFAULT_REDUCTION,
            rungs: None,
            keep_per_row: DEFAULT_KEEP_PER_ROW,
            min_tau: DEFAULT_MIN_TAU,
            refine: false,
        }
    }
}

impl SearchSpec {
    /// Checks the values serde cannot: `Err` names the key and the value given.
    pub fn validate(&self) -> Result<(), String> {
        if self.reduction < 2 {
            return Err(format!(
                "search.reduction must be at least 2 (got {})",
                self.reduction
            ));
        }
        if !(self.min_tau.is_finite() && (-1.0..=1.0).contains(&self.min_tau)) {
            return Err(format!(
                "search.min_tau must be in [-1, 1] (got {})",
                self.min_tau
            ));
        }
        if let Some(r) = &self.rungs {
            if r.is_empty() {
                return Err("search.rungs must not be empty: give at least [1.0]".into());
            }
            if let Some(bad) = r
                .iter()
                .find(|f| !(f.is_finite() && **f > 0.0 && **f <= 1.0))
            {
                return Err(format!(
                    "search.rungs must be fractions of the step budget in (0, 1] (got {bad} in {r:?})"
                ));
            }
            if r.windows(2).any(|w| w[0] >= w[1]) || r.last() != Some(&1.0) {
                return Err(format!(
                    "search.rungs must increase and end at 1.0 (got {r:?})"
                ));
            }
        }
        Ok(())
    }

    /// The rungs as fractions of the step budget: `rungs`, or [`DEFAULT_RUNGS`].
    pub fn fractions(&self) -> Vec<f64> {
        match &self.rungs {
            Some(r) => r.clone(),
            None => DEFAULT_RUNGS.to_vec(),
        }
    }

    /// The default rungs of an etagrid before 2026-12-01, `[1/r², 1/r, 1]` for reduction r: what
    /// a halving sweep it started with `rungs` unset was put on (its store recorded no rungs).
    pub fn default_rungs_before_2026_12(reduction: u32) -> Vec<f64> {
        let k = f64::from(reduction.max(1));
        vec![1.0 / (k * k), 1.0 / k, 1.0]
    }

    pub fn rung_count(&self) -> usize {
        self.fractions().len()
    }

    /// How many points of every η_A row the promotion after rung `rung` keeps at least:
    /// `keep_per_row` after the first rung, falling linearly to none at the last promotion
    /// (the one to the full budget, made on the longest runs, is by rank alone):
    /// `ceil(keep_per_row · (D − 1 − rung) / (D − 1))` for D promotions (rung_count − 1).
    pub fn per_row_at(&self, rung: usize) -> usize {
        let d = self.rung_count().saturating_sub(1);
        if d <= 1 {
            // One promotion: it is both the first and the last; the rows keep their guarantee.
            return if rung == 0 { self.keep_per_row } else { 0 };
        }
        let left = (d - 1).saturating_sub(rung);
        (self.keep_per_row * left).div_ceil(d - 1)
    }

    /// The step at which rung `rung` (0-based) ends for a cell of `total_steps` steps:
    /// `ceil(fraction · total_steps)`, at least 1 and at most `total_steps`; the last rung (and
    /// any `rung` past it) is `total_steps`. A product within 1e-9 (relative) of an integer
    /// counts as that integer, so `1/9 · 9` is step 1 whatever the rounding of `1/9`.
    pub fn rung_step(&self, rung: usize, total_steps: u64) -> u64 {
        let f = self.fractions();
        if rung + 1 >= f.len() {
            return total_steps;
        }
        fraction_step(f[rung], total_steps)
    }
}

/// The step at which `fraction` of a budget of `total_steps` ends: `ceil(fraction · total)`,
/// at least 1 and at most `total_steps` (1.0 and more is `total_steps`). A product within 1e-9
/// (relative) of an integer counts as that integer. The one definition of a rung's step: the
/// worker pauses there (etagrid-spec's job segments) and the replay reads evaluations there.
pub fn fraction_step(fraction: f64, total_steps: u64) -> u64 {
    if fraction >= 1.0 {
        return total_steps;
    }
    let x = fraction * total_steps as f64;
    let near = x.round();
    let step = if (x - near).abs() <= 1e-9 * x.abs().max(1.0) {
        near
    } else {
        x.ceil()
    };
    (step.max(1.0) as u64).min(total_steps)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_rungs(r: &[f64]) -> SearchSpec {
        SearchSpec {
            rungs: Some(r.to_vec()),
            ..SearchSpec::default()
        }
    }

    #[test]
    fn defaults_are_grid_reduction_4_two_per_row_and_no_tau_stop() {
        let s = SearchSpec::default();
        assert_eq!(s.strategy, Strategy::Grid);
        assert_eq!(s.reduction, 4);
        assert_eq!(s.keep_per_row, 2);
        assert_eq!(s.min_tau, -1.0);
        assert_eq!(s.fractions(), vec![1.0 / 9.0, 1.0 / 3.0, 1.0]);
        assert_eq!(s.rung_count(), 3);
        assert_eq!(s.validate(), Ok(()));
    }

    #[test]
    fn toml_section_defaults_every_field_and_denies_unknown_keys() {
        let s: SearchSpec = toml::from_str("").expect("empty section");
        assert_eq!(s, SearchSpec::default());
        let s: SearchSpec =
            toml::from_str("strategy = \"halving\"\nrungs = [0.25, 1.0]\nmin_tau = 0.2")
                .expect("section");
        assert_eq!(s.strategy, Strategy::Halving);
        assert_eq!(s.rungs, Some(vec![0.25, 1.0]));
        assert_eq!(s.reduction, DEFAULT_REDUCTION);
        let e = toml::from_str::<SearchSpec>("reductoin = 4")
            .expect_err("unknown key")
            .to_string();
        assert!(e.contains("reductoin"), "{e}");
        let e = toml::from_str::<SearchSpec>("strategy = \"random\"")
            .expect_err("unknown strategy")
            .to_string();
        assert!(e.contains("random"), "{e}");
        // And back: None rungs are left out.
        let text = toml::to_string(&SearchSpec::default()).expect("serialize");
        assert!(!text.contains("rungs"), "{text}");
        assert_eq!(
            toml::from_str::<SearchSpec>(&text).expect("round trip"),
            SearchSpec::default()
        );
    }

    #[test]
    fn validate_names_the_key_and_the_value() {
        let err = |s: SearchSpec| s.validate().expect_err("invalid");
        let e = err(SearchSpec {
            reduction: 1,
            ..SearchSpec::default()
        });
        assert_eq!(e, "search.reduction must be at least 2 (got 1)");
        let e = err(with_rungs(&[0.5, 0.3, 1.0]));
        assert_eq!(
            e,
            "search.rungs must increase and end at 1.0 (got [0.5, 0.3, 1.0])"
        );
        let e = err(with_rungs(&[0.3, 0.3, 1.0]));
        assert!(e.starts_with("search.rungs must increase"), "{e}");
        let e = err(with_rungs(&[0.2, 0.6]));
        assert!(
            e.starts_with("search.rungs must increase and end at 1.0"),
            "{e}"
        );
        let e = err(with_rungs(&[0.0, 1.0]));
        assert!(e.starts_with("search.rungs must be fractions"), "{e}");
        let e = err(with_rungs(&[0.5, 1.5]));
        assert!(e.contains("1.5"), "{e}");
        let e = err(with_rungs(&[f64::NAN, 1.0]));
        assert!(e.starts_with("search.rungs must be fractions"), "{e}");
        let e = err(with_rungs(&[]));
        assert!(e.starts_with("search.rungs must not be empty"), "{e}");
        for tau in [-1.5, 1.01, f64::NAN] {
            let e = err(SearchSpec {
                min_tau: tau,
                ..SearchSpec::default()
            });
            assert!(e.starts_with("search.min_tau must be in [-1, 1]"), "{e}");
        }
        assert_eq!(with_rungs(&[1.0]).validate(), Ok(()));
        for tau in [-1.0, 0.0, 1.0] {
            let s = SearchSpec {
                min_tau: tau,
                keep_per_row: 0,
                ..SearchSpec::default()
            };
            assert_eq!(s.validate(), Ok(()));
        }
    }

    #[test]
    fn rung_steps_round_up_and_stay_within_one_and_the_budget() {
        let s = SearchSpec {
            reduction: 3,
            ..SearchSpec::default()
        };
        // 1/9 and 1/3 of 9 steps are exact: no step 2 from 1/9 · 9 = 1.0000000000000002.
        assert_eq!(
            (0..3).map(|r| s.rung_step(r, 9)).collect::<Vec<_>>(),
            [1, 3, 9]
        );
        assert_eq!(
            (0..3).map(|r| s.rung_step(r, 900)).collect::<Vec<_>>(),
            [100, 300, 900]
        );
        // ceil: 10/9 → 2, 10/3 → 4.
        assert_eq!(
            (0..3).map(|r| s.rung_step(r, 10)).collect::<Vec<_>>(),
            [2, 4, 10]
        );
        // At least 1: 1/9 of 3 steps is step 1; a one-step budget has every rung at 1.
        assert_eq!(s.rung_step(0, 3), 1);
        assert_eq!(
            (0..3).map(|r| s.rung_step(r, 1)).collect::<Vec<_>>(),
            [1, 1, 1]
        );
        // The last rung (and past it) is the budget.
        assert_eq!(s.rung_step(2, 7), 7);
        assert_eq!(s.rung_step(5, 7), 7);
        // Printed fractions: 0.111 · 9 = 0.999 → 1, 0.333 · 9 = 2.997 → 3.
        let p = with_rungs(&[0.111, 0.333, 1.0]);
        assert_eq!(
            (0..3).map(|r| p.rung_step(r, 9)).collect::<Vec<_>>(),
            [1, 3, 9]
        );
        let half = with_rungs(&[0.5, 1.0]);
        assert_eq!(half.rung_step(0, 9), 5);
        assert_eq!(half.rung_count(), 2);
        // The reduction moves no default rung (it did before 2026-12-01: 1/r², 1/r).
        for reduction in [2, 3, 4, 9] {
            let s = SearchSpec {
                reduction,
                ..SearchSpec::default()
            };
            assert_eq!(s.fractions(), DEFAULT_RUNGS.to_vec());
        }
        assert_eq!(
            SearchSpec::default_rungs_before_2026_12(4),
            vec![1.0 / 16.0, 0.25, 1.0]
        );
    }
}
