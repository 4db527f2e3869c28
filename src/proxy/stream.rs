//! The streamed answer's body: upstream bytes → whole SSE events → client, one event at a
//! time as each arrives. Hides the usage chunk the client did not ask for, feeds the
//! meter, and enforces the idle and total timeouts. Dropping it (client disconnect)
//! drops the upstream response, which cancels the upstream call, and the meter settles.

use std::{
    collections::VecDeque,
    future::Future,
    io,
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};

use bytes::Bytes;
use futures::{Stream, StreamExt};
use serde_json::json;
use tokio::time::{Instant, Sleep};

use super::{
    anthropic,
    client::{ResponseBody, UpstreamResponse},
    meter::Meter,
    sse::{inspect_into, EventSplitter},
};
use crate::config::UpstreamKind;

pub type ByteStream = Pin<Box<dyn Stream<Item = Result<Bytes, io::Error>> + Send>>;

pub struct MeteredStream {
    upstream: ResponseBody,
    splitter: EventSplitter,
    ready: VecDeque<Bytes>,
    scratch: Vec<Bytes>,
    meter: Meter,
    /// The wire format of the events (read from the meter once).
    api: UpstreamKind,
    /// For log events: the request holds no span (see `InferenceRequest::request_id`).
    request_id: String,
    client_wants_usage: bool,
    idle: Duration,
    idle_timer: Pin<Box<Sleep>>,
    deadline: Pin<Box<Sleep>>,
    ended: bool,
}

impl MeteredStream {
    pub fn new(
        response: UpstreamResponse,
        request_id: String,
        meter: Meter,
        client_wants_usage: bool,
        idle: Duration,
        deadline: Instant,
        max_event_bytes: usize,
    ) -> Self {
        MeteredStream {
            api: meter.api(),
            upstream: response.body,
            splitter: EventSplitter::new(max_event_bytes),
            ready: VecDeque::new(),
            scratch: Vec::new(),
            meter,
            request_id,
            client_wants_usage,
            idle,
            idle_timer: Box::pin(tokio::time::sleep(idle)),
            deadline: Box::pin(tokio::time::sleep_until(deadline)),
            ended: false,
        }
    }

    fn take_events(&mut self) {
        if self.api == UpstreamKind::Anthropic {
            // Every event passes unchanged: Anthropic's usage is part of the stream.
            for event in self.scratch.drain(..) {
                let meter = &mut self.meter;
                let usage = anthropic::inspect_event(&event, |piece| meter.produced(piece));
                self.meter.reported_anthropic(usage);
                self.ready.push_back(event);
            }
            return;
        }
        for event in self.scratch.drain(..) {
            let meter = &mut self.meter;
            let info = inspect_into(&event, |piece| meter.produced(piece));
            if let Some(usage) = info.usage {
                self.meter.reported(usage.into());
            }
            if info.usage_only && !self.client_wants_usage {
                continue;
            }
            self.ready.push_back(event);
        }
    }

    /// Ends the stream early with an error event in the API's shape (OpenAI's, or
    /// Anthropic's `event: error`), so SDKs raise a clear error instead of seeing a
    /// silently truncated answer.
    fn fail(&mut self, code: &str, message: &str) {
        self.meter.finish_streamed();
        self.ended = true;
        // Dropping the upstream response closes its connection: the upstream call is cancelled.
        self.upstream = ResponseBody::default();
        let event = match self.api {
            UpstreamKind::OpenAi => {
                let event = json!({ "error": { "message": message, "type": "api_error", "code": code, "param": null } });
                format!("data: {event}\n\n")
            }
            UpstreamKind::Anthropic => {
                let event = json!({ "type": "error", "error": { "type": "api_error", "message": message } });
                format!("event: error\ndata: {event}\n\n")
            }
        };
        self.ready.push_back(Bytes::from(event));
    }
}

impl Stream for MeteredStream {
    type Item = Result<Bytes, io::Error>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        loop {
            if let Some(event) = this.ready.pop_front() {
                return Poll::Ready(Some(Ok(event)));
            }
            if this.ended {
                return Poll::Ready(None);
            }
            match this.upstream.poll_next_unpin(cx) {
                Poll::Ready(Some(Ok(chunk))) => {
                    this.idle_timer.as_mut().reset(Instant::now() + this.idle);
                    let pushed = this.splitter.push(&chunk, &mut this.scratch);
                    this.take_events();
                    if pushed.is_err() {
                        tracing::warn!(request_id = %this.request_id, max_event_bytes = this.splitter.max(), "upstream event too large; ending the stream");
                        this.fail(
                            "upstream_error",
                            "the upstream sent a streamed event larger than keygate passes on",
                        );
                    }
                }
                Poll::Ready(Some(Err(err))) => {
                    tracing::warn!(request_id = %this.request_id, error = %err, "upstream stream broke");
                    this.fail("upstream_error", "the upstream connection broke mid-stream");
                }
                Poll::Ready(None) => {
                    if let Some(rest) = this.splitter.finish() {
                        this.scratch.push(rest);
                        this.take_events();
                    }
                    this.meter.finish_streamed();
                    this.ended = true;
                }
                Poll::Pending => {
                    if this.deadline.as_mut().poll(cx).is_ready() {
                        this.fail(
                            "upstream_timeout",
                            "the upstream did not finish within the total timeout",
                        );
                        continue;
                    }
                    if this.idle_timer.as_mut().poll(cx).is_ready() {
                        this.fail(
                            "upstream_timeout",
                            "the upstream stopped sending (idle timeout)",
                        );
                        continue;
                    }
                    return Poll::Pending;
                }
            }
        }
    }
}
