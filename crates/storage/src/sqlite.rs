//! The embedded default: one SQLite file in WAL mode, migrations applied on
//! open, safe for many tasks at once (writers serialise in SQLite; every
//! write transaction starts with its write so it waits on the busy timeout
//! instead of failing).

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Row as _, SqlitePool};

use crate::error::{Result, StorageError};
use crate::sql::{key_id_of, numbered, version_col, version_of, versions};
use crate::traits::{AuditLog, ChainBuilder, KeyStore, RecordStore};
use crate::types::{
    Collection, IndexEntry, Page, Row, RowId, Write, check_limit, check_writes, page_of,
};

const SCHEMA_VERSION: i64 = 3;
/// Audit entries per `INSERT` statement.
const AUDIT_ROWS_PER_INSERT: usize = 400;
const SCHEMA_V1: &str = "
CREATE TABLE records (
    collection TEXT NOT NULL,
    id TEXT NOT NULL,
    version INTEGER NOT NULL,
    key_id INTEGER NOT NULL,
    envelope BLOB NOT NULL,
    PRIMARY KEY (collection, id)
) WITHOUT ROWID;
CREATE INDEX records_by_key ON records (collection, key_id, id);
CREATE TABLE record_index (
    collection TEXT NOT NULL,
    id TEXT NOT NULL,
    name TEXT NOT NULL,
    token BLOB NOT NULL,
    PRIMARY KEY (collection, id, name)
) WITHOUT ROWID;
CREATE INDEX record_index_lookup ON record_index (collection, name, token);
CREATE TABLE audit (seq INTEGER PRIMARY KEY AUTOINCREMENT, entry BLOB NOT NULL);
CREATE TABLE key_material (name TEXT PRIMARY KEY, version INTEGER NOT NULL, bytes BLOB NOT NULL);
";
/// The audit log is append-only at the database too: whoever reaches the
/// file with SQL (not through this crate) cannot rewrite or remove entries
/// without first dropping these triggers, which the audit hash chain of the
/// domain layer then exposes.
const SCHEMA_V2: &str = "
CREATE TRIGGER audit_no_update BEFORE UPDATE ON audit
BEGIN SELECT RAISE(ABORT, 'audit log is append-only'); END;
CREATE TRIGGER audit_no_delete BEFORE DELETE ON audit
BEGIN SELECT RAISE(ABORT, 'audit log is append-only'); END;
";
/// `INSERT OR REPLACE` (or `REPLACE`) deletes the row it conflicts with
/// without firing delete triggers (`recursive_triggers` is off by default):
/// an insert naming an existing `seq` is refused before it gets that far.
const SCHEMA_V3: &str = "
CREATE TRIGGER audit_no_replace BEFORE INSERT ON audit
WHEN EXISTS (SELECT 1 FROM audit WHERE seq = NEW.seq)
BEGIN SELECT RAISE(ABORT, 'audit log is append-only'); END;
";

/// Rows, audit log and key material in one SQLite file.
#[derive(Debug, Clone)]
pub struct SqliteStore {
    pool: SqlitePool,
}

impl SqliteStore {
    /// Opens (creating if needed) the database file at `path` and migrates it.
    ///
    /// # Errors
    ///
    /// [`StorageError::Unavailable`] if the file cannot be opened or migrated.
    pub async fn open(path: &Path) -> Result<Self> {
        let opts = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(Duration::from_secs(10))
            .foreign_keys(true);
        Self::with_options(opts).await
    }

    /// Opens from a `sqlite://path` URL.
    ///
    /// # Errors
    ///
    /// As [`SqliteStore::open`].
    pub async fn open_url(url: &str) -> Result<Self> {
        let opts = SqliteConnectOptions::from_str(url)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(Duration::from_secs(10));
        Self::with_options(opts).await
    }

    async fn with_options(opts: SqliteConnectOptions) -> Result<Self> {
        // A local file has no connection to lose: skip the ping sqlx sends
        // before handing out a pooled connection (it doubled every query's
        // round trips to the connection's worker thread).
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .test_before_acquire(false)
            .connect_with(opts)
            .await?;
        let store = Self { pool };
        store.migrate().await?;
        Ok(store)
    }

