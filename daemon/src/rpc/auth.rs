//! Who may connect, and as what: the cluster credential, roles, and the
//! TLS configurations built from them.
//!
//! A cluster has one credential: a CA certificate and its private key in
//! one PEM file (`xfused credential new`, or made on first start of
//! `xfused meta` under its state directory). Whoever holds it is part of
//! the cluster: each process mints itself, at start, a short-lived leaf
//! certificate for its [`Role`], signed by the CA, and every connection is
//! mutual TLS 1.3 with both leaves checked against the CA. A narrower
//! credential holds the CA certificate and one leaf (with its key) for one
//! role, without the CA key (`xfused credential issue --role mount`): its
//! holder can be that role and nothing else.
//!
//! The role is a DNS name in the leaf's subject alternative names
//! (`mount.xfuse.cluster`, ...). Services present `service.xfuse.cluster`
//! and clients check it, so a mount credential cannot pose as a service.

use std::fmt;
use std::path::Path;
use std::sync::Arc;

use rcgen::{BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, Issuer, KeyPair};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use sha2::{Digest, Sha256};

/// What a peer is to the cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// A mount: may state the uid and gids of its local callers (NFS's
    /// AUTH_SYS trust in a trusted host).
    Mount,
    /// A metadata or storage service.
    Service,
    /// An operator's tool.
    Admin,
}

impl Role {
    /// Every role, in the order checked.
    pub const ALL: [Role; 3] = [Role::Mount, Role::Service, Role::Admin];

    /// The DNS name in a leaf certificate that grants the role.
    pub fn dns_name(self) -> &'static str {
        match self {
            Role::Mount => "mount.xfuse.cluster",
            Role::Service => "service.xfuse.cluster",
            Role::Admin => "admin.xfuse.cluster",
        }
    }

    /// The role named `name` (`mount`, `service`, `admin`).
    pub fn parse(name: &str) -> Option<Role> {
        match name {
            "mount" => Some(Role::Mount),
            "service" => Some(Role::Service),
            "admin" => Some(Role::Admin),
            _ => None,
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Role::Mount => "mount",
            Role::Service => "service",
            Role::Admin => "admin",
        })
    }
}

/// Why a credential cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// Reading or writing the file.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// What failed.
        source: std::io::Error,
    },
    /// The file is not a credential.
    #[error("{0}")]
    Invalid(String),
    /// A credential for one role used for another.
    #[error("this credential is for role {held}, not {wanted}")]
    WrongRole {
        /// The role the credential grants.
        held: Role,
        /// The role asked for.
        wanted: Role,
    },
}

fn invalid(what: impl fmt::Display) -> AuthError {
    AuthError::Invalid(what.to_string())
}

/// The CA's parameters. The CA certificate is rebuilt from these and the
/// CA key to sign leaves, so they are fixed.
fn ca_params() -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, "xfuse cluster CA");
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::DigitalSignature,
    ];
    params
}

fn leaf_params(role: Role) -> Result<CertificateParams, AuthError> {
    let mut params = CertificateParams::new(vec![role.dns_name().to_string()]).map_err(invalid)?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, format!("xfuse {role}"));
    params.distinguished_name = dn;
    params.extended_key_usages = vec![
        rcgen::ExtendedKeyUsagePurpose::ServerAuth,
        rcgen::ExtendedKeyUsagePurpose::ClientAuth,
    ];
    // rcgen's default validity (1975 to 4096): a credential is revoked by
    // replacing the cluster's CA (`xfused credential new`), not by expiry.
    Ok(params)
}

/// A cluster credential as loaded from its file.
pub struct Credential {
    ca_der: CertificateDer<'static>,
    what: Held,
}

enum Held {
    /// The CA key: any role.
    Ca(Box<KeyPair>),
    /// One leaf of one role.
    Leaf {
        role: Role,
        cert: CertificateDer<'static>,
        key_der: Vec<u8>,
    },
}

impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let held = match &self.what {
            Held::Ca(_) => "cluster CA key".to_string(),
            Held::Leaf { role, .. } => format!("{role} leaf"),
        };
        f.debug_struct("Credential")
            .field("holds", &held)
            .finish_non_exhaustive()
    }
}

