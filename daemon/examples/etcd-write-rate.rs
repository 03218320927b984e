//! etcd's own write rate: the limit the etcd engine works under (issue 20
//! asks for it beside our creates). Debian's etcd 3.4 ships no `benchmark`
//! tool, and `etcdctl check perf` runs fixed loads, so this does what
//! `benchmark put` does: N clients, each on a connection of its own, each
//! with one request in flight, for a fixed time; requests per second.
//!
//! Two kinds of request:
//! - `put`: one key, a 256-byte value (a new key each time);
//! - `txn`: the shape of the engine's create: a serializable read of the
//!   parent (the engine reads at a member's revision), then a `Txn`
//!   comparing a new key's version with 0 and the parent's mod revision
//!   with what was read, putting three keys (the entry, the inode, the
//!   parent's inode); should the compare fail (the member read was behind
//!   this client's last commit), read again linearizably and commit again.
//!
//! ```sh
//! cargo run --release -p xfused --example etcd-write-rate -- \
//!     --endpoints 127.0.0.1:26801,127.0.0.1:26802,127.0.0.1:26803 --clients 1,4,36 --seconds 10
//! ```
//!
//! It writes under `/xfuse-etcd-write-rate/` and deletes that prefix at
//! the end; point it at a cluster you may write to.

use std::time::{Duration, Instant};

use clap::Parser;
use etcd_client::{Client, Compare, CompareOp, DeleteOptions, GetOptions, Txn, TxnOp};

#[derive(Parser)]
#[command(about = "etcd's own write rate (puts and create-shaped transactions) at given concurrencies")]
struct Args {
    /// Client endpoints, comma-separated (host:port).
    #[arg(long, value_delimiter = ',', required = true)]
    endpoints: Vec<String>,
    /// Concurrencies to measure, comma-separated: clients at once, each on
    /// its own connection with one request in flight.
    #[arg(long, value_delimiter = ',', default_value = "1,4")]
    clients: Vec<usize>,
    /// Seconds per measurement.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
}

const PREFIX: &str = "/xfuse-etcd-write-rate/";

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Put,
    Txn,
}

/// One request; for `Txn`, the commits that failed their compare first (a
/// serializable read from a member behind the last commit: read again
/// linearizably and commit again, as the engine does).
async fn one(client: &mut Client, kind: Kind, who: &str, i: u64) -> anyhow::Result<u64> {
    let value = vec![b'v'; 256];
    if kind == Kind::Put {
        client.put(format!("{PREFIX}put/{who}/{i}"), value, None).await?;
        return Ok(0);
    }
    let parent = format!("{PREFIX}dir/{who}");
    let entry = format!("{PREFIX}entry/{who}/{i}");
    let mut failed = 0;
    loop {
        let options = if failed == 0 {
            Some(GetOptions::new().with_serializable())
        } else {
            None
        };
        let got = client.get(parent.as_str(), options).await?;
        let parent_seen = match got.kvs().first() {
            Some(kv) => Compare::mod_revision(parent.as_str(), CompareOp::Equal, kv.mod_revision()),
            None => Compare::version(parent.as_str(), CompareOp::Equal, 0),
        };
        let txn = Txn::new()
            .when([Compare::version(entry.as_str(), CompareOp::Equal, 0), parent_seen])
            .and_then([
                TxnOp::put(entry.as_str(), value.clone(), None),
                TxnOp::put(format!("{PREFIX}inode/{who}/{i}"), value.clone(), None),
                TxnOp::put(parent.as_str(), value.clone(), None),
            ]);
        if client.txn(txn).await?.succeeded() {
            return Ok(failed);
        }
        failed += 1;
        // A linearizable read is never behind: the entry exists (left by
        // another run under the same name?).
        anyhow::ensure!(failed < 100, "{entry}: 100 commits failed their compare");
    }
}

/// Requests done, per second, and commits that failed their compare.
async fn measure(
    endpoints: &[String],
    kind: Kind,
    clients: usize,
    seconds: u64,
) -> anyhow::Result<(u64, f64, u64)> {
    let mut conns = Vec::with_capacity(clients);
    for _ in 0..clients {
        conns.push(Client::connect(endpoints, None).await?);
    }
    // Keys of this measurement alone: a create's entry is new.
    let nonce = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_nanos();
    let run = format!("{}-{nonce}-{clients}-{}", std::process::id(), kind as u8);
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let start = Instant::now();
    let tasks: Vec<_> = conns
        .into_iter()
        .enumerate()
        .map(|(who, mut client)| {
            let who = format!("{run}/{who}");
            tokio::spawn(async move {
                let (mut done, mut failed) = (0u64, 0u64);
                while Instant::now() < deadline {
                    failed += one(&mut client, kind, &who, done).await?;
                    done += 1;
                }
                anyhow::Ok((done, failed))
            })
        })
        .collect();
    let (mut total, mut failed) = (0, 0);
    for t in tasks {
        let (done, f) = t.await??;
        total += done;
        failed += f;
    }
    Ok((total, total as f64 / start.elapsed().as_secs_f64(), failed))
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    anyhow::ensure!(
        args.clients.iter().all(|&c| (1..=1024).contains(&c)),
        "--clients: 1 to 1024 each"
    );
    anyhow::ensure!((1..=3600).contains(&args.seconds), "--seconds: 1 to 3600");
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(async {
        println!("| request | clients | requests | per second | commits again (compare failed) |");
        println!("|---|---:|---:|---:|---:|");
        for kind in [Kind::Put, Kind::Txn] {
            for &clients in &args.clients {
                let (n, rate, failed) = measure(&args.endpoints, kind, clients, args.seconds).await?;
                let name = if kind == Kind::Put {
                    "put"
                } else {
                    "create-shaped txn"
                };
                println!("| {name} | {clients} | {n} | {rate:.0} | {failed} |");
            }
        }
        let mut client = Client::connect(&args.endpoints, None).await?;
        client
            .delete(PREFIX, Some(DeleteOptions::new().with_prefix()))
            .await?;
        Ok(())
    })
}
