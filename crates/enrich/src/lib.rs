//! podflow's enrichment: what each end of a connection is (pod, node, service, user
//! network, cloud range, internet), the connection class, and its price.
//!
//! Pure functions over loaded tables and the inventory's IP index; loading reads local
//! files only, so a cluster without internet access starts.

mod attribute;
mod bill;
mod cloud;
mod config;
mod error;
mod month;
mod plan;
mod prefix;
mod prices;
mod zones;

pub use attribute::{Attributor, Home, is_public};
pub use bill::{
    AvoidableLine, BillLine, Biller, Charge, MonthBill, MonthShare, MonthToDate, Part, Piece,
    Processed, ProcessingLine, Showback, ShowbackRow, ShowbackTotals, TierCharge, Usage, charge,
    pieces,
};
pub use cloud::{CloudRanges, CloudRangesBuilder, Provider, service_rank};
pub use config::{EnrichConfig, KnownNetworks, NetworkRule};
pub use error::EnrichError;
pub use month::Month;
pub use plan::{BillingConfig, Endpoint, NatGateway, Plan, PriorUsage, Rule, RuleKind};
pub use prefix::{Cidr, CidrError, PrefixTable, PrefixTableBuilder};
pub use prices::{
    BYTES_PER_GB, DEFAULT_PRICES_YAML, Direction, INTRA_REGION_KEY, Price, PriceKey, PriceTable,
    Schedule, Tier,
};
pub use zones::service_zone;
