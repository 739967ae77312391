//! Copying a whole fleet database into another one (`fleet-server migrate --to URL`): an
//! embedded SQLite data directory into PostgreSQL when the fleet outgrows one box (or back).
//!
//! Both stores are opened first, so both schemas are at this binary's latest migration and
//! have the same tables and columns; the destination's column types decide how each value
//! is read and written. The source is read inside one transaction (one consistent
//! snapshot, even if a server still writes to it); the destination is written inside one
//! transaction, so an interrupted copy leaves it empty and can simply be run again.
//! Architecture invariant: the destination must be empty (refused otherwise), and the copy
//! is checked table by table (row counts) before it is committed.

use futures_util::TryStreamExt;
use sqlx::any::AnyRow;
use sqlx::{Any, Row};

use super::{Backend, FleetStore, Result, StoreError};

/// Most bind parameters in one INSERT (PostgreSQL allows 65 535, SQLite 32 766).
const MAX_PARAMS: usize = 30_000;
/// Most bytes of values in one INSERT (artifact chunks are 1 MiB each).
const MAX_BATCH_BYTES: usize = 16 << 20;

/// What one column holds, from the destination's declared type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Int,
    Float,
    Text,
    Bytes,
}

impl Kind {
    fn of_declared(t: &str) -> Kind {
        let t = t.to_ascii_uppercase();
        if t.contains("INT") {
            Kind::Int
        } else if t.contains("DOUBLE") || t.contains("REAL") || t.contains("FLOAT") {
            Kind::Float
        } else if t.contains("BYTEA") || t.contains("BLOB") {
            Kind::Bytes
        } else {
            Kind::Text
        }
    }
}

enum Value {
    Int(Option<i64>),
    Float(Option<f64>),
    Text(Option<String>),
    Bytes(Option<Vec<u8>>),
}

impl Value {
    fn read(row: &AnyRow, i: usize, kind: Kind) -> Result<Value> {
        Ok(match kind {
            Kind::Int => Value::Int(row.try_get(i)?),
            Kind::Float => Value::Float(row.try_get(i)?),
            Kind::Text => Value::Text(row.try_get(i)?),
            Kind::Bytes => Value::Bytes(row.try_get(i)?),
        })
    }

    fn size(&self) -> usize {
        match self {
            Value::Text(Some(s)) => s.len(),
            Value::Bytes(Some(b)) => b.len(),
            _ => 8,
        }
    }
}

/// Rows copied per table, in copy order.
pub type CopyReport = Vec<(String, u64)>;

impl FleetStore {
    /// Tables of this database (without the migration bookkeeping), in name order.
    async fn table_names(&self) -> Result<Vec<String>> {
        let sql = match self.backend {
            // Tables and partitioned tables, not their partitions (rows are copied through
            // the parent and land in the destination's partitions).
            Backend::Postgres => "SELECT CAST(c.relname AS TEXT) AS name FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = current_schema() AND c.relkind IN ('r', 'p') AND NOT c.relispartition ORDER BY c.relname",
            Backend::Sqlite => "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name",
        };
        let rows = sqlx::query(sql).fetch_all(&self.pool).await?;
        let mut out = Vec::new();
        for r in rows {
            let name: String = r.try_get("name")?;
            if name != "schema_migrations" {
                out.push(name);
            }
        }
        Ok(out)
    }

    /// A table's columns with their kinds, in table order.
    async fn columns(&self, table: &str) -> Result<Vec<(String, Kind)>> {
        let rows = match self.backend {
            Backend::Postgres => sqlx::query(
                "SELECT CAST(column_name AS TEXT) AS name, CAST(data_type AS TEXT) AS type FROM information_schema.columns WHERE table_schema = current_schema() AND table_name = $1 ORDER BY ordinal_position",
            )
            .bind(table)
            .fetch_all(&self.pool)
            .await?,
            Backend::Sqlite => sqlx::query("SELECT name, type FROM pragma_table_info($1) ORDER BY cid")
                .bind(table)
                .fetch_all(&self.pool)
                .await?,
        };
        rows.iter()
            .map(|r| {
                let name: String = r.try_get("name")?;
                let t: String = r.try_get("type")?;
                Ok((name, Kind::of_declared(&t)))
            })
            .collect()
    }

