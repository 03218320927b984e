//! The collectors of each kind of process: a mount's dispatcher and
//! transport, a virtio-fs backend, a service's RPC server, a storage
//! service's targets and chain table, a client's file data to and from
//! storage services.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use fuse_backend_rs::api::filesystem::FileSystem;
use xfuse::dispatch::LATENCY_BUCKETS_NS;
use xfuse::transport::uring::QueueCounters;
use xfuse::transport::virtio::VirtioFsBackend;
use xfuse::Dispatcher;

use super::{Collect, Families};
use crate::cluster::MemberState;
use crate::rpc::server::{Handler, Server};
use crate::storage::service::StorageService;
use crate::storage::transport::ServiceTransport;

/// A dispatcher's counters, with `transport` as a label on every series.
fn dispatcher_families<F: FileSystem + Sync>(out: &mut Families, d: &Dispatcher<F>, transport: &str) {
    let stats = d.stats();
    for (op, requests, errors) in stats.snapshot() {
        let labels = [("transport", transport), ("opcode", op.name())];
        out.counter(
            "xfuse_requests_total",
            "FUSE requests received, by opcode.",
            &labels,
            requests,
        );
        out.counter(
            "xfuse_request_errors_total",
            "FUSE requests answered with an error, by opcode.",
            &labels,
            errors,
        );
    }
    for l in stats.latency() {
        out.histogram_ns(
            "xfuse_request_duration_seconds",
            "Time a FUSE request spent in the dispatcher, from parsed request to reply body.",
            &[("transport", transport), ("opcode", l.opcode.name())],
            &LATENCY_BUCKETS_NS,
            &l.cumulative,
            l.count,
            l.sum_ns,
        );
    }
    let labels = [("transport", transport)];
    if let Some(n) = stats.in_flight() {
        out.gauge(
            "xfuse_requests_in_flight",
            "FUSE requests being handled now.",
            &labels,
            n as f64,
        );
    }
    out.counter(
        "xfuse_requests_unknown_total",
        "FUSE requests with an opcode the protocol does not define (answered ENOSYS).",
        &labels,
        stats.unknown(),
    );
    out.counter(
        "xfuse_requests_malformed_total",
        "FUSE requests that failed to parse.",
        &labels,
        stats.malformed(),
    );
    out.counter(
        "xfuse_forgotten_inodes_total",
        "Inodes the kernel forgot (FORGET, and each entry of a BATCH_FORGET).",
        &labels,
        stats.forgotten_inodes(),
    );
    out.counter(
        "xfuse_passthrough_opens_total",
        "Files opened in FUSE passthrough mode.",
        &labels,
        d.passthrough_opens(),
    );
    if let Some(ttl) = d.adaptive_ttl() {
        let s = ttl.stats();
        out.gauge(
            "xfuse_adaptive_long_inodes",
            "Inodes in the adaptive cache's long set now (given the long timeout).",
            &[],
            s.long_inodes as f64,
        );
        for (why, n) in [
            ("promoted", s.promoted),
            ("demoted_by_change", s.demoted_by_change),
            ("demoted_idle", s.demoted_idle),
        ] {
            out.counter(
                "xfuse_adaptive_transitions_total",
                "Inodes moved into (promoted) or out of the adaptive cache's long set.",
                &[("transition", why)],
                n,
            );
        }
        out.counter(
            "xfuse_adaptive_upcalls_total",
            "LOOKUP and GETATTR upcalls of this mount the adaptive policy counted (from BPF).",
            &[],
            s.upcalls,
        );
        out.counter(
            "xfuse_adaptive_invalidations_total",
            "Cache invalidations the adaptive policy sent the kernel.",
            &[],
            s.invalidations,
        );
        out.counter(
            "xfuse_adaptive_invalidation_errors_total",
            "Invalidations the kernel refused (other than not cached).",
            &[],
            s.invalidation_errors,
        );
    }
}

/// A mount's dispatcher and its transport's queues.
pub struct Mount<F> {
    dispatcher: Arc<Dispatcher<F>>,
    queues: Option<Arc<QueueCounters>>,
    transport: &'static str,
    workers: usize,
}

