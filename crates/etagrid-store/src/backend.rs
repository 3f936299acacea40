//! Where a results store lives (an SQLite file or a PostgreSQL database) and how it is opened.
//!
//! One string names the store: a path or `sqlite://PATH` is the embedded SQLite file (the
//! default, for one machine), `postgres://…` or `postgresql://…` a PostgreSQL database (for
//! clusters, where many processes on many machines reach one store).

use crate::StoreError;
use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::{AnyConnection, AnyPool, ConnectOptions, Connection, Executor};
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

/// The SQLite schema: the repo-root `migrations/`, applied as they always were (their checksums
/// are recorded in existing stores, so these files never change).
static SQLITE_MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../../migrations");

/// The same schema in PostgreSQL's dialect: `migrations/postgres/`, one file per SQLite file with
/// the same version and name (see `migrations/postgres/README.md` for the translation rules; the
/// `postgres_schema_matches_sqlite_schema` test checks the two define the same columns).
static POSTGRES_MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../../migrations/postgres");

/// Which database engine a store uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// The location of a results store, parsed from a path or URL (`--db`, `ETAGRID_DB`).
///
/// `Display` never shows a password: use it in messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreUrl {
    /// An SQLite file (created, with its directory, on first open).
    Sqlite(PathBuf),
    /// A PostgreSQL connection URL, as given (password included: never print it, print `self`).
    Postgres(String),
}

impl StoreUrl {
    /// `postgres://…` / `postgresql://…` → PostgreSQL; `sqlite://PATH`, `sqlite:PATH` or a plain
    /// path → SQLite. Any other `scheme://` is an error that lists what is accepted.
    pub fn parse(s: &str) -> Result<StoreUrl, StoreError> {
        let bad = |reason: &str| StoreError::BadUrl {
            url: redact(s),
            reason: reason.to_owned(),
        };
        if s.trim().is_empty() {
            return Err(bad("it is empty"));
        }
        let lower = s.to_ascii_lowercase();
        if lower.starts_with("postgres://") || lower.starts_with("postgresql://") {
            // Let sqlx check the rest (host, port, parameters) now rather than at connect time.
            sqlx::postgres::PgConnectOptions::from_str(s).map_err(|e| {
                bad(&format!(
                    "{e}; expected postgres://USER[:PASSWORD]@HOST[:PORT]/DATABASE"
                ))
            })?;
            return Ok(StoreUrl::Postgres(s.to_owned()));
        }
        if let Some(rest) = lower.strip_prefix("sqlite:") {
            let path = &s[s.len() - rest.len()..];
            let path = path.strip_prefix("//").unwrap_or(path);
            if path.is_empty() || path.starts_with('?') || path.contains(":memory:") {
                return Err(bad(
                    "an SQLite store needs a file path, e.g. sqlite://.etagrid/etagrid.sqlite",
                ));
            }
            return Ok(StoreUrl::Sqlite(PathBuf::from(path)));
        }
        if let Some((scheme, _)) = s.split_once("://") {
            return Err(bad(&format!(
                "unsupported scheme `{scheme}`: use a file path or sqlite://PATH (SQLite), \
                 or postgres://USER@HOST:PORT/DATABASE (PostgreSQL)"
            )));
        }
        Ok(StoreUrl::Sqlite(PathBuf::from(s)))
    }

    pub fn backend(&self) -> Backend {
        match self {
            StoreUrl::Sqlite(_) => Backend::Sqlite,
            StoreUrl::Postgres(_) => Backend::Postgres,
        }
    }

    /// The SQLite file, if this is one.
    pub fn sqlite_path(&self) -> Option<&Path> {
        match self {
            StoreUrl::Sqlite(p) => Some(p),
            StoreUrl::Postgres(_) => None,
        }
    }
}

impl FromStr for StoreUrl {
    type Err = StoreError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        StoreUrl::parse(s)
    }
}

impl fmt::Display for StoreUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreUrl::Sqlite(p) => write!(f, "{}", p.display()),
            StoreUrl::Postgres(u) => f.write_str(&redact(u)),
        }
    }
}

