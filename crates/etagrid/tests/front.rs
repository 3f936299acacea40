//! The `etagrid` front binary by itself. Its package depends on no crate that links libtorch (read
//! off Cargo.lock, so it holds by construction, not only for today's linker output); the commands
//! it runs (init, report, best, status) work with libtorch off the library path and no
//! etagrid-torch beside it; everything else goes to the etagrid-torch beside it through exec.

mod common;

use common::{manifest, text, tiny_bert, tiny_task};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// Every package `root` depends on, directly or not, as Cargo.lock records them (normal, build
/// and dev dependencies alike: stricter than `cargo tree -e normal`).
fn locked_closure(root: &str) -> BTreeSet<String> {
    let lock = std::fs::read_to_string(manifest().join("../../Cargo.lock")).expect("Cargo.lock");
    let lock: toml::Value = toml::from_str(&lock).expect("Cargo.lock parses");
    let mut deps: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for p in lock["package"].as_array().expect("[[package]]") {
        let name = p["name"].as_str().expect("name").to_owned();
        let list = p.get("dependencies").and_then(|d| d.as_array());
        // An entry is "name" or "name version" (when two versions are locked).
        let names = list.into_iter().flatten().filter_map(|d| {
            d.as_str()
                .and_then(|d| d.split(' ').next())
                .map(str::to_owned)
        });
        deps.entry(name).or_default().extend(names);
    }
    let mut seen = BTreeSet::new();
    let mut todo = vec![root.to_owned()];
    while let Some(p) = todo.pop() {
        if seen.insert(p.clone()) {
            todo.extend(deps.get(&p).into_iter().flatten().cloned());
        }
    }
    seen
}

#[test]
fn the_front_package_depends_on_no_crate_that_links_libtorch() {
    let torch = ["tch", "torch-sys", "etagrid-train"];
    let front = locked_closure("etagrid");
    for t in torch {
        assert!(!front.contains(t), "etagrid depends on {t}: {front:?}");
    }
    // The walk does find them where they are.
    let full = locked_closure("etagrid-torch");
    assert!(torch.iter().all(|t| full.contains(*t)), "{full:?}");
    // And the binary agrees.
    let ldd = Command::new("ldd")
        .arg(env!("CARGO_BIN_EXE_etagrid"))
        .output()
        .expect("ldd runs");
    let ldd = text(&ldd.stdout);
    assert!(!ldd.contains("torch"), "etagrid links libtorch:\n{ldd}");
}

/// A directory holding a copy of the front binary and nothing else: no etagrid-torch to exec.
struct Lone {
    dir: tempfile::TempDir,
}

impl Lone {
    fn new() -> Lone {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir(dir.path().join("bin")).expect("mkdir");
        std::fs::copy(
            env!("CARGO_BIN_EXE_etagrid"),
            dir.path().join("bin/etagrid"),
        )
        .expect("copy etagrid");
        Lone { dir }
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// The copy, run in the directory with libtorch kept off the library path.
    fn front(&self, args: &[&str]) -> Output {
        self.cmd(&self.path("bin/etagrid"), args)
    }

    fn cmd(&self, program: &Path, args: &[&str]) -> Output {
        let mut tries = 0;
        loop {
            let out = Command::new(program)
                .current_dir(self.dir.path())
                .env_clear()
                .env("PATH", "/usr/bin:/bin")
                .env("LD_LIBRARY_PATH", "")
                .arg("--state-dir")
                .arg(self.path("state"))
                .args(args)
                .output();
            match out {
                // The file was just written, and a test thread forking meanwhile holds the
                // write descriptor until its child execs (ETXTBSY): try again shortly.
                Err(e) if e.kind() == std::io::ErrorKind::ExecutableFileBusy && tries < 100 => {
                    tries += 1;
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                out => return out.expect("run etagrid"),
            }
        }
    }
}

#[test]
fn init_and_report_run_without_libtorch_and_without_etagrid_torch() {
    let lone = Lone::new();
    let path = |p: PathBuf| p.display().to_string();
    let (train, eval) = (path(tiny_task("train.csv")), path(tiny_task("eval.csv")));
    let init = lone.front(&[
        "init",
        "--model",
        &path(tiny_bert()),
        "--train",
        &train,
        "--eval",
        &eval,
        "--out",
        "tiny.toml",
    ]);
    assert!(init.status.success(), "{}", text(&init.stderr));
    assert!(lone.path("tiny.toml").is_file());

    // Results to report on: a run through the real pair (etagrid-torch checks the inputs), with
    // a fake worker that finishes each cell at once.
    let run = Command::new(env!("CARGO_BIN_EXE_etagrid"))
        .current_dir(lone.dir.path())
        .arg("--state-dir")
        .arg(lone.path("state"))
        .args(["run", "tiny.toml", "--no-report"])
        .env("ETAGRID_WORKER", manifest().join("tests/robust-worker.sh"))
        .env("FAKE_DIR", lone.dir.path())
        .env("FAKE_MODE", "ok")
        .output()
        .expect("etagrid run");
    assert!(run.status.success(), "{}", text(&run.stderr));

    let report = lone.front(&["report", "tiny"]);
    assert!(report.status.success(), "{}", text(&report.stderr));
    assert!(lone.path("reports/tiny/index.html").is_file());
    for args in [&["best", "tiny"][..], &["status", "tiny"]] {
        let out = lone.front(args);
        assert!(out.status.success(), "{args:?}: {}", text(&out.stderr));
    }
}

#[test]
fn other_commands_are_handed_to_the_etagrid_torch_beside_it() {
    let lone = Lone::new();
    // Without one, the error says what to build.
    let out = lone.front(&["plan", "x.toml"]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(
        err.contains("etagrid-torch") && err.contains("-p etagrid-torch"),
        "{err}"
    );

    // With one, it gets the arguments as they were, and its exit code is etagrid's.
    let fake = lone.path("bin/etagrid-torch");
    std::fs::write(&fake, "#!/bin/sh\necho \"torch: $*\"\nexit 7\n").expect("write");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    for args in [&["plan", "x.toml"][..], &["--help"], &["init", "--help"]] {
        let out = lone.front(args);
        assert_eq!(out.status.code(), Some(7), "{args:?}");
        let state = lone.path("state");
        assert_eq!(
            text(&out.stdout).trim(),
            format!("torch: --state-dir {} {}", state.display(), args.join(" ")),
        );
    }
}
