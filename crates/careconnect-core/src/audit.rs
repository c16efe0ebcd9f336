//! The audit log: every access to patient data, every login, denial and
//! administrator override, in a tamper-evident chain.
//!
//! Each entry is an [`AuditEvent`] (who, roles, action, resource id,
//! outcome, flags, time; never clinical content) stored as
//!
//! ```text
//! 0x01 || key id (u32 BE) || mac (32) || event JSON
//! mac = HMAC-SHA256(K, "careconnect/audit/v1" || seq (u64 BE) || previous mac || event JSON)
//! ```
//!
//! Stated reasons (break-glass, erasure) may say something clinical: they
//! are stored sealed under the keyring and opened by [`AuditTrail::read`].
//! With [`AuditTrail::with_pseudonyms`], a principal acting only as a
//! patient is named by pseudonym, as the access gate names patients.
//!
//! where `K` is the keyring's MAC key for [`AUDIT_PURPOSE`] under the named
//! key id, `seq` the entry's sequence number in the store and the previous
//! mac that of entry `seq - 1` (32 zero bytes before entry 1). Changing,
//! removing, inserting or reordering an entry breaks the chain at that
//! entry; [`AuditTrail::verify`] names the first one.
//!
//! Removing entries at the end leaves a shorter chain that still verifies.
//! So every append also records the head (sequence number and mac) in an
//! **anchor file** outside the database (beside the local KMS file, by
//! default in the data directory): a database edit alone cannot move it
//! back, and `verify` reports a log that ends before its anchor, or whose
//! entry at the anchor has another mac, as truncated. The writer also refuses to
//! append ([`crate::CoreError::AuditTampered`]) to such a log, so a cut
//! cannot be hidden under new entries. Someone who can write
//! both the database and the anchor file can truncate undetected; keep the
//! anchor where the database's writers cannot reach, or copy it elsewhere.
//!
//! Appends are group-committed: events of concurrent callers go to the
//! store in one batch (one transaction), and each call returns once its own
//! event is durable. The chain is built inside the store's append
//! transaction from the log's actual last entry
//! ([`careconnect_storage::AuditLog::append_chained`]), so several
//! processes sharing a database extend one chain.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use careconnect_authz::{Principal, UserId};
use careconnect_crypto::mac::MacKey;
use careconnect_crypto::{EncryptionContext, KeyId, Keyring, SharedKeyring};
use careconnect_storage::AuditLog;
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;
use tokio::sync::{mpsc, oneshot};

use crate::error::CoreError;

/// The purpose the audit chain's MAC keys are derived for.
pub const AUDIT_PURPOSE: &str = "careconnect/audit";

/// The action of a checkpoint entry ([`AuditTrail::checkpoint`]).
pub const CHECKPOINT_ACTION: &str = "audit:checkpoint";
/// Domain separation for the history digest checkpoints commit to.
const HISTORY_LABEL: &[u8] = b"careconnect/audit/history/v1";
/// Digests of the latest entries a verification keeps for checkpoints.
const HISTORY_KEPT: usize = 4096;

/// Domain separation for the chain's MAC input.
const CHAIN_LABEL: &[u8] = b"careconnect/audit/v1";
const ENTRY_VERSION: u8 = 0x01;
const MAC_LEN: usize = 32;
const HEAD_LEN: usize = 1 + 4 + MAC_LEN;
/// Most events written in one transaction.
const MAX_BATCH: usize = 512;
/// Longest free-text reason kept (break-glass, erasure), in characters.
pub const MAX_REASON_CHARS: usize = 500;

/// How an audited attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Allowed and done.
    Allowed,
    /// Refused by the policy.
    Denied,
    /// Allowed, but it failed (storage, crypto).
    Failed,
}

/// Something an auditor must look at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Flag {
    /// An administrator used their override to look in.
    AdminOverride,
    /// Emergency access outside a care relationship.
    BreakGlass,
}

/// One audited event. No clinical content: identifiers only.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEvent {
    /// When, Unix milliseconds.
    pub at_ms: u64,
    /// Who acted (`None`: the system itself, e.g. seeding or rotation).
    pub actor: Option<UserId>,
    /// Their roles at the time, as `patient,doctor,...`.
    pub roles: String,
    /// What they did (the policy's action name, or `login`, `logout`...).
    pub action: String,
    /// What they did it to: a kind and an id, never a name.
    pub resource: String,
    /// How it ended.
    pub outcome: Outcome,
    /// What an auditor must look at.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub flags: Vec<Flag>,
    /// A stated reason (break-glass, erasure), at most [`MAX_REASON_CHARS`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

impl AuditEvent {
    /// An event by `who`, now.
    pub fn by(
        who: &Principal,
        action: impl Into<String>,
        resource: impl Into<String>,
        outcome: Outcome,
    ) -> Self {
        Self {
            at_ms: now_ms(),
            actor: Some(who.user.clone()),
            roles: who.roles.to_string(),
            action: action.into(),
            resource: resource.into(),
            outcome,
            flags: Vec::new(),
            reason: None,
        }
    }

    /// An event by the system itself, now.
    pub fn system(action: impl Into<String>, resource: impl Into<String>) -> Self {
        Self {
            at_ms: now_ms(),
            actor: None,
            roles: String::new(),
            action: action.into(),
            resource: resource.into(),
            outcome: Outcome::Allowed,
            flags: Vec::new(),
            reason: None,
        }
    }

    /// With `flag`.
    #[must_use]
    pub fn flagged(mut self, flag: Flag) -> Self {
        if !self.flags.contains(&flag) {
            self.flags.push(flag);
        }
        self
    }

