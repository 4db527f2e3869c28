//! Forwarding an admitted request (DESIGN §4): the body to send (asking for the usage
//! chunk on a stream, with the upstream's own model name), the upstream request (the
//! client's headers less the stripped ones, the upstream's own credential), sending it
//! within the timeouts to the request's candidates in turn until one answers (fallback),
//! and reading the answer: its headers as passed back, and its body, streamed or whole.

use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderMap, Method, StatusCode};
use metrics::Histogram;
use tokio::time::Instant;

use super::{
    client::{RequestBuilder, SendError, UpstreamResponse},
    headers::{self, RequestHeaders},
    meter::{Meter, Outcome},
    request::{self, RequestFields},
    stream::MeteredStream,
    upstreams::{Candidates, FailureCause, Upstream},
    AnswerBody, Endpoint, Gateway, InferenceError, InferenceRequest,
};
use crate::telemetry::metrics::ModelId;

/// Largest upstream answer read whole (non-streamed); larger ones are refused as an upstream error.
const MAX_ANSWER_BYTES: usize = 64 * 1024 * 1024;

/// The answer's head from the upstream, and the request's deadline for the rest of it.
pub(super) struct Sent {
    pub response: UpstreamResponse,
    pub deadline: Instant,
    /// The answering upstream's duration histogram and when the request was sent to it,
    /// for `/metrics` (`None` with metrics off).
    pub timing: Option<(Histogram, Instant)>,
}

impl Gateway {
    /// Sends `request` to its candidates in turn until one answers: a connect error, a
    /// timeout before the first byte, a 429 or a 5xx moves it to the next one, at most
    /// `proxy.max_attempts` in all and within the total timeout. Each attempt's outcome
    /// feeds that upstream's breaker. When no attempt is left, the last answer (a 429 or
    /// 5xx, passed on as it is) or error stands. Nothing has reached the client yet, so a
    /// new attempt is always safe for it; the body is bytes, sent again as it is.
    pub(super) async fn send(
        &self,
        candidates: &mut Candidates<'_>,
        request: &InferenceRequest,
        body: &Bytes,
        fields: Option<&RequestFields<'_>>,
        named: Option<ModelId>,
    ) -> Result<Sent, InferenceError> {
        let deadline = Instant::now() + self.timeouts.total;
        let metrics = &self.shared.metrics;
        // The same value `requested_model` checked; borrowed unless it has escapes.
        let model = fields.and_then(|f| f.model).and_then(request::string);
        let Some((mut upstream, mut pass)) = candidates.next_upstream() else {
            return Err(InferenceError::Upstream(
                "no upstream serves this request".into(),
            ));
        };
        loop {
            let mapped = model.as_deref().and_then(|m| upstream.mapped_model(m));
            let started = Instant::now();
            let mut result = match upstream_body(request.endpoint, body, fields, mapped) {
                Ok(changed) => {
                    let body = changed.unwrap_or_else(|| body.clone());
                    self.forward(upstream, request, body, deadline).await
                }
                Err(err) => Err(err),
            };
            if let (Ok(sent), Some(series)) = (
                &mut result,
                metrics.upstream(&upstream.name, named.unwrap_or(ModelId::OTHER)),
            ) {
                series.ttfb.record(started.elapsed());
                sent.timing = Some((series.duration.clone(), started));
            }
            let (cause, retry_after) = match &result {
                Ok(sent) => match failure_of(sent.response.status) {
                    Some(cause) => (cause, retry_after(&sent.response.headers, cause)),
                    None => {
                        pass.succeeded();
                        return result;
                    }
                },
                Err(InferenceError::UpstreamTimeout) => (FailureCause::Timeout, None),
                Err(InferenceError::Upstream(_)) => (FailureCause::Connect, None),
                // Refused before anything was sent: says nothing of the upstream.
                Err(_) => return result,
            };
            pass.failed(retry_after);
            if candidates.attempts() >= self.max_attempts || Instant::now() >= deadline {
                return result;
            }
            let Some((next, next_pass)) = candidates.next_upstream() else {
                return result;
            };
            let status = result
                .as_ref()
                .ok()
                .map(|sent| sent.response.status.as_u16());
            tracing::warn!(request_id = %request.request_id, upstream = %upstream.name, cause = cause.as_str(), status, next = %next.name, "upstream failed; trying the next one");
            metrics.fallback(&upstream.name, cause.as_str());
            // Dropping a failed answer closes its connection (its body is not read).
            drop(result);
            (upstream, pass) = (next, next_pass);
        }
    }

