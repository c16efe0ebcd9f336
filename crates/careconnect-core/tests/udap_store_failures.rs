//! UDAP when the database fails in the middle of a request.
//!
//! The clinic's SQLite database is made to refuse one kind of write at a
//! time (a trigger that raises, in the real database the clinic writes to):
//! the audit log, the client rows, the token rows. Each time the request
//! gets `500 server_error`, nothing is registered, updated or issued, and
//! what the log could record says so. Once the database works again, the
//! app registers with a fresh statement; the statement that failed stays
//! spent (its `jti` was taken before the failure), so it cannot be replayed.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a failing test panics

use std::sync::{Arc, OnceLock};

use careconnect_authz::session::SystemClock;
use careconnect_authz::udap::dev::{DevCommunity, IssuedCert, KeyKind};
use careconnect_authz::udap::{
    B2bExtension, ClientRequest, Registration, ServerCommunity, TrustCommunity, UdapClient,
    UdapConfig, UdapError,
};
use careconnect_core::audit::Outcome;
use careconnect_core::udap::ClinicUdap;
use careconnect_core::{Clinic, ClinicConfig};
use careconnect_storage::{Collection, RecordStore};

const BASE: &str = "https://fhir.clinic.test";
const APP: &str = "https://lab.example/udap";
const LOCAL: std::net::IpAddr = std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

struct Certs {
    community: DevCommunity,
    server: IssuedCert,
    app: IssuedCert,
}

/// Generated once: RSA keys take time.
fn certs() -> &'static Certs {
    static C: OnceLock<Certs> = OnceLock::new();
    C.get_or_init(|| {
        let community = DevCommunity::generate("urn:clinic:community").unwrap();
        Certs {
            server: community.issue(BASE, KeyKind::Rsa2048, 30).unwrap(),
            app: community.issue(APP, KeyKind::P256, 30).unwrap(),
            community,
        }
    })
}

struct Env {
    clinic: Clinic,
    udap: ClinicUdap,
    store: Arc<dyn RecordStore>,
    /// A second connection to the clinic's database, for the triggers.
    db: sqlx::SqlitePool,
    _dir: tempfile::TempDir,
}

async fn env() -> Env {
    let dir = tempfile::tempdir().unwrap();
    let config = ClinicConfig::embedded(dir.path()).unwrap();
    let store = careconnect_storage::connect(&config.storage_url)
        .await
        .unwrap();
    let clinic = Clinic::open_with(config, store.clone(), Arc::new(SystemClock))
        .await
        .unwrap();
    let c = certs();
    let trust = Arc::new(
        TrustCommunity::new(c.community.name(), c.community.anchor_pem().as_bytes()).unwrap(),
    );
    let ours =
        ServerCommunity::new(trust, &c.server.chain_pem, c.server.key_pem.as_bytes()).unwrap();
    let udap = clinic
        .udap(
            UdapConfig {
                base_url: BASE.into(),
                registration_endpoint: format!("{BASE}/register"),
                token_endpoint: format!("{BASE}/token"),
                scopes: vec![
                    "system/Patient.read".into(),
                    "system/Observation.read".into(),
                ],
                token_lifetime: 900,
            },
            vec![ours],
        )
        .unwrap();
    let db = sqlx::SqlitePool::connect(&format!(
        "sqlite://{}",
        dir.path().join("clinic.db").display()
    ))
    .await
    .unwrap();
    Env {
        clinic,
        udap,
        store,
        db,
        _dir: dir,
    }
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn app() -> UdapClient {
    let c = certs();
    UdapClient::from_pem(&c.app.chain_pem, c.app.key_pem.as_bytes(), APP).unwrap()
}

/// A registration body asking for `scopes`, with a fresh `jti`.
fn statement(scopes: &[&str]) -> Vec<u8> {
    let req = ClientRequest::b2b("Lab results sync", "mailto:ops@lab.example", scopes);
    app()
        .registration_request(&format!("{BASE}/register"), &req, now())
        .unwrap()
        .to_string()
        .into_bytes()
}

fn token_form(client_id: &str) -> Vec<(String, String)> {
    let b2b = B2bExtension::new(
        "https://lab.example/org",
        vec!["urn:oid:2.16.840.1.113883.5.8#TREAT".into()],
    );
    app()
        .token_request(client_id, &format!("{BASE}/token"), &b2b, None, now())
        .unwrap()
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect()
}

impl Env {
    /// Makes the database refuse `op` on `table` where `when` holds (`NEW.`
    /// or `OLD.` is the row) until [`Env::heal`].
    async fn break_writes(&self, op: &str, table: &str, when: &str) {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "CREATE TRIGGER injected_failure BEFORE {op} ON {table} WHEN {when} \
             BEGIN SELECT RAISE(ABORT, 'injected failure'); END"
        )))
        .execute(&self.db)
        .await
        .unwrap();
    }

    async fn heal(&self) {
        sqlx::query("DROP TRIGGER injected_failure")
            .execute(&self.db)
            .await
            .unwrap();
    }

    async fn rows(&self, collection: &str) -> usize {
        let c = Collection::new(collection).unwrap();
        self.store.list(&c, None, 100).await.unwrap().rows.len()
    }

    /// `(action, outcome)` of every audit event after `from`.
    async fn audited_since(&self, from: u64) -> Vec<(String, Outcome)> {
        self.clinic
            .audit()
            .read(from, 1000)
            .await
            .unwrap()
            .into_iter()
            .filter(|(seq, _)| *seq > from)
            .map(|(_, e)| (e.action, e.outcome))
            .collect()
    }

    async fn last_seq(&self) -> u64 {
        let mut last = 0;
        loop {
            let page = self.clinic.audit().read(last + 1, 1000).await.unwrap();
            match page.last() {
                Some((seq, _)) => last = *seq,
                None => return last,
            }
        }
    }
}

