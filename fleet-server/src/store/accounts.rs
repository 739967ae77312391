//! Operator accounts, console sessions, API tokens and login throttling. Secrets are never
//! stored: passwords as argon2id PHC strings, session ids and API tokens as SHA-256.

use sqlx::any::AnyRow;
use sqlx::Row;

use super::{parse_enum, FleetStore, Result};
use crate::types::Role;

/// An operator account.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct UserRow {
    /// User name (unique; 1-64 characters of `A-Z a-z 0-9 - _ . @`).
    pub name: String,
    /// What the user may do.
    pub role: Role,
    /// argon2id PHC string.
    #[serde(skip)]
    pub password_hash: String,
    /// Who added the account.
    pub created_by: String,
    /// When it was added (Unix ms).
    pub created_at: i64,
    /// When its password was last set (Unix ms).
    pub password_changed_at: i64,
}

/// A console session. Only the SHA-256 of its id is stored; the id is in the cookie only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionRow {
    /// SHA-256 (hex) of the session id.
    pub id_sha256: String,
    /// The user signed in.
    pub user_name: String,
    /// The session's CSRF token (sent back in `X-CSRF-Token` on every state change).
    pub csrf: String,
    /// Sign-in time (Unix ms).
    pub created_at: i64,
    /// When it ends at the latest (Unix ms).
    pub expires_at: i64,
    /// Its last request (Unix ms; updated at most once a minute).
    pub last_seen: i64,
    /// The client address and user agent at login (for the audit log).
    pub client: String,
}

/// An API token. Only the SHA-256 of its secret is stored.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ApiTokenRow {
    /// Token id (`tok-…`), what lists and revocation use.
    pub id: String,
    /// A name for people.
    pub name: String,
    /// The user it acts as.
    pub user_name: String,
    /// At most the user's role; the effective role is the lower of the two at each use.
    pub role: Role,
    /// SHA-256 (hex) of the secret; never serialized.
    #[serde(skip)]
    pub token_sha256: String,
    /// Creation time (Unix ms).
    pub created_at: i64,
    /// Expiry (Unix ms).
    pub expires_at: i64,
    /// Its last use (Unix ms; updated at most once a minute).
    pub last_used_at: Option<i64>,
    /// When it was revoked (Unix ms), if it was.
    pub revoked_at: Option<i64>,
}

/// Failed logins of one key (`user:NAME` or `ip:ADDR`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoginFailure {
    /// Failed attempts counted in the current window.
    pub failures: i64,
    /// When the window started (Unix ms).
    pub first_at: i64,
    /// Sign-ins are refused until then (Unix ms; 0: no lock).
    pub locked_until: i64,
}

/// What came of a change to a user.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UserChange {
    /// Changed.
    Done,
    /// Refused: no such user.
    NoSuchUser,
    /// Refused: the user is the last admin.
    LastAdmin,
}

fn failure_of(r: &AnyRow) -> Result<LoginFailure> {
    Ok(LoginFailure {
        failures: r.try_get("failures")?,
        first_at: r.try_get("first_at")?,
        locked_until: r.try_get("locked_until")?,
    })
}

fn user_of(r: &AnyRow) -> Result<UserRow> {
    Ok(UserRow {
        name: r.try_get("name")?,
        role: parse_enum(&r.try_get::<String, _>("role")?)?,
        password_hash: r.try_get("password_hash")?,
        created_by: r.try_get("created_by")?,
        created_at: r.try_get("created_at")?,
        password_changed_at: r.try_get("password_changed_at")?,
    })
}

fn token_of(r: &AnyRow) -> Result<ApiTokenRow> {
    Ok(ApiTokenRow {
        id: r.try_get("id")?,
        name: r.try_get("name")?,
        user_name: r.try_get("user_name")?,
        role: parse_enum(&r.try_get::<String, _>("role")?)?,
        token_sha256: r.try_get("token_sha256")?,
        created_at: r.try_get("created_at")?,
        expires_at: r.try_get("expires_at")?,
        last_used_at: r.try_get("last_used_at")?,
        revoked_at: r.try_get("revoked_at")?,
    })
}

impl FleetStore {
    // ---- users ----

