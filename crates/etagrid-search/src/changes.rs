//! What changed in a sweep's `[search]` section since its halving started: the store records
//! the settings a halving sweep put its cells on rungs with, and a later run compares the sweep
//! file's section with them (`[search]` is not part of the cell ids, so nothing else would see
//! the edit).

use crate::SearchSpec;
use std::fmt;

/// A `[search]` key whose value differs from the recorded one, both written as in a sweep file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SearchChange {
    pub key: &'static str,
    pub old: String,
    pub new: String,
}

impl fmt::Display for SearchChange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {} → {}", self.key, self.old, self.new)
    }
}

impl SearchSpec {
    /// The keys whose values differ from `recorded` in anything that moves a rung or changes a
    /// promotion: `strategy`, `reduction`, `rungs` (compared as [`SearchSpec::fractions`], so
    /// rungs written out as the defaults they were are no change), `keep_per_row` and `min_tau`. Empty when a run with `self`
    /// continues exactly what `recorded` started.
    pub fn changes_from(&self, recorded: &SearchSpec) -> Vec<SearchChange> {
        let mut changes = Vec::new();
        let mut differ = |key, differs: bool, text: fn(&SearchSpec) -> String| {
            if differs {
                changes.push(SearchChange {
                    key,
                    old: text(recorded),
                    new: text(self),
                });
            }
        };
        differ("strategy", self.strategy != recorded.strategy, |s| {
            format!("{:?}", s.strategy.name())
        });
        differ("reduction", self.reduction != recorded.reduction, |s| {
            s.reduction.to_string()
        });
        differ("rungs", self.fractions() != recorded.fractions(), |s| {
            s.rungs_text()
        });
        differ(
            "keep_per_row",
            self.keep_per_row != recorded.keep_per_row,
            |s| s.keep_per_row.to_string(),
        );
        differ("min_tau", self.min_tau != recorded.min_tau, |s| {
            format!("{:?}", s.min_tau)
        });
        changes
    }

    /// `rungs` as the sweep file writes it, or the defaults it stands for when unset.
    fn rungs_text(&self) -> String {
        match &self.rungs {
            Some(r) if r.as_slice() == crate::DEFAULT_RUNGS => {
                "[1/9, 1/3, 1.0] (the default)".into()
            }
            Some(r) => format!("{r:?}"),
            None => "not set (default [1/9, 1/3, 1.0])".into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Strategy;

    /// A halving section with reduction 3 (the default before 2026-12-01: a store may hold
    /// sweeps it started).
    fn halving() -> SearchSpec {
        SearchSpec {
            strategy: Strategy::Halving,
            reduction: 3,
            ..SearchSpec::default()
        }
    }

    fn lines(new: &SearchSpec, old: &SearchSpec) -> Vec<String> {
        new.changes_from(old)
            .iter()
            .map(|c| c.to_string())
            .collect()
    }

    #[test]
    fn the_same_settings_are_no_change_even_with_the_default_rungs_written_out() {
        assert!(halving().changes_from(&halving()).is_empty());
        let written = SearchSpec {
            rungs: Some(vec![1.0 / 9.0, 1.0 / 3.0, 1.0]),
            ..halving()
        };
        assert!(written.changes_from(&halving()).is_empty());
        assert!(halving().changes_from(&written).is_empty());
    }

    #[test]
    fn every_key_that_moves_a_rung_or_a_promotion_is_named_with_old_and_new_values() {
        let old = SearchSpec {
            rungs: Some(vec![0.111, 0.333, 1.0]),
            keep_per_row: 1,
            ..halving()
        };
        let new = SearchSpec {
            strategy: Strategy::Grid,
            reduction: 4,
            rungs: Some(vec![0.25, 1.0]),
            keep_per_row: 2,
            min_tau: 0.5,
            refine: true,
        };
        assert_eq!(
            lines(&new, &old),
            [
                "strategy: \"halving\" → \"grid\"",
                "reduction: 3 → 4",
                "rungs: [0.111, 0.333, 1.0] → [0.25, 1.0]",
                "keep_per_row: 1 → 2",
                "min_tau: -1.0 → 0.5",
            ],
            "refine moves no rung: not a change"
        );
    }

    #[test]
    fn a_new_reduction_moves_no_default_rung() {
        let new = SearchSpec {
            reduction: 2,
            ..halving()
        };
        assert_eq!(lines(&new, &halving()), ["reduction: 3 → 2"]);
        // A sweep an etagrid of before 2026-12-01 started with the defaults (reduction 3, rungs
        // unset, read back from the store written out as [1/9, 1/3, 1]), run with today's.
        let recorded = SearchSpec {
            rungs: Some(SearchSpec::default_rungs_before_2026_12(3)),
            ..halving()
        };
        let today = SearchSpec {
            strategy: Strategy::Halving,
            ..SearchSpec::default()
        };
        assert_eq!(lines(&today, &recorded), ["reduction: 3 → 4"]);
        // One it started with reduction 2 and rungs unset was on [1/4, 1/2, 1]: today's default
        // rungs would move them, and the message gives the values to put back.
        let recorded = SearchSpec {
            reduction: 2,
            rungs: Some(SearchSpec::default_rungs_before_2026_12(2)),
            ..halving()
        };
        let again = SearchSpec {
            reduction: 2,
            ..today.clone()
        };
        assert_eq!(
            lines(&again, &recorded),
            ["rungs: [0.25, 0.5, 1.0] → not set (default [1/9, 1/3, 1.0])"]
        );
        // The default written out reads as such.
        assert_eq!(
            lines(
                &again,
                &SearchSpec {
                    rungs: Some(vec![0.5, 1.0]),
                    ..recorded
                }
            ),
            ["rungs: [0.5, 1.0] → not set (default [1/9, 1/3, 1.0])"]
        );
        let written = SearchSpec {
            rungs: Some(crate::DEFAULT_RUNGS.to_vec()),
            ..again.clone()
        };
        assert_eq!(
            lines(
                &SearchSpec {
                    rungs: Some(vec![0.5, 1.0]),
                    ..again
                },
                &written
            ),
            ["rungs: [1/9, 1/3, 1.0] (the default) → [0.5, 1.0]"]
        );
    }
}
