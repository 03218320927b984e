//! Request counters: per opcode, and the requests no opcode counts
//! (unknown, malformed), shared by every worker of a session.

use std::sync::atomic::{AtomicU64, Ordering};

use kmod_shim::abi::Opcode;

/// Request counters, per opcode; shared by all workers of a session.
#[derive(Debug)]
pub struct Stats {
    pub(super) requests: Vec<AtomicU64>,
    pub(super) errors: Vec<AtomicU64>,
    pub(super) unknown: AtomicU64,
    pub(super) malformed: AtomicU64,
    pub(super) forgotten_inodes: AtomicU64,
}

const OPCODE_SLOTS: usize = 64;

impl Default for Stats {
    fn default() -> Self {
        Stats {
            requests: (0..OPCODE_SLOTS).map(|_| AtomicU64::new(0)).collect(),
            errors: (0..OPCODE_SLOTS).map(|_| AtomicU64::new(0)).collect(),
            unknown: AtomicU64::new(0),
            malformed: AtomicU64::new(0),
            forgotten_inodes: AtomicU64::new(0),
        }
    }
}

impl Stats {
    pub(super) fn slot(op: Opcode) -> usize {
        (op as usize).min(OPCODE_SLOTS - 1)
    }

    /// Requests seen with this opcode.
    pub fn requests(&self, op: Opcode) -> u64 {
        self.requests[Self::slot(op)].load(Ordering::Relaxed)
    }

    /// Requests with this opcode answered with an error.
    pub fn errors(&self, op: Opcode) -> u64 {
        self.errors[Self::slot(op)].load(Ordering::Relaxed)
    }

    /// Requests with an opcode the protocol does not define.
    pub fn unknown(&self) -> u64 {
        self.unknown.load(Ordering::Relaxed)
    }

    /// Requests that failed to parse.
    pub fn malformed(&self) -> u64 {
        self.malformed.load(Ordering::Relaxed)
    }

    /// Inodes the kernel has forgotten: one per FORGET, one per entry of a
    /// BATCH_FORGET (the kernel gathers them while the daemon is busy, so
    /// this is what shows every forget arrived, not the request counts).
    pub fn forgotten_inodes(&self) -> u64 {
        self.forgotten_inodes.load(Ordering::Relaxed)
    }

    /// (opcode, requests, errors) for every opcode seen at least once.
    pub fn snapshot(&self) -> Vec<(Opcode, u64, u64)> {
        Opcode::ALL
            .iter()
            .map(|&op| (op, self.requests(op), self.errors(op)))
            .filter(|(_, n, _)| *n > 0)
            .collect()
    }

    /// A multi-line table for logs and `--stats`.
    pub fn render(&self) -> String {
        let mut s = format!("{:<20} {:>12} {:>10}\n", "opcode", "requests", "errors");
        for (op, n, e) in self.snapshot() {
            s.push_str(&format!("{:<20} {:>12} {:>10}\n", op.name(), n, e));
        }
        s.push_str(&format!(
            "{:<20} {:>12}\n{:<20} {:>12}\n{:<20} {:>12}\n",
            "unknown",
            self.unknown(),
            "malformed",
            self.malformed(),
            "forgotten inodes",
            self.forgotten_inodes()
        ));
        s
    }
}
