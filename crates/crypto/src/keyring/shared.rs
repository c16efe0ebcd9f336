//! A keyring shared by the parts of a process, replaceable while they run.

use std::fmt;
use std::sync::{Arc, PoisonError, RwLock};

use super::Keyring;

/// A [`Keyring`] several parts of a process share, which one of them can
/// replace while the others keep working (a rotation stored by another
/// process, reloaded here). Each use takes the current keyring with
/// [`SharedKeyring::current`]; a replacement is seen by every clone at once.
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
pub struct SharedKeyring(Arc<RwLock<Arc<Keyring>>>);

impl SharedKeyring {
    /// Shares `keys`.
    pub fn new(keys: Keyring) -> Self {
        Self(Arc::new(RwLock::new(Arc::new(keys))))
    }

    /// The keyring as it is now (a cheap handle: later replacements do not
    /// change it).
    pub fn current(&self) -> Arc<Keyring> {
        self.0
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Replaces the keyring for every clone.
    pub fn replace(&self, keys: Keyring) {
        *self.0.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(keys);
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
