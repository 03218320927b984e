//! Process-wide counters of the service clients and the metadata engine:
//! calls, retries and failures per service called, transaction conflicts.
//!
//! Process-wide because that is what they count: every client of a service
//! in this process (a mount's metadata client, its storage client, a
//! storage service's table client) adds to the same series, whichever
//! object made the call, and threading a handle through every constructor
//! would buy nothing a scrape could tell apart. Relaxed atomics: one
//! increment per call, never on a FUSE request's path unless that request
//! calls a service anyway.

use std::sync::atomic::{AtomicU64, Ordering};

use super::{Collect, Families};

/// A service a client calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Service {
    /// `xfused meta`'s namespace calls.
    Meta,
    /// `xfused meta`'s cluster calls (chain table, layouts, heartbeats).
    Cluster,
    /// `xfused storage`'s targets.
    Storage,
}

impl Service {
    const ALL: [Service; 3] = [Service::Meta, Service::Cluster, Service::Storage];

    /// The `service` label.
    pub fn name(self) -> &'static str {
        match self {
            Service::Meta => "meta",
            Service::Cluster => "cluster",
            Service::Storage => "storage",
        }
    }
}

/// Calls, retries and failures of one service's clients.
#[derive(Debug)]
struct ClientCounters {
    calls: AtomicU64,
    retries: AtomicU64,
    failures: AtomicU64,
}

impl ClientCounters {
    const fn new() -> ClientCounters {
        ClientCounters {
            calls: AtomicU64::new(0),
            retries: AtomicU64::new(0),
            failures: AtomicU64::new(0),
        }
    }
}

static CLIENTS: [ClientCounters; 3] = [
    ClientCounters::new(),
    ClientCounters::new(),
    ClientCounters::new(),
];
static KV_CONFLICTS: AtomicU64 = AtomicU64::new(0);
static KV_GAVE_UP: AtomicU64 = AtomicU64::new(0);

fn of(service: Service) -> &'static ClientCounters {
    &CLIENTS[service as usize]
}

/// A call to `service` begins (however many times it is then sent).
pub fn call(service: Service) {
    of(service).calls.fetch_add(1, Ordering::Relaxed);
}

/// A call to `service` is sent again.
pub fn retry(service: Service) {
    of(service).retries.fetch_add(1, Ordering::Relaxed);
}

/// A call to `service` failed for good: the service could not be reached
/// or did not answer (an errno the service answered is an answer).
pub fn failure(service: Service) {
    of(service).failures.fetch_add(1, Ordering::Relaxed);
}

/// A metadata transaction conflicted with another (and is run again unless
/// it has had its attempts).
pub fn kv_conflict() {
    KV_CONFLICTS.fetch_add(1, Ordering::Relaxed);
}

/// A metadata transaction gave up after conflicting on every attempt.
pub fn kv_gave_up() {
    KV_GAVE_UP.fetch_add(1, Ordering::Relaxed);
}

/// Calls to `service` so far (for tests).
pub fn calls(service: Service) -> u64 {
    of(service).calls.load(Ordering::Relaxed)
}

/// The collector of these counters, registered by every endpoint.
#[derive(Debug)]
pub struct Process;

impl Collect for Process {
    fn collect(&self, out: &mut Families) {
        for s in Service::ALL {
            let c = of(s);
            let labels = [("service", s.name())];
            out.counter(
                "xfuse_rpc_client_calls_total",
                "Calls this process made to a service (each counted once, however often sent).",
                &labels,
                c.calls.load(Ordering::Relaxed),
            );
            out.counter(
                "xfuse_rpc_client_retries_total",
                "Calls sent again: not sent, reply lost, or the service asked to retry.",
                &labels,
                c.retries.load(Ordering::Relaxed),
            );
            out.counter(
                "xfuse_rpc_client_failures_total",
                "Calls that failed for good: the service unreachable or silent.",
                &labels,
                c.failures.load(Ordering::Relaxed),
            );
        }
        out.counter(
            "xfuse_kv_conflicts_total",
            "Metadata transactions that conflicted with another at commit (then run again).",
            &[],
            KV_CONFLICTS.load(Ordering::Relaxed),
        );
        out.counter(
            "xfuse_kv_conflicts_gave_up_total",
            "Metadata transactions that conflicted on every attempt and failed.",
            &[],
            KV_GAVE_UP.load(Ordering::Relaxed),
        );
    }
}
