//! The xfuse daemon's library: the distributed filesystem's pieces, used by
//! the `xfused` binary and by the tests and benches.
//!
//! - [`meta`]: the namespace on a transactional KV engine;
//! - [`chunk`]: the local chunk store holding file data;
//! - [`storage`]: the storage cluster: targets, CRAQ chains, the data
//!   transport, a mount's data in the cluster;
//! - [`cluster`]: the cluster's state in the metadata engine (targets,
//!   chains, layouts) and the management role;
//! - [`data`]: where a mount keeps file data (local or cluster);
//! - [`fs`]: the `FileSystem` a client mounts, over the namespace and its
//!   data;
//! - [`net`]: the metadata service and its client;
//! - [`rpc`]: the service layer: authentication, frames, multiplexed
//!   connections and bounds, for every network service;
//! - [`metrics`]: `--metrics HOST:PORT`, Prometheus exposition of the
//!   counters of every long-running command;
//! - [`private_state`]: the modes that keep on-disk state private;
//! - [`client`]: a process's hold on a namespace: the metadata URL opened,
//!   the lease renewed until it is dropped;
//! - [`serve`]: serving a filesystem at a mountpoint: transport choice,
//!   permission layer, adaptive timeouts, counters.
//!
//! The binary (`src/bin/xfused/`) is a thin CLI over these: one module per
//! subcommand; nothing here imports from it.
#![warn(missing_docs)]

pub mod chunk;
pub mod client;
pub mod cluster;
pub mod data;
pub mod fs;
pub mod meta;
pub mod metrics;
pub mod net;
pub mod private_state;
pub mod rpc;
pub mod serve;
#[cfg(test)]
mod sim_rng;
pub mod storage;
