//! Browser sessions: an HttpOnly, SameSite=Strict cookie (Secure when the
//! console is reached over TLS) naming a random session, and a CSRF token
//! derived from it that every POST must carry in a header (a cross-site
//! form cannot set headers, and cannot read the token). With an API token
//! configured, a session exists only after the user typed that token in,
//! and failed sign-ins are throttled per client.
//!
//! Bounded: a session ends after `IDLE` unused or `LIFETIME` in all, and at
//! most `MAX_SESSIONS` live at once (the least recently used goes first),
//! so cookieless requests to an open console cannot grow the table.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::http::HeaderMap;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use shepherd_platform::auth::{constant_time_eq, hex, random_secret};

pub const COOKIE: &str = "shepherd_console";
pub const CSRF_HEADER: &str = "x-csrf-token";
/// How long a session lives without being used, and in all.
const IDLE: Duration = Duration::from_secs(2 * 3600);
const LIFETIME: Duration = Duration::from_secs(12 * 3600);
/// Most sessions alive at once.
pub const MAX_SESSIONS: usize = 1024;
/// Failed sign-ins a client may make per `SIGN_IN_WINDOW`.
pub const SIGN_IN_FAILURES: u32 = 5;
const SIGN_IN_WINDOW: Duration = Duration::from_secs(60);
/// Clients whose failures are remembered at once.
const MAX_CLIENTS: usize = 4096;

/// When a session began and was last used.
#[derive(Clone, Copy)]
struct Lived {
    opened: Instant,
    used: Instant,
}

pub struct Sessions {
    /// The token a user must type in (None: open console).
    token: Option<String>,
    /// Key of the CSRF tokens (per process: a restart signs everyone out).
    key: String,
    live: Mutex<HashMap<String, Lived>>,
    /// Cookies are `Secure` (the console is reached over TLS).
    secure: bool,
    /// Failed sign-ins per client: how many, since when.
    failures: Mutex<HashMap<std::net::IpAddr, (u32, Instant)>>,
}

/// Why a sign-in did not open a session.
#[derive(Debug, PartialEq, Eq)]
pub enum SignInRefused {
    WrongToken,
    /// Too many failures from this client: try again later.
    Throttled,
}

impl Sessions {
    pub fn new(token: Option<String>) -> anyhow::Result<Self> {
        Ok(Self {
            token: token.filter(|t| !t.is_empty()),
            key: random_secret()?,
            live: Mutex::new(HashMap::new()),
            secure: false,
            failures: Mutex::new(HashMap::new()),
        })
    }

    /// Cookies with the `Secure` attribute.
    pub fn secure(mut self, secure: bool) -> Self {
        self.secure = secure;
        self
    }

    /// A session for the token a client typed in, unless it failed too
    /// often lately.
    pub fn sign_in(
        &self,
        client: std::net::IpAddr,
        presented: &str,
    ) -> Result<Option<String>, SignInRefused> {
        let now = Instant::now();
        {
            let failures = self.failures.lock().unwrap_or_else(|p| p.into_inner());
            if let Some((count, since)) = failures.get(&client)
                && *count >= SIGN_IN_FAILURES
                && now.duration_since(*since) < SIGN_IN_WINDOW
            {
                return Err(SignInRefused::Throttled);
            }
        }
        if let Some(token) = &self.token
            && !constant_time_eq(token.as_bytes(), presented.as_bytes())
        {
            let mut failures = self.failures.lock().unwrap_or_else(|p| p.into_inner());
            failures.retain(|_, (_, since)| now.duration_since(*since) < SIGN_IN_WINDOW);
            if failures.len() >= MAX_CLIENTS && !failures.contains_key(&client) {
                // Full of distinct clients: forget the oldest.
                if let Some(oldest) = failures
                    .iter()
                    .min_by_key(|(_, (_, since))| *since)
                    .map(|(ip, _)| *ip)
                {
                    failures.remove(&oldest);
                }
            }
            let entry = failures.entry(client).or_insert((0, now));
            entry.0 += 1;
            return Err(SignInRefused::WrongToken);
        }
        Ok(self.open(Some(presented)))
    }

    pub fn token_required(&self) -> bool {
        self.token.is_some()
    }

    /// The live session the request's cookie names.
    pub fn current(&self, headers: &HeaderMap) -> Option<String> {
        let id = cookie(headers)?;
        let mut live = self.live.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        live.retain(|_, lived| alive(lived, now));
        let lived = live.get_mut(&id)?;
        lived.used = now;
        Some(id)
    }

    /// How many sessions are alive.
    pub fn count(&self) -> usize {
        self.live.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// A new session, if `presented` is the token (or none is needed).
    pub fn open(&self, presented: Option<&str>) -> Option<String> {
        if let Some(token) = &self.token {
            let presented = presented.unwrap_or_default();
            if !constant_time_eq(token.as_bytes(), presented.as_bytes()) {
                return None;
            }
        }
        let id = random_secret().ok()?;
        let now = Instant::now();
        let mut live = self.live.lock().unwrap_or_else(|p| p.into_inner());
        live.retain(|_, lived| alive(lived, now));
        while live.len() >= MAX_SESSIONS {
            let Some(oldest) = live
                .iter()
                .min_by_key(|(_, lived)| lived.used)
                .map(|(id, _)| id.clone())
            else {
                break;
            };
            live.remove(&oldest);
        }
        live.insert(
            id.clone(),
            Lived {
                opened: now,
                used: now,
            },
        );
        Some(id)
    }

    pub fn close(&self, id: &str) {
        self.live
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id);
    }

