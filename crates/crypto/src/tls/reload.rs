//! A server certificate that can be replaced without a restart.

use std::sync::{Arc, Mutex, PoisonError, RwLock, Weak};
use std::time::{Duration, SystemTime};

use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use super::TlsError;
use super::pem::{CertInfo, CertPaths, cert_info, load_certified_key, unix_secs};

/// Serves the certificate at [`CertPaths`] and swaps in a new one on
/// [`ReloadingCertResolver::reload`] (call it on a signal, from an admin
/// endpoint, or let [`ReloadingCertResolver::spawn_watcher`] poll the files).
///
/// New handshakes get the new certificate; connections already established
/// keep the one they negotiated. A reload that fails (missing file, corrupt
/// PEM, key mismatch, expired) changes nothing and returns why.
#[derive(Debug)]
pub struct ReloadingCertResolver {
    paths: CertPaths,
    provider: Arc<CryptoProvider>,
    current: RwLock<Arc<CertifiedKey>>,
    /// What the files looked like at the last load. Its lock is held for a
    /// whole reload (stamp, load, swap), so two reloads at once (a watcher
    /// and a signal) cannot end with the older files in service.
    stamp: Mutex<Stamps>,
}

impl ReloadingCertResolver {
    /// Loads the certificate once; it must be good.
    ///
    /// # Errors
    ///
    /// As [`load_certified_key`].
    pub fn new(paths: CertPaths, provider: Arc<CryptoProvider>) -> Result<Arc<Self>, TlsError> {
        let stamp = file_stamps(&paths);
        let key = load_certified_key(&paths, &provider)?;
        Ok(Arc::new(Self {
            paths,
            provider,
            current: RwLock::new(key),
            stamp: Mutex::new(stamp),
        }))
    }

    /// Loads the files again and, if they are good, serves them from the next
    /// handshake on. Returns the new leaf's facts.
    ///
    /// # Errors
    ///
    /// As [`load_certified_key`]; the certificate in service is unchanged.
    pub fn reload(&self) -> Result<CertInfo, TlsError> {
        let mut last = self.stamp.lock().unwrap_or_else(PoisonError::into_inner);
        self.reload_locked(&mut last)
    }

    /// [`ReloadingCertResolver::reload`] with the stamp lock held.
    fn reload_locked(&self, last: &mut Stamps) -> Result<CertInfo, TlsError> {
        let stamp = file_stamps(&self.paths);
        let result = load_certified_key(&self.paths, &self.provider)
            .and_then(|key| Ok((leaf_info(&key)?, key)));
        // Remember these files either way, so a watcher reports a bad
        // replacement once, not on every poll.
        *last = stamp;
        match result {
            Ok((info, key)) => {
                *self.current.write().unwrap_or_else(PoisonError::into_inner) = key;
                tracing::info!(serial = %hex_serial(&info.serial), subject = %info.subject, "tls certificate reloaded");
                warn_if_expiring(&info, SystemTime::now());
                Ok(info)
            }
            Err(e) => {
                tracing::warn!(error = %e, "tls certificate reload failed; keeping the current one");
                Err(e)
            }
        }
    }

    /// Reloads if either file changed since the last load: its modification
    /// time, length, or (on Unix) inode or change time. A copy that keeps
    /// the old modification time (`cp -p`, `rsync -t`) still counts.
    ///
    /// # Errors
    ///
    /// As [`ReloadingCertResolver::reload`].
    pub fn reload_if_changed(&self) -> Result<Option<CertInfo>, TlsError> {
        let mut last = self.stamp.lock().unwrap_or_else(PoisonError::into_inner);
        if *last == file_stamps(&self.paths) {
            return Ok(None);
        }
        self.reload_locked(&mut last).map(Some)
    }

