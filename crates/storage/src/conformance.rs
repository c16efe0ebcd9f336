//! The backend conformance suite (feature `conformance`): one set of checks
//! that every backend must pass. Each check uses fresh collection and key
//! names, so it can run against a shared, non-empty database.
//!
//! Panics (with the failing check's name) on the first violation: it is
//! test code.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::io::AsyncReadExt;

use crate::{
    AuditLog, BlobId, BlobStore, Collection, IndexEntry, KeyStore, RecordStore, RowData, RowId,
    StorageError, Write,
};

static RUN: AtomicU64 = AtomicU64::new(0);

fn unique(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!(
        "{prefix}-{}-{nanos:x}-{}",
        std::process::id(),
        RUN.fetch_add(1, Ordering::SeqCst)
    )
}

fn coll() -> Collection {
    // Collections are at most 64 characters.
    let mut s = unique("c");
    s.truncate(64);
    Collection::new(s).unwrap()
}

fn id(i: usize) -> RowId {
    RowId::new(format!("row-{i:05}")).unwrap()
}

fn data(key_id: u32, body: &[u8]) -> RowData {
    RowData {
        key_id,
        envelope: body.to_vec(),
        indexes: vec![],
    }
}

/// Runs every check against `store`.
pub async fn run_all<S>(store: Arc<S>)
where
    S: RecordStore + AuditLog + KeyStore + ?Sized + 'static,
{
    crud(&*store).await;
    indexes(&*store).await;
    paging(&*store).await;
    key_scan(&*store).await;
    batches(&*store).await;
    batch_race(Arc::clone(&store)).await;
    cas_race(Arc::clone(&store)).await;
    no_lost_updates(Arc::clone(&store)).await;
    audit(Arc::clone(&store)).await;
    audit_chained(Arc::clone(&store)).await;
    keys(&*store).await;
}

/// Insert, get, duplicate, compare-and-swap update and delete, not found.
pub async fn crud<S: RecordStore + ?Sized>(s: &S) {
    let c = coll();
    let other = coll();
    let v = s.insert(&c, &id(1), data(7, b"one")).await.unwrap();
    assert_eq!(v, 1, "crud: first version is 1");
    assert!(
        matches!(
            s.insert(&c, &id(1), data(7, b"x")).await,
            Err(StorageError::DuplicateId)
        ),
        "crud: duplicate"
    );
    // The same id in another collection is another row.
    s.insert(&other, &id(1), data(9, b"other")).await.unwrap();
    let r = s.get(&c, &id(1)).await.unwrap();
    assert_eq!(
        (r.version, r.key_id, r.envelope.as_slice()),
        (1, 7, &b"one"[..]),
        "crud: get"
    );
    assert_eq!(
        s.update(&c, &id(1), 1, data(8, b"two")).await.unwrap(),
        2,
        "crud: update"
    );
    assert!(
        matches!(
            s.update(&c, &id(1), 1, data(8, b"lost")).await,
            Err(StorageError::VersionConflict {
                expected: 1,
                actual: 2
            })
        ),
        "crud: stale update"
    );
    assert_eq!(
        s.get(&c, &id(1)).await.unwrap().envelope,
        b"two",
        "crud: stale update changed nothing"
    );
    assert!(
        matches!(
            s.delete(&c, &id(1), 1).await,
            Err(StorageError::VersionConflict { .. })
        ),
        "crud: stale delete"
    );
    s.delete(&c, &id(1), 2).await.unwrap();
    assert!(
        matches!(s.get(&c, &id(1)).await, Err(StorageError::NotFound)),
        "crud: gone"
    );
    assert!(
        matches!(
            s.update(&c, &id(1), 2, data(1, b"")).await,
            Err(StorageError::NotFound)
        ),
        "crud: update gone"
    );
    assert!(
        matches!(s.delete(&c, &id(1), 2).await, Err(StorageError::NotFound)),
        "crud: delete gone"
    );
    assert_eq!(
        s.get(&other, &id(1)).await.unwrap().envelope,
        b"other",
        "crud: collections are separate"
    );
    // Versions at the end of the range are errors, never an overflow (a
    // panic in debug builds, a wrapped version in release ones).
    for edge in [i64::MAX as u64 - 1, i64::MAX as u64, u64::MAX - 1, u64::MAX] {
        assert!(
            matches!(
                s.update(&other, &id(1), edge, data(1, b"edge")).await,
                Err(StorageError::VersionConflict { .. } | StorageError::Invalid { .. })
            ),
            "crud: update expecting version {edge}"
        );
        assert!(
            matches!(
                s.delete(&other, &id(1), edge).await,
                Err(StorageError::VersionConflict { .. } | StorageError::Invalid { .. })
            ),
            "crud: delete expecting version {edge}"
        );
    }
    assert_eq!(
        s.get(&other, &id(1)).await.unwrap().envelope,
        b"other",
        "crud: edge versions changed nothing"
    );
    // An empty envelope and a large one round-trip.
    s.insert(&c, &id(2), data(1, b"")).await.unwrap();
    let big = vec![0xa5u8; 1 << 20];
    s.insert(&c, &id(3), data(1, &big)).await.unwrap();
    assert_eq!(
        s.get(&c, &id(3)).await.unwrap().envelope,
        big,
        "crud: 1 MiB envelope"
    );
}

