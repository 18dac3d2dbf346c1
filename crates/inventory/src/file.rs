//! An inventory file reloaded when it changes: a poll step the caller drives.

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::error::InventoryError;
use crate::index::{IndexConfig, InventoryTracker, IpIndex};
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
