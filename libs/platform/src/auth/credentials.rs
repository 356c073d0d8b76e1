//! The credentials a service accepts: each a name (who is recorded as
//! having made a call), a role, optionally the agent it was handed to, and
//! the SHA-256 digest of its token. Tokens given in clear are hashed when
//! read; a credentials file holds digests only, so it can be kept without
//! holding a secret.
//!
//! Sources (environment and file only, never a command line, where any
//! local user reads it in `ps`):
//! * `SHEPHERD_API_TOKEN`: one token, name `api-token`, role `admin`;
//! * `SHEPHERD_API_TOKENS`: `NAME:ROLE=TOKEN`, comma-separated;
//! * `SHEPHERD_API_CREDENTIALS_FILE`: one `NAME:ROLE:sha256:HEX` per line
//!   (`#` comments), optionally `:agent=AGENT_ID` at the end: the
//!   credential of a tool an agent uses (e.g. its MCP token), which can
//!   never decide its own agent's approvals.

use sha2::{Digest, Sha256};

use super::roles::Role;

/// The name recorded for callers with `SHEPHERD_API_TOKEN`.
pub const API_TOKEN_CALLER: &str = "api-token";

/// Names no credential may take: the system's own (expiries and
/// withdrawals are decided by `shepherd`) and the open API's.
const RESERVED: &[&str] = &["shepherd", "anonymous"];

/// Who made a call (a request extension set by the gate).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Caller {
    pub name: String,
    pub role: Role,
    /// The agent this credential was handed to, if any.
    pub agent: Option<String>,
}

#[derive(Clone)]
struct Credential {
    caller: Caller,
    digest: [u8; 32],
}

/// Every credential a service accepts. Empty: the API is open.
#[derive(Clone, Default)]
pub struct Credentials {
    entries: Vec<Credential>,
}

impl std::fmt::Debug for Credentials {
    /// Names and roles only: never a digest.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.entries.iter().map(|c| (&c.caller.name, c.caller.role)))
            .finish()
    }
}

impl Credentials {
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The caller a presented token names, if any. Every credential is
    /// compared, in time that does not depend on which one (if any)
    /// matched.
    pub fn identify(&self, presented: &str) -> Option<Caller> {
        let digest = sha256(presented);
        let mut matched = None;
        for credential in &self.entries {
            if super::constant_time_eq(&digest, &credential.digest) {
                matched = Some(credential.caller.clone());
            }
        }
        matched
    }

    /// Adds a token given in clear.
    pub fn add_token(&mut self, name: &str, role: Role, token: &str) -> Result<(), String> {
        if token.is_empty() {
            return Err(format!("the token of {name} is empty"));
        }
        self.add(name, role, None, sha256(token))
    }

    /// Adds `NAME:ROLE=TOKEN,...` (`SHEPHERD_API_TOKENS`).
    pub fn add_named_tokens(&mut self, list: &str) -> Result<(), String> {
        for entry in list.split(',').filter(|entry| !entry.trim().is_empty()) {
            let (who, token) = entry.split_once('=').ok_or_else(|| {
                "SHEPHERD_API_TOKENS must be NAME:ROLE=TOKEN entries, comma-separated".to_owned()
            })?;
            let (name, role) = who.trim().split_once(':').ok_or_else(|| {
                format!(
                    "SHEPHERD_API_TOKENS: give {} a role: NAME:ROLE=TOKEN, ROLE one of {}",
                    crate::validate::quote(who.trim()),
                    role_names()
                )
            })?;
            self.add_token(name, parse_role(role)?, token)?;
        }
        Ok(())
    }

    /// Adds the lines of a credentials file (`NAME:ROLE:sha256:HEX` with an
    /// optional `:agent=ID`).
    pub fn add_file(&mut self, text: &str) -> Result<(), String> {
        for (number, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let at = |why: String| format!("credentials file, line {}: {why}", number + 1);
            let fields: Vec<&str> = line.split(':').collect();
            let (name, role, scheme, hex, agent) = match fields.as_slice() {
                [name, role, scheme, hex] => (*name, *role, *scheme, *hex, None),
                [name, role, scheme, hex, agent] => {
                    let agent = agent
                        .strip_prefix("agent=")
                        .and_then(|id| uuid::Uuid::parse_str(id).ok())
                        .ok_or_else(|| {
                            at("the fifth field must be agent=AGENT_ID (a UUID)".into())
                        })?;
                    (*name, *role, *scheme, *hex, Some(agent.to_string()))
                }
                _ => return Err(at("expected NAME:ROLE:sha256:HEX[:agent=AGENT_ID]".into())),
            };
            if scheme != "sha256" {
                return Err(at("only sha256 digests are accepted".into()));
            }
            let digest =
                parse_digest(hex).ok_or_else(|| at("the digest must be 64 hex digits".into()))?;
            self.add(name, parse_role(role).map_err(&at)?, agent, digest)
                .map_err(at)?;
        }
        Ok(())
    }

