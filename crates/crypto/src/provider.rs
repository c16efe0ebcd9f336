//! Pluggable AEAD primitives, in the spirit of rustls's `CryptoProvider`.
//!
//! A [`CryptoProvider`] turns a [`Suite`] and a key into a keyed [`Aead`].
//! An [`Aead`] implements two methods (detached seal and open in place) and
//! gets the rest. Every provider must produce identical bytes for the same
//! inputs: the envelope format does not record which provider sealed it.
//!
//! - [`RustCrypto`] (always compiled): the `aes-gcm` and `chacha20poly1305` crates.
//! - `Ring` (cargo feature `ring`): the `ring` crate, about three times faster
//!   for AES-GCM on CPUs with VAES; the fastest on CPUs without AVX-512
//!   (measured on an AMD EPYC without it, and with AVX-512 hidden on Zen 5).
//! - `AwsLc` (cargo feature `aws-lc`): `aws-lc-rs`, the fastest AES-GCM on
//!   CPUs with AVX-512 and VAES (about 1.45x `ring` on Intel Xeon, 1.9x on
//!   AMD EPYC Zen 5).
//!
//! Which is fastest depends on the CPU, so nobody has to name one:
//! [`default_provider`] is [`Fastest`], which measures every compiled-in
//! provider once, at first use, and then sends each suite to the one that was
//! fastest for it. Name a provider only to pin one (`Keyring::with_provider`,
//! `DocumentSealer::provider`).
//!
//! ```
//! use careconnect_crypto::{Suite, default_provider, provider::fastest};
//! // The measurement runs once per process (well under a millisecond in release builds).
//! let chosen = fastest().chosen(Suite::Aes256Gcm);
//! assert!(careconnect_crypto::provider::all_providers().iter().any(|p| p.name() == chosen.name()));
//! assert_eq!(default_provider().name(), "fastest");
//! ```

use std::fmt::Debug;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use zeroize::Zeroizing;

use crate::Suite;
use crate::error::Error;
use crate::suite::{KEY_LEN, NONCE_LEN, TAG_LEN};

/// Implements [`CryptoProvider`] for a unit struct whose module has
/// `fn keyed(Suite, &AeadKey) -> impl Aead` keeping its key schedule on the
/// stack: `aead` boxes it, `seal_once` and `open_once` do not.
macro_rules! stack_keyed_provider {
    ($ty:ty, $name:literal) => {
        impl $crate::provider::CryptoProvider for $ty {
            fn name(&self) -> &'static str {
                $name
            }

            fn aead(
                &self,
                suite: $crate::Suite,
                key: &$crate::provider::AeadKey,
            ) -> Box<dyn $crate::provider::Aead> {
                Box::new(keyed(suite, key))
            }

            fn seal_once(
                &self,
                suite: $crate::Suite,
                key: &$crate::provider::AeadKey,
                nonce: &$crate::provider::Nonce,
                aad: &[u8],
                buf: &mut [u8],
            ) -> Result<$crate::provider::Tag, $crate::Error> {
                $crate::provider::Aead::seal_in_place_detached(&keyed(suite, key), nonce, aad, buf)
            }

            fn open_once(
                &self,
                suite: $crate::Suite,
                key: &$crate::provider::AeadKey,
                nonce: &$crate::provider::Nonce,
                aad: &[u8],
                buf: &mut [u8],
                tag: &$crate::provider::Tag,
            ) -> Result<(), $crate::Error> {
                $crate::provider::Aead::open_in_place_detached(
                    &keyed(suite, key),
                    nonce,
                    aad,
                    buf,
                    tag,
                )
            }
        }
    };
}

#[cfg(feature = "aws-lc")]
mod aws_lc;
#[cfg(feature = "ring")]
mod ring;
mod rustcrypto;

#[cfg(feature = "aws-lc")]
pub use self::aws_lc::AwsLc;
#[cfg(feature = "ring")]
pub use self::ring::Ring;
pub use self::rustcrypto::RustCrypto;

/// A 256-bit AEAD key. Zeroized on drop; its `Debug` shows no key bytes.
pub struct AeadKey(Zeroizing<[u8; KEY_LEN]>);

