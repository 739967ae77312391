//! Operator accounts: password hashing (argon2id), console login with throttling, sessions
//! (cookie + CSRF token), API tokens, and user/token management.
//!
//! Login throttling: failures are counted per user name and per client address over 15
//! minutes. From the 5th failure for a name (the 20th for an address) every attempt is
//! refused for 30 s, doubling with each further failure up to 15 minutes (429 with
//! `Retry-After`), whatever the password. An attempt is counted as a failure *before* its
//! password is checked (and the lock it would cause set), so parallel guesses cannot slip
//! past the limit; a success clears the name's count and takes its own attempt back from the
//! address's. Names that are not valid user names share one count. Checking one's current
//! password (to change it) is throttled the same way. Counts live in the database, so every
//! server replica sees them.

use std::sync::OnceLock;
use std::time::Duration;

use argon2::password_hash::{PasswordHash, PasswordHasher as _, PasswordVerifier, SaltString};
use argon2::Argon2;
use sha2::{Digest, Sha256};
use tokio::sync::Semaphore;

use super::views::{CreatedToken, LoginReply, NewToken, NewUser, UserOut, UserUpdate};
use super::{parse_ttl, random_hex, Acting, FleetService, Principal, Result, ServiceError, Via};
use crate::store::{now_ms, ApiTokenRow, LoginFailure, SessionRow, UserChange, UserRow};
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
/// Shortest password accepted for an operator account (characters).
pub const MIN_PASSWORD: usize = 10;
/// How long a password check waits for one of the two hashing slots before answering 429.
const GATE_WAIT: Duration = Duration::from_secs(10);
const MAX_PASSWORD: usize = 1024;

fn sha256_hex(s: &str) -> String {
    edge_wire::bundle::file::hex(&Sha256::digest(s.as_bytes()))
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
    /// A hasher with two hashing slots; the dummy hash is made at first need.
    pub fn new() -> PasswordHasher {
        PasswordHasher {
            gate: Semaphore::new(2),
            dummy: OnceLock::new(),
        }
    }

    async fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> Result<T> {
        let permit = tokio::time::timeout(GATE_WAIT, self.gate.acquire())
            .await
            .map_err(|_| ServiceError::Throttled {
                message: "the server is busy checking passwords: try again shortly".into(),
                retry_after_s: 2,
            })?;
        let _permit = permit.map_err(|e| ServiceError::Internal(e.to_string()))?;
        tokio::task::spawn_blocking(f)
            .await
            .map_err(|e| ServiceError::Internal(format!("password hashing task: {e}")))
    }

    /// An argon2id PHC string of `password` (fresh salt). Waits up to 10 s for a hashing slot,
    /// then answers [`ServiceError::Throttled`].
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
    /// The request carries neither a session cookie nor an API token.
    #[error("sign in first: no session or API token")]
    Missing,
    /// The session is unknown, past its lifetime or idle limit, or its user was removed.
    #[error("the session expired or was ended: sign in again")]
    SessionExpired,
    /// The API token is unknown, revoked or expired, or its user was removed.
    #[error("the API token is unknown, revoked or expired")]
    BadToken,
}

/// An authenticated console session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    /// The signed-in user, with their current role.
    pub principal: Principal,
    /// The session's CSRF token: state-changing console requests must echo it.
    pub csrf: String,
    /// SHA-256 (hex) of the session id in the cookie; the id itself is never stored.
    pub id_sha256: String,
    /// When the session ends at the latest (Unix ms), however active it is.
    pub expires_at: i64,
}

/// A user name: 1-64 characters of `A-Z a-z 0-9 - _ . @`, starting with a letter or digit.
pub fn valid_user_name(s: &str) -> bool {
    s.len() <= 64
        && s.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.@".contains(&b))
}

/// `s` cut to `max` characters with control characters (newlines, escapes) replaced, for
/// logs, the audit log and terminals.
pub fn printable(s: &str, max: usize) -> String {
    s.chars()
        .take(max)
        .map(|c| if c.is_control() { '\u{fffd}' } else { c })
        .collect()
}

fn check_user_name(s: &str) -> Result<()> {
    if valid_user_name(s) {
        Ok(())
    } else {
        Err(ServiceError::Invalid(
            "user name must be 1-64 characters of A-Z a-z 0-9 - _ . @, starting with a letter or digit".into(),
        ))
    }
}

/// Checks a new password's length: at least [`MIN_PASSWORD`] characters, at most 1024 bytes.
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

/// The throttling keys of a sign-in: the user name (invalid names share one key) and the
/// client address.
fn throttle_keys(user: &str, client_addr: &str) -> [(String, i64); 2] {
    let user_key = if valid_user_name(user) {
        format!("user:{user}")
    } else {
        "user:<invalid>".to_string()
    };
    [
        (user_key, FREE_FAILURES_USER),
        (format!("ip:{client_addr}"), FREE_FAILURES_ADDR),
    ]
}

