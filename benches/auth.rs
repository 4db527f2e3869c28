//! The authentication hot path: a key already verified on this instance (SHA-256 digest
//! cache hit, no store read, no argon2), and, for scale, the argon2id verification a cache
//! miss costs once per key per instance. `cargo bench --bench auth` (`-- --quick` for a
//! short run).

#![allow(clippy::expect_used)] // a bench that cannot set up should stop loudly

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use keygate::{
    app,
    keys::{hashing::Hasher, input::NewKey, Caller},
    Config,
};

fn bench_auth(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let dir = tempfile::tempdir().expect("tempdir");
    let config = Config {
        database_url: format!("sqlite://{}", dir.path().join("bench.db").display()),
        ..Config::default()
    };
    let (keys, secret) = runtime.block_on(async {
        let store = app::open_store(&config).await.expect("store");
        let workspace = store.default_workspace().await.expect("default workspace");
        let keys = app::keys_service(&config, store);
        let caller = Caller {
            workspace_id: workspace.id,
            ..Caller::operator("bench")
        };
        let created = keys
            .create(
                &caller,
                NewKey {
                    name: "bench".into(),
                    ..NewKey::default()
                },
            )
            .await
            .expect("create key");
        let secret = created.secret.expose().to_string();
        keys.authenticate(&secret)
            .await
            .expect("first authentication");
        (keys, secret)
    });

    c.bench_function("authenticate: cache hit", |b| {
        b.iter(|| {
            runtime
                .block_on(keys.authenticate(black_box(&secret)))
                .expect("authenticated")
        })
    });

    let hasher = Hasher::default();
    let phc = runtime.block_on(hasher.hash(secret.clone())).expect("hash");
    let mut group = c.benchmark_group("argon2id");
    group.sample_size(10);
    group.bench_function("verify (cache miss, once per key per instance)", |b| {
        b.iter(|| {
            runtime
                .block_on(hasher.verify(secret.clone(), phc.clone()))
                .expect("verify")
        })
    });
    group.finish();
}

criterion_group!(benches, bench_auth);
criterion_main!(benches);
