//! Randomness.
//!
//! Salts come from `rand`'s `ThreadRng` (ChaCha12 seeded from the operating
//! system, reseeded every 64 KiB of output): one getrandom(2) call per
//! message costs about 360 ns on the machines we measured, more than the rest
//! of sealing a small record. Long-term keys come straight from the OS.
//!
//! `ThreadRng` is not reseeded on `fork(2)`. A process that forks and then
//! seals in both parent and child must call [`reseed_after_fork`] in the child
//! first (Rust's `std::process::Command` execs at once and is not affected).

use rand::RngCore;

/// Fills `out` from the operating system's CSPRNG (for long-term keys).
pub(crate) fn fill_os(out: &mut [u8]) {
    let mut os = rand::rngs::OsRng;
    rand::TryRngCore::try_fill_bytes(&mut os, out).unwrap_or_else(|_| {
        // The OS RNG failing is unrecoverable; fall back to ThreadRng, which
        // was seeded from it and would itself have failed before now.
        rand::rng().fill_bytes(out);
    });
}

/// Fills `out` with salt bytes from the thread-local CSPRNG.
pub(crate) fn fill_salt(out: &mut [u8]) {
    rand::rng().fill_bytes(out);
}

/// Reseeds this thread's CSPRNG from the OS. Call in a forked child before it
/// seals anything.
///
/// # Errors
///
/// When the operating system's CSPRNG cannot be read.
pub fn reseed_after_fork() -> Result<(), crate::Error> {
    rand::rng()
        .reseed()
        .map_err(|e| crate::Error::Io(std::io::Error::other(e.to_string())))
}
