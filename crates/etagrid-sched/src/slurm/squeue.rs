//! Talking to SLURM's commands, and parsing what they print.

use std::collections::HashMap;

/// A task is live while SLURM may still run it (or is running it). Unknown states count as live:
/// resubmitting a cell that a task will run anyway only costs a skipped task.
pub fn is_live(state: &str) -> bool {
    let s = state.split_whitespace().next().unwrap_or("");
    !matches!(
        s,
        "COMPLETED"
            | "FAILED"
            | "CANCELLED"
            | "TIMEOUT"
            | "NODE_FAIL"
            | "PREEMPTED"
            | "OUT_OF_MEMORY"
            | "BOOT_FAIL"
            | "DEADLINE"
            | "SPECIAL_EXIT"
    )
}

/// Expands a SLURM array id as `squeue`/`sacct` print it: `12_3` → `["12_3"]`, `12_[0-2,5%2]` →
/// `["12_0", "12_1", "12_2", "12_5"]`. A plain job id (`12`) comes back unchanged.
pub fn expand_array_id(id: &str) -> Vec<String> {
    let Some((job, rest)) = id.split_once('_') else {
        return vec![id.to_owned()];
    };
    let Some(inner) = rest.strip_prefix('[').and_then(|r| r.strip_suffix(']')) else {
        return vec![id.to_owned()];
    };
    let inner = inner.split('%').next().unwrap_or("");
    let mut out = Vec::new();
    for part in inner.split(',') {
        let (a, b) = part.split_once('-').unwrap_or((part, part));
        let b = b.split(':').next().unwrap_or(b); // a step (`0-10:2`) is not used by etagrid
        if let (Ok(a), Ok(b)) = (a.trim().parse::<u64>(), b.trim().parse::<u64>()) {
            out.extend((a..=b).map(|i| format!("{job}_{i}")));
        }
    }
    out
}

/// Parses `squeue -h -r -t all -o '%i|%T'` (or `sacct -X -P -n -o JobID,State`) into task id →
/// state.
pub fn parse_task_states(text: &str) -> HashMap<String, String> {
    let mut out = HashMap::new();
    for line in text.lines() {
        let mut f = line.split('|');
        let (Some(id), Some(state)) = (f.next(), f.next()) else {
            continue;
        };
        for t in expand_array_id(id.trim()) {
            out.insert(t, state.trim().to_owned());
        }
    }
    out
}

/// `MaxArraySize` from `scontrol show config` (SLURM's default, 1001, when absent).
pub fn parse_max_array_size(config: &str) -> usize {
    config
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once('=')?;
            (k.trim() == "MaxArraySize").then(|| v.trim().parse().ok())?
        })
        .unwrap_or(1001)
}

/// Splits `n` tasks into arrays of at most `max_array_size - 1` tasks: indices of an array must
/// be below `MaxArraySize`.
pub fn split_arrays(n: usize, max_array_size: usize) -> Vec<std::ops::Range<usize>> {
    let per = max_array_size.saturating_sub(1).max(1);
    (0..n).step_by(per).map(|s| s..(s + per).min(n)).collect()
}

pub(super) async fn command(program: &str, args: &[&str]) -> Result<String, String> {
    command_env(program, args, &[]).await
}

pub(super) async fn command_env(
    program: &str,
    args: &[&str],
    env: &[(&str, &str)],
) -> Result<String, String> {
    let out = tokio::process::Command::new(program)
        .args(args)
        .envs(env.iter().copied())
        .output()
        .await
        .map_err(|e| format!("could not run `{program}`: {e} (is SLURM installed and on PATH?)"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "`{program} {}` failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// The states of the sweep's tasks that SLURM still knows (one `squeue` call per poll, by job
/// name). `squeue` rather than `sacct`: a task is live exactly while `squeue` lists it in a live
/// state, whereas `sacct` lags behind submissions (a just-submitted task would look vanished).
pub(super) async fn task_states(job_name: &str) -> Result<HashMap<String, String>, String> {
    let out = command(
        "squeue",
        &["-h", "-r", "-t", "all", "--name", job_name, "-o", "%i|%T"],
    )
    .await?;
    Ok(parse_task_states(&out))
}

pub(super) async fn max_array_size() -> usize {
    match command("scontrol", &["show", "config"]).await {
        Ok(text) => parse_max_array_size(&text),
        Err(_) => 1001,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn array_ids_expand_ranges_lists_and_throttles() {
        assert_eq!(expand_array_id("12_3"), vec!["12_3"]);
        assert_eq!(
            expand_array_id("12_[0-2,5%2]"),
            vec!["12_0", "12_1", "12_2", "12_5"]
        );
        assert_eq!(expand_array_id("12"), vec!["12"]);
    }

    #[test]
    fn squeue_text_gives_task_states() {
        let s = parse_task_states("7_0|RUNNING\n7_[1-2%1]|PENDING\n8|COMPLETED\n");
        assert_eq!(s["7_0"], "RUNNING");
        assert_eq!(s["7_2"], "PENDING");
        assert!(is_live(&s["7_1"]) && !is_live(&s["8"]));
        assert!(!is_live("CANCELLED by 0") && is_live("REQUEUED"));
    }

    #[test]
    fn arrays_are_split_below_max_array_size() {
        assert_eq!(
            parse_max_array_size("Foo = 1\nMaxArraySize            = 4\n"),
            4
        );
        assert_eq!(parse_max_array_size(""), 1001);
        assert_eq!(split_arrays(7, 4), vec![0..3, 3..6, 6..7]);
        assert_eq!(split_arrays(0, 4), Vec::<std::ops::Range<usize>>::new());
    }
}
