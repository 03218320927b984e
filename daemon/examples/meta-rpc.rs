//! Calls per second through the metadata service's network layer alone
//! (no FUSE): an in-process `MetaService` on 127.0.0.1 over an embedded
//! store in DIR, and `RemoteMeta` clients creating, stating and removing
//! files, with and without TLS.
//!
//! ```sh
//! cargo run --release -p xfused --example meta-rpc -- /dev/shm 20000
//! ```

use std::sync::Arc;
use std::time::Instant;

use xfused::meta::embedded::{Durability, EmbeddedEngine};
use xfused::meta::{Caller, Namespace, SystemClock};
use xfused::net::service::TokenKey;
use xfused::net::{MetaService, RemoteMeta};
use xfused::rpc::auth::{Credential, Role};
use xfused::rpc::server::{Limits, Server};

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let dir = args.next().unwrap_or_else(|| "/dev/shm".into());
    let n: usize = args.next().map(|s| s.parse()).transpose()?.unwrap_or(20_000);
    println!("| transport | threads | creates/s | stats/s | removes/s |");
    println!("|---|---:|---:|---:|---:|");
    for tls in [false, true] {
        for threads in [1usize, 4] {
            let store = tempfile::tempdir_in(&dir)?;
            let engine = Arc::new(EmbeddedEngine::open(store.path(), Durability::default())?);
            let cred = Credential::generate()?;
            let service = Arc::new(MetaService::new(
                engine,
                Default::default(),
                Arc::new(SystemClock),
                TokenKey::of(&cred)?,
            )?);
            let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
            let addr = listener.local_addr()?.to_string();
            let server = Server::new(
                service,
                tls.then(|| cred.server_config().unwrap()),
                Limits::default(),
            );
            std::thread::spawn(move || server.serve(listener));
            let remote = Arc::new(RemoteMeta::connect(
                &addr,
                tls.then(|| cred.client_config(Role::Mount).unwrap()),
            )?);
            let per = n / threads;
            let mut rates = Vec::new();
            for phase in 0..3 {
                let started = Instant::now();
                let handles: Vec<_> = (0..threads)
                    .map(|t| {
                        let remote = remote.clone();
                        std::thread::spawn(move || {
                            let root = Caller::ROOT;
                            for i in 0..per {
                                let name = format!("t{t}-{i}");
                                match phase {
                                    0 => {
                                        remote
                                            .mknod(
                                                &root,
                                                1,
                                                name.as_bytes(),
                                                libc::S_IFREG | 0o644,
                                                0,
                                                &[],
                                                false,
                                            )
                                            .unwrap();
                                    }
                                    1 => {
                                        remote.lookup(&root, 1, name.as_bytes()).unwrap();
                                    }
                                    _ => {
                                        remote.unlink(&root, 1, name.as_bytes()).unwrap();
                                    }
                                }
                            }
                        })
                    })
                    .collect();
                for h in handles {
                    h.join().unwrap();
                }
                rates.push((per * threads) as f64 / started.elapsed().as_secs_f64());
            }
            println!(
                "| {} | {threads} | {:.0} | {:.0} | {:.0} |",
                if tls { "TLS" } else { "plain" },
                rates[0],
                rates[1],
                rates[2]
            );
        }
    }
    Ok(())
}
