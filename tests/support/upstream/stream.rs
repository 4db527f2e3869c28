//! SSE answers: the events of chat and legacy-completion streams, sent one body frame
//! each with the delays and cuts the switches ask for, and the bookkeeping of live,
//! completed and cancelled streams.

use super::*;

pub(super) struct StreamEvents {
    pub(super) events: Vec<Bytes>,
    pub(super) cut: usize,
}

pub(super) fn sse_event(v: &Value) -> Bytes {
    Bytes::from(format!("data: {v}\n\n"))
}

pub(super) fn done_event() -> Bytes {
    Bytes::from_static(b"data: [DONE]\n\n")
}

pub(super) fn chat_stream_events(model: &str, body: &Value, no_usage: bool) -> StreamEvents {
    let id = format!("chatcmpl-{}", uuid::Uuid::new_v4().simple());
    let created = now_secs();
    let with_usage = include_usage(body) && !no_usage;
    let n = choices_for(body);
    let chunk = |choices: Value| {
        let mut c = json!({
            "id": id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "service_tier": "default",
            "system_fingerprint": SYSTEM_FINGERPRINT,
            "choices": choices,
        });
        if with_usage {
            c["usage"] = Value::Null;
        }
        sse_event(&c)
    };
    let mut events = Vec::new();
    for i in 0..n {
        events.push(chunk(json!([{
            "index": i,
            "delta": {"role": "assistant", "content": "", "refusal": null},
            "logprobs": null,
            "finish_reason": null,
        }])));
    }
    let words = completion_words_per_choice(body) as usize;
    let mut cut = None;
    for (w, word) in REPLY_WORDS[..words].iter().enumerate() {
        let piece = if w == 0 {
            (*word).to_string()
        } else {
            format!(" {word}")
        };
        for i in 0..n {
            events.push(chunk(json!([{
                "index": i,
                "delta": {"content": piece},
                "logprobs": null,
                "finish_reason": null,
            }])));
        }
        if w + 1 == CHUNKS_BEFORE_STALL {
            cut = Some(events.len());
        }
    }
    let cut = cut.unwrap_or(events.len());
    let finish = finish_reason_for(body);
    for i in 0..n {
        events.push(chunk(json!([{
            "index": i,
            "delta": {},
            "logprobs": null,
            "finish_reason": finish,
        }])));
    }
    if with_usage {
        let mut c = json!({
            "id": id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "service_tier": "default",
            "system_fingerprint": SYSTEM_FINGERPRINT,
            "choices": [],
        });
        c["usage"] = chat_usage_json(body);
        events.push(sse_event(&c));
    }
    events.push(done_event());
    StreamEvents { events, cut }
}

pub(super) fn completion_stream_events(model: &str, body: &Value, no_usage: bool) -> StreamEvents {
    let id = format!("cmpl-{}", uuid::Uuid::new_v4().simple());
    let created = now_secs();
    let with_usage = include_usage(body) && !no_usage;
    let n = choices_for(body);
    let chunk = |i: u64, text: &str, finish: Option<&str>| {
        let mut c = json!({
            "id": id,
            "object": "text_completion",
            "created": created,
            "model": model,
            "choices": [{"text": text, "index": i, "logprobs": null, "finish_reason": finish}],
        });
        if with_usage {
            c["usage"] = Value::Null;
        }
        sse_event(&c)
    };
    let mut events = Vec::new();
    let words = completion_words_per_choice(body) as usize;
    let mut cut = None;
    for (w, word) in REPLY_WORDS[..words].iter().enumerate() {
        let piece = if w == 0 {
            (*word).to_string()
        } else {
            format!(" {word}")
        };
        for i in 0..n {
            events.push(chunk(i, &piece, None));
        }
        if w + 1 == CHUNKS_BEFORE_STALL {
            cut = Some(events.len());
        }
    }
    let cut = cut.unwrap_or(events.len());
    let finish = finish_reason_for(body);
    for i in 0..n {
        events.push(chunk(i, "", Some(finish)));
    }
    if with_usage {
        events.push(sse_event(&json!({
            "id": id,
            "object": "text_completion",
            "created": created,
            "model": model,
            "choices": [],
            "usage": plain_usage_json(body),
        })));
    }
    events.push(done_event());
    StreamEvents { events, cut }
}

