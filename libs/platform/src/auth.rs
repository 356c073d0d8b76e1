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
    /// API is open (health and reflection are always open). Callers with
    /// it are recorded as `api-token`.
    #[arg(long, env = "SHEPHERD_API_TOKEN", hide_env_values = true)]
    pub api_token: Option<String>,

    /// Named tokens, `NAME=TOKEN` (comma-separated), accepted besides
    /// --api-token: a caller is recorded by its token's name (who decided
    /// an approval).
    #[arg(
        long,
        env = "SHEPHERD_API_TOKENS",
        value_delimiter = ',',
        hide_env_values = true
    )]
    pub api_tokens: Vec<String>,

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

/// The name recorded for callers with `--api-token`.
pub const API_TOKEN_CALLER: &str = "api-token";

impl AuthArgs {
    /// The server-side check for these tokens.
    pub fn require_bearer(&self) -> Result<RequireBearer, String> {
        let mut tokens = Vec::new();
        if let Some(token) = self.api_token.as_deref().filter(|t| !t.is_empty()) {
            tokens.push((API_TOKEN_CALLER.to_owned(), token.to_owned()));
        }
        for named in &self.api_tokens {
            let (name, token) = named
                .split_once('=')
                .filter(|(name, token)| !name.trim().is_empty() && !token.is_empty())
                .ok_or_else(|| {
                    "SHEPHERD_API_TOKENS must be NAME=TOKEN pairs, comma-separated".to_owned()
                })?;
            tokens.push((name.trim().to_owned(), token.to_owned()));
        }
        Ok(RequireBearer::with_tokens(tokens))
    }

    /// Whether callers must authenticate.
    pub fn configured(&self) -> bool {
        self.api_token.as_deref().is_some_and(|t| !t.is_empty()) || !self.api_tokens.is_empty()
    }

    /// How an API on `bound` is protected, or why it must not be served.
    pub fn exposure(&self, what: &str, bound: std::net::SocketAddr) -> Result<Exposure, String> {
        exposure(
            what,
            bound,
            self.configured(),
            self.allow_open_api,
            "SHEPHERD_API_TOKEN (or SHEPHERD_API_TOKENS)",
            Some("SHEPHERD_ALLOW_OPEN_API"),
        )
    }

    /// The token this service sends to its peers: --api-token, else the
    /// first named one.
    pub fn service_token(&self) -> Option<&str> {
        self.api_token
            .as_deref()
            .filter(|t| !t.is_empty())
            .or_else(|| {
                self.api_tokens
                    .first()
                    .and_then(|named| named.split_once('='))
                    .map(|(_, token)| token)
            })
    }
}

/// Server-side check of the bearer token. Without a configured token every
/// call passes. An accepted call carries its [`Caller`].
#[derive(Clone, Default)]
pub struct RequireBearer {
    /// None: the API is open.
    expected: Option<Arc<[NamedToken]>>,
}

/// A token and the name its callers are recorded by.
struct NamedToken {
    caller: String,
    token: Vec<u8>,
}

/// Who made a call, by the name of the token it presented (a request
/// extension set by [`RequireBearer`]).
#[derive(Clone, Debug)]
pub struct Caller(pub String);

impl RequireBearer {
    pub fn new(token: Option<&str>) -> Self {
        Self::with_tokens(
            token
                .filter(|t| !t.is_empty())
                .map(|t| (API_TOKEN_CALLER.to_owned(), t.to_owned())),
        )
    }

    fn with_tokens(tokens: impl IntoIterator<Item = (String, String)>) -> Self {
        let tokens: Vec<NamedToken> = tokens
            .into_iter()
            .map(|(caller, token)| NamedToken {
                caller,
                token: token.into_bytes(),
            })
            .collect();
        Self {
            expected: (!tokens.is_empty()).then(|| Arc::from(tokens)),
        }
    }
}

/// Who made `request`: its token's name, or `anonymous` and its address
/// when the API is open.
pub fn caller<T>(request: &Request<T>) -> String {
    match request.extensions().get::<Caller>() {
        Some(Caller(name)) => name.clone(),
        None => match request.remote_addr() {
            Some(addr) => format!("anonymous ({})", addr.ip()),
            None => "anonymous".to_owned(),
        },
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
        // Every token is compared, so the time taken does not tell which
        // one (if any) matched.
        let mut matched = None;
        for named in expected.iter() {
            if constant_time_eq(presented.as_bytes(), &named.token) {
                matched = Some(named.caller.clone());
            }
        }
        let name = matched.ok_or_else(|| Status::unauthenticated("invalid bearer token"))?;
        let mut request = request;
        request.extensions_mut().insert(Caller(name));
        Ok(request)
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

    #[test]
    fn named_tokens_name_their_callers() {
        let args = AuthArgs {
            api_token: Some("shared".into()),
            api_tokens: vec!["alice=a-secret".into(), "bob=b-secret".into()],
            allow_open_api: false,
        };
        let mut server = args.require_bearer().unwrap();
        let call = |token: &str| {
            ClientMetadata::new(Some(token))
                .unwrap()
                .call(Request::new(()))
                .unwrap()
        };
        let accepted = server.call(call("b-secret")).unwrap();
        assert_eq!(caller(&accepted), "bob");
        let accepted = server.call(call("shared")).unwrap();
        assert_eq!(caller(&accepted), API_TOKEN_CALLER);
        assert!(server.call(call("c-secret")).is_err());
        assert_eq!(caller(&Request::new(())), "anonymous");
        assert_eq!(args.service_token(), Some("shared"));

        let bad = AuthArgs {
            api_tokens: vec!["no-equals-sign".into()],
            ..AuthArgs::default()
        };
        assert!(bad.require_bearer().is_err());
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