impl Env {
    /// Registers `scopes` with a fresh statement.
    async fn register(&self, scopes: &[&str]) -> Registration {
        self.udap.register(&statement(scopes), LOCAL).await.unwrap()
    }

    /// After a failed registration of `body`: `body` is spent (its `jti` was
    /// taken), and a fresh statement registers the app.
    async fn spent_then_registered(&self, body: &[u8]) -> Registration {
        let replay = self.udap.register(body, LOCAL).await.unwrap_err();
        assert_eq!(replay.code(), "invalid_software_statement", "{replay:?}");
        assert!(replay.description().contains("replay"), "{replay:?}");
        let reg = self.register(&["system/Patient.read"]).await;
        assert_eq!(reg.status(), 201);
        reg
    }

    /// Gets a token for `client_id` and checks that it is live.
    async fn live_token(&self, client_id: &str) {
        let token = self
            .udap
            .token(&token_form(client_id), LOCAL)
            .await
            .unwrap();
        let live = self.udap.server().introspect(token.secret()).await.unwrap();
        assert!(live.is_some());
    }
}

fn assert_server_error(e: &UdapError) {
    assert_eq!((e.status(), e.code()), (500, "server_error"), "{e:?}");
    // The client learns nothing about the failure.
    assert_eq!(e.description(), "the server could not complete the request");
}

#[tokio::test]
async fn a_registration_the_log_cannot_record_is_not_made() {
    let e = env().await;
    e.break_writes("INSERT", "audit", "1").await;
    let body = statement(&["system/Patient.read"]);
    let err = e.udap.register(&body, LOCAL).await.unwrap_err();
    assert_server_error(&err);
    assert!(e.udap.server().clients(10).await.unwrap().is_empty());
    assert_eq!(e.rows("udap_clients").await, 0);
    e.heal().await;

    // The failed statement is spent; a fresh one registers.
    let reg = e.spent_then_registered(&body).await;

    // A token the log cannot record is not issued either.
    e.break_writes("INSERT", "audit", "1").await;
    let err = e
        .udap
        .token(&token_form(&reg.client.client_id), LOCAL)
        .await
        .unwrap_err();
    assert_server_error(&err);
    assert_eq!(e.rows("udap_tokens").await, 0);
    e.heal().await;
    e.live_token(&reg.client.client_id).await;
    assert_eq!(e.rows("udap_tokens").await, 1);
    assert!(matches!(
        e.clinic.audit().verify().await.unwrap(),
        careconnect_core::audit::Verification::Intact { .. }
    ));
}

