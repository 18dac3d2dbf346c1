//! Readiness: the conditions a role waits for before it can do its job, each with a
//! name that `/ready` reports while it is unmet.

use std::sync::{Arc, Mutex};

type Check = Arc<dyn Fn() -> bool + Send + Sync>;

/// The conditions of one role; ready when every one holds (and when there are none).
#[derive(Default)]
pub struct Health {
    conditions: Mutex<Vec<(&'static str, Check)>>,
}

impl std::fmt::Debug for Health {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self
            .conditions
            .lock()
            .map(|c| c.iter().map(|(n, _)| *n).collect())
            .unwrap_or_default();
        f.debug_struct("Health")
            .field("conditions", &names)
            .finish()
    }
}

impl Health {
    /// Adds a condition: `what` names what the role waits for ("the first conntrack
    /// dump"), `check` says whether it holds now.
    pub fn require(&self, what: &'static str, check: impl Fn() -> bool + Send + Sync + 'static) {
        if let Ok(mut c) = self.conditions.lock() {
            c.push((what, Arc::new(check)));
        }
    }

    /// `Ok` when every condition holds, else the names of those that do not.
    pub fn ready(&self) -> Result<(), String> {
        let checks: Vec<(&'static str, Check)> = match self.conditions.lock() {
            Ok(c) => c.clone(),
            Err(_) => return Err("health conditions unreadable".into()),
        };
        let waiting: Vec<&str> = checks
            .iter()
            .filter(|(_, check)| !check())
            .map(|(n, _)| *n)
            .collect();
        if waiting.is_empty() {
            Ok(())
        } else {
            Err(format!("waiting for {}", waiting.join(", ")))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering::Relaxed};

    #[test]
    fn ready_once_every_condition_holds_and_says_what_it_waits_for() {
        let h = Health::default();
        assert_eq!(h.ready(), Ok(()));
        let dumped = Arc::new(AtomicBool::new(false));
        let d = Arc::clone(&dumped);
        h.require("the first conntrack dump", move || d.load(Relaxed));
        h.require("the store", || true);
        assert_eq!(
            h.ready(),
            Err("waiting for the first conntrack dump".to_string())
        );
        dumped.store(true, Relaxed);
        assert_eq!(h.ready(), Ok(()));
    }
}