fn throttled_error(locked_until: i64, now: i64) -> ServiceError {
    let wait = (locked_until - now + 999) / 1000;
    ServiceError::Throttled {
        message: format!("too many failed sign-ins: try again in {wait} s"),
        retry_after_s: u64::try_from(wait).unwrap_or(1).max(1),
    }
}

impl FleetService {
    /// Counts an attempt against `key` as a failure before its password is checked, and sets
    /// the lock that failure would cause. Refused (nothing counted) while the key is locked.
    async fn charge_attempt(&self, key: &str, free: i64, now: i64) -> Result<()> {
        let locked = self
            .store()
            .update_login_failure(key, |prev| {
                let mut f = match prev {
                    Some(f) if now - f.first_at < WINDOW_MS => f,
                    _ => LoginFailure {
                        failures: 0,
                        first_at: now,
                        locked_until: 0,
                    },
                };
                if f.locked_until > now {
                    return (None, Some(f.locked_until));
                }
                f.failures += 1;
                let lock = lock_ms(f.failures, free);
                if lock > 0 {
                    f.locked_until = now + lock;
                }
                (Some(f), None)
            })
            .await?;
        match locked {
            Some(until) => Err(throttled_error(until, now)),
            None => Ok(()),
        }
    }

    /// Takes back an attempt charged by [`Self::charge_attempt`] that succeeded (and the lock
    /// it set, if the count is below the free failures again).
    async fn uncharge_attempt(&self, key: &str, free: i64, now: i64) -> Result<()> {
        self.store()
            .update_login_failure(key, |prev| match prev {
                Some(mut f) if f.failures > 0 => {
                    f.failures -= 1;
                    if lock_ms(f.failures, free) == 0 {
                        f.locked_until = 0;
                    } else if f.locked_until > now {
                        f.locked_until = f.locked_until.min(now + lock_ms(f.failures, free));
                    }
                    (Some(f), ())
                }
                _ => (None, ()),
            })
            .await?;
        Ok(())
    }