    /// With a stated reason, cut to [`MAX_REASON_CHARS`] characters.
    #[must_use]
    pub fn because(mut self, reason: &str) -> Self {
        self.reason = Some(reason.chars().take(MAX_REASON_CHARS).collect());
        self
    }
}

pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The chain's MAC of entry `seq` after `prev`.
fn chain_mac(key: &MacKey, seq: u64, prev: &[u8; MAC_LEN], json: &[u8]) -> [u8; MAC_LEN] {
    let mut msg = Vec::with_capacity(CHAIN_LABEL.len() + 8 + MAC_LEN + json.len());
    msg.extend_from_slice(CHAIN_LABEL);
    msg.extend_from_slice(&seq.to_be_bytes());
    msg.extend_from_slice(prev);
    msg.extend_from_slice(json);
    key.tag(&msg)
}

/// An entry split into its parts, unverified.
struct RawEntry<'a> {
    key_id: u32,
    mac: [u8; MAC_LEN],
    json: &'a [u8],
}

fn split(entry: &[u8]) -> Option<RawEntry<'_>> {
    if entry.len() < HEAD_LEN || entry[0] != ENTRY_VERSION {
        return None;
    }
    let key_id = u32::from_be_bytes(entry[1..5].try_into().ok()?);
    let mac = entry[5..HEAD_LEN].try_into().ok()?;
    Some(RawEntry {
        key_id,
        mac,
        json: &entry[HEAD_LEN..],
    })
}

fn encode(key_id: KeyId, mac: &[u8; MAC_LEN], json: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEAD_LEN + json.len());
    out.push(ENTRY_VERSION);
    out.extend_from_slice(&key_id.get().to_be_bytes());
    out.extend_from_slice(mac);
    out.extend_from_slice(json);
    out
}

/// The head of the chain: the last entry's sequence number and mac.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Head {
    /// Sequence number of the last entry (0: empty log).
    pub seq: u64,
    /// Its mac (zeros for the empty log).
    pub mac: [u8; MAC_LEN],
}

impl Head {
    const EMPTY: Self = Self {
        seq: 0,
        mac: [0; MAC_LEN],
    };
}

/// Where the head is anchored outside the database: a small file that only
/// ever moves forward.
///
/// It holds two slots of `seq (u64 BE) || mac (32) || check (8)`, where
/// `check` is the first 8 bytes of SHA-256 over a label, `seq` and `mac`.
/// An advance overwrites, in place, the slot not holding the newest head and
/// syncs its data, so a write torn by a crash leaves the other slot whole;
/// the newest slot whose check holds is the anchor. (A 40-byte file of
/// `seq || mac` alone, as earlier versions wrote, is read too and replaced
/// by the two-slot form on the next advance.)
#[derive(Debug, Clone)]
pub struct Anchor {
    path: PathBuf,
}

/// One slot of the anchor file.
const SLOT_LEN: usize = 8 + MAC_LEN + 8;
/// The size of an anchor file written before slots.
const SINGLE_LEN: usize = 8 + MAC_LEN;

fn slot_check(seq: u64, mac: &[u8; MAC_LEN]) -> [u8; 8] {
    use sha2::Digest as _;
    let digest = sha2::Sha256::new()
        .chain_update(b"careconnect/audit-anchor/v2")
        .chain_update(seq.to_be_bytes())
        .chain_update(mac)
        .finalize();
    let mut check = [0u8; 8];
    check.copy_from_slice(&digest[..8]);
    check
}

fn slot_bytes(head: Head) -> [u8; SLOT_LEN] {
    let mut slot = [0u8; SLOT_LEN];
    slot[..8].copy_from_slice(&head.seq.to_be_bytes());
    slot[8..8 + MAC_LEN].copy_from_slice(&head.mac);
    slot[8 + MAC_LEN..].copy_from_slice(&slot_check(head.seq, &head.mac));
    slot
}

/// The head in `bytes` (`seq || mac`, then an optional check that must hold).
fn head_of(bytes: &[u8]) -> Option<Head> {
    let seq = u64::from_be_bytes(bytes.get(..8)?.try_into().ok()?);
    let mac: [u8; MAC_LEN] = bytes.get(8..8 + MAC_LEN)?.try_into().ok()?;
    match bytes.get(8 + MAC_LEN..) {
        Some([]) => {}
        Some(check) if bool::from(check.ct_eq(&slot_check(seq, &mac))) => {}
        _ => return None,
    }
    Some(Head { seq, mac })
}

impl Anchor {
    /// The anchor file at `path` (created on the first append).
    pub fn at(path: impl Into<PathBuf>) -> Self {
        Self { path: path.into() }
    }

    /// The anchored head, or `None` before the first append.
    ///
    /// # Errors
    ///
    /// I/O errors; [`CoreError::Corrupt`] for a file that is not an anchor.
    pub fn read(&self) -> Result<Option<Head>, CoreError> {
        Ok(self.slots()?.map(|(head, _)| head))
    }

