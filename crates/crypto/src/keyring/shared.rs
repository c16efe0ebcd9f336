//! A keyring shared by the parts of a process, replaceable while they run.

use std::fmt;
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};

use super::Keyring;
use crate::Error;

/// A [`Keyring`] several parts of a process share, which one of them can
/// replace while the others keep working (a rotation stored by another
/// process, reloaded here). Each use takes the current keyring with
/// [`SharedKeyring::current`]; a replacement is seen by every clone at once.
///
/// It also remembers when its owner last confirmed that it holds the
/// stored keyring ([`SharedKeyring::confirm`], [`SharedKeyring::age`]), so
/// a process that cannot re-read the keyset can stop sealing under a key
/// other processes may have replaced (a lease).
///
/// ```
/// use careconnect_crypto::{EncryptionContext, Keyring, SharedKeyring};
/// # fn main() -> Result<(), careconnect_crypto::Error> {
/// let shared = SharedKeyring::new(Keyring::generate());
/// let reader = shared.clone();
/// let mut next = (*shared.current()).clone();
/// let new = next.rotate()?;
/// shared.replace(next);
/// assert_eq!(reader.current().primary(), new);
/// # let _ = EncryptionContext::new();
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct SharedKeyring(Arc<Shared>);

struct Shared {
    keys: RwLock<Arc<Keyring>>,
    confirmed: Mutex<Instant>,
    lease: Mutex<Option<Duration>>,
}

impl SharedKeyring {
    /// Shares `keys`, confirmed now.
    pub fn new(keys: Keyring) -> Self {
        Self::new_as_of(keys, Instant::now())
    }

    /// Shares `keys`, read from the stored keyset by a read that started at
    /// `read_at`.
    pub fn new_as_of(keys: Keyring, read_at: Instant) -> Self {
        Self(Arc::new(Shared {
            keys: RwLock::new(Arc::new(keys)),
            confirmed: Mutex::new(read_at),
            lease: Mutex::new(None),
        }))
    }

    /// Refuses to hand out the keyring for sealing
    /// ([`SharedKeyring::sealing`]) once it has gone unconfirmed for longer
    /// than `lease` (for every clone).
    pub fn set_lease(&self, lease: Duration) {
        *self.0.lease.lock().unwrap_or_else(PoisonError::into_inner) = Some(lease);
    }

    /// Whether the keyring is within its lease (always, without one).
    ///
    /// # Errors
    ///
    /// [`Error::KeyringStale`] past the lease.
    pub fn fresh(&self) -> Result<(), Error> {
        let lease = *self.0.lease.lock().unwrap_or_else(PoisonError::into_inner);
        match lease {
            Some(l) if self.age() > l => Err(Error::KeyringStale),
            _ => Ok(()),
        }
    }

    /// The keyring, to seal with: as [`SharedKeyring::current`], checked
    /// against the lease at the moment of sealing.
    ///
    /// # Errors
    ///
    /// [`Error::KeyringStale`] past the lease.
    pub fn sealing(&self) -> Result<Arc<Keyring>, Error> {
        self.fresh()?;
        Ok(self.current())
    }

    /// The keyring as it is now (a cheap handle: later replacements do not
    /// change it).
    pub fn current(&self) -> Arc<Keyring> {
        self.0
            .keys
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Replaces the keyring for every clone, confirmed now.
    pub fn replace(&self, keys: Keyring) {
        self.replace_as_of(keys, Instant::now());
    }

    /// Replaces the keyring for every clone with `keys`, read from the
    /// stored keyset by a read that started at `read_at`.
    pub fn replace_as_of(&self, keys: Keyring, read_at: Instant) {
        *self.0.keys.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(keys);
        self.confirm(read_at);
    }

    /// Records that the keyring held here was still the stored one when a
    /// read that started at `read_at` found it (a confirmation older than
    /// the last one changes nothing).
    pub fn confirm(&self, read_at: Instant) {
        let mut confirmed = self
            .0
            .confirmed
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if read_at > *confirmed {
            *confirmed = read_at;
        }
    }

    /// How long ago the keyring was last confirmed (or replaced).
    pub fn age(&self) -> Duration {
        self.0
            .confirmed
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .elapsed()
    }
}

impl From<Keyring> for SharedKeyring {
    fn from(keys: Keyring) -> Self {
        Self::new(keys)
    }
}

impl fmt::Debug for SharedKeyring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("SharedKeyring")
            .field(&self.current())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // a failing test panics

    use super::*;

    #[test]
    fn confirmation_moves_forward_only_and_a_replacement_confirms() {
        let shared = SharedKeyring::new(Keyring::generate());
        let clone = shared.clone();
        let start = Instant::now();
        std::thread::sleep(Duration::from_millis(30));
        assert!(clone.age() >= Duration::from_millis(30));
        // An older read confirms nothing.
        shared.confirm(start - Duration::from_secs(1));
        assert!(clone.age() >= Duration::from_millis(30));
        shared.confirm(Instant::now());
        assert!(clone.age() < Duration::from_millis(30));
        std::thread::sleep(Duration::from_millis(30));
        shared.replace(Keyring::generate());
        assert!(clone.age() < Duration::from_millis(30));
    }

    #[test]
    fn past_its_lease_a_keyring_is_not_handed_out_for_sealing() {
        let shared = SharedKeyring::new(Keyring::generate());
        assert!(shared.sealing().is_ok(), "no lease, no limit");
        shared.set_lease(Duration::from_millis(20));
        let clone = shared.clone();
        assert!(clone.sealing().is_ok());
        std::thread::sleep(Duration::from_millis(40));
        assert!(matches!(clone.sealing(), Err(Error::KeyringStale)));
        assert!(matches!(clone.fresh(), Err(Error::KeyringStale)));
        // Reading still works; sealing resumes once confirmed.
        let _ = clone.current();
        shared.confirm(Instant::now());
        assert!(clone.sealing().is_ok());
    }
}
