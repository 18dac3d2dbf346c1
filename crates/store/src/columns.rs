//! The label columns: every attribution label a stored row carries, each named once with
//! how it is read from and written into [`FlowLabels`]. The backends build their SQL and
//! their bind and read code from this list.

use podflow_model::{Class, FlowLabels, parse_flag};

/// One label column.
#[derive(Clone, Copy, Debug)]
pub(crate) struct LabelColumn {
    /// Its name in the embedded store (ClickHouse names some of them kubenetmon's way).
    pub(crate) name: &'static str,
    /// Its value in a row's labels.
    pub(crate) get: fn(&FlowLabels) -> &str,
    /// Sets it from stored text; false when the text is no value it can hold.
    pub(crate) set: fn(&mut FlowLabels, &str) -> bool,
}

/// A text label of one end (`local` or `remote`) or of the row.
macro_rules! text {
    ($end:ident . $field:ident) => {
        LabelColumn {
            name: concat!(stringify!($end), "_", stringify!($field)),
            get: |l| &l.$end.$field,
            set: |l, v| {
                l.$end.$field = v.into();
                true
            },
        }
    };
    ($field:ident) => {
        LabelColumn {
            name: stringify!($field),
            get: |l| &l.$field,
            set: |l, v| {
                l.$field = v.into();
                true
            },
        }
    };
}

/// An end's kind: one of the kinds podflow writes (anything else reads as `unknown`).
macro_rules! kind {
    ($end:ident) => {
        LabelColumn {
            name: concat!(stringify!($end), "_kind"),
            get: |l| l.$end.kind,
            set: |l, v| {
                l.$end.kind = kind_static(v);
                true
            },
        }
    };
}

/// A Service flag (`yes` / `no`, empty without a Service): `$get` reads it, `$set`
/// stores the parsed flag.
macro_rules! flag {
    ($name:literal, $get:ident, |$l:ident, $v:ident| $set:expr) => {
        LabelColumn {
            name: $name,
            get: |l| l.$get(),
            set: |$l, v| match parse_flag(v) {
                Some($v) => {
                    $set;
                    true
                }
                None => false,
            },
        }
    };
}

/// Every label column, in stored order: the class, the ten labels of each end (in
/// `EndLabels::columns` order), the Service dialled, then (schema version 5) whether it
/// is headless, whether it asks for close backends and whether a Ready backend was in
/// the initiator's zone.
pub(crate) const LABELS: [LabelColumn; 26] = [
    LabelColumn {
        name: "class",
        get: |l| l.class.as_str(),
        set: |l, v| Class::parse(v).map(|c| l.class = c).is_some(),
    },
    kind!(local),
    text!(local.namespace),
    text!(local.name),
    text!(local.workload_kind),
    text!(local.workload),
    text!(local.app),
    text!(local.node),
    text!(local.zone),
    text!(local.region),
    text!(local.cloud),
    kind!(remote),
    text!(remote.namespace),
    text!(remote.name),
    text!(remote.workload_kind),
    text!(remote.workload),
    text!(remote.app),
    text!(remote.node),
    text!(remote.zone),
    text!(remote.region),
    text!(remote.cloud),
    text!(service_namespace),
    text!(service_name),
    flag!("service_headless", service_headless_str, |l, v| l
        .service_headless =
        v == Some(true)),
    flag!(
        "service_prefers_close",
        service_prefers_close_str,
        |l, v| l.service_prefers_close = v == Some(true)
    ),
    flag!("service_zone_local", service_zone_local_str, |l, v| l
        .service_zone_local =
        v),
];

/// The label columns schema version 5 added (at the end of [`LABELS`]).
#[cfg(test)]
pub(crate) const SERVICE_ZONE_COLUMNS: [&str; 3] = [
    "service_headless",
    "service_prefers_close",
    "service_zone_local",
];

/// The label columns' values for `l`, in [`LABELS`] order.
pub(crate) fn values(l: &FlowLabels) -> [&str; LABELS.len()] {
    LABELS.map(|c| (c.get)(l))
}