#[tokio::test]
async fn a_client_row_the_store_refuses_leaves_no_client_and_the_log_says_it_failed() {
    let e = env().await;
    let from = e.last_seq().await;
    e.break_writes("INSERT", "records", "NEW.collection = 'udap_clients'")
        .await;
    let body = statement(&["system/Patient.read"]);
    let err = e.udap.register(&body, LOCAL).await.unwrap_err();
    assert_server_error(&err);
    assert!(e.udap.server().clients(10).await.unwrap().is_empty());
    assert_eq!(
        e.audited_since(from).await,
        [
            ("udap_register".to_owned(), Outcome::Allowed),
            ("udap_register".to_owned(), Outcome::Failed),
        ],
        "the attempt and its failure are both in the log"
    );
    e.heal().await;
    e.spent_then_registered(&body).await;
    assert_eq!(e.udap.server().clients(10).await.unwrap().len(), 1);
}

#[tokio::test]
async fn an_update_the_store_refuses_leaves_the_registration_as_it_was() {
    let e = env().await;
    let reg = e.register(&["system/Patient.read"]).await;
    let id = reg.client.client_id.clone();
    let attempted_and_failed = [
        ("udap_register".to_owned(), Outcome::Allowed),
        ("udap_register".to_owned(), Outcome::Failed),
    ];
    let from = e.last_seq().await;
    e.break_writes("UPDATE", "records", "NEW.collection = 'udap_clients'")
        .await;
    let wider = ["system/Patient.read", "system/Observation.read"];
    let err = e
        .udap
        .register(&statement(&wider), LOCAL)
        .await
        .unwrap_err();
    assert_server_error(&err);
    assert_eq!(e.audited_since(from).await, attempted_and_failed);
    let stored = e.udap.server().client(&id).await.unwrap().unwrap();
    assert_eq!(stored.metadata.scopes, ["system/Patient.read"]);
    assert_eq!(stored.registration_id, reg.client.registration_id);
    e.heal().await;

    // A cancellation the store refuses cancels nothing.
    let mut cancel = ClientRequest::b2b("Lab results sync", "mailto:ops@lab.example", &[]);
    cancel.grant_types = vec![];
    let cancel = || {
        app()
            .registration_request(&format!("{BASE}/register"), &cancel, now())
            .unwrap()
            .to_string()
            .into_bytes()
    };
    let from = e.last_seq().await;
    e.break_writes("DELETE", "records", "OLD.collection = 'udap_clients'")
        .await;
    let err = e.udap.register(&cancel(), LOCAL).await.unwrap_err();
    assert_server_error(&err);
    assert_eq!(e.audited_since(from).await, attempted_and_failed);
    assert!(e.udap.server().client(&id).await.unwrap().is_some());
    // The app still gets tokens under its one registration.
    e.live_token(&id).await;
    e.heal().await;

    // With the database back, the update and the cancellation go through.
    let updated = e.udap.register(&statement(&wider), LOCAL).await.unwrap();
    assert_eq!((updated.status(), &updated.client.client_id), (200, &id));
    assert_eq!(updated.client.metadata.scopes, wider);
    let cancelled = e.udap.register(&cancel(), LOCAL).await.unwrap();
    assert_eq!(
        cancelled.outcome,
        careconnect_authz::udap::RegistrationOutcome::Cancelled
    );
    assert!(e.udap.server().client(&id).await.unwrap().is_none());
}

#[tokio::test]
async fn a_token_the_store_refuses_is_not_handed_out() {
    let e = env().await;
    let reg = e.register(&["system/Patient.read"]).await;
    let from = e.last_seq().await;
    e.break_writes("INSERT", "records", "NEW.collection = 'udap_tokens'")
        .await;
    let form = token_form(&reg.client.client_id);
    let err = e.udap.token(&form, LOCAL).await.unwrap_err();
    assert_server_error(&err);
    assert_eq!(e.rows("udap_tokens").await, 0);
    assert_eq!(
        e.audited_since(from).await,
        [
            ("udap_token".to_owned(), Outcome::Allowed),
            ("udap_token".to_owned(), Outcome::Failed),
        ]
    );
    e.heal().await;
    // The failed assertion is spent; a fresh one gets a token.
    let replay = e.udap.token(&form, LOCAL).await.unwrap_err();
    assert!(replay.description().contains("replay"), "{replay:?}");
    e.live_token(&reg.client.client_id).await;
}
