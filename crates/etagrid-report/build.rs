//! Embeds the git commit etagrid is built from (ETAGRID_GIT_COMMIT) for the reports'
//! provenance; empty when not built from a git checkout.

use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    let s = String::from_utf8(out.stdout).ok()?.trim().to_owned();
    (out.status.success() && !s.is_empty()).then_some(s)
}

fn main() {
    let commit = git(&["rev-parse", "--short=12", "HEAD"]).unwrap_or_default();
    println!("cargo:rustc-env=ETAGRID_GIT_COMMIT={commit}");
    // Rebuild when HEAD moves (a commit, a checkout); the git dir may be a worktree's.
    if let Some(dir) = git(&["rev-parse", "--absolute-git-dir"]) {
        println!("cargo:rerun-if-changed={dir}/HEAD");
        if let Some(head_ref) = git(&["symbolic-ref", "-q", "HEAD"]) {
            if let Some(common) = git(&["rev-parse", "--path-format=absolute", "--git-common-dir"])
            {
                println!("cargo:rerun-if-changed={common}/{head_ref}");
            }
        }
    }
}
