//! The door to patients' clinical data, on SQLite and on a PostgreSQL
//! database of its own (one suite, both backends): care relationships,
//! break-glass (refused without a reason, expiring, always flagged, reviewed
//! by administrators), every decision audited, forged rows ignored.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a failing test panics

use std::sync::Arc;
use std::time::Duration;

use careconnect_authz::session::ManualClock;
use careconnect_authz::{Action, Basis, Care, Principal, Role, UserId};
use careconnect_core::CoreError;
use careconnect_core::access::{Gate, GateConfig};
use careconnect_core::audit::{Anchor, AuditTrail, Flag, Outcome, Verification};
use careconnect_crypto::Keyring;
use careconnect_storage::{AuditLog, PgStore, RecordStore, SqliteStore};

use careconnect_testkit::OwnDb;

const T0: u64 = 1_800_000_000;

fn user(s: &str) -> UserId {
    UserId::new("https://idp.test", s).unwrap()
}

fn who(s: &str, role: Role) -> Principal {
    Principal::new(user(s), [role].into_iter().collect())
}

fn denied<T>(r: Result<T, CoreError>) -> bool {
    matches!(r, Err(CoreError::Denied(_)))
}

trait Store: RecordStore + AuditLog {}
impl<T: RecordStore + AuditLog> Store for T {}

