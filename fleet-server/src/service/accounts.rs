//! Operator accounts: password hashing (argon2id), console login with throttling, sessions
//! (cookie + CSRF token), API tokens, and user/token management.
//!
//! Login throttling: failures are counted per user name and per client address over 15
//! minutes. From the 5th failure for a name (the 20th for an address) every attempt is
//! refused for 30 s, doubling with each further failure up to 15 minutes (429 with
//! `Retry-After`), whatever the password. A success clears the name's and the address's
//! counts. Counts live in the database, so every server replica sees them.

use std::sync::OnceLock;
use std::time::Duration;

use argon2::password_hash::{PasswordHash, PasswordHasher as _, PasswordVerifier, SaltString};
use argon2::Argon2;
use sha2::{Digest, Sha256};
use tokio::sync::Semaphore;

use super::views::{CreatedToken, LoginReply, NewToken, NewUser, UserOut, UserUpdate};
use super::{parse_ttl, random_hex, Acting, FleetService, Principal, Result, ServiceError, Via};
use crate::store::{now_ms, ApiTokenRow, LoginFailure, SessionRow, UserRow};
use crate::types::Role;

/// The console's session cookie.
pub const SESSION_COOKIE: &str = "fleet_session";

const WINDOW_MS: i64 = 15 * 60 * 1000;
const FREE_FAILURES_USER: i64 = 5;
const FREE_FAILURES_ADDR: i64 = 20;
const FIRST_LOCK_MS: i64 = 30_000;
const MAX_LOCK_MS: i64 = 15 * 60 * 1000;
/// Touch a session's or token's last use at most this often (one write per minute).
const TOUCH_EVERY_MS: i64 = 60_000;
pub const MIN_PASSWORD: usize = 10;
const MAX_PASSWORD: usize = 1024;

fn sha256_hex(s: &str) -> String {
    edge_protocols::bundle::file::hex(&Sha256::digest(s.as_bytes()))
}

/// argon2id with the OWASP parameters (19 MiB, 2 passes, 1 lane), at most two at a time (a
/// flood of logins cannot take more than two cores or 40 MiB).
pub struct PasswordHasher {
    gate: Semaphore,
    /// A hash to verify against when the user does not exist (same cost either way).
    dummy: OnceLock<String>,
}

impl std::fmt::Debug for PasswordHasher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PasswordHasher")
    }
}

impl Default for PasswordHasher {
    fn default() -> Self {
        Self::new()
    }
}

fn hash_now(password: &str) -> Result<String> {
    let mut salt = [0u8; 16];
    getrandom::getrandom(&mut salt)
        .map_err(|e| ServiceError::Internal(format!("no OS randomness: {e}")))?;
    let salt =
        SaltString::encode_b64(&salt).map_err(|e| ServiceError::Internal(format!("salt: {e}")))?;
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| ServiceError::Internal(format!("password hash: {e}")))
}

impl PasswordHasher {
    pub fn new() -> PasswordHasher {
        PasswordHasher {
            gate: Semaphore::new(2),
            dummy: OnceLock::new(),
        }
    }

    async fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> Result<T> {
        let _permit = self
            .gate
            .acquire()
            .await
            .map_err(|e| ServiceError::Internal(e.to_string()))?;
        tokio::task::spawn_blocking(f)
            .await
            .map_err(|e| ServiceError::Internal(format!("password hashing task: {e}")))
    }

    pub async fn hash(&self, password: &str) -> Result<String> {
        let p = password.to_string();
        self.run(move || hash_now(&p)).await?
    }

    /// Whether `password` matches `phc` (an argon2 PHC string); with no hash, the same work
    /// against a dummy and `false`.
    pub async fn verify(&self, password: &str, phc: Option<&str>) -> Result<bool> {
        let phc = match phc {
            Some(h) => h.to_string(),
            None => match self.dummy.get() {
                Some(d) => d.clone(),
                None => {
                    let d = self.hash("not a password of anyone").await?;
                    self.dummy.get_or_init(|| d).clone()
                }
            },
        };
        let known = phc.clone();
        let p = password.to_string();
        let ok = self
            .run(move || {
                PasswordHash::new(&phc)
                    .map(|h| Argon2::default().verify_password(p.as_bytes(), &h).is_ok())
                    .unwrap_or(false)
            })
            .await?;
        Ok(ok && Some(known.as_str()) != self.dummy.get().map(String::as_str))
    }
}

