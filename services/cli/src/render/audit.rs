//! Audit entries of either service.

use serde_json::{Value, json};

use super::format::{Render, shown, time};

/// An audit entry and the service that kept it.
pub(crate) struct Audited(pub &'static str, pub shepherd_proto::audit::v1::AuditEvent);

impl Render for Audited {
    fn headers() -> &'static [&'static str] {
        &[
            "time", "service", "who", "role", "rpc", "target", "outcome", "peer",
        ]
    }

    fn row(&self) -> Vec<String> {
        let event = &self.1;
        vec![
            time(event.time.as_ref()),
            self.0.to_owned(),
            shown(&event.who),
            event.role.clone(),
            event.rpc.clone(),
            shown(&event.target),
            event.outcome.clone(),
            event.peer.clone(),
        ]
    }

    fn json(&self) -> Value {
        let event = &self.1;
        json!({
            "id": event.id,
            "time": time(event.time.as_ref()),
            "service": self.0,
            "who": event.who,
            "role": event.role,
            "rpc": event.rpc,
            "target": event.target,
            "outcome": event.outcome,
            "peer": event.peer,
        })
    }
}