    /// Signs a user in: a new session for the console. `client_addr` is the throttling key
    /// and `user_agent` goes to the session's description. Returns the reply and the session
    /// id (for the cookie only).
    pub async fn login(
        &self,
        user: &str,
        password: &str,
        client_addr: &str,
        user_agent: &str,
    ) -> Result<(LoginReply, String)> {
        let now = now_ms();
        let keys = throttle_keys(user, client_addr);
        for (k, free) in &keys {
            self.charge_attempt(k, *free, now).await?;
        }
        let row = if valid_user_name(user) && password.len() <= MAX_PASSWORD {
            self.store().user(user).await?
        } else {
            None
        };
        let ok = if password.len() <= MAX_PASSWORD {
            self.hasher()
                .verify(password, row.as_ref().map(|u| u.password_hash.as_str()))
                .await?
        } else {
            false
        };
        let Some(row) = row.filter(|_| ok) else {
            let shown = printable(user, 64);
            self.store()
                .audit(
                    &shown,
                    "user.login_failed",
                    &shown,
                    &format!("from {}", printable(client_addr, 64)),
                )
                .await?;
            return Err(ServiceError::Unauthorized(
                "wrong user name or password".into(),
            ));
        };
        self.store().clear_login_failures(&keys[0].0).await?;
        self.uncharge_attempt(&keys[1].0, keys[1].1, now).await?;
        let id = random_hex(32)?;
        let csrf = random_hex(32)?;
        let expires_at = now + super::ms(self.settings().session_ttl);
        self.store()
            .add_session(&SessionRow {
                id_sha256: sha256_hex(&id),
                user_name: row.name.clone(),
                csrf: csrf.clone(),
                created_at: now,
                expires_at,
                last_seen: now,
                client: format!("{client_addr} {}", printable(user_agent, 200)),
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
    /// Every operator account (admin role).
    pub async fn users(&self) -> Result<Vec<UserOut>> {
        self.require(Role::Admin, "listing users")?;
        Ok(self.store().users().await?)
    }

    /// Adds an operator account (admin role); [`ServiceError::Conflict`] if the name is taken.
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

    /// Changes a user's role and/or password. Everything is checked first (rights, the
    /// current password, the new password's rules) and then applied in one transaction, so a
    /// refused change changes nothing.
    pub async fn update_user(&self, name: &str, upd: &UserUpdate) -> Result<UserOut> {
        let own = name == self.who.name && self.who.via != Via::Local;
        if upd.role.is_none() && upd.password.is_none() {
            return Err(ServiceError::Invalid(
                "give a new role or a new password".into(),
            ));
        }
        if upd.role.is_some() {
            self.require(Role::Admin, "changing roles")?;
        }
        let mut hash = None;
        if let Some(pw) = &upd.password {
            if !own {
                self.require(Role::Admin, "setting another user's password")?;
            }
            check_password(pw)?;
            // Your own password: prove you know the current one (an admin at a console
            // session may skip it; through an API token, nobody may).
            let via_token = matches!(self.who.via, Via::Token { .. });
            if own && (self.who.role < Role::Admin || via_token || upd.current_password.is_some()) {
                self.check_current_password(name, upd.current_password.as_deref().unwrap_or(""))
                    .await?;
            }
            hash = Some(self.svc.hasher().hash(pw).await?);
        }
        match self
            .store()
            .update_user(name, upd.role, hash.as_deref(), now_ms())
            .await?
        {
            UserChange::Done => {}
            UserChange::NoSuchUser => {
                return Err(ServiceError::NotFound(format!("no user `{name}`")))
            }
            UserChange::LastAdmin => {
                return Err(ServiceError::Conflict(format!(
                    "cannot demote `{name}`: the last admin (add another admin first)"
                )))
            }
        }
        if let Some(role) = upd.role {
            self.audit("user.role", name, &format!("role {role}"))
                .await?;
        }
        if hash.is_some() {
            self.audit("user.passwd", name, "sessions ended").await?;
        }
        self.user_row(name).await
    }

    /// Checks `name`'s current password, throttled like a sign-in (by the user name).
    async fn check_current_password(&self, name: &str, current: &str) -> Result<()> {
        let now = now_ms();
        let key = format!("user:{name}");
        self.svc
            .charge_attempt(&key, FREE_FAILURES_USER, now)
            .await?;
        let row = self.user_row(name).await?;
        let ok = current.len() <= MAX_PASSWORD
            && self
                .svc
                .hasher()
                .verify(current, Some(&row.password_hash))
                .await?;
        if !ok {
            return Err(ServiceError::Forbidden(
                "the current password is wrong".into(),
            ));
        }
        self.store().clear_login_failures(&key).await?;
        Ok(())
    }

    /// Removes an account, ending its sessions and revoking its API tokens (admin role); the
    /// last admin cannot be removed.
    pub async fn remove_user(&self, name: &str) -> Result<()> {
        self.require(Role::Admin, "removing users")?;
        match self.store().remove_user(name, now_ms()).await? {
            UserChange::Done => {}
            UserChange::NoSuchUser => {
                return Err(ServiceError::NotFound(format!("no user `{name}`")))
            }
            UserChange::LastAdmin => {
                return Err(ServiceError::Conflict(format!(
                    "cannot remove `{name}`: the last admin (add another admin first)"
                )))
            }
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

    /// Creates an API token (viewer role for one's own; admin for another user's). Its role is
    /// at most the lower of the owner's and the creator's; it expires after `ttl` (default 90
    /// days, and no later than the token it was made through). The secret is returned only here.
    pub async fn create_token(&self, t: &NewToken) -> Result<CreatedToken> {
        self.require(Role::Viewer, "creating API tokens")?;
        let owner = t.user.clone().unwrap_or_else(|| self.who.name.clone());
        if owner != self.who.name {
            self.require(Role::Admin, "creating tokens for other users")?;
        }
        let user = self.user_row(&owner).await?;
        // At most the owner's role and the creator's own (a token made through a viewer
        // token is a viewer token, whoever the user is).
        let cap = user.role.min(self.who.role);
        let role = t.role.unwrap_or(cap);
        if role > cap {
            return Err(ServiceError::Invalid(format!(
                "this token can have at most the role {cap} (the lower of {owner}'s role and yours)"
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
        let mut expires_at = now + super::ms(ttl);
        // A token made through a token expires no later than its parent.
        if let Via::Token { id } = &self.who.via {
            if let Some(parent) = self.store().api_token(id).await? {
                expires_at = expires_at.min(parent.expires_at);
            }
        }
        let token = format!("fleet_{}", random_hex(24)?);
        let info = ApiTokenRow {
            id: format!("tok-{}", random_hex(6)?),
            name: t.name.trim().to_string(),
            user_name: owner.clone(),
            role,
            token_sha256: sha256_hex(&token),
            created_at: now,
            expires_at,
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
                humantime::format_duration(Duration::from_secs(
                    u64::try_from((expires_at - now) / 1000).unwrap_or(0)
                ))
            ),
        )
        .await?;
        Ok(CreatedToken { token, info })
    }

    /// Revokes an API token (viewer role for one's own; admin for another user's).
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
