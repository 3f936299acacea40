//! `etagrid-torch` is the binary that links libtorch and holds the whole command line, the
//! commands the tch-free `etagrid` runs itself included. (The CLI's end-to-end tests are in
//! crates/etagrid/tests: they run `etagrid`, which execs this binary.)

use std::process::Command;

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn etagrid_torch_links_libtorch_and_has_every_command() {
    let ldd = Command::new("ldd")
        .arg(env!("CARGO_BIN_EXE_etagrid-torch"))
        .output()
        .expect("ldd runs");
    assert!(text(&ldd.stdout).contains("libtorch_cpu"));
    let help = Command::new(env!("CARGO_BIN_EXE_etagrid-torch"))
        .arg("--help")
        .output()
        .expect("etagrid-torch --help runs");
    let help = text(&help.stdout);
    assert!(help.contains("Usage: etagrid"), "{help}");
    for cmd in [
        "plan", "run", "report", "best", "status", "init", "export", "predict",
    ] {
        assert!(
            help.lines().any(|l| l.trim_start().starts_with(cmd)),
            "no {cmd} in {help}"
        );
    }
}
