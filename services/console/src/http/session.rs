//! Browser sessions: an HttpOnly, SameSite=Strict cookie naming a random
//! session, and a CSRF token derived from it that every POST must carry in
//! a header (a cross-site form cannot set headers, and cannot read the
//! token). With an API token configured, a session exists only after the
//! user typed that token in.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::http::HeaderMap;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use shepherd_platform::auth::{constant_time_eq, hex, random_secret};

pub const COOKIE: &str = "shepherd_console";
pub const CSRF_HEADER: &str = "x-csrf-token";
/// How long a session lives without being used.
const IDLE: Duration = Duration::from_secs(12 * 3600);

pub struct Sessions {
    /// The token a user must type in (None: open console).
    token: Option<String>,
    /// Key of the CSRF tokens (per process: a restart signs everyone out).
    key: String,
    live: Mutex<HashMap<String, Instant>>,
}

impl Sessions {
    pub fn new(token: Option<String>) -> anyhow::Result<Self> {
        Ok(Self {
            token: token.filter(|t| !t.is_empty()),
            key: random_secret()?,
            live: Mutex::new(HashMap::new()),
        })
    }

    pub fn token_required(&self) -> bool {
        self.token.is_some()
    }

    /// The live session the request's cookie names.
    pub fn current(&self, headers: &HeaderMap) -> Option<String> {
        let id = cookie(headers)?;
        let mut live = self.live.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        live.retain(|_, used| now.duration_since(*used) < IDLE);
        let used = live.get_mut(&id)?;
        *used = now;
        Some(id)
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
        self.live
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id.clone(), Instant::now());
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

/// `Set-Cookie` for a session (`None`: clear it).
pub fn set_cookie(id: Option<&str>) -> String {
    match id {
        Some(id) => format!("{COOKIE}={id}; Path=/; HttpOnly; SameSite=Strict"),
        None => format!("{COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0"),
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
}
