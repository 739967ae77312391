//! [`FleetStore`]: every table and every SQL statement of the fleet server, split by concern:
//! [`migrations`] (the schema, versioned), [`devices`] (registry, enrollment, check-ins,
//! status history, the device list query), [`models`] (trusted keys, bundles, deltas),
//! [`rollouts`], [`ingest`] (uploaded records, stream marks, alarms and the drift index
//! derived from them), [`drift`] (retrain policies and events), [`accounts`] (operators,
//! sessions, API tokens, login throttling), [`artifacts`] (bundle and delta files in chunks,
//! the fleet CA, delta claims), [`audit`] and [`settings`]; [`group`] stores many devices'
//! check-ins and uploads in one transaction; [`partitions`] keeps PostgreSQL's weekly record
//! partitions.
//!
//! One set of SQL runs on both backends through sqlx's `Any` driver: SQLite in the data
//! directory by default (one file, WAL mode, safe for the CLI and the server at once), and
//! PostgreSQL later for fleets past one box (statements use `$n` placeholders and
//! `ON CONFLICT`, which both accept; only the DDL's blob type differs). Integers that are
//! `u64` on the wire are stored as `BIGINT` (version numbers and sequences stay below 2^63).
//!
//! Architecture invariant: no other module writes SQL.

mod accounts;
mod artifacts;
mod audit;
mod commands;
mod configs;
mod copy;
mod devices;
mod drift;
mod group;
mod ingest;
pub mod migrations;
mod models;
pub mod partitions;
mod releases;
mod rollouts;
mod settings;
mod validation;

use std::path::Path;

use sqlx::any::AnyPoolOptions;
use sqlx::AnyPool;

pub use accounts::{ApiTokenRow, LoginFailure, SessionRow, UserChange, UserRow};
pub use artifacts::{CaRow, CHUNK};
pub use audit::{AuditEntry, AuditQuery};
pub use commands::{CommandRow, COMMAND_TTL_MS, RESEND_AFTER_MS};
pub use configs::{ConfigReportRow, ConfigRow};
pub use copy::CopyReport;
pub use devices::{
    CheckInUpdate, CheckInWrite, Device, DeviceFilter, DeviceSort, HistoryPoint, IssuedCert,
    LabelGroup, ProblemFilter, StateCounts, StateThresholds,
};
pub use drift::{DriftEventRow, DriftPolicyRow};
pub use group::{DeviceRef, GroupResult, UploadWrite};
pub use ingest::{AlarmQuery, AlarmRow, DriftIndexRow, IngestResult, StreamMark, UpdateRow};
pub use models::{BundleRow, DeltaRow, KeyRing, TrustedKey};
pub use releases::{AgentReportRow, ReleaseRow};
pub use rollouts::{Rollout, RolloutReport};
pub use validation::{GateRow, ValidationRow};

/// Why a database operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database failed (connection, SQL, constraint).
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
    /// A bad parameter or a refused change; the message is for the caller.
    #[error("{0}")]
    Invalid(String),
    /// A stored value that none of this binary's types can hold (a newer server wrote it?).
    #[error("database holds an unexpected value: {0}")]
    Corrupt(String),
}

/// The store's result.
pub type Result<T> = std::result::Result<T, StoreError>;

/// Milliseconds since the epoch.
pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// Parses a stored enum spelling.
fn parse_enum<T: std::str::FromStr<Err = crate::types::UnknownValue>>(s: &str) -> Result<T> {
    s.parse()
        .map_err(|e: crate::types::UnknownValue| StoreError::Corrupt(e.to_string()))
}

/// `a,b` → `["a", "b"]` (labels, selectors).
fn list_of(s: &str) -> Vec<String> {
    s.split(',')
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect()
}