    /// The CSRF token of a session.
    pub fn csrf(&self, session: &str) -> String {
        let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(self.key.as_bytes())
            .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
        mac.update(session.as_bytes());
        hex(&mac.finalize().into_bytes())
    }

    /// Whether the request carries its session's CSRF token.
    pub fn csrf_ok(&self, session: &str, headers: &HeaderMap) -> bool {
        let presented = headers
            .get(CSRF_HEADER)
            .and_then(|value| value.to_str().ok())
            .unwrap_or_default();
        constant_time_eq(self.csrf(session).as_bytes(), presented.as_bytes())
    }
}

fn alive(lived: &Lived, now: Instant) -> bool {
    now.duration_since(lived.used) < IDLE && now.duration_since(lived.opened) < LIFETIME
}

impl Sessions {
    /// `Set-Cookie` for a session (`None`: clear it).
    pub fn set_cookie(&self, id: Option<&str>) -> String {
        let secure = if self.secure { "; Secure" } else { "" };
        match id {
            Some(id) => format!(
                "{COOKIE}={id}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}{secure}",
                LIFETIME.as_secs()
            ),
            None => format!("{COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0{secure}"),
        }
    }
}

fn cookie(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(axum::http::header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_cookie(id: &str, csrf: Option<&str>) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(
            axum::http::header::COOKIE,
            format!("other=1; {COOKIE}={id}")
                .parse()
                .unwrap_or_else(|_| unreachable!()),
        );
        if let Some(csrf) = csrf {
            headers.insert(CSRF_HEADER, csrf.parse().unwrap_or_else(|_| unreachable!()));
        }
        headers
    }

    #[test]
    fn a_token_protected_console_opens_sessions_only_for_the_token() {
        let sessions = Sessions::new(Some("s3cret".into())).unwrap_or_else(|_| unreachable!());
        assert!(sessions.open(None).is_none());
        assert!(sessions.open(Some("wrong")).is_none());
        let id = sessions.open(Some("s3cret")).unwrap_or_default();
        assert_eq!(sessions.current(&with_cookie(&id, None)), Some(id.clone()));
        assert_eq!(sessions.current(&with_cookie("forged", None)), None);
        sessions.close(&id);
        assert_eq!(sessions.current(&with_cookie(&id, None)), None);
    }

    #[test]
    fn csrf_tokens_are_per_session() {
        let sessions = Sessions::new(None).unwrap_or_else(|_| unreachable!());
        let a = sessions.open(None).unwrap_or_default();
        let b = sessions.open(None).unwrap_or_default();
        let token = sessions.csrf(&a);
        assert!(sessions.csrf_ok(&a, &with_cookie(&a, Some(&token))));
        assert!(!sessions.csrf_ok(&b, &with_cookie(&b, Some(&token))));
        assert!(!sessions.csrf_ok(&a, &with_cookie(&a, None)));
    }

    #[test]
    fn sessions_are_bounded_and_sign_ins_throttled() {
        let open = Sessions::new(None).unwrap_or_else(|_| unreachable!());
        let first = open.open(None).unwrap_or_default();
        for _ in 0..MAX_SESSIONS + 10 {
            open.open(None);
        }
        assert_eq!(open.count(), MAX_SESSIONS);
        assert_eq!(
            open.current(&with_cookie(&first, None)),
            None,
            "the oldest went first"
        );

        let guarded = Sessions::new(Some("s3cret".into())).unwrap_or_else(|_| unreachable!());
        let (me, other): (std::net::IpAddr, std::net::IpAddr) = (
            "10.0.0.1".parse().unwrap_or_else(|_| unreachable!()),
            "10.0.0.2".parse().unwrap_or_else(|_| unreachable!()),
        );
        for _ in 0..SIGN_IN_FAILURES {
            assert_eq!(guarded.sign_in(me, "guess"), Err(SignInRefused::WrongToken));
        }
        assert_eq!(
            guarded.sign_in(me, "s3cret"),
            Err(SignInRefused::Throttled),
            "even the right token, for a while"
        );
        assert!(
            matches!(guarded.sign_in(other, "s3cret"), Ok(Some(_))),
            "others are not held back"
        );
    }

    #[test]
    fn cookies_are_secure_over_tls_and_expire() {
        let plain = Sessions::new(None).unwrap_or_else(|_| unreachable!());
        assert!(!plain.set_cookie(Some("id")).contains("Secure"));
        assert!(plain.set_cookie(Some("id")).contains("Max-Age=43200"));
        let tls = Sessions::new(None)
            .unwrap_or_else(|_| unreachable!())
            .secure(true);
        assert!(tls.set_cookie(Some("id")).ends_with("; Secure"));
    }
}
