//! Policy decisions: cached (ACL view), uncached (fresh evaluation), a
//! console's batch of 1,000 targets, and the time from a grant change to
//! the view having applied its event. A plain HashMap lookup of the same
//! key shape is measured in the same run as the baseline.

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use presence_benches::{admin, loaded_directory};
use presence_bus::SharedBus;
use presence_core::{DomainId, UserId};
use presence_policy::service::evaluate;
use presence_policy::{AclView, Policy, PolicyConfig, Question, records};
use presence_proto::v1;
use std::collections::HashMap;
use std::hint::black_box;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

fn bench(c: &mut Criterion) {
    let n: usize = std::env::var("PRESENCE_BENCH_USERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("{e}"));
    let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let dir = rt.block_on(loaded_directory(tmp.path(), n));
    let bus: SharedBus = dir.bus_handle();
    let policy = Policy::new(dir.clone(), PolicyConfig::default());
    let p = admin();
    let d = DomainId::parse("acme").unwrap_or_else(|e| panic!("{e}"));
    // Every user lets its site see it; the watcher is in site00.
    let targets: Vec<String> = (0..1000).map(|i| format!("{}", 100_000 + i)).collect();
    rt.block_on(async {
        for t in &targets {
            policy
                .add_grant(
                    &p,
                    v1::AddGrantRequest {
                        domain: "acme".into(),
                        target: t.clone(),
                        kind: v1::GrantKind::See as i32,
                        grantee: Some(v1::Grantee {
                            kind: Some(v1::grantee::Kind::Site("site00".into())),
                        }),
                    },
                )
                .await
                .unwrap_or_else(|e| panic!("{e}"));
        }
    });
    let watcher = UserId::parse("100020").unwrap_or_else(|e| panic!("{e}"));
    let view = AclView::new(policy.store().clone(), 1_000_000);
    let shutdown = CancellationToken::new();
    let sub = rt
        .block_on(AclView::subscribe(&bus))
        .unwrap_or_else(|e| panic!("{e}"));
    let runner = rt.spawn(view.clone().run(sub, shutdown.clone()));
    let one = vec![targets[1].clone()];

    let mut g = c.benchmark_group(format!("policy_{n}_users"));
    // Baseline: a HashMap lookup with the same kind of key.
    let mut map: HashMap<(String, String, String), bool> = HashMap::new();
    for t in &targets {
        map.insert(("acme".into(), watcher.to_string(), t.clone()), true);
    }
    let key = ("acme".to_string(), watcher.to_string(), targets[1].clone());
    g.bench_function("baseline_hashmap_lookup", |b| {
        b.iter(|| black_box(map.get(black_box(&key))))
    });
    rt.block_on(view.check(&d, &watcher, &one, Question::See))
        .unwrap_or_else(|e| panic!("{e}"));
    g.bench_function("cached_check_one", |b| {
        b.iter(|| {
            black_box(
                now_or_spin(view.check(&d, &watcher, black_box(&one), Question::See))
                    .unwrap_or_else(|e| panic!("{e}")),
            )
        })
    });
    let target = targets[1].clone();
    g.bench_function("cached_decision", |b| {
        b.iter(|| {
            black_box(view.cached(&d, &watcher, black_box(target.as_str()), Question::See))
                .unwrap_or_else(|| panic!("not cached"))
        })
    });
    g.bench_function("uncached_check_one", |b| {
        b.iter(|| {
            black_box(
                evaluate(policy.store(), &d, &watcher, black_box(&one), Question::See)
                    .unwrap_or_else(|e| panic!("{e}")),
            )
        })
    });
    rt.block_on(view.check(&d, &watcher, &targets, Question::See))
        .unwrap_or_else(|e| panic!("{e}"));
    g.bench_function("cached_check_batch_1000", |b| {
        b.iter(|| {
            black_box(
                now_or_spin(view.check(&d, &watcher, black_box(&targets), Question::See))
                    .unwrap_or_else(|e| panic!("{e}")),
            )
        })
    });
    g.bench_function("cached_decide_batch_1000", |b| {
        b.iter(|| {
            black_box(
                now_or_spin(view.decide(&d, &watcher, black_box(&targets), Question::See))
                    .unwrap_or_else(|e| panic!("{e}")),
            )
        })
    });
    g.bench_function("uncached_check_batch_1000", |b| {
        b.iter(|| {
            black_box(
                evaluate(
                    policy.store(),
                    &d,
                    &watcher,
                    black_box(&targets),
                    Question::See,
                )
                .unwrap_or_else(|e| panic!("{e}")),
            )
        })
    });
    // A grant change, its commit, its event, and the view applying it.
    let mut flip = false;
    g.bench_function("invalidation_after_grant_change", |b| {
        b.iter_batched(
            || {
                flip = !flip;
                flip
            },
            |add| {
                rt.block_on(async {
                    let grantee = Some(v1::Grantee {
                        kind: Some(v1::grantee::Kind::User("100021".into())),
                    });
                    let target = "100001".to_string();
                    let r = if add {
                        policy
                            .add_grant(
                                &p,
                                v1::AddGrantRequest {
                                    domain: "acme".into(),
                                    target,
                                    kind: v1::GrantKind::See as i32,
                                    grantee,
                                },
                            )
                            .await
                    } else {
                        policy
                            .remove_grant(
                                &p,
                                v1::RemoveGrantRequest {
                                    domain: "acme".into(),
                                    target,
                                    kind: v1::GrantKind::See as i32,
                                    grantee,
                                },
                            )
                            .await
                    };
                    r.unwrap_or_else(|e| panic!("{e}"));
                    let epoch = records::domain_policy(policy.store().as_ref(), &d)
                        .unwrap_or_else(|e| panic!("{e}"))
                        .epoch;
                    assert!(view.wait_for_epoch(&d, epoch, Duration::from_secs(5)).await);
                })
            },
            BatchSize::SmallInput,
        )
    });
    g.finish();
    shutdown.cancel();
    let _ = rt.block_on(runner);
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(30);
    targets = bench
}
criterion_main!(benches);

/// Polls a future that completes without waiting (a cache hit) on the
/// current thread, so the measurement is the lookup, not a runtime hop.
fn now_or_spin<F: std::future::Future>(f: F) -> F::Output {
    let mut f = std::pin::pin!(f);
    let waker = std::task::Waker::noop();
    let mut cx = std::task::Context::from_waker(waker);
    loop {
        if let std::task::Poll::Ready(v) = f.as_mut().poll(&mut cx) {
            return v;
        }
    }
}
