//! The tch-free half of etagrid's knowledge of a model and its data: which model family a
//! directory holds ([`family`]), the task's rows ([`read`]), `init`'s column detection
//! ([`detect`]), labels ([`labels`]), the split ([`split`]), tokens ([`tokens`], [`mc`]) and the
//! token cache ([`cache`]). `etagrid init` and `report` use it without linking libtorch; the
//! trainer (`etagrid-train`) builds tensors on top of it.

pub mod cache;
pub mod detect;
mod error;
pub mod family;
pub mod labels;
pub mod mc;
pub mod read;
pub mod split;
pub mod tokens;

pub use cache::{TaskData, TokenSource};
pub use detect::{detect_columns, read_table, ColumnChoice, ColumnStats, Detected, Table};
pub use error::DataError;
pub use family::{Family, FamilyError, ModelConfig};
pub use labels::{chance_level, LabelMap};
pub use mc::{
    encode_mc, mc_letter_ids, mc_prompt, read_mc_examples, McEncoded, McExample, MC_LETTERS,
};
pub use read::{read_examples, read_lm_examples, Example};
pub use split::{eval_examples, eval_subset, load_examples, stratified_split, BatchOrder};
pub use tokens::{encode, encode_lm, load_tokenizer, tokenize, Encoded, TokenIds};
