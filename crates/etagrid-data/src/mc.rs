//! Multiple-choice questions (MMLU style) for a causal-LM task's eval: reading, prompts, the
//! answer letters' token ids.

use crate::read::{format_of, json_scalar, jsonl_objects, read_bytes, Format};
use crate::tokens::{tokenize, Encoded};
use crate::DataError;
use std::path::Path;
use tokenizers::Tokenizer;

/// One multiple-choice question as read from a file.
#[derive(Debug, Clone, PartialEq)]
pub struct McExample {
    pub question: String,
    pub choices: Vec<String>,
    /// 0-based index of the right choice.
    pub answer: usize,
    pub line: u64,
}

/// The letters choices are listed under; at most this many choices.
pub const MC_LETTERS: &str = "ABCDEFGHIJ";

/// Reads a multiple-choice JSONL file: one object a line with `question` (a string), `choices`
/// (a list of 2–10 strings) and `answer` (a letter "A"…, or a 0-based index).
pub fn read_mc_examples(path: &Path) -> Result<Vec<McExample>, DataError> {
    let err = |line: Option<u64>, message: String| DataError::Data {
        path: path.to_owned(),
        line,
        message,
    };
    if format_of(path)? != Format::Jsonl {
        return Err(err(
            None,
            "a multiple-choice eval file must be .jsonl (its `choices` are a list)".into(),
        ));
    }
    let bytes = read_bytes(path)?;
    let mut out = Vec::new();
    for (line, obj) in jsonl_objects(path, bytes, usize::MAX)? {
        let e = |m: &str| err(Some(line), m.to_owned());
        let question = obj
            .get("question")
            .and_then(|v| v.as_str())
            .filter(|q| !q.trim().is_empty())
            .ok_or_else(|| e("`question` is missing, empty or not a string: each line needs {\"question\": \"…\", \"choices\": [\"…\", …], \"answer\": \"A\"}"))?
            .to_owned();
        let choices: Vec<String> = obj
            .get("choices")
            .and_then(|v| v.as_array())
            .and_then(|a| {
                a.iter()
                    .map(|c| json_scalar(c).filter(|c| !c.trim().is_empty()))
                    .collect::<Option<Vec<_>>>()
            })
            .ok_or_else(|| e("`choices` is missing or not a list of non-empty strings"))?;
        if choices.len() < 2 || choices.len() > MC_LETTERS.len() {
            return Err(e(&format!(
                "has {} choices: give between 2 and {}",
                choices.len(),
                MC_LETTERS.len()
            )));
        }
        let answer = match obj.get("answer") {
            Some(serde_json::Value::Number(n)) => n.as_u64().map(|i| i as usize),
            Some(serde_json::Value::String(s)) => {
                let s = s.trim();
                // A letter ("B", "b"), else a 0-based index written as text ("1", "10").
                match s.parse::<usize>() {
                    Ok(i) => Some(i),
                    Err(_) if s.len() == 1 => MC_LETTERS.find(&s.to_ascii_uppercase()),
                    Err(_) => None,
                }
            }
            _ => None,
        }
        .filter(|&a| a < choices.len())
        .ok_or_else(|| {
            e(&format!(
                "`answer` must be a letter A–{} or a 0-based index below {}",
                &MC_LETTERS[choices.len() - 1..choices.len()],
                choices.len()
            ))
        })?;
        out.push(McExample {
            question,
            choices,
            answer,
            line,
        });
    }
    if out.is_empty() {
        return Err(err(
            None,
            "has no questions: write one JSON object per line".into(),
        ));
    }
    Ok(out)
}

/// The prompt of a multiple-choice question, MMLU style:
/// `question\nA. first\nB. second\n…\nAnswer:`. The model's next token is read for the letters.
pub fn mc_prompt(question: &str, choices: &[String]) -> String {
    let mut s = question.trim_end().to_owned();
    for (letter, c) in MC_LETTERS.chars().zip(choices) {
        s.push_str(&format!("\n{letter}. {c}"));
    }
    s.push_str("\nAnswer:");
    s
}

/// The token id of each choice letter as the answer's next token: " A" when the tokenizer has it
/// as one token (byte-level BPE vocabularies do), else "A"; an error when neither is one token.
pub fn mc_letter_ids(tok: &Tokenizer, n: usize, path: &Path) -> Result<Vec<i64>, DataError> {
    MC_LETTERS
        .chars()
        .take(n)
        .map(|c| {
            for text in [format!(" {c}"), c.to_string()] {
                let enc = tok.encode(text.as_str(), false).map_err(|e| DataError::Tokenizer {
                    path: path.to_owned(),
                    message: e.to_string(),
                })?;
                if let [id] = enc.get_ids() {
                    return Ok(*id as i64);
                }
            }
            Err(DataError::Tokenizer {
                path: path.to_owned(),
                message: format!(
                    "neither \" {c}\" nor \"{c}\" is a single token: multiple-choice scoring needs one token per letter"
                ),
            })
        })
        .collect()
}

/// Tokenized multiple-choice questions.
#[derive(serde::Serialize, serde::Deserialize)]
pub struct McEncoded {
    /// The prompts ([`mc_prompt`]) with the tokenizer's special tokens; `labels` = answers.
    pub prompts: Encoded,
    pub n_choices: Vec<i64>,
    /// The letter tokens, for as many letters as the question with the most choices has.
    pub letter_ids: Vec<i64>,
}

/// Tokenizes multiple-choice questions (`path` names their file, for errors). Prompts are not
/// truncated: the answer comes after the last prompt token.
pub fn encode_mc(tok: &Tokenizer, qs: &[McExample], path: &Path) -> Result<McEncoded, DataError> {
    let mut tok = tok.clone();
    tok.with_truncation(None)
        .map_err(|e| DataError::Tokenizer {
            path: path.to_owned(),
            message: e.to_string(),
        })?;
    let prompts: Vec<String> = qs
        .iter()
        .map(|q| mc_prompt(&q.question, &q.choices))
        .collect();
    let texts: Vec<(&str, Option<&str>)> = prompts.iter().map(|p| (p.as_str(), None)).collect();
    let (ids, type_ids) = tokenize(&tok, &texts, path)?;
    let most = qs.iter().map(|q| q.choices.len()).max().unwrap_or(0);
    Ok(McEncoded {
        prompts: Encoded {
            ids,
            type_ids,
            labels: qs.iter().map(|q| q.answer as i64).collect(),
            loss_from: Vec::new(),
        },
        n_choices: qs.iter().map(|q| q.choices.len() as i64).collect(),
        letter_ids: mc_letter_ids(&tok, most, path)?,
    })
}
