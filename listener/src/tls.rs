//! TLS for the listeners medrelay exposes (MLLP, the WhatsApp webhook, the FHIR Subscription
//! endpoint) and for its MLLP write-back client, with rustls, so that a site needs neither stunnel
//! nor a reverse proxy:
//!
//! - [`ServerTls`]: a PEM certificate chain and key, and optionally a CA whose client certificates
//!   are required (mutual TLS). [`ServerTls::reload`] reads the files again (on SIGHUP: a renewed
//!   certificate is used by new connections; open ones keep theirs); a reload that fails keeps the
//!   configuration in use.
//! - [`ClientTls`]: the CA that signs the EHR's certificate (a hospital's own CA, not the public
//!   web's), optionally our client certificate and key, and the name to verify.
//!
//! Errors name the file and what is wrong with it, never its content. The crypto provider is
//! aws-lc-rs, the one reqwest and sqlx already use in this tree (no second crypto stack).

use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use serde::Deserialize;
use tokio::io::{AsyncRead, AsyncWrite};

pub use tokio_rustls::client::TlsStream as ClientTlsStream;
pub use tokio_rustls::server::TlsStream as ServerTlsStream;

/// How long a client has, from the accept, to complete the TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The files of a listener's TLS configuration (`[... .tls]` in the configuration).
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ServerTlsFiles {
    /// PEM certificate chain, the server's certificate first.
    pub cert: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1). Keep it readable by the service account only.
    pub key: PathBuf,
    /// PEM CA certificate(s): when set, a client must present a certificate this CA signed
    /// (mutual TLS); connections without one are refused in the handshake.
    #[serde(default)]
    pub client_ca: Option<PathBuf>,
}

/// The files of a TLS client configuration (`[connectors.write_back.tls]`).
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ClientTlsFiles {
    /// PEM CA certificate(s) the server's certificate must chain to.
    pub ca: PathBuf,
    /// The name the server's certificate must carry (default: the host of the address).
    #[serde(default)]
    pub server_name: Option<String>,
    /// PEM client certificate chain, when the server asks for one (mutual TLS).
    #[serde(default)]
    pub client_cert: Option<PathBuf>,
    /// PEM private key of `client_cert`.
    #[serde(default)]
    pub client_key: Option<PathBuf>,
}

/// What went wrong with TLS: the file and the reason, or the handshake. No key material, no
/// certificate content.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("{path} holds no PEM {what}")]
    Missing { path: PathBuf, what: &'static str },
    #[error("{path}: {what} is not valid PEM")]
    BadPem { path: PathBuf, what: &'static str },
    #[error("the TLS configuration is refused: {0}")]
    Refused(String),
    #[error("client_key and client_cert go together")]
    HalfClientIdentity,
    #[error("`{0}` is not a name or address a certificate can be checked against")]
    BadServerName(String),
    #[error("TLS handshake failed: {0}")]
    Handshake(io::Error),
    #[error("TLS handshake not completed within {0:?}")]
    HandshakeTimedOut(Duration),
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_owned(),
        source,
    })
}

/// Every certificate in a PEM file (at least one).
fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read(path)?;
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<_, _>>()
        .map_err(|_| TlsError::BadPem {
            path: path.to_owned(),
            what: "a certificate",
        })?;
    if certs.is_empty() {
        return Err(TlsError::Missing {
            path: path.to_owned(),
            what: "certificate",
        });
    }
    Ok(certs)
}

/// The private key in a PEM file.
fn private_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let pem = read(path)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => TlsError::Missing {
            path: path.to_owned(),
            what: "private key",
        },
        _ => TlsError::BadPem {
            path: path.to_owned(),
            what: "the private key",
        },
    })
}

/// A root store of the CA certificates in `path`.
fn roots(path: &Path) -> Result<rustls::RootCertStore, TlsError> {
    let mut store = rustls::RootCertStore::empty();
    for c in certificates(path)? {
        store
            .add(c)
            .map_err(|e| TlsError::Refused(format!("{}: {e}", path.display())))?;
    }
    Ok(store)
}

fn refused(e: impl std::fmt::Display) -> TlsError {
    TlsError::Refused(e.to_string())
}

/// A rustls server configuration read from `files`.
fn server_config(files: &ServerTlsFiles) -> Result<rustls::ServerConfig, TlsError> {
    let chain = certificates(&files.cert)?;
    let key = private_key(&files.key)?;
    let builder = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(refused)?;
    let builder = match &files.client_ca {
        Some(ca) => {
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots(ca)?),
                provider(),
            )
            .build()
            .map_err(refused)?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_single_cert(chain, key).map_err(refused)?;
    // HTTP/1.1 for the HTTP listeners; MLLP peers offer no ALPN, which is accepted too.
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// A listener's TLS: the acceptor in use and the files it came from, shared by every clone.
#[derive(Clone)]
pub struct ServerTls {
    files: Arc<ServerTlsFiles>,
    current: Arc<RwLock<tokio_rustls::TlsAcceptor>>,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerTls")
            .field("files", &self.files)
            .finish_non_exhaustive()
    }
}

