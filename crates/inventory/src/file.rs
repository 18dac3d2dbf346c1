//! An inventory file reloaded when it changes: a pure poll step and a thin tokio task.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio_util::sync::CancellationToken;

use crate::error::InventoryError;
use crate::index::{IndexConfig, InventoryTracker, IpIndex, SharedIndex};
use crate::objects::Inventory;

/// Nanoseconds since the Unix epoch now.
pub fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// What identifies a version of the file without reading it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Stamp {
    mtime: Option<SystemTime>,
    len: u64,
}

/// A List file and the tracker that turns its versions into indexes.
#[derive(Debug)]
pub struct FileInventory {
    path: PathBuf,
    tracker: InventoryTracker,
    last: Option<Stamp>,
}

impl FileInventory {
    /// Watches `path` (not read until [`FileInventory::poll`]).
    pub fn new(path: impl Into<PathBuf>, cfg: IndexConfig) -> FileInventory {
        FileInventory {
            path: path.into(),
            tracker: InventoryTracker::new(cfg),
            last: None,
        }
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads the file if its mtime or size changed since the last call and returns the new
    /// index; `Ok(None)` when unchanged. A file that fails to parse is reported once per
    /// version and the previous index stays in force.
    pub fn poll(&mut self, now_ns: u64) -> Result<Option<IpIndex>, InventoryError> {
        let meta = std::fs::metadata(&self.path).map_err(|source| InventoryError::Read {
            path: self.path.clone(),
            source,
        })?;
        let stamp = Stamp {
            mtime: meta.modified().ok(),
            len: meta.len(),
        };
        if self.last == Some(stamp) {
            return Ok(None);
        }
        self.last = Some(stamp);
        let inv = Inventory::load(&self.path)?;
        Ok(Some(self.tracker.update(inv, now_ns)))
    }

    /// The tracker (current inventory and tombstones).
    pub fn tracker(&self) -> &InventoryTracker {
        &self.tracker
    }
}

/// Polls the file every `every` and swaps a new index in when it changed, until `cancel`.
pub async fn watch_file(
    mut src: FileInventory,
    shared: SharedIndex,
    every: Duration,
    cancel: CancellationToken,
) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        match src.poll(now_ns()) {
            Ok(Some(idx)) => {
                let s = idx.stats();
                tracing::info!(
                    path = %src.path().display(),
                    pods = s.pods,
                    nodes = s.nodes,
                    services = s.services,
                    tombstones = s.tombstones,
                    "inventory reloaded"
                );
                shared.store(idx);
            }
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(error = %e, "inventory reload failed; keeping the previous one")
            }
        }
    }
}