impl<F> Mount<F> {
    /// The counters of a mount served by `workers` threads on `transport`
    /// (`queues`: the ring queues, for uring).
    pub fn new(
        dispatcher: Arc<Dispatcher<F>>,
        queues: Option<Arc<QueueCounters>>,
        transport: &'static str,
        workers: usize,
    ) -> Mount<F> {
        Mount {
            dispatcher,
            queues,
            transport,
            workers,
        }
    }
}

impl<F: FileSystem + Send + Sync> Collect for Mount<F> {
    fn collect(&self, out: &mut Families) {
        dispatcher_families(out, &self.dispatcher, self.transport);
        out.gauge(
            "xfuse_transport_workers",
            "Worker threads configured for the FUSE connection (--threads; uring uses at most one per ring queue).",
            &[("transport", self.transport)],
            self.workers as f64,
        );
        if let Some(queues) = &self.queues {
            for (qid, n) in queues.snapshot().iter().enumerate() {
                out.counter(
                    "xfuse_ring_queue_requests_total",
                    "FUSE requests served by each io_uring queue (one queue per CPU).",
                    &[("transport", self.transport), ("queue", &qid.to_string())],
                    *n,
                );
            }
            out.gauge(
                "xfuse_ring_queue_depth_entries",
                "Ring entries per io_uring queue: requests one queue holds at once.",
                &[("transport", self.transport)],
                queues.entries_per_queue() as f64,
            );
        }
    }
}

/// A virtio-fs backend: its chains and the current guest's dispatcher.
pub struct Virtio<F> {
    backend: VirtioFsBackend<F>,
}

impl<F> Virtio<F> {
    /// The counters of `backend`.
    pub fn new(backend: VirtioFsBackend<F>) -> Virtio<F> {
        Virtio { backend }
    }
}

impl<F: FileSystem + Send + Sync + 'static> Collect for Virtio<F> {
    fn collect(&self, out: &mut Families) {
        if let Some(d) = self.backend.dispatcher() {
            dispatcher_families(out, &d, "virtio");
        }
        let c = self.backend.counters();
        for (name, help, n) in [
            (
                "xfuse_virtio_chains_total",
                "Virtqueue descriptor chains completed.",
                &c.chains,
            ),
            (
                "xfuse_virtio_chains_refused_total",
                "Virtqueue descriptor chains refused as malformed.",
                &c.bad_chains,
            ),
            (
                "xfuse_virtio_connections_total",
                "VMM (vhost-user) connections served.",
                &c.connections,
            ),
        ] {
            out.counter(name, help, &[], n.load(Ordering::Relaxed));
        }
    }
}

/// A service's RPC server.
pub struct RpcServer<H: Handler> {
    server: Arc<Server<H>>,
    service: &'static str,
}

impl<H: Handler> RpcServer<H> {
    /// The counters of `server`, serving `service` (the `service` label).
    pub fn new(server: Arc<Server<H>>, service: &'static str) -> RpcServer<H> {
        RpcServer { server, service }
    }
}

