//! The agent's credential, kept from everything its tasks start.
//!
//! The manager hands an agent its session token (or an external agent its
//! long-lived credential) in the environment. Left there, every process a
//! task starts would inherit it, and any process of the same user could
//! read it from `/proc/<agent>/environ` or the agent's memory, then open a
//! session as the agent and take its tasks. So the SDK reads it once, and
//! then:
//! * overwrites its bytes in the environment block the kernel shows as
//!   `/proc/<pid>/environ` (removing the variable alone would leave them
//!   there), and removes the variable;
//! * makes the process non-dumpable, so that no process of the same user
//!   without `CAP_SYS_PTRACE` reads its memory or environment.

use std::ffi::CStr;

unsafe extern "C" {
    /// The C library's environment (`environ(7)`).
    static environ: *const *mut libc::c_char;
}

/// The value of the first of `names` that is set; afterwards none of them
/// is left in this process's environment, and the process is not
/// dumpable.
///
/// Call it before starting threads that read the environment (the
/// variables are removed with `std::env::remove_var`).
pub(crate) fn take(names: &[&str]) -> Option<String> {
    let value = names.iter().find_map(|name| std::env::var(name).ok());
    for name in names {
        // SAFETY: `environ` is the C library's own array of NUL-terminated
        // strings, ending in a null pointer; only the bytes of the matching
        // entries' values are written, in place, within their lengths.
        unsafe { overwrite_in_place(name) };
        // SAFETY: the caller starts no thread that reads the environment
        // before this returns (see above).
        unsafe { std::env::remove_var(name) };
    }
    if let Err(err) = nix::sys::prctl::set_dumpable(false) {
        tracing::warn!(error = %err, "could not make the agent process non-dumpable");
    }
    value
}

/// Replaces with `*` every byte of the value of `name` in the environment
/// block.
unsafe fn overwrite_in_place(name: &str) {
    // SAFETY: see `take`.
    let mut entry = unsafe { environ };
    if entry.is_null() {
        return;
    }
    let prefix = format!("{name}=");
    loop {
        // SAFETY: `entry` points into the null-terminated array.
        let string = unsafe { *entry };
        if string.is_null() {
            return;
        }
        // SAFETY: every entry is a NUL-terminated string.
        let bytes = unsafe { CStr::from_ptr(string) }.to_bytes();
        if bytes.starts_with(prefix.as_bytes()) {
            let value_len = bytes.len() - prefix.len();
            // SAFETY: the value's bytes lie within the entry, before its
            // NUL; the block is the process's own, writable memory.
            unsafe { std::ptr::write_bytes(string.add(prefix.len()), b'*', value_len) };
        }
        // SAFETY: not past the terminating null pointer (checked above).
        entry = unsafe { entry.add(1) };
    }
}

#[cfg(test)]
mod tests {
    /// The variable is gone and the process is not dumpable. (What
    /// `/proc/<agent>/environ` shows is checked with a real agent, whose
    /// credential is in its initial environment: tests/untrusted.rs.)
    #[test]
    fn a_taken_credential_leaves_no_trace() {
        // SAFETY: this test is the only one touching these variables.
        unsafe { std::env::set_var("SHEPHERD_TEST_CREDENTIAL", "s3cret-value") };
        let taken = super::take(&["SHEPHERD_TEST_MISSING", "SHEPHERD_TEST_CREDENTIAL"]);
        assert_eq!(taken.as_deref(), Some("s3cret-value"));
        assert!(std::env::var("SHEPHERD_TEST_CREDENTIAL").is_err());
        assert!(!nix::sys::prctl::get_dumpable().unwrap_or(true));
    }
}
