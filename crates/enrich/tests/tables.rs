//! Cloud prefix tables, user CIDR rules and prices, from files in their real formats.

use std::net::IpAddr;
use std::path::PathBuf;

use podflow_enrich::{
    Cidr, CloudRanges, EnrichConfig, EnrichError, KnownNetworks, PrefixTable, PriceTable, Provider,
};
use podflow_model::{Class, NetworkKind};
use proptest::prelude::*;

fn data() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data")
}

fn ip(s: &str) -> IpAddr {
    s.parse().expect("test ip")
}

fn ranges() -> CloudRanges {
    let (r, files) = CloudRanges::load_dir(&data()).expect("fixtures load");
    assert_eq!(files.len(), 4, "all four provider files recognised");
    r
}

fn hit(r: &CloudRanges, addr: &str) -> Option<(String, String, String)> {
    r.lookup(ip(addr)).map(|m| {
        (
            m.cloud.to_string(),
            m.region.to_string(),
            m.service.to_string(),
        )
    })
}

fn t(c: &str, r: &str, s: &str) -> Option<(String, String, String)> {
    Some((c.into(), r.into(), s.into()))
}

#[test]
fn cloud_lookups_follow_longest_prefix_and_priority() {
    let r = ranges();
    let cases = [
        // S3 beats AMAZON on the same prefix, whichever comes first in the file.
        ("52.216.10.1", t("aws", "us-east-1", "S3")),
        ("52.218.1.1", t("aws", "eu-west-1", "S3")),
        // AMAZON beats EC2 on the same prefix.
        ("3.81.2.3", t("aws", "us-east-1", "AMAZON")),
        // A longer DYNAMODB prefix inside an AMAZON one.
        ("3.5.0.9", t("aws", "us-east-1", "DYNAMODB")),
        ("3.5.1.9", t("aws", "us-east-1", "AMAZON")),
        ("18.185.0.1", t("aws", "eu-central-1", "EC2")),
        ("13.33.0.1", t("aws", "GLOBAL", "CLOUDFRONT")),
        ("2600:1f18::1", t("aws", "us-east-1", "AMAZON")),
        ("2600:1fa0:8001::1", t("aws", "us-east-1", "S3")),
        ("2a05:d018::1", t("aws", "eu-west-1", "EC2")),
        // cloud.json's regional /15 inside goog.json's /10.
        ("34.75.0.1", t("gcp", "us-east1", "Google Cloud")),
        ("34.100.0.1", t("gcp", "global", "Google")),
        ("8.8.8.8", t("gcp", "global", "Google")),
        ("35.187.1.1", t("gcp", "europe-west1", "Google Cloud")),
        ("2600:1900:4020::5", t("gcp", "us-east1", "Google Cloud")),
        ("2600:1900:5000::5", t("gcp", "global", "Google")),
        // Regional AzureStorage beats global Storage and AzureCloud.
        ("20.60.1.1", t("azure", "eastus", "AzureStorage")),
        ("20.150.1.1", t("azure", "global", "AzureStorage")),
        ("20.42.1.1", t("azure", "eastus", "AzureCloud")),
        ("13.69.105.7", t("azure", "westeurope", "AzureSQL")),
        ("2603:1030:210::1", t("azure", "eastus", "AzureCloud")),
        ("1.1.1.1", None),
        ("10.0.0.1", None),
        ("::1", None),
    ];
    for (addr, want) in cases {
        assert_eq!(hit(&r, addr), want, "{addr}");
    }
    assert_eq!(r.len(), 26);
}

#[test]
fn provider_files_are_recognised_by_name() {
    assert_eq!(
        Provider::from_file_name("ip-ranges.json"),
        Some(Provider::Aws)
    );
    assert_eq!(Provider::from_file_name("cloud.json"), Some(Provider::Gcp));
    assert_eq!(
        Provider::from_file_name("goog.json"),
        Some(Provider::Google)
    );
    assert_eq!(
        Provider::from_file_name("ServiceTags_Public_20250113.json"),
        Some(Provider::Azure)
    );
    assert_eq!(Provider::from_file_name("notes.txt"), None);
}