impl<H: Handler> Collect for RpcServer<H> {
    fn collect(&self, out: &mut Families) {
        let s = &self.server.stats;
        let labels = [("service", self.service)];
        out.counter(
            "xfuse_rpc_server_requests_total",
            "Requests this service answered.",
            &labels,
            s.requests.load(Ordering::Relaxed),
        );
        out.counter(
            "xfuse_rpc_server_errors_total",
            "Requests this service answered with an errno.",
            &labels,
            s.errors.load(Ordering::Relaxed),
        );
        s.duration.collect(
            out,
            "xfuse_rpc_server_request_duration_seconds",
            "Time from a request read to its reply encoded.",
            &labels,
        );
        out.counter(
            "xfuse_rpc_server_connections_accepted_total",
            "Connections authenticated.",
            &labels,
            s.accepted.load(Ordering::Relaxed),
        );
        out.counter(
            "xfuse_rpc_server_connections_refused_total",
            "Connections refused or dropped before or at authentication.",
            &labels,
            s.refused.load(Ordering::Relaxed),
        );
        out.gauge(
            "xfuse_rpc_server_connections",
            "Connections open now.",
            &labels,
            s.open.load(Ordering::Relaxed) as f64,
        );
        out.gauge(
            "xfuse_rpc_server_held_bytes",
            "Bytes of large frames and read replies held now (bounded by --held-max-mib where the service has it).",
            &labels,
            self.server.held_bytes() as f64,
        );
        out.counter(
            "xfuse_rpc_server_held_waits_total",
            "Times a connection waited unread because the service held its most bytes.",
            &labels,
            s.held_waits.load(Ordering::Relaxed),
        );
        out.counter(
            "xfuse_rpc_server_rdma_connections_total",
            "Queue pairs connected with peers for RDMA payloads.",
            &labels,
            s.rdma_connected.load(Ordering::Relaxed),
        );
        out.counter(
            "xfuse_rpc_server_rdma_read_bytes_total",
            "Request payload bytes pulled from peers by RDMA READ.",
            &labels,
            s.rdma_read.load(Ordering::Relaxed),
        );
        out.counter(
            "xfuse_rpc_server_rdma_written_bytes_total",
            "Reply payload bytes pushed to peers by RDMA WRITE.",
            &labels,
            s.rdma_written.load(Ordering::Relaxed),
        );
    }
}

/// A storage service: bytes its targets moved, and the chain table as it
/// routes by it.
#[derive(Debug)]
pub struct Storage {
    service: Arc<StorageService>,
}

impl Storage {
    /// The counters of `service`.
    pub fn new(service: Arc<StorageService>) -> Storage {
        Storage { service }
    }
}

impl Collect for Storage {
    fn collect(&self, out: &mut Families) {
        let mut ids: Vec<u32> = self.service.targets().keys().copied().collect();
        ids.sort_unstable();
        let mut table = None;
        for id in ids {
            let Some(target) = self.service.targets().get(&id) else {
                continue;
            };
            let id = id.to_string();
            let moved = target.moved();
            for (why, n) in [
                ("update", &moved.updated_bytes),
                ("read", &moved.read_bytes),
                ("sync", &moved.synced_bytes),
                ("scrub", &moved.scrubbed_bytes),
            ] {
                out.counter(
                    "xfuse_storage_moved_bytes_total",
                    "Bytes a local target moved: updates applied, reads answered, copied while syncing, read by scrubbing.",
                    &[("target", &id), ("op", why)],
                    n.load(Ordering::Relaxed),
                );
            }
            out.counter(
                "xfuse_storage_repaired_chunks_total",
                "Chunks of a local target that failed a checksum and were replaced by another member's copy.",
                &[("target", &id)],
                moved.repaired_chunks.load(Ordering::Relaxed),
            );
            table.get_or_insert_with(|| target.table());
        }
        // Every local target routes by the same table.
        let Some(table) = table else { return };
        out.gauge(
            "xfuse_cluster_table_version",
            "Version of the chain table this storage service routes by.",
            &[],
            table.chains.version as f64,
        );
        for t in &table.targets {
            out.gauge(
                "xfuse_cluster_target_up",
                "Whether management counts a storage target alive (1) or not (0).",
                &[("target", &t.id.to_string())],
                if t.up { 1.0 } else { 0.0 },
            );
        }
        for chain in &table.chains.chains {
            let chain_id = chain.id.to_string();
            for m in &chain.members {
                for (state, name) in [
                    (MemberState::Serving, "serving"),
                    (MemberState::Syncing, "syncing"),
                    (MemberState::Offline, "offline"),
                ] {
                    out.gauge(
                        "xfuse_cluster_chain_member_state",
                        "A target's state in a chain: 1 for the state it is in, 0 for the others.",
                        &[
                            ("chain", &chain_id),
                            ("target", &m.target.to_string()),
                            ("state", name),
                        ],
                        if m.state == state { 1.0 } else { 0.0 },
                    );
                }
            }
        }
    }
}

