//! Grid cells and their content-hash identity.

use crate::spec::{LoraSpec, SweepSpec, TaskSpec, TrainSpec};
use serde::{Deserialize, Serialize};
use std::fmt;

/// Everything that determines one fine-tune's result. Its hash is the cell's identity: the same
/// configuration always gets the same id, whatever sweep file or grid position it came from.
/// Resources (devices, threads) are deliberately not part of it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CellConfig {
    /// The model path as written in the sweep file.
    pub model: String,
    pub task: TaskSpec,
    pub lora: LoraSpec,
    pub train: TrainSpec,
    pub lr_a: f64,
    pub lr_b: f64,
    pub seed: u64,
    /// The digest of the inputs' content ([`crate::SweepSpec::inputs`]); hashed into the id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inputs: Option<String>,
}

impl CellConfig {
    /// λ = η_B / η_A.
    pub fn ratio(&self) -> f64 {
        self.lr_b / self.lr_a
    }

    /// Cells with the same key can train in one pack on one frozen base: everything but η_A,
    /// η_B, the seed and the LoRA init scheme is the same (model, task and data, LoRA shape,
    /// train length, batch size and schedule).
    pub fn pack_key(&self) -> String {
        let mut lora = self.lora.clone();
        lora.init = crate::InitScheme::Lora;
        let key = serde_json::json!({
            "model": self.model,
            "task": self.task,
            "lora": lora,
            "train": self.train,
        });
        key.to_string()
    }
}

/// 16 hex digits of the BLAKE3 hash of the cell's canonical JSON.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct CellId(pub String);

impl fmt::Display for CellId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Bumped whenever the hashed representation changes on purpose.
const HASH_VERSION: &str = "etagrid-cell-v1";

impl CellConfig {
    pub fn id(&self) -> CellId {
        // The hashed form leaves out the resolved absolute paths: moving the project folder must
        // not change identities. Field order is fixed by the struct, floats print via ryu.
        let mut task = plain_json(serde_json::to_value(&self.task));
        if let Some(t) = task.as_object_mut() {
            t.remove("train_file");
            t.remove("eval_file");
            if let Some(lm) = t.get_mut("lm").and_then(|v| v.as_object_mut()) {
                lm.remove("mc_eval_file");
            }
        }
        let mut canonical = serde_json::json!({
            "v": HASH_VERSION,
            "model": self.model,
            "task": task,
            "lora": self.lora,
            "train": self.train,
            "lr_a": self.lr_a,
            "lr_b": self.lr_b,
            "seed": self.seed,
        });
        // The content of the files: a new key, so a configuration without one keeps its v1 id.
        if let (Some(inputs), Some(c)) = (&self.inputs, canonical.as_object_mut()) {
            c.insert("inputs".into(), inputs.clone().into());
        }
        let bytes = plain_json(serde_json::to_vec(&canonical));
        let hash = blake3::hash(&bytes);
        CellId(hash.to_hex()[..16].to_owned())
    }
}

/// A serialisation of plain data (structs of numbers, strings and lists, string-keyed maps), which
/// cannot fail; if it ever did, two cells would share an id, so it stops the program instead of
/// defaulting to an empty value.
fn plain_json<T>(r: serde_json::Result<T>) -> T {
    match r {
        Ok(v) => v,
        Err(e) => panic!("a cell configuration failed to serialise ({e}): please report this bug"),
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Cell {
    pub id: CellId,
    /// Position in the grid (η_A outer, η_B/λ, then seed inner), for stable ordering.
    pub index: usize,
    pub config: CellConfig,
}

impl SweepSpec {
    /// Expands the grid: one cell per (η_A, η_B) point and seed. Two grid points that resolve to
    /// the same configuration (e.g. a λ grid that meets an η_B already listed) give one cell.
    pub fn cells(&self) -> Vec<Cell> {
        use rayon::prelude::*;
        let configs: Vec<CellConfig> = self
            .points
            .iter()
            .flat_map(|&(lr_a, lr_b)| {
                self.seeds.iter().map(move |&seed| CellConfig {
                    model: self.model.path.clone(),
                    task: self.task.clone(),
                    lora: self.lora.clone(),
                    train: self.train.clone(),
                    lr_a,
                    lr_b,
                    seed,
                    inputs: self.inputs.clone(),
                })
            })
            .collect();
        // Hashing is the expensive part of a large grid (100k cells): do it on every core.
        let ids: Vec<CellId> = configs.par_iter().map(CellConfig::id).collect();
        let mut seen = std::collections::HashSet::new();
        let mut cells = Vec::with_capacity(configs.len());
        for (config, id) in configs.into_iter().zip(ids) {
            if seen.insert(id.clone()) {
                cells.push(Cell {
                    id,
                    index: cells.len(),
                    config,
                });
            }
        }
        cells
    }
}
