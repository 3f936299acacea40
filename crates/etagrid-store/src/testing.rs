//! Test support (for this workspace's tests, not for users): a fresh PostgreSQL database per test
//! on the server named by `ETAGRID_TEST_PG`.
//!
//! `scripts/test.sh` starts a throw-away server (`scripts/pg-local.sh up`) and exports
//! `ETAGRID_TEST_PG=postgres://postgres@127.0.0.1:55432/postgres`. Without it a PostgreSQL test
//! **fails** with a message saying how to start one, unless `ETAGRID_SKIP_PG=1` is set: it must
//! never pass without having run.

use crate::StoreUrl;
use sqlx::{Connection, PgConnection};
use std::sync::atomic::{AtomicU64, Ordering};

/// The variable naming the test server (a URL to an existing database with CREATE DATABASE rights).
pub const TEST_PG_ENV: &str = "ETAGRID_TEST_PG";
/// Set to 1 to skip the PostgreSQL tests instead of failing them when `ETAGRID_TEST_PG` is unset.
pub const SKIP_PG_ENV: &str = "ETAGRID_SKIP_PG";

/// The test server's URL; `None` when the PostgreSQL tests are to be skipped (`ETAGRID_SKIP_PG=1`
/// and no `ETAGRID_TEST_PG`). Panics, saying what to do, when neither is set.
pub fn test_server() -> Option<String> {
    match std::env::var(TEST_PG_ENV) {
        Ok(url) if !url.trim().is_empty() => Some(url),
        _ if std::env::var(SKIP_PG_ENV).is_ok_and(|v| v == "1") => {
            eprintln!("skipping a PostgreSQL test: {SKIP_PG_ENV}=1 and {TEST_PG_ENV} is unset");
            None
        }
        _ => panic!(
            "this test needs PostgreSQL: run `scripts/pg-local.sh up` and \
             `export {TEST_PG_ENV}=$(scripts/pg-local.sh url)` (scripts/test.sh does both), \
             or set {SKIP_PG_ENV}=1 to skip the PostgreSQL tests"
        ),
    }
}

/// A database created for one test on the test server, dropped (with its connections) on drop.
#[derive(Debug)]
pub struct TestDatabase {
    server: String,
    name: String,
    url: String,
}

impl TestDatabase {
    /// Creates an empty database with a name no other test (in this or another process) uses.
    pub async fn create(server: &str) -> TestDatabase {
        static N: AtomicU64 = AtomicU64::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let name = format!(
            "etagrid_test_{}_{}_{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed),
            nanos
        );
        let mut admin = PgConnection::connect(server).await.unwrap_or_else(|e| {
            panic!(
                "connect to the test server {} ({TEST_PG_ENV}): {e} — is it running? \
                 (`scripts/pg-local.sh up`)",
                crate::redact(server)
            )
        });
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut admin)
            .await
            .unwrap_or_else(|e| panic!("CREATE DATABASE {name}: {e}"));
        let _ = admin.close().await;
        let url = with_database(server, &name);
        TestDatabase {
            server: server.to_owned(),
            name,
            url,
        }
    }

    /// The database's URL (`postgres://…/<name>`).
    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn store_url(&self) -> StoreUrl {
        StoreUrl::Postgres(self.url.clone())
    }

    pub fn name(&self) -> &str {
        &self.name
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        // Drop runs inside the test's runtime: use a thread with its own. Best effort — the
        // server is a throw-away one (`scripts/pg-local.sh down` deletes everything).
        let server = self.server.clone();
        let name = self.name.clone();
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .ok()?;
            rt.block_on(async {
                let mut admin = PgConnection::connect(&server).await.ok()?;
                sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                    .execute(&mut admin)
                    .await
                    .ok()?;
                admin.close().await.ok()
            })
        })
        .join();
    }
}

/// `url` with its database (the path) replaced by `name`, parameters kept.
pub fn with_database(url: &str, name: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let authority_start = base.find("://").map_or(0, |i| i + 3);
    let base = match base[authority_start..].find('/') {
        Some(i) => &base[..authority_start + i],
        None => base,
    };
    match query {
        Some(q) => format!("{base}/{name}?{q}"),
        None => format!("{base}/{name}"),
    }
}

/// `both_backends!(name)` next to `async fn name(b: Backend)` makes the tests `name::sqlite` and
/// `name::postgres`, which call it with each backend. The PostgreSQL variant needs a server:
/// see [`test_server`].
#[macro_export]
macro_rules! both_backends {
    ($name:ident) => {
        mod $name {
            use super::*;
            #[tokio::test]
            async fn sqlite() {
                super::$name($crate::Backend::Sqlite).await
            }
            #[tokio::test]
            async fn postgres() {
                if $crate::testing::test_server().is_some() {
                    super::$name($crate::Backend::Postgres).await
                }
            }
        }
    };
}

#[cfg(test)]
mod tests {
    use super::with_database;

    #[test]
    fn with_database_replaces_only_the_path() {
        assert_eq!(
            with_database("postgres://postgres@127.0.0.1:55432/postgres", "t1"),
            "postgres://postgres@127.0.0.1:55432/t1"
        );
        assert_eq!(
            with_database("postgres://u:p@h/db?sslmode=disable", "t2"),
            "postgres://u:p@h/t2?sslmode=disable"
        );
        assert_eq!(
            with_database("postgres://h:5432", "t3"),
            "postgres://h:5432/t3"
        );
    }
}
