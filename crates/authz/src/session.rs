//! Server-side sessions: the browser holds only an opaque 256-bit random id.
//!
//! - A new id at every login ([`Sessions::login`] deletes the session the
//!   browser came with), so an id planted before login is worthless
//!   (no fixation).
//! - Idle and absolute expiry, checked on every [`Sessions::get`]; an expired
//!   session is deleted when seen.
//! - [`Sessions::logout`] deletes the row.
//! - The store keys rows by SHA-256 of the id, so a copy of the database does
//!   not yield ids that log anyone in.
//! - Each row is sealed with a [`careconnect_crypto::Keyring`] and bound to its row id, so
//!   someone who can write the database cannot forge a session (say, one
//!   with the role `admin` under an id of their choosing) or move one: such a
//!   row reads as no session.
//! - Each session carries a CSRF token for the web layer's forms
//!   ([`Session::csrf_matches`] compares in constant time).
//!
//! Cookie guidance for the web layer: name the cookie with the `__Host-`
//! prefix (e.g. `__Host-cc_session`), which browsers accept only with
//! `Secure`, `Path=/` and no `Domain`; set `HttpOnly` (scripts never need it)
//! and `SameSite=Lax` (the OIDC redirect back is a top-level GET; state changes
//! are POSTs with the CSRF token, so `Lax` is enough); give it no `Max-Age`
//! beyond the absolute expiry. [`Sessions::set_cookie`],
//! [`Sessions::clear_cookie`] and [`SessionId::from_cookie_header`] do exactly
//! this, so the web layer need not spell the attributes itself.
//!
//! ```
//! # async fn demo() -> Result<(), careconnect_authz::AuthzError> {
//! use std::sync::Arc;
//! use std::time::Duration;
//! use careconnect_authz::session::{ManualClock, SessionConfig, Sessions};
//! use careconnect_authz::{Principal, Role, UserId};
//! use careconnect_crypto::Keyring;
//! use careconnect_storage::MemoryStore;
//!
//! let clock = Arc::new(ManualClock::new(1_700_000_000));
//! let keys = Keyring::generate(); // in an app: the clinic's keyring, loaded from storage
//! let sessions = Sessions::new(Arc::new(MemoryStore::new()), keys, SessionConfig::default(), clock.clone())?;
//! let who = Principal::new(UserId::new("https://idp.example", "p-17")?, [Role::Patient].into_iter().collect());
//! let (id, _) = sessions.login(None, who).await?;
//! assert!(sessions.get(&id).await?.is_some());
//! clock.advance(Duration::from_secs(31 * 60)); // idle for longer than 30 minutes
//! assert!(sessions.get(&id).await?.is_none());
//! # Ok(()) }
//! # tokio::runtime::Runtime::new().unwrap().block_on(demo()).unwrap();
//! ```

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use careconnect_storage::{RecordStore, RowData, RowId, StorageError};
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

use crate::cookie;
use crate::error::AuthzError;
use crate::principal::{Principal, RoleSet, UserId};
use crate::rows::SealedRows;

/// The current time, injectable for tests.
pub trait Clock: Send + Sync + fmt::Debug {
    /// Seconds since the Unix epoch.
    fn now(&self) -> u64;
}

/// The system clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
    }
}

/// A clock that moves only when told (tests, simulations).
#[derive(Debug, Default)]
pub struct ManualClock(AtomicU64);

impl ManualClock {
    /// Starts at `unix_secs`.
    pub fn new(unix_secs: u64) -> Self {
        Self(AtomicU64::new(unix_secs))
    }

    /// Moves forward.
    pub fn advance(&self, by: Duration) {
        self.0.fetch_add(by.as_secs(), Ordering::SeqCst);
    }

    /// Jumps to `unix_secs` (backwards too).
    pub fn set(&self, unix_secs: u64) {
        self.0.store(unix_secs, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }
}

/// Expiry settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionConfig {
    /// A session unused for this long ends. Default 30 minutes.
    pub idle: Duration,
    /// A session ends this long after login, used or not. Default 12 hours.
    pub absolute: Duration,
    /// Last-seen is written back at most this often, to spare the store a
    /// write per request. Default 60 s; must be well below `idle`.
    pub touch_every: Duration,
    /// How long this node may answer [`Sessions::get`] from memory before
    /// reading the session from the store again, sparing a store read per
    /// request. Default zero: every request reads the store, so a logout on
    /// any node ends the session everywhere at once. With a recheck, a
    /// logout on this node still takes effect here at once, but one on
    /// another node sharing the store reaches this node within `recheck`
    /// (as stored role changes do within the clinic's `ROLES_RECHECK`).
    /// Must be below `touch_every`.
    pub recheck: Duration,
    /// Live sessions one user may have at once; a login past it ends
    /// their oldest. Default 8.
    pub max_per_user: usize,
}

