//! Price table: USD per GB per cloud and connection class.

use std::collections::BTreeMap;
use std::path::Path;

use podflow_model::Class;
use serde::Deserialize;

use crate::error::EnrichError;

/// The embedded defaults (list prices; see PRICES.md for sources and date).
pub const DEFAULT_PRICES_YAML: &str = include_str!("../prices.default.yaml");

/// Bytes in one priced GB (providers price per GiB; see PRICES.md).
pub const BYTES_PER_GB: f64 = 1_073_741_824.0;

/// Extra key beside the [`Class`] names: a cloud service's range in the cluster's own
/// region (kubenetmon's INTRA_REGION), which clouds price apart from other INTRA_VPC.
pub const INTRA_REGION_KEY: &str = "INTRA_REGION";

const SLOTS: usize = 8;
const INTRA_REGION_SLOT: usize = 7;

/// One price: USD per GB in each direction.
#[derive(Clone, Copy, Debug, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Price {
    /// Bytes from the local side to the remote side.
    #[serde(default)]
    pub out: f64,
    /// Bytes from the remote side to the local side.
    #[serde(default, rename = "in")]
    pub inbound: f64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PriceFile {
    #[serde(default)]
    source: String,
    #[serde(default)]
    as_of: String,
    clouds: BTreeMap<String, BTreeMap<String, Price>>,
}

/// Prices per cloud and class, looked up per observation.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PriceTable {
    /// Where the prices come from.
    pub source: String,
    /// The date they were valid on.
    pub as_of: String,
    clouds: Vec<(String, [Price; SLOTS])>,
}

impl PriceTable {
    /// The embedded list prices.
    pub fn defaults() -> PriceTable {
        // The embedded file is tested; fall back to an empty table rather than panic.
        PriceTable::from_yaml(DEFAULT_PRICES_YAML, "<embedded prices.default.yaml>")
            .unwrap_or_default()
    }

    /// Parses a price file (YAML or JSON); `origin` names it in errors.
    pub fn from_yaml(text: &str, origin: &str) -> Result<PriceTable, EnrichError> {
        let f: PriceFile =
            serde_saphyr::from_str(text).map_err(|e| EnrichError::yaml(origin, e))?;
        let mut clouds = Vec::new();
        for (cloud, classes) in f.clouds {
            let mut slots = [Price::default(); SLOTS];
            for (key, price) in classes {
                let slot = if key == INTRA_REGION_KEY {
                    INTRA_REGION_SLOT
                } else {
                    match Class::parse(&key) {
                        Some(c) => c as usize,
                        None => {
                            return Err(EnrichError::field(
                                origin,
                                format!("clouds.{cloud}.{key}"),
                                "not a class (INTRA_NODE, INTRA_ZONE, INTER_ZONE, INTER_REGION, INTRA_VPC, PUBLIC_INTERNET, UNKNOWN, INTRA_REGION)",
                            ));
                        }
                    }
                };
                for (dir, v) in [("out", price.out), ("in", price.inbound)] {
                    if !(v.is_finite() && v >= 0.0) {
                        return Err(EnrichError::field(
                            origin,
                            format!("clouds.{cloud}.{key}.{dir}"),
                            format!("{v} is not a price (finite, >= 0)"),
                        ));
                    }
                }
                slots[slot] = price;
            }
            clouds.push((cloud, slots));
        }
        Ok(PriceTable {
            source: f.source,
            as_of: f.as_of,
            clouds,
        })
    }

    /// Reads a price file.
    pub fn load(path: &Path) -> Result<PriceTable, EnrichError> {
        let text = std::fs::read_to_string(path).map_err(|source| EnrichError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        PriceTable::from_yaml(&text, &path.display().to_string())
    }

    /// The price for a cloud (`default` when the cloud is unknown or unlisted) and class;
    /// `in_region_cloud_service` selects the INTRA_REGION price for INTRA_VPC.
    pub fn price(&self, cloud: Option<&str>, class: Class, in_region_cloud_service: bool) -> Price {
        let slots = cloud
            .and_then(|c| self.clouds.iter().find(|(n, _)| n == c))
            .or_else(|| self.clouds.iter().find(|(n, _)| n == "default"));
        let Some((_, slots)) = slots else {
            return Price::default();
        };
        let slot = if in_region_cloud_service && class == Class::IntraVpc {
            INTRA_REGION_SLOT
        } else {
            class as usize
        };
        slots[slot]
    }

    /// USD for the bytes of one observation.
    pub fn cost(
        &self,
        cloud: Option<&str>,
        class: Class,
        in_region_cloud_service: bool,
        bytes_out: u64,
        bytes_in: u64,
    ) -> f64 {
        let p = self.price(cloud, class, in_region_cloud_service);
        (bytes_out as f64 * p.out + bytes_in as f64 * p.inbound) / BYTES_PER_GB
    }

    /// The clouds listed.
    pub fn clouds(&self) -> impl Iterator<Item = &str> {
        self.clouds.iter().map(|(n, _)| n.as_str())
    }
}
