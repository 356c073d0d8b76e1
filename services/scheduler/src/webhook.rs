//! Webhook triggers: a signed HTTP delivery becomes one task.
//!
//! What a delivery must pass, in order (each refusal stores nothing): its
//! HMAC-SHA256 signature, made with the workflow's secret and compared in
//! constant time; a JSON body; the workflow's event and action filters; and
//! a mapping from JSON pointers onto valid task fields.
//!
//! A captured delivery must not make a second task, whatever its sender
//! changes. Two signature schemes, each replay-proof:
//! * **Shepherd** (`X-Shepherd-Signature`): the HMAC covers
//!   `"{timestamp}.{delivery id}.{body}"` (`X-Shepherd-Timestamp`, unix
//!   seconds; `X-Shepherd-Delivery`, may be empty), and a timestamp more
//!   than `REPLAY_WINDOW` away from now is refused. A replay inside the
//!   window has the same delivery id (a fresh one breaks the signature),
//!   so it returns the task the first made.
//! * **GitHub** (`X-Hub-Signature-256`): the HMAC covers the body only and
//!   the delivery id is unsigned, so the task's idempotency key is the
//!   body's digest: a replayed body is the same task whatever id comes with
//!   it (for as long as the task is kept).

use hmac::{KeyInit, Mac};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::model::TaskFields;
pub(crate) use crate::model::WebhookTrigger;

/// How far a Shepherd-signed delivery's timestamp may be from now.
pub(crate) const REPLAY_WINDOW: std::time::Duration = std::time::Duration::from_secs(300);

/// What the HTTP edge hands over about one delivery.
pub struct Delivery<'a> {
    pub body: &'a [u8],
    pub signature: Signature<'a>,
    pub event: Option<&'a str>,
    pub delivery_id: Option<&'a str>,
}

/// The signature a delivery came with, by scheme.
#[derive(Debug, Clone, Copy)]
pub enum Signature<'a> {
    /// None of the schemes' headers.
    Missing,
    /// `X-Hub-Signature-256: sha256=<hex HMAC of the body>`.
    GitHub(&'a str),
    /// `X-Shepherd-Signature: sha256=<hex HMAC of "{timestamp}.{delivery id}.{body}">`
    /// with `X-Shepherd-Timestamp` (None: missing).
    Shepherd {
        signature: &'a str,
        timestamp: Option<&'a str>,
    },
}

/// Why a delivery was refused (nothing was stored).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Refused {
    #[error("no such webhook")]
    UnknownHook,
    #[error("{0}")]
    BadSignature(&'static str),
    #[error("the body is not JSON: {0}")]
    NotJson(String),
    #[error("ignored: {0}")]
    Filtered(String),
    #[error("the mapping failed: {0}")]
    Unmappable(String),
}

impl WebhookTrigger {
    /// Checks a delivery against `secret` and this trigger at `now`; the
    /// task fields and idempotency key it makes.
    pub fn accept(
        &self,
        secret: Option<&str>,
        delivery: &Delivery<'_>,
        now: std::time::SystemTime,
    ) -> Result<(TaskFields, String), Refused> {
        let key = verify(secret, delivery, now)?;
        let body: Value = serde_json::from_slice(delivery.body)
            .map_err(|err| Refused::NotJson(err.to_string()))?;
        let event = delivery.event.unwrap_or("");
        if !self.events.is_empty() && !self.events.iter().any(|e| e == event) {
            return Err(Refused::Filtered(format!(
                "event {event:?} is not one of {:?}",
                self.events
            )));
        }
        let action = body.get("action").and_then(Value::as_str).unwrap_or("");
        if !self.actions.is_empty() && !self.actions.iter().any(|a| a == action) {
            return Err(Refused::Filtered(format!(
                "action {action:?} is not one of {:?}",
                self.actions
            )));
        }
        let mut fields = self.map(&body)?;
        if !event.is_empty() {
            fields
                .metadata
                .entry("webhook_event".into())
                .or_insert_with(|| event.to_owned());
        }
        fields
            .validate()
            .map_err(|err| Refused::Unmappable(err.to_string()))?;
        Ok((fields, key))
    }

    fn map(&self, body: &Value) -> Result<TaskFields, Refused> {
        let mut fields = TaskFields::default();
        for (field, pointer) in &self.mapping {
            let value = body.pointer(pointer).ok_or_else(|| {
                Refused::Unmappable(format!("{pointer} is not in the body (for {field})"))
            })?;
            if field == "labels" {
                fields.labels = labels(value).ok_or_else(|| {
                    Refused::Unmappable(format!(
                        "{pointer} must be an array of strings or of objects with a \"name\" (for labels)"
                    ))
                })?;
                continue;
            }
            let text = scalar(value).ok_or_else(|| {
                Refused::Unmappable(format!(
                    "{pointer} must be a string, number or boolean (for {field})"
                ))
            })?;
            match field.as_str() {
                "title" => fields.title = text,
                "body" => fields.body = text,
                "url" => fields.url = text,
                other => {
                    let key = other.strip_prefix("metadata.").unwrap_or(other);
                    fields.metadata.insert(key.to_owned(), text);
                }
            }
        }
        Ok(fields)
    }
}

