//! Who may call the APIs, and how clients present their credentials.
//!
//! Servers put a [`RoleGate`] in front of each API service: it
//! authenticates the caller's bearer token against the configured
//! [`Credentials`] and checks the RPC against the caller's [`Role`].
//! Health, reflection and agent sessions (which carry per-agent tokens)
//! stay outside it. Clients attach their token with [`ClientMetadata`].
//! Tokens are compared (as SHA-256 digests) in constant time and never
//! logged.

mod credentials;
mod gate;
mod roles;

pub use credentials::{API_TOKEN_CALLER, Caller, Credentials, file_line};
pub use gate::{PermissionTable, RoleGate, caller, identity};
pub use roles::{Permission, Role};

use tonic::metadata::MetadataValue;
use tonic::service::Interceptor;
use tonic::{Request, Status};

/// A secret read from the environment: shown as `***` by `Debug`, so a
/// logged configuration never carries it.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// The variable's value, if set and not empty.
    pub fn from_env(name: &str) -> Option<Self> {
        std::env::var(name).ok().filter(|v| !v.is_empty()).map(Self)
    }

    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("***")
    }
}

/// The services' credentials, flattened into each service's config.
/// Tokens are read from the environment only (never from a command line,
/// which any local user reads in `ps`): `SHEPHERD_API_TOKEN` (role admin),
/// `SHEPHERD_API_TOKENS` (`NAME:ROLE=TOKEN,...`) and the digests of
/// `SHEPHERD_API_CREDENTIALS_FILE`.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct AuthArgs {
    #[arg(skip = Secret::from_env("SHEPHERD_API_TOKEN"))]
    pub api_token: Option<Secret>,

    #[arg(skip = Secret::from_env("SHEPHERD_API_TOKENS"))]
    pub api_tokens: Option<Secret>,

    /// A file of credentials, one `NAME:ROLE:sha256:HEX` per line (optionally
    /// `:agent=AGENT_ID`): digests, never tokens (`printf %s "$TOKEN" |
    /// sha256sum`). Besides SHEPHERD_API_TOKEN (role admin) and
    /// SHEPHERD_API_TOKENS (`NAME:ROLE=TOKEN,...`), which are read from the
    /// environment only.
    #[arg(long, env = "SHEPHERD_API_CREDENTIALS_FILE")]
    pub credentials_file: Option<std::path::PathBuf>,

    /// Serve the API without authentication on an address other than
    /// loopback. Off: a service given a non-loopback address and no token
    /// refuses to start, since anyone who reaches the port could then run
    /// any command as an agent.
    #[arg(
        long,
        env = "SHEPHERD_ALLOW_OPEN_API",
        default_value_t = false,
        action = clap::ArgAction::Set
    )]
    pub allow_open_api: bool,

    /// How long the audit log keeps an entry (`ListAuditEvents`).
    #[arg(long, env = "AUDIT_RETENTION", default_value = "90d", value_parser = crate::config::parse_duration)]
    pub audit_retention: std::time::Duration,
}

impl AuthArgs {
    /// Every credential configured (empty: the API is open). Fails with
    /// one line naming what is wrong.
    pub fn credentials(&self) -> Result<Credentials, String> {
        let mut credentials = Credentials::default();
        if let Some(token) = &self.api_token {
            credentials.add_token(API_TOKEN_CALLER, Role::Admin, token.expose())?;
        }
        if let Some(list) = &self.api_tokens {
            credentials.add_named_tokens(list.expose())?;
        }
        if let Some(path) = &self.credentials_file {
            let text = std::fs::read_to_string(path).map_err(|err| {
                format!("SHEPHERD_API_CREDENTIALS_FILE {}: {err}", path.display())
            })?;
            credentials.add_file(&text)?;
        }
        Ok(credentials)
    }

    /// Whether callers must authenticate.
    pub fn configured(&self) -> bool {
        self.api_token.is_some() || self.api_tokens.is_some() || self.credentials_file.is_some()
    }

    /// How an API on `bound` is protected, or why it must not be served.
    pub fn exposure(&self, what: &str, bound: std::net::SocketAddr) -> Result<Exposure, String> {
        exposure(
            what,
            bound,
            self.configured(),
            self.allow_open_api,
            "SHEPHERD_API_TOKEN (or SHEPHERD_API_TOKENS, SHEPHERD_API_CREDENTIALS_FILE)",
            Some("SHEPHERD_ALLOW_OPEN_API"),
        )
    }

    /// Whether the API `what` may be served on `bound` (see [`exposure`]),
    /// and if so with which credentials; a warning for operators (an API
    /// open by choice) is logged and returned. Both services start with
    /// this, before touching anything else.
    pub fn admit(&self, what: &str, bound: std::net::SocketAddr) -> Result<Admission, String> {
        let warning = self.exposure(what, bound)?.warning(bound);
        let credentials = std::sync::Arc::new(self.credentials()?);
        if !warning.is_empty() {
            tracing::warn!("{warning}");
        }
        Ok(Admission {
            warning,
            credentials,
        })
    }