    /// The newest head and the slot it is in (`None` for a one-slot file).
    fn slots(&self) -> Result<Option<(Head, Option<usize>)>, CoreError> {
        let bytes = match std::fs::read(&self.path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        match bytes.len() {
            SINGLE_LEN => head_of(&bytes)
                .map(|h| Some((h, None)))
                .ok_or(CoreError::Corrupt("audit anchor")),
            len if len == 2 * SLOT_LEN => bytes
                .chunks(SLOT_LEN)
                .enumerate()
                .filter_map(|(i, slot)| head_of(slot).map(|h| (h, Some(i))))
                .max_by_key(|(h, _)| h.seq)
                .map(Some)
                .ok_or(CoreError::Corrupt("audit anchor")),
            _ => Err(CoreError::Corrupt("audit anchor")),
        }
    }

    /// `<file>.lock`, held exclusively (until dropped) by one writer of
    /// the anchor at a time.
    fn lock(&self) -> Result<std::fs::File, CoreError> {
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(self.path.with_extension("lock"))?;
        lock.lock()?;
        Ok(lock)
    }

    /// Moves the anchor forward to `head` (never back). Writers of one
    /// file (the server and the rotate tool on one data directory, say) take
    /// an exclusive lock on `<file>.lock` across read, decide and write, so
    /// one cannot overwrite a newer head the other wrote after it read.
    fn advance(&self, head: Head) -> Result<(), CoreError> {
        let lock = self.lock()?;
        let done = self.advance_locked(head);
        drop(lock);
        done
    }

    /// Sets the anchor to `head`, even below the anchored one: only for
    /// [`AuditTrail::re_anchor`], after an operator investigated a cut log.
    fn reset(&self, head: Head) -> Result<(), CoreError> {
        let lock = self.lock()?;
        let mut bytes = slot_bytes(head).to_vec();
        bytes.extend_from_slice(&slot_bytes(head));
        let done = write_atomic(&self.path, &bytes);
        drop(lock);
        done
    }

    fn advance_locked(&self, head: Head) -> Result<(), CoreError> {
        use std::io::{Seek as _, SeekFrom, Write as _};
        let slot = match self.slots()? {
            Some((h, _)) if h.seq >= head.seq => return Ok(()),
            Some((_, Some(newest))) => 1 - newest,
            // New, or in the one-slot form: written whole, then renamed.
            _ => {
                let mut bytes = slot_bytes(head).to_vec();
                bytes.extend_from_slice(&slot_bytes(head));
                return write_atomic(&self.path, &bytes);
            }
        };
        let mut file = std::fs::OpenOptions::new().write(true).open(&self.path)?;
        file.seek(SeekFrom::Start((slot * SLOT_LEN) as u64))?;
        file.write_all(&slot_bytes(head))?;
        file.sync_data()?;
        Ok(())
    }
}

/// Whether `log` still holds `head`: its entry at `head.seq`, with its mac
/// (the empty head always).
async fn holds(log: &dyn AuditLog, head: Head) -> Result<bool, CoreError> {
    if head.seq == 0 {
        return Ok(true);
    }
    Ok(log
        .read(head.seq, 1)
        .await?
        .first()
        .filter(|(s, _)| *s == head.seq)
        .and_then(|(_, e)| split(e))
        .is_some_and(|raw| bool::from(raw.mac.ct_eq(&head.mac))))
}

fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), CoreError> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes)?;
    std::fs::File::open(&tmp)?.sync_all()?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

/// What [`AuditTrail::verify`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verification {
    /// Every entry verifies, from 1 to `head`, and the anchor agrees.
    Intact {
        /// Number of entries checked.
        entries: u64,
    },
    /// The chain breaks at `seq`.
    Broken {
        /// The first entry that does not verify (or the first missing one).
        seq: u64,
        /// What was found there.
        problem: Problem,
    },
}

/// How the chain is broken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Problem {
    /// An entry is missing: removed (the sequence numbers skip it).
    Missing,
    /// The entry's mac does not verify: it was modified, inserted, moved
    /// (reordered), or an entry before it was removed and the rest renumbered.
    Altered,
    /// The entry does not parse, or names a key the keyring lacks.
    Unreadable,
    /// The log ends before the anchored head, or the entry at the anchored
    /// sequence number is not the anchored one: entries were cut off.
    Truncated,
}

/// The audit log: appends events to the chain (group-committed) and verifies it.
#[derive(Clone)]
pub struct AuditTrail {
    log: Arc<dyn AuditLog>,
    keys: SharedKeyring,
    anchor: Anchor,
    tx: mpsc::Sender<Pending>,
    pseudonyms: Option<Arc<MacKey>>,
    /// The last head a verification found intact, on this node.
    verified: Arc<std::sync::Mutex<Option<Head>>>,
}

/// The issuer under which patients acting on their own data are named in
/// the log (with [`AuditTrail::with_pseudonyms`]).
pub const PSEUDONYM_ISSUER: &str = "urn:careconnect:pseudonym";
/// Prefix of a reason stored sealed.
const SEALED_REASON: &str = "sealed:";

fn reason_context() -> EncryptionContext {
    EncryptionContext::new().with("purpose", "careconnect/audit-reason")
}

impl std::fmt::Debug for AuditTrail {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditTrail")
            .field("anchor", &self.anchor.path)
            .finish_non_exhaustive()
    }
}

struct Pending {
    json: Vec<u8>,
    done: oneshot::Sender<Result<u64, CoreError>>,
}

impl AuditTrail {
    /// An audit trail on `log`, chained with MAC keys from `keys` (a
    /// keyring, or a [`SharedKeyring`] a rotation replaces while this runs:
    /// new entries are chained under its primary at the time), anchored at
    /// `anchor`. Starts the group-commit writer on the current tokio runtime.
    pub fn new(log: Arc<dyn AuditLog>, keys: impl Into<SharedKeyring>, anchor: Anchor) -> Self {
        let keys = keys.into();
        let (tx, rx) = mpsc::channel(4 * MAX_BATCH);
        let (anchor_tx, anchor_rx) = mpsc::channel(ANCHOR_QUEUE);
        tokio::spawn(anchorer(anchor.clone(), anchor_rx));
        tokio::spawn(writer(
            log.clone(),
            keys.clone(),
            anchor.clone(),
            rx,
            anchor_tx,
        ));
        Self {
            log,
            keys,
            anchor,
            tx,
            pseudonyms: None,
            verified: Arc::default(),
        }
    }

