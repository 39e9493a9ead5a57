//! Prometheus metrics: the counters that the signaling and TURN code bump as things happen
//! (`Counter`, `ByLabel`), the `Family` values they and the live gauges are read into at
//! scrape time, and `encode`, which writes those as OpenMetrics text for `/metrics`.
//! Modules call this one; it calls none of them.
//!
//! Labels are closed enums (see `counters`): no user name, room name or address is ever a label.

mod counters;
pub mod process;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, MetricEncoder};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;

pub use counters::{ByLabel, ByName, Counter, Label, PerThread};

/// One metric family as read at scrape time.
#[derive(Debug)]
pub struct Family {
    pub name: &'static str,
    pub help: &'static str,
    pub kind: Kind,
    pub samples: Vec<(Vec<(&'static str, &'static str)>, Value)>,
}

/// A sample: counts stay integers in the text, times and sizes may be fractional.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Value {
    Int(u64),
    Float(f64),
}

impl From<u64> for Value {
    fn from(v: u64) -> Self {
        Value::Int(v)
    }
}

impl From<usize> for Value {
    fn from(v: usize) -> Self {
        Value::Int(v as u64)
    }
}

impl From<f64> for Value {
    fn from(v: f64) -> Self {
        Value::Float(v)
    }
}

#[derive(Debug, Clone, Copy)]
pub enum Kind {
    Counter,
    Gauge,
}

impl Family {
    pub fn counter(name: &'static str, help: &'static str) -> Family {
        Family {
            name,
            help,
            kind: Kind::Counter,
            samples: Vec::new(),
        }
    }

    pub fn gauge(name: &'static str, help: &'static str) -> Family {
        Family {
            name,
            help,
            kind: Kind::Gauge,
            samples: Vec::new(),
        }
    }

    /// Adds an unlabelled sample.
    pub fn value(mut self, v: impl Into<Value>) -> Family {
        self.samples.push((Vec::new(), v.into()));
        self
    }

    /// Adds a sample per label of `counter`, under label key `key`.
    pub fn by<L: Label>(mut self, key: &'static str, counter: &ByLabel<L>) -> Family {
        for (label, n) in counter.iter() {
            self.samples
                .push((vec![(key, label.as_str())], Value::Int(n)));
        }
        self
    }

    /// Adds one sample with the given labels.
    pub fn labelled(
        mut self,
        labels: Vec<(&'static str, &'static str)>,
        v: impl Into<Value>,
    ) -> Family {
        self.samples.push((labels, v.into()));
        self
    }
}

#[derive(Debug)]
struct Snapshot(Vec<Family>);

impl Collector for Snapshot {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        for family in &self.0 {
            let kind = match family.kind {
                Kind::Counter => MetricType::Counter,
                Kind::Gauge => MetricType::Gauge,
            };
            let mut metric = encoder.encode_descriptor(family.name, family.help, None, kind)?;
            match family.samples.as_slice() {
                // An unlabelled family has one sample, written without `{}`.
                [(labels, value)] if labels.is_empty() => sample(family.kind, *value, metric)?,
                samples => {
                    for (labels, value) in samples {
                        sample(family.kind, *value, metric.encode_family(labels)?)?;
                    }
                }
            }
        }
        Ok(())
    }
}

fn sample(kind: Kind, value: Value, to: MetricEncoder) -> Result<(), std::fmt::Error> {
    match (kind, value) {
        (Kind::Counter, Value::Int(v)) => ConstCounter::new(v).encode(to),
        (Kind::Counter, Value::Float(v)) => ConstCounter::new(v).encode(to),
        (Kind::Gauge, Value::Int(v)) => {
            ConstGauge::new(i64::try_from(v).unwrap_or(i64::MAX)).encode(to)
        }
        (Kind::Gauge, Value::Float(v)) => ConstGauge::new(v).encode(to),
    }
}

/// The OpenMetrics text of `families`: names are prefixed with `switchboard_`, except the
/// standard `process_*` ones, which dashboards expect as they are.
pub fn encode(families: Vec<Family>) -> String {
    let (process, ours): (Vec<_>, Vec<_>) = families
        .into_iter()
        .partition(|f| f.name.starts_with("process_"));
    let mut registry = Registry::default();
    registry.register_collector(Box::new(Snapshot(process)));
    registry
        .sub_registry_with_prefix("switchboard")
        .register_collector(Box::new(Snapshot(ours)));
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, &registry)
        .expect("writing to a String cannot fail");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    crate::labels! {
        Dialect {
            Native => "native",
            SocketIo => "socketio",
        }
    }

    #[test]
    fn families_encode_as_openmetrics_text() {
        let c = ByLabel::<Dialect>::default();
        c.inc(Dialect::SocketIo);
        let text = encode(vec![
            Family::counter("joins", "Joins.").by("dialect", &c),
            Family::gauge("rooms", "Rooms.").value(3usize),
        ]);
        assert!(text.contains("# TYPE switchboard_joins counter"), "{text}");
        assert!(
            text.contains("switchboard_joins_total{dialect=\"socketio\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("switchboard_joins_total{dialect=\"native\"} 0"),
            "{text}"
        );
        assert!(text.contains("switchboard_rooms 3"), "{text}");
        assert!(text.ends_with("# EOF\n"), "{text}");
    }
}
