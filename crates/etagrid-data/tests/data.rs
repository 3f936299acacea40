//! Reading task data: the CSV, TSV and JSONL readers on committed fixtures, labels, pair
//! tokenization, the stratified split, column detection, and an error for each kind of bad data
//! that names the file, the line and what to do.

use etagrid_data::DataError;
use etagrid_data::{
    detect_columns, encode, load_examples, load_tokenizer, read_examples, read_table,
    stratified_split, ColumnChoice, Example, LabelMap, TaskData,
};
use etagrid_spec::spec::{Metric, SplitSpec};
use etagrid_spec::TaskSpec;
use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../etagrid-train/tests/fixtures/data")
        .join(name)
}

fn tiny_bert() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../etagrid-train/tests/fixtures/tiny-bert")
}

/// A task reading `train` and `eval` with the given columns.
fn task(train: &Path, eval: &Path, text: &str, pair: Option<&str>, label: &str) -> TaskSpec {
    TaskSpec {
        train: train.display().to_string(),
        eval: eval.display().to_string(),
        train_file: train.to_owned(),
        eval_file: eval.to_owned(),
        split: None,
        text_column: text.into(),
        text_pair_column: pair.map(Into::into),
        label_column: label.into(),
        max_eval_examples: None,
        metric: Metric::Accuracy,
        lm: None,
    }
}

fn text_task(path: &Path) -> TaskSpec {
    task(path, path, "text", None, "label")
}

/// Writes `bytes` to `name` in a fresh temp dir.
fn temp_file(name: &str, bytes: &[u8]) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join(name);
    std::fs::write(&path, bytes).expect("write");
    (dir, path)
}

fn read_err(path: &Path, task: &TaskSpec) -> String {
    match read_examples(path, task) {
        Ok(ex) => panic!("{} read without an error: {ex:?}", path.display()),
        Err(e) => e.to_string(),
    }
}

/// The message names the file (and the line, if given) and contains every one of `hints`.
fn assert_names(msg: &str, path: &Path, line: Option<u64>, hints: &[&str]) {
    let file = path.file_name().expect("name").to_string_lossy();
    assert!(msg.contains(file.as_ref()), "no file name in: {msg}");
    if let Some(l) = line {
        assert!(
            msg.contains(&format!("{file}:{l}:")),
            "no line {l} in: {msg}"
        );
    }
    for h in hints {
        assert!(msg.contains(h), "{h:?} missing from: {msg}");
    }
}

// ---------------------------------------------------------------- readers

#[test]
fn csv_reader_takes_text_and_labels_and_unquotes_fields() {
    let path = fixture("reviews.csv");
    let ex = read_examples(&path, &text_task(&path)).expect("read");
    let got: Vec<(&str, &str, u64)> = ex
        .iter()
        .map(|e| (e.text.as_str(), e.label.as_str(), e.line))
        .collect();
    assert_eq!(
        got,
        [
            ("the film was great", "pos", 2),
            ("a slow, boring story", "neg", 3),
            ("she said \"love it\" again", "pos", 4),
            ("the plot was dull", "neg", 5),
        ]
    );
    assert!(ex.iter().all(|e| e.text_pair.is_none()));
}

#[test]
fn tsv_reader_reads_a_glue_pair_file_without_quoting() {
    let path = fixture("glue.tsv");
    let t = task(&path, &path, "sentence1", Some("sentence2"), "label");
    let ex = read_examples(&path, &t).expect("read");
    assert_eq!(ex.len(), 4);
    // GLUE TSVs do not quote: the lone `"` opening line 3 is part of the text.
    assert_eq!(ex[1].text, "\"the story was sad");
    assert_eq!(ex[1].text_pair.as_deref(), Some("the ending was happy"));
    assert_eq!(ex[1].line, 3);
    assert_eq!(ex[0].label, "10");
}