/// A value bound to a dynamically built statement.
#[derive(Debug, Clone)]
enum Arg<'a> {
    I(i64),
    S(String),
    /// Text borrowed from the caller (device ids, streams and statuses of a group are bound
    /// without a copy each).
    T(&'a str),
    /// A text that may be NULL.
    N(Option<String>),
    /// Bytes borrowed from the caller (record bodies are never copied to be bound).
    B(&'a [u8]),
}

/// A statement built from parts, with `$n` placeholders numbered as they are pushed.
#[derive(Debug, Default, Clone)]
struct Sql<'a> {
    text: String,
    args: Vec<Arg<'a>>,
    /// Anonymous `?` placeholders instead of `$n` (SQLite, big statements: SQLite looks a
    /// numbered parameter up by name in a list, at parse and again at bind, so a statement
    /// with thousands of `$n` costs time quadratic in their number; `?` costs nothing).
    anonymous: bool,
}

impl<'a> Sql<'a> {
    fn new(text: &str) -> Sql<'a> {
        Sql {
            text: text.to_string(),
            args: Vec::new(),
            anonymous: false,
        }
    }

    /// A statement with many parameters: `?` placeholders on SQLite, `$n` on PostgreSQL.
    /// `text` holds no placeholder (they all come from [`Sql::arg`], in order).
    fn many(backend: Backend, text: &str) -> Sql<'a> {
        Sql {
            anonymous: backend == Backend::Sqlite,
            ..Sql::new(text)
        }
    }

    fn push(&mut self, text: &str) -> &mut Self {
        self.text.push_str(text);
        self
    }

    /// Appends a placeholder bound to `a`.
    fn arg(&mut self, a: Arg<'a>) -> &mut Self {
        self.args.push(a);
        if self.anonymous {
            self.text.push('?');
        } else {
            use std::fmt::Write;
            let _ = write!(self.text, "${}", self.args.len());
        }
        self
    }

    /// Row `n` (0-based) of a multi-row `VALUES` list: `(a, b, …)`, preceded by `, ` after
    /// the first.
    fn row(&mut self, n: usize, args: impl IntoIterator<Item = Arg<'a>>) -> &mut Self {
        self.row_then(n, args, ")")
    }

    /// [`Sql::row`] ending with `close` (literal columns, then `)`).
    fn row_then(
        &mut self,
        n: usize,
        args: impl IntoIterator<Item = Arg<'a>>,
        close: &str,
    ) -> &mut Self {
        self.push(if n > 0 { ", (" } else { "(" });
        for (i, a) in args.into_iter().enumerate() {
            if i > 0 {
                self.push(", ");
            }
            self.arg(a);
        }
        self.push(close)
    }

    fn query(&self) -> sqlx::query::Query<'_, sqlx::Any, sqlx::any::AnyArguments<'_>> {
        let mut q = sqlx::query(&self.text);
        for a in &self.args {
            q = match a {
                Arg::I(i) => q.bind(*i),
                Arg::S(s) => q.bind(s.as_str()),
                Arg::T(s) => q.bind(*s),
                Arg::N(s) => q.bind(s.as_deref()),
                Arg::B(b) => q.bind(*b),
            };
        }
        q
    }
}

/// `%text%` for `LIKE … ESCAPE '\'`, with the wildcards in `text` escaped.
fn like_pattern(text: &str) -> String {
    let mut p = String::from("%");
    for c in text.chars() {
        if matches!(c, '%' | '_' | '\\') {
            p.push('\\');
        }
        p.push(c);
    }
    p.push('%');
    p
}

/// `url` with any password replaced by `***`.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let (auth, host) = match rest.rsplit_once('@') {
        Some((a, h)) => (Some(a), h),
        None => (None, rest),
    };
    match auth {
        Some(a) => match a.split_once(':') {
            Some((user, _)) => format!("{scheme}://{user}:***@{host}"),
            None => format!("{scheme}://{a}@{host}"),
        },
        None => url.to_string(),
    }
}

/// Which database a store runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// SQLite in the data directory (or a `sqlite:` URL).
    Sqlite,
    /// PostgreSQL.
    Postgres,
}

impl Backend {
    /// `sqlite` or `postgres`.
    pub fn name(self) -> &'static str {
        match self {
            Backend::Sqlite => "sqlite",
            Backend::Postgres => "postgres",
        }
    }
}