    /// False when a user of that name exists.
    pub async fn add_user(&self, u: &UserRow) -> Result<bool> {
        let _writer = self.writer.lock().await;
        let r = sqlx::query("INSERT INTO users (name, role, password_hash, created_by, created_at, password_changed_at) VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (name) DO NOTHING")
            .bind(&u.name)
            .bind(u.role.as_str())
            .bind(&u.password_hash)
            .bind(&u.created_by)
            .bind(u.created_at)
            .bind(u.password_changed_at)
            .execute(&self.pool)
            .await?;
        Ok(r.rows_affected() == 1)
    }

    /// The account `name`, if there is one.
    pub async fn user(&self, name: &str) -> Result<Option<UserRow>> {
        let r = sqlx::query("SELECT * FROM users WHERE name = $1")
            .bind(name)
            .fetch_optional(&self.pool)
            .await?;
        r.as_ref().map(user_of).transpose()
    }

    /// Every account, by name.
    pub async fn users(&self) -> Result<Vec<UserRow>> {
        let rows = sqlx::query("SELECT * FROM users ORDER BY name")
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(user_of).collect()
    }

    /// Number of admin accounts.
    pub async fn count_admins(&self) -> Result<i64> {
        Ok(
            sqlx::query("SELECT COUNT(*) AS n FROM users WHERE role = 'admin'")
                .fetch_one(&self.pool)
                .await?
                .try_get("n")?,
        )
    }

    /// Changes a user's role and/or password hash in one transaction; a new password ends
    /// every session of the user. Refuses to demote the last admin (checked inside the
    /// transaction, so two admins demoting each other at once cannot leave none).
    pub async fn update_user(
        &self,
        name: &str,
        role: Option<Role>,
        password_hash: Option<&str>,
        at: i64,
    ) -> Result<UserChange> {
        let (_writer, mut tx) = self.begin_write().await?;
        let admins = self.lock_admins(&mut tx).await?;
        let Some(current) = sqlx::query("SELECT role FROM users WHERE name = $1")
            .bind(name)
            .fetch_optional(&mut *tx)
            .await?
        else {
            return Ok(UserChange::NoSuchUser);
        };
        let current: Role = parse_enum(&current.try_get::<String, _>("role")?)?;
        if let Some(role) = role {
            if current == Role::Admin && role != Role::Admin && admins <= 1 {
                return Ok(UserChange::LastAdmin);
            }
            sqlx::query("UPDATE users SET role = $1 WHERE name = $2")
                .bind(role.as_str())
                .bind(name)
                .execute(&mut *tx)
                .await?;
        }
        if let Some(hash) = password_hash {
            sqlx::query(
                "UPDATE users SET password_hash = $1, password_changed_at = $2 WHERE name = $3",
            )
            .bind(hash)
            .bind(at)
            .bind(name)
            .execute(&mut *tx)
            .await?;
            sqlx::query("DELETE FROM sessions WHERE user_name = $1")
                .bind(name)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(UserChange::Done)
    }

    /// The number of admins, with their rows locked until the transaction ends (PostgreSQL;
    /// SQLite's write transaction holds the whole database already).
    async fn lock_admins(&self, tx: &mut sqlx::Transaction<'static, sqlx::Any>) -> Result<i64> {
        let lock = self.row_lock();
        let rows = sqlx::query(&format!(
            "SELECT name FROM users WHERE role = 'admin'{lock}"
        ))
        .fetch_all(&mut **tx)
        .await?;
        Ok(i64::try_from(rows.len()).unwrap_or(i64::MAX))
    }

    /// Removes a user, ends their sessions and revokes their API tokens; never the last admin.
    pub async fn remove_user(&self, name: &str, at: i64) -> Result<UserChange> {
        let (_writer, mut tx) = self.begin_write().await?;
        let admins = self.lock_admins(&mut tx).await?;
        let Some(current) = sqlx::query("SELECT role FROM users WHERE name = $1")
            .bind(name)
            .fetch_optional(&mut *tx)
            .await?
        else {
            return Ok(UserChange::NoSuchUser);
        };
        let current: Role = parse_enum(&current.try_get::<String, _>("role")?)?;
        if current == Role::Admin && admins <= 1 {
            return Ok(UserChange::LastAdmin);
        }
        sqlx::query("DELETE FROM users WHERE name = $1")
            .bind(name)
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM sessions WHERE user_name = $1")
            .bind(name)
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "UPDATE api_tokens SET revoked_at = $1 WHERE user_name = $2 AND revoked_at IS NULL",
        )
        .bind(at)
        .bind(name)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(UserChange::Done)
    }