#[test]
fn a_bad_prefix_is_named_with_file_and_field() {
    let mut b = CloudRanges::builder();
    let text = r#"{"prefixes":[{"ip_prefix":"3.5.0.0/19","region":"x","service":"AMAZON"},
        {"ip_prefix":"3.5.0.0/40","region":"x","service":"AMAZON"}],"ipv6_prefixes":[]}"#;
    let err = b
        .add_text(Provider::Aws, "ranges/ip-ranges.json", text)
        .expect_err("bad length");
    assert_eq!(
        err.to_string(),
        "ranges/ip-ranges.json: prefixes[1].ip_prefix: \"3.5.0.0/40\": bad prefix length"
    );
    let err = b
        .add_text(
            Provider::Azure,
            "ServiceTags_Public_1.json",
            r#"{"values":[{"name":"Storage.EastUS","properties":{"region":"eastus","systemService":"AzureStorage","addressPrefixes":["20.60.0.0/16","nope"]}}]}"#,
        )
        .expect_err("bad prefix");
    assert_eq!(
        err.to_string(),
        "ServiceTags_Public_1.json: values[0] (Storage.EastUS).properties.addressPrefixes[1]: \"nope\": not an IP address"
    );
}

#[test]
fn a_syntax_error_names_file_line_and_column() {
    let mut b = CloudRanges::builder();
    let err = b
        .add_text(
            Provider::Gcp,
            "cloud.json",
            "{\n  \"prefixes\": [\n    {\"ipv4Prefix\": }\n",
        )
        .expect_err("syntax");
    let msg = err.to_string();
    assert!(matches!(err, EnrichError::Json { .. }));
    assert!(msg.starts_with("cloud.json: "), "{msg}");
    assert!(msg.contains("line 3"), "{msg}");
}

#[test]
fn a_missing_directory_is_named() {
    let err = CloudRanges::load_dir(&data().join("absent")).expect_err("missing dir");
    assert!(err.to_string().contains("absent: cannot read"), "{err}");
}

#[test]
fn user_rules_parse_and_match() {
    let yaml = r#"
cloud: aws
region: us-east-1
networks:
  - name: vpc
    cidrs: ["10.0.0.0/16", "fd00:10::/48"]
    kind: vpc
  - name: nat-a
    cidrs: ["10.0.1.10/32"]
    kind: nat_gateway
    zone: us-east-1a
    labels: {team: net}
  - name: office
    cidrs: ["192.168.0.0/16"]
    kind: on_prem
    class: PUBLIC_INTERNET
"#;
    let cfg = EnrichConfig::from_yaml(yaml, "podflow.yaml").expect("valid config");
    assert_eq!(cfg.cloud.as_deref(), Some("aws"));
    assert_eq!(cfg.app_labels[0], "app.kubernetes.io/name");
    let k = KnownNetworks::build(&cfg.networks, "podflow.yaml").expect("rules");
    assert_eq!(k.len(), 4);
    let nat = k.lookup(ip("10.0.1.10")).expect("nat");
    assert_eq!(&*nat.name, "nat-a");
    assert_eq!(nat.kind, NetworkKind::NatGateway);
    assert_eq!(nat.zone.as_deref(), Some("us-east-1a"));
    assert_eq!(nat.labels, vec![("team".into(), "net".into())]);
    assert_eq!(k.lookup(ip("10.0.1.11")).map(|n| &*n.name), Some("vpc"));
    assert_eq!(k.lookup(ip("fd00:10::7")).map(|n| &*n.name), Some("vpc"));
    let office = k.lookup(ip("192.168.4.4")).expect("office");
    assert_eq!(office.class, Some(Class::PublicInternet));
    assert_eq!(k.lookup(ip("172.16.0.1")), None);
}

#[test]
fn config_errors_name_the_field() {
    let err = EnrichConfig::from_yaml(
        "networks:\n  - name: a\n    cidrs: [\"10.0.0.1/8\"]\n",
        "c.yaml",
    )
    .expect_err("host bits");
    assert_eq!(
        err.to_string(),
        "c.yaml: networks[0] (a).cidrs[0]: \"10.0.0.1/8\": bits set after the prefix length"
    );
    let err = EnrichConfig::from_yaml(
        "networks:\n  - name: a\n    cidr: [\"10.0.0.0/8\"]\n",
        "c.yaml",
    )
    .expect_err("unknown key");
    let msg = err.to_string();
    assert!(msg.starts_with("c.yaml: "), "{msg}");
    assert!(msg.contains("cidr"), "{msg}");
    assert!(msg.contains("line 3"), "{msg}");
    let err = EnrichConfig::from_yaml(
        "networks:\n  - name: a\n    cidrs: []\n    class: SIDEWAYS\n",
        "c.yaml",
    )
    .expect_err("bad class");
    assert!(err.to_string().contains("SIDEWAYS"), "{err}");
}

