//! `[lora]` options added for PEFT parity: regex `target_modules`, `use_rslora`, `embedding_lr`.
//! Their defaults must leave cell ids as they were (the pinned golden id in spec.rs covers the
//! hashed form of a sweep without them).

use etagrid_spec::{SweepSpec, TargetModules, DEFAULT_EMBEDDING_LR};
use std::path::Path;

const PATH: &str = "/projects/lora/sweeps/lora.toml";

/// The shared test sweep: a 2 × 2 grid with no `[lora]` section.
const BASE: &str = etagrid_spec::testing::SWEEP;

fn with_lora(lines: &str) -> String {
    format!("{BASE}[lora]\n{lines}\n")
}

fn parse(text: &str) -> SweepSpec {
    SweepSpec::parse(Path::new(PATH), text).unwrap_or_else(|e| panic!("{e}\n--- sweep:\n{text}"))
}

fn error(text: &str) -> String {
    match SweepSpec::parse(Path::new(PATH), text) {
        Ok(_) => panic!("expected an error for:\n{text}"),
        Err(e) => e.to_string(),
    }
}

fn ids(text: &str) -> Vec<String> {
    parse(text).cells().into_iter().map(|c| c.id.0).collect()
}

#[test]
fn target_modules_string_is_a_regex_and_list_stays_a_list() {
    let s = parse(&with_lora(
        r#"target_modules = ".*layer\\.[0-5]\\.attention\\.self\\.(query|value)""#,
    ));
    assert_eq!(
        s.lora.target_modules,
        TargetModules::Regex(r".*layer\.[0-5]\.attention\.self\.(query|value)".into())
    );
    let s = parse(&with_lora(r#"target_modules = ["query", "value"]"#));
    assert_eq!(
        s.lora.target_modules,
        TargetModules::List(vec!["query".into(), "value".into()])
    );
}

#[test]
fn regex_form_is_a_full_match_like_python_re_fullmatch() {
    let re = TargetModules::compile(r".*layer\.[0-5]\.attention\.self\.(query|value)").expect("re");
    assert!(re.is_match("bert.encoder.layer.3.attention.self.query"));
    assert!(!re.is_match("bert.encoder.layer.7.attention.self.query"));
    // fullmatch: a match of part of the name is not enough (re.search would accept these).
    assert!(!re.is_match("bert.encoder.layer.3.attention.self.query.lora_A"));
    let re = TargetModules::compile("query|value").expect("re");
    assert!(re.is_match("value"));
    assert!(!re.is_match("bert.encoder.layer.0.attention.self.value"));
}

#[test]
fn invalid_regex_is_an_error_naming_the_field_and_line() {
    let text = with_lora(r#"target_modules = ".*(query|value""#);
    let message = error(&text);
    assert!(message.contains(PATH), "{message}");
    assert!(message.contains("lora.target_modules"), "{message}");
    assert!(message.contains("regex"), "{message}");
    let line = text
        .lines()
        .position(|l| l.starts_with("target_modules"))
        .expect("line")
        + 1;
    assert!(message.contains(&format!("{PATH}:{line}:")), "{message}");
    let message = error(&with_lora(r#"target_modules = """#));
    assert!(
        message.contains("lora.target_modules") && message.contains("empty"),
        "{message}"
    );
    let message = error(&with_lora("target_modules = []"));
    assert!(
        message.contains("lora.target_modules") && message.contains("empty"),
        "{message}"
    );
    // Look-around is not in the `regex` crate's syntax: said plainly, not silently mismatched.
    let message = error(&with_lora(r#"target_modules = "(?!pooler).*dense""#));
    assert!(message.contains("look-around"), "{message}");
}

#[test]
fn rslora_and_embedding_lr_parse_and_default() {
    let s = parse(BASE);
    assert!(!s.lora.use_rslora);
    assert_eq!(s.lora.embedding_lr, DEFAULT_EMBEDDING_LR);
    assert_eq!(s.lora.scaling(), 1.0, "α defaults to r: α/r = 1");
    let s = parse(&with_lora(
        "rank = 16\nalpha = 8\nuse_rslora = true\nembedding_lr = 1e-5",
    ));
    assert!(s.lora.use_rslora);
    assert_eq!(s.lora.embedding_lr, 1e-5);
    assert_eq!(s.lora.scaling(), 2.0, "rsLoRA: α/√r = 8/4");
    let message = error(&with_lora("embedding_lr = -1e-6"));
    assert!(message.contains("lora.embedding_lr"), "{message}");
    let message = error(&with_lora("target_modules = 3"));
    assert!(
        message.contains("a list of module names") && message.contains("regex string"),
        "{message}"
    );
    let message = error(&with_lora("use_rs_lora = true"));
    assert!(
        message.contains("use_rs_lora"),
        "unknown keys stay errors: {message}"
    );
}

#[test]
fn new_options_at_their_defaults_keep_cell_ids_and_otherwise_change_them() {
    let base = ids(BASE);
    let same = with_lora("use_rslora = false\nembedding_lr = 1e-6");
    assert_eq!(ids(&same), base, "defaults written out changed the ids");
    for changed in [
        with_lora("use_rslora = true"),
        with_lora("embedding_lr = 1e-5"),
        with_lora(r#"target_modules = "query|value""#),
    ] {
        let other = ids(&changed);
        assert!(
            other.iter().all(|id| !base.contains(id)),
            "{changed} kept an id"
        );
    }
}
