//! Started logins travel in the browser, sealed: nothing is kept server-side
//! between `begin` and the callback, so an unauthenticated flood of login
//! starts has nothing to fill and cannot lock real users out.
//!
//! [`RelyingParty::begin`](crate::oidc::RelyingParty::begin) seals the PKCE
//! verifier, the nonce, the `state`, the issuer and the start time with a
//! [`Keyring`] into the `__Host-cc_login` cookie. The callback opens it: a
//! forged or altered cookie does not open; a cookie for another provider
//! names another issuer (mix-up). Every web node that may receive the
//! callback needs the same keyring.
//!
//! Single use: once its code has been exchanged, a login's `state` goes
//! into a small in-memory set (bounded, expiring with the login timeout), so
//! a replayed callback is refused before any network call. Only successful
//! exchanges fill it, so an attacker cannot cheaply push entries out. Should
//! an entry still leave early (a flood of real logins) or the replay reach
//! another node, the authorization code inside the callback is single-use at
//! the provider, which refuses it.

use std::collections::{HashSet, VecDeque};
use std::fmt;
use std::sync::Mutex;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use careconnect_crypto::{EncryptionContext, KeyState, Keyring};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::error::AuthzError;

/// A started login: what the callback needs. Secret until it is used;
/// never in Debug output.
#[derive(Clone, Serialize, Deserialize)]
pub(crate) struct PendingLogin {
    pub(crate) state: Zeroizing<String>,
    pub(crate) verifier: Zeroizing<String>,
    pub(crate) nonce: Zeroizing<String>,
    /// The issuer this login was started with (mix-up defence).
    pub(crate) issuer: String,
    /// When the login started, Unix seconds.
    pub(crate) started: u64,
}

impl fmt::Debug for PendingLogin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PendingLogin")
            .field("issuer", &self.issuer)
            .field("started", &self.started)
            .finish_non_exhaustive()
    }
}

/// Longest login cookie value accepted (a sealed pending login is about
/// 400 characters); anything longer is refused before decoding.
const MAX_COOKIE_LEN: usize = 2048;

fn context() -> EncryptionContext {
    EncryptionContext::new().with("purpose", "careconnect/oidc-login")
}

/// `login` sealed with `keys`, as a cookie value (unpadded base64url).
pub(crate) fn seal(keys: &Keyring, login: &PendingLogin) -> Result<String, AuthzError> {
    let json = Zeroizing::new(serde_json::to_vec(login).map_err(|_| AuthzError::Corrupt("login"))?);
    Ok(URL_SAFE_NO_PAD.encode(keys.seal(&context(), &json)?))
}

/// The pending login in a cookie value, or `None` when it is not one this
/// keyring sealed (forged, altered, truncated, or from another deployment)
/// or was sealed under a key since marked compromised.
pub(crate) fn open(keys: &Keyring, cookie: &str) -> Option<PendingLogin> {
    if cookie.len() > MAX_COOKIE_LEN {
        return None;
    }
    let sealed = URL_SAFE_NO_PAD.decode(cookie).ok()?;
    let opened = keys.open(&sealed, &context()).ok()?;
    if opened.key_state == KeyState::Compromised {
        return None;
    }
    serde_json::from_slice(&opened.plaintext).ok()
}

/// States already used, so a replayed callback is refused before any
/// network call. Bounded: entries leave in the order they came, when the
/// oldest has expired or the set is full (then the provider's single-use
/// code is the backstop).
#[derive(Debug)]
pub(crate) struct ConsumedStates {
    inner: Mutex<Consumed>,
    capacity: usize,
}

#[derive(Debug, Default)]
struct Consumed {
    set: HashSet<[u8; 32]>,
    /// (expiry, state hash), in the order consumed.
    order: VecDeque<(u64, [u8; 32])>,
}

impl ConsumedStates {
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            inner: Mutex::new(Consumed::default()),
            capacity: capacity.max(1),
        }
    }

    /// Whether `state` was used already.
    pub(crate) fn is_used(&self, state: &str) -> bool {
        let key: [u8; 32] = Sha256::digest(state.as_bytes()).into();
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .set
            .contains(&key)
    }

    /// Marks `state` used until `expires`; `false` if it already was.
    pub(crate) fn consume(&self, state: &str, now: u64, expires: u64) -> bool {
        let key: [u8; 32] = Sha256::digest(state.as_bytes()).into();
        let mut c = self
            .inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        while let Some(&(exp, old)) = c.order.front() {
            if exp > now && c.order.len() < self.capacity {
                break;
            }
            c.order.pop_front();
            c.set.remove(&old);
        }
        if !c.set.insert(key) {
            return false;
        }
        c.order.push_back((expires, key));
        true
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .set
            .len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn login() -> PendingLogin {
        PendingLogin {
            state: Zeroizing::new("s".into()),
            verifier: Zeroizing::new("v".repeat(43)),
            nonce: Zeroizing::new("n".into()),
            issuer: "https://idp.test".into(),
            started: 100,
        }
    }

    #[test]
    fn sealed_logins_open_only_with_their_keyring_and_unaltered() {
        let keys = Keyring::generate();
        let cookie = seal(&keys, &login()).unwrap();
        assert!(cookie.len() < MAX_COOKIE_LEN);
        let back = open(&keys, &cookie).unwrap();
        assert_eq!(
            (back.issuer.as_str(), back.started),
            ("https://idp.test", 100)
        );
        assert!(open(&Keyring::generate(), &cookie).is_none());
        let mut bytes = URL_SAFE_NO_PAD.decode(&cookie).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        assert!(open(&keys, &URL_SAFE_NO_PAD.encode(bytes)).is_none());
        assert!(open(&keys, "not base64 !").is_none());
        assert!(open(&keys, &"A".repeat(5000)).is_none());
        assert!(!format!("{back:?}").contains("vvvv"));
    }

    #[test]
    fn consumed_states_are_single_use_bounded_and_expire() {
        let c = ConsumedStates::new(3);
        assert!(c.consume("a", 0, 10));
        assert!(!c.consume("a", 1, 11), "replay");
        assert!(c.consume("b", 1, 11));
        assert!(c.consume("c", 2, 12));
        assert!(c.consume("d", 3, 13), "full: the oldest goes");
        assert_eq!(c.len(), 3);
        assert!(
            c.consume("a", 4, 14),
            "evicted early: the provider's code is the backstop"
        );
        assert!(c.consume("e", 20, 30), "expired entries go first");
        assert_eq!(c.len(), 1);
    }
}
