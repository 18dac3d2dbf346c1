//! Metric definitions and the Prometheus text exposition format (0.0.4): what every
//! part that renders `/metrics` shares.

use std::borrow::Cow;
use std::fmt::Write as _;

/// A metric's definition: name (with `_total` for counters), type, help, labels.
#[derive(Debug, Clone, Copy)]
pub struct MetricDef {
    /// Full name.
    pub name: &'static str,
    /// `counter`, `gauge` or `histogram`.
    pub kind: &'static str,
    /// One-line help.
    pub help: &'static str,
    /// Label names.
    pub labels: &'static [&'static str],
}

/// Writes the `# HELP` and `# TYPE` lines of `d`.
pub fn header(out: &mut String, d: &MetricDef) {
    let _ = writeln!(out, "# HELP {} {}", d.name, d.help);
    let _ = writeln!(out, "# TYPE {} {}", d.name, d.kind);
}

/// Writes one sample of `d` with `labels` (values escaped).
pub fn sample(out: &mut String, d: &MetricDef, labels: &[(&str, &str)], v: impl std::fmt::Display) {
    out.push_str(d.name);
    if !labels.is_empty() {
        out.push('{');
        for (i, (k, val)) in labels.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            let _ = write!(out, "{k}=\"{}\"", escape(val));
        }
        out.push('}');
    }
    let _ = writeln!(out, " {v}");
}

/// A family of one unlabelled sample.
pub fn one(out: &mut String, d: &MetricDef, v: impl std::fmt::Display) {
    header(out, d);
    sample(out, d, &[], v);
}

/// Escapes a label value (backslash, quote, newline).
pub fn escape(s: &str) -> Cow<'_, str> {
    if s.contains(['\\', '"', '\n']) {
        s.replace('\\', "\\\\")
            .replace('"', "\\\"")
            .replace('\n', "\\n")
            .into()
    } else {
        s.into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_escaped() {
        const D: MetricDef = MetricDef {
            name: "x_total",
            kind: "counter",
            help: "h",
            labels: &["a"],
        };
        let mut out = String::new();
        one(&mut out, &D, 3);
        sample(&mut out, &D, &[("a", "q\"\\\n")], 1);
        assert_eq!(
            out,
            "# HELP x_total h\n# TYPE x_total counter\nx_total 3\nx_total{a=\"q\\\"\\\\\\n\"} 1\n"
        );
    }
}