    /// Sends `request` (with `body`, see [`upstream_body`]) to `upstream` and waits for the
    /// answer's head, within the first-byte timeout and the request's `deadline`.
    pub(super) async fn forward(
        &self,
        upstream: &Upstream,
        request: &InferenceRequest,
        body: Bytes,
        deadline: Instant,
    ) -> Result<Sent, InferenceError> {
        let upstream_request = self
            .build_request(
                upstream,
                &request.method,
                &request.path,
                request.query.as_deref(),
                &request.headers,
                &request.request_id,
            )
            .map_err(|message| InferenceError::InvalidRequest {
                message,
                param: None,
            })?;
        match tokio::time::timeout(
            self.timeouts
                .first_byte
                .min(deadline.saturating_duration_since(Instant::now())),
            upstream_request.send(body),
        )
        .await
        {
            Err(_) | Ok(Err(SendError::ConnectTimeout)) => Err(InferenceError::UpstreamTimeout),
            Ok(Err(SendError::Failed(err))) => {
                tracing::warn!(request_id = %request.request_id, key_id = %request.key.id, upstream = %upstream.name, error = %err, "upstream request failed");
                Err(InferenceError::Upstream(format!(
                    "cannot reach upstream `{}`",
                    upstream.name
                )))
            }
            Ok(Ok(response)) => Ok(Sent {
                response,
                deadline,
                timing: None,
            }),
        }
    }

    /// The answer as passed back: status, headers and body. A stream is metered event by
    /// event and settles as it ends (`stream::MeteredStream`); a whole body is read and
    /// settled here.
    pub(super) async fn answer(
        &self,
        sent: Sent,
        mut meter: Meter,
        request_id: String,
        client_wants_usage: bool,
    ) -> Result<(StatusCode, HeaderMap, AnswerBody), InferenceError> {
        let Sent {
            mut response,
            deadline,
            timing: _,
        } = sent;
        let status = response.status;
        let headers = headers::answer_headers(std::mem::take(&mut response.headers));
        let idle = self.timeouts.idle;
        if status.is_success() && is_event_stream(&headers) {
            let stream = MeteredStream::new(
                response,
                request_id,
                meter,
                client_wants_usage,
                idle,
                deadline,
                self.max_event_bytes,
            );
            return Ok((status, headers, AnswerBody::Stream(Box::pin(stream))));
        }
        match read_whole(response, deadline, idle, &request_id).await {
            Ok(bytes) => {
                meter.finish_whole(status, &bytes);
                Ok((status, headers, AnswerBody::Whole(bytes)))
            }
            Err(err) => {
                meter.finish(Outcome::NotCharged);
                Err(err)
            }
        }
    }

    /// The upstream request's head: the client's method and path, its headers less the
    /// stripped ones, the request's id (the client's, else keygate's), and the upstream's
    /// own credential (the body goes to `send`). `Err` names a path or query that cannot
    /// be sent (the HTTP layer already parsed them, so this is a safety net).
    pub(super) fn build_request<'a>(
        &'a self,
        upstream: &'a Upstream,
        method: &Method,
        path: &str,
        query: Option<&str>,
        headers: &RequestHeaders,
        request_id: &str,
    ) -> Result<RequestBuilder<'a>, String> {
        let path_and_query = match query {
            Some(query) => std::borrow::Cow::Owned(format!("{path}?{query}")),
            None => std::borrow::Cow::Borrowed(path),
        };
        let mut request = self
            .upstreams
            .client
            .request(&upstream.target, method, &path_and_query)
            .map_err(|err| format!("cannot forward this path upstream: {err}"))?;
        let forwarding = headers::Forwarding::of(headers.lines());
        let credential = upstream.credential();
        // The upstream's own headers replace the client's (its `anthropic-version` too).
        let own = |name: &[u8]| {
            credential
                .iter()
                .any(|(own, _)| own.as_bytes().eq_ignore_ascii_case(name))
        };
        for (name, value) in headers.lines() {
            if forwarding.forwards(name) && !own(name) {
                request = request.header(name, value);
            }
        }
        if !request_id.is_empty() && headers.get("x-request-id").is_none() {
            request = request.header("x-request-id", request_id.as_bytes());
        }
        for (name, value) in credential {
            request = request.header(name, value.as_bytes());
        }
        Ok(request)
    }
}

