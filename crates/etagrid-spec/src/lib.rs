//! The sweep file and everything derived from it without touching a model, a database or a GPU.
//!
//! Two levels, as in candle's model configs: [`file`](mod@file) holds serde structs that match the TOML exactly
//! (unknown keys are errors), [`spec`] holds the resolved [`SweepSpec`] with nothing optional left.
//! [`cell`] expands the grid into cells and gives each one a content hash; [`protocol`] is the one
//! place where the scheduler ↔ worker JSON-lines messages are defined.

pub mod cell;
mod error;
pub mod file;
pub mod grid;
mod inputs;
pub mod protocol;
pub mod spec;
pub mod testing;

pub use cell::{Cell, CellConfig, CellId};
pub use error::SpecError;
pub use grid::Axis;
pub use spec::{
    DeviceChoice, InitScheme, LmTaskSpec, LoraSpec, ModelSpec, PackSize, Schedule, SweepSpec,
    TargetModules, TaskSpec, TrainLength, TrainSpec, DEFAULT_EMBEDDING_LR,
};