#[test]
fn jsonl_reader_reads_pairs_skips_blank_lines_and_ignores_other_fields() {
    let path = fixture("nli.jsonl");
    let t = task(&path, &path, "premise", Some("hypothesis"), "label");
    let ex = read_examples(&path, &t).expect("read");
    let got: Vec<(&str, Option<&str>, &str, u64)> = ex
        .iter()
        .map(|e| {
            (
                e.text.as_str(),
                e.text_pair.as_deref(),
                e.label.as_str(),
                e.line,
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            (
                "the man is in paris",
                Some("he is in france"),
                "entailment",
                1
            ),
            ("the dog sleeps", Some("the dog plays"), "contradiction", 3),
            ("she has a book", Some("she loves the book"), "neutral", 4),
        ]
    );
}

#[test]
fn jsonl_reader_takes_integer_labels_written_as_numbers() {
    let (_d, path) = temp_file(
        "ints.jsonl",
        b"{\"text\": \"a\", \"label\": 2}\n{\"text\": \"b\", \"label\": \"10\"}\n",
    );
    let ex = read_examples(&path, &text_task(&path)).expect("read");
    assert_eq!(
        ex.iter().map(|e| e.label.as_str()).collect::<Vec<_>>(),
        ["2", "10"]
    );
}

#[test]
fn a_utf8_byte_order_mark_does_not_hide_the_first_column() {
    let (_d, path) = temp_file("bom.csv", b"\xEF\xBB\xBFtext,label\nthe film,pos\n");
    let ex = read_examples(&path, &text_task(&path)).expect("read");
    assert_eq!(ex[0].text, "the film");
}

#[test]
fn integer_labels_are_ordered_numerically_not_as_text() {
    let path = fixture("glue.tsv");
    let t = task(&path, &path, "sentence1", Some("sentence2"), "label");
    let labels = LabelMap::from_examples(&read_examples(&path, &t).expect("read"));
    // As text the order would be "1", "10", "2".
    assert_eq!(labels.labels, ["1", "2", "10"]);
}

#[test]
fn string_labels_are_ordered_as_text() {
    let path = fixture("nli.jsonl");
    let t = task(&path, &path, "premise", Some("hypothesis"), "label");
    let labels = LabelMap::from_examples(&read_examples(&path, &t).expect("read"));
    assert_eq!(labels.labels, ["contradiction", "entailment", "neutral"]);
}

#[test]
fn a_pair_task_tokenizes_both_texts_and_marks_the_pair_with_type_id_1() {
    let path = fixture("glue.tsv");
    let t = task(&path, &path, "sentence1", Some("sentence2"), "label");
    let ex = read_examples(&path, &t).expect("read");
    let labels = LabelMap::from_examples(&ex);
    let tok = load_tokenizer(&tiny_bert(), 64).expect("tokenizer");
    let enc = encode(&tok, &ex, &labels, &path).expect("encode");
    let single = tok.encode(ex[0].text.as_str(), true).expect("single");
    let pair_only = tok
        .encode(ex[0].text_pair.as_deref().expect("pair"), true)
        .expect("pair");
    // [CLS] text [SEP] pair [SEP]: the pair part is pair's tokens without its [CLS], type id 1.
    let n_text = single.len();
    let n_pair = pair_only.len() - 1;
    assert_eq!(enc.ids[0].len(), n_text + n_pair);
    assert_eq!(
        enc.ids[0][..n_text],
        single
            .get_ids()
            .iter()
            .map(|&i| i as i64)
            .collect::<Vec<_>>()[..]
    );
    assert_eq!(
        enc.ids[0][n_text..],
        pair_only.get_ids()[1..]
            .iter()
            .map(|&i| i as i64)
            .collect::<Vec<_>>()[..]
    );
    assert!(
        enc.type_ids[0][..n_text].iter().all(|&t| t == 0),
        "{:?}",
        enc.type_ids[0]
    );
    assert!(
        enc.type_ids[0][n_text..].iter().all(|&t| t == 1),
        "{:?}",
        enc.type_ids[0]
    );
    // Label "10" is class 2 of ["1", "2", "10"].
    assert_eq!(enc.labels, [2, 1, 0, 1]);
}

#[test]
fn a_single_text_task_has_only_type_id_0() {
    let path = fixture("reviews.csv");
    let ex = read_examples(&path, &text_task(&path)).expect("read");
    let tok = load_tokenizer(&tiny_bert(), 64).expect("tokenizer");
    let enc = encode(&tok, &ex, &LabelMap::from_examples(&ex), &path).expect("encode");
    assert!(enc.type_ids.iter().flatten().all(|&t| t == 0));
}

// ---------------------------------------------------------------- stratified split

/// `n` examples per label, labels interleaved in file order.
fn labelled(per_label: &[(&str, usize)]) -> Vec<Example> {
    let mut out = Vec::new();
    let max = per_label.iter().map(|p| p.1).max().unwrap_or(0);
    for i in 0..max {
        for &(label, n) in per_label {
            if i < n {
                out.push(Example {
                    text: format!("{label} {i}"),
                    text_pair: None,
                    label: label.into(),
                    line: out.len() as u64 + 2,
                });
            }
        }
    }
    out
}

fn count(ex: &[Example]) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for e in ex {
        *m.entry(e.label.clone()).or_insert(0) += 1;
    }
    m
}

