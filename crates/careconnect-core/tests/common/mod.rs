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