    /// The token this node presents to its peer nodes for its own calls
    /// (SHEPHERD_API_TOKEN). Calls it forwards for a caller carry that
    /// caller's own credential instead.
    pub fn service_token(&self) -> Option<&str> {
        self.api_token.as_ref().map(Secret::expose)
    }
}

/// What an API may be served with (see [`AuthArgs::admit`]).
pub struct Admission {
    /// What to tell operators (empty: nothing to warn about).
    pub warning: String,
    pub credentials: std::sync::Arc<Credentials>,
}

/// How a bound API is protected (see [`exposure`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exposure {
    /// Every call must present a credential.
    Authenticated,
    /// Open, but only to this machine.
    Loopback,
    /// Open to whoever reaches the address, because a setting says so.
    OpenByChoice,
}

impl Exposure {
    /// What to tell operators about it (start-up log, GetManagerInfo);
    /// empty when there is nothing to warn about.
    pub fn warning(self, bound: std::net::SocketAddr) -> String {
        match self {
            Self::OpenByChoice => format!(
                "the API on {bound} is open (SHEPHERD_ALLOW_OPEN_API): anyone who reaches it can run any command as an agent"
            ),
            Self::Authenticated | Self::Loopback => String::new(),
        }
    }
}

/// Decides whether an API may be served on `bound`: with credentials
/// anywhere; without them on loopback only, unless `allow_open` says the
/// API is meant to be open. The error is one line naming what to set.
pub fn exposure(
    what: &str,
    bound: std::net::SocketAddr,
    authenticated: bool,
    allow_open: bool,
    token_variable: &str,
    allow_variable: Option<&str>,
) -> Result<Exposure, String> {
    if authenticated {
        return Ok(Exposure::Authenticated);
    }
    if bound.ip().is_loopback() {
        return Ok(Exposure::Loopback);
    }
    if allow_open {
        return Ok(Exposure::OpenByChoice);
    }
    let open = allow_variable
        .map(|name| format!(", or set {name}=true to serve it open"))
        .unwrap_or_default();
    Err(format!(
        "refusing to serve {what} on {bound} without authentication: set {token_variable} or listen on 127.0.0.1{open}"
    ))
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
    /// A request that carries a credential already (a call forwarded for
    /// its caller) keeps it.
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(header) = &self.header
            && !request.metadata().contains_key("authorization")
        {
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
    fn configured_credentials_and_their_errors() {
        let args = AuthArgs {
            api_token: Some(Secret::new("shared")),
            api_tokens: Some(Secret::new("alice:approver=a-secret")),
            ..AuthArgs::default()
        };
        let credentials = args.credentials().unwrap();
        assert_eq!(
            credentials.identify("shared").unwrap().name,
            API_TOKEN_CALLER
        );
        assert_eq!(
            credentials.identify("a-secret").unwrap().role,
            Role::Approver
        );
        assert_eq!(args.service_token(), Some("shared"));
        assert!(format!("{args:?}").contains("***") && !format!("{args:?}").contains("shared"));
        let legacy = AuthArgs {
            api_tokens: Some(Secret::new("alice=a-secret")),
            ..AuthArgs::default()
        };
        assert!(legacy.credentials().is_err());
        assert!(AuthArgs::default().credentials().unwrap().is_empty());
    }

    #[test]
    fn a_forwarded_credential_is_kept() {
        let mut client = ClientMetadata::new(Some("node")).unwrap();
        let mut forwarded = Request::new(());
        forwarded
            .metadata_mut()
            .insert("authorization", "Bearer caller".parse().unwrap());
        let sent = client.call(forwarded).unwrap();
        assert_eq!(
            sent.metadata().get("authorization").unwrap(),
            "Bearer caller"
        );
        let own = client.call(Request::new(())).unwrap();
        assert_eq!(own.metadata().get("authorization").unwrap(), "Bearer node");
    }

    #[test]
    fn an_open_api_is_served_on_loopback_only_unless_chosen() {
        let any: std::net::SocketAddr = "0.0.0.0:50051".parse().unwrap();
        let lo: std::net::SocketAddr = "127.0.0.1:50051".parse().unwrap();
        let lo6: std::net::SocketAddr = "[::1]:50051".parse().unwrap();
        let check =
            |bound, auth, allow| exposure("the API", bound, auth, allow, "TOKEN", Some("ALLOW"));
        assert_eq!(check(any, true, false), Ok(Exposure::Authenticated));
        assert_eq!(check(lo, false, false), Ok(Exposure::Loopback));
        assert_eq!(check(lo6, false, false), Ok(Exposure::Loopback));
        assert_eq!(check(any, false, true), Ok(Exposure::OpenByChoice));
        let refused = check(any, false, false).unwrap_err();
        assert!(
            refused.contains("set TOKEN") && refused.contains("ALLOW=true"),
            "{refused}"
        );
        assert!(!refused.contains('\n'));
        let no_opt_in = exposure("mcp", any, false, false, "TOKEN", None).unwrap_err();
        assert!(!no_opt_in.contains("serve it open"), "{no_opt_in}");
        assert!(Exposure::OpenByChoice.warning(any).contains("open"));
        assert!(Exposure::Loopback.warning(lo).is_empty());
    }
}