/// Why a credential was refused (the HTTP layer turns each into a 401).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("sign in first: no session or API token")]
    Missing,
    #[error("the session expired or was ended: sign in again")]
    SessionExpired,
    #[error("the API token is unknown, revoked or expired")]
    BadToken,
}

/// An authenticated console session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    pub principal: Principal,
    pub csrf: String,
    pub id_sha256: String,
    pub expires_at: i64,
}

pub fn valid_user_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.@".contains(&b))
}

fn check_user_name(s: &str) -> Result<()> {
    if valid_user_name(s) {
        Ok(())
    } else {
        Err(ServiceError::Invalid(
            "user name must be 1-64 characters of A-Z a-z 0-9 - _ . @".into(),
        ))
    }
}

pub fn check_password(p: &str) -> Result<()> {
    let n = p.chars().count();
    if n < MIN_PASSWORD {
        return Err(ServiceError::Invalid(format!(
            "password must be at least {MIN_PASSWORD} characters"
        )));
    }
    if p.len() > MAX_PASSWORD {
        return Err(ServiceError::Invalid(format!(
            "password must be at most {MAX_PASSWORD} bytes"
        )));
    }
    Ok(())
}

/// A generated password: 20 characters from a 56-letter alphabet (~116 bits).
pub fn generate_password() -> Result<String> {
    const ALPHABET: &[u8] = b"abcdefghijkmnpqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789";
    let mut raw = [0u8; 20];
    getrandom::getrandom(&mut raw)
        .map_err(|e| ServiceError::Internal(format!("no OS randomness: {e}")))?;
    Ok(raw
        .iter()
        .map(|b| ALPHABET[usize::from(*b) % ALPHABET.len()] as char)
        .collect())
}

fn lock_ms(failures: i64, free: i64) -> i64 {
    if failures < free {
        return 0;
    }
    let doublings = u32::try_from((failures - free).min(20)).unwrap_or(20);
    FIRST_LOCK_MS
        .saturating_mul(1i64 << doublings)
        .min(MAX_LOCK_MS)
}

impl FleetService {
    async fn throttled(&self, keys: &[String], now: i64) -> Result<()> {
        for k in keys {
            if let Some(f) = self.store().login_failure(k).await? {
                if f.locked_until > now {
                    let wait = (f.locked_until - now + 999) / 1000;
                    return Err(ServiceError::Throttled {
                        message: format!("too many failed sign-ins: try again in {wait} s"),
                        retry_after_s: u64::try_from(wait).unwrap_or(1),
                    });
                }
            }
        }
        Ok(())
    }

    async fn count_failure(&self, key: &str, free: i64, now: i64) -> Result<()> {
        let prev = self.store().login_failure(key).await?;
        let mut f = match prev {
            Some(f) if now - f.first_at < WINDOW_MS => f,
            _ => LoginFailure {
                failures: 0,
                first_at: now,
                locked_until: 0,
            },
        };
        f.failures += 1;
        let lock = lock_ms(f.failures, free);
        if lock > 0 {
            f.locked_until = now + lock;
        }
        self.store().set_login_failure(key, &f).await?;
        Ok(())
    }

