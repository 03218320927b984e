//! `xfused cluster`: look at the storage cluster.

use anyhow::{bail, Context as _};
use clap::{Args, Subcommand};
use xfused::client::AuthArgs;

#[derive(Debug, Subcommand)]
pub enum ClusterCommand {
    /// Show the storage targets (address, lease, up or down) and the
    /// chains (version, members in order with their states).
    Status(StatusArgs),
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// The metadata services: tcp://HOST:PORT[,HOST:PORT...].
    #[arg(long, value_name = "URL")]
    meta: String,
    /// Print JSON instead of tables.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    auth: AuthArgs,
}

pub fn run(command: ClusterCommand) -> anyhow::Result<()> {
    let ClusterCommand::Status(args) = command;
    let meta = match xfused::client::parse_meta_url(&args.meta)? {
        xfused::client::MetaUrl::Tcp(addr) => addr,
        _ => bail!("--meta {:?}: expected tcp://HOST:PORT", args.meta),
    };
    let tls = match args.auth.load()? {
        Some(cred) => Some(
            cred.client_config(xfused::rpc::auth::Role::Admin)
                .context("the cluster credential")?,
        ),
        None => None,
    };
    let client = xfused::cluster::client::ClusterClient::new(&meta, tls)?;
    let table = client.table().context("reading the chain table")?;
    let now = xfused::cluster::now_ms();
    if args.json {
        let targets: Vec<_> = table
            .targets
            .iter()
            .map(|t| {
                serde_json::json!({
                    "id": t.id, "addr": t.addr.to_string(), "up": t.up,
                    "lease_left_ms": t.lease_until_ms as i64 - now as i64,
                })
            })
            .collect();
        let chains: Vec<_> = table
            .chains
            .chains
            .iter()
            .map(|c| {
                serde_json::json!({
                    "id": c.id, "version": c.version,
                    "members": c.members.iter().map(|m| serde_json::json!({
                        "target": m.target, "state": format!("{:?}", m.state).to_lowercase(),
                    })).collect::<Vec<_>>(),
                })
            })
            .collect();
        println!(
            "{}",
            serde_json::json!({"table_version": table.chains.version, "targets": targets, "chains": chains})
        );
        return Ok(());
    }
    println!("chain table version {}", table.chains.version);
    println!();
    println!(
        "{:>6}  {:<22} {:<5} {:>10}",
        "TARGET", "ADDRESS", "STATE", "LEASE"
    );
    for t in &table.targets {
        let left = t.lease_until_ms as i64 - now as i64;
        println!(
            "{:>6}  {:<22} {:<5} {:>10}",
            t.id,
            t.addr.to_string(),
            if t.up { "up" } else { "down" },
            if left > 0 {
                format!("{left} ms")
            } else {
                "expired".into()
            }
        );
    }
    println!();
    println!("{:>6}  {:>8}  MEMBERS (head first)", "CHAIN", "VERSION");
    for c in &table.chains.chains {
        let members: Vec<String> = c
            .members
            .iter()
            .map(|m| format!("{}:{}", m.target, format!("{:?}", m.state).to_lowercase()))
            .collect();
        println!("{:>6}  {:>8}  {}", c.id, c.version, members.join(" -> "));
    }
    Ok(())
}
