//! Webhook triggers: a signed HTTP delivery becomes one task.
//!
//! What a delivery must pass, in order (each refusal stores nothing): its
//! HMAC-SHA256 signature over the raw body, made with the workflow's
//! secret and compared in constant time; a JSON body; the workflow's event
//! and action filters; and a mapping from JSON pointers onto valid task
//! fields. Its delivery id (GitHub's, a generic header's, or else the
//! body's SHA-256) is the task's idempotency key: a redelivery returns the
//! task the first delivery made.

use std::collections::BTreeMap;

use hmac::{KeyInit, Mac};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::error::Error;
use crate::model::TaskFields;

/// Most entries in each filter and in the mapping, and their lengths.
pub(crate) const MAX_FILTERS: usize = 32;
pub(crate) const MAX_FILTER_LEN: usize = 100;
pub(crate) const MAX_MAPPINGS: usize = 32;
pub(crate) const MAX_POINTER_LEN: usize = 512;

/// A workflow's webhook trigger (the secret is stored apart from it, and
/// never returned but once).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct WebhookTrigger {
    /// Only these events; empty: any.
    pub events: Vec<String>,
    /// Only these JSON `action`s; empty: any.
    pub actions: Vec<String>,
    /// Task field -> JSON pointer into the body.
    pub mapping: BTreeMap<String, String>,
}

