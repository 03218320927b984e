//! The request counters a mount prints on demand and at exit: per opcode,
//! passthrough opens, per ring queue, adaptive timeouts.

/// The request counters: per opcode, passthrough opens, per ring queue.
pub(super) fn stats_report<F: fuse_backend_rs::api::filesystem::FileSystem + Sync>(
    dispatcher: &xfuse::Dispatcher<F>,
    queues: Option<&xfuse::transport::uring::QueueCounters>,
) -> String {
    let mut report = dispatcher.stats().render();
    report.push_str(&format!(
        "passthrough opens    {:>12}\n",
        dispatcher.passthrough_opens()
    ));
    if let Some(queues) = queues {
        for (qid, n) in queues.snapshot().iter().enumerate() {
            report.push_str(&format!("ring queue {qid:<9} {n:>12}\n"));
        }
    }
    if let Some(ttl) = dispatcher.adaptive_ttl() {
        let s = ttl.stats();
        report.push_str(&format!(
            "long-ttl inodes      {:>12}\npromoted             {:>12}\ndemoted by change    {:>12}\n\
             demoted idle         {:>12}\ninvalidations        {:>12}\ninvalidation errors  {:>12}\n",
            s.long_inodes,
            s.promoted,
            s.demoted_by_change,
            s.demoted_idle,
            s.invalidations,
            s.invalidation_errors
        ));
    }
    report
}