    /// Names principals who act only as patients by their pseudonym under
    /// `key` (the one the access gate names patients by), so the log never
    /// links a patient's identity to their pseudonym, and an erased patient
    /// stays unnamed in it.
    #[must_use]
    pub fn with_pseudonyms(mut self, key: MacKey) -> Self {
        self.pseudonyms = Some(Arc::new(key));
        self
    }

    /// Appends `event`; returns its sequence number once it is durable.
    ///
    /// # Errors
    ///
    /// Storage failures, or [`CoreError::AuditUnavailable`] if the writer
    /// stopped; [`CoreError::Invalid`] for the action checkpoints use;
    /// [`CoreError::KeyringStale`] past the keyring's lease
    /// ([`SharedKeyring::set_lease`]): every service call audits before it
    /// acts, so a process that cannot re-read the keyset stops at once
    /// (and each seal under the clinic keyring checks the lease again).
    pub async fn record(&self, event: AuditEvent) -> Result<u64, CoreError> {
        if event.action == CHECKPOINT_ACTION {
            return Err(CoreError::Invalid("audit action (reserved)"));
        }
        if self.keys.fresh().is_err() {
            tracing::warn!("clinic keyring past its lease: request refused");
            return Err(CoreError::KeyringStale);
        }
        self.append(event).await
    }

    async fn append(&self, mut event: AuditEvent) -> Result<u64, CoreError> {
        // Stated reasons may say something clinical: stored sealed.
        if let Some(reason) = event.reason.take() {
            let sealed = self
                .keys
                .current()
                .seal(&reason_context(), reason.as_bytes())?;
            event.reason = Some(format!("{SEALED_REASON}{}", hex::encode(sealed)));
        }
        if let (Some(key), Some(actor)) = (&self.pseudonyms, &event.actor)
            && !event.roles.is_empty()
            && event.roles.split(',').all(|r| r == "patient")
        {
            let name = crate::clinic::pseudonym_with(key, actor);
            event.actor = Some(UserId::new(PSEUDONYM_ISSUER, name)?);
        }
        let json = serde_json::to_vec(&event).map_err(|_| CoreError::Corrupt("audit event"))?;
        let (done, wait) = oneshot::channel();
        self.tx
            .send(Pending { json, done })
            .await
            .map_err(|_| CoreError::AuditUnavailable)?;
        wait.await.map_err(|_| CoreError::AuditUnavailable)?
    }

    /// Reads `limit` events from sequence number `from`, each with whether
    /// its entry is well-formed (the chain itself is checked by [`AuditTrail::verify`]).
    ///
    /// # Errors
    ///
    /// Storage failures.
    pub async fn read(&self, from: u64, limit: usize) -> Result<Vec<(u64, AuditEvent)>, CoreError> {
        let rows = self.log.read(from, limit).await?;
        Ok(rows
            .iter()
            .filter_map(|(seq, entry)| {
                let raw = split(entry)?;
                let mut event: AuditEvent = serde_json::from_slice(raw.json).ok()?;
                if let Some(sealed) = event
                    .reason
                    .as_deref()
                    .and_then(|r| r.strip_prefix(SEALED_REASON))
                {
                    event.reason = Some(
                        hex::decode(sealed)
                            .ok()
                            .and_then(|b| self.keys.current().open(&b, &reason_context()).ok())
                            .and_then(|o| String::from_utf8(o.plaintext.to_vec()).ok())
                            .unwrap_or_else(|| "(reason unreadable)".into()),
                    );
                }
                Some((*seq, event))
            })
            .collect())
    }

    /// The documented recovery after the log was found cut (appends refused
    /// with [`CoreError::AuditTampered`], `verify` naming the cut): once an
    /// operator has investigated, the anchor is set to the log's head as it
    /// now is, and an entry `ReAnchor` records the anchored head it
    /// replaces, the new one, and `reason` (at least ten characters).
    /// Entries lost in the cut stay lost; this only lets the clinic record
    /// again, on the record. Returns the (old, new) anchored sequence
    /// numbers.
    ///
    /// # Errors
    ///
    /// [`CoreError::ReasonRequired`]; [`CoreError::Invalid`] when the log
    /// is not cut (nothing to re-anchor); storage or anchor-file failures.
    pub async fn re_anchor(&self, reason: &str) -> Result<(u64, u64), CoreError> {
        let reason = reason.trim();
        if reason.chars().filter(|c| !c.is_whitespace()).count() < 10 {
            return Err(CoreError::ReasonRequired);
        }
        let old = self.anchor.read()?.unwrap_or(Head::EMPTY);
        let last = self.last_seq().await?;
        let tail = self.log.read(last, 1).await?;
        let head = match tail.first() {
            Some((seq, entry)) if *seq == last => Head {
                seq: last,
                mac: split(entry).map_or([0u8; MAC_LEN], |r| r.mac),
            },
            _ => Head::EMPTY,
        };
        if holds(self.log.as_ref(), old).await? {
            return Err(CoreError::Invalid(
                "the log still holds its anchored entry: nothing to re-anchor",
            ));
        }
        let anchor = self.anchor.clone();
        tokio::task::spawn_blocking(move || anchor.reset(head))
            .await
            .map_err(|_| CoreError::AuditUnavailable)??;
        tracing::warn!(
            anchored = old.seq,
            head = head.seq,
            "audit anchor reset to the log's head after a cut"
        );
        let facts = serde_json::json!({
            "anchored_seq": old.seq,
            "log_head_seq": head.seq,
            "reason": reason,
        });
        self.record(
            AuditEvent::system("ReAnchor", format!("audit:{}", head.seq))
                .because(&facts.to_string()),
        )
        .await?;
        Ok((old.seq, head.seq))
    }

