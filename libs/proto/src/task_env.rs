//! The environment variables that carry a task's fields to the program
//! that runs it. Part of the contract: the scheduler renders shell scripts
//! that refer to these names, and agents set them.

/// The task's title.
pub const TITLE: &str = "SHEPHERD_TASK_TITLE";
/// The task's body.
pub const BODY: &str = "SHEPHERD_TASK_BODY";
/// The task's URL.
pub const URL: &str = "SHEPHERD_TASK_URL";
/// The task's labels, comma-separated.
pub const LABELS: &str = "SHEPHERD_TASK_LABELS";
/// The task's id.
pub const ID: &str = "SHEPHERD_TASK_ID";
/// The attempt being run (1 for the first).
pub const ATTEMPT: &str = "SHEPHERD_TASK_ATTEMPT";
/// The workflow's id and name.
pub const WORKFLOW_ID: &str = "SHEPHERD_WORKFLOW_ID";
pub const WORKFLOW_NAME: &str = "SHEPHERD_WORKFLOW_NAME";

/// The task's tool policy, comma-separated.
pub const ALLOWED_TOOLS: &str = "SHEPHERD_ALLOWED_TOOLS";
pub const DENIED_TOOLS: &str = "SHEPHERD_DENIED_TOOLS";
/// Tools to ask approval for before use, comma-separated.
pub const ASK_TOOLS: &str = "SHEPHERD_ASK_TOOLS";

/// Where a task's program asks for approvals (`shepherd-agent approve`):
/// the reference agent's unix socket, and the token naming the task.
pub const APPROVAL_SOCKET: &str = "SHEPHERD_APPROVAL_SOCKET";
pub const APPROVAL_TOKEN: &str = "SHEPHERD_APPROVAL_TOKEN";

/// The variable of metadata key `key`: `SHEPHERD_TASK_METADATA_` and the
/// key in upper case, every character other than A-Z and 0-9 replaced by
/// `_` (so `team-name` is `SHEPHERD_TASK_METADATA_TEAM_NAME`).
pub fn metadata(key: &str) -> String {
    let mut name = String::from("SHEPHERD_TASK_METADATA_");
    name.extend(key.chars().map(|c| {
        let c = c.to_ascii_uppercase();
        if c.is_ascii_alphanumeric() { c } else { '_' }
    }));
    name
}

#[cfg(test)]
mod tests {
    #[test]
    fn metadata_names_are_shell_identifiers() {
        assert_eq!(
            super::metadata("team-name"),
            "SHEPHERD_TASK_METADATA_TEAM_NAME"
        );
        assert_eq!(
            super::metadata("a.b c$(x)"),
            "SHEPHERD_TASK_METADATA_A_B_C__X_"
        );
        assert_eq!(super::metadata("é"), "SHEPHERD_TASK_METADATA__");
    }
}
