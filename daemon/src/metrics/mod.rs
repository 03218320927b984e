//! `--metrics HOST:PORT`: Prometheus text exposition (format 0.0.4) of a
//! process's counters at `GET /metrics`.
//!
//! Nothing here sits on a request's path. The counters are the components'
//! own relaxed atomics (xfuse's [`xfuse::Stats`], the ring queues, the
//! adaptive cache, [`crate::rpc::server::ServerStats`], the process-wide
//! [`counters`]); at scrape time each registered [`Collect`] reads them
//! into [`Families`], and the `prometheus` crate's text encoder writes
//! them out. The HTTP side ([`http`]) is a small bounded std-only server.
//!
//! Names follow Prometheus conventions: prefix `xfuse_`, counters end in
//! `_total`, durations are histograms in `_seconds`, sizes in `_bytes`.

pub mod counters;
pub mod http;
pub mod sources;

use std::net::{SocketAddr, TcpListener, ToSocketAddrs};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use clap::Args;
use prometheus::proto::{Bucket, Counter, Gauge, Histogram, LabelPair, Metric, MetricFamily, MetricType};
use xfuse::dispatch::LATENCY_BUCKETS_NS;

/// The `--metrics` option every long-running subcommand flattens.
#[derive(Debug, Clone, Default, Args)]
pub struct MetricsArgs {
    /// Serve Prometheus metrics at http://HOST:PORT/metrics (e.g.
    /// 127.0.0.1:9464; port 0 picks a free one, logged at start). Anyone who
    /// can reach the address can read the counters: bind it to a trusted
    /// interface.
    #[arg(long, value_name = "HOST:PORT")]
    pub metrics: Option<String>,
}

/// A histogram of durations with xfuse's fixed bounds
/// ([`xfuse::dispatch::LATENCY_BUCKETS_NS`]), as relaxed atomics: one
/// search and two increments per observation.
#[derive(Debug)]
pub struct DurationHistogram {
    /// Per bound, then one for slower than every bound; not cumulative.
    buckets: [AtomicU64; LATENCY_BUCKETS_NS.len() + 1],
    sum_ns: AtomicU64,
}

impl Default for DurationHistogram {
    fn default() -> Self {
        DurationHistogram {
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
            sum_ns: AtomicU64::new(0),
        }
    }
}

impl DurationHistogram {
    /// Counts one observation of `took`.
    pub fn observe(&self, took: Duration) {
        let ns = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
        let at = LATENCY_BUCKETS_NS.partition_point(|&bound| bound < ns);
        self.buckets[at].fetch_add(1, Ordering::Relaxed);
        self.sum_ns.fetch_add(ns, Ordering::Relaxed);
    }

    /// Observations in all.
    pub fn count(&self) -> u64 {
        self.buckets.iter().map(|b| b.load(Ordering::Relaxed)).sum()
    }

    /// Adds this histogram as one series of `name`.
    pub fn collect(&self, out: &mut Families, name: &str, help: &str, labels: Labels<'_>) {
        let mut cumulative = [0u64; LATENCY_BUCKETS_NS.len()];
        let mut running = 0u64;
        for (i, b) in self.buckets.iter().enumerate() {
            running = running.saturating_add(b.load(Ordering::Relaxed));
            if let Some(c) = cumulative.get_mut(i) {
                *c = running;
            }
        }
        out.histogram_ns(
            name,
            help,
            labels,
            &LATENCY_BUCKETS_NS,
            &cumulative,
            running,
            self.sum_ns.load(Ordering::Relaxed),
        );
    }
}

/// What adds metric families to a scrape.
pub trait Collect: Send + Sync {
    /// Reads this source's counters into `out`.
    fn collect(&self, out: &mut Families);
}

/// The metric families of one scrape, in the order first named.
#[derive(Debug, Default)]
pub struct Families {
    families: Vec<MetricFamily>,
}

/// Labels of one series: (name, value) pairs.
pub type Labels<'a> = &'a [(&'a str, &'a str)];

impl Families {
    fn family(&mut self, name: &str, help: &str, kind: MetricType) -> &mut MetricFamily {
        let at = match self.families.iter().position(|f| f.name() == name) {
            Some(at) => at,
            None => {
                let mut f = MetricFamily::default();
                f.set_name(name.to_string());
                f.set_help(help.to_string());
                f.set_field_type(kind);
                self.families.push(f);
                self.families.len() - 1
            }
        };
        &mut self.families[at]
    }

    fn labelled(labels: Labels<'_>) -> Metric {
        Metric::from_label(
            labels
                .iter()
                .map(|(k, v)| {
                    let mut pair = LabelPair::default();
                    pair.set_name((*k).to_string());
                    pair.set_value((*v).to_string());
                    pair
                })
                .collect(),
        )
    }