    // ---- sessions ----

    /// Stores a new session.
    pub async fn add_session(&self, s: &SessionRow) -> Result<()> {
        let _writer = self.writer.lock().await;
        sqlx::query("INSERT INTO sessions (id_sha256, user_name, csrf, created_at, expires_at, last_seen, client) VALUES ($1, $2, $3, $4, $5, $6, $7)")
            .bind(&s.id_sha256)
            .bind(&s.user_name)
            .bind(&s.csrf)
            .bind(s.created_at)
            .bind(s.expires_at)
            .bind(s.last_seen)
            .bind(&s.client)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// The session with this id hash, if stored (expiry is the caller's to judge).
    pub async fn session(&self, id_sha256: &str) -> Result<Option<SessionRow>> {
        let r = sqlx::query("SELECT * FROM sessions WHERE id_sha256 = $1")
            .bind(id_sha256)
            .fetch_optional(&self.pool)
            .await?;
        r.map(|r| {
            Ok(SessionRow {
                id_sha256: r.try_get("id_sha256")?,
                user_name: r.try_get("user_name")?,
                csrf: r.try_get("csrf")?,
                created_at: r.try_get("created_at")?,
                expires_at: r.try_get("expires_at")?,
                last_seen: r.try_get("last_seen")?,
                client: r.try_get("client")?,
            })
        })
        .transpose()
    }

    /// Sets a session's last request time.
    pub async fn touch_session(&self, id_sha256: &str, at: i64) -> Result<()> {
        let _writer = self.writer.lock().await;
        sqlx::query("UPDATE sessions SET last_seen = $1 WHERE id_sha256 = $2")
            .bind(at)
            .bind(id_sha256)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Deletes a session (logout; expiry). Deleting one that is gone is not an error.
    pub async fn delete_session(&self, id_sha256: &str) -> Result<()> {
        let _writer = self.writer.lock().await;
        sqlx::query("DELETE FROM sessions WHERE id_sha256 = $1")
            .bind(id_sha256)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Deletes sessions that expired or sat idle since `idle_before`; returns how many.
    pub async fn prune_sessions(&self, now: i64, idle_before: i64) -> Result<u64> {
        let _writer = self.writer.lock().await;
        let r = sqlx::query("DELETE FROM sessions WHERE expires_at <= $1 OR last_seen < $2")
            .bind(now)
            .bind(idle_before)
            .execute(&self.pool)
            .await?;
        Ok(r.rows_affected())
    }

    // ---- API tokens ----

    /// Stores a new API token.
    pub async fn add_api_token(&self, t: &ApiTokenRow) -> Result<()> {
        let _writer = self.writer.lock().await;
        sqlx::query("INSERT INTO api_tokens (id, name, user_name, role, token_sha256, created_at, expires_at) VALUES ($1, $2, $3, $4, $5, $6, $7)")
            .bind(&t.id)
            .bind(&t.name)
            .bind(&t.user_name)
            .bind(t.role.as_str())
            .bind(&t.token_sha256)
            .bind(t.created_at)
            .bind(t.expires_at)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// The token whose secret hashes to `sha256`, if any (revoked and expired ones included).
    pub async fn api_token_by_sha(&self, sha256: &str) -> Result<Option<ApiTokenRow>> {
        let r = sqlx::query("SELECT * FROM api_tokens WHERE token_sha256 = $1")
            .bind(sha256)
            .fetch_optional(&self.pool)
            .await?;
        r.as_ref().map(token_of).transpose()
    }

    /// The token `id`, if any.
    pub async fn api_token(&self, id: &str) -> Result<Option<ApiTokenRow>> {
        let r = sqlx::query("SELECT * FROM api_tokens WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        r.as_ref().map(token_of).transpose()
    }

    /// API tokens (of one user, or all), newest first.
    pub async fn api_tokens(&self, user: Option<&str>) -> Result<Vec<ApiTokenRow>> {
        let rows =
            match user {
                Some(u) => sqlx::query(
                    "SELECT * FROM api_tokens WHERE user_name = $1 ORDER BY created_at DESC, id",
                )
                .bind(u)
                .fetch_all(&self.pool)
                .await?,
                None => {
                    sqlx::query("SELECT * FROM api_tokens ORDER BY created_at DESC, id")
                        .fetch_all(&self.pool)
                        .await?
                }
            };
        rows.iter().map(token_of).collect()
    }

    /// Marks a token revoked at `at`; false if there is no such token or it was revoked already.
    pub async fn revoke_api_token(&self, id: &str, at: i64) -> Result<bool> {
        let _writer = self.writer.lock().await;
        let r = sqlx::query(
            "UPDATE api_tokens SET revoked_at = $1 WHERE id = $2 AND revoked_at IS NULL",
        )
        .bind(at)
        .bind(id)
        .execute(&self.pool)
        .await?;
        Ok(r.rows_affected() == 1)
    }

    /// Sets a token's last use time.
    pub async fn touch_api_token(&self, id: &str, at: i64) -> Result<()> {
        let _writer = self.writer.lock().await;
        sqlx::query("UPDATE api_tokens SET last_used_at = $1 WHERE id = $2")
            .bind(at)
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    // ---- login throttling ----

    /// The failure count of `key` (`user:NAME` or `ip:ADDR`), if any.
    pub async fn login_failure(&self, key: &str) -> Result<Option<LoginFailure>> {
        let r = sqlx::query(
            "SELECT failures, first_at, locked_until FROM login_failures WHERE key = $1",
        )
        .bind(key)
        .fetch_optional(&self.pool)
        .await?;
        r.as_ref().map(failure_of).transpose()
    }

    /// Reads and replaces the count of `key` in one transaction (the row locked on
    /// PostgreSQL, the database on SQLite), so concurrent sign-ins on any replica are counted
    /// one after the other. `f` gets the stored count (if any) and returns the new one (None:
    /// leave it) and a value handed back to the caller.
    pub async fn update_login_failure<R>(
        &self,
        key: &str,
        f: impl FnOnce(Option<LoginFailure>) -> (Option<LoginFailure>, R),
    ) -> Result<R> {
        let (_writer, mut tx) = self.begin_write().await?;
        let lock = match self.backend {
            super::Backend::Postgres => {
                // Make sure a row exists to lock.
                sqlx::query("INSERT INTO login_failures (key, failures, first_at, locked_until) VALUES ($1, 0, 0, 0) ON CONFLICT (key) DO NOTHING")
                    .bind(key)
                    .execute(&mut *tx)
                    .await?;
                " FOR UPDATE"
            }
            super::Backend::Sqlite => "",
        };
        let prev = sqlx::query(&format!(
            "SELECT failures, first_at, locked_until FROM login_failures WHERE key = $1{lock}"
        ))
        .bind(key)
        .fetch_optional(&mut *tx)
        .await?
        .as_ref()
        .map(failure_of)
        .transpose()?;
        let (next, out) = f(prev);
        if let Some(n) = next {
            sqlx::query("INSERT INTO login_failures (key, failures, first_at, locked_until) VALUES ($1, $2, $3, $4) ON CONFLICT (key) DO UPDATE SET failures = excluded.failures, first_at = excluded.first_at, locked_until = excluded.locked_until")
                .bind(key)
                .bind(n.failures)
                .bind(n.first_at)
                .bind(n.locked_until)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(out)
    }

    /// Forgets the failure count of `key` (after a successful sign-in).
    pub async fn clear_login_failures(&self, key: &str) -> Result<()> {
        let _writer = self.writer.lock().await;
        sqlx::query("DELETE FROM login_failures WHERE key = $1")
            .bind(key)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Deletes counts whose window closed before `window_start` and whose lock is over;
    /// returns how many.
    pub async fn prune_login_failures(&self, window_start: i64, now: i64) -> Result<u64> {
        let _writer = self.writer.lock().await;
        let r =
            sqlx::query("DELETE FROM login_failures WHERE first_at < $1 AND locked_until <= $2")
                .bind(window_start)
                .bind(now)
                .execute(&self.pool)
                .await?;
        Ok(r.rows_affected())
    }
}
