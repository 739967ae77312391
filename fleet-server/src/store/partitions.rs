//! Record partitions on PostgreSQL: `records` is partitioned by measurement time
//! (`ts_ms`) into weekly tables `records_w{N}` (week `N` since the Unix epoch) plus
//! `records_default` for anything outside them (history backfilled from long ago, a device
//! clock far off). Partitions are created ahead of time ([`FleetStore::ensure_record_partitions`]:
//! this week and the next [`WEEKS_AHEAD`]), so live data never lands in the default; rows a
//! new week's range finds in the default are moved into it. Retention drops whole weeks
//! when every stream has a retention and the week is past the longest one
//! ([`FleetStore::drop_record_weeks`]); row deletes handle the rest. SQLite has one table and
//! nothing to do here.
//!
//! Several replicas may do this at once: each pass holds a transaction-scoped advisory lock.

use sqlx::Row;

use super::{Backend, FleetStore, Result};

/// One partition's width.
pub const WEEK_MS: i64 = 7 * 24 * 3_600_000;
/// Weeks created ahead of the current one.
pub const WEEKS_AHEAD: i64 = 2;
/// Advisory lock key of partition maintenance ("recparts").
const LOCK: i64 = 0x7265_6370_6172_7473;

fn week_of(ms: i64) -> i64 {
    ms.div_euclid(WEEK_MS)
}

fn week_table(week: i64) -> String {
    format!("records_w{week}")
}

impl FleetStore {
    /// Creates the weekly partitions from the week of `now_ms` to [`WEEKS_AHEAD`] after it
    /// (PostgreSQL; nothing on SQLite). Returns the partitions created.
    pub async fn ensure_record_partitions(&self, now_ms: i64) -> Result<Vec<String>> {
        if self.backend != Backend::Postgres {
            return Ok(Vec::new());
        }
        let mut created = Vec::new();
        let now = week_of(now_ms);
        for week in now..=now + WEEKS_AHEAD {
            if self.create_week(week).await? {
                created.push(week_table(week));
            }
        }
        Ok(created)
    }

