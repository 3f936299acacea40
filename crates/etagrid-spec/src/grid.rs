//! Grid axes: an explicit list of values or a log-spaced range.

use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use std::fmt;

/// One axis of the grid as written in the sweep file.
///
/// ```toml
/// lr_a  = [1e-5, 1e-4]                 # a list
/// lr_a  = { log2 = [-16, -10] }        # 2^-16, 2^-15, ..., 2^-10
/// ratio = { log2 = [0, 5] }            # λ = 1, 2, 4, ..., 32
/// lr_b  = { log10 = [-5, -3], step = 0.5 }
/// ```
#[derive(Debug, Clone, PartialEq)]
pub enum Axis {
    List(Vec<f64>),
    Range {
        base: LogBase,
        from: f64,
        to: f64,
        step: f64,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum LogBase {
    Two,
    Ten,
}

impl LogBase {
    fn value(self) -> f64 {
        match self {
            LogBase::Two => 2.0,
            LogBase::Ten => 10.0,
        }
    }
}

impl Axis {
    /// The values of the axis, in the order written (ranges ascend), rounded to 10 significant
    /// digits so that the same grid gives bit-identical values (and cell hashes) everywhere.
    pub fn values(&self) -> Result<Vec<f64>, String> {
        let values = match self {
            Axis::List(v) => v.clone(),
            Axis::Range {
                base,
                from,
                to,
                step,
            } => {
                if !step.is_finite() || *step <= 0.0 {
                    return Err(format!("`step` must be a positive number, got {step}"));
                }
                if from > to {
                    return Err(format!(
                        "range is empty: `from` exponent {from} is above `to` exponent {to}"
                    ));
                }
                if !(from.is_finite() && to.is_finite()) {
                    return Err(format!(
                        "range exponents must be finite, got [{from}, {to}]"
                    ));
                }
                // Compared as a float: a huge span would overflow the usize.
                let n = ((to - from) / step + 1e-9).floor() + 1.0;
                if n > 10_000.0 {
                    return Err(format!("range has {n:.0} points; at most 10000 per axis"));
                }
                let n = n as usize;
                (0..n)
                    .map(|i| base.value().powf(from + i as f64 * step))
                    .collect()
            }
        };
        if values.is_empty() {
            return Err("the list is empty: give at least one value".into());
        }
        for v in &values {
            if !(v.is_finite() && *v > 0.0) {
                return Err(format!("values must be positive and finite, got {v}"));
            }
        }
        Ok(values.into_iter().map(round_sig).collect())
    }
}

/// Rounds to 10 significant digits (`format!("{:.9e}")` round trip): removes the last-bit noise of
/// `powf` and of `ratio * lr_a`, so hashes do not depend on the libm that computed them.
pub fn round_sig(x: f64) -> f64 {
    format!("{x:.9e}").parse().unwrap_or(x)
}

impl<'de> Deserialize<'de> for Axis {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(AxisVisitor)
    }
}

struct AxisVisitor;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RangeTable {
    log2: Option<[f64; 2]>,
    log10: Option<[f64; 2]>,
    step: Option<f64>,
}

impl<'de> Visitor<'de> for AxisVisitor {
    type Value = Axis;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a list of numbers like [1e-4, 2e-4] or a range like { log2 = [-16, -10] }")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Axis, A::Error> {
        let mut v = Vec::new();
        while let Some(x) = seq.next_element::<Number>()? {
            v.push(x.0);
        }
        Ok(Axis::List(v))
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Axis, A::Error> {
        let t = RangeTable::deserialize(de::value::MapAccessDeserializer::new(map))?;
        let (base, [from, to]) = match (t.log2, t.log10) {
            (Some(r), None) => (LogBase::Two, r),
            (None, Some(r)) => (LogBase::Ten, r),
            _ => {
                return Err(de::Error::custom(
                    "a range needs exactly one of `log2 = [from, to]` or `log10 = [from, to]`",
                ))
            }
        };
        Ok(Axis::Range {
            base,
            from,
            to,
            step: t.step.unwrap_or(1.0),
        })
    }
}

/// A TOML number, integer or float (`[1, 2]` and `[1.0, 2.0]` both read as floats).
struct Number(f64);

impl<'de> Deserialize<'de> for Number {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Number;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a number")
            }
            fn visit_f64<E>(self, v: f64) -> Result<Number, E> {
                Ok(Number(v))
            }
            fn visit_i64<E>(self, v: i64) -> Result<Number, E> {
                Ok(Number(v as f64))
            }
            fn visit_u64<E>(self, v: u64) -> Result<Number, E> {
                Ok(Number(v as f64))
            }
        }
        d.deserialize_any(V)
    }
}