/// The body to send upstream in place of the client's, if it must change: a stream whose
/// client did not ask for usage gets `stream_options.include_usage` (the usage chunk is
/// hidden from the client again by `stream::MeteredStream`), and `mapped` (the upstream's
/// name for the model, from its `model_mapping`) replaces `model`. `None`: send it as it is.
pub(super) fn upstream_body(
    endpoint: Endpoint,
    body: &Bytes,
    fields: Option<&RequestFields<'_>>,
    mapped: Option<&str>,
) -> Result<Option<Bytes>, InferenceError> {
    let Some(fields) = fields else {
        return Ok(None);
    };
    // Anthropic's streams always carry their usage (`message_start`, `message_delta`).
    let openai_stream = matches!(
        endpoint,
        Endpoint::ChatCompletions | Endpoint::Completions | Endpoint::Other
    );
    let usage = (fields.stream() && openai_stream && !fields.wants_usage())
        .then_some(fields.stream_options);
    let model = mapped.zip(fields.model).map(|(name, raw)| (raw, name));
    if usage.is_none() && model.is_none() {
        return Ok(None);
    }
    request::rewrite(body, usage, model).map(Some)
}

/// Whether an answer's status sends the request to the next candidate.
fn failure_of(status: StatusCode) -> Option<FailureCause> {
    if status == StatusCode::TOO_MANY_REQUESTS {
        Some(FailureCause::RateLimited)
    } else if status.is_server_error() {
        Some(FailureCause::ServerError)
    } else {
        None
    }
}

/// A 429's `Retry-After`, in seconds or as an HTTP date: how long that upstream asks to be
/// left alone (its breaker opens for that long, capped at `upstreams::MAX_RETRY_AFTER`).
fn retry_after(headers: &HeaderMap, cause: FailureCause) -> Option<Duration> {
    if cause != FailureCause::RateLimited {
        return None;
    }
    let value = headers.get(header::RETRY_AFTER)?.to_str().ok()?.trim();
    match value.parse::<u64>() {
        Ok(secs) => Some(Duration::from_secs(secs)),
        Err(_) => httpdate::parse_http_date(value)
            .ok()?
            .duration_since(std::time::SystemTime::now())
            .ok(),
    }
}

/// Whether the answer is a server-sent event stream (metered event by event).
fn is_event_stream(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/event-stream"))
}

/// A whole (non-streamed) answer body, read within the idle and total timeouts and
/// [`MAX_ANSWER_BYTES`].
pub(super) async fn read_whole(
    response: UpstreamResponse,
    deadline: Instant,
    idle: Duration,
    request_id: &str,
) -> Result<Bytes, InferenceError> {
    let mut body = response.body;
    // Most answers arrive in one frame: pass that frame on without copying it.
    let mut first: Option<Bytes> = None;
    let mut rest = bytes::BytesMut::new();
    loop {
        let wait = idle.min(deadline.saturating_duration_since(Instant::now()));
        let chunk = match tokio::time::timeout(wait, body.chunk()).await {
            Err(_) => return Err(InferenceError::UpstreamTimeout),
            Ok(Ok(None)) => break,
            Ok(Err(err)) => {
                tracing::warn!(request_id, error = %err, "upstream answer broke");
                return Err(InferenceError::Upstream(
                    "the upstream connection broke".into(),
                ));
            }
            Ok(Ok(Some(chunk))) => chunk,
        };
        let so_far = first.as_ref().map_or(0, Bytes::len) + rest.len();
        if so_far + chunk.len() > MAX_ANSWER_BYTES {
            return Err(InferenceError::Upstream(
                "the upstream answer is too large".into(),
            ));
        }
        match &first {
            None if rest.is_empty() => first = Some(chunk),
            _ => {
                if let Some(first) = first.take() {
                    rest.extend_from_slice(&first);
                }
                rest.extend_from_slice(&chunk);
            }
        }
    }
    Ok(match first {
        Some(first) => first,
        None => rest.freeze(),
    })
}