#[test]
fn default_prices_load_and_price_bytes() {
    let p = PriceTable::from_yaml(podflow_enrich::DEFAULT_PRICES_YAML, "embedded")
        .expect("embedded prices parse");
    assert_eq!(p, PriceTable::defaults());
    assert_eq!(p.as_of, "2025-01-15");
    assert_eq!(p.clouds().collect::<Vec<_>>(), ["aws", "azure", "gcp"]);
    let gb = podflow_enrich::BYTES_PER_GB as u64;
    // AWS cross-AZ: both directions at 0.01.
    assert!((p.cost(Some("aws"), Class::InterZone, false, gb, gb) - 0.02).abs() < 1e-12);
    assert!((p.cost(Some("aws"), Class::PublicInternet, false, 2 * gb, gb) - 0.18).abs() < 1e-12);
    assert!((p.cost(Some("gcp"), Class::InterZone, false, gb, gb) - 0.01).abs() < 1e-12);
    assert_eq!(p.cost(Some("azure"), Class::InterZone, false, gb, gb), 0.0);
    assert_eq!(p.cost(Some("aws"), Class::IntraVpc, true, gb, gb), 0.0);
    assert_eq!(p.cost(None, Class::PublicInternet, false, gb, gb), 0.0);
    assert_eq!(
        p.cost(Some("oracle"), Class::PublicInternet, false, gb, gb),
        0.0
    );
}

#[test]
fn price_files_are_checked() {
    let p = PriceTable::from_yaml(
        "clouds:\n  default:\n    PUBLIC_INTERNET: {out: 0.05}\n    INTRA_REGION: {out: 0.5}\n",
        "p.yaml",
    )
    .expect("valid");
    let gb = podflow_enrich::BYTES_PER_GB as u64;
    assert!((p.cost(Some("oracle"), Class::PublicInternet, false, gb, gb) - 0.05).abs() < 1e-12);
    assert!((p.cost(None, Class::IntraVpc, true, gb, 0) - 0.5).abs() < 1e-12);
    let err = PriceTable::from_yaml("clouds:\n  aws:\n    CROSS_AZ: {out: 0.01}\n", "p.yaml")
        .expect_err("bad class");
    assert!(
        err.to_string()
            .starts_with("p.yaml: clouds.aws.CROSS_AZ: not a class"),
        "{err}"
    );
    let err = PriceTable::from_yaml("clouds:\n  aws:\n    INTER_ZONE: {out: -1}\n", "p.yaml")
        .expect_err("negative");
    assert_eq!(
        err.to_string(),
        "p.yaml: clouds.aws.INTER_ZONE.out: -1 is not a price (finite, >= 0)"
    );
    let err = PriceTable::from_yaml("clouds:\n  aws:\n    INTER_ZONE: {egress: 1}\n", "p.yaml")
        .expect_err("unknown field");
    assert!(err.to_string().contains("egress"), "{err}");
}

/// Reference: the longest prefix containing the address, by a full scan.
fn naive(prefixes: &[(Cidr, u32)], addr: IpAddr) -> Option<u32> {
    prefixes
        .iter()
        .filter(|(c, _)| c.contains(addr))
        .max_by_key(|(c, _)| c.len())
        .map(|(_, v)| *v)
}

fn cidr_v4() -> impl Strategy<Value = Cidr> {
    // Few distinct high bits so prefixes nest and collide often.
    (0u32..16, any::<u32>(), 0u8..=32).prop_map(|(hi, lo, len)| {
        let a = (hi << 28) | (lo >> 4);
        Cidr::new(IpAddr::V4(a.into()), len).expect("len <= 32")
    })
}

fn cidr_v6() -> impl Strategy<Value = Cidr> {
    (0u128..8, any::<u128>(), 0u8..=128).prop_map(|(hi, lo, len)| {
        let a = (hi << 125) | (lo >> 3);
        Cidr::new(IpAddr::V6(a.into()), len).expect("len <= 128")
    })
}

