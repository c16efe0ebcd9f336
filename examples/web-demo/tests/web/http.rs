//! The demo over real HTTPS: every route for every role, CSRF, methods,
//! limits, traversal, other users' ids, replays, and the main flow of each
//! subsystem.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use super::common::{Demo, ids};
use reqwest::StatusCode;

pub(crate) const USERS: [&str; 8] = [
    "patient-alice",
    "patient-bob",
    "patient-carol",
    "doctor-grey",
    "doctor-shepherd",
    "finance-fiona",
    "partner-pat",
    "admin-adam",
];

pub(crate) const PAGES: [&str; 7] = [
    "/careconnect",
    "/medrecords",
    "/eps",
    "/medicloud",
    "/fincare",
    "/fincare/transactions.csv",
    "/admin",
];

/// The expected status of each page (in `PAGES` order) for each user.
fn expected(user: &str) -> [u16; 7] {
    match user.split('-').next().unwrap() {
        //                 cc   mr   eps  mc   fin  csv  adm
        "patient" => [200, 403, 403, 403, 403, 403, 403],
        "doctor" => [403, 200, 200, 200, 403, 403, 403],
        "finance" => [403, 403, 403, 403, 200, 200, 403],
        "partner" => [403, 403, 403, 200, 403, 403, 403],
        "admin" => [404, 200, 200, 200, 200, 200, 200],
        other => panic!("{other}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_page_for_every_role_and_without_a_session() {
    let mut demo = Demo::start().await;
    let anon = demo.client();
    for page in PAGES {
        let r = anon.get(demo.at(page)).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "anonymous {page}");
    }
    let mut table = String::new();
    for user in USERS {
        let s = demo.login(user).await;
        let got: Vec<u16> = {
            let mut v = Vec::new();
            for page in PAGES {
                v.push(s.get(page).await.status().as_u16());
            }
            v
        };
        table.push_str(&format!("{user:<16} {got:?}\n"));
        assert_eq!(got, expected(user), "{user}: {PAGES:?}\n{table}");
    }
    let r = anon.get(demo.at("/nowhere")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    demo.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn security_headers_and_the_session_cookie() {
    let mut demo = Demo::start().await;
    let r = demo.client().get(demo.at("/")).send().await.unwrap();
    assert_eq!(r.version(), reqwest::Version::HTTP_2, "ALPN h2");
    let h = r.headers();
    assert!(
        h["strict-transport-security"]
            .to_str()
            .unwrap()
            .starts_with("max-age=")
    );
    let csp = h["content-security-policy"].to_str().unwrap();
    assert!(csp.contains("default-src 'none'") && csp.contains("frame-ancestors 'none'"));
    assert!(!csp.contains("unsafe-inline"));
    assert_eq!(h["x-content-type-options"], "nosniff");
    assert_eq!(h["referrer-policy"], "same-origin");
    assert_eq!(h["x-request-id"].len(), 16);

    // The login cookie and the session cookie: __Host-, Secure, HttpOnly, Lax.
    let c = demo.client();
    let r = c.get(demo.at("/login")).send().await.unwrap();
    let login_cookie = r.headers()["set-cookie"].to_str().unwrap().to_owned();
    for want in [
        "__Host-cc_login=",
        "Secure",
        "HttpOnly",
        "SameSite=Lax",
        "Path=/",
    ] {
        assert!(login_cookie.contains(want), "{want} in {login_cookie}");
    }
    demo.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sign_out_ends_the_session_and_a_replayed_callback_signs_no_one_in() {
    let mut demo = Demo::start().await;
    let alice = demo.login("patient-alice").await;
    assert!(alice.page("/").await.contains("patient-alice"));
    // The callback again, in the same browser and in another.
    let r = alice.client.get(&alice.callback).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    // In another browser, signed out: 401, decided before the query is
    // looked at.
    let r = demo.client().get(&alice.callback).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    // Sign-out needs the token too.
    assert_eq!(
        alice.post_raw("/logout", &[]).await.status(),
        StatusCode::FORBIDDEN
    );
    let r = alice.post("/logout", &[]).await;
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    assert_eq!(
        alice.get("/careconnect").await.status(),
        StatusCode::UNAUTHORIZED
    );
    demo.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_posts_change_nothing() {
    let mut demo = Demo::start().await;
    let bob = demo.login("patient-bob").await;
    let page = bob.page("/careconnect").await;
    let unpaid = ids(&page, "/careconnect/prescriptions/", "/pay");
    assert!(
        !unpaid.is_empty(),
        "the seed leaves Bob a prescription to pay"
    );
    let pay = format!("/careconnect/prescriptions/{}/pay", unpaid[0]);

    // No token, a wrong token, another origin, a GET: nothing is paid.
    assert_eq!(
        bob.post_raw(&pay, &[]).await.status(),
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        bob.post_raw(&pay, &[("csrf", "00")]).await.status(),
        StatusCode::FORBIDDEN
    );
    let alice = demo.login("patient-alice").await;
    assert_eq!(
        bob.post_raw(&pay, &[("csrf", &alice.csrf)]).await.status(),
        StatusCode::FORBIDDEN,
        "another session's token"
    );
    let r = bob
        .client
        .post(format!("{}{pay}", demo.url))
        .header("origin", "https://evil.example")
        .form(&[("csrf", bob.csrf.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    assert_eq!(bob.get(&pay).await.status(), StatusCode::METHOD_NOT_ALLOWED);
    // Another patient's prescription: not found, not paid.
    assert_eq!(alice.post(&pay, &[]).await.status(), StatusCode::NOT_FOUND);
    assert_eq!(
        ids(
            &bob.page("/careconnect").await,
            "/careconnect/prescriptions/",
            "/pay"
        ),
        unpaid,
        "nothing was paid"
    );
    // Now for real, then again: a conflict.
    assert_eq!(bob.post(&pay, &[]).await.status(), StatusCode::SEE_OTHER);
    assert_eq!(bob.post(&pay, &[]).await.status(), StatusCode::CONFLICT);
    demo.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_post_route_refuses_get_and_a_missing_token() {
    let mut demo = Demo::start().await;
    let adam = demo.login("admin-adam").await;
    for path in [
        "/logout",
        "/logout-everywhere",
        "/careconnect/appointments",
        "/careconnect/appointments/x/cancel",
        "/careconnect/prescriptions/x/pay",
        "/medrecords/break-glass",
        "/medrecords/patients/patient-alice/notes",
        "/eps/prescriptions",
        "/eps/prescriptions/x/cancel",
        "/medicloud/upload",
        "/medicloud/documents/x/share",
        "/medicloud/documents/x/revoke",
        "/medicloud/documents/x/delete",
        "/admin/people",
        "/admin/care",
        "/admin/erase",
    ] {
        assert_eq!(
            adam.get(path).await.status(),
            StatusCode::METHOD_NOT_ALLOWED,
            "GET {path}"
        );
        assert_eq!(
            adam.post_raw(path, &[]).await.status(),
            StatusCode::FORBIDDEN,
            "POST {path} without a token"
        );
    }
    demo.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traversal_in_any_parameter_reads_nothing() {
    let mut demo = Demo::start().await;
    let grey = demo.login("doctor-grey").await;
    for path in [
        "/medicloud/documents/..%2F..%2Fclinic.db",
        "/medicloud/documents/....%2F%2Fkms-root.key",
        "/medrecords/patients/..%2Fpatient-alice",
        "/medrecords/patients/%2e%2e",
        "/static/..%2FCargo.toml",
        "/static/../../Cargo.toml",
    ] {
        let r = grey.get(path).await;
        assert!(
            matches!(r.status(), StatusCode::NOT_FOUND | StatusCode::BAD_REQUEST),
            "{path}: {}",
            r.status()
        );
    }
    demo.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_role_taken_away_stops_working_in_the_live_session() {
    let mut demo = Demo::start().await;
    let grey = demo.login("doctor-grey").await;
    assert_eq!(grey.get("/medrecords").await.status(), StatusCode::OK);
    let adam = demo.login("admin-adam").await;
    let demote = [
        ("subject", "doctor-grey"),
        ("name", "Dr Meredith Grey"),
        ("roles", ""),
    ];
    assert_eq!(
        adam.post("/admin/people", &demote).await.status(),
        StatusCode::SEE_OTHER
    );
    // The same session, no new login: the doctor role is gone.
    assert_eq!(
        grey.get("/medrecords").await.status(),
        StatusCode::FORBIDDEN
    );
    assert!(!grey.page("/").await.contains("MedRecords"));
    let restore = [
        ("subject", "doctor-grey"),
        ("name", "Dr Meredith Grey"),
        ("roles", "doctor"),
    ];
    assert_eq!(
        adam.post("/admin/people", &restore).await.status(),
        StatusCode::SEE_OTHER
    );
    assert_eq!(grey.get("/medrecords").await.status(), StatusCode::OK);
    demo.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn links_from_other_sites_reach_only_the_start_page_and_sign_in() {
    let mut demo = Demo::start().await;
    let grey = demo.login("doctor-grey").await;
    let cross = |path: &str| {
        grey.client
            .get(format!("{}{path}", demo.url))
            .header("sec-fetch-site", "cross-site")
            .send()
    };
    for path in [
        "/medrecords/patients/patient-alice",
        "/fincare/transactions.csv",
        "/admin",
        "/medicloud",
    ] {
        assert_eq!(
            cross(path).await.unwrap().status(),
            StatusCode::FORBIDDEN,
            "{path}"
        );
    }
    for path in ["/", "/static/style.css", "/healthz"] {
        assert_eq!(
            cross(path).await.unwrap().status(),
            StatusCode::OK,
            "{path}"
        );
    }
    // Request ids are the server's own, whatever the client sends.
    let r = grey
        .client
        .get(demo.at("/healthz"))
        .header("x-request-id", "forged-by-the-client")
        .send()
        .await
        .unwrap();
    let id = r.headers()["x-request-id"].to_str().unwrap();
    assert!(
        id.len() == 16 && id.chars().all(|c| c.is_ascii_hexdigit()),
        "{id}"
    );
    demo.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probes() {
    let mut demo = Demo::start().await;
    let c = demo.client();
    assert_eq!(
        c.get(demo.at("/healthz")).send().await.unwrap().status(),
        StatusCode::OK
    );
    // Ready once the first background check has run.
    let mut ready = false;
    for _ in 0..50 {
        let r = c.get(demo.at("/readyz")).send().await.unwrap();
        if r.status() == StatusCode::OK {
            ready = true;
            break;
        }
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    assert!(ready, "/readyz never turned ready");
    demo.stop().await;
}

/// Review finding 13: the framework's error text reached users as
/// `400 text/plain` ("Failed to deserialize query string", "missing field
/// `state`", "Invalid UTF-8 in `id`"), and anonymous users got 400 where
/// they should have been asked to sign in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn framework_errors_never_reach_users_and_sign_in_is_decided_first() {
    let mut demo = Demo::start().await;
    let leaks = [
        "deserialize",
        "missing field",
        "UTF-8",
        "Failed to",
        "invalid type",
    ];
    let check = |what: &str, r: reqwest::Response, want: StatusCode| {
        let what = what.to_owned();
        async move {
            assert_eq!(r.status(), want, "{what}");
            let ctype = r.headers()[reqwest::header::CONTENT_TYPE]
                .to_str()
                .unwrap()
                .to_owned();
            assert!(ctype.starts_with("text/html"), "{what}: {ctype}");
            let body = r.text().await.unwrap();
            for leak in leaks {
                assert!(!body.contains(leak), "{what}: {body}");
            }
        }
    };
    let anon = demo.client();
    for path in [
        "/auth/callback",
        "/medicloud/documents/%FF",
        "/admin?from=abc",
        "/fincare?from=not-a-date",
        "/medrecords/patients/%FF",
    ] {
        let r = anon.get(demo.at(path)).send().await.unwrap();
        check(&format!("anonymous {path}"), r, StatusCode::UNAUTHORIZED).await;
    }
    let adam = demo.login("admin-adam").await;
    check(
        "admin ?from=abc",
        adam.get("/admin?from=abc").await,
        StatusCode::BAD_REQUEST,
    )
    .await;
    let grey = demo.login("doctor-grey").await;
    check(
        "doctor %FF",
        grey.get("/medicloud/documents/%FF").await,
        StatusCode::NOT_FOUND,
    )
    .await;
    // A method no route has: the generic page, with its Allow header.
    let r = grey
        .client
        .put(demo.at("/careconnect"))
        .send()
        .await
        .unwrap();
    assert!(r.headers().contains_key(reqwest::header::ALLOW));
    check("PUT", r, StatusCode::METHOD_NOT_ALLOWED).await;
    demo.stop().await;
}

/// Review finding 18: there was no "sign out everywhere".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sign_out_everywhere_ends_every_browsers_session() {
    let mut demo = Demo::start().await;
    let phone = demo.login("patient-alice").await;
    let laptop = demo.login("patient-alice").await;
    let bob = demo.login("patient-bob").await;
    assert_eq!(phone.get("/careconnect").await.status(), StatusCode::OK);
    assert_eq!(laptop.get("/careconnect").await.status(), StatusCode::OK);
    // Needs the token, like every POST.
    assert_eq!(
        phone.post_raw("/logout-everywhere", &[]).await.status(),
        StatusCode::FORBIDDEN
    );
    let r = phone.post("/logout-everywhere", &[]).await;
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    for s in [&phone, &laptop] {
        assert_eq!(
            s.get("/careconnect").await.status(),
            StatusCode::UNAUTHORIZED
        );
    }
    // Another user's session is untouched.
    assert_eq!(bob.get("/careconnect").await.status(), StatusCode::OK);
    demo.stop().await;
}