pub(super) enum Step {
    Data(Bytes),
    /// Let hyper flush what it has (one write per event).
    Yield,
    Pause(Duration),
    Fail,
}

pub(super) fn stream_response(
    shared: &Arc<Shared>,
    stream: StreamEvents,
    behavior: Behavior,
    delay: Duration,
) -> Response {
    let StreamEvents { events, cut } = stream;
    let mut steps = VecDeque::new();
    match behavior {
        Behavior::StallMidStream | Behavior::DropMidStream => {
            let mut rest = events;
            let tail = rest.split_off(cut.min(rest.len()));
            for e in rest {
                steps.push_back(Step::Data(e));
                steps.push_back(Step::Yield);
            }
            if behavior == Behavior::DropMidStream {
                steps.push_back(Step::Fail);
            } else {
                steps.push_back(Step::Pause(delay));
                for e in tail {
                    steps.push_back(Step::Data(e));
                    steps.push_back(Step::Yield);
                }
            }
        }
        Behavior::SlowStream => {
            for (k, e) in events.into_iter().enumerate() {
                if k > 0 {
                    steps.push_back(Step::Pause(delay));
                }
                steps.push_back(Step::Data(e));
            }
        }
        _ => {
            for e in events {
                steps.push_back(Step::Data(e));
                steps.push_back(Step::Yield);
            }
        }
    }
    // Trailing yields are pointless and would delay "finished".
    while matches!(steps.back(), Some(Step::Yield)) {
        steps.pop_back();
    }

    shared.active.fetch_add(1, Ordering::SeqCst);
    shared.started.fetch_add(1, Ordering::SeqCst);
    let state = StreamState {
        steps,
        guard: StreamGuard {
            shared: shared.clone(),
            finished: false,
        },
        shutdown: shared.shutdown.clone(),
    };
    let body_stream = futures::stream::unfold(state, |mut st| async move {
        loop {
            let step = match st.steps.pop_front() {
                Some(step) => step,
                None => {
                    st.guard.finish();
                    return None;
                }
            };
            match step {
                Step::Data(bytes) => {
                    if st.steps.is_empty() {
                        st.guard.finish();
                    }
                    return Some((Ok::<Bytes, io::Error>(bytes), st));
                }
                Step::Yield => tokio::task::yield_now().await,
                Step::Pause(d) => {
                    let mut stop = st.shutdown.clone();
                    tokio::select! {
                        _ = tokio::time::sleep(d) => {}
                        _ = stop.wait_for(|s| *s) => {
                            st.guard.finish();
                            st.steps.clear();
                            return Some((Err(io::Error::other("mock upstream shut down")), st));
                        }
                    }
                }
                Step::Fail => {
                    st.guard.finish();
                    st.steps.clear();
                    return Some((
                        Err(io::Error::new(
                            io::ErrorKind::ConnectionReset,
                            "mock-drop-mid-stream: aborting the connection",
                        )),
                        st,
                    ));
                }
            }
        }
    });

    let mut resp = Response::new(Body::from_stream(body_stream));
    let h = resp.headers_mut();
    h.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream; charset=utf-8"),
    );
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    add_common_headers(&mut resp, true);
    resp
}

pub(super) struct StreamState {
    steps: VecDeque<Step>,
    guard: StreamGuard,
    shutdown: watch::Receiver<bool>,
}

pub(super) struct StreamGuard {
    shared: Arc<Shared>,
    finished: bool,
}

impl StreamGuard {
    fn finish(&mut self) {
        self.finished = true;
    }
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        if self.finished {
            self.shared.completed.fetch_add(1, Ordering::SeqCst);
        } else {
            self.shared.cancelled.fetch_add(1, Ordering::SeqCst);
        }
        self.shared.active.fetch_sub(1, Ordering::SeqCst);
    }
}
