//! Regex `target_modules` select exactly the modules Python's `re.fullmatch` (PEFT's rule)
//! selects, for patterns of the kinds PEFT users write, over the module names of the tiny
//! BERT, GPT-2 and Llama fixtures. Needs the venv's python (scripts/re_fullmatch.py).

mod common;

use common::{python, script};
use etagrid_spec::TargetModules;
use std::io::Write;
use std::process::{Command, Stdio};

const PATTERNS: &[&str] = &[
    r".*layer\.[0-5]\.attention\.self\.(query|value)",
    r".*\.(q|v)_proj",
    r".*(self_attn|mlp)\.\w+_proj$",
    r"model\.layers\.\d+\.(self_attn|mlp)\.(q|k|v|o|gate|up|down)_proj",
    r"^.*(c_attn|c_fc)",
    r"query|value",
    r"(?:.*\.)?(query|key)",
    r".*[^k]_proj",
    r".*\.h\.[0-1]\.attn\.c_.*",
    r"bert\.encoder\.layer\.1\..*dense",
    r".*(embed_tokens|wte|word_embeddings)",
    r"(?i).*QUERY",
];

fn names() -> Vec<String> {
    let mut out = vec![
        "bert.embeddings.word_embeddings".to_owned(),
        "bert.pooler.dense".into(),
        "transformer.wte".into(),
        "model.embed_tokens".into(),
    ];
    for i in 0..2 {
        for m in [
            "attention.self.query",
            "attention.self.key",
            "attention.self.value",
            "attention.output.dense",
            "intermediate.dense",
            "output.dense",
        ] {
            out.push(format!("bert.encoder.layer.{i}.{m}"));
        }
        for m in ["attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"] {
            out.push(format!("transformer.h.{i}.{m}"));
        }
        for m in [
            "self_attn.q_proj",
            "self_attn.k_proj",
            "self_attn.v_proj",
            "self_attn.o_proj",
            "mlp.gate_proj",
            "mlp.up_proj",
            "mlp.down_proj",
        ] {
            out.push(format!("model.layers.{i}.{m}"));
        }
    }
    out
}

#[test]
fn regex_targets_select_the_same_modules_as_python_re_fullmatch() {
    let names = names();
    let job = serde_json::json!({ "patterns": PATTERNS, "names": names });
    let mut child = Command::new(python())
        .arg(script("re_fullmatch.py"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run python (needs scripts/setup.sh's venv)");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(job.to_string().as_bytes())
        .expect("write job");
    let run = child.wait_with_output().expect("python");
    assert!(
        run.status.success(),
        "re_fullmatch.py failed: {}",
        String::from_utf8_lossy(&run.stderr)
    );
    let python_says: Vec<Vec<String>> = serde_json::from_slice(&run.stdout).expect("json");
    for (pattern, want) in PATTERNS.iter().zip(&python_says) {
        let re = TargetModules::compile(pattern).expect("compiles");
        let got: Vec<&String> = names.iter().filter(|n| re.is_match(n)).collect();
        assert_eq!(got, want.iter().collect::<Vec<_>>(), "pattern {pattern:?}");
    }
    // Only the bare `query|value` (not a whole name) selects nothing, in Python and here.
    let empty: Vec<&&str> = PATTERNS
        .iter()
        .zip(&python_says)
        .filter(|(_, w)| w.is_empty())
        .map(|(p, _)| p)
        .collect();
    assert_eq!(empty, [&"query|value"]);
}
