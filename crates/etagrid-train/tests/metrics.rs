//! Accuracy, macro-F1 and MCC against values computed by hand, the confusion matrix gathered on
//! the device, and `evaluate` on the tiny model against its own logits.

mod common;

use etagrid_spec::spec::Metric;
use etagrid_spec::InitScheme;
use etagrid_train::data::{collate, encode, load_tokenizer, Example, LabelMap};
use etagrid_train::metrics::{chance_level, confusion_update, Confusion, EvalMetrics};
use etagrid_train::train::evaluate;
use tch::{Device, Kind, Tensor};

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-12
}

fn matrix(rows: &[&[u64]]) -> Confusion {
    Confusion::from_rows(&rows.iter().map(|r| r.to_vec()).collect::<Vec<_>>()).expect("square")
}

/// Rows are the true class, columns the predicted class.
fn three_class() -> Confusion {
    matrix(&[&[5, 2, 0], &[1, 3, 1], &[0, 2, 1]])
}

#[test]
fn accuracy_is_the_diagonal_over_the_total() {
    // 5 + 3 + 1 = 9 right of 15.
    assert!(close(three_class().accuracy(), 9.0 / 15.0));
}

#[test]
fn macro_f1_averages_the_per_class_f1() {
    // F1 = 2TP / (2TP + FP + FN); FP = column sum − TP, FN = row sum − TP.
    // class 0: TP 5, FP 1, FN 2 → 10/13
    // class 1: TP 3, FP 4, FN 2 → 6/12 = 1/2
    // class 2: TP 1, FP 1, FN 2 → 2/5
    // macro = (10/13 + 1/2 + 2/5) / 3 = 0.556410256…
    let want = (10.0 / 13.0 + 0.5 + 0.4) / 3.0;
    assert!(
        close(three_class().macro_f1(), want),
        "{}",
        three_class().macro_f1()
    );
}

#[test]
fn macro_f1_counts_a_class_that_is_never_predicted_as_zero() {
    // Column 2 is empty: class 2 is never predicted.
    // class 0: TP 4, FP (4+1+2) − 4 = 3, FN 1 → 8/12 = 2/3
    // class 1: TP 3, FP (1+3+1) − 3 = 2, FN 1 → 6/9 = 2/3
    // class 2: TP 0, FP 0, FN 3            → 0
    // macro = (2/3 + 2/3 + 0) / 3 = 4/9
    let c = matrix(&[&[4, 1, 0], &[1, 3, 0], &[2, 1, 0]]);
    assert!(close(c.macro_f1(), 4.0 / 9.0), "{}", c.macro_f1());
}

#[test]
fn macro_f1_leaves_out_a_class_absent_from_labels_and_predictions() {
    // The same matrix with a 4th class that neither occurs nor is predicted (a training label
    // missing from the eval set): scikit-learn averages over the labels present, so 4/9 again.
    let c = matrix(&[&[4, 1, 0, 0], &[1, 3, 0, 0], &[2, 1, 0, 0], &[0, 0, 0, 0]]);
    assert!(close(c.macro_f1(), 4.0 / 9.0), "{}", c.macro_f1());
}

#[test]
fn binary_mcc_matches_the_two_class_formula() {
    // TN 3, FP 1 / FN 2, TP 6:
    // (TP·TN − FP·FN) / sqrt((TP+FP)(TP+FN)(TN+FP)(TN+FN)) = (18 − 2) / sqrt(7·8·4·5)
    //   = 16 / sqrt(1120) = 0.478091…
    let c = matrix(&[&[3, 1], &[2, 6]]);
    let want = 16.0 / 1120f64.sqrt();
    assert!(close(c.mcc(), want), "{} != {want}", c.mcc());
}

#[test]
fn multiclass_mcc_matches_the_gorodkin_formula() {
    // s = 15 examples, c = 9 correct, true counts t = [7, 5, 3], predicted p = [6, 7, 2].
    // Σ p·t = 42 + 35 + 6 = 83, Σ p² = 36 + 49 + 4 = 89, Σ t² = 49 + 25 + 9 = 83.
    // (c·s − Σ p·t) / sqrt((s² − Σ p²)(s² − Σ t²)) = (135 − 83) / sqrt(136 · 142)
    //   = 52 / sqrt(19312) = 0.374187880…
    let want = 52.0 / 19312f64.sqrt();
    let got = three_class().mcc();
    assert!(close(got, want), "{got} != {want}");
}

#[test]
fn mcc_is_1_for_perfect_and_minus_1_for_inverted_binary_predictions() {
    assert!(close(matrix(&[&[4, 0], &[0, 6]]).mcc(), 1.0));
    assert!(close(matrix(&[&[0, 4], &[6, 0]]).mcc(), -1.0));
}