/// The fleet's database.
#[derive(Debug, Clone)]
pub struct FleetStore {
    pool: AnyPool,
    /// The URL without its password.
    described: String,
    /// The URL (for [`FleetStore::another_pool`]).
    url: std::sync::Arc<str>,
    backend: Backend,
    /// SQLite has one writer at a time; writers of this process queue here (async, FIFO)
    /// instead of in SQLite's busy handler, which sleeps in growing steps.
    writer: std::sync::Arc<tokio::sync::Mutex<()>>,
}

impl FleetStore {
    /// Opens the database at `url` (`postgres://…`), or the embedded SQLite database in
    /// `data_dir` when there is none.
    pub async fn open(data_dir: &Path, url: Option<&str>) -> Result<FleetStore> {
        match url {
            Some(u) if u.starts_with("postgres://") || u.starts_with("postgresql://") => {
                Self::open_url(u).await
            }
            Some(u) if u.starts_with("sqlite:") => Self::open_url(u).await,
            Some(u) => Err(StoreError::Invalid(format!(
                "--database-url `{}` must start with postgres:// (or sqlite:)",
                redact_url(u)
            ))),
            None => Self::open_dir(data_dir).await,
        }
    }

    /// The connection pool, for tests that alter stored rows behind the store's back.
    #[cfg(test)]
    pub(crate) fn pool(&self) -> &AnyPool {
        &self.pool
    }

    /// A second, independent pool on the same database (what another process would have).
    pub async fn another_pool(&self) -> Result<FleetStore> {
        Self::open_url(&self.url).await
    }

    /// Which database this is, for logs (no password).
    pub fn describe(&self) -> String {
        self.described.clone()
    }

    /// Opens (creating) the embedded SQLite database in `data_dir`.
    pub async fn open_dir(data_dir: &Path) -> Result<FleetStore> {
        std::fs::create_dir_all(data_dir).map_err(|e| {
            StoreError::Invalid(format!("cannot create {}: {e}", data_dir.display()))
        })?;
        let url = format!("sqlite://{}?mode=rwc", data_dir.join("fleet.db").display());
        Self::open_url(&url).await
    }

    /// Opens a database by URL (`sqlite://PATH?mode=rwc` or `postgres://…` when built with
    /// PostgreSQL support) and brings its schema up to date ([`migrations`]).
    pub async fn open_url(url: &str) -> Result<FleetStore> {
        sqlx::any::install_default_drivers();
        let sqlite = url.starts_with("sqlite:");
        let pool = AnyPoolOptions::new()
            .max_connections(8)
            .after_connect(move |conn, _| {
                Box::pin(async move {
                    if sqlite {
                        // WAL: readers never block the writer; busy_timeout: the CLI and the
                        // server may write at the same moment.
                        for pragma in [
                            "PRAGMA journal_mode=WAL",
                            "PRAGMA busy_timeout=10000",
                            "PRAGMA synchronous=NORMAL",
                            // Page reads through a memory map, not a pread + copy each (the
                            // load generator showed page reads among the top costs).
                            "PRAGMA mmap_size=268435456",
                            "PRAGMA cache_size=-16384",
                        ] {
                            sqlx::query(pragma).execute(&mut *conn).await?;
                        }
                    }
                    Ok(())
                })
            })
            .connect(url)
            .await?;
        let store = FleetStore {
            pool,
            described: redact_url(url),
            url: url.into(),
            backend: if sqlite {
                Backend::Sqlite
            } else {
                Backend::Postgres
            },
            writer: Default::default(),
        };
        migrations::run(&store).await?;
        Ok(store)
    }