impl Default for SessionConfig {
    fn default() -> Self {
        Self {
            idle: Duration::from_secs(30 * 60),
            absolute: Duration::from_secs(12 * 3600),
            touch_every: Duration::from_secs(60),
            recheck: Duration::ZERO,
            max_per_user: 8,
        }
    }
}

/// An opaque session id: 32 random bytes, shown to the browser as 64 hex
/// characters. Never in Debug output.
#[derive(Clone, PartialEq, Eq)]
pub struct SessionId(Zeroizing<[u8; 32]>);

impl SessionId {
    fn generate() -> Result<Self, AuthzError> {
        let mut b = Zeroizing::new([0u8; 32]);
        getrandom::fill(b.as_mut()).map_err(|_| AuthzError::Random)?;
        Ok(Self(b))
    }

    /// Parses the cookie value; anything but 64 hex characters is refused.
    ///
    /// # Errors
    ///
    /// [`AuthzError::MalformedSessionId`].
    pub fn parse(cookie: &str) -> Result<Self, AuthzError> {
        let mut b = Zeroizing::new([0u8; 32]);
        if cookie.len() != 64 {
            return Err(AuthzError::MalformedSessionId);
        }
        hex::decode_to_slice(cookie, b.as_mut()).map_err(|_| AuthzError::MalformedSessionId)?;
        Ok(Self(b))
    }

    /// Finds the session id in a `Cookie` request header (`a=1; __Host-cc_session=...`).
    ///
    /// `None` when the cookie is absent or its value is malformed: either way
    /// the request has no session. Other cookies are ignored. If a header
    /// carries the name twice, the first wins, as in browsers' ordering
    /// (the `__Host-` prefix already stops sibling hosts planting one).
    pub fn from_cookie_header(header: &str) -> Option<Self> {
        cookie::find(header, SESSION_COOKIE).and_then(|v| Self::parse(v).ok())
    }

    /// The cookie value (64 lower-case hex characters). Treat as a secret.
    pub fn to_cookie_value(&self) -> Zeroizing<String> {
        Zeroizing::new(hex::encode(self.0.as_ref()))
    }

    fn row(&self) -> Result<RowId, AuthzError> {
        Ok(RowId::digest(&[b"session", self.0.as_ref()]))
    }
}

impl fmt::Debug for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SessionId(..)")
    }
}

/// What a session records.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Session {
    /// Issuer and subject of the user.
    pub user: UserId,
    /// Their roles at login.
    pub roles: RoleSet,
    /// Login time, Unix seconds.
    pub login_at: u64,
    /// Last use, Unix seconds (written back at most every `touch_every`).
    pub last_seen: u64,
    csrf: String,
}

impl Session {
    /// The principal this session stands for.
    pub fn principal(&self) -> Principal {
        Principal::new(self.user.clone(), self.roles)
    }

    /// The CSRF token to embed in this session's forms.
    pub fn csrf_token(&self) -> &str {
        &self.csrf
    }

    /// Whether a submitted CSRF token is this session's (constant time).
    pub fn csrf_matches(&self, submitted: &str) -> bool {
        submitted.len() == self.csrf.len()
            && bool::from(submitted.as_bytes().ct_eq(self.csrf.as_bytes()))
    }
}

impl fmt::Debug for Session {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Session")
            .field("user", &self.user)
            .field("roles", &self.roles)
            .field("login_at", &self.login_at)
            .field("last_seen", &self.last_seen)
            .finish_non_exhaustive()
    }
}

/// The session cookie's name. The `__Host-` prefix makes browsers accept it
/// only with `Secure`, `Path=/` and no `Domain`, so no other host or path
/// can set or shadow it.
pub const SESSION_COOKIE: &str = "__Host-cc_session";

/// The collection sessions live in.
pub const SESSIONS_COLLECTION: &str = "authz_sessions";

/// Sessions in a [`RecordStore`].
#[derive(Clone)]
pub struct Sessions {
    store: Arc<dyn RecordStore>,
    rows: SealedRows,
    config: SessionConfig,
    clock: Arc<dyn Clock>,
    /// Sessions read from the store (only with a non-zero
    /// [`SessionConfig::recheck`]).
    recent: Arc<Mutex<Recent>>,
    /// Keys the blind index of sessions by user (see
    /// [`Sessions::with_user_index`]).
    user_index: Option<Arc<careconnect_crypto::mac::MacKey>>,
}

/// The blind index of session rows: their user.
const USER_INDEX: &str = "user";

/// Sessions read from the store, by row, with when they were read; and how
/// many logouts this node has done, so that a read racing a logout is not
/// remembered after it.
#[derive(Default)]
struct Recent {
    logouts: u64,
    sessions: HashMap<RowId, (u64, Session)>,
}

/// At most this many sessions are kept in memory per node; a full cache
/// drops what is stale, then everything.
const RECENT_SESSIONS: usize = 65_536;

