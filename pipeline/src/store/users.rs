//! Console accounts and sessions (migration 0021). Passwords are stored as argon2id PHC strings
//! (hashed and checked in `console::auth`); a session is stored as the SHA-256 of its cookie
//! token, so a copy of the database lets no one in.

use jiff::Timestamp;
use serde::Serialize;
use serde_json::json;

use super::{Store, StoreError, StoreResult, StoredRow, audit, secs, ts};
use super::{on_db, on_tx};

/// What a console user may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Health, queues and KPIs; never patient data.
    Viewer,
    /// The inbox of their sites and the patient details needed to answer.
    Staff,
    /// Everything staff may, for every site.
    Admin,
}

impl Role {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Staff => "staff",
            Role::Admin => "admin",
        }
    }

    /// The role named `s`.
    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "viewer" => Some(Role::Viewer),
            "staff" => Some(Role::Staff),
            "admin" => Some(Role::Admin),
            _ => None,
        }
    }

    /// Whether the role may read patient data (the inbox's conversations).
    pub fn sees_phi(self) -> bool {
        self >= Role::Staff
    }
}

/// A console account (no password hash).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ConsoleUser {
    pub name: String,
    pub role: Role,
    /// The sites whose inbox the user works; `None`: all (`*`).
    pub sites: Option<Vec<String>>,
    pub disabled: bool,
    pub locked_until: Option<Timestamp>,
}

impl ConsoleUser {
    /// Whether the user may work conversations of `site` (one without a site: everyone who
    /// sees the inbox).
    pub fn works_site(&self, site: Option<&str>) -> bool {
        match (&self.sites, site) {
            (Some(sites), Some(site)) => {
                self.role == Role::Admin || sites.iter().any(|s| s == site)
            }
            _ => true,
        }
    }
}

/// An account with what signing in needs.
#[derive(Clone, Debug)]
pub struct LoginRecord {
    pub user: ConsoleUser,
    /// The argon2id PHC string.
    pub password_hash: String,
    pub failed_logins: i64,
}

fn user(r: &StoredRow) -> ConsoleUser {
    let sites: String = r.get("sites");
    ConsoleUser {
        name: r.get("name"),
        role: Role::parse(&r.get::<String, _>("role")).unwrap_or(Role::Viewer),
        sites: (sites != "*").then(|| {
            sites
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect()
        }),
        disabled: r.get::<Option<i64>, _>("disabled_at").is_some(),
        locked_until: r.get::<Option<i64>, _>("locked_until").map(ts),
    }
}

const USER_COLUMNS: &str =
    "name, role, sites, disabled_at, locked_until, password_hash, failed_logins";