    /// The sequence number of the last entry (0 for an empty log), found
    /// by probing the log (a few dozen reads, however long it is).
    ///
    /// # Errors
    ///
    /// Storage failures.
    pub async fn last_seq(&self) -> Result<u64, CoreError> {
        let exists = |seq: u64| async move {
            Ok::<bool, CoreError>(
                self.log
                    .read(seq, 1)
                    .await?
                    .first()
                    .is_some_and(|(s, _)| *s == seq),
            )
        };
        if !exists(1).await? {
            return Ok(0);
        }
        // Grow to a bound past the end, then halve the gap.
        let (mut lo, mut hi) = (1u64, 2u64);
        while exists(hi).await? {
            lo = hi;
            hi = hi.saturating_mul(2);
            if hi == u64::MAX {
                break;
            }
        }
        while hi - lo > 1 {
            let mid = lo + (hi - lo) / 2;
            if exists(mid).await? {
                lo = mid;
            } else {
                hi = mid;
            }
        }
        Ok(lo)
    }

    /// Walks the whole chain from entry 1 and checks it against the anchor.
    ///
    /// # Errors
    ///
    /// Storage or anchor-file failures (a broken chain is a
    /// [`Verification::Broken`], not an error).
    pub async fn verify(&self) -> Result<Verification, CoreError> {
        let v = self.walk(&[], &[]).await?.verification;
        if let Verification::Intact { entries } = v {
            self.remember_verified(entries).await?;
        }
        Ok(v)
    }

    /// `Broken` when a chain ending at `head` lost its anchored entry (it
    /// ends below it, or holds another entry there); `None` when the anchor
    /// agrees.
    async fn cut_below_anchor(&self, head: Head) -> Result<Option<Verification>, CoreError> {
        let Some(anchored) = self.anchor.read()? else {
            return Ok(None);
        };
        if head.seq < anchored.seq {
            return Ok(Some(broken(head.seq + 1, Problem::Truncated)));
        }
        if !holds(self.log.as_ref(), anchored).await? {
            return Ok(Some(broken(anchored.seq, Problem::Truncated)));
        }
        Ok(None)
    }

    async fn remember_verified(&self, seq: u64) -> Result<(), CoreError> {
        let head = match self.log.read(seq, 1).await?.first() {
            Some((s, e)) if *s == seq => split(e).map(|r| Head { seq, mac: r.mac }),
            _ => None,
        };
        if let Some(h) = head.or((seq == 0).then_some(Head::EMPTY)) {
            *self
                .verified
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(h);
        }
        Ok(())
    }

    /// Verifies only what was appended since the last intact verification
    /// on this node (the whole chain the first time): the entry verified
    /// last must be there unchanged, each newer one must chain onto it, and
    /// the anchor must agree. Cost: the new entries, not the log. What it
    /// cannot see is an entry below the last verified one altered since;
    /// [`AuditTrail::verify`] (a button on the admin page, `rotate verify`)
    /// walks everything. Falls back to the full walk for entries under a
    /// key no longer held (checked by checkpoints there).
    ///
    /// # Errors
    ///
    /// As [`AuditTrail::verify`].
    pub async fn verify_recent(&self) -> Result<Verification, CoreError> {
        let start = *self
            .verified
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let Some(start) = start else {
            return self.verify().await;
        };
        if !holds(self.log.as_ref(), start).await? {
            return self.verify().await;
        }
        let keys = self.keys.current();
        let mut macs = MacCache::default();
        let mut head = start;
        loop {
            let page = self.log.read(head.seq + 1, 1000).await?;
            if page.is_empty() {
                break;
            }
            for (seq, entry) in &page {
                if *seq != head.seq + 1 {
                    return Ok(broken(head.seq + 1, Problem::Missing));
                }
                let Some(raw) = split(entry) else {
                    return Ok(broken(*seq, Problem::Unreadable));
                };
                let usable = KeyId::new(raw.key_id)
                    .and_then(|k| keys.key(k))
                    .is_some_and(|k| k.state != careconnect_crypto::KeyState::Destroyed);
                let Some(key) = macs.get(&keys, raw.key_id).filter(|_| usable) else {
                    return self.verify().await;
                };
                let expected = chain_mac(key, *seq, &head.mac, raw.json);
                if !bool::from(expected.ct_eq(&raw.mac)) {
                    return Ok(broken(*seq, Problem::Altered));
                }
                head = Head {
                    seq: *seq,
                    mac: raw.mac,
                };
            }
        }
        if let Some(cut) = self.cut_below_anchor(head).await? {
            return Ok(cut);
        }
        *self
            .verified
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(head);
        Ok(Verification::Intact { entries: head.seq })
    }