impl AeadKey {
    /// Wraps key bytes. The caller's copy is not zeroized by this call.
    pub fn new(bytes: [u8; KEY_LEN]) -> Self {
        Self(Zeroizing::new(bytes))
    }

    /// Takes ownership of zeroizing key bytes without a copy left behind.
    pub(crate) fn from_zeroizing(bytes: Zeroizing<[u8; KEY_LEN]>) -> Self {
        Self(bytes)
    }

    /// The key bytes, for a provider to schedule.
    pub fn expose(&self) -> &[u8; KEY_LEN] {
        &self.0
    }
}

impl Debug for AeadKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AeadKey { .. }")
    }
}

/// A 96-bit AEAD nonce.
pub type Nonce = [u8; NONCE_LEN];
/// A 128-bit AEAD tag.
pub type Tag = [u8; TAG_LEN];

/// A source of AEAD implementations.
pub trait CryptoProvider: Send + Sync + Debug {
    /// A short name for logs and benchmarks, e.g. `"rustcrypto"`.
    fn name(&self) -> &'static str;

    /// Schedules `key` for `suite`.
    fn aead(&self, suite: Suite, key: &AeadKey) -> Box<dyn Aead>;

    /// Seals one message under a key used once: the record hot path.
    /// Providers override it to keep the key schedule on the stack; the
    /// default goes through [`CryptoProvider::aead`].
    ///
    /// # Errors
    ///
    /// As [`Aead::seal_in_place_detached`].
    fn seal_once(
        &self,
        suite: Suite,
        key: &AeadKey,
        nonce: &Nonce,
        aad: &[u8],
        buf: &mut [u8],
    ) -> Result<Tag, Error> {
        self.aead(suite, key)
            .seal_in_place_detached(nonce, aad, buf)
    }

    /// Opens one message under a key used once. See [`CryptoProvider::seal_once`].
    ///
    /// # Errors
    ///
    /// As [`Aead::open_in_place_detached`].
    fn open_once(
        &self,
        suite: Suite,
        key: &AeadKey,
        nonce: &Nonce,
        aad: &[u8],
        buf: &mut [u8],
        tag: &Tag,
    ) -> Result<(), Error> {
        self.aead(suite, key)
            .open_in_place_detached(nonce, aad, buf, tag)
    }
}

/// A keyed AEAD. Implement the two `*_detached` methods; the rest is provided.
pub trait Aead: Send + Sync {
    /// Encrypts `buf` in place and returns the tag.
    ///
    /// # Errors
    ///
    /// [`Error::Misuse`] if `buf` is longer than the suite allows.
    fn seal_in_place_detached(
        &self,
        nonce: &Nonce,
        aad: &[u8],
        buf: &mut [u8],
    ) -> Result<Tag, Error>;

    /// Checks `tag` and decrypts `buf` in place. On failure `buf`'s contents
    /// are unspecified and must not be used.
    ///
    /// # Errors
    ///
    /// [`Error::DecryptionFailed`] when the tag does not verify.
    fn open_in_place_detached(
        &self,
        nonce: &Nonce,
        aad: &[u8],
        buf: &mut [u8],
        tag: &Tag,
    ) -> Result<(), Error>;

    /// Encrypts `buf[start..]` in place and appends the tag.
    ///
    /// # Errors
    ///
    /// As [`Aead::seal_in_place_detached`].
    fn seal_append(
        &self,
        nonce: &Nonce,
        aad: &[u8],
        buf: &mut Vec<u8>,
        start: usize,
    ) -> Result<(), Error> {
        let body = buf.get_mut(start..).ok_or(crate::error::Misuse::TooLong)?;
        let tag = self.seal_in_place_detached(nonce, aad, body)?;
        buf.extend_from_slice(&tag);
        Ok(())
    }

    /// Opens `buf`, which holds ciphertext followed by the tag, in place.
    /// Returns the plaintext's length (a prefix of `buf`).
    ///
    /// # Errors
    ///
    /// [`Error::DecryptionFailed`] when `buf` is shorter than a tag or the tag
    /// does not verify.
    fn open_in_place(&self, nonce: &Nonce, aad: &[u8], buf: &mut [u8]) -> Result<usize, Error> {
        let body_len = buf
            .len()
            .checked_sub(TAG_LEN)
            .ok_or(Error::DecryptionFailed)?;
        let (body, tag) = buf.split_at_mut(body_len);
        let mut t = [0u8; TAG_LEN];
        t.copy_from_slice(tag);
        self.open_in_place_detached(nonce, aad, body, &t)?;
        Ok(body_len)
    }
}