/// Blind-index lookups follow updates and deletes.
pub async fn indexes<S: RecordStore + ?Sized>(s: &S) {
    let c = coll();
    let e = |n: &str, t: &[u8]| IndexEntry::new(n, t.to_vec()).unwrap();
    let with = |key, body: &[u8], idx: Vec<IndexEntry>| RowData {
        key_id: key,
        envelope: body.to_vec(),
        indexes: idx,
    };
    s.insert(
        &c,
        &id(1),
        with(1, b"a", vec![e("email", b"tok-a"), e("nhs", b"n-1")]),
    )
    .await
    .unwrap();
    s.insert(
        &c,
        &id(2),
        with(1, b"b", vec![e("email", b"tok-b"), e("nhs", b"n-1")]),
    )
    .await
    .unwrap();
    let found = s.find(&c, &e("email", b"tok-a")).await.unwrap();
    assert_eq!(found.len(), 1, "indexes: one match");
    assert_eq!(
        found[0].indexes,
        vec![e("email", b"tok-a"), e("nhs", b"n-1")],
        "indexes: entries come back sorted"
    );
    let both: Vec<_> = s
        .find(&c, &e("nhs", b"n-1"))
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.id)
        .collect();
    assert_eq!(
        both,
        vec![id(1), id(2)],
        "indexes: several matches, id order"
    );
    assert!(
        s.find(&c, &e("email", b"tok-c")).await.unwrap().is_empty(),
        "indexes: no match"
    );
    assert!(
        s.find(&coll(), &e("email", b"tok-a"))
            .await
            .unwrap()
            .is_empty(),
        "indexes: per collection"
    );
    s.update(&c, &id(1), 1, with(1, b"a2", vec![e("email", b"tok-a2")]))
        .await
        .unwrap();
    assert!(
        s.find(&c, &e("email", b"tok-a")).await.unwrap().is_empty(),
        "indexes: old token gone after update"
    );
    assert_eq!(
        s.find(&c, &e("email", b"tok-a2")).await.unwrap().len(),
        1,
        "indexes: new token"
    );
    s.delete(&c, &id(2), 1).await.unwrap();
    assert!(
        s.find(&c, &e("email", b"tok-b")).await.unwrap().is_empty(),
        "indexes: gone after delete"
    );
    let dup = with(1, b"x", vec![e("email", b"1"), e("email", b"2")]);
    assert!(
        matches!(
            s.insert(&c, &id(3), dup).await,
            Err(StorageError::Invalid { .. })
        ),
        "indexes: one entry per name"
    );
    assert!(
        matches!(s.get(&c, &id(3)).await, Err(StorageError::NotFound)),
        "indexes: refused insert wrote nothing"
    );
}

async fn collect_pages<S: RecordStore + ?Sized>(
    s: &S,
    c: &Collection,
    key: Option<u32>,
    limit: usize,
) -> (Vec<RowId>, usize) {
    let mut after: Option<RowId> = None;
    let mut ids = Vec::new();
    let mut pages = 0;
    loop {
        let page = match key {
            None => s.list(c, after.as_ref(), limit).await.unwrap(),
            Some(k) => s.scan_key(c, k, after.as_ref(), limit).await.unwrap(),
        };
        pages += 1;
        assert!(page.rows.len() <= limit, "paging: page over the limit");
        ids.extend(page.rows.iter().map(|r| r.id.clone()));
        match page.next {
            Some(n) => after = Some(n),
            None => return (ids, pages),
        }
    }
}