impl Credential {
    /// A new cluster: a fresh CA.
    pub fn generate() -> Result<Credential, AuthError> {
        let key = KeyPair::generate().map_err(invalid)?;
        let cert = ca_params().self_signed(&key).map_err(invalid)?;
        Ok(Credential {
            ca_der: cert.der().clone(),
            what: Held::Ca(Box::new(key)),
        })
    }

    /// The credential as a PEM file's text.
    pub fn to_pem(&self) -> String {
        let mut out = pem_block("CERTIFICATE", &self.ca_der);
        match &self.what {
            Held::Ca(key) => out.push_str(&key.serialize_pem()),
            Held::Leaf { cert, key_der, .. } => {
                out.push_str(&pem_block("CERTIFICATE", cert));
                out.push_str(&pem_block("PRIVATE KEY", key_der));
            }
        }
        out
    }

    /// Parses a credential file's text: the CA certificate, then either
    /// the CA's key, or a leaf certificate and the leaf's key.
    pub fn from_pem(text: &str) -> Result<Credential, AuthError> {
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(text.as_bytes())
            .collect::<Result<_, _>>()
            .map_err(|e| invalid(format!("certificates: {e}")))?;
        let key = PrivateKeyDer::from_pem_slice(text.as_bytes())
            .map_err(|e| invalid(format!("private key: {e}")))?;
        let key_der = key.secret_der().to_vec();
        match certs.as_slice() {
            [ca] => {
                let pair =
                    KeyPair::try_from(key_der.as_slice()).map_err(|e| invalid(format!("CA key: {e}")))?;
                // The key must be the CA's: re-sign the CA and compare keys.
                let rebuilt = ca_params().self_signed(&pair).map_err(invalid)?;
                if spki(rebuilt.der())? != spki(ca)? {
                    return Err(invalid("the private key is not the CA certificate's"));
                }
                Ok(Credential {
                    ca_der: ca.clone(),
                    what: Held::Ca(Box::new(pair)),
                })
            }
            [ca, leaf] => {
                let end =
                    webpki::EndEntityCert::try_from(leaf).map_err(|e| invalid(format!("leaf: {e:?}")))?;
                let role = Role::ALL
                    .into_iter()
                    .find(|r| role_name_ok(&end, *r))
                    .ok_or_else(|| invalid("the leaf certificate names no role"))?;
                Ok(Credential {
                    ca_der: ca.clone(),
                    what: Held::Leaf {
                        role,
                        cert: leaf.clone(),
                        key_der,
                    },
                })
            }
            _ => Err(invalid(format!(
                "{} certificates: expected the CA, or the CA and one leaf",
                certs.len()
            ))),
        }
    }

    /// Loads the credential at `path`. It must be private: a credential
    /// others can read is refused.
    pub fn load(path: &Path) -> Result<Credential, AuthError> {
        use std::os::unix::fs::MetadataExt;
        let io = |source| AuthError::Io {
            path: path.display().to_string(),
            source,
        };
        let meta = std::fs::metadata(path).map_err(io)?;
        if meta.mode() & 0o077 != 0 {
            return Err(invalid(format!(
                "{}: mode {:o} lets others read the cluster credential; chmod 600 it",
                path.display(),
                meta.mode() & 0o7777
            )));
        }
        let text = std::fs::read_to_string(path).map_err(io)?;
        Credential::from_pem(&text).map_err(|e| invalid(format!("{}: {e}", path.display())))
    }

