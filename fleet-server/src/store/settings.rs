//! Server settings that CLI commands on the same database need to agree with the running
//! server on (the state thresholds), as key/value rows written by `serve`.

use sqlx::Row;

use super::{FleetStore, Result};

impl FleetStore {
    /// The setting `key`, if `serve` wrote one.
    pub async fn setting(&self, key: &str) -> Result<Option<String>> {
        let r = sqlx::query("SELECT value FROM settings WHERE key = $1")
            .bind(key)
            .fetch_optional(&self.pool)
            .await?;
        r.map(|r| Ok(r.try_get("value")?)).transpose()
    }

    /// Sets `key` to `value` (replacing it).
    pub async fn set_setting(&self, key: &str, value: &str) -> Result<()> {
        let _writer = self.writer.lock().await;
        sqlx::query("INSERT INTO settings (key, value) VALUES ($1, $2) ON CONFLICT (key) DO UPDATE SET value = excluded.value")
            .bind(key)
            .bind(value)
            .execute(&self.pool)
            .await?;
        Ok(())
    }
}