/// Pages of every size, including exact multiples and the empty collection.
pub async fn paging<S: RecordStore + ?Sized>(s: &S) {
    let empty = coll();
    assert_eq!(
        collect_pages(s, &empty, None, 10).await,
        (vec![], 1),
        "paging: empty"
    );
    for n in [1usize, 9, 10, 11, 20, 25] {
        let c = coll();
        for i in 0..n {
            s.insert(&c, &id(i), data(1, b"x")).await.unwrap();
        }
        let (ids, pages) = collect_pages(s, &c, None, 10).await;
        assert_eq!(
            ids,
            (0..n).map(id).collect::<Vec<_>>(),
            "paging: {n} rows in order"
        );
        assert_eq!(
            pages,
            n.div_ceil(10).max(1),
            "paging: {n} rows, no empty trailing page"
        );
    }
    let c = coll();
    assert!(
        matches!(s.list(&c, None, 0).await, Err(StorageError::Invalid { .. })),
        "paging: limit 0"
    );
    assert!(
        matches!(
            s.list(&c, None, 1001).await,
            Err(StorageError::Invalid { .. })
        ),
        "paging: limit 1001"
    );
}

/// Scans by data-key id resume from a cursor and see concurrent re-sealing.
pub async fn key_scan<S: RecordStore + ?Sized>(s: &S) {
    let c = coll();
    for i in 0..30 {
        s.insert(&c, &id(i), data(if i % 3 == 0 { 1 } else { 2 }, b"x"))
            .await
            .unwrap();
    }
    let (ids, _) = collect_pages(s, &c, Some(1), 4).await;
    assert_eq!(
        ids,
        (0..30).filter(|i| i % 3 == 0).map(id).collect::<Vec<_>>(),
        "key_scan: key 1 rows"
    );
    // Rotation: re-seal key-2 rows under key 3 while scanning key 2 page by page.
    let mut after: Option<RowId> = None;
    let mut moved = 0;
    loop {
        let page = s.scan_key(&c, 2, after.as_ref(), 4).await.unwrap();
        for r in &page.rows {
            assert_eq!(r.key_id, 2, "key_scan: only key 2");
            s.update(&c, &r.id, r.version, data(3, b"resealed"))
                .await
                .unwrap();
            moved += 1;
        }
        match page.next {
            Some(n) => after = Some(n),
            None => break,
        }
    }
    assert_eq!(moved, 20, "key_scan: every key-2 row once");
    assert!(
        s.scan_key(&c, 2, None, 10).await.unwrap().rows.is_empty(),
        "key_scan: none left under key 2"
    );
    assert_eq!(
        collect_pages(s, &c, Some(3), 7).await.0.len(),
        20,
        "key_scan: all under key 3"
    );
}