    /// Signs a user in: a new session for the console. `client` is the address (throttling
    /// key) and user agent. Returns the reply and the session id (for the cookie only).
    pub async fn login(
        &self,
        user: &str,
        password: &str,
        client_addr: &str,
        user_agent: &str,
    ) -> Result<(LoginReply, String)> {
        let now = now_ms();
        let keys = [format!("user:{user}"), format!("ip:{client_addr}")];
        self.throttled(&keys, now).await?;
        let row = if valid_user_name(user) {
            self.store().user(user).await?
        } else {
            None
        };
        let ok = self
            .hasher()
            .verify(password, row.as_ref().map(|u| u.password_hash.as_str()))
            .await?;
        let Some(row) = row.filter(|_| ok) else {
            self.count_failure(&keys[0], FREE_FAILURES_USER, now)
                .await?;
            self.count_failure(&keys[1], FREE_FAILURES_ADDR, now)
                .await?;
            let shown: String = user.chars().take(64).collect();
            self.store()
                .audit(
                    &shown,
                    "user.login_failed",
                    &shown,
                    &format!("from {client_addr}"),
                )
                .await?;
            return Err(ServiceError::Unauthorized(
                "wrong user name or password".into(),
            ));
        };
        for k in &keys {
            self.store().clear_login_failures(k).await?;
        }
        let id = random_hex(32)?;
        let csrf = random_hex(32)?;
        let expires_at = now + super::ms(self.settings().session_ttl);
        let ua: String = user_agent.chars().take(200).collect();
        self.store()
            .add_session(&SessionRow {
                id_sha256: sha256_hex(&id),
                user_name: row.name.clone(),
                csrf: csrf.clone(),
                created_at: now,
                expires_at,
                last_seen: now,
                client: format!("{client_addr} {ua}"),
            })
            .await?;
        self.store()
            .audit(
                &row.name,
                "user.login",
                &row.name,
                &format!("from {client_addr}"),
            )
            .await?;
        Ok((
            LoginReply {
                user: row.name,
                role: row.role,
                csrf,
                expires_at,
            },
            id,
        ))
    }

    /// The session of a cookie value: still valid and its user still there.
    pub async fn session(&self, cookie: &str) -> std::result::Result<Session, AuthError> {
        let sha = sha256_hex(cookie);
        let now = now_ms();
        let s = match self.store().session(&sha).await {
            Ok(Some(s)) => s,
            Ok(None) => return Err(AuthError::SessionExpired),
            Err(e) => {
                tracing::error!("session lookup failed: {e}");
                return Err(AuthError::SessionExpired);
            }
        };
        let idle = super::ms(self.settings().session_idle);
        if now >= s.expires_at || now - s.last_seen > idle {
            let _ = self.store().delete_session(&sha).await;
            return Err(AuthError::SessionExpired);
        }
        let Ok(Some(user)) = self.store().user(&s.user_name).await else {
            return Err(AuthError::SessionExpired);
        };
        if now - s.last_seen > TOUCH_EVERY_MS {
            if let Err(e) = self.store().touch_session(&sha, now).await {
                tracing::warn!("session touch failed: {e}");
            }
        }
        Ok(Session {
            principal: Principal {
                name: user.name,
                role: user.role,
                via: Via::Session,
            },
            csrf: s.csrf,
            id_sha256: sha,
            expires_at: s.expires_at,
        })
    }

    /// Ends a session (logout).
    pub async fn logout(&self, s: &Session) -> Result<()> {
        self.store().delete_session(&s.id_sha256).await?;
        self.store()
            .audit(&s.principal.name, "user.logout", &s.principal.name, "")
            .await?;
        Ok(())
    }

    /// The principal of an API token: not revoked, not expired, its user still there; the
    /// role is the lower of the token's and the user's.
    pub async fn token_principal(&self, token: &str) -> std::result::Result<Principal, AuthError> {
        let now = now_ms();
        let row = match self.store().api_token_by_sha(&sha256_hex(token)).await {
            Ok(Some(r)) => r,
            Ok(None) => return Err(AuthError::BadToken),
            Err(e) => {
                tracing::error!("token lookup failed: {e}");
                return Err(AuthError::BadToken);
            }
        };
        if row.revoked_at.is_some() || now >= row.expires_at {
            return Err(AuthError::BadToken);
        }
        let Ok(Some(user)) = self.store().user(&row.user_name).await else {
            return Err(AuthError::BadToken);
        };
        if row.last_used_at.is_none_or(|t| now - t > TOUCH_EVERY_MS) {
            if let Err(e) = self.store().touch_api_token(&row.id, now).await {
                tracing::warn!("token touch failed: {e}");
            }
        }
        Ok(Principal {
            name: user.name,
            role: row.role.min(user.role),
            via: Via::Token { id: row.id },
        })
    }
}

