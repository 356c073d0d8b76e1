//! Optional TLS: server identity for both services, and the CA a client
//! trusts when it talks to one of them (scheduler → manager, agents →
//! manager, the CLI).

use std::path::{Path, PathBuf};

use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity, ServerTlsConfig};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("both --tls-cert and --tls-key are needed to serve TLS (only {0} was given)")]
    Incomplete(&'static str),
    #[error("invalid URL {url:?}: {reason}")]
    Url { url: String, reason: String },
}

/// `--tls-cert` / `--tls-key`: serve TLS when both are set.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct TlsArgs {
    /// PEM certificate (chain) to serve TLS with.
    #[arg(long, env = "TLS_CERT_FILE")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of the certificate.
    #[arg(long, env = "TLS_KEY_FILE")]
    pub tls_key: Option<PathBuf>,
}

impl TlsArgs {
    /// The server TLS configuration, if TLS is configured.
    pub fn server_config(&self) -> Result<Option<ServerTlsConfig>, TlsError> {
        match (&self.tls_cert, &self.tls_key) {
            (None, None) => Ok(None),
            (Some(_), None) => Err(TlsError::Incomplete("--tls-cert")),
            (None, Some(_)) => Err(TlsError::Incomplete("--tls-key")),
            (Some(cert), Some(key)) => {
                let identity = Identity::from_pem(read(cert)?, read(key)?);
                Ok(Some(ServerTlsConfig::new().identity(identity)))
            }
        }
    }

    pub fn enabled(&self) -> bool {
        self.tls_cert.is_some()
    }

    /// The same identity for an HTTP listener (the webhook endpoint), if
    /// TLS is configured.
    pub fn http_server_config(
        &self,
    ) -> Result<Option<std::sync::Arc<rustls::ServerConfig>>, TlsError> {
        use rustls_pki_types::pem::PemObject;
        use rustls_pki_types::{CertificateDer, PrivateKeyDer};
        let (cert, key) = match (&self.tls_cert, &self.tls_key) {
            (None, None) => return Ok(None),
            (Some(_), None) => return Err(TlsError::Incomplete("--tls-cert")),
            (None, Some(_)) => return Err(TlsError::Incomplete("--tls-key")),
            (Some(cert), Some(key)) => (cert, key),
        };
        let invalid = |path: &Path, what: &str| TlsError::Read {
            path: path.to_owned(),
            source: std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_owned()),
        };
        let certs = CertificateDer::pem_slice_iter(&read(cert)?)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|_| invalid(cert, "not a PEM certificate chain"))?;
        let key_der = PrivateKeyDer::from_pem_slice(&read(key)?)
            .map_err(|_| invalid(key, "not a PEM private key"))?;
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .and_then(|builder| {
                builder
                    .with_no_client_auth()
                    .with_single_cert(certs, key_der)
            })
            .map_err(|err| invalid(cert, &err.to_string()))?;
        Ok(Some(std::sync::Arc::new(config)))
    }
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_owned(),
        source,
    })
}

/// An endpoint for `url` (Nagle off), trusting the PEM CA in `ca_file` when given
/// (required for `https://` URLs: no system roots are bundled).
pub fn endpoint(url: &str, ca_file: Option<&Path>) -> Result<Endpoint, TlsError> {
    let invalid = |reason: String| TlsError::Url {
        url: url.to_owned(),
        reason,
    };
    let endpoint = Endpoint::from_shared(url.to_owned())
        .map_err(|err| invalid(err.to_string()))?
        .tcp_nodelay(true);
    match ca_file {
        None => Ok(endpoint),
        Some(ca) => {
            let tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(read(ca)?));
            endpoint
                .tls_config(tls)
                .map_err(|err| invalid(err.to_string()))
        }
    }
}