    pub(super) async fn count(&self, table: &str) -> Result<u64> {
        let n: i64 = sqlx::query(&format!("SELECT COUNT(*) AS n FROM {table}"))
            .fetch_one(&self.pool)
            .await?
            .try_get("n")?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    /// Copies every row of every table of `self` into `to`, which must be empty; `progress`
    /// hears each table when it is done. Returns the rows copied per table.
    pub async fn copy_into(
        &self,
        to: &FleetStore,
        progress: impl Fn(&str, u64),
    ) -> Result<CopyReport> {
        if self.url == to.url {
            return Err(StoreError::Invalid(
                "the source and the destination are the same database".into(),
            ));
        }
        let tables = to.table_names().await?;
        let mine = self.table_names().await?;
        if tables != mine {
            return Err(StoreError::Invalid(format!(
                "the two databases have different tables ({} vs {}): run the same fleet-server version on both",
                mine.join(","),
                tables.join(",")
            )));
        }
        for t in &tables {
            let n = to.count(t).await?;
            if n > 0 {
                return Err(StoreError::Invalid(format!(
                    "the destination {} is not empty (table {t} has {n} rows): migrate into a new, empty database",
                    to.describe()
                )));
            }
        }
        let mut src = self.pool.begin().await?;
        let (_writer, mut dst) = to.begin_write().await?;
        let mut report = Vec::new();
        for t in &tables {
            let cols = to.columns(t).await?;
            if cols.is_empty() {
                continue;
            }
            let names: Vec<&str> = cols.iter().map(|(n, _)| n.as_str()).collect();
            let select = format!("SELECT {} FROM {t}", names.join(", "));
            let insert = format!("INSERT INTO {t} ({}) ", names.join(", "));
            let per_batch = (MAX_PARAMS / cols.len()).max(1);
            let mut batch: Vec<Vec<Value>> = Vec::new();
            let mut bytes = 0usize;
            let mut copied = 0u64;
            {
                let mut rows = sqlx::query(&select).fetch(&mut *src);
                while let Some(row) = rows.try_next().await? {
                    let vals = cols
                        .iter()
                        .enumerate()
                        .map(|(i, (_, k))| Value::read(&row, i, *k))
                        .collect::<Result<Vec<_>>>()?;
                    bytes += vals.iter().map(Value::size).sum::<usize>();
                    batch.push(vals);
                    if batch.len() >= per_batch || bytes >= MAX_BATCH_BYTES {
                        copied += flush(&mut dst, to.backend, &insert, &mut batch).await?;
                        bytes = 0;
                    }
                }
            }
            copied += flush(&mut dst, to.backend, &insert, &mut batch).await?;
            // Checked before anything is committed: every source row arrived.
            let n: i64 = sqlx::query(&format!("SELECT COUNT(*) AS n FROM {t}"))
                .fetch_one(&mut *dst)
                .await?
                .try_get("n")?;
            if u64::try_from(n).ok() != Some(copied) {
                return Err(StoreError::Corrupt(format!(
                    "table {t}: {copied} rows read, {n} in the destination"
                )));
            }
            progress(t, copied);
            report.push((t.clone(), copied));
        }
        dst.commit().await?;
        src.rollback().await?;
        Ok(report)
    }
}

async fn flush(
    dst: &mut sqlx::Transaction<'static, Any>,
    backend: Backend,
    insert: &str,
    batch: &mut Vec<Vec<Value>>,
) -> Result<u64> {
    if batch.is_empty() {
        return Ok(0);
    }
    let n = batch.len() as u64;
    // `$n` placeholders on PostgreSQL; `?` on SQLite, which looks numbered ones up by name
    // (quadratic in their number: see `Sql::many`).
    let mut text = String::from(insert);
    text.push_str("VALUES ");
    let mut k = 0usize;
    for (r, row) in batch.iter().enumerate() {
        text.push_str(if r == 0 { "(" } else { ", (" });
        for c in 0..row.len() {
            k += 1;
            if c > 0 {
                text.push_str(", ");
            }
            match backend {
                Backend::Sqlite => text.push('?'),
                Backend::Postgres => text.push_str(&format!("${k}")),
            }
        }
        text.push(')');
    }
    let mut q = sqlx::query(&text);
    for v in batch.drain(..).flatten() {
        q = match v {
            Value::Int(x) => q.bind(x),
            Value::Float(x) => q.bind(x),
            Value::Text(x) => q.bind(x),
            Value::Bytes(x) => q.bind(x),
        };
    }
    q.execute(&mut **dst).await?;
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::super::test_support::store;

    #[tokio::test]
    async fn a_database_is_copied_whole_into_an_empty_one_and_never_into_a_full_one() {
        let (from, d1) = store().await;
        let (to, d2) = store().await;
        from.put_artifact("a1", &vec![7u8; super::super::CHUNK + 5])
            .await
            .unwrap();
        from.audit("olga", "test.action", "x", "detail with 'quotes'")
            .await
            .unwrap();
        let recs: Vec<(i64, i64, &[u8])> = vec![(1, 10, b"one"), (2, 20, b"two")];
        from.ingest("dev1", "samples", 1, &recs).await.unwrap();
        let report = from.copy_into(&to, |_, _| {}).await.unwrap();
        let rows = |t: &str| report.iter().find(|(n, _)| n == t).map(|(_, c)| *c);
        assert_eq!(rows("artifact_chunks"), Some(2));
        assert_eq!(rows("records"), Some(2));
        assert_eq!(rows("audit"), Some(1));
        assert_eq!(
            to.read_artifact("a1").await.unwrap().unwrap(),
            vec![7u8; super::super::CHUNK + 5]
        );
        let log = to.audit_log(10).await.unwrap();
        assert_eq!(log[0].detail, "detail with 'quotes'");
        // The destination is not empty any more: a second copy is refused, nothing changes.
        let err = from
            .copy_into(&to, |_, _| {})
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("not empty"), "{err}");
        assert_eq!(to.count("records").await.unwrap(), 2);
        let err = from
            .copy_into(&from, |_, _| {})
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("same database"), "{err}");
        std::fs::remove_dir_all(d1).ok();
        std::fs::remove_dir_all(d2).ok();
    }
}
