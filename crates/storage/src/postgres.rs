//! PostgreSQL, for when one machine is not enough: several web nodes share
//! one database. Same semantics as [`crate::SqliteStore`] (the conformance
//! suite runs against both): compare-and-swap via `UPDATE ... WHERE version`,
//! which under READ COMMITTED re-checks the row after waiting on its lock, so
//! exactly one of several racing writers wins; audit sequence numbers come
//! from a counter row updated in the appending transaction, so a rolled-back
//! append leaves no gap (a SEQUENCE would).

use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{PgPool, Row as _};

use crate::error::{Result, StorageError};
use crate::sql::{key_id_of, numbered, version_col, version_of, versions};
use crate::traits::{AuditLog, ChainBuilder, KeyStore, RecordStore};
use crate::types::{
    Collection, IndexEntry, Page, Row, RowId, Write, check_limit, check_writes, page_of,
};

const SCHEMA_VERSION: i64 = 3;
const SCHEMA_V1: &str = "
CREATE TABLE records (
    collection TEXT NOT NULL,
    id TEXT NOT NULL,
    version BIGINT NOT NULL,
    key_id BIGINT NOT NULL,
    envelope BYTEA NOT NULL,
    PRIMARY KEY (collection, id)
);
CREATE INDEX records_by_key ON records (collection, key_id, id);
CREATE TABLE record_index (
    collection TEXT NOT NULL,
    id TEXT NOT NULL,
    name TEXT NOT NULL,
    token BYTEA NOT NULL,
    PRIMARY KEY (collection, id, name)
);
CREATE INDEX record_index_lookup ON record_index (collection, name, token);
CREATE TABLE audit (seq BIGINT PRIMARY KEY, entry BYTEA NOT NULL);
CREATE TABLE audit_seq (one BOOLEAN PRIMARY KEY DEFAULT TRUE CHECK (one), last BIGINT NOT NULL);
INSERT INTO audit_seq (last) VALUES (0);
CREATE TABLE key_material (name TEXT PRIMARY KEY, version BIGINT NOT NULL, bytes BYTEA NOT NULL);
";
/// The audit log is append-only at the database too (UPDATE, DELETE and
/// TRUNCATE raise), for whoever reaches it with SQL rather than this crate.
/// The owner of the table can still drop the triggers: run the web nodes as a
/// role that does not own the schema to close that too.
const SCHEMA_V2: &str = "
CREATE FUNCTION careconnect_audit_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit log is append-only' USING ERRCODE = 'insufficient_privilege';
END
$$;
CREATE TRIGGER audit_no_update_delete BEFORE UPDATE OR DELETE ON audit
    FOR EACH ROW EXECUTE FUNCTION careconnect_audit_append_only();
CREATE TRIGGER audit_no_truncate BEFORE TRUNCATE ON audit
    FOR EACH STATEMENT EXECUTE FUNCTION careconnect_audit_append_only();
";

/// The audit counter only ever counts up: set back, a later append would
/// collide with an existing entry and auditing would stop. (Set forward, the
/// log shows a gap, which the domain layer's hash chain reports.)
const SCHEMA_V3: &str = "
CREATE FUNCTION careconnect_audit_seq_forward() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP <> 'UPDATE' OR NEW.last <= OLD.last THEN
        RAISE EXCEPTION 'audit log is append-only: its counter counts up by one' USING ERRCODE = 'insufficient_privilege';
    END IF;
    RETURN NEW;
END
$$;
CREATE TRIGGER audit_seq_forward BEFORE UPDATE OR DELETE ON audit_seq
    FOR EACH ROW EXECUTE FUNCTION careconnect_audit_seq_forward();
CREATE TRIGGER audit_seq_no_truncate BEFORE TRUNCATE ON audit_seq
    FOR EACH STATEMENT EXECUTE FUNCTION careconnect_audit_append_only();
";

/// How long [`PgStore::connect`] waits for a connection by default: short,
/// so that a health check or a start against a server that is down answers
/// quickly. [`PgStore::connect_with`] takes another.
pub const PG_CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// Rows, audit log and key material in a PostgreSQL database, through a
/// connection pool.
#[derive(Debug, Clone)]
pub struct PgStore {
    pool: PgPool,
}