    async fn migrate(&self) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        // Take the write lock first so two processes never migrate at once.
        sqlx::query("CREATE TABLE IF NOT EXISTS _migrate_lock (x INTEGER)")
            .execute(&mut *tx)
            .await?;
        let v: i64 = sqlx::query_scalar("PRAGMA user_version")
            .fetch_one(&mut *tx)
            .await?;
        if v > SCHEMA_VERSION {
            return Err(StorageError::Corrupt(format!(
                "database schema version {v} is newer than this build ({SCHEMA_VERSION})"
            )));
        }
        if v < 1 {
            sqlx::raw_sql(SCHEMA_V1).execute(&mut *tx).await?;
        }
        if v < 2 {
            sqlx::raw_sql(SCHEMA_V2).execute(&mut *tx).await?;
        }
        if v < 3 {
            sqlx::raw_sql(SCHEMA_V3).execute(&mut *tx).await?;
            sqlx::raw_sql("PRAGMA user_version = 3")
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Runs SQLite's `PRAGMA integrity_check`; `Ok` when the file is sound.
    ///
    /// # Errors
    ///
    /// [`StorageError::Corrupt`] with SQLite's report.
    pub async fn integrity_check(&self) -> Result<()> {
        let report: Vec<String> = sqlx::query_scalar("PRAGMA integrity_check")
            .fetch_all(&self.pool)
            .await?;
        if report == ["ok"] {
            Ok(())
        } else {
            Err(StorageError::Corrupt(report.join("; ")))
        }
    }

    /// Closes the pool, waiting for connections to finish.
    pub async fn close(&self) {
        self.pool.close().await;
    }
}

/// Folds joined (row, index) result rows into rows, in order.
fn fold(rows: Vec<sqlx::sqlite::SqliteRow>) -> Result<Vec<Row>> {
    let mut out: Vec<Row> = Vec::new();
    for r in rows {
        let id: String = r.try_get("id")?;
        if out.last().is_none_or(|last| last.id.as_str() != id) {
            out.push(Row {
                id: RowId::new(id).map_err(|e| StorageError::Corrupt(e.to_string()))?,
                version: version_of(r.try_get("version")?)?,
                key_id: key_id_of(r.try_get("key_id")?)?,
                envelope: r.try_get("envelope")?,
                indexes: Vec::new(),
            });
        }
        let name: Option<String> = r.try_get("name")?;
        let token: Option<Vec<u8>> = r.try_get("token")?;
        if let (Some(name), Some(token), Some(last)) = (name, token, out.last_mut()) {
            last.indexes.push(IndexEntry { name, token });
        }
    }
    Ok(out)
}

/// Wraps a row query (binding the collection as `?1`) so each row comes with
/// its index entries; a static string, so no SQL is built at run time.
macro_rules! joined {
    ($inner:literal) => {
        concat!(
            "SELECT r.id, r.version, r.key_id, r.envelope, i.name, i.token FROM (",
            $inner,
            ") r LEFT JOIN record_index i ON i.collection = ?1 AND i.id = r.id ORDER BY r.id, i.name"
        )
    };
}

impl SqliteStore {
    async fn write_indexes(
        tx: &mut sqlx::SqliteConnection,
        coll: &Collection,
        id: &RowId,
        indexes: &[IndexEntry],
    ) -> Result<()> {
        for i in indexes {
            sqlx::query(
                "INSERT INTO record_index (collection, id, name, token) VALUES (?1, ?2, ?3, ?4)",
            )
            .bind(coll.as_str())
            .bind(id.as_str())
            .bind(&i.name)
            .bind(&i.token)
            .execute(&mut *tx)
            .await?;
        }
        Ok(())
    }

    async fn clear_indexes(
        tx: &mut sqlx::SqliteConnection,
        coll: &Collection,
        id: &RowId,
    ) -> Result<()> {
        sqlx::query("DELETE FROM record_index WHERE collection = ?1 AND id = ?2")
            .bind(coll.as_str())
            .bind(id.as_str())
            .execute(&mut *tx)
            .await?;
        Ok(())
    }