impl From<PathBuf> for StoreUrl {
    fn from(p: PathBuf) -> Self {
        StoreUrl::Sqlite(p)
    }
}
impl From<&PathBuf> for StoreUrl {
    fn from(p: &PathBuf) -> Self {
        StoreUrl::Sqlite(p.clone())
    }
}
impl From<&Path> for StoreUrl {
    fn from(p: &Path) -> Self {
        StoreUrl::Sqlite(p.to_owned())
    }
}
impl From<&StoreUrl> for StoreUrl {
    fn from(u: &StoreUrl) -> Self {
        u.clone()
    }
}

/// `s` with the password of its user-info (`user:PASSWORD@`) and any `password=` parameter
/// replaced by `***`.
pub fn redact(s: &str) -> String {
    let mut out = s.to_owned();
    if let Some(start) = out.find("://").map(|i| i + 3) {
        let authority_end = out[start..]
            .find(['/', '?'])
            .map_or(out.len(), |i| start + i);
        if let Some(at) = out[start..authority_end].rfind('@').map(|i| start + i) {
            if let Some(colon) = out[start..at].find(':').map(|i| start + i) {
                out.replace_range(colon + 1..at, "***");
            }
        }
    }
    if let Some(q) = out.find('?') {
        let (head, query) = out.split_at(q + 1);
        let query = query
            .split('&')
            .map(|kv| match kv.split_once('=') {
                Some((k, _)) if k.eq_ignore_ascii_case("password") => format!("{k}=***"),
                _ => kv.to_owned(),
            })
            .collect::<Vec<_>>()
            .join("&");
        out = format!("{head}{query}");
    }
    out
}

/// How long a PostgreSQL server may take to accept a connection (TCP and start-up) before the
/// open fails: a server that accepts TCP but never answers must not hang `status` or `run`.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// PostgreSQL's `statement_timeout` for etagrid's sessions: no statement of etagrid's takes
/// more than a fraction of this, so one that does is stuck (a lock held elsewhere, a server in
/// trouble) and fails with a message instead of hanging.
pub const STATEMENT_TIMEOUT: Duration = Duration::from_secs(60);

/// The first 16 bytes of every SQLite database file.
const SQLITE_MAGIC: &[u8; 16] = b"SQLite format 3\0";

/// Refuses, before anything touches it, a file that is not an SQLite database, or an SQLite
/// database that is not an etagrid store (it has tables, none of them etagrid's). A missing or
/// empty file is a new store.
async fn check_sqlite_file(path: &Path) -> Result<(), StoreError> {
    use std::io::Read;
    let not_a_store = |reason: String| StoreError::NotAStore {
        location: path.display().to_string(),
        reason,
    };
    let mut head = Vec::with_capacity(16);
    match std::fs::File::open(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => {
            return Err(StoreError::Open {
                location: path.display().to_string(),
                hint: String::new(),
                source: sqlx::Error::Io(e),
            })
        }
        Ok(f) => {
            f.take(16)
                .read_to_end(&mut head)
                .map_err(|e| not_a_store(format!("it cannot be read: {e}")))?;
        }
    }
    if head.is_empty() {
        return Ok(());
    }
    if head.as_slice() != SQLITE_MAGIC {
        return Err(not_a_store(format!(
            "it is not an SQLite database (it starts with \"{}\")",
            head.escape_ascii()
        )));
    }
    // Read-only, no pragmas: looking must not change the file.
    let opts = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(path)
        .read_only(true);
    let mut conn = sqlx::SqliteConnection::connect_with(&opts)
        .await
        .map_err(|e| not_a_store(format!("SQLite cannot open it: {e}")))?;
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name",
    )
    .fetch_all(&mut conn)
    .await
    .map_err(|e| not_a_store(format!("SQLite cannot read it: {e}")))?;
    let _ = conn.close().await;
    let ours = ["_sqlx_migrations", "sweeps", "cells"];
    if !tables.is_empty() && !ours.iter().all(|t| tables.iter().any(|n| n == t)) {
        let mut shown: Vec<&str> = tables.iter().map(String::as_str).take(8).collect();
        if tables.len() > shown.len() {
            shown.push("…");
        }
        return Err(not_a_store(format!(
            "it is an SQLite database without etagrid's tables (it has: {})",
            shown.join(", ")
        )));
    }
    Ok(())
}

