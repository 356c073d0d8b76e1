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
