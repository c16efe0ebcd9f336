//! The crate's error type.

/// Everything a store can report. Backend causes are kept as sources.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StorageError {
    /// No row (or blob, or key material) with that id.
    #[error("not found")]
    NotFound,
    /// A compare-and-swap lost: the row changed since it was read.
    #[error("version conflict: expected {expected}, found {actual}")]
    VersionConflict {
        /// The version the caller read.
        expected: u64,
        /// The version in the store now.
        actual: u64,
    },
    /// A row with that id already exists.
    #[error("duplicate id")]
    DuplicateId,
    /// A name, id or argument outside what the store accepts.
    #[error("invalid {what}: {why}")]
    Invalid {
        /// What was invalid.
        what: &'static str,
        /// Why.
        why: &'static str,
    },
    /// A row read back does not make sense (negative version, bad blob name...).
    #[error("corrupt row: {0}")]
    Corrupt(String),
    /// The backend could not be reached or failed.
    #[error("storage backend unavailable")]
    Unavailable(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// A storage URL that names no known backend.
    #[error("unsupported storage url (use sqlite://, postgres://, memory:, file://)")]
    UnsupportedUrl,
    /// Reading or writing a local file failed.
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
}

impl From<sqlx::Error> for StorageError {
    fn from(e: sqlx::Error) -> Self {
        if let sqlx::Error::Database(db) = &e
            && db.is_unique_violation()
        {
            return Self::DuplicateId;
        }
        if let sqlx::Error::ColumnDecode { .. } | sqlx::Error::Decode(_) = &e {
            return Self::Corrupt(e.to_string());
        }
        Self::Unavailable(Box::new(e))
    }
}

/// Shorthand.
pub type Result<T, E = StorageError> = std::result::Result<T, E>;