/// Checks the delivery's signature under `secret` (in constant time) and
/// returns the idempotency key its scheme makes replay-proof.
fn verify(
    secret: Option<&str>,
    delivery: &Delivery<'_>,
    now: std::time::SystemTime,
) -> Result<String, Refused> {
    let secret = secret.ok_or(Refused::BadSignature(
        "the workflow has no webhook secret yet (RotateWebhookSecret makes one)",
    ))?;
    match delivery.signature {
        Signature::Missing => Err(Refused::BadSignature(
            "no signature: send X-Shepherd-Signature with X-Shepherd-Timestamp, or X-Hub-Signature-256",
        )),
        Signature::GitHub(signature) => {
            check_mac(secret, &[delivery.body], signature)?;
            Ok(digest_key(&[delivery.body]))
        }
        Signature::Shepherd {
            signature,
            timestamp,
        } => {
            let timestamp = timestamp.ok_or(Refused::BadSignature(
                "X-Shepherd-Signature needs X-Shepherd-Timestamp (unix seconds)",
            ))?;
            if !within_window(timestamp, now) {
                return Err(Refused::BadSignature(
                    "X-Shepherd-Timestamp is not unix seconds within 5 minutes of now",
                ));
            }
            let id = delivery.delivery_id.unwrap_or_default();
            let prefix = format!("{timestamp}.{id}.");
            check_mac(secret, &[prefix.as_bytes(), delivery.body], signature)?;
            Ok(
                match delivery
                    .delivery_id
                    .filter(|id| !id.is_empty() && id.len() <= 100)
                {
                    Some(id) => format!("webhook:{id}"),
                    None => digest_key(&[prefix.as_bytes(), delivery.body]),
                },
            )
        }
    }
}

/// Whether `timestamp` (unix seconds) is within `REPLAY_WINDOW` of `now`.
fn within_window(timestamp: &str, now: std::time::SystemTime) -> bool {
    let Ok(seconds) = timestamp.parse::<u64>() else {
        return false;
    };
    let at = std::time::UNIX_EPOCH.checked_add(std::time::Duration::from_secs(seconds));
    at.is_some_and(|at| match now.duration_since(at) {
        Ok(age) => age <= REPLAY_WINDOW,
        Err(ahead) => ahead.duration() <= REPLAY_WINDOW,
    })
}

/// Checks "sha256=<hex>" against the HMAC of `parts` under `secret`.
fn check_mac(secret: &str, parts: &[&[u8]], signature: &str) -> Result<(), Refused> {
    let digest = signature
        .strip_prefix("sha256=")
        .and_then(hex)
        .ok_or(Refused::BadSignature(
            "the signature must be sha256=<64 hex digits>",
        ))?;
    let mut mac = hmac::Hmac::<Sha256>::new_from_slice(secret.as_bytes())
        .map_err(|_| Refused::BadSignature("unusable secret"))?;
    for part in parts {
        mac.update(part);
    }
    // `verify_slice` compares in constant time.
    mac.verify_slice(&digest).map_err(|_| {
        Refused::BadSignature("the signature does not match the delivery and the workflow's secret")
    })
}