/// The provider used where none is named: [`Fastest`], measured once per
/// process at first use. Never slower than [`RustCrypto`], the default
/// before it, by more than the noise of that measurement.
pub fn default_provider() -> &'static dyn CryptoProvider {
    fastest()
}

/// Every provider compiled into this build: [`RustCrypto`] first, then
/// `Ring` and `AwsLc` when their features are on.
pub fn all_providers() -> Vec<&'static dyn CryptoProvider> {
    vec![
        &RustCrypto,
        #[cfg(feature = "ring")]
        &Ring,
        #[cfg(feature = "aws-lc")]
        &AwsLc,
    ]
}

/// The process-wide [`Fastest`], measured on the first call. With the
/// `fips` feature it is `AwsLc` (AWS-LC's FIPS 140-3 module) for every suite,
/// unmeasured; check [`in_fips_mode`] at start.
pub fn fastest() -> &'static Fastest {
    static CHOSEN: OnceLock<Fastest> = OnceLock::new();
    // A FIPS build uses the validated module for everything, fast or not.
    #[cfg(feature = "fips")]
    return CHOSEN.get_or_init(|| Fastest::measure(&[&AwsLc]));
    #[cfg(not(feature = "fips"))]
    CHOSEN.get_or_init(|| Fastest::measure(&all_providers()))
}

/// Whether AWS-LC's FIPS 140-3 module is linked and passed its power-on self
/// tests (cargo feature `fips`). A deployment that requires FIPS calls this
/// at start and refuses to run on `false`. Providers named explicitly
/// (`RustCrypto`, `Ring`) still work in such a build and are outside the module.
#[cfg(feature = "fips")]
pub fn in_fips_mode() -> bool {
    aws_lc_rs::try_fips_mode().is_ok()
}