/// The whole suite against one backend.
async fn suite(store: Arc<dyn Store>, dir: &std::path::Path) {
    let keys = Keyring::generate();
    let clock = Arc::new(ManualClock::new(T0));
    let audit = AuditTrail::new(
        store.clone() as Arc<dyn AuditLog>,
        keys.clone(),
        Anchor::at(dir.join("anchor")),
    );
    let gate = Gate::new(
        store.clone() as Arc<dyn RecordStore>,
        keys.clone(),
        audit.clone(),
        clock.clone(),
        GateConfig::default(),
    )
    .unwrap();
    let (grey, house) = (who("grey", Role::Doctor), who("house", Role::Doctor));
    let (alice, bob) = (who("alice", Role::Patient), who("bob", Role::Patient));
    let admin = who("root", Role::Admin);
    let fiona = who("fiona", Role::Finance);

    // Out of care: denied, and the denial is audited.
    assert!(denied(
        gate.patient(&grey, Action::ReadHealthRecord, &alice.user)
            .await
    ));
    // A patient reads their own record; not another's.
    let own = gate
        .patient(&alice, Action::ReadHealthRecord, &alice.user)
        .await
        .unwrap();
    assert_eq!(own.basis(), Basis::Ownership);
    assert!(denied(
        gate.patient(&alice, Action::ReadHealthRecord, &bob.user)
            .await
    ));
    // Finance never reaches clinical data.
    assert!(denied(
        gate.patient(&fiona, Action::ReadHealthRecord, &alice.user)
            .await
    ));

    // Only an administrator assigns care.
    assert!(denied(
        gate.assign_care(&grey, &grey.user, &alice.user).await
    ));
    assert_eq!(
        gate.care(&grey.user, &alice.user).await.unwrap(),
        Care::None
    );
    gate.assign_care(&admin, &grey.user, &alice.user)
        .await
        .unwrap();
    assert_eq!(
        gate.care(&grey.user, &alice.user).await.unwrap(),
        Care::InCare
    );
    let a = gate
        .patient(&grey, Action::AddClinicalNote, &alice.user)
        .await
        .unwrap();
    assert_eq!(a.basis(), Basis::Care);
    // Care is per doctor and per patient.
    assert!(denied(
        gate.patient(&house, Action::ReadHealthRecord, &alice.user)
            .await
    ));
    assert!(denied(
        gate.patient(&grey, Action::ReadHealthRecord, &bob.user)
            .await
    ));
    // The administrator reads as an audited override, and writes nothing.
    let over = gate
        .patient(&admin, Action::ReadHealthRecord, &alice.user)
        .await
        .unwrap();
    assert_eq!(over.basis(), Basis::AdminOverride);
    assert!(denied(
        gate.patient(&admin, Action::Prescribe, &alice.user).await
    ));
    gate.revoke_care(&admin, &grey.user, &alice.user)
        .await
        .unwrap();
    assert!(denied(
        gate.patient(&grey, Action::ReadHealthRecord, &alice.user)
            .await
    ));

    // Break-glass: no reason, no access (and nothing stored).
    for reason in ["", "   ", "urgent"] {
        assert!(matches!(
            gate.declare_break_glass(&house, &bob.user, reason).await,
            Err(CoreError::ReasonRequired)
        ));
    }
    assert_eq!(gate.care(&house.user, &bob.user).await.unwrap(), Care::None);
    // Only doctors declare one.
    assert!(denied(
        gate.declare_break_glass(&fiona, &bob.user, "looking for a bill")
            .await
    ));
    let bg = gate
        .declare_break_glass(&house, &bob.user, "  unconscious in A&E, no relatives  ")
        .await
        .unwrap();
    assert_eq!(bg.reason, "unconscious in A&E, no relatives");
    let a = gate
        .patient(&house, Action::ReadHealthRecord, &bob.user)
        .await
        .unwrap();
    assert_eq!(a.basis(), Basis::BreakGlass);
    // It opens that patient only, for that doctor only.
    assert!(denied(
        gate.patient(&house, Action::ReadHealthRecord, &alice.user)
            .await
    ));
    assert!(denied(
        gate.patient(&grey, Action::ReadHealthRecord, &bob.user)
            .await
    ));
    // It expires.
    clock.advance(Duration::from_secs(3601));
    assert!(denied(
        gate.patient(&house, Action::ReadHealthRecord, &bob.user)
            .await
    ));

    // Administrators review break-glass; nobody else.
    let review = gate.break_glass_review(&admin).await.unwrap();
    assert_eq!(review.len(), 1);
    assert_eq!(
        (review[0].doctor.clone(), review[0].patient.clone()),
        (house.user.clone(), bob.user.clone())
    );
    assert!(denied(gate.break_glass_review(&house).await));

    // Everything above is in the audit log, flagged where it must be, and
    // the chain verifies.
    assert!(matches!(
        audit.verify().await.unwrap(),
        Verification::Intact { .. }
    ));
    let mut events = Vec::new();
    let mut from = 1;
    loop {
        let page = audit.read(from, 500).await.unwrap();
        let Some((last, _)) = page.last() else { break };
        from = last + 1;
        events.extend(page.into_iter().map(|(_, e)| e));
    }
    let count = |action: &str, outcome: Outcome, flag: Option<Flag>| {
        events
            .iter()
            .filter(|e| {
                e.action == action
                    && e.outcome == outcome
                    && flag.is_none_or(|f| e.flags.contains(&f))
            })
            .count()
    };
    assert_eq!(
        count("ReadHealthRecord", Outcome::Allowed, Some(Flag::BreakGlass)),
        1
    );
    assert_eq!(
        count(
            "ReadHealthRecord",
            Outcome::Allowed,
            Some(Flag::AdminOverride)
        ),
        1
    );
    assert_eq!(
        count(
            "DeclareBreakGlass",
            Outcome::Allowed,
            Some(Flag::BreakGlass)
        ),
        1
    );
    assert!(count("ReadHealthRecord", Outcome::Denied, None) >= 8);
    assert!(
        events
            .iter()
            .all(|e| !format!("{e:?}").contains("A&E") || e.reason.is_some())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gate_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(SqliteStore::open(&dir.path().join("c.db")).await.unwrap());
    suite(store, dir.path()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gate_on_postgres() {
    let db = OwnDb::create("cc_gate").await;
    let store = Arc::new(PgStore::connect(&db.url, 4).await.unwrap());
    let dir = tempfile::tempdir().unwrap();
    suite(store.clone(), dir.path()).await;
    store.close().await;
    db.drop_db().await;
}
