//! Test support (for this workspace's tests, not for users): the text of a small valid sweep
//! that the spec and store tests start from, and [`edit`] to change one thing in it.

/// A small valid sweep file: tiny-bert, a CSV task, 20 steps and a 2 × 2 grid of η_A × η_B.
/// Tests add or change what they are about with [`edit`] or by appending sections.
pub const SWEEP: &str = r#"[model]
path = "../models/tiny-bert"
[task]
train = "../data/train.csv"
eval = "../data/eval.csv"
[train]
steps = 20
[grid]
lr_a = [1e-4, 1e-3]
lr_b = [1e-4, 1e-3]
"#;

/// `text` with its first `from` (which must occur) replaced by `to`; panics, showing the text,
/// when `from` is not there.
pub fn edit(text: &str, from: &str, to: &str) -> String {
    assert!(text.contains(from), "test sweep has no {from:?}:\n{text}");
    text.replacen(from, to, 1)
}