/// Atomic batches: all writes or none; invalid batches refused.
pub async fn batches<S: RecordStore + ?Sized>(s: &S) {
    let (a, b) = (coll(), coll());
    let tok = |t: &[u8]| IndexEntry::new("owner", t.to_vec()).unwrap();
    let with_index = |body: &[u8], t: &[u8]| RowData {
        key_id: 3,
        envelope: body.to_vec(),
        indexes: vec![tok(t)],
    };
    let v = s
        .commit(&[
            Write::Insert {
                coll: a.clone(),
                id: id(1),
                data: with_index(b"a1", b"x"),
            },
            Write::Insert {
                coll: b.clone(),
                id: id(1),
                data: data(3, b"b1"),
            },
        ])
        .await
        .unwrap();
    assert_eq!(v, vec![1, 1], "batches: two inserts");
    // The second write conflicts: the first is not applied either.
    let r = s
        .commit(&[
            Write::Update {
                coll: a.clone(),
                id: id(1),
                expected: 1,
                data: with_index(b"a1-lost", b"y"),
            },
            Write::Insert {
                coll: b.clone(),
                id: id(1),
                data: data(3, b"dup"),
            },
        ])
        .await;
    assert!(
        matches!(r, Err(StorageError::DuplicateId)),
        "batches: duplicate in a batch"
    );
    let r = s
        .commit(&[
            Write::Insert {
                coll: b.clone(),
                id: id(2),
                data: data(3, b"b2-lost"),
            },
            Write::Delete {
                coll: a.clone(),
                id: id(1),
                expected: 7,
            },
        ])
        .await;
    assert!(
        matches!(
            r,
            Err(StorageError::VersionConflict {
                expected: 7,
                actual: 1
            })
        ),
        "batches: stale delete in a batch"
    );
    let r = s
        .commit(&[Write::Update {
            coll: b.clone(),
            id: id(9),
            expected: 1,
            data: data(3, b"none"),
        }])
        .await;
    assert!(
        matches!(r, Err(StorageError::NotFound)),
        "batches: missing row"
    );
    let row = s.get(&a, &id(1)).await.unwrap();
    assert_eq!(
        (row.version, row.envelope.as_slice()),
        (1, &b"a1"[..]),
        "batches: failed batches changed nothing"
    );
    assert_eq!(s.find(&a, &tok(b"x")).await.unwrap().len(), 1);
    assert!(s.find(&a, &tok(b"y")).await.unwrap().is_empty());
    assert!(matches!(
        s.get(&b, &id(2)).await,
        Err(StorageError::NotFound)
    ));
    // Update, delete and insert together, indexes replaced.
    let v = s
        .commit(&[
            Write::Update {
                coll: a.clone(),
                id: id(1),
                expected: 1,
                data: with_index(b"a1-v2", b"y"),
            },
            Write::Delete {
                coll: b.clone(),
                id: id(1),
                expected: 1,
            },
            Write::Insert {
                coll: b.clone(),
                id: id(2),
                data: data(3, b"b2"),
            },
        ])
        .await
        .unwrap();
    assert_eq!(v, vec![2, 0, 1], "batches: mixed");
    assert!(s.find(&a, &tok(b"x")).await.unwrap().is_empty());
    assert_eq!(s.find(&a, &tok(b"y")).await.unwrap().len(), 1);
    assert!(matches!(
        s.get(&b, &id(1)).await,
        Err(StorageError::NotFound)
    ));
    // Refused before anything is written.
    let twice = [
        Write::Insert {
            coll: b.clone(),
            id: id(3),
            data: data(3, b"1"),
        },
        Write::Insert {
            coll: b.clone(),
            id: id(3),
            data: data(3, b"2"),
        },
    ];
    let many: Vec<Write> = (10..111)
        .map(|i| Write::Insert {
            coll: b.clone(),
            id: id(i),
            data: data(3, b"m"),
        })
        .collect();
    for bad in [&[][..], &twice[..], &many[..]] {
        assert!(
            matches!(s.commit(bad).await, Err(StorageError::Invalid { .. })),
            "batches: invalid batch of {}",
            bad.len()
        );
    }
    assert!(matches!(
        s.get(&b, &id(3)).await,
        Err(StorageError::NotFound)
    ));
    assert!(matches!(
        s.get(&b, &id(10)).await,
        Err(StorageError::NotFound)
    ));
}

/// Many tasks each try to claim one row (update it) and record their claim
/// (insert a row of their own) in one batch: exactly one batch lands, and
/// no loser's claim row exists.
pub async fn batch_race<S: RecordStore + ?Sized + 'static>(s: Arc<S>) {
    let (c, claims) = (coll(), coll());
    s.insert(&c, &id(0), data(1, b"open")).await.unwrap();
    let mut tasks = Vec::new();
    for t in 0..16usize {
        let (s, c, claims) = (Arc::clone(&s), c.clone(), claims.clone());
        tasks.push(tokio::spawn(async move {
            s.commit(&[
                Write::Update {
                    coll: c,
                    id: id(0),
                    expected: 1,
                    data: data(1, b"claimed"),
                },
                Write::Insert {
                    coll: claims,
                    id: id(t + 1),
                    data: data(1, b"claim"),
                },
            ])
            .await
        }));
    }
    let mut wins = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(_) => wins += 1,
            Err(StorageError::VersionConflict { .. }) => {}
            Err(e) => panic!("batch_race: unexpected {e}"),
        }
    }
    assert_eq!(wins, 1, "batch_race: exactly one winner");
    let page = s.list(&claims, None, 100).await.unwrap();
    assert_eq!(page.rows.len(), 1, "batch_race: one claim row");
}