    /// Creates the partition of `week` unless it exists; rows of its range that wait in
    /// the default partition move into it in the same transaction.
    pub(super) async fn create_week(&self, week: i64) -> Result<bool> {
        let table = week_table(week);
        let (from, to) = (week * WEEK_MS, (week + 1) * WEEK_MS);
        let mut tx = self.pool.begin().await?;
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(LOCK)
            .execute(&mut *tx)
            .await?;
        let exists = sqlx::query("SELECT to_regclass($1)::text AS t")
            .bind(&table)
            .fetch_one(&mut *tx)
            .await?
            .try_get::<Option<String>, _>("t")?
            .is_some();
        if exists {
            return Ok(false);
        }
        let waiting = sqlx::query(
            "SELECT 1 AS one FROM records_default WHERE ts_ms >= $1 AND ts_ms < $2 LIMIT 1",
        )
        .bind(from)
        .bind(to)
        .fetch_optional(&mut *tx)
        .await?
        .is_some();
        if waiting {
            // The default holds rows of this week: a table with them, then attached.
            sqlx::query(&format!(
                "CREATE TABLE {table} (LIKE records INCLUDING DEFAULTS)"
            ))
            .execute(&mut *tx)
            .await?;
            sqlx::query(&format!(
                "WITH moved AS (DELETE FROM records_default WHERE ts_ms >= {from} AND ts_ms < {to} RETURNING *) \
                 INSERT INTO {table} SELECT * FROM moved"
            ))
            .execute(&mut *tx)
            .await?;
            sqlx::query(&format!(
                "ALTER TABLE records ATTACH PARTITION {table} FOR VALUES FROM ({from}) TO ({to})"
            ))
            .execute(&mut *tx)
            .await?;
        } else {
            sqlx::query(&format!(
                "CREATE TABLE {table} PARTITION OF records FOR VALUES FROM ({from}) TO ({to})"
            ))
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(true)
    }

    /// The weekly partitions, oldest first: (table, week).
    pub async fn record_weeks(&self) -> Result<Vec<(String, i64)>> {
        if self.backend != Backend::Postgres {
            return Ok(Vec::new());
        }
        let rows = sqlx::query(
            "SELECT c.relname::text AS name FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid \
             WHERE i.inhparent = 'records'::regclass",
        )
        .fetch_all(&self.pool)
        .await?;
        let mut weeks: Vec<(String, i64)> = rows
            .iter()
            .filter_map(|r| {
                let name: String = r.try_get("name").ok()?;
                let week = name.strip_prefix("records_w")?.parse().ok()?;
                Some((name, week))
            })
            .collect();
        weeks.sort_by_key(|w| w.1);
        Ok(weeks)
    }

    /// Drops the weekly partitions that end at or before `before_ms` (every stream's
    /// retention has passed them: the caller checks). Returns the partitions dropped.
    pub async fn drop_record_weeks(&self, before_ms: i64) -> Result<Vec<String>> {
        let mut dropped = Vec::new();
        for (table, week) in self.record_weeks().await? {
            if (week + 1) * WEEK_MS > before_ms {
                break;
            }
            let mut tx = self.pool.begin().await?;
            sqlx::query("SELECT pg_advisory_xact_lock($1)")
                .bind(LOCK)
                .execute(&mut *tx)
                .await?;
            // Drift index rows of the drift records that go with it.
            sqlx::query(&format!("DELETE FROM drift_index WHERE (device_id, seq) IN (SELECT device_id, seq FROM {table} WHERE stream = 'drift')"))
                .execute(&mut *tx)
                .await?;
            sqlx::query(&format!("DROP TABLE IF EXISTS {table}"))
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            dropped.push(table);
        }
        Ok(dropped)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::test_support::store;

    /// Which table each record of `stream` is in, by seq.
    async fn homes(s: &FleetStore, stream: &str) -> Vec<(i64, String)> {
        sqlx::query(
            "SELECT seq, CAST(tableoid::regclass AS TEXT) AS t FROM records WHERE stream = $1 ORDER BY seq",
        )
        .bind(stream)
        .fetch_all(s.pool())
        .await
        .unwrap()
        .iter()
        .map(|r| (r.try_get("seq").unwrap(), r.try_get("t").unwrap()))
        .collect()
    }

    /// The weeks that have a partition, oldest first.
    async fn weeks_of(s: &FleetStore) -> Vec<i64> {
        s.record_weeks()
            .await
            .unwrap()
            .iter()
            .map(|w| w.1)
            .collect()
    }

    #[tokio::test]
    async fn weeks_are_created_ahead_filled_from_the_default_and_dropped_by_retention() {
        let (s, dir) = store().await;
        let now = 2_900 * WEEK_MS + 1234; // inside week 2900
        if s.backend() == Backend::Sqlite {
            // One table, nothing to maintain.
            assert!(s.ensure_record_partitions(now).await.unwrap().is_empty());
            assert!(s.record_weeks().await.unwrap().is_empty());
            std::fs::remove_dir_all(dir).ok();
            return;
        }
        // Before any week exists, records go to the default partition: one from long ago,
        // two of week 2900, one of week 2905.
        let b = b"x".as_slice();
        let early = [
            (1, 5, b),
            (2, 2_900 * WEEK_MS, b),
            (3, now, b),
            (4, 2_905 * WEEK_MS + 7, b),
        ];
        s.ingest("d1", "samples", 1, &early).await.unwrap();
        assert!(homes(&s, "samples")
            .await
            .iter()
            .all(|(_, t)| t == "records_default"));
        // This week and two ahead; the rows of week 2900 move out of the default.
        assert_eq!(
            s.ensure_record_partitions(now).await.unwrap(),
            ["records_w2900", "records_w2901", "records_w2902"]
        );
        assert!(
            s.ensure_record_partitions(now).await.unwrap().is_empty(),
            "once"
        );
        let h = homes(&s, "samples").await;
        assert_eq!(
            h.iter().map(|(_, t)| t.as_str()).collect::<Vec<_>>(),
            [
                "records_default",
                "records_w2900",
                "records_w2900",
                "records_default"
            ]
        );
        // New records route to their week; ingest stays idempotent across partitions.
        let more = [(5, 2_901 * WEEK_MS + 1, b), (6, 2_902 * WEEK_MS, b)];
        let r = s.ingest("d1", "samples", 1, &more).await.unwrap();
        assert_eq!((r.acked_through, r.inserted), (6, 2));
        let again: Vec<_> = early.iter().chain(&more).copied().collect();
        let r = s.ingest("d1", "samples", 1, &again).await.unwrap();
        assert_eq!((r.acked_through, r.inserted, r.duplicates), (6, 0, 6));
        // Week 2905's row moves when its week is created (as time goes on).
        s.ensure_record_partitions(2_905 * WEEK_MS).await.unwrap();
        assert_eq!(homes(&s, "samples").await[3].1, "records_w2905");
        // Row deletes across partitions delete exactly the old rows (a row's address is
        // per partition).
        assert_eq!(
            s.prune_records("samples", 2_900 * WEEK_MS + 1, 1)
                .await
                .unwrap(),
            2
        );
        assert_eq!(
            homes(&s, "samples")
                .await
                .iter()
                .map(|h| h.0)
                .collect::<Vec<_>>(),
            [3, 4, 5, 6]
        );
        // Whole weeks: those ending by the cutoff are dropped, later ones kept.
        assert_eq!(
            s.drop_record_weeks(2_902 * WEEK_MS).await.unwrap(),
            ["records_w2900", "records_w2901"]
        );
        assert_eq!(
            homes(&s, "samples")
                .await
                .iter()
                .map(|h| h.0)
                .collect::<Vec<_>>(),
            [4, 6]
        );
        let weeks = weeks_of(&s).await;
        assert_eq!(weeks, [2902, 2905, 2906, 2907]);
        // Retention drops weeks only when every stream has a retention.
        let some = crate::retention::Retention::parse("samples=7d").unwrap();
        some.apply(&s, 2_907 * WEEK_MS).await.unwrap();
        assert_eq!(weeks_of(&s).await.len(), 4, "features are kept for ever");
        // Every stream: a week goes when the longest retention (14 days) has passed it.
        let all = crate::retention::Retention::parse(
            "samples=7d,features=7d,predictions=7d,alarms=14d,drift=7d,events=7d",
        );
        all.unwrap().apply(&s, 2_907 * WEEK_MS).await.unwrap();
        let weeks = weeks_of(&s).await;
        assert_eq!(
            weeks,
            [2905, 2906, 2907],
            "weeks older than 14 days dropped"
        );
        std::fs::remove_dir_all(dir).ok();
    }
}