    /// Which database this is.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// The suffix that locks the rows a `SELECT` reads until its transaction ends:
    /// `FOR UPDATE` on PostgreSQL; nothing on SQLite, whose write transaction holds the whole
    /// database already. Decisions several replicas could make at once read their row so.
    fn row_lock(&self) -> &'static str {
        match self.backend {
            Backend::Postgres => " FOR UPDATE",
            Backend::Sqlite => "",
        }
    }

    /// A transaction that will write. On SQLite it takes the write lock up front
    /// (`BEGIN IMMEDIATE`), so it waits for another writer (busy timeout) instead of failing
    /// with "database is locked" when its read snapshot is upgraded.
    async fn begin_write(
        &self,
    ) -> Result<(
        tokio::sync::OwnedMutexGuard<()>,
        sqlx::Transaction<'static, sqlx::Any>,
    )> {
        let guard = self.writer.clone().lock_owned().await;
        let tx = match self.backend {
            Backend::Sqlite => self.pool.begin_with("BEGIN IMMEDIATE").await?,
            Backend::Postgres => self.pool.begin().await?,
        };
        Ok((guard, tx))
    }

    /// One round trip to the database (health checks).
    pub async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }
}

/// Test support (also for the integration tests and benches): a fresh, empty database on
/// the backend the test run asks for. `FLEET_TEST_BACKEND=postgres` creates a new database
/// on the server at `FLEET_TEST_POSTGRES` (`postgres://USER@HOST:PORT`, as printed by
/// `tests/peers/postgres.sh start`); unset or `sqlite`: SQLite in the given directory.
#[doc(hidden)]
pub mod testing {
    use super::*;

    /// The database URL for a new test store: `None` for SQLite in the data directory.
    pub async fn database_url() -> Result<Option<String>> {
        match std::env::var("FLEET_TEST_BACKEND").as_deref() {
            Err(_) | Ok("") | Ok("sqlite") => Ok(None),
            Ok("postgres") => {
                let base = std::env::var("FLEET_TEST_POSTGRES").map_err(|_| {
                    StoreError::Invalid(
                        "FLEET_TEST_BACKEND=postgres needs FLEET_TEST_POSTGRES=postgres://USER@HOST:PORT (tests/peers/postgres.sh start DIR prints it; tests/run.sh sets both)".into(),
                    )
                })?;
                let base = base.trim_end_matches('/');
                let name = format!("fleet_test_{:016x}", fastrand::u64(..));
                sqlx::any::install_default_drivers();
                let mut admin =
                    <sqlx::AnyConnection as sqlx::Connection>::connect(&format!("{base}/postgres"))
                        .await?;
                sqlx::query(&format!("CREATE DATABASE {name}"))
                    .execute(&mut admin)
                    .await?;
                sqlx::Connection::close(admin).await?;
                Ok(Some(format!("{base}/{name}")))
            }
            Ok(other) => Err(StoreError::Invalid(format!(
                "FLEET_TEST_BACKEND `{other}`: sqlite or postgres"
            ))),
        }
    }

    /// A store on the test backend (SQLite in `dir`, or a new PostgreSQL database).
    pub async fn open(dir: &Path) -> Result<FleetStore> {
        let url = database_url().await?;
        FleetStore::open(dir, url.as_deref()).await
    }
}

#[cfg(test)]
pub(crate) mod test_support {
    use super::*;

    /// A store on the test backend ([`testing`]) with a fresh temporary directory (removed
    /// by the caller when it cares).
    pub async fn store() -> (FleetStore, std::path::PathBuf) {
        let dir = std::env::temp_dir().join(format!("fleet-store-{}", fastrand::u64(..)));
        (testing::open(&dir).await.unwrap(), dir)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_shown_without_passwords() {
        assert_eq!(
            redact_url("postgres://fleet:s3cr@t@db:5432/fleet"),
            "postgres://fleet:***@db:5432/fleet"
        );
        assert_eq!(redact_url("postgres://db/fleet"), "postgres://db/fleet");
        assert_eq!(
            redact_url("sqlite:///x/fleet.db?mode=rwc"),
            "sqlite:///x/fleet.db?mode=rwc"
        );
    }

    #[test]
    fn like_patterns_escape_wildcards() {
        assert_eq!(like_pattern("a_b%c"), "%a\\_b\\%c%");
        assert_eq!(like_pattern(""), "%%");
    }
}