/// Refuses a store whose schema has migrations this etagrid does not know (written by a newer
/// etagrid): migrating it would fail or, worse, half-apply.
async fn check_schema_version(
    conn: &mut AnyConnection,
    url: &StoreUrl,
    migrator: &sqlx::migrate::Migrator,
) -> Result<(), StoreError> {
    let exists = match url.backend() {
        Backend::Sqlite => "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = '_sqlx_migrations'",
        Backend::Postgres => "SELECT COUNT(*) FROM pg_catalog.pg_tables WHERE tablename = '_sqlx_migrations' AND schemaname = current_schema()",
    };
    let n: i64 = sqlx::query_scalar(exists).fetch_one(&mut *conn).await?;
    if n == 0 {
        return Ok(());
    }
    let applied: Vec<i64> = sqlx::query_scalar("SELECT version FROM _sqlx_migrations")
        .fetch_all(&mut *conn)
        .await?;
    let known: std::collections::HashSet<i64> = migrator.iter().map(|m| m.version).collect();
    let mut unknown: Vec<i64> = applied.into_iter().filter(|v| !known.contains(v)).collect();
    unknown.sort_unstable();
    if let Some(newest) = unknown.last() {
        return Err(StoreError::NewerSchema {
            location: url.to_string(),
            found: *newest,
            known: known.iter().copied().max().unwrap_or(0),
        });
    }
    Ok(())
}

/// Connects to the store and brings its schema up to date.
pub(crate) async fn connect(url: &StoreUrl) -> Result<AnyPool, StoreError> {
    sqlx::any::install_default_drivers();
    let open_err = |source: sqlx::Error| StoreError::Open {
        hint: hint(url, &source),
        location: url.to_string(),
        source,
    };
    let (options, migrator) = match url {
        StoreUrl::Sqlite(path) => {
            check_sqlite_file(path).await?;
            if let Some(dir) = path.parent() {
                if !dir.as_os_str().is_empty() {
                    std::fs::create_dir_all(dir).map_err(|e| open_err(sqlx::Error::Io(e)))?;
                }
            }
            // The Any driver takes a URL; build it from SQLite's own options so the path is
            // percent-encoded correctly. WAL mode and the busy timeout are set per connection
            // below (a URL cannot carry them).
            let sqlite = sqlx::sqlite::SqliteConnectOptions::new()
                .filename(path)
                .create_if_missing(true);
            let any = AnyConnectOptions::from_url(&sqlite.to_url_lossy()).map_err(open_err)?;
            (any, &SQLITE_MIGRATOR)
        }
        StoreUrl::Postgres(u) => (
            AnyConnectOptions::from_str(u).map_err(open_err)?,
            &POSTGRES_MIGRATOR,
        ),
    };
    let backend = url.backend();
    // One direct connection first: the pool retries a refused connection until its timeout and
    // then reports only "pool timed out", while this gives the real cause at once. Bounded in
    // time: sqlx has no connect timeout of its own.
    let timed_out = || StoreError::Timeout {
        location: url.to_string(),
        secs: CONNECT_TIMEOUT.as_secs(),
    };
    let mut probe = tokio::time::timeout(CONNECT_TIMEOUT, AnyConnection::connect_with(&options))
        .await
        .map_err(|_| timed_out())?
        .map_err(open_err)?;
    tokio::time::timeout(
        CONNECT_TIMEOUT,
        check_schema_version(&mut probe, url, migrator),
    )
    .await
    .map_err(|_| timed_out())??;
    probe.close().await.map_err(open_err)?;
    let statement_timeout = format!("SET statement_timeout = {}", STATEMENT_TIMEOUT.as_millis());
    let pool = AnyPoolOptions::new()
        .max_connections(4)
        .acquire_timeout(match backend {
            Backend::Sqlite => Duration::from_secs(30),
            Backend::Postgres => CONNECT_TIMEOUT,
        })
        .after_connect(move |conn, _meta| {
            let statement_timeout = statement_timeout.clone();
            Box::pin(async move {
                match backend {
                    Backend::Sqlite => {
                        conn.execute(
                            "PRAGMA busy_timeout = 10000; PRAGMA journal_mode = WAL; \
                             PRAGMA foreign_keys = ON;",
                        )
                        .await?;
                    }
                    // CURRENT_TIMESTAMP is stored as text: make it UTC on every machine.
                    Backend::Postgres => {
                        conn.execute("SET TIME ZONE 'UTC'").await?;
                        conn.execute(statement_timeout.as_str()).await?;
                    }
                }
                Ok(())
            })
        })
        .connect_with(options)
        .await
        .map_err(open_err)?;
    migrator.run(&pool).await.map_err(StoreError::Migrate)?;
    Ok(pool)
}

