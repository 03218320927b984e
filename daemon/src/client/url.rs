//! Metadata URLs: where a namespace lives (`embedded:PATH`,
//! `etcd://HOST:PORT[,...]`, `tcp://HOST:PORT`), parsed and checked.

use std::path::PathBuf;

use anyhow::bail;

/// Where `xfused mount` finds its namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MetaUrl {
    /// An embedded store in this directory, served inside this process.
    Embedded(PathBuf),
    /// The client endpoints (HOST:PORT) of an etcd cluster.
    Etcd(Vec<String>),
    /// HOST:PORT of an `xfused meta` service.
    Tcp(String),
}

/// Parses `url`, or says what was expected.
pub fn parse_meta_url(url: &str) -> anyhow::Result<MetaUrl> {
    if let Some(path) = url.strip_prefix("embedded:") {
        if path.is_empty() {
            bail!("--meta {url:?}: embedded: needs a directory, e.g. embedded:/var/lib/xfused/meta");
        }
        return Ok(MetaUrl::Embedded(PathBuf::from(path)));
    }
    if let Some(addr) = url.strip_prefix("tcp://") {
        if addr.is_empty() {
            bail!("--meta {url:?}: tcp:// needs HOST:PORT of an `xfused meta` service");
        }
        return Ok(MetaUrl::Tcp(addr.to_string()));
    }
    if let Some(list) = url.strip_prefix("etcd://") {
        let endpoints: Vec<String> = list.split(',').map(str::to_string).collect();
        for e in &endpoints {
            let ok = e
                .rsplit_once(':')
                .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
            if !ok {
                bail!("{url:?}: etcd endpoint {e:?} is not HOST:PORT");
            }
        }
        return Ok(MetaUrl::Etcd(endpoints));
    }
    bail!("{url:?}: expected embedded:PATH, etcd://HOST:PORT[,HOST:PORT...] or tcp://HOST:PORT")
}