impl Store {
    /// Adds an account; refused when the name is taken. Audited (never the hash).
    pub async fn add_console_user(
        &self,
        name: &str,
        role: Role,
        sites: Option<&[String]>,
        password_hash: &str,
        actor: &str,
        now: Timestamp,
    ) -> StoreResult<()> {
        let sites = sites.map(|s| s.join(",")).unwrap_or_else(|| "*".into());
        let mut tx = self.write_tx().await?;
        let added = on_tx!(tx, |c| {
            sqlx::query(
            "INSERT INTO console_users (name, role, sites, password_hash, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $5) ON CONFLICT (name) DO NOTHING",
        )
        .bind(name)
        .bind(role.as_str())
        .bind(&sites)
        .bind(password_hash)
        .bind(secs(now))
        .execute(&mut *c)
        .await
        .map(|r| r.rows_affected())
        })?;
        if added == 0 {
            return Err(StoreError::Inconsistent(format!(
                "a console user named `{name}` exists already"
            )));
        }
        audit::append(
            &mut tx,
            &self.keys,
            now,
            actor,
            "console_user_added",
            &format!("user:{name}"),
            json!({"role": role.as_str(), "sites": sites}),
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Every account, by name.
    pub async fn console_users(&self) -> StoreResult<Vec<ConsoleUser>> {
        let sql = format!("SELECT {USER_COLUMNS} FROM console_users ORDER BY name");
        let rows = on_db!(self, |db| sqlx::query(sqlx::AssertSqlSafe(sql.clone()))
            .fetch_all(db)
            .await
            .map(|v| v.into_iter().map(StoredRow::from).collect::<Vec<_>>()))?;
        Ok(rows.iter().map(user).collect())
    }

    /// The account named `name` with its hash and failed sign-ins.
    pub async fn login_record(&self, name: &str) -> StoreResult<Option<LoginRecord>> {
        let sql = format!("SELECT {USER_COLUMNS} FROM console_users WHERE name = $1");
        let row = on_db!(self, |db| sqlx::query(sqlx::AssertSqlSafe(sql.clone()))
            .bind(name)
            .fetch_optional(db)
            .await
            .map(|r| r.map(StoredRow::from)))?;
        Ok(row.map(|r| LoginRecord {
            user: user(&r),
            password_hash: r.get("password_hash"),
            failed_logins: r.get("failed_logins"),
        }))
    }

    /// A wrong password for `name`: counted; the `lock_after`-th in a row locks the account
    /// until `now + lock_for` (and audits it). Returns whether it is now locked.
    pub async fn record_failed_login(
        &self,
        name: &str,
        lock_after: i64,
        lock_for: jiff::SignedDuration,
        now: Timestamp,
    ) -> StoreResult<bool> {
        let mut tx = self.write_tx().await?;
        let failed: Option<i64> = on_tx!(tx, |c| {
            sqlx::query_scalar(
            "UPDATE console_users SET failed_logins = failed_logins + 1, updated_at = $1 WHERE name = $2 RETURNING failed_logins",
        )
        .bind(secs(now))
        .bind(name)
        .fetch_optional(&mut *c)
        .await
        })?;
        let locked = failed.is_some_and(|f| f >= lock_after);
        if locked {
            on_tx!(tx, |c| sqlx::query(
                "UPDATE console_users SET locked_until = $1, failed_logins = 0 WHERE name = $2"
            )
            .bind(secs(now + lock_for))
            .bind(name)
            .execute(&mut *c)
            .await
            .map(|r| r.rows_affected()))?;
            audit::append(
                &mut tx,
                &self.keys,
                now,
                "system",
                "console_user_locked",
                &format!("user:{name}"),
                json!({"failed_logins": lock_after, "seconds": lock_for.as_secs()}),
            )
            .await?;
        }
        tx.commit().await?;
        Ok(locked)
    }

    /// A successful sign-in: the failure count starts again; the session is stored (its token's
    /// hash) with its CSRF token and expiry. Audited.
    pub async fn start_console_session(
        &self,
        name: &str,
        token_hash: &str,
        csrf: &str,
        expires_at: Timestamp,
        now: Timestamp,
        method: &str,
    ) -> StoreResult<()> {
        let mut tx = self.write_tx().await?;
        on_tx!(tx, |c| {
            sqlx::query(
            "UPDATE console_users SET failed_logins = 0, locked_until = NULL, updated_at = $1 WHERE name = $2"
        )
        .bind(secs(now))
        .bind(name)
        .execute(&mut *c)
        .await
        .map(|r| r.rows_affected())
        })?;
        on_tx!(tx, |c| {
            sqlx::query(
            "INSERT INTO console_sessions (token_hash, user_name, csrf, created_at, expires_at) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(token_hash)
        .bind(name)
        .bind(csrf)
        .bind(secs(now))
        .bind(secs(expires_at))
        .execute(&mut *c)
        .await
        .map(|r| r.rows_affected())
        })?;
        audit::append(
            &mut tx,
            &self.keys,
            now,
            name,
            "console_sign_in",
            &format!("user:{name}"),
            json!({"method": method}),
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// The user and CSRF token of a live session (not expired, not revoked, user not disabled).
    pub async fn console_session(
        &self,
        token_hash: &str,
        now: Timestamp,
    ) -> StoreResult<Option<(ConsoleUser, String)>> {
        let row = on_db!(self, |db| {
            sqlx::query(
            "SELECT u.name, u.role, u.sites, u.disabled_at, u.locked_until, u.password_hash, u.failed_logins, s.csrf \
             FROM console_sessions s JOIN console_users u ON u.name = s.user_name \
             WHERE s.token_hash = $1 AND s.revoked_at IS NULL AND s.expires_at > $2 AND u.disabled_at IS NULL",
        )
        .bind(token_hash)
        .bind(secs(now))
        .fetch_optional(db)
        .await
        .map(|r| r.map(StoredRow::from))
        })?;
        Ok(row.map(|r| (user(&r), r.get("csrf"))))
    }

    /// Ends one session (sign-out).
    pub async fn revoke_console_session(
        &self,
        token_hash: &str,
        now: Timestamp,
    ) -> StoreResult<()> {
        let mut tx = self.write_tx().await?;
        on_tx!(tx, |c| {
            sqlx::query(
            "UPDATE console_sessions SET revoked_at = $1 WHERE token_hash = $2 AND revoked_at IS NULL"
        )
        .bind(secs(now))
        .bind(token_hash)
        .execute(&mut *c)
        .await
        .map(|r| r.rows_affected())
        })?;
        tx.commit().await?;
        Ok(())
    }

    /// A new password (`Some`) or the account disabled (`None`): either way every session of
    /// the user ends. Returns false for an unknown name. Audited.
    pub async fn change_console_user(
        &self,
        name: &str,
        password_hash: Option<&str>,
        actor: &str,
        now: Timestamp,
    ) -> StoreResult<bool> {
        let mut tx = self.write_tx().await?;
        let changed = match password_hash {
            Some(h) => on_tx!(tx, |c| {
                sqlx::query(
                "UPDATE console_users SET password_hash = $1, failed_logins = 0, locked_until = NULL, updated_at = $2 WHERE name = $3",
            )
            .bind(h)
            .bind(secs(now))
            .bind(name)
            .execute(&mut *c)
            .await
            .map(|r| r.rows_affected())
            })?,
            None => on_tx!(tx, |c| sqlx::query(
                "UPDATE console_users SET disabled_at = $1, updated_at = $1 WHERE name = $2"
            )
            .bind(secs(now))
            .bind(name)
            .execute(&mut *c)
            .await
            .map(|r| r.rows_affected()))?,
        };
        if changed == 0 {
            return Ok(false);
        }
        on_tx!(tx, |c| {
            sqlx::query(
            "UPDATE console_sessions SET revoked_at = $1 WHERE user_name = $2 AND revoked_at IS NULL"
        )
        .bind(secs(now))
        .bind(name)
        .execute(&mut *c)
        .await
        .map(|r| r.rows_affected())
        })?;
        audit::append(
            &mut tx,
            &self.keys,
            now,
            actor,
            if password_hash.is_some() {
                "console_password_changed"
            } else {
                "console_user_disabled"
            },
            &format!("user:{name}"),
            json!({}),
        )
        .await?;
        tx.commit().await?;
        Ok(true)
    }
}