fn texts(ex: &[Example]) -> Vec<String> {
    ex.iter().map(|e| e.text.clone()).collect()
}

#[test]
fn the_split_is_the_same_for_the_same_seed_and_differs_for_another() {
    let all = labelled(&[("a", 50), ("b", 30), ("c", 20)]);
    let (t1, e1) = stratified_split(all.clone(), 0.2, 7);
    let (t2, e2) = stratified_split(all.clone(), 0.2, 7);
    assert_eq!((texts(&t1), texts(&e1)), (texts(&t2), texts(&e2)));
    let (_, e3) = stratified_split(all, 0.2, 8);
    assert_ne!(texts(&e1), texts(&e3));
}

#[test]
fn the_split_keeps_each_labels_share_in_both_parts() {
    let all = labelled(&[("a", 50), ("b", 30), ("c", 20)]);
    let (train, eval) = stratified_split(all, 0.2, 0);
    // round(0.2 · n) of each label held out.
    assert_eq!(
        count(&eval),
        BTreeMap::from([("a".into(), 10), ("b".into(), 6), ("c".into(), 4)])
    );
    assert_eq!(
        count(&train),
        BTreeMap::from([("a".into(), 40), ("b".into(), 24), ("c".into(), 16)])
    );
}

#[test]
fn the_split_parts_do_not_overlap_and_cover_every_example_in_file_order() {
    let all = labelled(&[("a", 50), ("b", 30), ("c", 20)]);
    let (train, eval) = stratified_split(all.clone(), 0.25, 3);
    let t: HashSet<u64> = train.iter().map(|e| e.line).collect();
    let e: HashSet<u64> = eval.iter().map(|e| e.line).collect();
    assert!(t.is_disjoint(&e));
    assert_eq!(t.len() + e.len(), all.len());
    assert!(train.windows(2).all(|w| w[0].line < w[1].line));
    assert!(eval.windows(2).all(|w| w[0].line < w[1].line));
}

#[test]
fn the_split_of_one_label_does_not_change_when_another_label_is_added() {
    let (_, before) = stratified_split(labelled(&[("a", 40), ("b", 30)]), 0.2, 0);
    let (_, after) = stratified_split(labelled(&[("a", 40), ("b", 30), ("c", 25)]), 0.2, 0);
    let only_a = |ex: &[Example]| {
        ex.iter()
            .filter(|e| e.label == "a")
            .map(|e| e.text.clone())
            .collect::<Vec<_>>()
    };
    assert_eq!(only_a(&before), only_a(&after));
}

#[test]
fn a_label_with_one_example_stays_in_train() {
    let (train, eval) = stratified_split(labelled(&[("a", 10), ("rare", 1)]), 0.5, 0);
    assert_eq!(count(&train).get("rare"), Some(&1));
    assert_eq!(count(&eval).get("rare"), None);
}

#[test]
fn a_task_with_a_split_reads_train_and_eval_from_the_one_file() {
    let path = fixture("questions.csv");
    let mut t = task(&path, &path, "text", None, "coarse");
    t.split = Some(SplitSpec {
        eval_fraction: 0.25,
        seed: 0,
    });
    let (train, eval) = load_examples(&t).expect("load");
    let all = read_examples(&path, &t).expect("read");
    assert_eq!(train.len() + eval.len(), all.len());
    let (want_train, want_eval) = stratified_split(all, 0.25, 0);
    assert_eq!(texts(&train), texts(&want_train));
    assert_eq!(texts(&eval), texts(&want_eval));
}

#[test]
fn max_eval_examples_cuts_the_held_out_part_of_a_split() {
    let path = fixture("questions.csv");
    let mut t = task(&path, &path, "text", None, "coarse");
    t.split = Some(SplitSpec {
        eval_fraction: 0.5,
        seed: 0,
    });
    t.max_eval_examples = Some(5);
    let (_, eval) = load_examples(&t).expect("load");
    assert_eq!(eval.len(), 5);
    assert_eq!(etagrid_data::eval_examples(&t).expect("eval").len(), 5);
}

