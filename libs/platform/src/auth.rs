//! Bearer-token authentication for API callers, on both sides of the wire.
//!
//! Servers wrap their API services with [`RequireBearer`]; health,
//! reflection and agent sessions (which carry per-agent tokens) stay open.
//! Clients attach their token with [`ClientMetadata`]. Tokens are compared in
//! constant time and never logged.

use std::sync::Arc;

use tonic::metadata::MetadataValue;
use tonic::service::Interceptor;
use tonic::{Request, Status};

/// `--api-token` / `SHEPHERD_API_TOKEN`, flattened into each service's
/// config.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct AuthArgs {
    /// Require `authorization: Bearer <token>` on every API call. Unset: the
    /// API is open (health and reflection are always open).
    #[arg(long, env = "SHEPHERD_API_TOKEN", hide_env_values = true)]
    pub api_token: Option<String>,
}

/// Server-side check of the bearer token. Without a configured token every
/// call passes.
#[derive(Clone, Default)]
pub struct RequireBearer {
    expected: Option<Arc<[u8]>>,
}

impl RequireBearer {
    pub fn new(token: Option<&str>) -> Self {
        Self {
            expected: token
                .filter(|t| !t.is_empty())
                .map(|t| Arc::from(t.as_bytes())),
        }
    }
}

impl Interceptor for RequireBearer {
    fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        let Some(expected) = &self.expected else {
            return Ok(request);
        };
        let presented = request
            .metadata()
            .get("authorization")
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.strip_prefix("Bearer "))
            .ok_or_else(|| {
                Status::unauthenticated(
                    "missing credentials: send the header `authorization: Bearer <token>`",
                )
            })?;
        if constant_time_eq(presented.as_bytes(), expected) {
            Ok(request)
        } else {
            Err(Status::unauthenticated("invalid bearer token"))
        }
    }
}

/// Client-side metadata for every outgoing call: `authorization: Bearer
/// <token>` when a token is set, and the current span's W3C trace context
/// (so the callee's spans join the caller's trace).
#[derive(Clone, Default)]
pub struct ClientMetadata {
    header: Option<MetadataValue<tonic::metadata::Ascii>>,
}

impl ClientMetadata {
    /// Fails if the token cannot be sent as a header (non-ASCII).
    pub fn new(token: Option<&str>) -> Result<Self, Status> {
        let header =
            match token.filter(|t| !t.is_empty()) {
                None => None,
                Some(token) => Some(format!("Bearer {token}").parse().map_err(|_| {
                    Status::invalid_argument("the API token must be printable ASCII")
                })?),
            };
        Ok(Self { header })
    }
}

impl Interceptor for ClientMetadata {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(header) = &self.header {
            request
                .metadata_mut()
                .insert("authorization", header.clone());
        }
        shepherd_telemetry::propagation::inject_current(request.metadata_mut());
        Ok(request)
    }
}

/// Compares two secrets in time that depends only on their lengths, so a
/// caller cannot learn a token byte by byte from response times.
/// A fresh random secret of 256 bits, as 64 hex digits (session tokens,
/// webhook secrets).
pub fn random_secret() -> Result<String, getrandom::Error> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes)?;
    Ok(hex(&bytes))
}

/// Lower-case hex of `bytes` (secrets, digests).
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compares_contents_and_lengths() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secret", b"secreT"));
        assert!(!constant_time_eq(b"secret", b"secret2"));
        assert!(constant_time_eq(b"", b""));
    }

    #[test]
    fn bearer_round_trip() {
        let mut server = RequireBearer::new(Some("s3cret"));
        let mut client = ClientMetadata::new(Some("s3cret")).unwrap();
        let request = client.call(Request::new(())).unwrap();
        assert!(server.call(request).is_ok());

        let wrong = ClientMetadata::new(Some("nope"))
            .unwrap()
            .call(Request::new(()))
            .unwrap();
        assert_eq!(
            server.call(wrong).unwrap_err().code(),
            tonic::Code::Unauthenticated
        );
        let missing = server.call(Request::new(())).unwrap_err();
        assert!(missing.message().contains("authorization: Bearer"));

        let mut open = RequireBearer::new(None);
        assert!(open.call(Request::new(())).is_ok());
    }
}