    /// One series of counter `name` (which ends in `_total`).
    pub fn counter(&mut self, name: &str, help: &str, labels: Labels<'_>, value: u64) {
        debug_assert!(name.ends_with("_total"), "{name}: counters end in _total");
        let mut m = Self::labelled(labels);
        let mut c = Counter::default();
        c.set_value(value as f64);
        m.set_counter(c);
        self.family(name, help, MetricType::COUNTER).mut_metric().push(m);
    }

    /// One series of gauge `name`.
    pub fn gauge(&mut self, name: &str, help: &str, labels: Labels<'_>, value: f64) {
        let mut m = Self::labelled(labels);
        let mut g = Gauge::default();
        g.set_value(value);
        m.set_gauge(g);
        self.family(name, help, MetricType::GAUGE).mut_metric().push(m);
    }

    /// One series of histogram `name` (in seconds): `cumulative[i]`
    /// observations at most `bounds_ns[i]` nanoseconds, `count` in all
    /// (the `+Inf` bucket), `sum_ns` their total.
    #[allow(clippy::too_many_arguments)]
    pub fn histogram_ns(
        &mut self,
        name: &str,
        help: &str,
        labels: Labels<'_>,
        bounds_ns: &[u64],
        cumulative: &[u64],
        count: u64,
        sum_ns: u64,
    ) {
        debug_assert!(name.ends_with("_seconds"), "{name}: durations are in seconds");
        let mut m = Self::labelled(labels);
        let mut h = Histogram::default();
        h.set_sample_count(count);
        h.set_sample_sum(sum_ns as f64 / 1e9);
        h.set_bucket(
            bounds_ns
                .iter()
                .zip(cumulative)
                .map(|(&bound, &n)| {
                    let mut b = Bucket::default();
                    b.set_upper_bound(bound as f64 / 1e9);
                    b.set_cumulative_count(n);
                    b
                })
                .collect(),
        );
        m.set_histogram(h);
        self.family(name, help, MetricType::HISTOGRAM)
            .mut_metric()
            .push(m);
    }

    /// The text exposition of these families (empty ones left out: the
    /// format has no way to say "no series yet").
    pub fn encode(mut self) -> String {
        self.families.retain(|f| !f.get_metric().is_empty());
        prometheus::TextEncoder::new()
            .encode_to_string(&self.families)
            .unwrap_or_else(|e| {
                // Only names and labels we chose can fail; say which.
                tracing::error!("metrics: encoding failed: {e}");
                String::new()
            })
    }
}

/// The collectors of one process, read at every scrape.
#[derive(Default)]
pub struct Registry {
    collectors: Mutex<Vec<Arc<dyn Collect>>>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry").finish_non_exhaustive()
    }
}

impl Registry {
    /// Adds a collector; scrapes from now on read it.
    pub fn add(&self, collector: Arc<dyn Collect>) {
        self.collectors
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(collector);
    }

    /// One scrape: every collector, then the exposition.
    pub fn render(&self) -> String {
        let collectors = self.collectors.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let mut out = Families::default();
        for c in collectors {
            c.collect(&mut out);
        }
        out.encode()
    }
}

/// A running metrics endpoint: its collectors and the address it serves.
#[derive(Debug, Clone)]
pub struct Endpoint {
    /// Where it listens.
    pub addr: SocketAddr,
    /// What it exposes; add collectors as the things they read come to be.
    pub registry: Arc<Registry>,
}

impl Endpoint {
    /// With `--metrics`, binds its address (failing with a clear error if it
    /// cannot), logs it once, and serves `/metrics` on a thread of its own;
    /// the process-wide [`counters`] are registered already. Without it,
    /// `None`.
    pub fn start(args: &MetricsArgs) -> anyhow::Result<Option<Endpoint>> {
        match Bound::bind(args)? {
            Some(bound) => bound.serve().map(Some),
            None => Ok(None),
        }
    }

    /// Adds a collector (see [`Registry::add`]).
    pub fn add(&self, collector: Arc<dyn Collect>) {
        self.registry.add(collector);
    }
}

/// A metrics address bound but not served yet: [`Endpoint::start`] in two
/// steps, for a process that must stay single-threaded in between (to fork
/// into a sandbox) or whose network namespace changes (the socket stays in
/// the one it was made in).
#[derive(Debug)]
pub struct Bound {
    listener: TcpListener,
}

impl Bound {
    /// With `--metrics`, binds its address (failing with a clear error if
    /// it cannot); without it, `None`. Starts no thread.
    pub fn bind(args: &MetricsArgs) -> anyhow::Result<Option<Bound>> {
        let Some(spec) = &args.metrics else {
            return Ok(None);
        };
        let addr = spec
            .to_socket_addrs()
            .with_context(|| format!("--metrics {spec:?}: expected HOST:PORT, e.g. 127.0.0.1:9464"))?
            .next()
            .with_context(|| format!("--metrics {spec:?}: the name resolves to no address"))?;
        let listener =
            TcpListener::bind(addr).with_context(|| format!("--metrics {spec}: cannot listen on {addr}"))?;
        Ok(Some(Bound { listener }))
    }