/// Many tasks race on one row: each round exactly one compare-and-swap wins.
pub async fn cas_race<S: RecordStore + ?Sized + 'static>(s: Arc<S>) {
    let c = coll();
    s.insert(&c, &id(0), data(1, b"0")).await.unwrap();
    for round in 1..=5u64 {
        let mut tasks = Vec::new();
        for t in 0..16u32 {
            let (s, c) = (Arc::clone(&s), c.clone());
            tasks.push(tokio::spawn(async move {
                s.update(&c, &id(0), round, data(t, b"w")).await
            }));
        }
        let mut wins = 0;
        for t in tasks {
            match t.await.unwrap() {
                Ok(v) => {
                    assert_eq!(v, round + 1, "cas_race: winner's version");
                    wins += 1;
                }
                Err(StorageError::VersionConflict { .. }) => {}
                Err(e) => panic!("cas_race: unexpected {e}"),
            }
        }
        assert_eq!(wins, 1, "cas_race: exactly one winner in round {round}");
    }
}

/// Read-modify-write with retries from many tasks: no increment is lost.
pub async fn no_lost_updates<S: RecordStore + ?Sized + 'static>(s: Arc<S>) {
    let c = coll();
    s.insert(&c, &id(0), data(1, &0u64.to_be_bytes()))
        .await
        .unwrap();
    let (tasks, each) = (16u64, 10u64);
    let mut handles = Vec::new();
    for _ in 0..tasks {
        let (s, c) = (Arc::clone(&s), c.clone());
        handles.push(tokio::spawn(async move {
            for _ in 0..each {
                loop {
                    let r = s.get(&c, &id(0)).await.unwrap();
                    let n = u64::from_be_bytes(r.envelope.as_slice().try_into().unwrap());
                    match s
                        .update(&c, &id(0), r.version, data(1, &(n + 1).to_be_bytes()))
                        .await
                    {
                        Ok(_) => break,
                        Err(StorageError::VersionConflict { .. }) => tokio::task::yield_now().await,
                        Err(e) => panic!("no_lost_updates: {e}"),
                    }
                }
            }
        }));
    }
    for h in handles {
        h.await.unwrap();
    }
    let r = s.get(&c, &id(0)).await.unwrap();
    assert_eq!(
        u64::from_be_bytes(r.envelope.as_slice().try_into().unwrap()),
        tasks * each,
        "no_lost_updates: count"
    );
    assert_eq!(r.version, tasks * each + 1, "no_lost_updates: version");
}

/// Concurrent appends get distinct, gap-free sequence numbers; reads page.
pub async fn audit<S: AuditLog + ?Sized + 'static>(s: Arc<S>) {
    let mut handles = Vec::new();
    for t in 0..8u8 {
        let s = Arc::clone(&s);
        handles.push(tokio::spawn(async move {
            let mut seqs = Vec::new();
            for i in 0..25u8 {
                seqs.push(s.append(vec![t, i]).await.unwrap());
            }
            seqs
        }));
    }
    let mut all = BTreeSet::new();
    for h in handles {
        all.extend(h.await.unwrap());
    }
    assert_eq!(all.len(), 200, "audit: distinct sequence numbers");
    let (lo, hi) = (*all.first().unwrap(), *all.last().unwrap());
    // Other writers may share the log (a shared database), so check ours
    // are inside a gap-free range of the log.
    let mut seen = Vec::new();
    let mut from = lo;
    while from <= hi {
        let page = s.read(from, 64).await.unwrap();
        assert!(!page.is_empty(), "audit: read stalled at {from}");
        for (seq, _) in &page {
            assert_eq!(*seq, from, "audit: gap before {seq}");
            from += 1;
        }
        seen.extend(page.into_iter().map(|(s, _)| s).filter(|s| *s <= hi));
    }
    assert!(
        all.iter().all(|s| seen.contains(s)),
        "audit: every appended entry is readable"
    );
    assert!(
        matches!(s.read(1, 0).await, Err(StorageError::Invalid { .. })),
        "audit: limit 0"
    );
}