// ---------------------------------------------------------------- column detection

#[test]
fn detection_takes_the_longest_text_and_the_label_with_fewest_values() {
    let path = fixture("questions.csv");
    let table = read_table(&path, 1000).expect("table");
    let d = detect_columns(&table, &path, &ColumnChoice::default()).expect("detect");
    assert_eq!(d.text_column, "text");
    assert_eq!(d.text_pair_column, None);
    assert_eq!(d.label_column, "coarse");
    assert_eq!(d.labels.labels, ["DESC", "HUM", "LOC", "NUM"]);
    assert_eq!(d.label_counts.iter().sum::<u64>(), 48);
    assert_eq!(
        d.other_label_columns
            .iter()
            .map(|c| c.0.as_str())
            .collect::<Vec<_>>(),
        ["fine"]
    );
}

#[test]
fn detection_finds_a_pair_column_and_keeps_the_file_order() {
    let path = fixture("glue.tsv");
    let table = read_table(&path, 1000).expect("table");
    let d = detect_columns(&table, &path, &ColumnChoice::default()).expect("detect");
    assert_eq!(d.text_column, "sentence1");
    assert_eq!(d.text_pair_column.as_deref(), Some("sentence2"));
    assert_eq!(d.label_column, "label");
    assert_eq!(d.labels.labels, ["1", "2", "10"]);
}

#[test]
fn detection_takes_a_named_label_column_as_given() {
    let path = fixture("questions.csv");
    let table = read_table(&path, 1000).expect("table");
    let choice = ColumnChoice {
        label: Some("fine".into()),
        ..Default::default()
    };
    let d = detect_columns(&table, &path, &choice).expect("detect");
    assert_eq!(d.label_column, "fine");
    // The 9 fine labels that occur in the file, e.g. DESC:def and DESC:reason.
    assert_eq!(d.labels.labels.len(), 9);
    assert!(d.labels.labels.contains(&"DESC:reason".to_string()));
}

// ---------------------------------------------------------------- bad data

#[test]
fn a_missing_file_is_named_with_what_to_do() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("nowhere.csv");
    let msg = read_err(&path, &text_task(&path));
    assert_names(
        &msg,
        &path,
        None,
        &["not found", "check the path", "[task]"],
    );
}

#[test]
fn a_zero_byte_file_is_empty_not_missing_a_column() {
    for name in ["empty.csv", "empty.tsv", "empty.jsonl"] {
        let (_d, path) = temp_file(name, b"");
        let msg = read_err(&path, &text_task(&path));
        assert_names(&msg, &path, None, &["empty", "one example per line"]);
    }
}

#[test]
fn a_header_without_rows_has_no_examples() {
    let (_d, path) = temp_file("header.csv", b"text,label\n");
    let msg = read_err(&path, &text_task(&path));
    assert_names(
        &msg,
        &path,
        None,
        &["no examples", "add one example per line"],
    );
}

#[test]
fn a_missing_csv_column_lists_the_columns_and_the_key_to_set() {
    let path = fixture("reviews.csv");
    let t = task(&path, &path, "sentence", None, "label");
    let msg = read_err(&path, &t);
    assert_names(
        &msg,
        &path,
        Some(1),
        &["no column `sentence`", "text, label", "`text_column`"],
    );
}

#[test]
fn a_missing_jsonl_field_names_its_line_and_the_key_to_set() {
    let (_d, path) = temp_file(
        "short.jsonl",
        b"{\"text\": \"a b\", \"label\": \"x\"}\n{\"text\": \"c d\"}\n",
    );
    let msg = read_err(&path, &text_task(&path));
    assert_names(
        &msg,
        &path,
        Some(2),
        &["`label` is missing", "`label_column`"],
    );
}

#[test]
fn a_ragged_csv_row_names_its_line() {
    let (_d, path) = temp_file(
        "ragged.csv",
        b"text,label\nthe film,pos\na slow, boring story,neg\n",
    );
    let msg = read_err(&path, &text_task(&path));
    assert_names(
        &msg,
        &path,
        Some(3),
        &[
            "3 fields but the header has 2",
            "quote fields that contain a comma",
        ],
    );
}

#[test]
fn a_ragged_tsv_row_names_its_line() {
    let (_d, path) = temp_file(
        "ragged.tsv",
        b"text\tlabel\nthe film\tpos\nthe plot\n\nit was\tgood\tpos\n",
    );
    let msg = read_err(&path, &text_task(&path));
    assert_names(
        &msg,
        &path,
        Some(3),
        &["1 fields but the header has 2", "tab"],
    );
}