fn addr_near(c: Cidr, noise: u128) -> IpAddr {
    match c.addr() {
        IpAddr::V4(a) => IpAddr::V4((u32::from(a) ^ (noise as u32 >> (noise as u32 % 32))).into()),
        IpAddr::V6(a) => IpAddr::V6((u128::from(a) ^ (noise >> (noise % 128))).into()),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    #[test]
    fn table_agrees_with_a_naive_scan(
        v4 in prop::collection::vec(cidr_v4(), 0..60),
        v6 in prop::collection::vec(cidr_v6(), 0..60),
        noise in prop::collection::vec(any::<u128>(), 1..40),
    ) {
        let mut uniq = std::collections::BTreeSet::new();
        let prefixes: Vec<(Cidr, u32)> = v4
            .into_iter()
            .chain(v6)
            .filter(|c| uniq.insert(*c))
            .enumerate()
            .map(|(i, c)| (c, i as u32))
            .collect();
        let mut b = PrefixTable::builder();
        for (c, v) in &prefixes {
            b.insert(*c, 0, *v);
        }
        let table = b.build();
        prop_assert_eq!(table.len(), prefixes.len());
        for (i, n) in noise.iter().enumerate() {
            let probes = match prefixes.get(i % prefixes.len().max(1)) {
                Some((c, _)) => vec![c.addr(), addr_near(*c, *n)],
                None => vec![IpAddr::V4((*n as u32).into())],
            };
            for a in probes.into_iter().chain([IpAddr::V6((*n).into()), IpAddr::V4((*n as u32).into())]) {
                prop_assert_eq!(table.lookup(a).copied(), naive(&prefixes, a), "{}", a);
            }
        }
    }
}

#[test]
fn a_price_file_without_tiers_still_parses_and_prices_the_same() {
    // The default file as it was before tiers, allowances and regions (first tier only).
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/prices-flat-2025-01-15.yaml");
    let old = PriceTable::load(&path).expect("the old format parses");
    let new = PriceTable::defaults();
    let gb = podflow_enrich::BYTES_PER_GB as u64;
    for cloud in ["aws", "gcp", "azure", "oracle"] {
        for class in Class::ALL {
            for in_region in [false, true] {
                assert_eq!(
                    old.price(Some(cloud), class, in_region),
                    new.price(Some(cloud), class, in_region),
                    "{cloud} {class} {in_region}: the stored estimate keeps the first-tier rate"
                );
            }
        }
    }
    // Without tiers a schedule is the flat rate with nothing free.
    let s = old.schedule(
        Some("aws"),
        None,
        podflow_enrich::PriceKey::Class(Class::PublicInternet),
        podflow_enrich::Direction::Out,
    );
    assert_eq!(s, podflow_enrich::Schedule::flat(0.09));
    assert!((old.cost(Some("aws"), Class::PublicInternet, false, gb, 0) - 0.09).abs() < 1e-12);
}

#[test]
fn a_region_replaces_its_cloud_entry_and_tiers_are_checked() {
    use podflow_enrich::{Direction, PriceKey};
    let p = PriceTable::from_yaml(
        "clouds:\n  aws:\n    PUBLIC_INTERNET: {out: 0.09}\n    INTER_ZONE: {out: 0.01, in: 0.01}\n\
         regions:\n  aws:\n    sa-east-1:\n      PUBLIC_INTERNET:\n        free_gb: {out: 1}\n        tiers:\n          out:\n            - {up_to_gb: 10240, price: 0.15}\n            - {price: 0.138}\n",
        "p.yaml",
    )
    .expect("valid");
    let gb = podflow_enrich::BYTES_PER_GB as u64;
    let internet = PriceKey::Class(Class::PublicInternet);
    // The row estimate takes the region's first tier (`out` left out: the first tier's).
    let sa = p.cost_in(
        Some("aws"),
        Some("sa-east-1"),
        Class::PublicInternet,
        false,
        gb,
        0,
    );
    assert!((sa - 0.15).abs() < 1e-12, "{sa}");
    let us = p.cost_in(
        Some("aws"),
        Some("us-east-1"),
        Class::PublicInternet,
        false,
        gb,
        0,
    );
    assert!((us - 0.09).abs() < 1e-12, "{us}");
    // Classes the region does not list keep the cloud's entry.
    let iz = p.cost_in(
        Some("aws"),
        Some("sa-east-1"),
        Class::InterZone,
        false,
        gb,
        gb,
    );
    assert!((iz - 0.02).abs() < 1e-12, "{iz}");
    let s = p.schedule(Some("aws"), Some("sa-east-1"), internet, Direction::Out);
    assert_eq!(s.free_gb, 1.0);
    assert_eq!(s.tiers.len(), 2);
    assert_eq!(p.regions().collect::<Vec<_>>(), [("aws", "sa-east-1")]);

    let err = |yaml: &str| {
        PriceTable::from_yaml(yaml, "p.yaml")
            .expect_err(yaml)
            .to_string()
    };
    let tiered = |tiers: &str| {
        format!("clouds:\n  aws:\n    PUBLIC_INTERNET:\n      tiers:\n        out: {tiers}\n")
    };
    assert_eq!(
        err(&tiered(
            "[{up_to_gb: 100, price: 0.09}, {up_to_gb: 50, price: 0.08}, {price: 0.07}]"
        )),
        "p.yaml: clouds.aws.PUBLIC_INTERNET.tiers.out[1].up_to_gb: 50 is not above the previous tier's end (100 GB): tiers go up"
    );
    assert!(err(&tiered("[{up_to_gb: 100, price: 0.09}]")).starts_with(
        "p.yaml: clouds.aws.PUBLIC_INTERNET.tiers.out[0].up_to_gb: the last tier has no end"
    ));
    assert!(
        err(&tiered("[{price: 0.09}, {price: 0.08}]"))
            .starts_with("p.yaml: clouds.aws.PUBLIC_INTERNET.tiers.out[0].up_to_gb: missing")
    );
    assert_eq!(
        err(&tiered("[{price: -1}]")),
        "p.yaml: clouds.aws.PUBLIC_INTERNET.tiers.out[0].price: -1 is not a price (finite, >= 0)"
    );
    assert!(
        err(&tiered("[{usd: 0.09}]")).contains("usd"),
        "unknown field named"
    );
    assert!(
        err("clouds:\n  aws:\n    PUBLIC_INTERNET:\n      out: 0.08\n      tiers: {out: [{price: 0.09}]}\n")
            .starts_with("p.yaml: clouds.aws.PUBLIC_INTERNET.out: 0.08 is not the first tier's price (0.09)")
    );
    assert_eq!(
        err("clouds:\n  aws:\n    PUBLIC_INTERNET: {free_gb: {out: -5}}\n"),
        "p.yaml: clouds.aws.PUBLIC_INTERNET.free_gb.out: -5 is not a volume (finite GB, >= 0)"
    );
    assert!(
        err("clouds:\n  aws: {}\nregions:\n  oracle:\n    x: {}\n")
            .starts_with("p.yaml: regions.oracle: not a cloud of `clouds`")
    );
    assert!(
        err("clouds:\n  aws: {}\nregions:\n  aws:\n    sa-east-1:\n      CROSS_AZ: {out: 1}\n")
            .starts_with("p.yaml: regions.aws.sa-east-1.CROSS_AZ: not a class")
    );
}

#[test]
fn the_billing_section_is_checked() {
    let err = |yaml: &str| {
        EnrichConfig::from_yaml(yaml, "c.yaml")
            .expect_err(yaml)
            .to_string()
    };
    assert_eq!(
        err(
            "billing:\n  nat_gateways:\n    - {name: nat-a, subnets: [10.0.0.1/19], usd_per_gb: 0.045}\n"
        ),
        "c.yaml: billing.nat_gateways[0] (nat-a).subnets[0]: \"10.0.0.1/19\": bits set after the prefix length"
    );
    assert_eq!(
        err(
            "billing:\n  nat_gateways:\n    - {name: nat-a, subnets: [10.0.0.0/19], classes: [EGRESS], usd_per_gb: 0.045}\n"
        ),
        "c.yaml: billing.nat_gateways[0].classes[0]: \"EGRESS\" is not a class or INTRA_REGION"
    );
    assert_eq!(
        err("billing:\n  endpoints:\n    - {name: e, addresses: [], usd_per_gb: 0.01}\n"),
        "c.yaml: billing.endpoints[0] (e).addresses: empty: name at least one CIDR"
    );
    assert_eq!(
        err(
            "billing:\n  prior_usage:\n    - {cloud: aws, class: PUBLIC_INTERNET, month: 2025-1, gb: 1}\n"
        ),
        "c.yaml: billing.prior_usage[0].month: \"2025-1\" is not YYYY-MM"
    );
    assert_eq!(
        err("billing:\n  prior_usage:\n    - {cloud: aws, class: PUBLIC_INTERNET, gb: .nan}\n"),
        "c.yaml: billing.prior_usage[0].gb: NaN is not a volume (finite GB, >= 0)"
    );
    assert!(
        err("billing:\n  nat:\n    - {}\n").contains("nat"),
        "unknown key named"
    );
}