    /// The error for a compare-and-swap that matched no row, read inside
    /// the failed transaction.
    async fn conflict(
        tx: &mut sqlx::SqliteConnection,
        coll: &Collection,
        id: &RowId,
        expected: u64,
    ) -> StorageError {
        let v: std::result::Result<Option<i64>, sqlx::Error> =
            sqlx::query_scalar("SELECT version FROM records WHERE collection = ?1 AND id = ?2")
                .bind(coll.as_str())
                .bind(id.as_str())
                .fetch_optional(&mut *tx)
                .await;
        match v
            .map_err(StorageError::from)
            .and_then(|v| v.map(version_of).transpose())
        {
            Ok(Some(actual)) => StorageError::VersionConflict { expected, actual },
            Ok(None) => StorageError::NotFound,
            Err(e) => e,
        }
    }

    /// Applies one write of a batch inside `tx`; returns the new version.
    async fn apply(tx: &mut sqlx::SqliteConnection, write: &Write) -> Result<u64> {
        match write {
            Write::Insert { coll, id, data } => {
                sqlx::query("INSERT INTO records (collection, id, version, key_id, envelope) VALUES (?1, ?2, 1, ?3, ?4)")
                    .bind(coll.as_str())
                    .bind(id.as_str())
                    .bind(i64::from(data.key_id))
                    .bind(&data.envelope)
                    .execute(&mut *tx)
                    .await?;
                // Index entries left over without their row (written
                // outside this store) must not block or join the new row.
                Self::clear_indexes(tx, coll, id).await?;
                Self::write_indexes(tx, coll, id, &data.indexes).await?;
                Ok(1)
            }
            Write::Update {
                coll,
                id,
                expected,
                data,
            } => {
                let (exp, next_col, next) = versions(*expected)?;
                let done = sqlx::query(
                    "UPDATE records SET version = ?3, key_id = ?4, envelope = ?5 WHERE collection = ?1 AND id = ?2 AND version = ?6",
                )
                .bind(coll.as_str())
                .bind(id.as_str())
                .bind(next_col)
                .bind(i64::from(data.key_id))
                .bind(&data.envelope)
                .bind(exp)
                .execute(&mut *tx)
                .await?;
                if done.rows_affected() != 1 {
                    return Err(Self::conflict(tx, coll, id, *expected).await);
                }
                Self::clear_indexes(tx, coll, id).await?;
                Self::write_indexes(tx, coll, id, &data.indexes).await?;
                Ok(next)
            }
            Write::Delete { coll, id, expected } => {
                let exp = version_col(*expected)?;
                let done = sqlx::query(
                    "DELETE FROM records WHERE collection = ?1 AND id = ?2 AND version = ?3",
                )
                .bind(coll.as_str())
                .bind(id.as_str())
                .bind(exp)
                .execute(&mut *tx)
                .await?;
                if done.rows_affected() != 1 {
                    return Err(Self::conflict(tx, coll, id, *expected).await);
                }
                Self::clear_indexes(tx, coll, id).await?;
                Ok(0)
            }
        }
    }

    async fn page(
        &self,
        sql: &'static str,
        coll: &Collection,
        key_id: Option<u32>,
        after: Option<&RowId>,
        limit: usize,
    ) -> Result<Page> {
        let limit = check_limit(limit)?;
        let mut q = sqlx::query(sql)
            .bind(coll.as_str())
            .bind(after.map_or("", RowId::as_str))
            .bind(i64::try_from(limit + 1).unwrap_or(i64::MAX));
        if let Some(k) = key_id {
            q = q.bind(i64::from(k));
        }
        Ok(page_of(fold(q.fetch_all(&self.pool).await?)?, limit))
    }
}

#[async_trait]
impl RecordStore for SqliteStore {
    async fn commit(&self, writes: &[Write]) -> Result<Vec<u64>> {
        check_writes(writes)?;
        // IMMEDIATE: take the write lock first, so a batch never fails
        // half-way on a lock upgrade.
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        let mut out = Vec::with_capacity(writes.len());
        for w in writes {
            out.push(Self::apply(&mut tx, w).await?);
        }
        tx.commit().await?;
        Ok(out)
    }

