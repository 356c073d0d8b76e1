//! Keeping the control plane above the agents it runs.
//!
//! Two halves:
//! * [`forbid_inspection`], for a service (and for an agent's own process,
//!   which holds its session credential): the kernel then refuses other
//!   processes of the same user, without `CAP_SYS_PTRACE`, access to this
//!   one's `/proc/<pid>/environ`, `mem`, `fd` and ptrace. Agents run as the
//!   manager's user unless told otherwise; without this a task reads the
//!   manager's database URL and API tokens from its environment.
//! * [`drop_privileges`], for an agent between fork and exec: no new
//!   privileges ever (no set-uid binary gives it more), and, when it would
//!   run as root, no capabilities at all (so root inside the agent cannot
//!   ptrace the manager, override file permissions, load modules...).

use std::io;

/// Makes this process non-dumpable (see the module comment). Call it at
/// the very start of `main`.
pub fn forbid_inspection() -> io::Result<()> {
    // SAFETY: prctl with integer arguments only.
    check(unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) })
}

/// Whether this process is dumpable (inspectable by its user's other
/// processes).
pub fn is_dumpable() -> bool {
    // SAFETY: prctl with integer arguments only.
    unsafe { libc::prctl(libc::PR_GET_DUMPABLE, 0, 0, 0, 0) == 1 }
}

/// In a child between fork and exec: sets `no_new_privs`, and if the child
/// is root, empties its capability bounding, ambient, inheritable,
/// permitted and effective sets, so the program it executes has none.
///
/// Async-signal-safe: raw system calls on the stack, nothing allocated.
pub fn drop_privileges() -> io::Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        drop_capabilities()?;
    }
    // SAFETY: prctl with integer arguments only.
    check(unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) })
}

fn drop_capabilities() -> io::Result<()> {
    // SAFETY: prctl with integer arguments only.
    check(unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL,
            0,
            0,
            0,
        )
    })?;
    // Every capability the kernel knows (it answers EINVAL past the last).
    for capability in 0..64 {
        // SAFETY: prctl with integer arguments only.
        let dropped = unsafe { libc::prctl(libc::PR_CAPBSET_DROP, capability, 0, 0, 0) };
        if dropped != 0 {
            let err = io::Error::last_os_error();
            if err.raw_os_error() == Some(libc::EINVAL) {
                break;
            }
            return Err(err);
        }
    }
    // Last, as dropping from the bounding set needs CAP_SETPCAP.
    let header = CapHeader {
        version: LINUX_CAPABILITY_VERSION_3,
        pid: 0,
    };
    let data = [CapData::default(); 2];
    // SAFETY: capset reads one header and two data structs, laid out as
    // the kernel's `__user_cap_header_struct` / `__user_cap_data_struct`.
    check(unsafe { libc::syscall(libc::SYS_capset, &header, data.as_ptr()) } as i32)
}

const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: i32,
}

#[repr(C)]
#[derive(Default, Clone, Copy)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

fn check(result: i32) -> io::Result<()> {
    if result < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::os::unix::process::CommandExt;

    /// After `forbid_inspection`, this process is not dumpable. (Whether
    /// that keeps a task out of a service's environment is tried with real
    /// processes in tests/tests/untrusted.rs.)
    #[test]
    fn a_service_forbids_inspection() {
        super::forbid_inspection().unwrap();
        assert!(!super::is_dumpable());
    }

    /// A child with dropped privileges has no capabilities and
    /// `no_new_privs`, whoever runs the test.
    #[test]
    fn a_child_keeps_no_privilege() {
        let mut command = std::process::Command::new("/bin/sh");
        command.args([
            "-c",
            "grep -E '^(CapEff|CapPrm|CapBnd|CapAmb|NoNewPrivs)' /proc/self/status",
        ]);
        // SAFETY: drop_privileges only makes raw system calls.
        unsafe { command.pre_exec(super::drop_privileges) };
        let output = command.output().unwrap();
        assert!(output.status.success());
        let status = String::from_utf8_lossy(&output.stdout);
        assert!(status.contains("NoNewPrivs:\t1"), "{status}");
        for set in ["CapEff", "CapPrm", "CapAmb"] {
            assert!(
                status.contains(&format!("{set}:\t0000000000000000")),
                "{status}"
            );
        }
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } == 0 {
            assert!(status.contains("CapBnd:\t0000000000000000"), "{status}");
        }
    }
}