/// Labels from the label columns' stored values, in [`LABELS`] order (`remote_observed`
/// is not among them: false). `Err` names the first column whose value it cannot hold,
/// with the value.
pub(crate) fn from_values<S: AsRef<str>>(
    values: impl IntoIterator<Item = S>,
) -> Result<FlowLabels, (&'static str, String)> {
    let mut l = FlowLabels::default();
    for (c, v) in LABELS.iter().zip(values) {
        let v = v.as_ref();
        if !(c.set)(&mut l, v) {
            return Err((c.name, v.to_string()));
        }
    }
    Ok(l)
}

/// The place kinds podflow writes, as static strings (anything else reads as `unknown`).
pub(crate) fn kind_static(s: &str) -> &'static str {
    match s {
        "pod" => "pod",
        "node" => "node",
        "service" => "service",
        "known_network" => "known_network",
        "cloud_range" => "cloud_range",
        "internet" => "internet",
        _ => "unknown",
    }
}

#[cfg(test)]
mod tests {
    use podflow_model::EndLabels;

    use super::*;

    fn labels() -> FlowLabels {
        let end = |p: &str, kind| {
            let v = |f: &str| format!("{p}-{f}").into();
            EndLabels {
                kind,
                namespace: v("namespace"),
                name: v("name"),
                workload_kind: v("workload_kind"),
                workload: v("workload"),
                app: v("app"),
                node: v("node"),
                zone: v("zone"),
                region: v("region"),
                cloud: v("cloud"),
            }
        };
        FlowLabels {
            class: Class::InterRegion,
            local: end("local", "pod"),
            remote: end("remote", "cloud_range"),
            service_namespace: "service-namespace".into(),
            service_name: "service-name".into(),
            service_headless: true,
            service_prefers_close: false,
            service_zone_local: Some(true),
            remote_observed: false,
        }
    }

    #[test]
    fn each_column_reads_its_own_field_in_stored_order() {
        let l = labels();
        let v = values(&l);
        let mut want = vec!["INTER_REGION"];
        want.extend(l.local.columns());
        want.extend(l.remote.columns());
        want.extend(["service-namespace", "service-name", "yes", "no", "yes"]);
        assert_eq!(v.to_vec(), want);
        assert_eq!(
            LABELS[LABELS.len() - 3..]
                .iter()
                .map(|c| c.name)
                .collect::<Vec<_>>(),
            SERVICE_ZONE_COLUMNS
        );
        // Every text column holds its own name's field.
        for (c, v) in LABELS.iter().zip(v) {
            let kind = c.name.ends_with("_kind") && !c.name.ends_with("_workload_kind");
            if c.name != "class" && !kind && !SERVICE_ZONE_COLUMNS.contains(&c.name) {
                assert_eq!(v.replace('-', "_"), c.name);
            }
        }
    }

    #[test]
    fn values_read_back_to_the_same_labels() {
        let l = labels();
        assert_eq!(from_values(values(&l)), Ok(l));
    }

    #[test]
    fn service_flags_read_back_and_are_empty_without_a_service() {
        let mut l = labels();
        for zone_local in [Some(true), Some(false), None] {
            l.service_zone_local = zone_local;
            l.service_prefers_close = zone_local == Some(false);
            assert_eq!(from_values(values(&l)), Ok(l.clone()));
        }
        let none = FlowLabels {
            service_headless: true,
            service_zone_local: Some(true),
            ..FlowLabels::default()
        };
        assert_eq!(values(&none)[LABELS.len() - 3..], ["", "", ""]);
        let mut v = values(&labels()).map(String::from);
        v[LABELS.len() - 1] = "maybe".into();
        assert_eq!(
            from_values(&v),
            Err(("service_zone_local", "maybe".to_string()))
        );
    }

    #[test]
    fn an_unknown_class_is_refused_and_an_unknown_kind_reads_as_unknown() {
        let mut v = values(&labels()).map(String::from);
        v[1] = "spaceship".into();
        assert_eq!(from_values(&v).map(|l| l.local.kind), Ok("unknown"));
        v[0] = "WARP".into();
        assert_eq!(from_values(&v), Err(("class", "WARP".to_string())));
    }
}
