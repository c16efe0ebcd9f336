//! Abuse beyond one request: rows forged straight into the database, and
//! floods of sign-ins and uploads. Nothing forged opens, nothing floods
//! storage, and the server keeps serving.

use std::path::{Path, PathBuf};
use std::time::Duration;

use careconnect::storage::{Collection, RecordStore, RowData, SqliteStore};
use reqwest::StatusCode;

use crate::common::{Demo, files_under, pdf};
use crate::http::{PAGES, USERS};

/// The clinic's SQLite file under the demo's data directory.
fn database(dir: &Path) -> PathBuf {
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "db") {
                return p;
            }
        }
    }
    panic!("no database under {}", dir.display())
}

/// Every row of `coll` gets the sealed bytes of the next one (the last
/// gets the first's): each row then holds someone else's, valid, envelope.
async fn rotate_envelopes(db: &SqliteStore, coll: &str) -> usize {
    let coll = Collection::new(coll).unwrap();
    let rows = db.list(&coll, None, 1000).await.unwrap().rows;
    assert!(rows.len() >= 2, "{coll:?}: {} rows", rows.len());
    for (i, row) in rows.iter().enumerate() {
        let donor = &rows[(i + 1) % rows.len()];
        let forged = RowData {
            key_id: donor.key_id,
            envelope: donor.envelope.clone(),
            indexes: row.indexes.clone(),
        };
        db.update(&coll, &row.id, row.version, forged)
            .await
            .unwrap();
    }
    rows.len()
}