impl PgStore {
    /// Connects to a `postgres://` URL (pool of `max_connections`) and
    /// migrates the schema, waiting at most [`PG_CONNECT_TIMEOUT`] for a
    /// connection.
    ///
    /// # Errors
    ///
    /// [`StorageError::Unavailable`] if the server cannot be reached in time
    /// or the migration fails.
    pub async fn connect(url: &str, max_connections: u32) -> Result<Self> {
        Self::connect_with(url, max_connections, PG_CONNECT_TIMEOUT).await
    }

    /// As [`PgStore::connect`], waiting at most `connect_timeout` for each
    /// connection (at start, and whenever the pool needs one later).
    ///
    /// # Errors
    ///
    /// As [`PgStore::connect`].
    pub async fn connect_with(
        url: &str,
        max_connections: u32,
        connect_timeout: Duration,
    ) -> Result<Self> {
        let opts = PgConnectOptions::from_str(url)?;
        let pool = PgPoolOptions::new()
            .max_connections(max_connections.max(1))
            .acquire_timeout(connect_timeout)
            .connect_with(opts)
            .await?;
        let store = Self { pool };
        store.migrate().await?;
        Ok(store)
    }

    async fn migrate(&self) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        // One migrator at a time across every node sharing the database.
        sqlx::query("SELECT pg_advisory_xact_lock(7426019)")
            .execute(&mut *tx)
            .await?;
        sqlx::raw_sql("CREATE TABLE IF NOT EXISTS careconnect_schema (version BIGINT NOT NULL)")
            .execute(&mut *tx)
            .await?;
        let v: Option<i64> = sqlx::query_scalar("SELECT max(version) FROM careconnect_schema")
            .fetch_one(&mut *tx)
            .await?;
        let v = v.unwrap_or(0);
        if v > SCHEMA_VERSION {
            return Err(StorageError::Corrupt(format!(
                "database schema version {v} is newer than this build ({SCHEMA_VERSION})"
            )));
        }
        if v < 1 {
            sqlx::raw_sql(SCHEMA_V1).execute(&mut *tx).await?;
            sqlx::query("INSERT INTO careconnect_schema (version) VALUES (1)")
                .execute(&mut *tx)
                .await?;
        }
        if v < 2 {
            sqlx::raw_sql(SCHEMA_V2).execute(&mut *tx).await?;
            sqlx::query("INSERT INTO careconnect_schema (version) VALUES (2)")
                .execute(&mut *tx)
                .await?;
        }
        if v < 3 {
            sqlx::raw_sql(SCHEMA_V3).execute(&mut *tx).await?;
            sqlx::query("INSERT INTO careconnect_schema (version) VALUES (3)")
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Closes the pool, waiting for connections to finish.
    pub async fn close(&self) {
        self.pool.close().await;
    }
}

/// Folds joined (row, index) result rows into rows, in order.
fn fold(rows: Vec<sqlx::postgres::PgRow>) -> Result<Vec<Row>> {
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

/// Wraps a row query (binding the collection as `$1`) so each row comes with
/// its index entries; a static string, so no SQL is built at run time.
macro_rules! joined {
    ($inner:literal) => {
        concat!(
            "SELECT r.id, r.version, r.key_id, r.envelope, i.name, i.token FROM (",
            $inner,
            ") r LEFT JOIN record_index i ON i.collection = $1 AND i.id = r.id ORDER BY r.id, i.name"
        )
    };
}

impl PgStore {
    async fn write_indexes(
        tx: &mut sqlx::PgConnection,
        coll: &Collection,
        id: &RowId,
        indexes: &[IndexEntry],
    ) -> Result<()> {
        for i in indexes {
            sqlx::query(
                "INSERT INTO record_index (collection, id, name, token) VALUES ($1, $2, $3, $4)",
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
        tx: &mut sqlx::PgConnection,
        coll: &Collection,
        id: &RowId,
    ) -> Result<()> {
        sqlx::query("DELETE FROM record_index WHERE collection = $1 AND id = $2")
            .bind(coll.as_str())
            .bind(id.as_str())
            .execute(&mut *tx)
            .await?;
        Ok(())
    }

    /// The error for a compare-and-swap that matched no row, read inside
    /// the failed transaction.
    async fn conflict(
        tx: &mut sqlx::PgConnection,
        coll: &Collection,
        id: &RowId,
        expected: u64,
    ) -> StorageError {
        let v: std::result::Result<Option<i64>, sqlx::Error> =
            sqlx::query_scalar("SELECT version FROM records WHERE collection = $1 AND id = $2")
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
    async fn apply(tx: &mut sqlx::PgConnection, write: &Write) -> Result<u64> {
        match write {
            Write::Insert { coll, id, data } => {
                sqlx::query("INSERT INTO records (collection, id, version, key_id, envelope) VALUES ($1, $2, 1, $3, $4)")
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
                    "UPDATE records SET version = $3, key_id = $4, envelope = $5 WHERE collection = $1 AND id = $2 AND version = $6",
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
                    "DELETE FROM records WHERE collection = $1 AND id = $2 AND version = $3",
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
impl RecordStore for PgStore {
    async fn commit(&self, writes: &[Write]) -> Result<Vec<u64>> {
        check_writes(writes)?;
        // Each statement takes its row locks; a failure rolls everything back
        // when `tx` drops.
        let mut tx = self.pool.begin().await?;
        let mut out = Vec::with_capacity(writes.len());
        for w in writes {
            out.push(Self::apply(&mut tx, w).await?);
        }
        tx.commit().await?;
        Ok(out)
    }

    async fn get(&self, coll: &Collection, id: &RowId) -> Result<Row> {
        let sql = joined!(
            "SELECT id, version, key_id, envelope FROM records WHERE collection = $1 AND id = $2"
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
             WHERE r.collection = $1 AND x.name = $2 AND x.token = $3"
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
            joined!("SELECT id, version, key_id, envelope FROM records WHERE collection = $1 AND id > $2 ORDER BY id LIMIT $3"),
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
            joined!("SELECT id, version, key_id, envelope FROM records WHERE collection = $1 AND key_id = $4 AND id > $2 ORDER BY id LIMIT $3"),
            coll,
            Some(key_id),
            after,
            limit,
        )
        .await
    }
}

#[async_trait]
impl AuditLog for PgStore {
    async fn append(&self, entry: Vec<u8>) -> Result<u64> {
        let mut tx = self.pool.begin().await?;
        let seq: i64 = sqlx::query_scalar("UPDATE audit_seq SET last = last + 1 RETURNING last")
            .fetch_one(&mut *tx)
            .await?;
        sqlx::query("INSERT INTO audit (seq, entry) VALUES ($1, $2)")
            .bind(seq)
            .bind(entry)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        version_of(seq)
    }

    async fn append_chained(&self, build: &ChainBuilder<'_>) -> Result<u64> {
        let mut tx = self.pool.begin().await?;
        // The counter row's lock orders every append, across all nodes.
        let last: i64 = sqlx::query_scalar("SELECT last FROM audit_seq FOR UPDATE")
            .fetch_one(&mut *tx)
            .await?;
        let tail: Option<Vec<u8>> = sqlx::query_scalar("SELECT entry FROM audit WHERE seq = $1")
            .bind(last)
            .fetch_optional(&mut *tx)
            .await?;
        let last_u = version_of(last)?;
        let entries = build(tail.as_deref().map(|e| (last_u, e)));
        let (first, entries) = numbered(last_u, entries)?;
        // At most 10,000 entries (checked by `numbered`).
        let n = i64::try_from(entries.len()).unwrap_or(i64::MAX);
        if n > 0 {
            // One statement for the batch, not one round trip per entry.
            let (seqs, entries): (Vec<i64>, Vec<Vec<u8>>) = entries.into_iter().unzip();
            sqlx::query(
                "INSERT INTO audit (seq, entry) SELECT * FROM UNNEST($1::bigint[], $2::bytea[])",
            )
            .bind(seqs)
            .bind(entries)
            .execute(&mut *tx)
            .await?;
            sqlx::query("UPDATE audit_seq SET last = last + $1")
                .bind(n)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(first)
    }

    async fn read(&self, from: u64, limit: usize) -> Result<Vec<(u64, Vec<u8>)>> {
        let limit = check_limit(limit)?;
        let rows =
            sqlx::query("SELECT seq, entry FROM audit WHERE seq >= $1 ORDER BY seq LIMIT $2")
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
impl KeyStore for PgStore {
    async fn load(&self, name: &str) -> Result<(u64, Vec<u8>)> {
        let r = sqlx::query("SELECT version, bytes FROM key_material WHERE name = $1")
            .bind(name)
            .fetch_optional(&self.pool)
            .await?
            .ok_or(StorageError::NotFound)?;
        Ok((version_of(r.try_get("version")?)?, r.try_get("bytes")?))
    }

    async fn store(&self, name: &str, expected: Option<u64>, bytes: Vec<u8>) -> Result<u64> {
        match expected {
            None => {
                sqlx::query("INSERT INTO key_material (name, version, bytes) VALUES ($1, 1, $2)")
                    .bind(name)
                    .bind(bytes)
                    .execute(&self.pool)
                    .await?;
                Ok(1)
            }
            Some(e) => {
                let (exp, next_col, next) = versions(e)?;
                let done = sqlx::query("UPDATE key_material SET version = $2, bytes = $3 WHERE name = $1 AND version = $4")
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

    fn pg_url() -> String {
        std::env::var("CARECONNECT_PG_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
    }

    /// Someone with SQL access to the database (not through this crate)
    /// cannot rewrite, delete or truncate audit entries.
    #[tokio::test]
    async fn audit_rows_refuse_update_delete_and_truncate_in_sql() {
        let s = PgStore::connect(&pg_url(), 2).await.unwrap();
        let entry = b"doctor 7 read record 42".to_vec();
        let seq = s.append(entry.clone()).await.unwrap();
        let col = i64::try_from(seq).unwrap();
        for sql in [
            "UPDATE audit SET entry = '\\x00' WHERE seq = $1",
            "DELETE FROM audit WHERE seq = $1",
            "TRUNCATE audit",
            "INSERT INTO audit (seq, entry) VALUES ($1, '\\x00') ON CONFLICT (seq) DO UPDATE SET entry = '\\x00'",
            "UPDATE audit_seq SET last = 0 WHERE last > $1 - $1",
            "DELETE FROM audit_seq WHERE last > $1 - $1",
            "TRUNCATE audit_seq",
        ] {
            let err = sqlx::query(sql)
                .bind(col)
                .execute(&s.pool)
                .await
                .unwrap_err();
            assert!(err.to_string().contains("append-only"), "{sql}: {err}");
        }
        assert_eq!(s.read(seq, 1).await.unwrap(), vec![(seq, entry)]);
        // Appending still works (other tests may append concurrently).
        assert!(s.append(b"next".to_vec()).await.unwrap() > seq);
    }

    /// A server that accepts connections but never answers: the connect
    /// gives up after the configured timeout instead of hanging.
    #[tokio::test]
    async fn connect_gives_up_on_a_silent_server() {
        let tarpit = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = tarpit.local_addr().unwrap().port();
        let hold = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((sock, _)) = tarpit.accept().await {
                held.push(sock);
            }
        });
        let url = format!("postgres://postgres@127.0.0.1:{port}/test");
        // The guard only stops a hang from blocking the suite; it is not a
        // timing assertion.
        let r = tokio::time::timeout(
            Duration::from_secs(120),
            PgStore::connect_with(&url, 1, Duration::from_millis(300)),
        )
        .await
        .expect("connect_with returned instead of hanging");
        assert!(matches!(r, Err(StorageError::Unavailable(_))), "{r:?}");
        hold.abort();
    }
}