    /// Serves `/metrics` on a thread of its own and logs the address once;
    /// the process-wide [`counters`] are registered already.
    pub fn serve(self) -> anyhow::Result<Endpoint> {
        let listener = self.listener;
        let addr = listener
            .local_addr()
            .context("--metrics: reading the bound address")?;
        let registry = Arc::new(Registry::default());
        registry.add(Arc::new(counters::Process));
        let render = {
            let registry = registry.clone();
            Arc::new(move || registry.render())
        };
        std::thread::Builder::new()
            .name("metrics".into())
            .spawn(move || http::serve(listener, render, http::Limits::default()))
            .context("--metrics: starting the server thread")?;
        tracing::info!("metrics at http://{addr}/metrics");
        Ok(Endpoint { addr, registry })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_encode_as_text_exposition_with_types_and_help() {
        let mut f = Families::default();
        f.counter("xfuse_x_total", "Xs.", &[("opcode", "LOOKUP")], 3);
        f.counter("xfuse_x_total", "Xs.", &[("opcode", "GETATTR")], 4);
        f.gauge("xfuse_y", "Y now.", &[], 2.0);
        f.histogram_ns(
            "xfuse_z_seconds",
            "Zs.",
            &[("opcode", "READ")],
            &[1_000, 1_000_000],
            &[1, 2],
            3,
            2_000_000_000,
        );
        let text = f.encode();
        assert!(text.contains("# TYPE xfuse_x_total counter\n"), "{text}");
        assert!(text.contains("xfuse_x_total{opcode=\"LOOKUP\"} 3\n"), "{text}");
        assert!(text.contains("xfuse_x_total{opcode=\"GETATTR\"} 4\n"), "{text}");
        assert_eq!(text.matches("# TYPE xfuse_x_total").count(), 1, "{text}");
        assert!(text.contains("xfuse_y 2\n"), "{text}");
        assert!(
            text.contains("xfuse_z_seconds_bucket{opcode=\"READ\",le=\"0.000001\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("xfuse_z_seconds_bucket{opcode=\"READ\",le=\"+Inf\"} 3\n"),
            "{text}"
        );
        assert!(
            text.contains("xfuse_z_seconds_sum{opcode=\"READ\"} 2\n"),
            "{text}"
        );
    }

    #[test]
    fn the_dashboard_uses_a_datasource_variable_and_only_metrics_emitted_here() {
        let dash: serde_json::Value =
            serde_json::from_str(include_str!("../../../dist/grafana/xfuse.json")).expect("valid JSON");
        let vars = dash["templating"]["list"]
            .as_array()
            .expect("templating variables");
        assert!(
            vars.iter().any(|v| v["name"] == "datasource"
                && v["type"] == "datasource"
                && v["query"] == "prometheus"),
            "a Prometheus data source variable"
        );
        // Every family is named as a string literal where it is emitted.
        let emitted = [include_str!("sources.rs"), include_str!("counters.rs")].concat();
        let mut seen = 0;
        for panel in dash["panels"].as_array().expect("panels") {
            for target in panel["targets"].as_array().into_iter().flatten() {
                assert_eq!(target["datasource"]["uid"], "${datasource}", "{target}");
                let expr = target["expr"].as_str().expect("an expression");
                for word in expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
                    if !word.starts_with("xfuse_") {
                        continue;
                    }
                    let family = ["_bucket", "_sum", "_count"]
                        .iter()
                        .find_map(|s| word.strip_suffix(s).filter(|f| f.ends_with("_seconds")))
                        .unwrap_or(word);
                    assert!(
                        emitted.contains(&format!("\"{family}\"")),
                        "the dashboard's {word} is no metric emitted here"
                    );
                    seen += 1;
                }
            }
        }
        assert!(seen >= 20, "{seen} metric names in the dashboard");
    }

    #[test]
    fn an_address_in_use_is_refused_with_the_flag_in_the_error() {
        let taken = TcpListener::bind("127.0.0.1:0").unwrap();
        let args = MetricsArgs {
            metrics: Some(taken.local_addr().unwrap().to_string()),
        };
        let e = Endpoint::start(&args).unwrap_err();
        assert!(format!("{e:#}").contains("--metrics"), "{e:#}");
        let bad = MetricsArgs {
            metrics: Some("nonsense".into()),
        };
        assert!(Endpoint::start(&bad).is_err());
        assert!(Endpoint::start(&MetricsArgs::default()).unwrap().is_none());
    }
}