    fn add(
        &mut self,
        name: &str,
        role: Role,
        agent: Option<String>,
        digest: [u8; 32],
    ) -> Result<(), String> {
        check_name(name)?;
        if self.entries.iter().any(|c| c.caller.name == name) {
            return Err(format!("two credentials are named {name}"));
        }
        self.entries.push(Credential {
            caller: Caller {
                name: name.to_owned(),
                role,
                agent,
            },
            digest,
        });
        Ok(())
    }
}

/// The line a credentials file holds for `token` (the digest is what
/// `printf %s "$TOKEN" | sha256sum` prints).
pub fn file_line(name: &str, role: Role, token: &str) -> String {
    format!("{name}:{role}:sha256:{}", super::hex(&sha256(token)))
}

fn sha256(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

fn parse_digest(hex: &str) -> Option<[u8; 32]> {
    if hex.len() != 64 {
        return None;
    }
    let mut digest = [0u8; 32];
    for (i, byte) in digest.iter_mut().enumerate() {
        *byte = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(digest)
}

fn parse_role(text: &str) -> Result<Role, String> {
    Role::parse(text.trim()).ok_or_else(|| {
        format!(
            "{} is not a role; use one of {}",
            crate::validate::quote(text.trim()),
            role_names()
        )
    })
}

fn role_names() -> String {
    Role::ALL.map(Role::as_str).join(", ")
}

/// A credential's name: 1-63 of `[A-Za-z0-9._@-]`, not a reserved one.
fn check_name(name: &str) -> Result<(), String> {
    let valid = !name.is_empty()
        && name.len() <= 63
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '@' | '-'));
    if !valid {
        return Err(format!(
            "credential name {} must be 1-63 of A-Z a-z 0-9 . _ @ -",
            crate::validate::quote(name)
        ));
    }
    if RESERVED
        .iter()
        .any(|reserved| name.eq_ignore_ascii_case(reserved))
    {
        return Err(format!(
            "credential name {name} is reserved (the system's own decisions are recorded under it)"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_in_clear_and_digests_identify_their_callers() {
        let mut credentials = Credentials::default();
        credentials
            .add_token(API_TOKEN_CALLER, Role::Admin, "root-token")
            .unwrap();
        credentials
            .add_named_tokens("alice:approver=a-secret, bot:viewer=b-secret")
            .unwrap();
        credentials
            .add_file(&format!(
                "# people\n{}\n{}:agent=01a2504a-0ed8-72cd-92b0-8168cc6a0b08\n",
                file_line("carol", Role::Operator, "c-secret"),
                file_line("mcp-of-builder", Role::Approver, "m-secret")
            ))
            .unwrap();
        let who = |token: &str| credentials.identify(token);
        assert_eq!(who("root-token").unwrap().role, Role::Admin);
        assert_eq!(who("a-secret").unwrap().name, "alice");
        assert_eq!(who("b-secret").unwrap().role, Role::Viewer);
        assert_eq!(who("c-secret").unwrap().role, Role::Operator);
        let mcp = who("m-secret").unwrap();
        assert_eq!(
            (mcp.role, mcp.agent.as_deref()),
            (Role::Approver, Some("01a2504a-0ed8-72cd-92b0-8168cc6a0b08"))
        );
        assert!(who("nope").is_none());
        assert!(who("").is_none());
        // Debug shows names and roles, never a secret or digest.
        let shown = format!("{credentials:?}");
        assert!(
            shown.contains("alice") && !shown.contains("secret"),
            "{shown}"
        );
    }

    #[test]
    fn bad_credentials_are_refused_with_the_reason() {
        let refused = |list: &str| Credentials::default().add_named_tokens(list).unwrap_err();
        assert!(
            refused("alice=a-secret").contains("give"),
            "a role is required"
        );
        assert!(refused("alice:root=a").contains("not a role"));
        assert!(refused("shepherd:admin=x").contains("reserved"));
        assert!(refused("Anonymous:viewer=x").contains("reserved"));
        assert!(refused("a b:viewer=x").contains("must be"));
        assert!(refused("a:viewer=").contains("empty"));
        assert!(refused("a:viewer=x,a:admin=y").contains("two credentials"));
        let file = |text: &str| Credentials::default().add_file(text).unwrap_err();
        assert!(file("a:viewer:md5:00").contains("sha256"));
        assert!(file("a:viewer:sha256:zz").contains("64 hex"));
        assert!(file("a:viewer").contains("line 1"));
        assert!(file("a:viewer:sha256:00:who=x").contains("agent="));
    }
}