impl Acting {
    pub async fn users(&self) -> Result<Vec<UserOut>> {
        self.require(Role::Admin, "listing users")?;
        Ok(self.store().users().await?)
    }

    pub async fn add_user(&self, u: &NewUser) -> Result<UserOut> {
        self.require(Role::Admin, "adding users")?;
        check_user_name(&u.name)?;
        check_password(&u.password)?;
        let now = now_ms();
        let row = UserRow {
            name: u.name.clone(),
            role: u.role,
            password_hash: self.svc.hasher().hash(&u.password).await?,
            created_by: self.who.name.clone(),
            created_at: now,
            password_changed_at: now,
        };
        if !self.store().add_user(&row).await? {
            return Err(ServiceError::Conflict(format!(
                "user `{}` exists already",
                u.name
            )));
        }
        self.audit("user.add", &u.name, &format!("role {}", u.role))
            .await?;
        Ok(row)
    }

    async fn user_row(&self, name: &str) -> Result<UserRow> {
        self.store()
            .user(name)
            .await?
            .ok_or_else(|| ServiceError::NotFound(format!("no user `{name}`")))
    }

    async fn keep_an_admin(&self, name: &str, what: &str) -> Result<()> {
        let u = self.user_row(name).await?;
        if u.role == Role::Admin && self.store().count_admins().await? <= 1 {
            return Err(ServiceError::Conflict(format!(
                "cannot {what} `{name}`: the last admin (add another admin first)"
            )));
        }
        Ok(())
    }

    pub async fn update_user(&self, name: &str, upd: &UserUpdate) -> Result<UserOut> {
        let own = name == self.who.name && self.who.via != Via::Local;
        if upd.role.is_none() && upd.password.is_none() {
            return Err(ServiceError::Invalid(
                "give a new role or a new password".into(),
            ));
        }
        if let Some(role) = upd.role {
            self.require(Role::Admin, "changing roles")?;
            if role != Role::Admin {
                self.keep_an_admin(name, "demote").await?;
            }
            if !self.store().set_user_role(name, role).await? {
                return Err(ServiceError::NotFound(format!("no user `{name}`")));
            }
            self.audit("user.role", name, &format!("role {role}"))
                .await?;
        }
        if let Some(pw) = &upd.password {
            if !own {
                self.require(Role::Admin, "setting another user's password")?;
            } else if self.who.role < Role::Admin || upd.current_password.is_some() {
                // Your own password: prove you know the current one (admins may skip).
                let row = self.user_row(name).await?;
                let cur = upd.current_password.as_deref().unwrap_or("");
                if !self
                    .svc
                    .hasher()
                    .verify(cur, Some(&row.password_hash))
                    .await?
                {
                    return Err(ServiceError::Forbidden(
                        "the current password is wrong".into(),
                    ));
                }
            }
            check_password(pw)?;
            let hash = self.svc.hasher().hash(pw).await?;
            if !self.store().set_password(name, &hash, now_ms()).await? {
                return Err(ServiceError::NotFound(format!("no user `{name}`")));
            }
            self.audit("user.passwd", name, "sessions ended").await?;
        }
        self.user_row(name).await
    }

    pub async fn remove_user(&self, name: &str) -> Result<()> {
        self.require(Role::Admin, "removing users")?;
        self.keep_an_admin(name, "remove").await?;
        if !self.store().remove_user(name, now_ms()).await? {
            return Err(ServiceError::NotFound(format!("no user `{name}`")));
        }
        self.audit("user.remove", name, "sessions ended, tokens revoked")
            .await
    }

