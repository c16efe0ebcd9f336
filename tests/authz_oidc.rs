//! OpenID Connect login end to end against a certified third-party provider
//! on loopback (npm `oidc-provider`, started by `scripts/oidc-provider.sh`):
//! the test plays the browser over HTTP (the provider's own login and consent
//! forms), the relying party validates everything, the role mapper and the
//! stored assignments give the roles, and a session is stored in SQLite.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a failing test panics

mod oidc_common;

use std::sync::Arc;

use careconnect::authz::mapper::{RoleAssignments, RoleMapper, parse_roles};
use careconnect::authz::oidc::{Callback, LoginStart, OidcConfig, OidcError, RelyingParty};
use careconnect::authz::session::{SessionConfig, Sessions, SystemClock};
use careconnect::authz::{AuthzError, Principal};
use careconnect::crypto::Keyring;
use careconnect::storage::{RecordStore, SqliteStore};
use oidc_common::{REDIRECT, callback_of, headless_login, token_request};

fn issuer() -> String {
    std::env::var("CARECONNECT_OIDC_ISSUER").unwrap_or_else(|_| "http://127.0.0.1:4000".into())
}

async fn rp() -> RelyingParty {
    let config = OidcConfig::new(issuer(), "careconnect-test", REDIRECT)
        .with_secret("careconnect-test-secret");
    let mut config = config;
    config.scopes.push("roles".into());
    RelyingParty::discover(config).await.unwrap_or_else(|e| {
        panic!(
            "no OpenID provider at {} ({e}): run scripts/test.sh, which starts one",
            issuer()
        )
    })
}

const ROLES: &str = r#"
    [[rule]]
    group = "clinicians"
    roles = ["doctor"]

    [[rule]]
    email = "alice@example.test"
    roles = ["patient"]

    [[rule]]
    email_domain = "stjohns.example"
    roles = ["finance"]
"#;

#[tokio::test]
async fn login_with_oidc_provider_gives_the_mapped_roles_and_a_session() {
    let rp = rp().await;
    let mapper = RoleMapper::from_toml(ROLES).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn RecordStore> = Arc::new(
        SqliteStore::open(&dir.path().join("authz.db"))
            .await
            .unwrap(),
    );
    let keys = Keyring::generate();
    let assignments = RoleAssignments::new(store.clone(), keys.clone()).unwrap();
    let sessions =
        Sessions::new(store, keys, SessionConfig::default(), Arc::new(SystemClock)).unwrap();

    // dr-grey: groups claim -> doctor; verified stjohns.example -> finance;
    // a stored assignment (by issuer + subject) -> admin.
    let start = rp.begin().unwrap();
    let cb = headless_login(&start.url, "dr-grey").await;
    let claims = complete(&rp, &start, &callback_of(&cb)).await.unwrap();
    assert_eq!(claims.user.issuer(), issuer());
    assert_eq!(claims.user.subject(), "dr-grey");
    assert_eq!(claims.groups, vec!["clinicians"]);
    assert_eq!(
        mapper
            .roles(&claims, &assignments)
            .await
            .unwrap()
            .to_string(),
        "doctor,finance"
    );
    assignments
        .set(&claims.user, parse_roles(["admin"]).unwrap())
        .await
        .unwrap();
    let roles = mapper.roles(&claims, &assignments).await.unwrap();
    assert_eq!(roles.to_string(), "doctor,finance,admin");

    let (id, _) = sessions
        .login(None, Principal::new(claims.user.clone(), roles))
        .await
        .unwrap();
    let live = sessions.get(&id).await.unwrap().unwrap();
    assert_eq!(live.user, claims.user);
    assert_eq!(live.roles, roles);

    // A patient by exact verified e-mail.
    let start = rp.begin().unwrap();
    let cb = headless_login(&start.url, "p-alice").await;
    let alice = complete(&rp, &start, &callback_of(&cb)).await.unwrap();
    assert_eq!(
        mapper
            .roles(&alice, &assignments)
            .await
            .unwrap()
            .to_string(),
        "patient"
    );

    // An unverified address at the clinic's domain gets nothing.
    let start = rp.begin().unwrap();
    let cb = headless_login(&start.url, "mallory").await;
    let mallory = complete(&rp, &start, &callback_of(&cb)).await.unwrap();
    assert!(!mallory.email_verified);
    assert!(
        mapper
            .roles(&mallory, &assignments)
            .await
            .unwrap()
            .is_empty()
    );
}

