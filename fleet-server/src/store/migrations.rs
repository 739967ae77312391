//! The schema, as an ordered list of migrations: one set for both backends (`{blob}` is
//! `BLOB` on SQLite and `BYTEA` on PostgreSQL), each applied once in its own transaction
//! and recorded in `schema_migrations`. A migration may end with a data step written in
//! Rust (filling new columns from old ones), run in the same transaction. A step may be
//! PostgreSQL's alone (record partitions).
//!
//! Rules: never edit a migration that has shipped; add a new one. A database whose schema is
//! newer than this binary is refused at open (an older server must not write to it).

use sqlx::Row;

use super::{now_ms, Backend, FleetStore, Result, StoreError};

/// One step of a migration.
#[derive(Debug, Clone, Copy)]
enum Step {
    Sql(&'static str),
    /// On PostgreSQL only.
    Pg(&'static str),
    /// Rust code over the rows (see [`backfill`]).
    Data(DataStep),
}

#[derive(Debug, Clone, Copy)]
enum DataStep {
    /// Device labels into `device_labels`; the check-in columns from the stored status;
    /// the alarms and drift index from the uploaded records.
    ConsoleColumns,
}

#[derive(Debug)]
struct Migration {
    version: i64,
    name: &'static str,
    steps: &'static [Step],
}

use Step::{Data, Pg, Sql};

const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "fleet registry, rollouts, ingest, drift policies",
        // `IF NOT EXISTS`: databases made before migrations were versioned adopt this one.
        steps: &[
            Sql("CREATE TABLE IF NOT EXISTS devices (
                id TEXT PRIMARY KEY, name TEXT NOT NULL, labels TEXT NOT NULL,
                cert_sha256 TEXT NOT NULL, enrolled_at BIGINT NOT NULL, revoked_at BIGINT,
                last_seen BIGINT, status TEXT)"),
            Sql("CREATE UNIQUE INDEX IF NOT EXISTS devices_cert ON devices (cert_sha256)"),
            Sql("CREATE TABLE IF NOT EXISTS enroll_tokens (
                token_sha256 TEXT PRIMARY KEY, labels TEXT NOT NULL, created_by TEXT NOT NULL,
                created_at BIGINT NOT NULL, expires_at BIGINT NOT NULL, used_at BIGINT,
                device_id TEXT)"),
            Sql("CREATE TABLE IF NOT EXISTS trusted_keys (
                key_id TEXT PRIMARY KEY, public_pem TEXT NOT NULL, added_by TEXT NOT NULL,
                added_at BIGINT NOT NULL)"),
            Sql("CREATE TABLE IF NOT EXISTS bundles (
                name TEXT NOT NULL, version_number BIGINT NOT NULL, version TEXT NOT NULL,
                sha256 TEXT NOT NULL, size BIGINT NOT NULL, signer TEXT NOT NULL,
                pushed_by TEXT NOT NULL, pushed_at BIGINT NOT NULL,
                PRIMARY KEY (name, version_number))"),
            Sql("CREATE TABLE IF NOT EXISTS deltas (
                base_sha256 TEXT NOT NULL, target_sha256 TEXT NOT NULL, method TEXT NOT NULL,
                artifact_sha256 TEXT NOT NULL, size BIGINT NOT NULL, sizes TEXT NOT NULL,
                PRIMARY KEY (base_sha256, target_sha256))"),
            Sql("CREATE TABLE IF NOT EXISTS rollouts (
                id TEXT PRIMARY KEY, bundle TEXT NOT NULL, version_number BIGINT NOT NULL,
                selector TEXT NOT NULL, canary_percent BIGINT, canary_label TEXT,
                phase TEXT NOT NULL, state TEXT NOT NULL, max_failures BIGINT NOT NULL,
                created_by TEXT NOT NULL, created_at BIGINT NOT NULL, updated_at BIGINT NOT NULL)"),
            Sql("CREATE TABLE IF NOT EXISTS rollout_reports (
                rollout_id TEXT NOT NULL, device_id TEXT NOT NULL, outcome TEXT NOT NULL,
                detail TEXT NOT NULL, at BIGINT NOT NULL, PRIMARY KEY (rollout_id, device_id))"),
            Sql("CREATE TABLE IF NOT EXISTS stream_marks (
                device_id TEXT NOT NULL, stream TEXT NOT NULL, acked_through BIGINT NOT NULL,
                lost_on_device BIGINT NOT NULL, records BIGINT NOT NULL,
                duplicates BIGINT NOT NULL, PRIMARY KEY (device_id, stream))"),
            Sql("CREATE TABLE IF NOT EXISTS audit (
                at BIGINT NOT NULL, actor TEXT NOT NULL, action TEXT NOT NULL,
                subject TEXT NOT NULL, detail TEXT NOT NULL)"),
            // Retrain triggers (`drift policy set`): `rule` and `hook` are JSON (see
            // `drift::PolicyRule`, `drift::Hook`); `state` is the evaluator's JSON cursor,
            // replaced compare-and-set so two evaluators never record the same event twice.
            Sql("CREATE TABLE IF NOT EXISTS drift_policies (
                name TEXT PRIMARY KEY, bundle TEXT NOT NULL, selector TEXT NOT NULL,
                every_ms BIGINT NOT NULL, intervals BIGINT NOT NULL, rule TEXT NOT NULL,
                hook TEXT NOT NULL, state TEXT NOT NULL, created_by TEXT NOT NULL,
                updated_at BIGINT NOT NULL)"),
            Sql("CREATE TABLE IF NOT EXISTS drift_events (
                id TEXT PRIMARY KEY, policy TEXT NOT NULL, bundle TEXT NOT NULL,
                version_number BIGINT NOT NULL, from_ns BIGINT NOT NULL, to_ns BIGINT NOT NULL,
                devices TEXT NOT NULL, columns TEXT NOT NULL, body TEXT NOT NULL,
                created_at BIGINT NOT NULL, hook_status TEXT NOT NULL,
                hook_detail TEXT NOT NULL)"),
            Sql("CREATE TABLE IF NOT EXISTS records (
                device_id TEXT NOT NULL, stream TEXT NOT NULL, seq BIGINT NOT NULL,
                ts_ms BIGINT NOT NULL, body {blob} NOT NULL,
                PRIMARY KEY (device_id, stream, seq))"),
        ],
    },
    Migration {
        version: 2,
        name: "operator console: device check-in columns, labels, history, alarms, drift index, accounts",
        steps: &[
            // What the device list filters and sorts on, kept at each check-in (the full
            // status stays in `status`). `models`: `,bundle#version_number,` per model.
            Sql("ALTER TABLE devices ADD COLUMN agent_version TEXT"),
            Sql("ALTER TABLE devices ADD COLUMN models TEXT NOT NULL DEFAULT ''"),
            Sql("ALTER TABLE devices ADD COLUMN backlog BIGINT NOT NULL DEFAULT 0"),
            Sql("ALTER TABLE devices ADD COLUMN backlog_rises BIGINT NOT NULL DEFAULT 0"),
            Sql("ALTER TABLE devices ADD COLUMN dropped BIGINT NOT NULL DEFAULT 0"),
            Sql("ALTER TABLE devices ADD COLUMN drops_at BIGINT"),
            Sql("ALTER TABLE devices ADD COLUMN last_error TEXT"),
            Sql("ALTER TABLE devices ADD COLUMN update_failed_at BIGINT"),
            Sql("ALTER TABLE devices ADD COLUMN drift_alarms BIGINT NOT NULL DEFAULT 0"),
            Sql("ALTER TABLE devices ADD COLUMN history_at BIGINT"),
            Sql("CREATE INDEX devices_last_seen ON devices (last_seen)"),
            Sql("CREATE INDEX devices_name ON devices (name, id)"),
            Sql("CREATE TABLE device_labels (
                device_id TEXT NOT NULL, label TEXT NOT NULL, PRIMARY KEY (device_id, label))"),
            Sql("CREATE INDEX device_labels_label ON device_labels (label, device_id)"),
            // One point per device per `--history-every`: backlog and drops per stream.
            Sql("CREATE TABLE device_history (
                device_id TEXT NOT NULL, at BIGINT NOT NULL, backlog BIGINT NOT NULL,
                dropped BIGINT NOT NULL, streams TEXT NOT NULL, PRIMARY KEY (device_id, at))"),
            Sql("CREATE INDEX device_history_at ON device_history (at)"),
            // Each new error a device reports (when its last error changes).
            Sql("CREATE TABLE device_errors (
                device_id TEXT NOT NULL, at BIGINT NOT NULL, error TEXT NOT NULL)"),
            Sql("CREATE INDEX device_errors_device ON device_errors (device_id, at)"),
            // Every update report (rollout_reports keeps only the latest per rollout).
            Sql("CREATE TABLE update_history (
                device_id TEXT NOT NULL, at BIGINT NOT NULL, model TEXT NOT NULL,
                bundle TEXT NOT NULL, from_version_number BIGINT NOT NULL,
                to_version_number BIGINT NOT NULL, rollout_id TEXT, outcome TEXT NOT NULL,
                method TEXT NOT NULL, bytes BIGINT NOT NULL, detail TEXT NOT NULL)"),
            Sql("CREATE INDEX update_history_device ON update_history (device_id, at)"),
            // Model and drift alarms, one row per raise (cleared in place), from the
            // `alarms` stream at ingest.
            Sql("CREATE TABLE alarms (
                id TEXT PRIMARY KEY, device_id TEXT NOT NULL, model TEXT NOT NULL,
                bundle TEXT NOT NULL, version_number BIGINT NOT NULL, kind TEXT NOT NULL,
                subject TEXT NOT NULL, metric TEXT NOT NULL, score DOUBLE PRECISION,
                threshold DOUBLE PRECISION, raised_ns BIGINT, cleared_ns BIGINT,
                active BIGINT NOT NULL, received_at BIGINT NOT NULL, updated_at BIGINT NOT NULL,
                acked_by TEXT, acked_at BIGINT)"),
            Sql("CREATE INDEX alarms_updated ON alarms (updated_at)"),
            Sql("CREATE INDEX alarms_device ON alarms (device_id, active)"),
            // Which drift record covers what, from the `drift` stream at ingest: time
            // filters and "latest per device" without decoding every record.
            // `max_score`: the largest value of the record's metric over its feature columns;
            // `drifting_count`: its drifting feature columns (the heatmap's order).
            Sql("CREATE TABLE drift_index (
                device_id TEXT NOT NULL, seq BIGINT NOT NULL, model TEXT NOT NULL,
                bundle TEXT NOT NULL, version_number BIGINT NOT NULL, start_ns BIGINT NOT NULL,
                end_ns BIGINT NOT NULL, dataset_drift BIGINT NOT NULL, drifting TEXT NOT NULL,
                drifting_count BIGINT NOT NULL, max_score DOUBLE PRECISION,
                PRIMARY KEY (device_id, seq))"),
            Sql("CREATE INDEX drift_index_bundle ON drift_index (bundle, version_number, end_ns)"),
            Sql("CREATE INDEX drift_index_latest ON drift_index (device_id, bundle, version_number, model, seq)"),
            Sql("ALTER TABLE rollouts ADD COLUMN promoted_at BIGINT"),
            Sql("CREATE INDEX audit_at ON audit (at)"),
            Sql("CREATE TABLE users (
                name TEXT PRIMARY KEY, role TEXT NOT NULL, password_hash TEXT NOT NULL,
                created_by TEXT NOT NULL, created_at BIGINT NOT NULL,
                password_changed_at BIGINT NOT NULL)"),
            // Console sessions and API tokens are stored as SHA-256 of the secret only.
            Sql("CREATE TABLE sessions (
                id_sha256 TEXT PRIMARY KEY, user_name TEXT NOT NULL, csrf TEXT NOT NULL,
                created_at BIGINT NOT NULL, expires_at BIGINT NOT NULL,
                last_seen BIGINT NOT NULL, client TEXT NOT NULL)"),
            Sql("CREATE INDEX sessions_user ON sessions (user_name)"),
            Sql("CREATE TABLE api_tokens (
                id TEXT PRIMARY KEY, name TEXT NOT NULL, user_name TEXT NOT NULL,
                role TEXT NOT NULL, token_sha256 TEXT NOT NULL, created_at BIGINT NOT NULL,
                expires_at BIGINT NOT NULL, last_used_at BIGINT, revoked_at BIGINT)"),
            Sql("CREATE UNIQUE INDEX api_tokens_sha ON api_tokens (token_sha256)"),
            Sql("CREATE TABLE login_failures (
                key TEXT PRIMARY KEY, failures BIGINT NOT NULL, first_at BIGINT NOT NULL,
                locked_until BIGINT NOT NULL)"),
            Sql("CREATE TABLE settings (key TEXT PRIMARY KEY, value TEXT NOT NULL)"),
            Data(DataStep::ConsoleColumns),
        ],
    },
    Migration {
        version: 3,
        name: "scale-out: artifacts and the fleet CA in the database, delta claims",
        steps: &[
            // Bundle files and deltas by SHA-256, in chunks (`store::CHUNK`); a row exists
            // only with all its chunks (one transaction). Files of older data directories
            // are imported at open (`Registry::import_files`).
            Sql("CREATE TABLE artifacts (
                sha256 TEXT PRIMARY KEY, size BIGINT NOT NULL, chunk_size BIGINT NOT NULL,
                created_at BIGINT NOT NULL)"),
            Sql("CREATE TABLE artifact_chunks (
                sha256 TEXT NOT NULL, idx BIGINT NOT NULL, data {blob} NOT NULL,
                PRIMARY KEY (sha256, idx))"),
            // Who computes which delta (exactly once across replicas; stale claims expire).
            Sql("CREATE TABLE delta_jobs (
                base_sha256 TEXT NOT NULL, target_sha256 TEXT NOT NULL, claimed_by TEXT NOT NULL,
                claimed_at BIGINT NOT NULL, PRIMARY KEY (base_sha256, target_sha256))"),
            // The fleet CA (one row): every replica signs device certificates with it.
            Sql("CREATE TABLE fleet_ca (
                id BIGINT PRIMARY KEY, cert_pem TEXT NOT NULL, key_pem TEXT NOT NULL,
                created_at BIGINT NOT NULL)"),
        ],
    },
    Migration {
        version: 4,
        name: "retention: records by stream and time",
        steps: &[Sql("CREATE INDEX records_stream_ts ON records (stream, ts_ms)")],
    },
    Migration {
        version: 5,
        name: "records partitioned by week (PostgreSQL)",
        // The primary key gains ts_ms (a partitioned table's unique keys hold its partition
        // key); a record is still stored once: ingest skips what is at or below the ack, and
        // a device resends a record with its own timestamp. Existing rows go to the default
        // partition; `FleetStore::ensure_record_partitions` adds the weekly ones.
        steps: &[
            Pg("ALTER TABLE records RENAME TO records_before_partitioning"),
            Pg("ALTER INDEX records_pkey RENAME TO records_before_partitioning_pkey"),
            Pg("DROP INDEX records_stream_ts"),
            Pg("CREATE TABLE records (
                device_id TEXT NOT NULL, stream TEXT NOT NULL, seq BIGINT NOT NULL,
                ts_ms BIGINT NOT NULL, body BYTEA NOT NULL,
                PRIMARY KEY (device_id, stream, seq, ts_ms)) PARTITION BY RANGE (ts_ms)"),
            Pg("CREATE INDEX records_stream_ts ON records (stream, ts_ms)"),
            Pg("CREATE TABLE records_default PARTITION OF records DEFAULT"),
            Pg("INSERT INTO records (device_id, stream, seq, ts_ms, body)
                SELECT device_id, stream, seq, ts_ms, body FROM records_before_partitioning"),
            Pg("DROP TABLE records_before_partitioning"),
        ],
    },
    Migration {
        version: 6,
        name: "drift index: ingest time (retrain policies evaluate newly ingested history)",
        // Rows from before this migration count as ingested long ago (0): a policy only
        // looks at history that arrives after it exists, and at what wall time completes.
        steps: &[
            Sql("ALTER TABLE drift_index ADD COLUMN ingested_ms BIGINT NOT NULL DEFAULT 0"),
            Sql("CREATE INDEX drift_index_ingested ON drift_index (bundle, ingested_ms)"),
        ],
    },
    Migration {
        version: 7,
        name: "validation gates and bundle validations",
        steps: &[
            Sql("CREATE TABLE validation_gates (
                bundle TEXT PRIMARY KEY, holdout_sha256 TEXT NOT NULL, holdout_name TEXT NOT NULL,
                holdout_size BIGINT NOT NULL, rules TEXT NOT NULL, created_by TEXT NOT NULL,
                created_at BIGINT NOT NULL)"),
            Sql("CREATE TABLE bundle_validations (
                bundle TEXT NOT NULL, version_number BIGINT NOT NULL, holdout_sha256 TEXT NOT NULL,
                status TEXT NOT NULL, metrics TEXT NOT NULL, detail TEXT NOT NULL, at BIGINT NOT NULL,
                PRIMARY KEY (bundle, version_number))"),
        ],
    },
    Migration {
        version: 8,
        name: "remote configuration: fleet configurations, config rollouts, apply reports",
        steps: &[
            // `fragments` is JSON: [[name, text], ...] in merge order; `toml` the merged file.
            Sql("CREATE TABLE configs (
                name TEXT NOT NULL, version_number BIGINT NOT NULL, sha256 TEXT NOT NULL,
                toml TEXT NOT NULL, fragments TEXT NOT NULL, pushed_by TEXT NOT NULL,
                pushed_at BIGINT NOT NULL, PRIMARY KEY (name, version_number))"),
            Sql("ALTER TABLE rollouts ADD COLUMN kind TEXT NOT NULL DEFAULT 'bundle'"),
            // Every configuration report a device sent (errors: JSON list of strings).
            Sql("CREATE TABLE config_reports (
                device_id TEXT NOT NULL, at BIGINT NOT NULL, name TEXT NOT NULL,
                version_number BIGINT NOT NULL, sha256 TEXT NOT NULL, rollout_id TEXT,
                outcome TEXT NOT NULL, applied_by TEXT NOT NULL, detail TEXT NOT NULL,
                errors TEXT NOT NULL)"),
            Sql("CREATE INDEX config_reports_device ON config_reports (device_id, at)"),
        ],
    },
    Migration {
        version: 9,
        name: "device commands and their results",
        steps: &[
            // `action` is the wire's `CommandAction` as JSON; the result columns stay NULL
            // until the device answers.
            Sql("CREATE TABLE commands (
                id TEXT PRIMARY KEY, device_id TEXT NOT NULL, action TEXT NOT NULL,
                created_by TEXT NOT NULL, created_at BIGINT NOT NULL, sent_at BIGINT,
                done_at BIGINT, outcome TEXT, detail TEXT, content_type TEXT,
                attachment {blob})"),
            Sql("CREATE INDEX commands_device ON commands (device_id, created_at)"),
        ],
    },
    Migration {
        version: 10,
        name: "device certificate renewal and fleet CA rotation",
        steps: &[
            // The device certificate in use: when it was issued, when it expires, which CA
            // signed it (SHA-256 of the CA certificate's PEM; NULL: the CA in use when this
            // migration ran, filled at the server's next start).
            Sql("ALTER TABLE devices ADD COLUMN cert_issued_at BIGINT"),
            Sql("ALTER TABLE devices ADD COLUMN cert_expires_at BIGINT"),
            Sql("ALTER TABLE devices ADD COLUMN cert_ca_sha256 TEXT"),
            // A renewed certificate the device has not confirmed yet (by using it): the old
            // one stays valid until then. `next_cert` is JSON (issued, expires, CA).
            Sql("ALTER TABLE devices ADD COLUMN next_cert_sha256 TEXT"),
            Sql("ALTER TABLE devices ADD COLUMN next_cert TEXT"),
            // Certificates issued before: ten years from enrollment.
            Sql("UPDATE devices SET cert_issued_at = enrolled_at, cert_expires_at = enrolled_at + 315360000000 WHERE cert_issued_at IS NULL"),
            // During a CA rotation, the previous CA: still trusted for device certificates,
            // and the issuer of the servers' own certificates (devices trust it) until the
            // rotation is finished.
            Sql("CREATE TABLE fleet_ca_previous (
                id BIGINT PRIMARY KEY, cert_pem TEXT NOT NULL, key_pem TEXT NOT NULL,
                retired_at BIGINT NOT NULL)"),
        ],
    },
    Migration {
        version: 11,
        name: "agent software releases, their signing keys, devices' release reports",
        steps: &[
            // One signed release file per (release number, target); the bytes are an
            // artifact (artifact_chunks) under `sha256`.
            Sql("CREATE TABLE agent_releases (
                version_number BIGINT NOT NULL, target TEXT NOT NULL, version TEXT NOT NULL,
                sha256 TEXT NOT NULL, size BIGINT NOT NULL, binary_sha256 TEXT NOT NULL,
                signer TEXT NOT NULL, notes TEXT NOT NULL, pushed_by TEXT NOT NULL,
                pushed_at BIGINT NOT NULL, PRIMARY KEY (version_number, target))"),
            Sql("CREATE INDEX agent_releases_sha ON agent_releases (sha256)"),
            // Keys release files must be signed with (separate from the bundle keys).
            Sql("CREATE TABLE release_keys (
                key_id TEXT PRIMARY KEY, public_pem TEXT NOT NULL, added_by TEXT NOT NULL,
                added_at BIGINT NOT NULL)"),
            Sql("CREATE TABLE agent_reports (
                device_id TEXT NOT NULL, at BIGINT NOT NULL, version TEXT NOT NULL,
                version_number BIGINT NOT NULL, sha256 TEXT NOT NULL, from_version TEXT NOT NULL,
                rollout_id TEXT, outcome TEXT NOT NULL, method TEXT NOT NULL,
                downloaded_bytes BIGINT NOT NULL, detail TEXT NOT NULL)"),
            Sql("CREATE INDEX agent_reports_device ON agent_reports (device_id, at)"),
        ],
    },
];

/// The schema version this binary writes.
pub fn latest() -> i64 {
    MIGRATIONS.last().map_or(0, |m| m.version)
}

fn ddl(backend: Backend, sql: &str) -> String {
    sql.replace(
        "{blob}",
        match backend {
            Backend::Sqlite => "BLOB",
            Backend::Postgres => "BYTEA",
        },
    )
}

/// Applies every migration the database lacks, oldest first.
pub(super) async fn run(store: &FleetStore) -> Result<()> {
    sqlx::query(
        "CREATE TABLE IF NOT EXISTS schema_migrations (
            version BIGINT PRIMARY KEY, name TEXT NOT NULL, applied_at BIGINT NOT NULL)",
    )
    .execute(&store.pool)
    .await?;
    let newest: Option<i64> = sqlx::query("SELECT MAX(version) AS v FROM schema_migrations")
        .fetch_one(&store.pool)
        .await?
        .try_get("v")?;
    if let Some(v) = newest.filter(|v| *v > latest()) {
        return Err(StoreError::Invalid(format!(
            "the database schema is version {v}, newer than this fleet-server knows ({}): run a newer fleet-server",
            latest()
        )));
    }
    for m in MIGRATIONS {
        let (_writer, mut tx) = store.begin_write().await?;
        let done = sqlx::query("SELECT version FROM schema_migrations WHERE version = $1")
            .bind(m.version)
            .fetch_optional(&mut *tx)
            .await?
            .is_some();
        if done {
            continue; // dropping the transaction rolls it back: nothing was written
        }
        for step in m.steps {
            match step {
                Pg(_) if store.backend != Backend::Postgres => {}
                Sql(sql) | Pg(sql) => {
                    sqlx::query(&ddl(store.backend, sql))
                        .execute(&mut *tx)
                        .await
                        .map_err(|e| {
                            StoreError::Invalid(format!(
                                "schema migration {} ({}) failed: {e}",
                                m.version, m.name
                            ))
                        })?;
                }
                Data(d) => backfill(*d, &mut tx).await?,
            }
        }
        sqlx::query(
            "INSERT INTO schema_migrations (version, name, applied_at) VALUES ($1, $2, $3)",
        )
        .bind(m.version)
        .bind(m.name)
        .bind(now_ms())
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        tracing::info!(version = m.version, "database schema migrated: {}", m.name);
    }
    Ok(())
}