    async fn get(&self, coll: &Collection, id: &RowId) -> Result<Row> {
        let sql = joined!(
            "SELECT id, version, key_id, envelope FROM records WHERE collection = ?1 AND id = ?2"
        );
        let rows = sqlx::query(sql)
            .bind(coll.as_str())
            .bind(id.as_str())
            .fetch_all(&self.pool)
            .await?;
        fold(rows)?.into_iter().next().ok_or(StorageError::NotFound)
    }

    async fn find(&self, coll: &Collection, entry: &IndexEntry) -> Result<Vec<Row>> {
        let sql = joined!(
            "SELECT r.id, r.version, r.key_id, r.envelope FROM records r \
             JOIN record_index x ON x.collection = r.collection AND x.id = r.id \
             WHERE r.collection = ?1 AND x.name = ?2 AND x.token = ?3"
        );
        let rows = sqlx::query(sql)
            .bind(coll.as_str())
            .bind(&entry.name)
            .bind(&entry.token)
            .fetch_all(&self.pool)
            .await?;
        fold(rows)
    }

    async fn list(&self, coll: &Collection, after: Option<&RowId>, limit: usize) -> Result<Page> {
        self.page(
            joined!("SELECT id, version, key_id, envelope FROM records WHERE collection = ?1 AND id > ?2 ORDER BY id LIMIT ?3"),
            coll,
            None,
            after,
            limit,
        )
        .await
    }

    async fn scan_key(
        &self,
        coll: &Collection,
        key_id: u32,
        after: Option<&RowId>,
        limit: usize,
    ) -> Result<Page> {
        self.page(
            joined!("SELECT id, version, key_id, envelope FROM records WHERE collection = ?1 AND key_id = ?4 AND id > ?2 ORDER BY id LIMIT ?3"),
            coll,
            Some(key_id),
            after,
            limit,
        )
        .await
    }
}

#[async_trait]
impl AuditLog for SqliteStore {
    async fn append(&self, entry: Vec<u8>) -> Result<u64> {
        let seq: i64 = sqlx::query_scalar("INSERT INTO audit (entry) VALUES (?1) RETURNING seq")
            .bind(entry)
            .fetch_one(&self.pool)
            .await?;
        version_of(seq)
    }

    async fn append_chained(&self, build: &ChainBuilder<'_>) -> Result<u64> {
        // IMMEDIATE: take the write lock before reading the tail, so no
        // other writer (connection or process) can append in between.
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        let tail: Option<(i64, Vec<u8>)> =
            sqlx::query_as("SELECT seq, entry FROM audit ORDER BY seq DESC LIMIT 1")
                .fetch_optional(&mut *tx)
                .await?;
        let last = match &tail {
            Some((seq, _)) => version_of(*seq)?,
            None => 0,
        };
        let entries = build(tail.as_ref().map(|(_, e)| (last, e.as_slice())));
        let (first, entries) = numbered(last, entries)?;
        // One statement per chunk, not per entry: each statement is a round
        // trip to the connection's thread. Two parameters per row, well
        // under SQLite's limit.
        for chunk in entries.chunks(AUDIT_ROWS_PER_INSERT) {
            let mut insert = sqlx::QueryBuilder::new("INSERT INTO audit (seq, entry) ");
            insert.push_values(chunk, |mut row, (seq, entry)| {
                row.push_bind(*seq).push_bind(entry.as_slice());
            });
            insert.build().execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(first)
    }

    async fn read(&self, from: u64, limit: usize) -> Result<Vec<(u64, Vec<u8>)>> {
        let limit = check_limit(limit)?;
        let rows =
            sqlx::query("SELECT seq, entry FROM audit WHERE seq >= ?1 ORDER BY seq LIMIT ?2")
                .bind(i64::try_from(from).unwrap_or(i64::MAX))
                .bind(i64::try_from(limit).unwrap_or(i64::MAX))
                .fetch_all(&self.pool)
                .await?;
        rows.into_iter()
            .map(|r| Ok((version_of(r.try_get("seq")?)?, r.try_get("entry")?)))
            .collect()
    }
}

#[async_trait]
impl KeyStore for SqliteStore {
    async fn load(&self, name: &str) -> Result<(u64, Vec<u8>)> {
        let r = sqlx::query("SELECT version, bytes FROM key_material WHERE name = ?1")
            .bind(name)
            .fetch_optional(&self.pool)
            .await?
            .ok_or(StorageError::NotFound)?;
        Ok((version_of(r.try_get("version")?)?, r.try_get("bytes")?))
    }