    /// Before data keys `keys` are destroyed (a compromise rotation):
    /// verifies the chain while they still exist, then appends a
    /// checkpoint under the current primary that commits to a digest of
    /// every entry so far. Entries chained under a destroyed key can no
    /// longer be checked on their own; [`AuditTrail::verify`] accepts them
    /// when a later checkpoint it can check covers them. Their sealed
    /// reasons no longer open. Entries under `keys` must all come at or
    /// before sequence number `not_after` (the point from which every node
    /// chains under another key): one after it was forged with a stolen key
    /// or written by a node that stopped reloading, and sealing it into the
    /// checkpoint would make it look genuine. Returns how many entries are
    /// chained under `keys`.
    ///
    /// # Errors
    ///
    /// [`CoreError::LateAuditEntries`] for an entry under `keys` after
    /// `not_after`; [`CoreError::AuditTampered`] when the chain does not
    /// verify now, or would not once `keys` are destroyed (in each case
    /// nothing was destroyed; find out why, then run again); storage
    /// failures.
    pub async fn checkpoint(&self, keys: &[KeyId], not_after: u64) -> Result<u64, CoreError> {
        let before = self.walk(&[], keys).await?;
        if !matches!(before.verification, Verification::Intact { .. }) {
            return Err(CoreError::AuditTampered);
        }
        if before.last_under > not_after {
            return Err(CoreError::LateAuditEntries {
                after: not_after,
                last: before.last_under,
            });
        }
        let mut event = AuditEvent::system(
            CHECKPOINT_ACTION,
            format!(
                "audit:through={} history={}",
                before.through,
                hex::encode(before.digest)
            ),
        );
        event.outcome = Outcome::Allowed;
        self.append(event).await?;
        let after = self.walk(keys, keys).await?;
        if after.unproven.is_some() || !matches!(after.verification, Verification::Intact { .. }) {
            return Err(CoreError::AuditTampered);
        }
        Ok(before.under)
    }

    /// Walks the whole chain from entry 1 and checks it against the anchor,
    /// taking `destroyed` as destroyed already and counting the entries
    /// under `count`.
    async fn walk(&self, destroyed: &[KeyId], count: &[KeyId]) -> Result<Walk, CoreError> {
        let keys = self.keys.current();
        let gone = |id: u32| {
            destroyed.iter().any(|k| k.get() == id)
                || KeyId::new(id)
                    .and_then(|k| keys.key(k))
                    .is_some_and(|k| k.state == careconnect_crypto::KeyState::Destroyed)
        };
        let mut walk = Walk {
            verification: Verification::Intact { entries: 0 },
            through: 0,
            digest: [0; 32],
            under: 0,
            last_under: 0,
            unproven: None,
        };
        let mut head = Head::EMPTY;
        let mut macs = MacCache::default();
        let mut recent: std::collections::VecDeque<(u64, [u8; 32])> =
            std::collections::VecDeque::with_capacity(HISTORY_KEPT);
        'read: loop {
            let page = self.log.read(head.seq + 1, 1000).await?;
            if page.is_empty() {
                break;
            }
            for (seq, entry) in &page {
                if *seq != head.seq + 1 {
                    walk.verification = broken(head.seq + 1, Problem::Missing);
                    break 'read;
                }
                let Some(raw) = split(entry) else {
                    walk.verification = broken(*seq, Problem::Unreadable);
                    break 'read;
                };
                walk.digest = history_step(&walk.digest, *seq, entry);
                if count.iter().any(|k| k.get() == raw.key_id) {
                    walk.under += 1;
                    walk.last_under = *seq;
                }
                if gone(raw.key_id) {
                    // Checked only by a later checkpoint.
                    let first = walk.unproven.map_or(*seq, |(f, _)| f);
                    walk.unproven = Some((first, *seq));
                } else {
                    let Some(key) = macs.get(&keys, raw.key_id) else {
                        walk.verification = broken(*seq, Problem::Unreadable);
                        break 'read;
                    };
                    let expected = chain_mac(key, *seq, &head.mac, raw.json);
                    if !bool::from(expected.ct_eq(&raw.mac)) {
                        walk.verification = broken(*seq, Problem::Altered);
                        break 'read;
                    }
                    if let Some((_, last)) = walk.unproven
                        && let Some((through, claimed)) = checkpoint_of(raw.json)
                        && through >= last
                        && recent
                            .iter()
                            .any(|(s, d)| *s == through && bool::from(d.ct_eq(&claimed)))
                    {
                        walk.unproven = None;
                    }
                }
                head = Head {
                    seq: *seq,
                    mac: raw.mac,
                };
                if recent.len() == HISTORY_KEPT {
                    recent.pop_front();
                }
                recent.push_back((*seq, walk.digest));
            }
        }
        walk.through = head.seq;
        if !matches!(walk.verification, Verification::Intact { .. }) {
            return Ok(walk);
        }
        if let Some((first, _)) = walk.unproven {
            walk.verification = broken(first, Problem::Unreadable);
            return Ok(walk);
        }
        walk.verification = self
            .cut_below_anchor(head)
            .await?
            .unwrap_or(Verification::Intact { entries: head.seq });
        Ok(walk)
    }
}

/// What a walk over the chain found.
struct Walk {
    verification: Verification,
    /// The last entry read.
    through: u64,
    /// The history digest through it.
    digest: [u8; 32],
    /// Entries chained under the keys counted.
    under: u64,
    /// The last of them.
    last_under: u64,
    /// Entries under a destroyed key that no checkpoint covers yet: the
    /// first and the last.
    unproven: Option<(u64, u64)>,
}

/// The digest of the log through entry `seq`, from the one before it.
fn history_step(prev: &[u8; 32], seq: u64, entry: &[u8]) -> [u8; 32] {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(HISTORY_LABEL);
    h.update(prev);
    h.update(seq.to_be_bytes());
    h.update(entry);
    h.finalize().into()
}

/// The position and digest a checkpoint entry's event commits to.
fn checkpoint_of(json: &[u8]) -> Option<(u64, [u8; 32])> {
    let event: AuditEvent = serde_json::from_slice(json).ok()?;
    if event.action != CHECKPOINT_ACTION || event.actor.is_some() {
        return None;
    }
    let rest = event.resource.strip_prefix("audit:through=")?;
    let (through, digest) = rest.split_once(" history=")?;
    let digest = hex::decode(digest).ok()?.try_into().ok()?;
    Some((through.parse().ok()?, digest))
}

