//! How fast the directory answers user searches and listings with 100,000
//! users in one domain (the "search as you type" case of the admin page).
//! Set PRESENCE_BENCH_USERS to change the size.

use criterion::{Criterion, criterion_group, criterion_main};
use presence_benches::{admin, loaded_directory};
use presence_proto::v1;
use std::hint::black_box;

fn bench(c: &mut Criterion) {
    let n: usize = std::env::var("PRESENCE_BENCH_USERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("{e}"));
    let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let started = std::time::Instant::now();
    let dir = rt.block_on(loaded_directory(tmp.path(), n));
    eprintln!("loaded {n} users in {:?}", started.elapsed());
    let p = admin();
    let mut g = c.benchmark_group(format!("list_users_{n}"));
    let cases: &[(&str, v1::ListUsersRequest)] = &[
        (
            "first_page",
            v1::ListUsersRequest {
                domain: "acme".into(),
                page_size: 50,
                ..Default::default()
            },
        ),
        (
            "search_prefix_ja",
            v1::ListUsersRequest {
                domain: "acme".into(),
                search: "ja".into(),
                page_size: 50,
                ..Default::default()
            },
        ),
        (
            "search_two_words",
            v1::ListUsersRequest {
                domain: "acme".into(),
                search: "jack mann".into(),
                page_size: 50,
                ..Default::default()
            },
        ),
        (
            "search_extension",
            v1::ListUsersRequest {
                domain: "acme".into(),
                search: "142424".into(),
                page_size: 50,
                ..Default::default()
            },
        ),
        (
            "search_rare_no_hit",
            v1::ListUsersRequest {
                domain: "acme".into(),
                search: "zzz".into(),
                page_size: 50,
                ..Default::default()
            },
        ),
        (
            "filter_site_and_dept",
            v1::ListUsersRequest {
                domain: "acme".into(),
                site: "site07".into(),
                department: "sales".into(),
                page_size: 50,
                ..Default::default()
            },
        ),
    ];
    for (name, req) in cases {
        g.bench_function(*name, |b| {
            b.iter(|| {
                let r = rt
                    .block_on(dir.list_users(&p, req.clone()))
                    .unwrap_or_else(|e| panic!("{e}"));
                black_box(r.users.len())
            })
        });
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(30);
    targets = bench
}
criterion_main!(benches);