#[test]
fn non_utf8_bytes_in_a_csv_name_their_line() {
    let (_d, path) = temp_file(
        "latin1.csv",
        b"text,label\nthe film,pos\ncaf\xe9 au lait,neg\n",
    );
    let msg = read_err(&path, &text_task(&path));
    assert_names(&msg, &path, Some(3), &["not valid UTF-8", "re-encode"]);
}

#[test]
fn non_utf8_bytes_in_a_tsv_header_name_line_1() {
    let (_d, path) = temp_file("latin1.tsv", b"t\xe9xt\tlabel\nthe film\tpos\n");
    let msg = read_err(&path, &text_task(&path));
    assert_names(&msg, &path, Some(1), &["not valid UTF-8", "re-encode"]);
}

#[test]
fn non_utf8_bytes_in_a_jsonl_file_name_their_line() {
    let (_d, path) = temp_file(
        "latin1.jsonl",
        b"{\"text\": \"a\", \"label\": \"x\"}\n\n{\"text\": \"caf\xe9\", \"label\": \"y\"}\n",
    );
    let msg = read_err(&path, &text_task(&path));
    assert_names(&msg, &path, Some(3), &["not valid UTF-8", "re-encode"]);
}

#[test]
fn a_line_that_is_not_a_json_object_names_its_line() {
    let (_d, path) = temp_file(
        "bad.jsonl",
        b"{\"text\": \"a\", \"label\": \"x\"}\n[\"a\", \"x\"]\n",
    );
    let msg = read_err(&path, &text_task(&path));
    assert_names(
        &msg,
        &path,
        Some(2),
        &["not a JSON object", "one object per line"],
    );
}

#[test]
fn empty_text_names_its_line_and_column() {
    let (_d, path) = temp_file(
        "blank.csv",
        b"text,label\nthe film,pos\n,neg\nthe plot,neg\n",
    );
    let msg = read_err(&path, &text_task(&path));
    assert_names(
        &msg,
        &path,
        Some(3),
        &["`text` is empty", "fill it in or remove the example"],
    );
}

#[test]
fn empty_pair_text_names_its_line_and_field() {
    let (_d, path) = temp_file(
        "blank.jsonl",
        b"{\"a\": \"x y\", \"b\": \"z\", \"label\": 1}\n{\"a\": \"x y\", \"b\": \"  \", \"label\": 0}\n",
    );
    let t = task(&path, &path, "a", Some("b"), "label");
    let msg = read_err(&path, &t);
    assert_names(&msg, &path, Some(2), &["field `b` is empty", "fill it in"]);
}

#[test]
fn an_empty_label_names_its_line() {
    let (_d, path) = temp_file("nolabel.tsv", b"text\tlabel\nthe film\tpos\nthe plot\t\n");
    let msg = read_err(&path, &text_task(&path));
    assert_names(&msg, &path, Some(3), &["`label` is empty"]);
}

#[test]
fn an_eval_label_never_seen_in_training_names_the_eval_file_and_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let train = dir.path().join("train.csv");
    let eval = dir.path().join("eval.csv");
    std::fs::write(&train, "text,label\nthe film,pos\nthe plot,neg\n").expect("write");
    std::fs::write(&eval, "text,label\nthe film,pos\nwhere is it,question\n").expect("write");
    let tok = load_tokenizer(&tiny_bert(), 32).expect("tokenizer");
    let err = match TaskData::load(&text_task_pair(&train, &eval), &tok) {
        Ok(_) => panic!("an unseen eval label loaded"),
        Err(e) => e,
    };
    assert!(matches!(err, DataError::Data { .. }), "{err:?}");
    let msg = err.to_string();
    assert_names(
        &msg,
        &eval,
        Some(3),
        &[
            "\"question\" never occurs in the training data",
            "neg, pos",
            "remove",
        ],
    );
}

fn text_task_pair(train: &Path, eval: &Path) -> TaskSpec {
    task(train, eval, "text", None, "label")
}

#[test]
fn a_file_with_an_unknown_extension_says_which_to_use() {
    let (_d, path) = temp_file("data.txt", b"text,label\na,b\n");
    let msg = read_err(&path, &text_task(&path));
    assert_names(&msg, &path, None, &[".csv, .tsv or .jsonl"]);
}