    /// Loads the credential at `path`, or makes a new cluster there (0600,
    /// written whole: a concurrent first start of two processes ends with
    /// one credential both use).
    pub fn load_or_create(path: &Path) -> Result<Credential, AuthError> {
        use std::io::Write as _;
        use std::os::unix::fs::OpenOptionsExt;
        if path.exists() {
            return Credential::load(path);
        }
        let io = |source| AuthError::Io {
            path: path.display().to_string(),
            source,
        };
        let dir = path.parent().unwrap_or(Path::new("."));
        crate::private_state::ensure_dir(dir).map_err(io)?;
        let fresh = Credential::generate()?;
        let tmp = dir.join(format!(
            ".{}.{}",
            path.file_name().and_then(|n| n.to_str()).unwrap_or("credential"),
            std::process::id()
        ));
        {
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&tmp)
                .map_err(io)?;
            f.write_all(fresh.to_pem().as_bytes()).map_err(io)?;
            f.sync_all().map_err(io)?;
        }
        // link(2) fails if another process won the race; then use theirs.
        let linked = std::fs::hard_link(&tmp, path);
        let _ = std::fs::remove_file(&tmp);
        match linked {
            Ok(()) => {
                tracing::info!("created a new cluster credential in {}", path.display());
                Ok(fresh)
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Credential::load(path),
            Err(e) => Err(io(e)),
        }
    }

    /// A credential for `role` only, to hand to a machine that should be
    /// that and nothing else. Needs the CA key.
    pub fn issue(&self, role: Role) -> Result<Credential, AuthError> {
        let (cert, key_der) = self.leaf(role)?;
        Ok(Credential {
            ca_der: self.ca_der.clone(),
            what: Held::Leaf { role, cert, key_der },
        })
    }

    /// Whether this credential holds the CA key.
    pub fn is_cluster(&self) -> bool {
        matches!(self.what, Held::Ca(_))
    }

    /// A leaf certificate and key for `role`: minted if this holds the CA
    /// key, else the held leaf if it is for `role`.
    fn leaf(&self, role: Role) -> Result<(CertificateDer<'static>, Vec<u8>), AuthError> {
        match &self.what {
            Held::Ca(ca_key) => {
                let key = KeyPair::generate().map_err(invalid)?;
                let issuer = Issuer::new(ca_params(), &**ca_key);
                let cert = leaf_params(role)?.signed_by(&key, &issuer).map_err(invalid)?;
                Ok((cert.der().clone(), key.serialize_der()))
            }
            Held::Leaf {
                role: held,
                cert,
                key_der,
            } => {
                if *held != role {
                    return Err(AuthError::WrongRole {
                        held: *held,
                        wanted: role,
                    });
                }
                Ok((cert.clone(), key_der.clone()))
            }
        }
    }

    /// A secret only holders of the CA key know, for `purpose` (e.g. the
    /// key of session tokens), so services of one cluster agree on it.
    pub fn derive_secret(&self, purpose: &str) -> Result<[u8; 32], AuthError> {
        let Held::Ca(key) = &self.what else {
            return Err(invalid(
                "a service needs the cluster credential (with the CA key)",
            ));
        };
        let mut h = Sha256::new();
        h.update(b"xfuse derived secret\0");
        h.update(purpose.as_bytes());
        h.update([0]);
        h.update(key.serialize_der());
        Ok(h.finalize().into())
    }

    fn roots(&self) -> Result<rustls::RootCertStore, AuthError> {
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(self.ca_der.clone())
            .map_err(|e| invalid(format!("CA certificate: {e}")))?;
        Ok(roots)
    }

    /// The TLS configuration of a service: it presents a `service` leaf and
    /// requires a client leaf from this cluster.
    pub fn server_config(&self) -> Result<Arc<rustls::ServerConfig>, AuthError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            Arc::new(self.roots()?),
            provider.clone(),
        )
        .build()
        .map_err(|e| invalid(format!("client verifier: {e}")))?;
        let (cert, key) = self.leaf(Role::Service)?;
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| invalid(format!("TLS: {e}")))?
            .with_client_cert_verifier(verifier)
            .with_single_cert(vec![cert], private_key(key))
            .map_err(|e| invalid(format!("TLS: {e}")))?;
        records_after_handshake(&mut config.alpn_protocols, &mut config.enable_secret_extraction);
        // Nothing may follow the handshake but the record layer's first
        // record: no session tickets (nothing resumes anyway).
        config.send_tls13_tickets = 0;
        Ok(Arc::new(config))
    }

    /// The TLS configuration of a client of `role`: it presents its leaf
    /// and requires the server's to be a `service` leaf of this cluster.
    pub fn client_config(&self, role: Role) -> Result<Arc<rustls::ClientConfig>, AuthError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let (cert, key) = self.leaf(role)?;
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| invalid(format!("TLS: {e}")))?
            .with_root_certificates(self.roots()?)
            .with_client_auth_cert(vec![cert], private_key(key))
            .map_err(|e| invalid(format!("TLS: {e}")))?;
        records_after_handshake(&mut config.alpn_protocols, &mut config.enable_secret_extraction);
        config.resumption = rustls::client::Resumption::disabled();
        Ok(Arc::new(config))
    }
}

