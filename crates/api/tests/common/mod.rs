//! Helpers shared by the API's integration tests.

use podflow_model::EndLabels;

/// The labels of pod `<workload>-0` of Deployment `workload` in `ns`, on `node` in `zone`.
pub fn pod(ns: &str, workload: &str, node: &str, zone: &str) -> EndLabels {
    EndLabels {
        kind: "pod",
        namespace: ns.into(),
        name: format!("{workload}-0").into(),
        workload_kind: "Deployment".into(),
        workload: workload.into(),
        node: node.into(),
        zone: zone.into(),
        ..Default::default()
    }
}

/// An exposition with no metrics that is always ready (the API tests need only flows).
#[derive(Debug)]
pub struct Quiet;

impl podflow_api::Exposition for Quiet {
    fn metrics(&self) -> String {
        String::new()
    }
    fn ready(&self) -> Result<(), String> {
        Ok(())
    }
}
