//! The test harness where it does more than start one app: the replicas of
//! `spawn_replicas` are separate keygate instances on one database and in front of one
//! mock, each configured by its own call of `configure`.

use crate::support::{
    app::{spawn_replicas, PRICED_MODEL},
    backends::{backend_tests, Setup},
    http::chat_body,
};

backend_tests! {
    both: [replicas_share_one_database_and_one_mock],
}

async fn replicas_share_one_database_and_one_mock(setup: Setup) {
    // Arrange: the second replica behind the other front door.
    let replicas = spawn_replicas(2, setup, |i, config| {
        if i == 1 {
            config.http.fast_path = !config.http.fast_path;
        }
    })
    .await;
    let key = replicas[0].plain_key().await;

    // Act: the key made through the first replica, used on both.
    for app in &replicas {
        app.chat_ok(&key.secret, &chat_body(PRICED_MODEL, "hello there", None))
            .await;
    }

    // Assert
    assert_ne!(replicas[0].address, replicas[1].address);
    assert_ne!(replicas[0].door, replicas[1].door);
    assert_eq!(replicas[0].door, setup.door);
    assert_eq!(replicas[1].mock.request_count(), 2, "one mock behind both");
    let usage = replicas[1].settled_usage(&key.id, 2).await;
    assert_eq!(usage.requests, 2, "both replicas' usage in one database");
}