/// What a chained entry records of the entry before it: its sequence
/// number and its first 16 bytes.
fn link_of(tail: Option<(u64, &[u8])>) -> Vec<u8> {
    let mut link = tail.map_or(0, |(s, _)| s).to_be_bytes().to_vec();
    let mut head = tail.map_or(&[][..], |(_, e)| e).to_vec();
    head.resize(16, 0);
    link.extend_from_slice(&head);
    link
}

/// Chained appends from many tasks at once: every batch is built from the
/// entry really before it and numbered right after it.
pub async fn audit_chained<S: AuditLog + ?Sized + 'static>(s: Arc<S>) {
    let mut handles = Vec::new();
    for t in 0..8u8 {
        let s = Arc::clone(&s);
        handles.push(tokio::spawn(async move {
            let mut firsts = Vec::new();
            for i in 0..10u8 {
                let batch = usize::from(i % 3) + 1;
                let build = move |tail: Option<(u64, &[u8])>| -> Vec<Vec<u8>> {
                    // Entry k of the batch links to entry k-1 (or the tail).
                    let mut out: Vec<Vec<u8>> = Vec::with_capacity(batch);
                    let start = tail.map_or(0, |(s, _)| s);
                    for (k, seq) in (0..batch).zip(start..) {
                        let prev: Option<(u64, &[u8])> = match k {
                            0 => tail,
                            _ => out.last().map(|e| (seq, e.as_slice())),
                        };
                        let mut e = link_of(prev);
                        e.extend_from_slice(&[0xc4, t, i, k as u8]);
                        out.push(e);
                    }
                    out
                };
                firsts.push((s.append_chained(&build).await.unwrap(), batch));
            }
            firsts
        }));
    }
    let mut ours = Vec::new();
    for h in handles {
        ours.extend(h.await.unwrap());
    }
    let (lo, hi) = (
        ours.iter().map(|(f, _)| *f).min().unwrap(),
        ours.iter().map(|(f, n)| f + *n as u64 - 1).max().unwrap(),
    );
    let mut log = Vec::new();
    let mut from = lo.saturating_sub(1).max(1);
    while from <= hi {
        let page = s.read(from, 500).await.unwrap();
        assert!(!page.is_empty(), "audit_chained: read stalled at {from}");
        from = page.last().unwrap().0 + 1;
        log.extend(page);
    }
    for (first, n) in &ours {
        for seq in *first..first + *n as u64 {
            let i = log
                .iter()
                .position(|(s, _)| *s == seq)
                .expect("entry present");
            let entry = &log[i].1;
            let prev = (seq > 1).then(|| {
                let p = &log[i - 1];
                assert_eq!(p.0, seq - 1, "audit_chained: gap before {seq}");
                (p.0, p.1.as_slice())
            });
            assert_eq!(
                entry[..24],
                link_of(prev)[..],
                "audit_chained: entry {seq} built from another tail"
            );
        }
    }
    // A large batch (stores may write it in several statements) lands
    // whole, in order, numbered without gaps.
    let big: Vec<Vec<u8>> = (0..1001u32)
        .map(|i| [b"big".as_slice(), &i.to_be_bytes()].concat())
        .collect();
    let first = s.append_chained(&|_| big.clone()).await.unwrap();
    let mut back = Vec::new();
    while back.len() < big.len() {
        let page = s.read(first + back.len() as u64, 1000).await.unwrap();
        assert!(!page.is_empty(), "audit_chained: large batch cut short");
        back.extend(page);
    }
    back.truncate(big.len());
    for ((seq, entry), (k, want)) in back.iter().zip(big.iter().enumerate()) {
        assert_eq!(
            *seq,
            first + k as u64,
            "audit_chained: large batch numbering"
        );
        assert_eq!(entry, want, "audit_chained: large batch entry {k}");
    }
    // An empty batch writes nothing.
    let next = s.append_chained(&|_| Vec::new()).await.unwrap();
    assert!(next > first + 1000, "audit_chained: empty batch");
}

