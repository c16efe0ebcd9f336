//! The main flow of each subsystem over real HTTPS, with the abuse beside
//! it: another user's ids, replays of a done action, oversized uploads.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use super::common::{Demo, files_under, ids, pdf};
use reqwest::StatusCode;

fn day_after_tomorrow() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let d = time::OffsetDateTime::from_unix_timestamp(i64::try_from(secs + 2 * 86_400).unwrap())
        .unwrap()
        .date();
    format!("{:04}-{:02}-{:02}", d.year(), u8::from(d.month()), d.day())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn careconnect_book_cancel_and_pay() {
    let mut demo = Demo::start().await;
    let bob = demo.login("patient-bob").await;
    let alice = demo.login("patient-alice").await;
    let date = day_after_tomorrow();
    let book = [
        ("doctor", "doctor-grey"),
        ("date", date.as_str()),
        ("time", "10:00"),
        ("reason", "Blood pressure check"),
    ];
    assert_eq!(
        bob.post("/careconnect/appointments", &book).await.status(),
        StatusCode::SEE_OTHER
    );
    // The same slot again, for anyone: taken.
    assert_eq!(
        alice
            .post("/careconnect/appointments", &book)
            .await
            .status(),
        StatusCode::CONFLICT
    );
    // Outside opening hours, an unknown doctor, a malformed date: 400, nothing booked.
    for (k, v) in [
        ("time", "03:00"),
        ("doctor", "patient-alice"),
        ("date", "2026-02-31"),
    ] {
        let mut f = book.to_vec();
        f.retain(|(x, _)| *x != k);
        f.push((k, v));
        let s = bob.post("/careconnect/appointments", &f).await.status();
        assert!(
            s == StatusCode::BAD_REQUEST || s == StatusCode::CONFLICT,
            "{k}={v}: {s}"
        );
    }
    let page = bob.page("/careconnect").await;
    assert!(page.contains("Blood pressure check"));
    let cancels = ids(&page, "/careconnect/appointments/", "/cancel");
    assert_eq!(cancels.len(), 2, "the seeded appointment and the new one");
    // Alice cannot cancel Bob's appointment, nor see that it exists.
    for id in &cancels {
        let r = alice
            .post(&format!("/careconnect/appointments/{id}/cancel"), &[])
            .await;
        assert_eq!(r.status(), StatusCode::NOT_FOUND);
    }
    assert_eq!(
        ids(
            &bob.page("/careconnect").await,
            "/careconnect/appointments/",
            "/cancel"
        ),
        cancels
    );
    for id in &cancels {
        let r = bob
            .post(&format!("/careconnect/appointments/{id}/cancel"), &[])
            .await;
        assert_eq!(r.status(), StatusCode::SEE_OTHER);
    }
    assert!(
        ids(
            &bob.page("/careconnect").await,
            "/careconnect/appointments/",
            "/cancel"
        )
        .is_empty()
    );

    // Pay: the prescription turns paid, finance sees a pseudonymous transaction.
    let unpaid = ids(
        &bob.page("/careconnect").await,
        "/careconnect/prescriptions/",
        "/pay",
    );
    assert_eq!(unpaid.len(), 1);
    let pay = format!("/careconnect/prescriptions/{}/pay", unpaid[0]);
    assert_eq!(bob.post(&pay, &[]).await.status(), StatusCode::SEE_OTHER);
    assert!(bob.page("/careconnect").await.contains("badge paid"));
    let fiona = demo.login("finance-fiona").await;
    let fin = fiona.page("/fincare").await;
    assert!(fin.contains("P-"), "pseudonyms");
    assert!(
        !fin.contains("Bob") && !fin.contains("Amlodipine"),
        "no names, no drugs"
    );
    let csv = fiona.get("/fincare/transactions.csv").await;
    assert_eq!(csv.status(), StatusCode::OK);
    assert!(
        csv.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/csv")
    );
    assert!(
        csv.headers()["content-disposition"]
            .to_str()
            .unwrap()
            .starts_with("attachment")
    );
    let text = csv.text().await.unwrap();
    assert_eq!(
        text.lines().count(),
        3,
        "a header and two payments:\n{text}"
    );
    assert!(!text.contains("Bob") && !text.contains("patient-"));
    // A filter that excludes everything, and a malformed one.
    let none = fiona
        .get("/fincare/transactions.csv?from=2001-01-01&to=2001-01-02")
        .await;
    assert_eq!(none.text().await.unwrap().lines().count(), 1);
    assert_eq!(
        fiona.get("/fincare?from=yesterday").await.status(),
        StatusCode::BAD_REQUEST
    );
    demo.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn medrecords_notes_break_glass_and_eps() {
    let mut demo = Demo::start().await;
    let grey = demo.login("doctor-grey").await;
    let list = grey.page("/medrecords").await;
    assert!(list.contains("/medrecords/patients/patient-alice"));
    assert!(!list.contains("patient-carol"), "Carol is Dr Shepherd's");
    assert_eq!(
        grey.get("/medrecords/patients/patient-carol")
            .await
            .status(),
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        grey.post(
            "/medrecords/patients/patient-carol/notes",
            &[("text", "sneaky")]
        )
        .await
        .status(),
        StatusCode::FORBIDDEN
    );
    let not_in_care = [
        ("patient", "patient-carol"),
        ("drug", "Ramipril"),
        ("dosage", "2.5 mg"),
        ("frequency", "once daily"),
    ];
    assert_eq!(
        grey.post("/eps/prescriptions", &not_in_care).await.status(),
        StatusCode::FORBIDDEN
    );
    // Notes are appended; a correction names the note it amends.
    let notes = "/medrecords/patients/patient-alice/notes";
    assert_eq!(
        grey.post(notes, &[("text", "Wheeze on exertion.")])
            .await
            .status(),
        StatusCode::SEE_OTHER
    );
    assert_eq!(
        grey.post(
            notes,
            &[("text", "Correction: mild wheeze."), ("amends", "2")]
        )
        .await
        .status(),
        StatusCode::SEE_OTHER
    );
    assert_eq!(
        grey.post(notes, &[("text", "x"), ("amends", "two")])
            .await
            .status(),
        StatusCode::BAD_REQUEST
    );
    let record = grey.page("/medrecords/patients/patient-alice").await;
    for want in [
        "Seasonal asthma",
        "Wheeze on exertion.",
        "Correction: mild wheeze.",
        "corrects #2",
    ] {
        assert!(record.contains(want), "{want}");
    }
    let alice = demo.login("patient-alice").await;
    assert!(
        alice
            .page("/careconnect")
            .await
            .contains("Correction: mild wheeze.")
    );
    // HTML in a note is text.
    grey.post(notes, &[("text", "<script>alert(1)</script>")])
        .await;
    assert!(
        grey.page("/medrecords/patients/patient-alice")
            .await
            .contains("&lt;script&gt;")
    );

    // Break-glass: a reason is required; then Carol's record opens, audited.
    let bg = "/medrecords/break-glass";
    assert_eq!(
        grey.post(bg, &[("patient", "patient-carol"), ("reason", "short")])
            .await
            .status(),
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        grey.post(
            bg,
            &[
                ("patient", "patient-carol"),
                ("reason", "Unconscious in A&E, allergy check")
            ]
        )
        .await
        .status(),
        StatusCode::SEE_OTHER
    );
    assert!(
        grey.page("/medrecords/patients/patient-carol")
            .await
            .contains("latex")
    );
    let adam = demo.login("admin-adam").await;
    let admin = adam.page("/admin").await;
    assert!(admin.contains("Unconscious in A&amp;E, allergy check"));

    // EPS: prescribe for a patient in care, see it signed, cancel it.
    let rx = [
        ("patient", "patient-bob"),
        ("drug", "Ramipril"),
        ("dosage", "2.5 mg"),
        ("frequency", "once daily"),
        ("notes", ""),
    ];
    assert_eq!(
        grey.post("/eps/prescriptions", &rx).await.status(),
        StatusCode::SEE_OTHER
    );
    let eps = grey.page("/eps").await;
    assert!(eps.contains("Ramipril") && eps.contains("sig-ok"));
    let cancels = ids(&eps, "/eps/prescriptions/", "/cancel");
    assert!(!cancels.is_empty());
    let shepherd = demo.login("doctor-shepherd").await;
    for id in &cancels {
        let s = shepherd
            .post(&format!("/eps/prescriptions/{id}/cancel"), &[])
            .await
            .status();
        assert!(
            s == StatusCode::NOT_FOUND || s == StatusCode::FORBIDDEN,
            "another doctor's: {s}"
        );
    }
    let first = format!("/eps/prescriptions/{}/cancel", cancels[0]);
    assert_eq!(grey.post(&first, &[]).await.status(), StatusCode::SEE_OTHER);
    assert_eq!(
        grey.post(&first, &[]).await.status(),
        StatusCode::CONFLICT,
        "cancelled twice"
    );
    demo.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn medicloud_upload_download_share_revoke_delete() {
    let mut demo = Demo::start_with(|s| s.max_upload_bytes = Some(1 << 20)).await;
    let grey = demo.login("doctor-grey").await;
    let pat = demo.login("partner-pat").await;
    let bytes = pdf(300_000);
    assert_eq!(
        grey.upload("scan of ../../etc/passwd.pdf", bytes.clone())
            .await
            .status(),
        StatusCode::SEE_OTHER
    );
    let page = grey.page("/medicloud").await;
    let docs = ids(&page, "/medicloud/documents/", "/share");
    assert_eq!(docs.len(), 1);
    let doc = &docs[0];
    let r = grey.get(&format!("/medicloud/documents/{doc}")).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["content-type"], "application/pdf");
    let cd = r.headers()["content-disposition"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        cd.starts_with("attachment; filename=\"") && !cd.contains('/'),
        "{cd}"
    );
    assert_eq!(r.bytes().await.unwrap().as_ref(), bytes.as_slice());

    // Not shared: the partner sees nothing, by any route.
    assert_eq!(
        pat.get(&format!("/medicloud/documents/{doc}"))
            .await
            .status(),
        StatusCode::NOT_FOUND
    );
    assert!(!pat.page("/medicloud").await.contains(doc.as_str()));
    for action in ["share", "revoke", "delete"] {
        let r = pat
            .post(
                &format!("/medicloud/documents/{doc}/{action}"),
                &[("user", "partner-pat")],
            )
            .await;
        assert_eq!(r.status(), StatusCode::NOT_FOUND, "{action} by a stranger");
    }
    // Shared: the partner downloads the same bytes; revoked: gone again.
    assert_eq!(
        grey.post(
            &format!("/medicloud/documents/{doc}/share"),
            &[("user", "partner-pat"), ("days", "7")]
        )
        .await
        .status(),
        StatusCode::SEE_OTHER
    );
    let r = pat.get(&format!("/medicloud/documents/{doc}")).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.bytes().await.unwrap().as_ref(), bytes.as_slice());
    assert_eq!(
        pat.post(&format!("/medicloud/documents/{doc}/delete"), &[])
            .await
            .status(),
        StatusCode::NOT_FOUND,
        "a reader may not delete"
    );
    assert_eq!(
        grey.post(
            &format!("/medicloud/documents/{doc}/revoke"),
            &[("user", "partner-pat")]
        )
        .await
        .status(),
        StatusCode::SEE_OTHER
    );
    assert_eq!(
        pat.get(&format!("/medicloud/documents/{doc}"))
            .await
            .status(),
        StatusCode::NOT_FOUND
    );

    // Too large: 413, nothing stored. Not a PDF: 400. No token: 403.
    let blobs = demo.dir.path().join("blobs");
    let before = files_under(&blobs);
    assert_eq!(
        grey.upload("big.pdf", pdf(2 << 20)).await.status(),
        StatusCode::PAYLOAD_TOO_LARGE
    );
    assert_eq!(
        grey.upload("run.pdf", b"MZ\x90\x00 not a pdf".to_vec())
            .await
            .status(),
        StatusCode::BAD_REQUEST
    );
    let no_token = reqwest::multipart::Form::new().part(
        "file",
        reqwest::multipart::Part::bytes(pdf(1000)).file_name("a.pdf"),
    );
    let r = grey
        .client
        .post(format!("{}/medicloud/upload", demo.url))
        .multipart(no_token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    assert_eq!(files_under(&blobs), before, "a refused upload left a blob");
    assert_eq!(grey.documents().await, docs);

    assert_eq!(
        grey.post(&format!("/medicloud/documents/{doc}/delete"), &[])
            .await
            .status(),
        StatusCode::SEE_OTHER
    );
    assert_eq!(
        grey.get(&format!("/medicloud/documents/{doc}"))
            .await
            .status(),
        StatusCode::NOT_FOUND
    );
    demo.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_roles_care_audit_and_erasure() {
    let mut demo = Demo::start().await;
    let adam = demo.login("admin-adam").await;
    let page = adam.page("/admin").await;
    assert!(page.contains("Chain verified"), "the audit chain verifies");
    assert!(page.contains("Dr Meredith Grey"));
    // Dr Shepherd takes Bob into care; he sees Bob at once.
    let care = [
        ("doctor", "doctor-shepherd"),
        ("patient", "patient-bob"),
        ("op", "assign"),
    ];
    assert_eq!(
        adam.post("/admin/care", &care).await.status(),
        StatusCode::SEE_OTHER
    );
    let shepherd = demo.login("doctor-shepherd").await;
    assert!(shepherd.page("/medrecords").await.contains("patient-bob"));
    let mut end = care.to_vec();
    end[2] = ("op", "revoke");
    assert_eq!(
        adam.post("/admin/care", &end).await.status(),
        StatusCode::SEE_OTHER
    );
    assert!(!shepherd.page("/medrecords").await.contains("patient-bob"));
    assert_eq!(
        adam.post(
            "/admin/care",
            &[("doctor", "a"), ("patient", "b"), ("op", "steal")]
        )
        .await
        .status(),
        StatusCode::BAD_REQUEST
    );
    // Roles: a new finance clerk; an unknown role is refused.
    let person = [
        ("subject", "finance-frank"),
        ("name", "Frank Till"),
        ("roles", "finance"),
    ];
    assert_eq!(
        adam.post("/admin/people", &person).await.status(),
        StatusCode::SEE_OTHER
    );
    assert!(adam.page("/admin").await.contains("Frank Till"));
    let bad = [("subject", "x"), ("name", "X"), ("roles", "superuser")];
    assert_eq!(
        adam.post("/admin/people", &bad).await.status(),
        StatusCode::BAD_REQUEST
    );
    // A non-admin posting admin forms: refused by the clinic, audited.
    let grey = demo.login("doctor-grey").await;
    let mut promote = person.to_vec();
    promote[0] = ("subject", "doctor-grey");
    promote[2] = ("roles", "admin");
    assert_eq!(
        grey.post("/admin/people", &promote).await.status(),
        StatusCode::FORBIDDEN
    );
    // Erasure: the id twice; afterwards Carol's record is gone for good.
    let erase = [
        ("patient", "patient-carol"),
        ("confirm", "patient-carl"),
        ("reason", "Patient asked to be forgotten"),
    ];
    assert_eq!(
        adam.post("/admin/erase", &erase).await.status(),
        StatusCode::BAD_REQUEST
    );
    let mut ok = erase.to_vec();
    ok[1] = ("confirm", "patient-carol");
    assert_eq!(
        adam.post("/admin/erase", &ok).await.status(),
        StatusCode::SEE_OTHER
    );
    // Her care rows went with her: her doctor is refused; an
    // administrator's override finds nothing.
    let shepherd = demo.login("doctor-shepherd").await;
    assert_eq!(
        shepherd
            .get("/medrecords/patients/patient-carol")
            .await
            .status(),
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        adam.get("/medrecords/patients/patient-carol")
            .await
            .status(),
        StatusCode::NOT_FOUND
    );
    let page = adam.page("/admin").await;
    assert!(page.contains("Chain verified"));
    let latest = super::common::between(&page, "data-testid=\"latest\" href=\"", "\"").unwrap();
    let tail = adam.page(&latest.replace("#audit", "")).await;
    assert!(
        tail.contains("ErasePatient"),
        "the erasure is in the audit log"
    );
    demo.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_cut_off_half_way_stores_nothing() {
    let mut demo = Demo::start_with(|s| s.max_upload_bytes = Some(8 << 20)).await;
    let grey = demo.login("doctor-grey").await;
    let blobs = demo.dir.path().join("blobs");
    let before = files_under(&blobs);
    // A multipart body that sends its token and 2 MiB of a PDF, then fails.
    let boundary = "XyZbOuNdArY";
    let mut chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        vec![Ok(grey.upload_head(boundary, "cut.pdf"))];
    for c in pdf(2 << 20).chunks(64 * 1024) {
        chunks.push(Ok(c.to_vec()));
    }
    chunks.push(Err(std::io::Error::other("the client goes away")));
    let body = reqwest::Body::wrap_stream(futures::stream::iter(chunks));
    let r = grey
        .client
        .post(format!("{}/medicloud/upload", demo.url))
        .header(
            "content-type",
            format!("multipart/form-data; boundary={boundary}"),
        )
        .body(body)
        .send()
        .await;
    assert!(
        r.is_err() || !r.unwrap().status().is_redirection(),
        "the cut upload was accepted"
    );
    // The upload task sees the feed end without its end marker and cleans up.
    let mut left = usize::MAX;
    for _ in 0..50 {
        left = files_under(&blobs);
        if left == before {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(left, before, "a cut upload left a blob or a temporary file");
    assert!(grey.documents().await.is_empty());
    demo.stop().await;
}