#[test]
fn mcc_is_0_when_every_prediction_is_the_same_class() {
    // s² − Σ p² = 0: the denominator vanishes and scikit-learn returns 0.
    let c = matrix(&[&[5, 0, 0], &[3, 0, 0], &[2, 0, 0]]);
    assert_eq!(c.mcc(), 0.0);
    assert!(close(c.accuracy(), 0.5));
}

#[test]
fn eval_metrics_pick_the_sweeps_metric() {
    let m = EvalMetrics::from_confusion(0.25, &three_class());
    assert_eq!(m.get(Metric::EvalLoss), 0.25);
    assert_eq!(m.get(Metric::Accuracy), m.accuracy);
    assert_eq!(m.get(Metric::MacroF1), m.macro_f1);
    assert_eq!(m.get(Metric::Mcc), m.mcc);
    assert!(Metric::Mcc.higher_is_better() && Metric::MacroF1.higher_is_better());
    assert!(!Metric::EvalLoss.higher_is_better());
}

#[test]
fn chance_level_is_what_the_majority_class_scores() {
    // 6 / 3 / 1 examples: always predicting class 0 gives accuracy 0.6; class 0 then has
    // precision 0.6, recall 1, F1 = 2·0.6/1.6 = 0.75 and the two others 0: macro-F1 0.25.
    let counts = [6, 3, 1];
    assert!(close(
        chance_level(Metric::Accuracy, &counts).expect("acc"),
        0.6
    ));
    assert!(close(
        chance_level(Metric::MacroF1, &counts).expect("f1"),
        0.25
    ));
    assert_eq!(chance_level(Metric::Mcc, &counts), Some(0.0));
    assert_eq!(chance_level(Metric::EvalLoss, &counts), None);
}

#[test]
fn the_device_confusion_matrix_counts_true_rows_and_predicted_columns() {
    let truth = [0usize, 0, 1, 2, 2, 2, 1, 0];
    let pred = [0usize, 1, 1, 2, 0, 2, 2, 0];
    let to_t = |v: &[usize]| Tensor::from_slice(&v.iter().map(|&x| x as i64).collect::<Vec<_>>());
    let mut cm = Tensor::zeros([9], (Kind::Int64, Device::Cpu));
    // Two batches, accumulated.
    confusion_update(&mut cm, &to_t(&truth[..5]), &to_t(&pred[..5]), 3);
    confusion_update(&mut cm, &to_t(&truth[5..]), &to_t(&pred[5..]), 3);
    let got = Confusion::from_tensor(&cm, 3).expect("read back");
    assert_eq!(got, Confusion::from_pairs(3, &truth, &pred));
    // true 0 predicted 1 once; true 1 predicted 0 never.
    assert_eq!((got.get(0, 1), got.get(1, 0)), (1, 0));
}

#[test]
fn evaluate_gives_the_metrics_of_the_models_own_predictions() {
    let lora = common::lora_spec(4, 8.0, InitScheme::Loraplus);
    let model = common::tiny_model(&lora, 3);
    let words = [
        "the film was great",
        "the plot was dull",
        "where do cats sleep ?",
        "a lovely story",
        "so boring",
        "who is the doctor ?",
        "the music was funny",
        "the ending was sad",
        "how long is it ?",
        "the actors were good",
    ];
    let labels = ["pos", "neg", "question"];
    let examples: Vec<Example> = words
        .iter()
        .enumerate()
        .map(|(i, w)| Example {
            text: (*w).into(),
            text_pair: None,
            label: labels[i % 3].into(),
            line: i as u64 + 2,
        })
        .collect();
    let map = LabelMap::from_examples(&examples);
    let tok = load_tokenizer(&common::fixture_dir(), 32).expect("tokenizer");
    let path = std::path::Path::new("eval.csv");
    let data = encode(&tok, &examples, &map, path).expect("encode");
    let got = evaluate(&model, &data, 3, 0, Device::Cpu).expect("evaluate");

    // The same by hand: one padded batch, argmax, counted on the host.
    let idx: Vec<usize> = (0..data.len()).collect();
    let batch = collate(&data, &idx, 0, Device::Cpu);
    let logits = tch::no_grad(|| model.forward(&batch, false));
    let pred: Vec<i64> = Vec::try_from(logits.argmax(-1, false)).expect("preds");
    let truth: Vec<usize> = data.labels.iter().map(|&l| l as usize).collect();
    let pred: Vec<usize> = pred.iter().map(|&p| p as usize).collect();
    let want = Confusion::from_pairs(3, &truth, &pred);
    let loss = etagrid_train::train::loss(&logits, &batch.labels).double_value(&[]);
    assert!((got.loss - loss).abs() < 1e-5, "{} != {loss}", got.loss);
    assert!(close(got.accuracy, want.accuracy()));
    assert!(close(got.macro_f1, want.macro_f1()));
    assert!(close(got.mcc, want.mcc()));
}