    /// Facts of the certificate in service.
    ///
    /// # Errors
    ///
    /// [`TlsError::BadCertificate`] if the leaf does not parse (it did when loaded).
    pub fn current(&self) -> Result<CertInfo, TlsError> {
        leaf_info(&self.current.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// Polls the files every `every` on a background thread and reloads when
    /// they change. It also warns, once a day, while the certificate in
    /// service expires within [`EXPIRY_WARNING`]. The thread ends when the
    /// resolver is dropped.
    pub fn spawn_watcher(self: &Arc<Self>, every: Duration) -> std::thread::JoinHandle<()> {
        let weak: Weak<Self> = Arc::downgrade(self);
        std::thread::spawn(move || {
            let mut warned: Option<std::time::Instant> = None;
            loop {
                std::thread::sleep(every);
                let Some(resolver) = weak.upgrade() else {
                    return;
                };
                // Failures are logged by `reload` and leave the old certificate.
                let _ = resolver.reload_if_changed();
                if warned.is_none_or(|t| t.elapsed() >= Duration::from_secs(24 * 3600))
                    && let Ok(info) = resolver.current()
                    && warn_if_expiring(&info, SystemTime::now())
                {
                    warned = Some(std::time::Instant::now());
                }
            }
        })
    }
}

impl ResolvesServerCert for ReloadingCertResolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(Arc::clone(
            &self.current.read().unwrap_or_else(PoisonError::into_inner),
        ))
    }
}

/// How long before its end a certificate in service is warned about.
pub const EXPIRY_WARNING: Duration = Duration::from_secs(14 * 24 * 3600);

/// Logs a warning if `info`'s certificate ends within [`EXPIRY_WARNING`] of
/// `now`; returns whether it did.
fn warn_if_expiring(info: &CertInfo, now: SystemTime) -> bool {
    let left = info.not_after.saturating_sub(unix_secs(now));
    let soon = i64::try_from(EXPIRY_WARNING.as_secs()).unwrap_or(i64::MAX);
    if left > soon {
        return false;
    }
    tracing::warn!(
        serial = %hex_serial(&info.serial),
        subject = %info.subject,
        days_left = left / 86_400,
        "tls certificate in service expires soon: replace it"
    );
    true
}

fn leaf_info(key: &CertifiedKey) -> Result<CertInfo, TlsError> {
    let leaf = key
        .cert
        .first()
        .ok_or_else(|| TlsError::BadCertificate("empty chain".into()))?;
    cert_info(leaf)
}

/// What a file looked like; `None` when it could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileStamp {
    modified: Option<SystemTime>,
    len: u64,
    /// Inode and change time (seconds, nanoseconds): a rename into place
    /// changes the first, any write the second, and neither can be set back.
    #[cfg(unix)]
    unix: (u64, i64, i64),
}

/// The chain's and the key's [`FileStamp`].
type Stamps = (Option<FileStamp>, Option<FileStamp>);

fn file_stamps(paths: &CertPaths) -> Stamps {
    let stamp = |p: &std::path::Path| {
        let m = std::fs::metadata(p).ok()?;
        #[cfg(unix)]
        let unix = {
            use std::os::unix::fs::MetadataExt;
            (m.ino(), m.ctime(), m.ctime_nsec())
        };
        Some(FileStamp {
            modified: m.modified().ok(),
            len: m.len(),
            #[cfg(unix)]
            unix,
        })
    };
    (stamp(&paths.cert), stamp(&paths.key))
}

fn hex_serial(serial: &[u8]) -> String {
    serial.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warns_within_the_last_fortnight_only() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let ending_in = |days: i64| CertInfo {
            serial: vec![1],
            subject: "CN=localhost".into(),
            not_after: 1_800_000_000 + days * 86_400,
        };
        assert!(!warn_if_expiring(&ending_in(15), now));
        assert!(warn_if_expiring(&ending_in(14), now));
        assert!(warn_if_expiring(&ending_in(1), now));
        assert!(warn_if_expiring(&ending_in(-3), now));
    }
}
