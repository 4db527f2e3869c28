//! Steady traffic for the fault tests: a few workers that each send one request after
//! another (with a short pause) until stopped, and keep what every request came to.

use std::{
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use serde_json::Value;
use tokio::task::JoinHandle;

/// One request as the client saw it.
#[derive(Debug, Clone)]
pub struct Sample {
    pub started: Instant,
    pub ended: Instant,
    /// `None`: no answer (connection refused or broken).
    pub status: Option<u16>,
}

impl Sample {
    pub fn ok(&self) -> bool {
        self.status == Some(200)
    }

    pub fn latency(&self) -> Duration {
        self.ended - self.started
    }
}

/// What to send: `POST url` with `key` and `body`, plus extra headers.
#[derive(Clone)]
pub struct Request {
    pub url: String,
    pub key: String,
    pub body: Value,
    pub headers: Vec<(&'static str, String)>,
}

pub struct Traffic {
    stop: Arc<AtomicBool>,
    workers: Vec<JoinHandle<Vec<Sample>>>,
}

impl Traffic {
    /// Starts `workers` workers sending `request`, each pausing `pause` between two
    /// requests. With `stop_on_failure`, a worker stops at its first request without an
    /// answer (the server is gone).
    pub fn start(
        request: Request,
        workers: usize,
        pause: Duration,
        stop_on_failure: bool,
    ) -> Traffic {
        let stop = Arc::new(AtomicBool::new(false));
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .unwrap();
        let workers = (0..workers)
            .map(|_| {
                let (stop, client, request) = (stop.clone(), client.clone(), request.clone());
                tokio::spawn(async move {
                    let mut samples = Vec::new();
                    while !stop.load(Ordering::SeqCst) {
                        let started = Instant::now();
                        let mut builder = client
                            .post(&request.url)
                            .bearer_auth(&request.key)
                            .json(&request.body);
                        for (name, value) in &request.headers {
                            builder = builder.header(*name, value);
                        }
                        // The body is read whole: a 200 counts once its answer arrived.
                        let status = match builder.send().await {
                            Ok(response) => {
                                let status = response.status().as_u16();
                                response.bytes().await.ok().map(|_| status)
                            }
                            Err(_) => None,
                        };
                        samples.push(Sample {
                            started,
                            ended: Instant::now(),
                            status,
                        });
                        if status.is_none() && stop_on_failure {
                            break;
                        }
                        tokio::time::sleep(pause).await;
                    }
                    samples
                })
            })
            .collect();
        Traffic { stop, workers }
    }

    /// Stops the workers (each finishes the request it is sending) and returns every
    /// sample, ordered by start.
    pub async fn stop(self) -> Vec<Sample> {
        self.stop.store(true, Ordering::SeqCst);
        let mut samples = Vec::new();
        for worker in self.workers {
            samples.extend(worker.await.unwrap());
        }
        samples.sort_by_key(|s| s.started);
        samples
    }
}