/// Both ends name the record layer that follows the handshake and let
/// its keys be taken for it (see [`super::record`]).
fn records_after_handshake(alpn: &mut Vec<Vec<u8>>, extraction: &mut bool) {
    *alpn = vec![super::record::ALPN.to_vec()];
    *extraction = true;
}

/// The name a client checks in the service's certificate.
pub fn service_name() -> ServerName<'static> {
    ServerName::try_from(Role::Service.dns_name()).expect("a valid DNS name")
}

/// The role a verified peer certificate grants (rustls has checked its
/// chain to the cluster CA during the handshake).
pub fn peer_role(cert: &CertificateDer<'_>) -> Option<Role> {
    let end = webpki::EndEntityCert::try_from(cert).ok()?;
    Role::ALL.into_iter().find(|r| role_name_ok(&end, *r))
}

fn role_name_ok(end: &webpki::EndEntityCert<'_>, role: Role) -> bool {
    let name = ServerName::try_from(role.dns_name()).expect("a valid DNS name");
    end.verify_is_valid_for_subject_name(&name).is_ok()
}

fn private_key(der: Vec<u8>) -> PrivateKeyDer<'static> {
    PrivateKeyDer::Pkcs8(der.into())
}

/// The DER of a certificate's public key, to compare keys.
fn spki(cert: &CertificateDer<'_>) -> Result<Vec<u8>, AuthError> {
    let end = webpki::EndEntityCert::try_from(cert).map_err(|e| invalid(format!("certificate: {e:?}")))?;
    Ok(end.subject_public_key_info().as_ref().to_vec())
}

fn pem_block(label: &str, der: &[u8]) -> String {
    pem::encode(&pem::Pem::new(label, der))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_credential_survives_its_file_and_issues_roles() {
        let cluster = Credential::generate().unwrap();
        let again = Credential::from_pem(&cluster.to_pem()).unwrap();
        assert!(again.is_cluster());
        assert_eq!(
            cluster.derive_secret("x").unwrap(),
            again.derive_secret("x").unwrap()
        );
        let mount = again.issue(Role::Mount).unwrap();
        let mount = Credential::from_pem(&mount.to_pem()).unwrap();
        assert!(!mount.is_cluster());
        assert!(mount.client_config(Role::Mount).is_ok());
        assert!(matches!(
            mount.client_config(Role::Admin),
            Err(AuthError::WrongRole { .. })
        ));
        assert!(mount.server_config().is_err(), "a mount credential cannot serve");
        assert!(mount.derive_secret("x").is_err());
        let (leaf, _) = cluster.leaf(Role::Admin).unwrap();
        assert_eq!(peer_role(&leaf), Some(Role::Admin));
    }

    #[test]
    fn a_key_from_another_cluster_is_refused() {
        let a = Credential::generate().unwrap();
        let b = Credential::generate().unwrap();
        let a_pem = a.to_pem();
        let b_pem = b.to_pem();
        let cert_a = &a_pem[..a_pem.find("-----BEGIN PRIVATE KEY").unwrap()];
        let key_b = &b_pem[b_pem.find("-----BEGIN PRIVATE KEY").unwrap()..];
        let err = Credential::from_pem(&format!("{cert_a}{key_b}")).unwrap_err();
        assert!(err.to_string().contains("not the CA"), "{err}");
    }

    #[test]
    fn credentials_others_can_read_are_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state/cluster.pem");
        let made = Credential::load_or_create(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let loaded = Credential::load_or_create(&path).unwrap();
        assert_eq!(
            made.derive_secret("t").unwrap(),
            loaded.derive_secret("t").unwrap()
        );
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(Credential::load(&path)
            .unwrap_err()
            .to_string()
            .contains("chmod 600"));
    }
}
