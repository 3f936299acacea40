//! The tch-free half of the command line: the shared CLI definition ([`cli`]) and the commands
//! that need no libtorch — `status`, `init`, `report`, `best`, `export`, `replay-halving`. The
//! `etagrid` binary (src/front.rs) runs these itself and execs `etagrid-torch`
//! (crates/etagrid-torch) for the rest. This package does not depend on `etagrid-train`, so
//! nothing here can link libtorch.

pub mod cli;
pub mod common;
pub mod export;
pub mod init;
pub mod refine;
pub mod replay;
pub mod report;
pub mod status;
