//! Puts libtorch's directory into the binary's run path, so `target/release/etagrid` starts
//! without LD_LIBRARY_PATH. libtorch is found as torch-sys finds it: `$LIBTORCH/lib`, else the
//! PyTorch of `$VIRTUAL_ENV/bin/python` (or `python3`). LD_LIBRARY_PATH still takes precedence,
//! which is how a binary copied to another machine finds that machine's libtorch.

use std::process::Command;

fn main() {
    println!("cargo:rerun-if-env-changed=LIBTORCH");
    println!("cargo:rerun-if-env-changed=VIRTUAL_ENV");
    println!("cargo:rerun-if-env-changed=LIBTORCH_USE_PYTORCH");
    if let Some(dir) = libtorch_lib_dir() {
        println!("cargo:rustc-link-arg-bins=-Wl,-rpath,{dir}");
    }
}

fn libtorch_lib_dir() -> Option<String> {
    if let Ok(root) = std::env::var("LIBTORCH") {
        return Some(format!("{root}/lib"));
    }
    let python = match std::env::var("VIRTUAL_ENV") {
        Ok(venv) => format!("{venv}/bin/python"),
        Err(_) => "python3".into(),
    };
    let out = Command::new(python)
        .args([
            "-c",
            "import os, torch; print(os.path.join(os.path.dirname(torch.__file__), 'lib'))",
        ])
        .output()
        .ok()?;
    let dir = String::from_utf8(out.stdout).ok()?.trim().to_owned();
    (out.status.success() && !dir.is_empty()).then_some(dir)
}
