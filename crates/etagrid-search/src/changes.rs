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
    /// rungs written out as the defaults they were are no change, and default rungs that follow
    /// a new `reduction` are one), `keep_per_row` and `min_tau`. Empty when a run with `self`
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
            Some(r) => format!("{r:?}"),
            None => {
                let k = u64::from(self.reduction);
                format!("not set (default [1/{}, 1/{k}, 1.0])", k * k)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Strategy;

    fn halving() -> SearchSpec {
        SearchSpec {
            strategy: Strategy::Halving,
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
        };
        assert_eq!(
            lines(&new, &old),
            [
                "strategy: \"halving\" → \"grid\"",
                "reduction: 3 → 4",
                "rungs: [0.111, 0.333, 1.0] → [0.25, 1.0]",
                "keep_per_row: 1 → 2",
                "min_tau: -1.0 → 0.5",
            ]
        );
    }

    #[test]
    fn a_new_reduction_names_the_default_rungs_that_follow_it() {
        let new = SearchSpec {
            reduction: 2,
            ..halving()
        };
        assert_eq!(
            lines(&new, &halving()),
            [
                "reduction: 3 → 2",
                "rungs: not set (default [1/9, 1/3, 1.0]) → not set (default [1/4, 1/2, 1.0])",
            ]
        );
        // With rungs given, the reduction still changes each cut, but no rung moves.
        let given = |reduction| SearchSpec {
            reduction,
            rungs: Some(vec![0.5, 1.0]),
            ..halving()
        };
        assert_eq!(lines(&given(2), &given(3)), ["reduction: 3 → 2"]);
    }
}