/// Each page's status for `user` in a fresh sign-in.
async fn statuses(demo: &Demo, user: &str) -> Vec<u16> {
    let s = demo.login(user).await;
    let mut v = Vec::new();
    for page in PAGES {
        v.push(s.get(page).await.status().as_u16());
    }
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_forged_in_the_database_give_no_one_a_session_or_a_role() {
    let mut demo = Demo::start().await;
    let alice = demo.login("patient-alice").await;
    let adam = demo.login("admin-adam").await;
    assert_eq!(alice.get("/careconnect").await.status(), StatusCode::OK);
    assert_eq!(adam.get("/admin").await.status(), StatusCode::OK);
    let mut before = Vec::new();
    for user in USERS {
        before.push(statuses(&demo, user).await);
    }
    let db = SqliteStore::open(&database(demo.dir.path())).await.unwrap();

    // Each session row now holds another session's sealed bytes (an
    // administrator's among them): once the node reads its sessions again,
    // every one of those cookies signs no one in.
    rotate_envelopes(&db, careconnect::authz::session::SESSIONS_COLLECTION).await;
    tokio::time::sleep(careconnect_web_demo::SESSION_RECHECK + Duration::from_millis(200)).await;
    for (who, s) in [("alice", &alice), ("adam", &adam)] {
        for page in PAGES {
            assert_eq!(
                s.get(page).await.status(),
                StatusCode::UNAUTHORIZED,
                "{who} {page}"
            );
        }
    }

    // Each stored role assignment now holds another person's: once the
    // stored roles are read again, no one has a page they did not have,
    // and nothing answers 500.
    rotate_envelopes(&db, careconnect::authz::mapper::ASSIGNMENTS_COLLECTION).await;
    tokio::time::sleep(careconnect::core::clinic::ROLES_RECHECK + Duration::from_millis(200)).await;
    for (user, was) in USERS.iter().zip(&before) {
        let now = statuses(&demo, user).await;
        for ((page, was), now) in PAGES.iter().zip(was).zip(&now) {
            assert!([200, 401, 403, 404].contains(now), "{user} {page}: {now}");
            assert!(*now != 200 || *was == 200, "{user} gained {page}");
        }
    }
    let adam = demo.login("admin-adam").await;
    assert_eq!(adam.get("/admin").await.status(), StatusCode::FORBIDDEN);
    db.close().await;
    demo.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn floods_of_sign_ins_and_uploads_store_nothing_and_the_server_keeps_serving() {
    let mut demo = Demo::start_with(|s| s.limits.body_idle_secs = 2).await;
    let grey = demo.login("doctor-grey").await;
    let db = SqliteStore::open(&database(demo.dir.path())).await.unwrap();
    let sessions = Collection::new(careconnect::authz::session::SESSIONS_COLLECTION).unwrap();
    let count = |db: SqliteStore, coll: Collection| async move {
        db.list(&coll, None, 1000).await.unwrap().rows.len()
    };
    let sessions_before = count(db.clone(), sessions.clone()).await;

    // 2,000 sign-in starts from 50 clients at once: each is a redirect to
    // the provider whose state lives in a sealed cookie, never a stored row.
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..50 {
        let (client, url) = (demo.client(), demo.at("/login"));
        set.spawn(async move {
            let mut seen = Vec::new();
            for _ in 0..40 {
                seen.push(client.get(&url).send().await.unwrap().status().as_u16());
            }
            seen
        });
    }
    while let Some(seen) = set.join_next().await {
        assert!(
            seen.unwrap().iter().all(|s| *s == 303),
            "a sign-in start failed"
        );
    }
    assert_eq!(count(db.clone(), sessions.clone()).await, sessions_before);

    // Uploads that start and then stall, one user's (review finding 12):
    // the file part stalls, or the token field is left unfinished. One
    // user holds at most 2 upload slots (the rest of theirs are turned
    // away at once), so another user's upload goes through meanwhile, and
    // the body deadline ends the stalled ones.
    let blobs = demo.dir.path().join("blobs");
    let (docs_before, files_before) = (grey.documents().await.len(), files_under(&blobs));
    let stalled = |name: String, token_cut: bool| {
        let boundary = "StAlLeD";
        let mut head = grey.upload_head(boundary, &name);
        if token_cut {
            head = format!(
                "--{boundary}\r\nContent-Disposition: form-data; name=\"csrf\"\r\n\r\n{}",
                &grey.csrf[..4]
            )
            .into_bytes();
        }
        let head: Result<Vec<u8>, std::io::Error> = Ok(head);
        let body = futures::stream::iter([head]).chain(futures::stream::pending());
        grey.client
            .post(format!("{}/medicloud/upload", demo.url))
            .header(
                "content-type",
                format!("multipart/form-data; boundary={boundary}"),
            )
            .body(reqwest::Body::wrap_stream(body))
            .send()
    };
    use futures::StreamExt as _;
    let mut holding = tokio::task::JoinSet::new();
    for i in 0..16 {
        holding.spawn(stalled(format!("stalled-{i}.pdf"), i % 2 == 0));
    }
    // 14 of grey's 16 are turned away at once.
    let mut busy = 0;
    while busy < 14 {
        let r = holding.join_next().await.unwrap().unwrap().unwrap();
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
        busy += 1;
    }
    // Another user uploads meanwhile.
    let shepherd = demo.login("doctor-shepherd").await;
    let r = shepherd.upload("meanwhile.pdf", pdf(4096)).await;
    assert_eq!(r.status(), StatusCode::SEE_OTHER, "another user's upload");
    // The server still serves everything else meanwhile.
    assert_eq!(grey.get("/medrecords").await.status(), StatusCode::OK);
    // The two held are ended by the body deadline, not by the client.
    while let Some(r) = holding.join_next().await {
        let r = r.unwrap().unwrap();
        assert!(
            r.status().is_client_error(),
            "a stalled upload ended with {}",
            r.status()
        );
    }
    holding.abort_all();
    while holding.join_next().await.is_some() {}
    let (mut stored, mut said) = (StatusCode::SERVICE_UNAVAILABLE, String::new());
    for _ in 0..300 {
        let r = grey.upload("after.pdf", pdf(4096)).await;
        stored = r.status();
        if stored != StatusCode::SERVICE_UNAVAILABLE {
            said = r.text().await.unwrap_or_default();
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(stored, StatusCode::SEE_OTHER, "slots come back: {said}");
    assert_eq!(grey.documents().await.len(), docs_before + 1);
    // Only the two stored documents' blobs were added (the stalled ones'
    // are collected as they fail).
    let mut files = files_under(&blobs);
    for _ in 0..300 {
        if files == files_before + 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        files = files_under(&blobs);
    }
    assert_eq!(files, files_before + 2);
    db.close().await;
    demo.stop().await;
}

/// Review finding 18: with the audit log cut behind the server's back,
/// every audited action is refused (fail closed, as before), but an
/// administrator now sees what `verify` found and the recovery procedure
/// instead of a bare 500, and everyone else a page that says what is
/// wrong.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_audit_log_shows_administrators_the_break_and_the_way_back() {
    let mut demo = Demo::start().await;
    let adam = demo.login("admin-adam").await;
    let alice = demo.login("patient-alice").await;
    assert_eq!(adam.get("/admin").await.status(), StatusCode::OK);
    let db =
        sqlx::SqlitePool::connect(&format!("sqlite://{}", database(demo.dir.path()).display()))
            .await
            .unwrap();
    for sql in [
        "DROP TRIGGER audit_no_delete",
        "DELETE FROM audit WHERE seq > (SELECT MAX(seq) - 5 FROM audit)",
    ] {
        sqlx::query(sql).execute(&db).await.unwrap();
    }
    db.close().await;
    let r = adam.get("/admin").await;
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    let page = r.text().await.unwrap();
    assert!(page.contains("data-testid=\"audit-broken\""), "{page}");
    assert!(page.contains("re-anchor --reason"), "{page}");
    assert!(page.contains("Truncated"), "{page}");
    let r = alice.get("/careconnect").await;
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(r.text().await.unwrap().contains("audit log"));
    demo.stop().await;
}
