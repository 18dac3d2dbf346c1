//! Cloud providers' published prefix lists, in their own formats, as one
//! longest-prefix-match table.
//!
//! Priority when several entries carry the same prefix (longest prefix always wins
//! first): a specific service beats the provider's catch-all (`AMAZON`, `AzureCloud`,
//! goog.json's unnamed ranges), a regional entry beats a global one, and two services
//! are singled out because they are what bills are about: `S3` and `AzureStorage` beat
//! everything. AWS lists most `EC2` ranges under `AMAZON` too; `EC2` ranks below
//! `AMAZON` because an EC2 range says only "some instance", which `AMAZON` already says.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;

use podflow_model::CloudMeta;
use serde::Deserialize;

use crate::error::EnrichError;
use crate::prefix::{Cidr, PrefixTable, PrefixTableBuilder};

/// Which published list a file is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Provider {
    /// AWS `ip-ranges.json`.
    Aws,
    /// GCP `cloud.json` (customer-usable Google Cloud ranges, with regions).
    Gcp,
    /// Google `goog.json` (all Google ranges, no regions).
    Google,
    /// Azure `ServiceTags_Public_*.json`.
    Azure,
}

impl Provider {
    /// Recognises a provider from a file name as the providers publish it.
    pub fn from_file_name(name: &str) -> Option<Provider> {
        match name {
            "ip-ranges.json" => Some(Provider::Aws),
            "cloud.json" => Some(Provider::Gcp),
            "goog.json" => Some(Provider::Google),
            n if n.starts_with("ServiceTags_") && n.ends_with(".json") => Some(Provider::Azure),
            _ => None,
        }
    }
}

/// Rank of an entry among entries with the same prefix (higher wins).
pub fn service_rank(cloud: &str, service: &str, region_known: bool) -> i32 {
    let base = match (cloud, service) {
        ("aws", "S3") | ("azure", "AzureStorage") => 30,
        ("aws", "AMAZON") | ("azure", "AzureCloud") => 10,
        ("aws", "EC2") => 5,
        ("gcp", GOOGLE_CATCH_ALL) => 0,
        _ => 20,
    };
    // A regional entry tells more than the same prefix listed as global.
    base + i32::from(region_known)
}

const GOOGLE_CATCH_ALL: &str = "Google";
const GLOBAL: &str = "global";

#[derive(Deserialize)]
struct AwsFile {
    #[serde(default)]
    prefixes: Vec<AwsPrefix>,
    #[serde(default)]
    ipv6_prefixes: Vec<AwsPrefix>,
}

#[derive(Deserialize)]
struct AwsPrefix {
    #[serde(alias = "ipv6_prefix")]
    ip_prefix: Option<String>,
    #[serde(default)]
    region: String,
    #[serde(default)]
    service: String,
}

#[derive(Deserialize)]
struct GoogleFile {
    #[serde(default)]
    prefixes: Vec<GooglePrefix>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct GooglePrefix {
    ipv4_prefix: Option<String>,
    ipv6_prefix: Option<String>,
    service: Option<String>,
    scope: Option<String>,
}

#[derive(Deserialize)]
struct AzureFile {
    #[serde(default)]
    values: Vec<AzureValue>,
}

#[derive(Deserialize)]
struct AzureValue {
    #[serde(default)]
    name: String,
    properties: AzureProps,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct AzureProps {
    #[serde(default)]
    region: String,
    #[serde(default)]
    system_service: String,
    #[serde(default)]
    address_prefixes: Vec<String>,
}

/// Builds [`CloudRanges`] from one or more provider files.
#[derive(Debug, Default)]
pub struct CloudRangesBuilder {
    table: PrefixTableBuilder<Arc<CloudMeta>>,
    interned: HashMap<(String, String, String), Arc<CloudMeta>>,
}

impl CloudRangesBuilder {
    fn meta(&mut self, cloud: &str, region: &str, service: &str) -> Arc<CloudMeta> {
        let region = if region.is_empty() { GLOBAL } else { region };
        let key = (cloud.to_string(), region.to_string(), service.to_string());
        self.interned
            .entry(key)
            .or_insert_with(|| {
                Arc::new(CloudMeta {
                    cloud: cloud.into(),
                    region: region.into(),
                    service: service.into(),
                })
            })
            .clone()
    }

    fn add(
        &mut self,
        origin: &str,
        field: impl FnOnce() -> String,
        cidr: &str,
        cloud: &str,
        region: &str,
        service: &str,
    ) -> Result<(), EnrichError> {
        // Providers publish clean prefixes; tolerate host bits rather than refuse a list.
        let c = Cidr::parse(cidr, false)
            .map_err(|e| EnrichError::field(origin, field(), format!("{cidr:?}: {e}")))?;
        let rank = service_rank(cloud, service, !region.is_empty() && region != GLOBAL);
        let meta = self.meta(cloud, region, service);
        self.table.insert(c, rank, meta);
        Ok(())
    }