fn hex(text: &str) -> Option<Vec<u8>> {
    if text.len() != 64 {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

fn scalar(value: &Value) -> Option<String> {
    match value {
        Value::String(text) => Some(text.clone()),
        Value::Number(number) => Some(number.to_string()),
        Value::Bool(flag) => Some(flag.to_string()),
        _ => None,
    }
}

/// GitHub's labels are objects with a name; plain strings do too.
fn labels(value: &Value) -> Option<Vec<String>> {
    value
        .as_array()?
        .iter()
        .map(|label| match label {
            Value::Object(object) => object
                .get("name")
                .and_then(Value::as_str)
                .map(str::to_owned),
            other => scalar(other),
        })
        .collect()
}

/// "webhook:sha256:<digest of parts>": the same delivery, the same task.
fn digest_key(parts: &[&[u8]]) -> String {
    let mut digest = Sha256::new();
    for part in parts {
        digest.update(part);
    }
    format!(
        "webhook:sha256:{}",
        shepherd_platform::auth::hex(&digest.finalize()[..16])
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use std::time::{Duration, SystemTime, UNIX_EPOCH};

    fn mac(secret: &str, parts: &[&[u8]]) -> String {
        let mut mac = hmac::Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
        for part in parts {
            mac.update(part);
        }
        format!(
            "sha256={}",
            shepherd_platform::auth::hex(&mac.finalize().into_bytes())
        )
    }

    fn issues() -> WebhookTrigger {
        WebhookTrigger {
            events: vec!["issues".into()],
            actions: vec!["opened".into()],
            mapping: BTreeMap::from([
                ("title".into(), "/issue/title".into()),
                ("url".into(), "/issue/html_url".into()),
                ("labels".into(), "/issue/labels".into()),
                ("metadata.number".into(), "/issue/number".into()),
            ]),
        }
    }

    const BODY: &[u8] = br#"{"action":"opened","issue":{"title":"Crash","html_url":"https://x/1","number":7,"labels":[{"name":"bug"},{"name":"p1"}]}}"#;
    const NOW: u64 = 1_800_000_000;

    fn now() -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(NOW)
    }

    fn github<'a>(signature: &'a str, id: &'a str, event: &'a str) -> Delivery<'a> {
        Delivery {
            body: BODY,
            signature: Signature::GitHub(signature),
            event: Some(event),
            delivery_id: Some(id),
        }
    }

    fn shepherd<'a>(signature: &'a str, timestamp: &'a str, id: &'a str) -> Delivery<'a> {
        Delivery {
            body: BODY,
            signature: Signature::Shepherd {
                signature,
                timestamp: Some(timestamp),
            },
            event: Some("issues"),
            delivery_id: Some(id),
        }
    }

    #[test]
    fn a_signed_matching_delivery_maps_onto_fields() {
        let signature = mac("s3cret", &[BODY]);
        let (fields, _) = issues()
            .accept(Some("s3cret"), &github(&signature, "abc", "issues"), now())
            .unwrap();
        assert_eq!(fields.title, "Crash");
        assert_eq!(fields.url, "https://x/1");
        assert_eq!(fields.labels, ["bug", "p1"]);
        assert_eq!(fields.metadata["number"], "7");
    }

    /// GitHub's scheme signs the body only: a replay with a fresh delivery
    /// id is the same task (its key is the body's digest).
    #[test]
    fn a_github_replay_with_a_fresh_id_is_the_same_task() {
        let signature = mac("s3cret", &[BODY]);
        let first = issues().accept(Some("s3cret"), &github(&signature, "abc", "issues"), now());
        let replay = issues().accept(
            Some("s3cret"),
            &github(&signature, "fresh", "issues"),
            now(),
        );
        assert_eq!(first.unwrap().1, replay.unwrap().1);
    }

    /// Shepherd's scheme signs timestamp, delivery id and body: a fresh id
    /// or an old timestamp is refused.
    #[test]
    fn a_shepherd_replay_is_refused_or_the_same_task() {
        let ts = NOW.to_string();
        let signed = mac("s3cret", &[format!("{ts}.d1.").as_bytes(), BODY]);
        let (_, key) = issues()
            .accept(Some("s3cret"), &shepherd(&signed, &ts, "d1"), now())
            .unwrap();
        assert_eq!(key, "webhook:d1");
        for (timestamp, id) in [(ts.as_str(), "d2"), ("1799999000", "d1")] {
            assert!(matches!(
                issues().accept(Some("s3cret"), &shepherd(&signed, timestamp, id), now()),
                Err(Refused::BadSignature(_))
            ));
        }
        // Signed properly, but too old or too far ahead.
        for skew in [-301i64, 301] {
            let at = (NOW as i64 + skew).to_string();
            let signature = mac("s3cret", &[format!("{at}.d1.").as_bytes(), BODY]);
            assert!(matches!(
                issues().accept(Some("s3cret"), &shepherd(&signature, &at, "d1"), now()),
                Err(Refused::BadSignature(_))
            ));
        }
        let no_timestamp = Delivery {
            signature: Signature::Shepherd {
                signature: &signed,
                timestamp: None,
            },
            ..shepherd(&signed, &ts, "d1")
        };
        assert!(
            issues()
                .accept(Some("s3cret"), &no_timestamp, now())
                .is_err()
        );
    }

    #[test]
    fn bad_signatures_are_refused() {
        let trigger = issues();
        let wrong = mac("other", &[BODY]);
        for signature in ["sha256=zz", "md5=00", wrong.as_str()] {
            assert!(matches!(
                trigger.accept(Some("s3cret"), &github(signature, "abc", "issues"), now()),
                Err(Refused::BadSignature(_))
            ));
        }
        let missing = Delivery {
            signature: Signature::Missing,
            ..github("", "abc", "issues")
        };
        assert!(matches!(
            trigger.accept(Some("s3cret"), &missing, now()),
            Err(Refused::BadSignature(_))
        ));
        let right = mac("s3cret", &[BODY]);
        assert!(matches!(
            trigger.accept(None, &github(&right, "abc", "issues"), now()),
            Err(Refused::BadSignature(_))
        ));
    }

    #[test]
    fn filters_and_missing_pointers_refuse() {
        let signature = mac("s3cret", &[BODY]);
        assert!(matches!(
            issues().accept(Some("s3cret"), &github(&signature, "abc", "push"), now()),
            Err(Refused::Filtered(_))
        ));
        let mut trigger = issues();
        trigger.mapping.insert("body".into(), "/issue/body".into());
        assert!(matches!(
            trigger.accept(Some("s3cret"), &github(&signature, "abc", "issues"), now()),
            Err(Refused::Unmappable(_))
        ));
    }
}
