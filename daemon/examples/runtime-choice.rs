//! Why the service layer uses threads, not tokio: the same exchange (a
//! small request, its reply, matched by id on one mutual-TLS connection)
//! through the threaded layer ([`xfused::rpc`]) and through a tokio design
//! (tokio-rustls; per connection a reading task that spawns a task per
//! request and a writing task fed by a channel; callers are plain threads,
//! as FUSE workers are, handing requests to the runtime and blocking on a
//! reply channel). Calls per second with 1 and 4 calling threads.
//!
//! ```sh
//! cargo run --release -p xfused --example runtime-choice
//! ```

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use xfused::rpc::auth::{Credential, Role};
use xfused::rpc::client::Conn;
use xfused::rpc::codec;
use xfused::rpc::server::{Handler, Limits, Peer, Server};

const CALLS: usize = 20_000;

struct Echo;

impl Handler for Echo {
    type Request = u64;
    type Reply = u64;
    type Conn = ();
    fn open(&self, _: &Peer) -> Result<(), String> {
        Ok(())
    }
    fn handle(&self, _: &(), _: &Peer, req: u64, _: Vec<u8>) -> Result<(u64, Vec<u8>), i32> {
        Ok((req, Vec::new()))
    }
}

fn rate(threads: usize, call: Arc<dyn Fn(u64) + Send + Sync>) -> f64 {
    let per = CALLS / threads;
    let start = Instant::now();
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let call = call.clone();
            std::thread::spawn(move || {
                for i in 0..per {
                    call((t * per + i) as u64);
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    (per * threads) as f64 / start.elapsed().as_secs_f64()
}

fn threaded(cred: &Credential, threads: usize) -> f64 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let server = Server::new(
        Arc::new(Echo),
        Some(cred.server_config().unwrap()),
        Limits::default(),
    );
    std::thread::spawn(move || server.serve(listener));
    let conn = Arc::new(
        Conn::connect(
            &addr,
            Some(cred.client_config(Role::Mount).unwrap()),
            Instant::now() + Duration::from_secs(5),
        )
        .unwrap(),
    );
    rate(
        threads,
        Arc::new(move |n| {
            let (reply, _) = conn
                .call(&codec::encode(&n), &[], Duration::from_secs(10))
                .unwrap();
            assert_eq!(codec::decode::<u64>(&reply).unwrap(), n);
        }),
    )
}

/// Frames: u32 length, u64 id, then the postcard message.
async fn read_frame<R: AsyncReadExt + Unpin>(r: &mut R) -> std::io::Result<(u64, Vec<u8>)> {
    let len = r.read_u32_le().await? as usize;
    let id = r.read_u64_le().await?;
    let mut body = vec![0; len - 8];
    r.read_exact(&mut body).await?;
    Ok((id, body))
}

fn frame(id: u64, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(12 + body.len());
    out.extend_from_slice(&((body.len() + 8) as u32).to_le_bytes());
    out.extend_from_slice(&id.to_le_bytes());
    out.extend_from_slice(body);
    out
}

type Waiters = Arc<Mutex<HashMap<u64, std::sync::mpsc::SyncSender<Vec<u8>>>>>;

fn tokio_design(cred: &Credential, threads: usize) -> f64 {
    let server_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(cred.server_config().unwrap());
    let listener = server_rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let addr = listener.local_addr().unwrap();
    server_rt.spawn(async move {
        loop {
            let (sock, _) = listener.accept().await.unwrap();
            sock.set_nodelay(true).unwrap();
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let tls = acceptor.accept(sock).await.unwrap();
                let (mut r, mut w) = tokio::io::split(tls);
                let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<u8>>(256);
                tokio::spawn(async move {
                    while let Some(bytes) = rx.recv().await {
                        if w.write_all(&bytes).await.is_err() {
                            return;
                        }
                    }
                });
                while let Ok((id, body)) = read_frame(&mut r).await {
                    let tx = tx.clone();
                    // A request's work is blocking (a KV transaction):
                    // run it where blocking is allowed, as a service would.
                    tokio::task::spawn_blocking(move || {
                        let n: u64 = codec::decode(&body).unwrap();
                        let _ = tx.blocking_send(frame(id, &codec::encode(&n)));
                    });
                }
            });
        }
    });
    let client_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let connector = tokio_rustls::TlsConnector::from(cred.client_config(Role::Mount).unwrap());
    let waiters: Waiters = Arc::new(Mutex::new(HashMap::new()));
    let (out_tx, mut out_rx) = tokio::sync::mpsc::unbounded_channel::<Vec<u8>>();
    {
        let waiters = waiters.clone();
        client_rt.block_on(async move {
            let sock = tokio::net::TcpStream::connect(addr).await.unwrap();
            sock.set_nodelay(true).unwrap();
            let name = xfused::rpc::auth::service_name();
            let tls = connector.connect(name, sock).await.unwrap();
            let (mut r, mut w) = tokio::io::split(tls);
            tokio::spawn(async move {
                while let Some(bytes) = out_rx.recv().await {
                    w.write_all(&bytes).await.unwrap();
                }
            });
            tokio::spawn(async move {
                while let Ok((id, body)) = read_frame(&mut r).await {
                    if let Some(tx) = waiters.lock().unwrap().remove(&id) {
                        let _ = tx.send(body);
                    }
                }
            });
        });
    }
    let next = Arc::new(std::sync::atomic::AtomicU64::new(1));
    let result = rate(
        threads,
        Arc::new(move |n| {
            let id = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let (tx, rx) = std::sync::mpsc::sync_channel(1);
            waiters.lock().unwrap().insert(id, tx);
            out_tx.send(frame(id, &codec::encode(&n))).unwrap();
            let reply = rx.recv_timeout(Duration::from_secs(10)).unwrap();
            assert_eq!(codec::decode::<u64>(&reply).unwrap(), n);
        }),
    );
    client_rt.shutdown_background();
    server_rt.shutdown_background();
    result
}

fn main() {
    let cred = Credential::generate().unwrap();
    println!("| design | calling threads | calls/s | µs per call |");
    println!("|---|---:|---:|---:|");
    for round in 0..3 {
        for threads in [1, 4] {
            for (name, r) in [
                ("threads (xfused::rpc)", threaded(&cred, threads)),
                ("tokio + tokio-rustls", tokio_design(&cred, threads)),
            ] {
                println!(
                    "| {name} (round {}) | {threads} | {r:.0} | {:.1} |",
                    round + 1,
                    1e6 / r * threads as f64
                );
            }
        }
    }
}