impl Recent {
    fn remember(&mut self, row_id: RowId, now: u64, s: &Session, recheck: u64) {
        if self.sessions.len() >= RECENT_SESSIONS {
            self.sessions
                .retain(|_, (at, _)| now < at.saturating_add(recheck));
            if self.sessions.len() >= RECENT_SESSIONS {
                self.sessions.clear();
            }
        }
        self.sessions.insert(row_id, (now, s.clone()));
    }
}

impl fmt::Debug for Sessions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sessions")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Sessions {
    /// Sessions in `store`, sealed with `keys` (every web node sharing the
    /// store needs the same keyring), timed by `clock`.
    ///
    /// # Errors
    ///
    /// [`AuthzError::Config`] when `touch_every` is not below `idle` or
    /// `idle` exceeds `absolute`.
    pub fn new(
        store: Arc<dyn RecordStore>,
        keys: impl Into<careconnect_crypto::SharedKeyring>,
        config: SessionConfig,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, AuthzError> {
        if config.touch_every >= config.idle
            || config.max_per_user == 0
            || config.idle > config.absolute
            || (!config.recheck.is_zero() && config.recheck >= config.touch_every)
        {
            return Err(AuthzError::Config(
                "sessions need recheck < touch_every < idle <= absolute and max_per_user >= 1"
                    .into(),
            ));
        }
        Ok(Self {
            store,
            rows: SealedRows::new(keys, SESSIONS_COLLECTION)?,
            config,
            clock,
            recent: Arc::default(),
            user_index: None,
        })
    }

    /// Indexes sessions by user under `key` (a keyed MAC of the identity),
    /// so a database copy does not show whose sessions are whose; without
    /// it the index is a plain hash of the identity (as stored role
    /// assignments' ids are).
    #[must_use]
    pub fn with_user_index(mut self, key: careconnect_crypto::mac::MacKey) -> Self {
        self.user_index = Some(Arc::new(key));
        self
    }

    fn user_entry(&self, user: &UserId) -> Result<careconnect_storage::IndexEntry, AuthzError> {
        let mut msg = b"careconnect/session-user\0".to_vec();
        for part in [user.issuer(), user.subject()] {
            msg.extend_from_slice(&u32::try_from(part.len()).unwrap_or(u32::MAX).to_be_bytes());
            msg.extend_from_slice(part.as_bytes());
        }
        let token = match &self.user_index {
            Some(k) => k.tag(&msg).to_vec(),
            None => {
                use sha2::Digest as _;
                sha2::Sha256::digest(&msg).to_vec()
            }
        };
        Ok(careconnect_storage::IndexEntry::new(USER_INDEX, token)?)
    }

    /// `user`'s sessions as stored (those that do not open, or are not
    /// theirs, left out), with their row and version.
    async fn sessions_of(&self, user: &UserId) -> Result<Vec<(RowId, u64, Session)>, AuthzError> {
        let rows = self
            .store
            .find(self.rows.coll(), &self.user_entry(user)?)
            .await?;
        Ok(rows
            .into_iter()
            .filter_map(|r| {
                let s = self.rows.open::<Session>(&r)?;
                (s.user == *user).then_some((r.id, r.version, s))
            })
            .collect())
    }

    /// Ends every session of `user`, on every node sharing the store (on
    /// a node with a recheck, within it); returns how many.
    ///
    /// # Errors
    ///
    /// Storage failures.
    pub async fn logout_everywhere(&self, user: &UserId) -> Result<usize, AuthzError> {
        let mut ended = 0;
        for (row, version, _) in self.sessions_of(user).await? {
            self.forget(&row);
            match self.store.delete(self.rows.coll(), &row, version).await {
                Ok(()) => ended += 1,
                // Touched meanwhile: read again.
                Err(StorageError::VersionConflict { .. }) => {
                    if let Ok(r) = self.store.get(self.rows.coll(), &row).await
                        && self
                            .store
                            .delete(self.rows.coll(), &row, r.version)
                            .await
                            .is_ok()
                    {
                        ended += 1;
                    }
                }
                Err(StorageError::NotFound) => {}
                Err(e) => return Err(e.into()),
            }
            self.forget(&row);
        }
        Ok(ended)
    }

    /// The `Set-Cookie` header value that hands `id` to the browser:
    /// [`SESSION_COOKIE`], `Path=/; Secure; HttpOnly; SameSite=Lax`, and a
    /// `Max-Age` of the absolute expiry (the server ends it sooner when idle).
    /// Holds the id: treat as a secret, never log it.
    pub fn set_cookie(&self, id: &SessionId) -> Zeroizing<String> {
        Zeroizing::new(cookie::set(
            SESSION_COOKIE,
            &id.to_cookie_value(),
            self.config.absolute.as_secs(),
        ))
    }

    /// The `Set-Cookie` header value that removes the session cookie (send
    /// it with the response to [`Sessions::logout`]).
    pub fn clear_cookie() -> String {
        cookie::clear(SESSION_COOKIE)
    }

    /// Starts a session for `principal` under a fresh id, deleting the
    /// session `previous` (the one the browser came with), if any.
    ///
    /// # Errors
    ///
    /// Storage or randomness failures.
    pub async fn login(
        &self,
        previous: Option<&SessionId>,
        principal: Principal,
    ) -> Result<(SessionId, Session), AuthzError> {
        if let Some(old) = previous {
            self.logout(old).await?;
        }
        let now = self.clock.now();
        let csrf = SessionId::generate()?.to_cookie_value();
        let session = Session {
            user: principal.user,
            roles: principal.roles,
            login_at: now,
            last_seen: now,
            csrf: csrf.as_str().to_owned(),
        };
        let id = SessionId::generate()?;
        let row = id.row()?;
        self.store
            .insert(self.rows.coll(), &row, self.data(&row, &session)?)
            .await?;
        // At most `max_per_user` live: the oldest others end.
        let mut others: Vec<(RowId, u64, Session)> = self
            .sessions_of(&session.user)
            .await?
            .into_iter()
            .filter(|(r, _, s)| *r != row && !self.expired(s, now))
            .collect();
        if others.len() >= self.config.max_per_user {
            others.sort_by_key(|(_, _, s)| s.login_at);
            let excess = others.len() + 1 - self.config.max_per_user;
            for (r, version, _) in others.into_iter().take(excess) {
                self.forget(&r);
                match self.store.delete(self.rows.coll(), &r, version).await {
                    Ok(()) | Err(StorageError::NotFound | StorageError::VersionConflict { .. }) => {
                    }
                    Err(e) => return Err(e.into()),
                }
            }
        }
        Ok((id, session))
    }

    /// The row for `s`: sealed, indexed by its user (every write keeps the
    /// index: an update replaces a row's indexes).
    fn data(&self, row: &RowId, s: &Session) -> Result<RowData, AuthzError> {
        let mut data = self.rows.seal(row, s)?;
        data.indexes = vec![self.user_entry(&s.user)?];
        Ok(data)
    }

    fn expired(&self, s: &Session, now: u64) -> bool {
        now >= s.login_at.saturating_add(self.config.absolute.as_secs())
            || now >= s.last_seen.saturating_add(self.config.idle.as_secs())
            || now.saturating_add(self.config.touch_every.as_secs()) < s.login_at
    }

    /// The live session for `id`, or `None` when there is none, it has
    /// expired (then it is deleted), or its row does not open (forged,
    /// altered or moved: logged, and never a session). Refreshes last-seen.
    ///
    /// # Errors
    ///
    /// Storage failures.
    pub async fn get(&self, id: &SessionId) -> Result<Option<Session>, AuthzError> {
        let row_id = id.row()?;
        let now = self.clock.now();
        if self.config.recheck.is_zero() {
            return self.read(&row_id, now).await;
        }
        if let Some(s) = self.recently_read(&row_id, now) {
            return Ok(Some(s));
        }
        let logouts = self.lock_recent().logouts;
        let found = self.read(&row_id, now).await;
        let mut recent = self.lock_recent();
        match &found {
            // A logout on this node since the read: do not keep what it ended.
            Ok(Some(s)) if recent.logouts == logouts => {
                recent.remember(row_id, now, s, self.config.recheck.as_secs());
            }
            _ => {
                recent.sessions.remove(&row_id);
            }
        }
        found
    }

    fn lock_recent(&self) -> std::sync::MutexGuard<'_, Recent> {
        self.recent.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A session read from the store less than `recheck` ago that is neither
    /// expired nor due a touch (both go through the store).
    fn recently_read(&self, row_id: &RowId, now: u64) -> Option<Session> {
        let recent = self.lock_recent();
        let (read_at, s) = recent.sessions.get(row_id)?;
        let fresh = now >= *read_at && now < read_at.saturating_add(self.config.recheck.as_secs());
        let touch_due = now
            >= s.last_seen
                .saturating_add(self.config.touch_every.as_secs());
        (fresh && !touch_due && !self.expired(s, now)).then(|| s.clone())
    }

    /// Drops `row_id` from memory and counts a logout (after the store
    /// delete, so no read from before it is remembered after it).
    fn forget(&self, row_id: &RowId) {
        let mut recent = self.lock_recent();
        recent.logouts = recent.logouts.wrapping_add(1);
        recent.sessions.remove(row_id);
    }

    /// [`Sessions::get`] from the store.
    async fn read(&self, row_id: &RowId, now: u64) -> Result<Option<Session>, AuthzError> {
        let row = match self.store.get(self.rows.coll(), row_id).await {
            Ok(r) => r,
            Err(StorageError::NotFound) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let Some(mut s) = self.rows.open::<Session>(&row) else {
            return Ok(None);
        };
        if self.expired(&s, now) {
            match self
                .store
                .delete(self.rows.coll(), row_id, row.version)
                .await
            {
                Ok(()) | Err(StorageError::NotFound | StorageError::VersionConflict { .. }) => {}
                Err(e) => return Err(e.into()),
            }
            return Ok(None);
        }
        if now
            >= s.last_seen
                .saturating_add(self.config.touch_every.as_secs())
        {
            s.last_seen = now;
            // Another request touching at the same time is as good as ours.
            match self
                .store
                .update(
                    self.rows.coll(),
                    row_id,
                    row.version,
                    self.data(row_id, &s)?,
                )
                .await
            {
                Ok(_) | Err(StorageError::VersionConflict { .. }) => {}
                Err(StorageError::NotFound) => return Ok(None), // logged out meanwhile
                Err(e) => return Err(e.into()),
            }
        }
        Ok(Some(s))
    }

    /// Ends the session (idempotent).
    ///
    /// # Errors
    ///
    /// Storage failures.
    pub async fn logout(&self, id: &SessionId) -> Result<(), AuthzError> {
        let row_id = id.row()?;
        self.forget(&row_id);
        for _ in 0..4 {
            let version = match self.store.get(self.rows.coll(), &row_id).await {
                Ok(r) => r.version,
                Err(StorageError::NotFound) => {
                    self.forget(&row_id);
                    return Ok(());
                }
                Err(e) => return Err(e.into()),
            };
            match self.store.delete(self.rows.coll(), &row_id, version).await {
                Ok(()) | Err(StorageError::NotFound) => {
                    self.forget(&row_id);
                    return Ok(());
                }
                Err(StorageError::VersionConflict { .. }) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(AuthzError::Storage(StorageError::Unavailable(
            "session kept changing during logout".into(),
        )))
    }

    /// Deletes every expired session; returns how many. Run it now and then
    /// (sessions nobody returns to are otherwise only deleted when seen).
    ///
    /// # Errors
    ///
    /// Storage failures.
    pub async fn purge_expired(&self) -> Result<usize, AuthzError> {
        let now = self.clock.now();
        self.rows
            .purge(self.store.as_ref(), |s: Option<Session>| {
                s.is_none_or(|s| self.expired(&s, now))
            })
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::principal::Role;
    use careconnect_crypto::Keyring;
    use careconnect_storage::MemoryStore;

    const T0: u64 = 1_700_000_000;

    fn setup() -> (Arc<ManualClock>, Sessions, Principal) {
        let clock = Arc::new(ManualClock::new(T0));
        let s = Sessions::new(
            Arc::new(MemoryStore::new()),
            Keyring::generate(),
            SessionConfig::default(),
            clock.clone(),
        )
        .unwrap();
        let p = Principal::new(
            UserId::new("https://idp.test", "p1").unwrap(),
            [Role::Patient].into_iter().collect(),
        );
        (clock, s, p)
    }

    /// Two nodes on one store, each with a recheck of `recheck` seconds.
    fn two_nodes(recheck: u64) -> (Arc<ManualClock>, Sessions, Sessions, Principal) {
        let clock = Arc::new(ManualClock::new(T0));
        let store: Arc<dyn RecordStore> = Arc::new(MemoryStore::new());
        let keys = careconnect_crypto::SharedKeyring::new(Keyring::generate());
        let config = SessionConfig {
            recheck: Duration::from_secs(recheck),
            ..SessionConfig::default()
        };
        let node = |keys: careconnect_crypto::SharedKeyring| {
            Sessions::new(store.clone(), keys, config, clock.clone()).unwrap()
        };
        let (a, b) = (node(keys.clone()), node(keys));
        let p = Principal::new(
            UserId::new("https://idp.test", "p1").unwrap(),
            [Role::Patient].into_iter().collect(),
        );
        (clock, a, b, p)
    }

    #[tokio::test]
    async fn a_recheck_serves_from_memory_for_that_long_and_no_longer() {
        let (clock, a, b, p) = two_nodes(2);
        let (id, _) = a.login(None, p).await.unwrap();
        assert!(a.get(&id).await.unwrap().is_some());
        // Ended on the other node: this one still has it for under 2 s...
        b.logout(&id).await.unwrap();
        assert!(b.get(&id).await.unwrap().is_none());
        assert!(a.get(&id).await.unwrap().is_some());
        clock.advance(Duration::from_secs(1));
        assert!(a.get(&id).await.unwrap().is_some());
        // ...and not a second more.
        clock.advance(Duration::from_secs(1));
        assert!(a.get(&id).await.unwrap().is_none());
        assert!(a.get(&id).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn with_a_recheck_a_logout_here_ends_the_session_here_at_once() {
        let (_clock, a, _b, p) = two_nodes(5);
        let (id, _) = a.login(None, p.clone()).await.unwrap();
        assert!(a.get(&id).await.unwrap().is_some());
        a.logout(&id).await.unwrap();
        assert!(a.get(&id).await.unwrap().is_none());
        // Replacing a session at login ends the old one here at once too.
        let (old, _) = a.login(None, p.clone()).await.unwrap();
        assert!(a.get(&old).await.unwrap().is_some());
        let (new, _) = a.login(Some(&old), p).await.unwrap();
        assert!(a.get(&old).await.unwrap().is_none());
        assert!(a.get(&new).await.unwrap().is_some());
    }

    #[tokio::test]
    async fn remembered_sessions_still_expire_and_still_get_touched() {
        let (clock, a, b, p) = two_nodes(5);
        let (id, _) = a.login(None, p).await.unwrap();
        assert!(a.get(&id).await.unwrap().is_some());
        // Due a touch (60 s): read from the store, last-seen written back,
        // so the other node sees the session as used.
        clock.advance(Duration::from_secs(61));
        let touched = a.get(&id).await.unwrap().unwrap();
        assert_eq!(touched.last_seen, T0 + 61);
        assert_eq!(b.get(&id).await.unwrap().unwrap().last_seen, T0 + 61);
        // Idle past 30 minutes: gone, remembered or not.
        clock.advance(Duration::from_secs(30 * 60));
        assert!(a.get(&id).await.unwrap().is_none());
    }

    #[test]
    fn a_recheck_must_be_below_touch_every() {
        for recheck in [60, 61, 3600] {
            let config = SessionConfig {
                recheck: Duration::from_secs(recheck),
                ..SessionConfig::default()
            };
            let err = Sessions::new(
                Arc::new(MemoryStore::new()),
                Keyring::generate(),
                config,
                Arc::new(ManualClock::new(T0)),
            )
            .unwrap_err();
            assert!(matches!(err, AuthzError::Config(_)), "{err}");
        }
    }

    /// Someone who can write the database (here: straight into the SQLite
    /// file, bypassing this crate) cannot make a session: not a plain row for
    /// an id of their choosing with the role admin, not a genuine row copied
    /// under that id, not a genuine row with a byte changed.
    #[tokio::test]
    async fn forged_moved_or_altered_session_rows_are_no_session() {
        use careconnect_storage::{Collection, SqliteStore};
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(SqliteStore::open(&dir.path().join("s.db")).await.unwrap());
        let clock = Arc::new(ManualClock::new(T0));
        let s = Sessions::new(
            store.clone(),
            Keyring::generate(),
            SessionConfig::default(),
            clock,
        )
        .unwrap();
        let coll = Collection::new(SESSIONS_COLLECTION).unwrap();
        let admin: RoleSet = [Role::Admin].into_iter().collect();
        let chosen = SessionId::parse(&"ab".repeat(32)).unwrap();
        let forged = Session {
            user: UserId::new("https://idp.test", "mallory").unwrap(),
            roles: admin,
            login_at: T0,
            last_seen: T0,
            csrf: "x".repeat(64),
        };
        store
            .insert(
                &coll,
                &chosen.row().unwrap(),
                RowData {
                    key_id: 0,
                    envelope: serde_json::to_vec(&forged).unwrap(),
                    indexes: vec![],
                },
            )
            .await
            .unwrap();
        assert!(s.get(&chosen).await.unwrap().is_none(), "plain row");

        let (real, _) = s
            .login(
                None,
                Principal::new(UserId::new("https://idp.test", "grey").unwrap(), admin),
            )
            .await
            .unwrap();
        let genuine = store.get(&coll, &real.row().unwrap()).await.unwrap();
        let current = store.get(&coll, &chosen.row().unwrap()).await.unwrap();
        store
            .update(
                &coll,
                &chosen.row().unwrap(),
                current.version,
                RowData {
                    key_id: genuine.key_id,
                    envelope: genuine.envelope.clone(),
                    indexes: vec![],
                },
            )
            .await
            .unwrap();
        assert!(s.get(&chosen).await.unwrap().is_none(), "moved row");

        let mut altered = genuine.envelope.clone();
        let last = altered.len() - 1;
        altered[last] ^= 0x01;
        store
            .update(
                &coll,
                &real.row().unwrap(),
                genuine.version,
                RowData {
                    key_id: genuine.key_id,
                    envelope: altered,
                    indexes: vec![],
                },
            )
            .await
            .unwrap();
        assert!(s.get(&real).await.unwrap().is_none(), "altered row");
        // Rows that do not open are swept by the purge.
        assert_eq!(s.purge_expired().await.unwrap(), 2);
    }

    /// Sessions sealed under a key since marked compromised end (whoever
    /// holds that key could have sealed them); rows under a key this node
    /// does not have yet (another node rotated) are no session here, and
    /// this node's purge leaves them alone.
    #[tokio::test]
    async fn compromised_keys_end_sessions_and_unknown_keys_are_kept() {
        let store = Arc::new(MemoryStore::new());
        let clock = Arc::new(ManualClock::new(T0));
        let node = |keys: &Keyring| {
            Sessions::new(
                store.clone(),
                keys.clone(),
                SessionConfig::default(),
                clock.clone(),
            )
            .unwrap()
        };
        let who = |s: &str| {
            Principal::new(
                UserId::new("https://idp.test", s).unwrap(),
                [Role::Doctor].into_iter().collect(),
            )
        };
        let keys = Keyring::generate();
        let old_node = node(&keys);
        let (under_old_key, _) = old_node.login(None, who("a")).await.unwrap();
        let mut rotated = keys.clone();
        let old_key = rotated.primary();
        rotated.rotate().unwrap();
        let new_node = node(&rotated);
        let (under_new_key, _) = new_node.login(None, who("b")).await.unwrap();
        assert!(old_node.get(&under_new_key).await.unwrap().is_none());
        assert_eq!(old_node.purge_expired().await.unwrap(), 0);
        assert!(new_node.get(&under_new_key).await.unwrap().is_some());
        assert!(new_node.get(&under_old_key).await.unwrap().is_some());
        rotated.mark_compromised(old_key).unwrap();
        let after = node(&rotated);
        assert!(after.get(&under_old_key).await.unwrap().is_none());
        assert!(after.get(&under_new_key).await.unwrap().is_some());
        assert_eq!(after.purge_expired().await.unwrap(), 1);
    }

    #[tokio::test]
    async fn idle_expiry_is_pushed_back_by_use() {
        let (clock, s, p) = setup();
        let (id, _) = s.login(None, p).await.unwrap();
        for _ in 0..10 {
            clock.advance(Duration::from_secs(20 * 60)); // under the 30-minute idle limit
            assert!(s.get(&id).await.unwrap().is_some());
        }
        clock.advance(Duration::from_secs(30 * 60));
        assert!(s.get(&id).await.unwrap().is_none());
        // Gone for good, even if the clock went back.
        clock.set(T0);
        assert!(s.get(&id).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn absolute_expiry_ends_even_a_busy_session() {
        let (clock, s, p) = setup();
        let (id, first) = s.login(None, p).await.unwrap();
        assert_eq!(first.login_at, T0);
        let mut alive = 0;
        for _ in 0..(13 * 4) {
            clock.advance(Duration::from_secs(15 * 60));
            if s.get(&id).await.unwrap().is_some() {
                alive += 1;
            }
        }
        assert_eq!(
            alive,
            12 * 4 - 1,
            "alive until 12 h after login, then never"
        );
    }

    #[tokio::test]
    async fn login_rotates_the_id_and_logout_deletes() {
        let (_clock, s, p) = setup();
        let (planted, _) = s.login(None, p.clone()).await.unwrap();
        let (fresh, _) = s.login(Some(&planted), p).await.unwrap();
        assert_ne!(planted, fresh);
        assert!(s.get(&planted).await.unwrap().is_none(), "old id is dead");
        let live = s.get(&fresh).await.unwrap().unwrap();
        assert_eq!(live.principal().roles.to_string(), "patient");
        s.logout(&fresh).await.unwrap();
        assert!(s.get(&fresh).await.unwrap().is_none());
        s.logout(&fresh).await.unwrap();
    }

    #[tokio::test]
    async fn purge_removes_only_expired_sessions() {
        let (clock, s, p) = setup();
        let (old, _) = s.login(None, p.clone()).await.unwrap();
        clock.advance(Duration::from_secs(20 * 60));
        let (new, _) = s.login(None, p).await.unwrap();
        clock.advance(Duration::from_secs(15 * 60));
        assert_eq!(s.purge_expired().await.unwrap(), 1);
        assert!(s.get(&new).await.unwrap().is_some());
        assert!(s.get(&old).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn ids_and_csrf_tokens() {
        let (_clock, s, p) = setup();
        let (id, sess) = s.login(None, p).await.unwrap();
        let cookie = id.to_cookie_value();
        assert_eq!(cookie.len(), 64);
        assert_eq!(SessionId::parse(&cookie).unwrap(), id);
        for bad in ["", "zz", &"g".repeat(64), &"a".repeat(63), &"a".repeat(65)] {
            assert!(SessionId::parse(bad).is_err());
        }
        assert!(sess.csrf_matches(sess.csrf_token()));
        assert!(!sess.csrf_matches(""));
        assert!(!sess.csrf_matches(&"0".repeat(64)));
        assert!(!format!("{id:?}{sess:?}").contains(cookie.as_str()));
        assert!(!format!("{sess:?}").contains(sess.csrf_token()));
        // The store never holds the id itself.
        let rows = s.store.list(s.rows.coll(), None, 10).await.unwrap();
        assert!(!rows.rows[0].id.as_str().contains(cookie.as_str()));
    }

    #[tokio::test]
    async fn cookies_carry_the_id_with_safe_attributes() {
        let (_clock, s, p) = setup();
        let (id, _) = s.login(None, p).await.unwrap();
        let set = s.set_cookie(&id);
        let (pair, attrs) = set.split_once("; ").unwrap();
        assert_eq!(SessionId::from_cookie_header(pair), Some(id.clone()));
        let attrs: Vec<&str> = attrs.split("; ").collect();
        assert_eq!(
            attrs,
            [
                "Path=/",
                "Secure",
                "HttpOnly",
                "SameSite=Lax",
                "Max-Age=43200"
            ]
        );
        assert!(pair.starts_with("__Host-"));
        let clear = Sessions::clear_cookie();
        assert!(clear.starts_with("__Host-cc_session=;") && clear.ends_with("Max-Age=0"));
        assert_eq!(SessionId::from_cookie_header(&clear), None);

        let value = id.to_cookie_value();
        let header = format!("theme=dark; {SESSION_COOKIE}={}; lang=en", value.as_str());
        assert_eq!(SessionId::from_cookie_header(&header), Some(id.clone()));
        for no in [
            "",
            "theme=dark",
            "cc_session=00",
            &format!("cc_session={}", value.as_str()), // without the prefix
            &format!("{SESSION_COOKIE}=zz; x=1"),
            SESSION_COOKIE,
        ] {
            assert_eq!(SessionId::from_cookie_header(no), None, "{no}");
        }
    }

    proptest::proptest! {
        #[test]
        fn cookie_header_round_trips(
            bytes in proptest::array::uniform32(proptest::prelude::any::<u8>()),
            before in proptest::collection::vec("[a-z]{1,8}=[a-zA-Z0-9]{0,12}", 0..4),
            after in proptest::collection::vec("[a-z]{1,8}=[a-zA-Z0-9]{0,12}", 0..4),
        ) {
            let id = SessionId(Zeroizing::new(bytes));
            let value = id.to_cookie_value();
            proptest::prop_assert_eq!(SessionId::parse(&value).ok(), Some(id.clone()));
            let mut parts = before;
            parts.push(format!("{SESSION_COOKIE}={}", value.as_str()));
            parts.extend(after);
            let header = parts.join("; ");
            proptest::prop_assert_eq!(SessionId::from_cookie_header(&header), Some(id));
        }

        #[test]
        fn cookie_header_never_panics(header in ".{0,200}") {
            let _ = SessionId::from_cookie_header(&header);
        }
    }

    #[tokio::test]
    async fn a_user_has_at_most_max_per_user_sessions_and_can_end_them_all() {
        let clock = Arc::new(ManualClock::new(T0));
        let store: Arc<dyn RecordStore> = Arc::new(MemoryStore::new());
        let config = SessionConfig {
            max_per_user: 3,
            ..SessionConfig::default()
        };
        let sessions = Sessions::new(store.clone(), Keyring::generate(), config, clock.clone())
            .unwrap()
            .with_user_index(careconnect_crypto::mac::MacKey::generate());
        let who = |s: &str| {
            Principal::new(
                UserId::new("https://idp.test", s).unwrap(),
                [Role::Patient].into_iter().collect(),
            )
        };
        let mut ids = Vec::new();
        for _ in 0..5 {
            ids.push(sessions.login(None, who("alice")).await.unwrap().0);
            clock.advance(Duration::from_secs(1));
        }
        let (bob, _) = sessions.login(None, who("bob")).await.unwrap();
        // The two oldest ended; the three newest live.
        for (i, id) in ids.iter().enumerate() {
            assert_eq!(
                sessions.get(id).await.unwrap().is_some(),
                i >= 2,
                "session {i}"
            );
        }
        assert_eq!(
            sessions
                .logout_everywhere(&who("alice").user)
                .await
                .unwrap(),
            3
        );
        for id in &ids {
            assert!(sessions.get(id).await.unwrap().is_none());
        }
        assert!(
            sessions.get(&bob).await.unwrap().is_some(),
            "another user's stays"
        );
        // A touch (last-seen written back) keeps the row findable.
        let (id, _) = sessions.login(None, who("alice")).await.unwrap();
        clock.advance(Duration::from_secs(120));
        assert!(sessions.get(&id).await.unwrap().is_some());
        assert_eq!(
            sessions
                .logout_everywhere(&who("alice").user)
                .await
                .unwrap(),
            1
        );
    }

    #[test]
    fn inconsistent_config_is_refused() {
        let bad = SessionConfig {
            idle: Duration::from_secs(10),
            ..SessionConfig::default()
        };
        assert!(
            Sessions::new(
                Arc::new(MemoryStore::new()),
                Keyring::generate(),
                bad,
                Arc::new(SystemClock)
            )
            .is_err()
        );
    }
}
