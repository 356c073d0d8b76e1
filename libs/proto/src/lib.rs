//! Generated code for Shepherd's gRPC contract (`proto/`).

/// Encoded `FileDescriptorSet` of every Shepherd proto, for server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/shepherd_descriptor.bin"));

pub mod agentmanager {
    // Generated: a task message is much larger than a heartbeat, and boxing
    // it would buy nothing on this path.
    #[allow(clippy::large_enum_variant)]
    pub mod v1 {
        tonic::include_proto!("shepherd.agentmanager.v1");
    }
}

pub mod audit {
    pub mod v1 {
        tonic::include_proto!("shepherd.audit.v1");
    }
}

pub mod scheduler {
    pub mod v1 {
        tonic::include_proto!("shepherd.scheduler.v1");
    }
}

mod approval_digest;
pub mod budget_text;

/// The tool a spent budget's approval names at the agent-manager (it has no
/// task; its input says what is spent): how the scheduler tells such an
/// approval's decision from a tool approval's.
pub const BUDGET_APPROVAL_TOOL: &str = "budget";
pub mod event_kinds;

pub use approval_digest::approval_digest;
pub mod task_env;

/// A proto enum value's name as people read it: `AGENT_STATUS_READY` with
/// the prefix `AGENT_STATUS_` is `ready` (what the CLI, the console, `top`
/// and the scheduler's diagnosis show).
pub fn short_name(name: &str, prefix: &str) -> String {
    name.strip_prefix(prefix)
        .unwrap_or(name)
        .to_ascii_lowercase()
}

#[cfg(test)]
mod tests {
    #[test]
    fn enum_names_read_short() {
        assert_eq!(
            super::short_name("AGENT_STATUS_READY", "AGENT_STATUS_"),
            "ready"
        );
        assert_eq!(super::short_name("OTHER", "AGENT_STATUS_"), "other");
    }
}