/// Versioned key material with compare-and-swap.
pub async fn keys<S: KeyStore + ?Sized>(s: &S) {
    let name = unique("keyset");
    assert!(
        matches!(s.load(&name).await, Err(StorageError::NotFound)),
        "keys: missing"
    );
    assert_eq!(
        s.store(&name, None, b"k1".to_vec()).await.unwrap(),
        1,
        "keys: create"
    );
    assert!(
        matches!(
            s.store(&name, None, b"k".to_vec()).await,
            Err(StorageError::DuplicateId)
        ),
        "keys: create twice"
    );
    assert_eq!(
        s.store(&name, Some(1), b"k2".to_vec()).await.unwrap(),
        2,
        "keys: cas"
    );
    assert!(
        matches!(
            s.store(&name, Some(1), b"k".to_vec()).await,
            Err(StorageError::VersionConflict {
                expected: 1,
                actual: 2
            })
        ),
        "keys: stale"
    );
    assert_eq!(
        s.load(&name).await.unwrap(),
        (2, b"k2".to_vec()),
        "keys: load"
    );
    assert!(
        matches!(
            s.store(&unique("nokey"), Some(1), vec![]).await,
            Err(StorageError::NotFound)
        ),
        "keys: cas on missing"
    );
    for edge in [i64::MAX as u64, u64::MAX] {
        assert!(
            matches!(
                s.store(&name, Some(edge), b"k".to_vec()).await,
                Err(StorageError::VersionConflict { .. } | StorageError::Invalid { .. })
            ),
            "keys: cas expecting version {edge}"
        );
    }
}

/// Blobs: empty and multi-megabyte streams round-trip; delete, exists, not
/// found; the listing holds exactly the complete blobs, with the time they
/// were written; ids that are not the store's own are refused before any
/// I/O.
pub async fn blobs<S: BlobStore + ?Sized>(s: &S) {
    let started = now_secs();
    let empty = s.put(&mut &b""[..]).await.unwrap();
    let mut out = Vec::new();
    s.get(&empty)
        .await
        .unwrap()
        .read_to_end(&mut out)
        .await
        .unwrap();
    assert!(out.is_empty(), "blobs: empty");
    let big: Vec<u8> = (0..(3 << 20) + 7).map(|i: u32| (i % 251) as u8).collect();
    let id = s.put(&mut big.as_slice()).await.unwrap();
    assert_ne!(id, empty, "blobs: fresh ids");
    let mut out = Vec::new();
    s.get(&id)
        .await
        .unwrap()
        .read_to_end(&mut out)
        .await
        .unwrap();
    assert!(out == big, "blobs: 3 MiB round trip");
    for len in [0, 1, 1000, big.len(), big.len() + 10] {
        let head = s.get_head(&id, len).await.unwrap();
        assert!(
            head == big[..len.min(big.len())],
            "blobs: the first {len} bytes"
        );
    }
    assert!(
        s.get_head(&empty, 10).await.unwrap().is_empty(),
        "blobs: head of empty"
    );
    assert!(s.exists(&id).await.unwrap(), "blobs: exists");
    let listed = listing(s).await;
    for want in [&empty, &id] {
        let entry = listed.iter().find(|e| e.id == *want);
        assert!(
            entry.is_some_and(|e| (started - 5..=now_secs() + 5).contains(&e.modified)),
            "blobs: listed with the time written: {entry:?}"
        );
    }
    s.delete(&id).await.unwrap();
    assert!(!s.exists(&id).await.unwrap(), "blobs: deleted");
    assert!(
        !listing(s).await.iter().any(|e| e.id == id),
        "blobs: a deleted blob is not listed"
    );
    assert!(
        matches!(s.get(&id).await, Err(StorageError::NotFound)),
        "blobs: get deleted"
    );
    assert!(
        matches!(s.delete(&id).await, Err(StorageError::NotFound)),
        "blobs: delete twice"
    );
    for bad in [
        "../../etc/passwd",
        "",
        "ABCDEF0123456789abcdef0123456789",
        ".tmp-0123456789abcdef0123456789abcdef",
    ] {
        assert!(BlobId::parse(bad).is_err(), "blobs: {bad:?} refused");
    }
    s.delete(&empty).await.unwrap();
}

async fn listing<S: BlobStore + ?Sized>(s: &S) -> Vec<crate::BlobEntry> {
    futures::TryStreamExt::try_collect(s.list()).await.unwrap()
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