fn broken(seq: u64, problem: Problem) -> Verification {
    Verification::Broken { seq, problem }
}

/// MAC keys by key id, derived once per verification.
#[derive(Default)]
struct MacCache(Vec<(u32, MacKey)>);

impl MacCache {
    fn get(&mut self, keys: &Keyring, id: u32) -> Option<&MacKey> {
        if let Some(i) = self.0.iter().position(|(k, _)| *k == id) {
            return self.0.get(i).map(|(_, m)| m);
        }
        let key = keys.mac_key_for(KeyId::new(id)?, AUDIT_PURPOSE).ok()?;
        self.0.push((id, key));
        self.0.last().map(|(_, m)| m)
    }
}

/// Committed batches waiting for the anchor to reach them.
const ANCHOR_QUEUE: usize = 8;

/// A committed batch: the head it left and its callers with their sequence
/// numbers, answered once the anchor has reached that head.
struct Committed {
    head: Head,
    callers: Vec<(u64, oneshot::Sender<Result<u64, CoreError>>)>,
}

/// The group-commit writer: takes what is queued (up to [`MAX_BATCH`]),
/// appends it in one chained batch and hands its callers to the
/// [`anchorer`], repeats. The next batch is appended while the anchor file
/// is written for the last one; callers are answered only after both.
async fn writer(
    log: Arc<dyn AuditLog>,
    keys: SharedKeyring,
    anchor: Anchor,
    mut rx: mpsc::Receiver<Pending>,
    anchoring: mpsc::Sender<Committed>,
) {
    // The head this writer last appended: while the log's tail is still
    // that, nothing was cut or replaced since, and the anchored entry need
    // not be read again.
    let mut known: Option<Head> = None;
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        // Callers woken by the previous commit are about to send their next
        // events: give them a moment to join this batch.
        for _ in 0..3 {
            while batch.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(p) => batch.push(p),
                    Err(_) => break,
                }
            }
            tokio::task::yield_now().await;
        }
        let result = append_batch(log.as_ref(), &keys.current(), &anchor, &batch, &mut known).await;
        match (result, known) {
            (Ok(first_seq), Some(head)) => {
                let callers = batch
                    .into_iter()
                    .zip(first_seq..)
                    .map(|(p, seq)| (seq, p.done))
                    .collect();
                // Should the anchorer be gone, the callers' senders drop
                // with the message and they see the trail unavailable.
                let _ = anchoring.send(Committed { head, callers }).await;
            }
            (result, _) => {
                let e = result.err().unwrap_or(CoreError::AuditUnavailable);
                tracing::error!(error = %e, "audit append failed");
                let tampered = matches!(e, CoreError::AuditTampered);
                for p in batch {
                    let _ = p.done.send(Err(if tampered {
                        CoreError::AuditTampered
                    } else {
                        CoreError::AuditUnavailable
                    }));
                }
            }
        }
    }
}

/// Moves the anchor file to the newest committed head (one write for all
/// batches queued meanwhile), then answers their callers: with their
/// sequence numbers, or with [`CoreError::AuditUnavailable`] if the anchor
/// could not be written (their events are stored; the anchor catches up
/// with the next batch that succeeds).
async fn anchorer(anchor: Anchor, mut rx: mpsc::Receiver<Committed>) {
    while let Some(first) = rx.recv().await {
        let mut done = vec![first];
        while let Ok(more) = rx.try_recv() {
            done.push(more);
        }
        let Some(head) = done.iter().map(|c| c.head).max_by_key(|h| h.seq) else {
            continue;
        };
        // The fsync must not hold up a runtime thread.
        let moving = anchor.clone();
        let advanced = match tokio::task::spawn_blocking(move || moving.advance(head)).await {
            Ok(Ok(())) => true,
            Ok(Err(e)) => {
                tracing::error!(error = %e, "audit anchor not written");
                false
            }
            Err(_) => false,
        };
        for (seq, caller) in done.into_iter().flat_map(|c| c.callers) {
            let _ = caller.send(if advanced {
                Ok(seq)
            } else {
                Err(CoreError::AuditUnavailable)
            });
        }
    }
}

async fn append_batch(
    log: &dyn AuditLog,
    keys: &Keyring,
    anchor: &Anchor,
    batch: &[Pending],
    known: &mut Option<Head>,
) -> Result<u64, CoreError> {
    let key_id = keys.primary();
    let key = keys.mac_key_for(key_id, AUDIT_PURPOSE)?;
    let anchored = anchor.read()?;
    // The tail a batch may chain onto is never below the anchor (checked
    // inside the store's transaction).
    let floor = anchored.map_or(0, |a| a.seq);
    for trusted in [known.is_some(), false] {
        if !trusted {
            // Never chain onto a log that lost its anchored head: appending
            // would grow it past the anchor and hide the cut. The entry at
            // the anchored position must still be the anchored one.
            if let Some(a) = anchored
                && !holds(log, a).await?
            {
                return Err(CoreError::AuditTampered);
            }
        }
        if let Some(first) = append_once(
            log,
            &key,
            key_id,
            batch,
            floor,
            trusted.then_some(*known).flatten(),
            known,
        )
        .await?
        {
            return Ok(first);
        }
    }
    Err(CoreError::AuditUnavailable)
}

