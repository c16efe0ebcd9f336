//! The crate's one error type.

use thiserror::Error;

/// Everything that can go wrong in the clinic's domain layer. No variant
/// carries patient data, keys or tokens.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum CoreError {
    /// The storage layer failed.
    #[error("storage: {0}")]
    Storage(#[from] careconnect_storage::StorageError),
    /// Sealing, opening or a KMS call failed.
    #[error("crypto: {0}")]
    Crypto(#[from] careconnect_crypto::Error),
    /// Authentication or authorization machinery failed (not a denial).
    #[error("authz: {0}")]
    Authz(#[from] careconnect_authz::AuthzError),
    /// The policy refused (the refusal is in the audit log).
    #[error("access denied")]
    Denied(careconnect_authz::DenyReason),
    /// Break-glass needs a stated reason of at least ten characters.
    #[error("a reason is required")]
    ReasonRequired,
    /// The subject was erased: their data can never be opened again.
    #[error("subject erased")]
    Erased,
    /// Input refused (what was wrong is named; nothing was changed).
    #[error("invalid {0}")]
    Invalid(&'static str),
    /// An upload larger than the configured limit (in bytes); nothing was
    /// stored.
    #[error("larger than the limit of {limit} bytes")]
    TooLarge {
        /// The limit.
        limit: u64,
    },
    /// No such thing, or nothing the principal may see by that id (the two
    /// are not told apart, so ids do not leak).
    #[error("not found")]
    NotFound,
    /// The thing is not in a state that allows this (already paid or
    /// cancelled, slot taken, in the past). Nothing was changed.
    #[error("not allowed now: {0}")]
    Conflict(&'static str),
    /// A stored entry that does not decode.
    #[error("stored {0} is corrupt")]
    Corrupt(&'static str),
    /// The audit writer stopped (its task ended); nothing more can be audited,
    /// so nothing more may be done.
    #[error("audit log unavailable")]
    AuditUnavailable,
    /// The audit log no longer holds its anchored head (entries were cut off
    /// or replaced in the database): nothing more is appended, so the cut
    /// cannot be hidden under new entries. Nothing more may be done either.
    #[error("audit log tampered with: appends refused")]
    AuditTampered,
    /// A compromise rotation found audit entries chained under the
    /// compromised key after entry `after`, from which every node chains
    /// under the new one (the last such: `last`): forged with the stolen
    /// key, or written by a node that did not reload. The key is not
    /// destroyed. Review the entries, then accept them by number
    /// ([`crate::rotation::Rotation::accept_late_audit_entries`]) to go on.
    #[error(
        "audit entries chained under the compromised key after entry {after} (the last: {last}): review them, then accept them to go on"
    )]
    LateAuditEntries {
        /// Entries after this one should be under the new key.
        after: u64,
        /// The last entry under the compromised key.
        last: u64,
    },
    /// This process has not confirmed its clinic keyring against the stored
    /// keyset within its lease (the database or KMS unreachable, or the
    /// process paused): nothing is audited, so nothing is done, until it
    /// has. Another process may have replaced a key it would seal under.
    #[error("clinic keyring not confirmed recently: try again shortly")]
    KeyringStale,
    /// A settings file that does not parse or says something impossible
    /// (the reason names the field; settings files hold no secrets).
    #[error("configuration: {0}")]
    Config(String),
    /// Reading or writing a local file (the audit anchor) failed.
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
}