/// One provider per suite: the compiled-in provider that sealed fastest in a
/// short measurement (the best of [`Fastest::ROUNDS`] interleaved rounds of
/// [`Fastest::SAMPLE_LEN`]-byte messages, each under a fresh key schedule,
/// as records and document chunks are). All providers give identical bytes,
/// so the choice changes speed only, never output. With one provider
/// compiled in there is nothing to measure and it is chosen at once.
#[derive(Debug)]
pub struct Fastest {
    chosen: [&'static dyn CryptoProvider; 2],
    timings: [Vec<(&'static str, Duration)>; 2],
}

impl Fastest {
    /// Rounds per provider and suite; the best is kept.
    pub const ROUNDS: usize = 9;
    /// Bytes sealed per sample: between a record and a 64 KiB document chunk.
    pub const SAMPLE_LEN: usize = 16 << 10;
    const CALLS_PER_SAMPLE: usize = 4;

    /// Measures `providers` (the first wins ties) and keeps the fastest per suite.
    /// [`fastest`] does this once with [`all_providers`]; call it yourself
    /// to choose among a subset. An empty list chooses [`RustCrypto`].
    pub fn measure(providers: &[&'static dyn CryptoProvider]) -> Self {
        let mut chosen: [&'static dyn CryptoProvider; 2] = [&RustCrypto; 2];
        let mut timings = [Vec::new(), Vec::new()];
        if let [only] = providers {
            chosen = [*only; 2];
        }
        if providers.len() < 2 {
            return Self { chosen, timings };
        }
        let key = AeadKey::new([0x5a; KEY_LEN]);
        let nonce = [0x0c; NONCE_LEN];
        let mut buf = vec![0u8; Self::SAMPLE_LEN];
        for suite in Suite::ALL {
            let i = suite_index(suite);
            let mut best = vec![Duration::MAX; providers.len()];
            let mut failed = vec![false; providers.len()];
            for round in 0..=Self::ROUNDS {
                for ((p, b), failed) in providers.iter().zip(best.iter_mut()).zip(&mut failed) {
                    let start = Instant::now();
                    let mut ok = true;
                    for _ in 0..Self::CALLS_PER_SAMPLE {
                        ok &= std::hint::black_box(p.seal_once(
                            suite,
                            &key,
                            &nonce,
                            b"",
                            std::hint::black_box(&mut buf),
                        ))
                        .is_ok();
                    }
                    // Round 0 warms caches and lazy CPU detection; it does
                    // not count. A provider that fails is never the fastest.
                    *failed |= !ok;
                    if round > 0 {
                        *b = (*b).min(start.elapsed());
                    }
                }
            }
            for (b, f) in best.iter_mut().zip(&failed) {
                if *f {
                    *b = Duration::MAX;
                }
            }
            let mut winner = 0;
            for (j, t) in best.iter().enumerate() {
                if *t < best[winner] {
                    winner = j;
                }
            }
            chosen[i] = providers[winner];
            timings[i] = providers
                .iter()
                .zip(&best)
                .map(|(p, t)| (p.name(), *t / Self::CALLS_PER_SAMPLE as u32))
                .collect();
        }
        Self { chosen, timings }
    }

    /// The provider that serves `suite`.
    pub fn chosen(&self, suite: Suite) -> &'static dyn CryptoProvider {
        self.chosen[suite_index(suite)]
    }

    /// What the measurement saw for `suite`: each provider's best time to
    /// seal one sample. Empty when only one provider was compiled in.
    pub fn timings(&self, suite: Suite) -> &[(&'static str, Duration)] {
        &self.timings[suite_index(suite)]
    }
}

fn suite_index(suite: Suite) -> usize {
    match suite {
        Suite::Aes256Gcm => 0,
        Suite::ChaCha20Poly1305 => 1,
    }
}

impl CryptoProvider for Fastest {
    fn name(&self) -> &'static str {
        "fastest"
    }

    fn aead(&self, suite: Suite, key: &AeadKey) -> Box<dyn Aead> {
        self.chosen(suite).aead(suite, key)
    }

    fn seal_once(
        &self,
        suite: Suite,
        key: &AeadKey,
        nonce: &Nonce,
        aad: &[u8],
        buf: &mut [u8],
    ) -> Result<Tag, Error> {
        self.chosen(suite).seal_once(suite, key, nonce, aad, buf)
    }

    fn open_once(
        &self,
        suite: Suite,
        key: &AeadKey,
        nonce: &Nonce,
        aad: &[u8],
        buf: &mut [u8],
        tag: &Tag,
    ) -> Result<(), Error> {
        self.chosen(suite)
            .open_once(suite, key, nonce, aad, buf, tag)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn providers_agree_byte_for_byte() {
        let key = AeadKey::new([0x42; KEY_LEN]);
        let nonce = [7u8; NONCE_LEN];
        for suite in Suite::ALL {
            let mut outs = Vec::new();
            for p in all_providers() {
                let aead = p.aead(suite, &key);
                let mut buf = b"the same bytes from every provider".to_vec();
                aead.seal_append(&nonce, b"aad", &mut buf, 0).unwrap();
                outs.push(buf.clone());
                let n = aead.open_in_place(&nonce, b"aad", &mut buf).unwrap();
                assert_eq!(&buf[..n], b"the same bytes from every provider");
            }
            outs.windows(2).for_each(|w| assert_eq!(w[0], w[1]));
        }
    }

    #[test]
    fn tampering_fails_in_every_provider() {
        let key = AeadKey::new([1; KEY_LEN]);
        for suite in Suite::ALL {
            for p in all_providers() {
                let aead = p.aead(suite, &key);
                let mut buf = b"payload".to_vec();
                aead.seal_append(&[0; 12], b"", &mut buf, 0).unwrap();
                buf[0] ^= 1;
                assert!(matches!(
                    aead.open_in_place(&[0; 12], b"", &mut buf),
                    Err(Error::DecryptionFailed)
                ));
                assert!(matches!(
                    aead.open_in_place(&[0; 12], b"", &mut [0u8; 15]),
                    Err(Error::DecryptionFailed)
                ));
            }
        }
    }

    #[test]
    fn fastest_chooses_a_compiled_in_provider_per_suite_and_agrees_with_it() {
        let all = all_providers();
        let f = fastest();
        for suite in Suite::ALL {
            let chosen = f.chosen(suite);
            assert!(all.iter().any(|p| p.name() == chosen.name()));
            if cfg!(feature = "fips") {
                assert_eq!(chosen.name(), "aws-lc");
                assert!(f.timings(suite).is_empty());
            } else if all.len() > 1 {
                let t = f.timings(suite);
                assert_eq!(t.len(), all.len());
                let best = t.iter().map(|(_, d)| *d).min().unwrap();
                let (_, mine) = t.iter().find(|(n, _)| *n == chosen.name()).unwrap();
                assert_eq!(*mine, best, "{suite:?}: {t:?}");
            }
            // Same bytes through the chooser as through the chosen provider.
            let key = AeadKey::new([3; KEY_LEN]);
            let mut a = b"through the chooser".to_vec();
            let mut b = a.clone();
            let ta = default_provider()
                .seal_once(suite, &key, &[1; 12], b"x", &mut a)
                .unwrap();
            let tb = chosen
                .seal_once(suite, &key, &[1; 12], b"x", &mut b)
                .unwrap();
            assert_eq!((a.clone(), ta), (b, tb));
            default_provider()
                .open_once(suite, &key, &[1; 12], b"x", &mut a, &ta)
                .unwrap();
            assert_eq!(a, b"through the chooser");
        }
    }

    /// A provider that is slow on purpose, so the measurement has a clear
    /// loser: 25 ms a call, far beyond what a 16 KiB seal costs even in a
    /// debug build on a busy machine (1 ms was not: seen losing once under
    /// load, item 23 of the second hardening round).
    #[derive(Debug)]
    struct Slow;
    impl CryptoProvider for Slow {
        fn name(&self) -> &'static str {
            "slow"
        }
        fn aead(&self, suite: Suite, key: &AeadKey) -> Box<dyn Aead> {
            std::thread::sleep(Duration::from_millis(25));
            RustCrypto.aead(suite, key)
        }
    }

    /// A provider that fails at once, which would otherwise look fastest.
    #[derive(Debug)]
    struct Broken;
    struct Refuses;
    impl Aead for Refuses {
        fn seal_in_place_detached(&self, _: &Nonce, _: &[u8], _: &mut [u8]) -> Result<Tag, Error> {
            Err(Error::DecryptionFailed)
        }
        fn open_in_place_detached(
            &self,
            _: &Nonce,
            _: &[u8],
            _: &mut [u8],
            _: &Tag,
        ) -> Result<(), Error> {
            Err(Error::DecryptionFailed)
        }
    }
    impl CryptoProvider for Broken {
        fn name(&self) -> &'static str {
            "broken"
        }
        fn aead(&self, _: Suite, _: &AeadKey) -> Box<dyn Aead> {
            Box::new(Refuses)
        }
    }

    #[test]
    fn measurement_never_prefers_a_failing_provider() {
        for order in [
            [&Broken as &'static dyn CryptoProvider, &RustCrypto],
            [&RustCrypto, &Broken],
        ] {
            let f = Fastest::measure(&order);
            for suite in Suite::ALL {
                assert_eq!(f.chosen(suite).name(), "rustcrypto");
            }
        }
    }

    #[test]
    fn measurement_never_prefers_a_slower_provider() {
        let f = Fastest::measure(&[&Slow, &RustCrypto]);
        for suite in Suite::ALL {
            assert_eq!(f.chosen(suite).name(), "rustcrypto");
        }
        let f = Fastest::measure(&[&Slow]);
        assert_eq!(f.chosen(Suite::Aes256Gcm).name(), "slow");
        assert!(f.timings(Suite::Aes256Gcm).is_empty());
        assert_eq!(
            Fastest::measure(&[]).chosen(Suite::ChaCha20Poly1305).name(),
            "rustcrypto"
        );
    }

    #[test]
    fn key_debug_is_redacted() {
        let key = AeadKey::new([0xAB; KEY_LEN]);
        let s = format!("{key:?}");
        assert!(!s.to_lowercase().contains("ab"), "{s}");
    }
}