    /// API tokens: an admin sees every token, others their own.
    pub async fn tokens(&self) -> Result<Vec<ApiTokenRow>> {
        self.require(Role::Viewer, "listing API tokens")?;
        let mine = (self.who.role < Role::Admin).then_some(self.who.name.as_str());
        Ok(self.store().api_tokens(mine).await?)
    }

    pub async fn create_token(&self, t: &NewToken) -> Result<CreatedToken> {
        self.require(Role::Viewer, "creating API tokens")?;
        let owner = t.user.clone().unwrap_or_else(|| self.who.name.clone());
        if owner != self.who.name {
            self.require(Role::Admin, "creating tokens for other users")?;
        }
        let user = self.user_row(&owner).await?;
        let role = t.role.unwrap_or(user.role);
        if role > user.role {
            return Err(ServiceError::Invalid(format!(
                "a token of {owner} can have at most the role {}",
                user.role
            )));
        }
        if t.name.trim().is_empty() || t.name.len() > 64 {
            return Err(ServiceError::Invalid(
                "token name must be 1-64 characters".into(),
            ));
        }
        let ttl = parse_ttl(
            t.ttl.as_deref().unwrap_or("90d"),
            "ttl",
            Duration::from_secs(60),
            Duration::from_secs(2 * 366 * 24 * 3600),
        )?;
        let now = now_ms();
        let token = format!("fleet_{}", random_hex(24)?);
        let info = ApiTokenRow {
            id: format!("tok-{}", random_hex(6)?),
            name: t.name.trim().to_string(),
            user_name: owner.clone(),
            role,
            token_sha256: sha256_hex(&token),
            created_at: now,
            expires_at: now + super::ms(ttl),
            last_used_at: None,
            revoked_at: None,
        };
        self.store().add_api_token(&info).await?;
        self.audit(
            "token.create",
            &info.id,
            &format!(
                "`{}` for {owner}, role {role}, expires in {}",
                info.name,
                humantime::format_duration(ttl)
            ),
        )
        .await?;
        Ok(CreatedToken { token, info })
    }

    pub async fn revoke_token(&self, id: &str) -> Result<ApiTokenRow> {
        self.require(Role::Viewer, "revoking API tokens")?;
        let t = self
            .store()
            .api_token(id)
            .await?
            .ok_or_else(|| ServiceError::NotFound(format!("no API token `{id}`")))?;
        if t.user_name != self.who.name {
            self.require(Role::Admin, "revoking other users' tokens")?;
        }
        if !self.store().revoke_api_token(id, now_ms()).await? {
            return Err(ServiceError::Conflict(format!(
                "API token `{id}` was revoked already"
            )));
        }
        self.audit(
            "token.revoke",
            id,
            &format!("`{}` of {}", t.name, t.user_name),
        )
        .await?;
        self.store()
            .api_token(id)
            .await?
            .ok_or_else(|| ServiceError::NotFound(format!("no API token `{id}`")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locks_start_after_the_free_failures_and_double() {
        assert_eq!(lock_ms(4, 5), 0);
        assert_eq!(lock_ms(5, 5), 30_000);
        assert_eq!(lock_ms(6, 5), 60_000);
        assert_eq!(lock_ms(50, 5), MAX_LOCK_MS);
    }

    #[tokio::test]
    async fn hashes_verify_and_unknown_users_never_match() {
        let h = PasswordHasher::new();
        let phc = h.hash("correct horse battery").await.unwrap();
        assert!(phc.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{phc}");
        assert!(h.verify("correct horse battery", Some(&phc)).await.unwrap());
        assert!(!h.verify("wrong horse battery", Some(&phc)).await.unwrap());
        assert!(!h.verify("not a password of anyone", None).await.unwrap());
        assert!(!h.verify("x", Some("not a phc string")).await.unwrap());
        let g = generate_password().unwrap();
        assert_eq!(g.len(), 20);
        assert!(check_password(&g).is_ok());
        assert!(check_password("short").is_err());
    }
}