impl ServerTls {
    /// Reads the certificate, key and client CA (a configuration check calls this too, so a
    /// wrong file is found before the service starts).
    pub fn load(files: &ServerTlsFiles) -> Result<Self, TlsError> {
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server_config(files)?));
        Ok(ServerTls {
            files: Arc::new(files.clone()),
            current: Arc::new(RwLock::new(acceptor)),
        })
    }

    /// Whether client certificates are required.
    pub fn mutual(&self) -> bool {
        self.files.client_ca.is_some()
    }

    /// Reads the files again; new connections use the result. On error the configuration in use
    /// stays (a renewal written half-way must not take the listener down).
    pub fn reload(&self) -> Result<(), TlsError> {
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server_config(&self.files)?));
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = acceptor;
        Ok(())
    }

    /// The TLS handshake on an accepted connection, within [`HANDSHAKE_TIMEOUT`].
    pub async fn accept<S>(&self, stream: S) -> Result<ServerTlsStream<S>, TlsError>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let acceptor = self
            .current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
            Ok(Ok(s)) => Ok(s),
            Ok(Err(e)) => Err(TlsError::Handshake(e)),
            Err(_) => Err(TlsError::HandshakeTimedOut(HANDSHAKE_TIMEOUT)),
        }
    }
}

/// A TLS client configuration: connector and the name the server must prove.
#[derive(Clone)]
pub struct ClientTls {
    connector: tokio_rustls::TlsConnector,
    server_name: Option<ServerName<'static>>,
}

impl std::fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientTls")
            .field("server_name", &self.server_name)
            .finish_non_exhaustive()
    }
}

impl ClientTls {
    /// Reads the CA and, when set, the client certificate and key.
    pub fn load(files: &ClientTlsFiles) -> Result<Self, TlsError> {
        let builder = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(refused)?
            .with_root_certificates(roots(&files.ca)?);
        let config = match (&files.client_cert, &files.client_key) {
            (Some(cert), Some(key)) => builder
                .with_client_auth_cert(certificates(cert)?, private_key(key)?)
                .map_err(refused)?,
            (None, None) => builder.with_no_client_auth(),
            _ => return Err(TlsError::HalfClientIdentity),
        };
        let server_name = files
            .server_name
            .as_deref()
            .map(|n| {
                ServerName::try_from(n.to_owned()).map_err(|_| TlsError::BadServerName(n.into()))
            })
            .transpose()?;
        Ok(ClientTls {
            connector: tokio_rustls::TlsConnector::from(Arc::new(config)),
            server_name,
        })
    }

