//! What an approval decision binds to, computed the same way by the manager
//! (which stores it and sends it with every answer) and by the agent SDK
//! (which acts on an approval only if the answer's digest is that of what
//! it asked). A decision about one input can then never authorise another,
//! however the request id is reused.

use sha2::{Digest, Sha256};

/// Hex SHA-256 over a version tag and the length-prefixed tool and input
/// (so that no two different pairs give the same bytes).
pub fn approval_digest(tool: &str, input: &str) -> String {
    let mut hasher = Sha256::new();
    hasher.update(b"shepherd-approval-v1\0");
    for part in [tool, input] {
        hasher.update((part.len() as u64).to_be_bytes());
        hasher.update(part.as_bytes());
    }
    hasher
        .finalize()
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::approval_digest;

    #[test]
    fn binds_tool_and_input_apart() {
        let digest = approval_digest("shell", "git status");
        assert_eq!(digest.len(), 64);
        assert_eq!(digest, approval_digest("shell", "git status"));
        assert_ne!(digest, approval_digest("shell", "git status "));
        assert_ne!(digest, approval_digest("shellgit", " status"));
        assert_ne!(approval_digest("a", "bc"), approval_digest("ab", "c"));
    }
}
