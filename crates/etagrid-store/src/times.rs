//! When each cell ran, for reports' provenance.

use sqlx::Row;

use crate::{Result, Store};

/// A cell's start and finish times as the store wrote them (UTC text).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CellTimes {
    pub id: String,
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
}

impl Store {
    /// The start and finish times of every cell of `sweep`, in grid order.
    pub async fn cell_times(&self, sweep: &str) -> Result<Vec<CellTimes>> {
        self.sweep_rows(
            "SELECT id, started_at, finished_at FROM cells WHERE sweep = $1 ORDER BY idx",
            sweep,
            |r| {
                Ok(CellTimes {
                    id: r.try_get("id")?,
                    started_at: r.try_get("started_at")?,
                    finished_at: r.try_get("finished_at")?,
                })
            },
        )
        .await
    }
}
