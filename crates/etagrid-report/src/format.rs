//! Number formatting shared by the heatmap and the HTML page.

/// `v` in compact scientific notation with at most `sig` significant digits
/// and no trailing zeros: "1e-4", "3.2e-4", "2.44e-4".
pub(crate) fn sci(v: f64, sig: usize) -> String {
    if v == 0.0 || !v.is_finite() {
        return format!("{v}");
    }
    let s = format!("{:.*e}", sig.saturating_sub(1), v);
    // Rust prints e.g. "3.20e-4"; strip the mantissa's trailing zeros.
    match s.split_once('e') {
        Some((mant, exp)) => {
            let mant = if mant.contains('.') {
                mant.trim_end_matches('0').trim_end_matches('.')
            } else {
                mant
            };
            format!("{mant}e{exp}")
        }
        None => s,
    }
}

/// A learning rate for captions: the shortest of up to 3 significant digits
/// (exact values stay exact: "1e-4", "3.2e-4").
pub(crate) fn lr(v: f64) -> String {
    sci(v, 3)
}

/// Tick labels for an axis: powers of two as "2^-12" when every value is
/// one (and they are not all powers of ten), otherwise scientific notation
/// with the fewest significant digits (≤ 4) that keeps the labels distinct.
pub(crate) fn axis_labels(values: &[f64]) -> Vec<String> {
    let is_int = |x: f64| (x - x.round()).abs() < 1e-9;
    let all_pow2 = values.iter().all(|v| is_int(v.log2()));
    let all_pow10 = values.iter().all(|v| is_int(v.log10()));
    if all_pow2 && !all_pow10 {
        return values
            .iter()
            .map(|v| format!("2^{}", v.log2().round() as i64))
            .collect();
    }
    let mut labels = Vec::new();
    for sig in 2..=4 {
        labels = values.iter().map(|&v| sci(v, sig)).collect();
        let mut sorted = labels.clone();
        sorted.sort();
        sorted.dedup();
        if sorted.len() == labels.len() {
            break;
        }
    }
    labels
}

/// A ratio λ = η_B/η_A: "16", "2.5", "0.25", "1.02e3"-style only when huge or tiny.
pub(crate) fn ratio(v: f64) -> String {
    if !v.is_finite() {
        return format!("{v}");
    }
    let a = v.abs();
    if a != 0.0 && !(1e-3..1e5).contains(&a) {
        return sci(v, 3);
    }
    // Up to 3 significant digits, but never round away integer digits.
    let int_digits = if a >= 1.0 {
        a.log10().floor() as i32 + 1
    } else {
        0
    };
    let decimals = (3 - int_digits).max(0) as usize;
    let decimals = if a < 1.0 && a > 0.0 {
        // 0.0625 -> keep 3 significant digits.
        (-(a.log10().floor()) as usize) + 2
    } else {
        decimals
    };
    trim(format!("{v:.decimals$}"))
}

/// A metric value: 3 decimals for the usual 0..100 range, fewer when large.
pub(crate) fn metric(v: f64) -> String {
    let a = v.abs();
    if a >= 1000.0 {
        format!("{v:.0}")
    } else if a >= 100.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.3}")
    }
}

/// A mean metric with its spread over seeds: `0.812 ± 0.004`, or the mean alone without one.
pub(crate) fn metric_pm(mean: f64, std: Option<f64>) -> String {
    match std {
        Some(s) => format!("{} ± {}", metric(mean), metric(s)),
        None => metric(mean),
    }
}

/// A signed metric difference: "+0.041", "-0.012".
pub(crate) fn signed_metric(v: f64) -> String {
    if v >= 0.0 {
        format!("+{}", metric(v))
    } else {
        metric(v)
    }
}

/// Seconds as "42.0 s", "12m 05s", "3h 07m".
pub(crate) fn wall(s: f64) -> String {
    if !s.is_finite() || s < 0.0 {
        return format!("{s}");
    }
    if s < 60.0 {
        return format!("{s:.1} s");
    }
    let total = s.round() as u64;
    let (h, m, sec) = (total / 3600, (total % 3600) / 60, total % 60);
    if h > 0 {
        format!("{h}h {m:02}m")
    } else {
        format!("{m}m {sec:02}s")
    }
}

fn trim(s: String) -> String {
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn learning_rates_print_compactly_and_exactly_when_short() {
        assert_eq!(lr(1e-4), "1e-4");
        assert_eq!(lr(3.2e-4), "3.2e-4");
        assert_eq!(lr(0.000244140625), "2.44e-4");
        assert_eq!(lr(5e-5), "5e-5");
        assert_eq!(lr(0.1), "1e-1");
    }

    #[test]
    fn axis_labels_use_powers_of_two_when_every_value_is_one() {
        let v = [2f64.powi(-12), 2f64.powi(-10), 2f64.powi(-8)];
        assert_eq!(axis_labels(&v), ["2^-12", "2^-10", "2^-8"]);
        assert_eq!(axis_labels(&[1e-4, 1e-3]), ["1e-4", "1e-3"]);
    }

    #[test]
    fn axis_labels_gain_digits_until_they_are_distinct() {
        let labels = axis_labels(&[1.0e-4, 1.04e-4, 1.2e-4]);
        assert_eq!(labels, ["1e-4", "1.04e-4", "1.2e-4"]);
    }

    #[test]
    fn ratios_and_metrics_and_wall_times_read_naturally() {
        assert_eq!(ratio(16.0), "16");
        assert_eq!(ratio(16.000000001), "16");
        assert_eq!(ratio(2.5), "2.5");
        assert_eq!(ratio(0.25), "0.25");
        assert_eq!(ratio(0.0625), "0.0625");
        assert_eq!(ratio(1.0), "1");
        assert_eq!(ratio(3.16227766), "3.16");
        assert_eq!(metric(0.81234), "0.812");
        assert_eq!(signed_metric(0.041), "+0.041");
        assert_eq!(signed_metric(-0.0123), "-0.012");
        assert_eq!(wall(42.04), "42.0 s");
        assert_eq!(wall(725.0), "12m 05s");
        assert_eq!(wall(3.0 * 3600.0 + 7.0 * 60.0), "3h 07m");
    }
}