/// One chained append; `None` when the tail was not `expect` (another
/// writer appended since, or something changed: check again).
async fn append_once(
    log: &dyn AuditLog,
    key: &MacKey,
    key_id: KeyId,
    batch: &[Pending],
    floor: u64,
    expect: Option<Head>,
    known: &mut Option<Head>,
) -> Result<Option<u64>, CoreError> {
    let below_anchor = std::sync::atomic::AtomicBool::new(false);
    let moved = std::sync::atomic::AtomicBool::new(false);
    // The store may call `build` again if another writer got in first; the
    // head it leaves behind is that of the attempt that committed.
    let head = std::sync::Mutex::new(Head::EMPTY);
    let build = |tail: Option<(u64, &[u8])>| -> Vec<Vec<u8>> {
        if tail.map_or(0, |(s, _)| s) < floor {
            below_anchor.store(true, std::sync::atomic::Ordering::SeqCst);
            return Vec::new();
        }
        below_anchor.store(false, std::sync::atomic::Ordering::SeqCst);
        let (mut seq, mut prev) = match tail {
            None => (0, [0u8; MAC_LEN]),
            // An unreadable tail still chains: verify reports it.
            Some((s, entry)) => (s, split(entry).map_or([0u8; MAC_LEN], |r| r.mac)),
        };
        let as_expected = expect.is_none_or(|e| e.seq == seq && bool::from(e.mac.ct_eq(&prev)));
        moved.store(!as_expected, std::sync::atomic::Ordering::SeqCst);
        if !as_expected {
            return Vec::new();
        }
        let entries = batch
            .iter()
            .map(|p| {
                seq += 1;
                let mac = chain_mac(key, seq, &prev, &p.json);
                prev = mac;
                encode(key_id, &mac, &p.json)
            })
            .collect();
        *head
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Head { seq, mac: prev };
        entries
    };
    let first = log.append_chained(&build).await?;
    if below_anchor.load(std::sync::atomic::Ordering::SeqCst) {
        return Err(CoreError::AuditTampered);
    }
    if moved.load(std::sync::atomic::Ordering::SeqCst) {
        *known = None;
        return Ok(None);
    }
    let head = *head
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    *known = Some(head);
    Ok(Some(first))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn head(seq: u64) -> Head {
        Head {
            seq,
            mac: [seq as u8; MAC_LEN],
        }
    }

    #[test]
    fn writers_racing_on_one_anchor_never_move_it_back() {
        // Review finding 9: two writers (a server and the rotate tool on one
        // data directory) each read, decide and write; without a lock one
        // could overwrite a newer head with its older one. Each thread opens
        // the file on its own, as separate processes would (flock locks
        // belong to open files, not processes).
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.anchor");
        let top = std::sync::atomic::AtomicU64::new(0);
        std::thread::scope(|s| {
            for t in 0..4u64 {
                let (path, top) = (&path, &top);
                s.spawn(move || {
                    let anchor = Anchor::at(path);
                    for i in 1..=300u64 {
                        let seq = i * 4 + t;
                        anchor.advance(head(seq)).unwrap();
                        top.fetch_max(seq, std::sync::atomic::Ordering::SeqCst);
                        let now = anchor.read().unwrap().unwrap().seq;
                        // Never behind what this writer wrote.
                        assert!(now >= seq, "anchor at {now} after {seq} was written");
                    }
                });
            }
        });
        let last = top.load(std::sync::atomic::Ordering::SeqCst);
        assert_eq!(Anchor::at(&path).read().unwrap().unwrap().seq, last);
    }

    #[test]
    fn the_anchor_moves_forward_only_and_survives_a_torn_slot() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.anchor");
        let anchor = Anchor::at(&path);
        assert_eq!(anchor.read().unwrap(), None);
        for seq in [1, 2, 3, 2, 1] {
            anchor.advance(head(seq)).unwrap();
        }
        assert_eq!(anchor.read().unwrap(), Some(head(3)));
        assert_eq!(std::fs::read(&path).unwrap().len(), 2 * SLOT_LEN);

        // A crash tearing the next write leaves the slot before it.
        anchor.advance(head(4)).unwrap();
        let mut bytes = std::fs::read(&path).unwrap();
        let newest = bytes
            .chunks(SLOT_LEN)
            .position(|s| s[..8] == 4u64.to_be_bytes())
            .unwrap();
        bytes[newest * SLOT_LEN + 20] ^= 1;
        std::fs::write(&path, &bytes).unwrap();
        assert_eq!(anchor.read().unwrap(), Some(head(3)));
        // Both slots torn, or a file of another size: not an anchor.
        bytes[(1 - newest) * SLOT_LEN + 20] ^= 1;
        std::fs::write(&path, &bytes).unwrap();
        assert!(matches!(anchor.read(), Err(CoreError::Corrupt(_))));
        std::fs::write(&path, [0u8; 41]).unwrap();
        assert!(matches!(anchor.read(), Err(CoreError::Corrupt(_))));
        assert!(anchor.advance(head(5)).is_err(), "never written over");
    }

    #[test]
    fn a_one_slot_anchor_is_read_and_replaced_by_two_slots() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.anchor");
        let mut old = 7u64.to_be_bytes().to_vec();
        old.extend_from_slice(&[7; MAC_LEN]);
        std::fs::write(&path, &old).unwrap();
        let anchor = Anchor::at(&path);
        assert_eq!(anchor.read().unwrap(), Some(head(7)));
        anchor.advance(head(6)).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), old, "never back");
        anchor.advance(head(8)).unwrap();
        assert_eq!(anchor.read().unwrap(), Some(head(8)));
        assert_eq!(std::fs::read(&path).unwrap().len(), 2 * SLOT_LEN);
    }
}