async fn backfill(step: DataStep, tx: &mut sqlx::Transaction<'static, sqlx::Any>) -> Result<()> {
    match step {
        DataStep::ConsoleColumns => {
            let rows = sqlx::query("SELECT id, labels, status FROM devices")
                .fetch_all(&mut **tx)
                .await?;
            for r in rows {
                let id: String = r.try_get("id")?;
                let labels: String = r.try_get("labels")?;
                for l in super::list_of(&labels) {
                    sqlx::query("INSERT INTO device_labels (device_id, label) VALUES ($1, $2) ON CONFLICT DO NOTHING")
                        .bind(&id)
                        .bind(l)
                        .execute(&mut **tx)
                        .await?;
                }
                let status: Option<String> = r.try_get("status")?;
                let Some(c) = status
                    .as_deref()
                    .and_then(|s| serde_json::from_str::<edge_wire::sync::CheckIn>(s).ok())
                else {
                    continue;
                };
                let u = super::devices::CheckInUpdate::first(&c);
                sqlx::query("UPDATE devices SET agent_version = $1, models = $2, backlog = $3, dropped = $4, last_error = $5 WHERE id = $6")
                    .bind(&u.agent_version)
                    .bind(&u.models)
                    .bind(u.backlog)
                    .bind(u.dropped)
                    .bind(&u.last_error)
                    .bind(&id)
                    .execute(&mut **tx)
                    .await?;
            }
            super::ingest::reindex_all(tx).await?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_database_from_before_versioning_is_adopted_and_filled() {
        let dir = std::env::temp_dir().join(format!("fleet-migrate-{}", fastrand::u64(..)));
        std::fs::create_dir_all(&dir).unwrap();
        let url = format!("sqlite://{}?mode=rwc", dir.join("fleet.db").display());
        // The schema as the previous release created it, with one device and its status.
        {
            sqlx::any::install_default_drivers();
            let pool = sqlx::AnyPool::connect(&url).await.unwrap();
            for step in MIGRATIONS[0].steps {
                if let Sql(s) = step {
                    sqlx::query(&ddl(Backend::Sqlite, s))
                        .execute(&pool)
                        .await
                        .unwrap();
                }
            }
            let status = serde_json::json!({
                "agent_version": "0.1.0", "uptime_s": 5, "last_error": "fleet unreachable",
                "models": [{"model": "pump", "bundle": "pump-anomaly", "version": "1.0.0",
                            "version_number": 3, "sha256": "ab"}],
                "streams": [{"stream": "samples", "backlog": 40, "bytes": 1, "dropped": 2},
                            {"stream": "alarms", "backlog": 2, "bytes": 1, "dropped": 0}],
            });
            sqlx::query("INSERT INTO devices (id, name, labels, cert_sha256, enrolled_at, last_seen, status) VALUES ('d1', 'gw1', 'site=a,line=2', 'c1', 1, 2, $1)")
                .bind(status.to_string())
                .execute(&pool)
                .await
                .unwrap();
            pool.close().await;
        }
        let store = FleetStore::open_url(&url).await.unwrap();
        let d = store.device("d1").await.unwrap().unwrap();
        assert_eq!(d.agent_version.as_deref(), Some("0.1.0"));
        assert_eq!(d.models, vec!["pump-anomaly#3".to_string()]);
        assert_eq!((d.backlog, d.dropped), (42, 2));
        assert_eq!(d.last_error.as_deref(), Some("fleet unreachable"));
        let filter = super::super::DeviceFilter {
            labels: vec!["line=2".into()],
            ..Default::default()
        };
        let t = super::super::StateThresholds {
            now_ms: now_ms(),
            online_ms: 1,
            offline_ms: 1,
        };
        let page = store
            .device_page(&filter, &Default::default(), 0, 10, &t)
            .await
            .unwrap();
        assert_eq!(page.1, 1, "labels were copied into device_labels");
        // Opening again applies nothing twice.
        let again = FleetStore::open_url(&url).await.unwrap();
        let n: i64 = sqlx::query("SELECT COUNT(*) AS n FROM schema_migrations")
            .fetch_one(&again.pool)
            .await
            .unwrap()
            .try_get("n")
            .unwrap();
        assert_eq!(n, latest());
        // A schema from the future is refused.
        sqlx::query(
            "INSERT INTO schema_migrations (version, name, applied_at) VALUES (999, 'x', 0)",
        )
        .execute(&again.pool)
        .await
        .unwrap();
        let e = FleetStore::open_url(&url).await.unwrap_err();
        assert!(e.to_string().contains("version 999"), "{e}");
        std::fs::remove_dir_all(dir).ok();
    }
    /// PostgreSQL: a database of the release before record partitions keeps its records
    /// through migration 5 (into the default partition) and ingest carries on over them.
    #[tokio::test]
    async fn records_move_into_the_partitioned_table_on_postgres() {
        let Some(url) = super::super::testing::database_url().await.unwrap() else {
            return; // SQLite: nothing is partitioned
        };
        {
            sqlx::any::install_default_drivers();
            let pool = sqlx::AnyPool::connect(&url).await.unwrap();
            sqlx::query("CREATE TABLE schema_migrations (version BIGINT PRIMARY KEY, name TEXT NOT NULL, applied_at BIGINT NOT NULL)")
                .execute(&pool)
                .await
                .unwrap();
            for m in MIGRATIONS.iter().filter(|m| m.version <= 4) {
                for step in m.steps {
                    if let Sql(s) | Pg(s) = step {
                        sqlx::query(&ddl(Backend::Postgres, s))
                            .execute(&pool)
                            .await
                            .unwrap();
                    }
                }
                sqlx::query(
                    "INSERT INTO schema_migrations (version, name, applied_at) VALUES ($1, $2, 0)",
                )
                .bind(m.version)
                .bind(m.name)
                .execute(&pool)
                .await
                .unwrap();
            }
            sqlx::query("INSERT INTO records (device_id, stream, seq, ts_ms, body) VALUES ('d1', 'samples', 1, 10, 'a'), ('d1', 'samples', 2, 20, 'b')")
                .execute(&pool)
                .await
                .unwrap();
            sqlx::query("INSERT INTO stream_marks (device_id, stream, acked_through, lost_on_device, records, duplicates) VALUES ('d1', 'samples', 2, 0, 2, 0)")
                .execute(&pool)
                .await
                .unwrap();
            pool.close().await;
        }
        let store = FleetStore::open_url(&url).await.unwrap();
        let homes: Vec<String> =
            sqlx::query("SELECT CAST(tableoid::regclass AS TEXT) AS t FROM records ORDER BY seq")
                .fetch_all(&store.pool)
                .await
                .unwrap()
                .iter()
                .map(|r| r.try_get("t").unwrap())
                .collect();
        assert_eq!(homes, ["records_default", "records_default"]);
        let b = b"c".as_slice();
        let r = store
            .ingest("d1", "samples", 1, &[(2, 20, b"b"), (3, 30, b)])
            .await
            .unwrap();
        assert_eq!((r.acked_through, r.inserted), (3, 1));
        assert_eq!(store.count("records").await.unwrap(), 3);
    }
}