    /// Adds a file whose provider is known; `origin` names it in errors.
    pub fn add_text(
        &mut self,
        provider: Provider,
        origin: &str,
        text: &str,
    ) -> Result<usize, EnrichError> {
        let before = self.table.len();
        match provider {
            Provider::Aws => {
                let f: AwsFile =
                    serde_json::from_str(text).map_err(|e| EnrichError::json(origin, e))?;
                for (list, name, key) in [
                    (&f.prefixes, "prefixes", "ip_prefix"),
                    (&f.ipv6_prefixes, "ipv6_prefixes", "ipv6_prefix"),
                ] {
                    for (i, p) in list.iter().enumerate() {
                        let field = || format!("{name}[{i}].{key}");
                        let Some(cidr) = &p.ip_prefix else {
                            return Err(EnrichError::field(origin, field(), "missing"));
                        };
                        self.add(origin, field, cidr, "aws", &p.region, &p.service)?;
                    }
                }
            }
            Provider::Gcp | Provider::Google => {
                let f: GoogleFile =
                    serde_json::from_str(text).map_err(|e| EnrichError::json(origin, e))?;
                for (i, p) in f.prefixes.iter().enumerate() {
                    let (cidr, key) = match (&p.ipv4_prefix, &p.ipv6_prefix) {
                        (Some(c), _) => (c, "ipv4Prefix"),
                        (None, Some(c)) => (c, "ipv6Prefix"),
                        (None, None) => {
                            return Err(EnrichError::field(
                                origin,
                                format!("prefixes[{i}]"),
                                "neither ipv4Prefix nor ipv6Prefix",
                            ));
                        }
                    };
                    let service = match (provider, &p.service) {
                        (Provider::Gcp, Some(s)) => s.as_str(),
                        (Provider::Gcp, None) => "Google Cloud",
                        _ => GOOGLE_CATCH_ALL,
                    };
                    let region = p.scope.as_deref().unwrap_or("");
                    self.add(
                        origin,
                        || format!("prefixes[{i}].{key}"),
                        cidr,
                        "gcp",
                        region,
                        service,
                    )?;
                }
            }
            Provider::Azure => {
                let f: AzureFile =
                    serde_json::from_str(text).map_err(|e| EnrichError::json(origin, e))?;
                for (i, v) in f.values.iter().enumerate() {
                    // systemService names the service ("AzureStorage"); the catch-all
                    // AzureCloud.<region> tags leave it empty.
                    let service = if v.properties.system_service.is_empty() {
                        v.name.split('.').next().unwrap_or("")
                    } else {
                        v.properties.system_service.as_str()
                    };
                    for (j, cidr) in v.properties.address_prefixes.iter().enumerate() {
                        self.add(
                            origin,
                            || format!("values[{i}] ({}).properties.addressPrefixes[{j}]", v.name),
                            cidr,
                            "azure",
                            &v.properties.region,
                            service,
                        )?;
                    }
                }
            }
        }
        Ok(self.table.len() - before)
    }

    /// Reads and adds a file.
    pub fn add_file(&mut self, provider: Provider, path: &Path) -> Result<usize, EnrichError> {
        let text = std::fs::read_to_string(path).map_err(|source| EnrichError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        self.add_text(provider, &path.display().to_string(), &text)
    }

    /// Flattens everything added.
    pub fn build(self) -> CloudRanges {
        CloudRanges {
            table: self.table.build(),
        }
    }
}

/// The providers' prefixes, ready for lookups.
#[derive(Clone, Debug, Default)]
pub struct CloudRanges {
    table: PrefixTable<Arc<CloudMeta>>,
}

impl CloudRanges {
    /// A builder.
    pub fn builder() -> CloudRangesBuilder {
        CloudRangesBuilder::default()
    }

    /// Loads every recognised file in `dir` (`ip-ranges.json`, `cloud.json`, `goog.json`,
    /// `ServiceTags_*.json`), in name order so ties resolve the same way every time.
    /// Other files are ignored; returns the ranges and the files loaded.
    pub fn load_dir(dir: &Path) -> Result<(CloudRanges, Vec<std::path::PathBuf>), EnrichError> {
        let read_err = |source| EnrichError::Read {
            path: dir.to_path_buf(),
            source,
        };
        let mut files = Vec::new();
        for entry in std::fs::read_dir(dir).map_err(read_err)? {
            let entry = entry.map_err(read_err)?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if let Some(p) = Provider::from_file_name(&name) {
                files.push((name, p, entry.path()));
            }
        }
        files.sort_by(|a, b| a.0.cmp(&b.0));
        let mut b = CloudRanges::builder();
        for (_, p, path) in &files {
            b.add_file(*p, path)?;
        }
        Ok((b.build(), files.into_iter().map(|f| f.2).collect()))
    }

    /// The most specific published range containing `ip`.
    #[inline]
    pub fn lookup(&self, ip: IpAddr) -> Option<&Arc<CloudMeta>> {
        self.table.lookup(ip)
    }

    /// The most specific published prefix containing `ip`, with its range.
    pub fn lookup_cidr(&self, ip: IpAddr) -> Option<(Cidr, &Arc<CloudMeta>)> {
        self.table.lookup_cidr(ip)
    }

    /// Number of distinct prefixes.
    pub fn len(&self) -> usize {
        self.table.len()
    }

    /// Whether no prefix is loaded.
    pub fn is_empty(&self) -> bool {
        self.table.is_empty()
    }
}