/// What to do about a failed open, as a sentence fragment after the location.
fn hint(url: &StoreUrl, e: &sqlx::Error) -> String {
    let StoreUrl::Postgres(_) = url else {
        return String::new();
    };
    let code = match e {
        sqlx::Error::Database(d) => d.code().map(|c| c.into_owned()),
        _ => None,
    };
    match (e, code.as_deref()) {
        (sqlx::Error::Io(_), _) | (sqlx::Error::PoolTimedOut, _) => {
            ": the PostgreSQL server is not reachable there — start it (for a local test server: \
             `scripts/pg-local.sh up`) or fix the host and port"
                .into()
        }
        (_, Some("3D000")) => ": that database does not exist — create it (`createdb`, or \
                               CREATE DATABASE in psql) or name an existing one"
            .into(),
        (_, Some("28P01" | "28000")) => {
            ": the server refused the user or password — check them in the URL".into()
        }
        (sqlx::Error::Tls(_), _) => {
            ": TLS failed — add ?sslmode=disable for a server without TLS, or fix its certificate"
                .into()
        }
        _ => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_and_sqlite_urls_are_sqlite_files() {
        for (s, path) in [
            ("store.sqlite", "store.sqlite"),
            (".etagrid/etagrid.sqlite", ".etagrid/etagrid.sqlite"),
            ("/tmp/x.sqlite", "/tmp/x.sqlite"),
            ("sqlite://rel/x.sqlite", "rel/x.sqlite"),
            ("sqlite:///abs/x.sqlite", "/abs/x.sqlite"),
            ("sqlite:x.sqlite", "x.sqlite"),
            ("SQLite://x.sqlite", "x.sqlite"),
        ] {
            assert_eq!(
                StoreUrl::parse(s).expect(s),
                StoreUrl::Sqlite(PathBuf::from(path)),
                "{s}"
            );
        }
    }

    #[test]
    fn postgres_urls_are_postgres_with_either_scheme() {
        for s in [
            "postgres://etagrid@127.0.0.1:55432/etagrid",
            "postgresql://u:secret@db.example:5432/sweeps?sslmode=disable",
        ] {
            let u = StoreUrl::parse(s).expect(s);
            assert_eq!(u, StoreUrl::Postgres(s.to_owned()));
            assert_eq!(u.backend(), Backend::Postgres);
        }
    }

    #[test]
    fn display_hides_the_password_in_userinfo_and_parameters() {
        let u = StoreUrl::parse("postgres://alice:hunter2@db:5432/x?sslmode=disable").expect("url");
        assert_eq!(
            u.to_string(),
            "postgres://alice:***@db:5432/x?sslmode=disable"
        );
        let u = StoreUrl::parse("postgres://db/x?user=bob&password=hunter2").expect("url");
        assert_eq!(u.to_string(), "postgres://db/x?user=bob&password=***");
        assert_eq!(redact("postgres://bob@db/x"), "postgres://bob@db/x");
    }

    #[test]
    fn unknown_schemes_and_empty_strings_are_errors_that_say_what_is_accepted() {
        let e = StoreUrl::parse("mysql://root:pw@localhost/x").expect_err("mysql");
        let m = e.to_string();
        assert!(m.contains("mysql://root:***@localhost/x"), "{m}");
        assert!(!m.contains("pw@"), "password leaked: {m}");
        assert!(m.contains("postgres://") && m.contains("sqlite://"), "{m}");
        assert!(StoreUrl::parse("").is_err());
        assert!(StoreUrl::parse("sqlite::memory:").is_err());
    }
}
