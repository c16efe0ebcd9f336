//! Randomness: every byte comes from the operating system.
//!
//! Record nonces are fixed (§7), so nonce safety rests on 256-bit salts never
//! repeating. A user-space generator seeded once (such as `rand`'s
//! `ThreadRng`) repeats its output in both halves of a `fork(2)` unless
//! reseeded by hand, and in every copy of a restored VM snapshot. The
//! kernel's generator does neither: it is per call, and Linux reseeds it when
//! a VM is forked (vmgenid). So each salt is one `getrandom(2)` call. It
//! costs a few hundred nanoseconds per message on glibc before 2.41 (one
//! system call: about 240 ns on the Xeon VMs we measured, against 16 ns for
//! `ThreadRng`); glibc 2.41 and later (Debian 13) serve `getrandom` from the
//! Linux vDSO, with the same fork and VM-fork safety, at a fraction of that.
//! `cargo bench --bench ratios -- salts` measures it beside a user-space
//! generator in the same run.

use rand::TryRngCore;

/// Fills `out` from the operating system's CSPRNG.
///
/// # Errors
///
/// [`crate::Error::Io`] when the operating system's generator cannot be read
/// (on Linux, only before the kernel's pool is first initialised, or under a
/// seccomp policy that forbids the call). Never falls back to anything weaker.
pub(crate) fn fill(out: &mut [u8]) -> Result<(), crate::Error> {
    rand::rngs::OsRng
        .try_fill_bytes(out)
        .map_err(|e| crate::Error::Io(std::io::Error::other(e.to_string())))
}

/// Fills `out` from the OS, for long-term keys made where no error can be
/// returned. A machine whose OS generator fails cannot make keys safely at
/// all: this stops the process rather than return a predictable key.
#[allow(clippy::panic)] // no safe way to continue; reached only if getrandom(2) fails
pub(crate) fn fill_os(out: &mut [u8]) {
    if fill(out).is_err() {
        panic!("the operating system's random number generator failed");
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn salts_differ_across_fork_like_clones() {
        // Two draws never match (a user-space generator cloned by fork would).
        let (mut a, mut b) = ([0u8; 32], [0u8; 32]);
        super::fill(&mut a).unwrap();
        super::fill(&mut b).unwrap();
        assert_ne!(a, b);
    }
}
