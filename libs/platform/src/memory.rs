//! Giving freed heap memory back to the operating system.

/// Returns the heap's free pages to the operating system. glibc gives back
/// on its own only what is free at the top of its heap; memory freed in the
/// middle stays resident. After a burst of short-lived allocations (a
/// level pass over 10,000 workflows, a start-up) a service would otherwise
/// keep the burst's high-water mark as its resident size for good.
/// Cheap next to such a burst (it walks the free lists); a no-op where the
/// C library is not glibc.
pub fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim takes no pointers and only reorganises glibc's own
    // free lists under its own locks; it is safe to call at any time.
    unsafe {
        libc::malloc_trim(0);
    }
}