impl<F> std::fmt::Debug for Mount<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mount")
            .field("transport", &self.transport)
            .finish_non_exhaustive()
    }
}

impl<F> std::fmt::Debug for Virtio<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Virtio").finish_non_exhaustive()
    }
}

impl<H: Handler> std::fmt::Debug for RpcServer<H> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RpcServer")
            .field("service", &self.service)
            .finish_non_exhaustive()
    }
}

/// A metadata service's open files kept in memory and its grace period
/// (on a store of its own, [`crate::meta::local`]).
#[derive(Debug)]
pub struct MetaSessions {
    service: Arc<crate::net::MetaService>,
}

impl MetaSessions {
    /// The gauges of `service`.
    pub fn new(service: Arc<crate::net::MetaService>) -> MetaSessions {
        MetaSessions { service }
    }
}

impl Collect for MetaSessions {
    fn collect(&self, out: &mut Families) {
        let Some(handles) = self.service.open_handles() else {
            return;
        };
        out.gauge(
            "xfuse_meta_open_handles",
            "Open files of this service's clients, kept in its memory (a store of its own): told again by the clients after a restart.",
            &[],
            handles as f64,
        );
        out.gauge(
            "xfuse_meta_grace_clients_awaited",
            "Clients that may hold files open and have not yet told this restarted service which: until none is left, or a lease time has passed, files losing their last link are kept.",
            &[],
            self.service.grace_awaited() as f64,
        );
    }
}

/// A client of storage services (a mount, a virtio-fs backend): the file
/// data it moved, by path, and how its RDMA stands.
#[derive(Debug)]
pub struct StorageClient {
    transport: Arc<ServiceTransport>,
}

impl StorageClient {
    /// The counters of `transport`.
    pub fn new(transport: Arc<ServiceTransport>) -> StorageClient {
        StorageClient { transport }
    }
}

impl Collect for StorageClient {
    fn collect(&self, out: &mut Families) {
        let moved = &self.transport.moved;
        for (path, direction, n) in [
            ("tcp", "sent", &moved.tcp_sent),
            ("tcp", "received", &moved.tcp_received),
            ("rdma", "sent", &moved.rdma_sent),
            ("rdma", "received", &moved.rdma_received),
        ] {
            out.counter(
                "xfuse_storage_client_payload_bytes_total",
                "File data this client moved to (sent) and from (received) storage services: in TCP frames, or by the services' RDMA READ and WRITE.",
                &[("path", path), ("direction", direction)],
                n.load(Ordering::Relaxed),
            );
        }
        if self.transport.uses_rdma() {
            out.counter(
                "xfuse_storage_client_rdma_connections_total",
                "Connections to storage services whose RDMA queue pairs were set up (reconnections included).",
                &[],
                self.transport.rdma_connections(),
            );
            out.gauge(
                "xfuse_storage_client_tcp_only_services",
                "Storage services reached over TCP because they offer no RDMA (--data-transport auto).",
                &[],
                self.transport.tcp_only_services() as f64,
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_storage_client_reports_payload_bytes_by_path_and_direction() {
        let transport = Arc::new(ServiceTransport::tcp(None));
        transport.moved.tcp_sent.fetch_add(4096, Ordering::Relaxed);
        transport
            .moved
            .rdma_received
            .fetch_add(1 << 20, Ordering::Relaxed);
        let mut out = Families::default();
        StorageClient::new(transport).collect(&mut out);
        let text = out.encode();
        assert!(
            text.contains("xfuse_storage_client_payload_bytes_total{path=\"tcp\",direction=\"sent\"} 4096\n"),
            "{text}"
        );
        assert!(
            text.contains(
                "xfuse_storage_client_payload_bytes_total{path=\"rdma\",direction=\"received\"} 1048576\n"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "xfuse_storage_client_payload_bytes_total{path=\"tcp\",direction=\"received\"} 0\n"
            ),
            "{text}"
        );
        // Over TCP only, nothing is said of RDMA.
        assert!(
            !text.contains("xfuse_storage_client_rdma_connections_total"),
            "{text}"
        );
    }
}