/// The callback as the browser that started `start` delivers it.
async fn complete(
    rp: &RelyingParty,
    start: &LoginStart,
    cb: &Callback,
) -> Result<careconnect::authz::mapper::Claims, AuthzError> {
    rp.complete_in_browser(cb, Some(&start.cookie_header()))
        .await
}

fn oidc_err(r: Result<impl std::fmt::Debug, AuthzError>) -> OidcError {
    match r.unwrap_err() {
        AuthzError::Oidc(e) => e,
        other => panic!("expected an OIDC error, got {other:?}"),
    }
}

#[tokio::test]
async fn replayed_state_reused_code_and_bad_callbacks_are_refused() {
    let rp = rp().await;
    let start = rp.begin().unwrap();
    let cb = callback_of(&headless_login(&start.url, "p-alice").await);
    complete(&rp, &start, &cb).await.unwrap();

    // The same callback again: the state was single use.
    assert!(matches!(
        oidc_err(complete(&rp, &start, &cb).await),
        OidcError::UnknownState
    ));

    // The used code under a fresh login: the provider refuses it.
    let fresh = rp.begin().unwrap();
    let reused = Callback {
        state: fresh.state.clone(),
        ..cb.clone()
    };
    assert!(matches!(
        oidc_err(complete(&rp, &fresh, &reused).await),
        OidcError::CodeRejected(_)
    ));

    // A forged state: not the one the browser's cookie holds.
    let fresh = rp.begin().unwrap();
    let forged = Callback {
        state: "forged".into(),
        ..cb.clone()
    };
    assert!(matches!(
        oidc_err(complete(&rp, &fresh, &forged).await),
        OidcError::BrowserMismatch
    ));

    // The provider's error, and a callback claiming another issuer (mix-up).
    let s = rp.begin().unwrap();
    let denied = Callback {
        state: s.state.clone(),
        code: None,
        iss: None,
        error: Some("access_denied".into()),
    };
    assert!(matches!(
        oidc_err(complete(&rp, &s, &denied).await),
        OidcError::Provider(_)
    ));
    let s = rp.begin().unwrap();
    let cb2 = callback_of(&headless_login(&s.url, "p-alice").await);
    let mixed = Callback {
        iss: Some("https://evil.example".into()),
        ..cb2.clone()
    };
    assert!(matches!(
        oidc_err(complete(&rp, &s, &mixed).await),
        OidcError::IssuerMismatch
    ));
    // oidc-provider advertises authorization_response_iss_parameter_supported:
    // without `iss` the callback is refused (RFC 9207 §2.4).
    let s = rp.begin().unwrap();
    let cb3 = callback_of(&headless_login(&s.url, "p-alice").await);
    assert!(cb3.iss.is_some(), "the provider sends iss");
    let stripped = Callback { iss: None, ..cb3 };
    assert!(matches!(
        oidc_err(complete(&rp, &s, &stripped).await),
        OidcError::IssuerMissing
    ));
}

#[tokio::test]
async fn the_provider_enforces_pkce() {
    // Codes obtained through our RP's authorization URL, redeemed by hand:
    // without a verifier, and with a wrong one. Both refused.
    let rp = rp().await;
    for verifier in [None, Some("x".repeat(64))] {
        let start = rp.begin().unwrap();
        let cb = callback_of(&headless_login(&start.url, "p-alice").await);
        let status = token_request(
            &format!("{}/token", issuer()),
            cb.code.as_deref().unwrap(),
            verifier.as_deref(),
            ("careconnect-test", "careconnect-test-secret"),
        )
        .await;
        assert_eq!(status, 400, "verifier {verifier:?}");
    }
}