    /// The TLS handshake on a connection to `host` (the configured `server_name` wins), within
    /// `timeout`.
    pub async fn connect<S>(
        &self,
        host: &str,
        stream: S,
        timeout: Duration,
    ) -> Result<ClientTlsStream<S>, TlsError>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let name = match &self.server_name {
            Some(n) => n.clone(),
            None => ServerName::try_from(host.to_owned())
                .map_err(|_| TlsError::BadServerName(host.into()))?,
        };
        match tokio::time::timeout(timeout, self.connector.connect(name, stream)).await {
            Ok(Ok(s)) => Ok(s),
            Ok(Err(e)) => Err(TlsError::Handshake(e)),
            Err(_) => Err(TlsError::HandshakeTimedOut(timeout)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    /// The test PKI (tests/fixtures/tls, made with openssl: see its README).
    fn fixture(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../tests/fixtures/tls")
            .join(name)
    }

    fn server_files(mutual: bool) -> ServerTlsFiles {
        ServerTlsFiles {
            cert: fixture("server.crt"),
            key: fixture("server.key"),
            client_ca: mutual.then(|| fixture("ca.crt")),
        }
    }

    fn client_files(identity: Option<&str>) -> ClientTlsFiles {
        ClientTlsFiles {
            ca: fixture("ca.crt"),
            server_name: None,
            client_cert: identity.map(|i| fixture(&format!("{i}.crt"))),
            client_key: identity.map(|i| fixture(&format!("{i}.key"))),
        }
    }

    /// A one-connection echo server over `tls`; the handshake's result comes back on the channel.
    async fn echo(tls: ServerTls) -> (std::net::SocketAddr, tokio::sync::oneshot::Receiver<bool>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel();
        tokio::spawn(async move {
            let (s, _) = listener.accept().await.unwrap();
            match tls.accept(s).await {
                Ok(mut s) => {
                    let _ = tx.send(true);
                    let mut b = [0u8; 5];
                    if s.read_exact(&mut b).await.is_ok() {
                        let _ = s.write_all(&b).await;
                        let _ = s.flush().await;
                    }
                }
                Err(_) => {
                    let _ = tx.send(false);
                }
            }
        });
        (addr, rx)
    }

    async fn talk(client: &ClientTls, addr: std::net::SocketAddr) -> Result<Vec<u8>, String> {
        let tcp = TcpStream::connect(addr).await.unwrap();
        let mut s = client
            .connect("localhost", tcp, Duration::from_secs(5))
            .await
            .map_err(|e| e.to_string())?;
        s.write_all(b"hello").await.map_err(|e| e.to_string())?;
        s.flush().await.map_err(|e| e.to_string())?;
        let mut b = vec![0u8; 5];
        s.read_exact(&mut b).await.map_err(|e| e.to_string())?;
        Ok(b)
    }

    #[tokio::test]
    async fn a_client_that_trusts_the_ca_talks_to_the_listener() {
        let (addr, handshake) = echo(ServerTls::load(&server_files(false)).unwrap()).await;
        let client = ClientTls::load(&client_files(None)).unwrap();
        assert_eq!(talk(&client, addr).await.unwrap(), b"hello");
        assert!(handshake.await.unwrap());
    }

    #[tokio::test]
    async fn mutual_tls_refuses_a_client_without_a_certificate_or_with_a_foreign_one() {
        let tls = ServerTls::load(&server_files(true)).unwrap();
        assert!(tls.mutual());
        // Signed by the CA: accepted.
        let (addr, handshake) = echo(tls.clone()).await;
        let good = ClientTls::load(&client_files(Some("client"))).unwrap();
        assert_eq!(talk(&good, addr).await.unwrap(), b"hello");
        assert!(handshake.await.unwrap());
        // No certificate: refused in the handshake.
        let (addr, handshake) = echo(tls.clone()).await;
        let anonymous = ClientTls::load(&client_files(None)).unwrap();
        assert!(talk(&anonymous, addr).await.is_err());
        assert!(!handshake.await.unwrap());
        // Signed by another CA: refused.
        let (addr, handshake) = echo(tls).await;
        let foreign = ClientTls::load(&client_files(Some("rogue"))).unwrap();
        assert!(talk(&foreign, addr).await.is_err());
        assert!(!handshake.await.unwrap());
    }

    #[tokio::test]
    async fn a_client_refuses_a_server_whose_name_is_not_in_its_certificate() {
        let (addr, _) = echo(ServerTls::load(&server_files(false)).unwrap()).await;
        let mut files = client_files(None);
        files.server_name = Some("ehr.example.org".into());
        let client = ClientTls::load(&files).unwrap();
        let e = talk(&client, addr).await.unwrap_err();
        assert!(e.contains("handshake"), "{e}");
    }

    #[test]
    fn errors_name_the_file_and_never_quote_it() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("server.key");
        std::fs::write(&key, "SECRET-CANARY not a key").unwrap();
        let files = ServerTlsFiles {
            cert: fixture("server.crt"),
            key: key.clone(),
            client_ca: None,
        };
        let e = ServerTls::load(&files).unwrap_err().to_string();
        assert!(e.contains("server.key"), "{e}");
        assert!(!e.contains("SECRET-CANARY"), "{e}");
        let missing = ServerTlsFiles {
            cert: dir.path().join("absent.crt"),
            ..files
        };
        let e = ServerTls::load(&missing).unwrap_err().to_string();
        assert!(e.contains("absent.crt"), "{e}");
        let half = ClientTlsFiles {
            client_key: None,
            ..client_files(Some("client"))
        };
        assert!(matches!(
            ClientTls::load(&half),
            Err(TlsError::HalfClientIdentity)
        ));
    }

    #[tokio::test]
    async fn reload_takes_new_files_and_a_failed_reload_keeps_the_old_configuration() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = (dir.path().join("s.crt"), dir.path().join("s.key"));
        // Start with the certificate of another CA: the client does not trust it.
        std::fs::copy(fixture("rogue.crt"), &cert).unwrap();
        std::fs::copy(fixture("rogue.key"), &key).unwrap();
        let tls = ServerTls::load(&ServerTlsFiles {
            cert: cert.clone(),
            key: key.clone(),
            client_ca: None,
        })
        .unwrap();
        let client = ClientTls::load(&ClientTlsFiles {
            server_name: Some("localhost".into()),
            ..client_files(None)
        })
        .unwrap();
        let (addr, _) = echo(tls.clone()).await;
        assert!(talk(&client, addr).await.is_err(), "the rogue certificate");
        // The renewed certificate is installed and the service told to reload.
        std::fs::copy(fixture("server.crt"), &cert).unwrap();
        std::fs::copy(fixture("server.key"), &key).unwrap();
        tls.reload().unwrap();
        let (addr, _) = echo(tls.clone()).await;
        assert_eq!(talk(&client, addr).await.unwrap(), b"hello");
        // A half-written renewal is refused and the working configuration stays.
        std::fs::write(&key, "-----BEGIN PRIVATE KEY-----\ntruncated").unwrap();
        assert!(tls.reload().is_err());
        let (addr, _) = echo(tls).await;
        assert_eq!(talk(&client, addr).await.unwrap(), b"hello");
    }
}