/// What the HTTP edge hands over about one delivery.
pub struct Delivery<'a> {
    pub body: &'a [u8],
    /// "sha256=<hex>".
    pub signature: Option<&'a str>,
    pub event: Option<&'a str>,
    pub delivery_id: Option<&'a str>,
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
    pub fn validate(&self) -> Result<(), Error> {
        for (field, values) in [
            ("workflow.trigger.webhook.events", &self.events),
            ("workflow.trigger.webhook.actions", &self.actions),
        ] {
            if values.len() > MAX_FILTERS
                || values.iter().any(|v| {
                    v.is_empty() || v.len() > MAX_FILTER_LEN || v.chars().any(char::is_control)
                })
            {
                return Err(Error::invalid(
                    field,
                    format!(
                        "at most {MAX_FILTERS} entries, each 1-{MAX_FILTER_LEN} printable characters"
                    ),
                ));
            }
        }
        if self.mapping.len() > MAX_MAPPINGS {
            return Err(Error::invalid(
                "workflow.trigger.webhook.mapping",
                format!("at most {MAX_MAPPINGS} entries"),
            ));
        }
        for (field, pointer) in &self.mapping {
            let known = matches!(field.as_str(), "title" | "body" | "url" | "labels")
                || field.strip_prefix("metadata.").is_some_and(|key| {
                    !key.is_empty() && key.len() <= crate::model::MAX_METADATA_KEY
                });
            if !known {
                return Err(Error::invalid(
                    "workflow.trigger.webhook.mapping",
                    format!(
                        "{} is not a task field; use title, body, url, labels or metadata.KEY",
                        shepherd_platform::validate::quote(field)
                    ),
                ));
            }
            if !(pointer.is_empty() || pointer.starts_with('/')) || pointer.len() > MAX_POINTER_LEN
            {
                return Err(Error::invalid(
                    format!("workflow.trigger.webhook.mapping[{field}]"),
                    format!(
                        "must be a JSON pointer (\"\" or starting with '/', at most {MAX_POINTER_LEN} bytes), e.g. /issue/title"
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Checks a delivery against `secret` and this trigger; the task fields
    /// and idempotency key it makes.
    pub fn accept(
        &self,
        secret: Option<&str>,
        delivery: &Delivery<'_>,
    ) -> Result<(TaskFields, String), Refused> {
        verify(secret, delivery.body, delivery.signature)?;
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
        Ok((fields, idempotency_key(delivery.delivery_id, delivery.body)))
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

/// Checks "sha256=<hex>" against the HMAC of `body` under `secret`, in
/// constant time.
fn verify(secret: Option<&str>, body: &[u8], signature: Option<&str>) -> Result<(), Refused> {
    let secret = secret.ok_or(Refused::BadSignature(
        "the workflow has no webhook secret yet (RotateWebhookSecret makes one)",
    ))?;
    let signature = signature.ok_or(Refused::BadSignature(
        "no signature: send X-Hub-Signature-256 or X-Shepherd-Signature: sha256=<hex HMAC-SHA256 of the body>",
    ))?;
    let digest = signature
        .strip_prefix("sha256=")
        .and_then(hex)
        .ok_or(Refused::BadSignature(
            "the signature must be sha256=<64 hex digits>",
        ))?;
    let mut mac = hmac::Hmac::<Sha256>::new_from_slice(secret.as_bytes())
        .map_err(|_| Refused::BadSignature("unusable secret"))?;
    mac.update(body);
    // `verify_slice` compares in constant time.
    mac.verify_slice(&digest).map_err(|_| {
        Refused::BadSignature("the signature does not match the body and the workflow's secret")
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

/// "webhook:<delivery id>", or the body's digest when the sender gives no
/// id (an identical redelivery is then the same task too).
pub(crate) fn idempotency_key(delivery_id: Option<&str>, body: &[u8]) -> String {
    match delivery_id.filter(|id| !id.is_empty() && id.len() <= 100) {
        Some(id) => format!("webhook:{id}"),
        None => {
            let digest = Sha256::digest(body);
            format!(
                "webhook:sha256:{}",
                shepherd_platform::auth::hex(&digest[..16])
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sign(secret: &str, body: &[u8]) -> String {
        let mut mac = hmac::Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
        mac.update(body);
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

    fn delivery<'a>(signature: Option<&'a str>, event: &'a str) -> Delivery<'a> {
        Delivery {
            body: BODY,
            signature,
            event: Some(event),
            delivery_id: Some("abc"),
        }
    }

    #[test]
    fn a_signed_matching_delivery_maps_onto_fields() {
        let signature = sign("s3cret", BODY);
        let (fields, key) = issues()
            .accept(Some("s3cret"), &delivery(Some(&signature), "issues"))
            .unwrap();
        assert_eq!(fields.title, "Crash");
        assert_eq!(fields.url, "https://x/1");
        assert_eq!(fields.labels, ["bug", "p1"]);
        assert_eq!(fields.metadata["number"], "7");
        assert_eq!(key, "webhook:abc");
    }

    #[test]
    fn bad_signatures_are_refused() {
        let trigger = issues();
        let wrong = sign("other", BODY);
        for signature in [
            None,
            Some("sha256=zz"),
            Some("md5=00"),
            Some(wrong.as_str()),
        ] {
            assert!(matches!(
                trigger.accept(Some("s3cret"), &delivery(signature, "issues")),
                Err(Refused::BadSignature(_))
            ));
        }
        let right = sign("s3cret", BODY);
        assert!(matches!(
            trigger.accept(None, &delivery(Some(&right), "issues")),
            Err(Refused::BadSignature(_))
        ));
    }

    #[test]
    fn filters_and_missing_pointers_refuse() {
        let signature = sign("s3cret", BODY);
        assert!(matches!(
            issues().accept(Some("s3cret"), &delivery(Some(&signature), "push")),
            Err(Refused::Filtered(_))
        ));
        let mut trigger = issues();
        trigger.mapping.insert("body".into(), "/issue/body".into());
        assert!(matches!(
            trigger.accept(Some("s3cret"), &delivery(Some(&signature), "issues")),
            Err(Refused::Unmappable(_))
        ));
    }

    #[test]
    fn keys_fall_back_to_the_body_digest() {
        assert_eq!(idempotency_key(None, b"x"), idempotency_key(Some(""), b"x"));
        assert_ne!(idempotency_key(None, b"x"), idempotency_key(None, b"y"));
    }
}
