//! Helpers shared by the integration tests.

#![allow(dead_code, clippy::unwrap_used)]

use sqlx::Connection;

/// A PostgreSQL database of the calling test's own, dropped by [`OwnDb::drop_db`].
pub(crate) struct OwnDb {
    admin: String,
    name: String,
    /// Its URL.
    pub(crate) url: String,
}

impl OwnDb {
    /// Creates `<prefix>_<nanos>` on the server of `CARECONNECT_PG_URL`.
    pub(crate) async fn create(prefix: &str) -> Self {
        let admin = std::env::var("CARECONNECT_PG_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
        let name = format!(
            "{prefix}_{}",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        );
        let mut conn = sqlx::PgConnection::connect(&admin).await.unwrap();
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut conn)
            .await
            .unwrap();
        let (base, _) = admin.rsplit_once('/').unwrap();
        let url = format!("{base}/{name}");
        Self { admin, name, url }
    }

    /// Drops the database (closing whatever is still connected).
    pub(crate) async fn drop_db(self) {
        let mut conn = sqlx::PgConnection::connect(&self.admin).await.unwrap();
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "DROP DATABASE {} WITH (FORCE)",
            self.name
        )))
        .execute(&mut conn)
        .await
        .unwrap();
    }
}

/// Copies a data directory (a database, its KMS file, blobs), skipping
/// files that vanish meanwhile (SQLite's -wal and -shm as a closed clinic's
/// last connection finishes).
pub(crate) fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &to.join(e.file_name()));
        } else {
            match std::fs::copy(e.path(), to.join(e.file_name())) {
                Ok(_) => {}
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
                Err(err) => panic!("{err}"),
            }
        }
    }
}
