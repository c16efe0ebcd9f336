//! The `web-demo` binary as an operator runs it: SIGTERM lets a request in
//! flight finish (its document is whole after a restart), refuses new
//! connections, and the process exits cleanly.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::{Duration, Instant};

use super::common::{Demo, pdf};
use futures::StreamExt;
use reqwest::StatusCode;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_the_upload_in_flight_then_exits() {
    let mut demo = Demo::spawn(None, &[]);
    let grey = demo.login("doctor-grey").await;
    let bytes = pdf(1 << 20);
    // The upload trickles: 16 pieces, 150 ms apart (about 2.4 s).
    let boundary = "TrIcKlE";
    let mut pieces = vec![grey.upload_head(boundary, "slow.pdf")];
    pieces.extend(bytes.chunks(bytes.len() / 16).map(<[u8]>::to_vec));
    pieces.push(format!("\r\n--{boundary}--\r\n").into_bytes());
    let body = futures::stream::iter(pieces).then(|p| async move {
        tokio::time::sleep(Duration::from_millis(150)).await;
        Ok::<_, std::io::Error>(p)
    });
    let client = grey.client.clone();
    let url = format!("{}/medicloud/upload", demo.url);
    let upload = tokio::spawn(async move {
        client
            .post(url)
            .header(
                "content-type",
                format!("multipart/form-data; boundary={boundary}"),
            )
            .body(reqwest::Body::wrap_stream(body))
            .send()
            .await
            .map(|r| r.status())
    });
    tokio::time::sleep(Duration::from_millis(700)).await;
    demo.terminate();
    let status = upload
        .await
        .unwrap()
        .expect("the upload in flight was cut off");
    assert_eq!(
        status,
        StatusCode::SEE_OTHER,
        "the upload in flight finished"
    );
    // The process ends by itself, cleanly.
    let mut child = demo.child.take().unwrap();
    let start = Instant::now();
    let exit = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "still running 30 s after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(exit.success(), "exit status {exit:?}");
    assert!(
        demo.client().get(demo.at("/healthz")).send().await.is_err(),
        "still accepting"
    );

    // Started again on the same data: the document is there, whole.
    let dir = std::mem::replace(&mut demo.dir, tempfile::tempdir().unwrap());
    let mut again = Demo::spawn(Some((dir, demo.issuer_port)), &[]);
    let grey = again.login("doctor-grey").await;
    let docs = grey.documents().await;
    assert_eq!(docs.len(), 1);
    let r = grey.get(&format!("/medicloud/documents/{}", docs[0])).await;
    assert_eq!(r.bytes().await.unwrap().as_ref(), bytes.as_slice());
    again.stop().await;
}
