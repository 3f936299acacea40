//! The tch-free half of etagrid's knowledge of a model and its data: which model family a
//! directory holds ([`family`]) and, later in this crate, the task's rows, labels, split and
//! tokens. `etagrid init`, `report` and `status` use it without linking libtorch; the trainer
//! (`etagrid-train`) builds tensors on top of it.

pub mod family;

pub use family::{Family, FamilyError, ModelConfig};
