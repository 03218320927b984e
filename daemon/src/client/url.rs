//! Metadata URLs: where a namespace lives (`embedded:PATH`,
//! `etcd://HOST:PORT[,...]`, `tcp://HOST:PORT`), parsed and checked.

use std::path::PathBuf;

use anyhow::bail;

/// Where `xfused mount` finds its namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MetaUrl {
    /// An embedded store in this directory, served inside this process.
    Embedded(PathBuf),
    /// The client endpoints (HOST:PORT) of an etcd cluster, over TLS
    /// (`etcd+tls://`) or not.
    Etcd {
        /// HOST:PORT each.
        endpoints: Vec<String>,
        /// Whether to speak TLS to the members.
        tls: bool,
    },
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
    let etcd = url
        .strip_prefix("etcd://")
        .map(|l| (l, false))
        .or_else(|| url.strip_prefix("etcd+tls://").map(|l| (l, true)));
    if let Some((list, tls)) = etcd {
        let endpoints: Vec<String> = list.split(',').map(str::to_string).collect();
        for e in &endpoints {
            let ok = e
                .rsplit_once(':')
                .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
            if !ok {
                bail!("{url:?}: etcd endpoint {e:?} is not HOST:PORT");
            }
        }
        return Ok(MetaUrl::Etcd { endpoints, tls });
    }
    bail!(
        "{url:?}: expected embedded:PATH, etcd://HOST:PORT[,HOST:PORT...], etcd+tls://... or tcp://HOST:PORT"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn etcd_urls_say_whether_to_speak_tls() {
        assert_eq!(
            parse_meta_url("etcd://a:1,b:2").unwrap(),
            MetaUrl::Etcd {
                endpoints: vec!["a:1".into(), "b:2".into()],
                tls: false
            }
        );
        assert_eq!(
            parse_meta_url("etcd+tls://a:1").unwrap(),
            MetaUrl::Etcd {
                endpoints: vec!["a:1".into()],
                tls: true
            }
        );
        assert!(parse_meta_url("etcd+tls://a").is_err());
        assert!(parse_meta_url("etcd+ssl://a:1").is_err());
    }
}