    async fn store(&self, name: &str, expected: Option<u64>, bytes: Vec<u8>) -> Result<u64> {
        match expected {
            None => {
                sqlx::query("INSERT INTO key_material (name, version, bytes) VALUES (?1, 1, ?2)")
                    .bind(name)
                    .bind(bytes)
                    .execute(&self.pool)
                    .await?;
                Ok(1)
            }
            Some(e) => {
                let (exp, next_col, next) = versions(e)?;
                let done = sqlx::query("UPDATE key_material SET version = ?2, bytes = ?3 WHERE name = ?1 AND version = ?4")
                    .bind(name)
                    .bind(next_col)
                    .bind(bytes)
                    .bind(exp)
                    .execute(&self.pool)
                    .await?;
                if done.rows_affected() == 1 {
                    return Ok(next);
                }
                match self.load(name).await {
                    Ok((actual, _)) => Err(StorageError::VersionConflict {
                        expected: e,
                        actual,
                    }),
                    Err(err) => Err(err),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Someone with SQL access to the file (not through this crate) cannot
    /// rewrite or delete audit entries.
    #[tokio::test]
    async fn audit_rows_refuse_update_and_delete_in_sql() {
        let dir = tempfile::tempdir().unwrap();
        let s = SqliteStore::open(&dir.path().join("a.db")).await.unwrap();
        let seq = s.append(b"doctor 7 read record 42".to_vec()).await.unwrap();
        let seq = i64::try_from(seq).unwrap();
        for sql in [
            "UPDATE audit SET entry = x'00' WHERE seq = ?1",
            "DELETE FROM audit WHERE seq = ?1",
            "DELETE FROM audit",
            "INSERT OR REPLACE INTO audit (seq, entry) VALUES (?1, x'00')",
            "REPLACE INTO audit (seq, entry) VALUES (?1, x'00')",
            "INSERT INTO audit (seq, entry) VALUES (?1, x'00') ON CONFLICT (seq) DO UPDATE SET entry = x'00'",
        ] {
            let err = sqlx::query(sql)
                .bind(seq)
                .execute(&s.pool)
                .await
                .unwrap_err();
            assert!(err.to_string().contains("append-only"), "{sql}: {err}");
        }
        let entries = s.read(1, 10).await.unwrap();
        assert_eq!(entries, vec![(1, b"doctor 7 read record 42".to_vec())]);
        // Appending still works.
        assert_eq!(s.append(b"next".to_vec()).await.unwrap(), 2);
    }

    /// A file made by schema version 1 gains the triggers on open.
    #[tokio::test]
    async fn version_1_files_are_migrated() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v1.db");
        {
            let opts = SqliteConnectOptions::new()
                .filename(&path)
                .create_if_missing(true);
            let pool = SqlitePoolOptions::new().connect_with(opts).await.unwrap();
            sqlx::raw_sql(SCHEMA_V1).execute(&pool).await.unwrap();
            sqlx::raw_sql("PRAGMA user_version = 1")
                .execute(&pool)
                .await
                .unwrap();
            sqlx::query("INSERT INTO audit (entry) VALUES (x'01')")
                .execute(&pool)
                .await
                .unwrap();
            pool.close().await;
        }
        let s = SqliteStore::open(&path).await.unwrap();
        assert!(
            sqlx::query("DELETE FROM audit")
                .execute(&s.pool)
                .await
                .is_err()
        );
        assert_eq!(s.read(1, 10).await.unwrap(), vec![(1, vec![1])]);
    }
}
