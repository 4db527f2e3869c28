//! How much heap reading a request body takes, measured by a counting allocator: for
//! hostile bodies of several shapes (issue 13 §1.2: a 4 MB list of zeros once took
//! 330 MB), the body plus everything the gateway allocates to read it, estimate its
//! tokens and rewrite it stays within twice the body's size.
//!
//! A test binary of its own, because the allocator is global to the binary. Counts are
//! per thread, so the test harness's other threads do not disturb them.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    alloc::{GlobalAlloc, Layout, System},
    cell::Cell,
};

use bytes::Bytes;
use keygate::proxy::{
    request::{self, RequestFields},
    tokens::{self, BodyKind},
    Endpoint,
};

struct Counting;

thread_local! {
    static CURRENT: Cell<isize> = const { Cell::new(0) };
    static PEAK: Cell<isize> = const { Cell::new(0) };
}

fn grew(by: isize) {
    // `try_with`: the thread-locals may be gone while a thread exits.
    let _ = CURRENT.try_with(|current| {
        let now = current.get() + by;
        current.set(now);
        let _ = PEAK.try_with(|peak| peak.set(peak.get().max(now)));
    });
}

// SAFETY: every call is forwarded to the system allocator unchanged; only sizes are noted.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        grew(layout.size() as isize);
        System.alloc(layout)
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        grew(-(layout.size() as isize));
        System.dealloc(ptr, layout);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // Counted as the allocator may do it: the new block before the old one is freed.
        grew(new_size as isize);
        let moved = System.realloc(ptr, layout, new_size);
        grew(-(layout.size() as isize));
        moved
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// The most heap in use at once while `work` runs, above what was in use before it.
fn peak_of(work: impl FnOnce()) -> usize {
    let base = CURRENT.with(Cell::get);
    PEAK.with(|peak| peak.set(base));
    work();
    (PEAK.with(Cell::get) - base).max(0) as usize
}

/// What the gateway does with a chat body before it forwards it: copy it in (the body
/// counts), read its fields, estimate its tokens, ask for usage when it streams.
fn read_like_the_gateway(text: &str, kind: BodyKind, endpoint: Endpoint) -> usize {
    peak_of(|| {
        let body = Bytes::copy_from_slice(text.as_bytes());
        let fields = request::read_fields(endpoint, &body)
            .expect("a valid body")
            .expect("an object");
        let estimate = tokens::estimate_fields(kind, &fields);
        std::hint::black_box(estimate);
        if fields.stream() && !fields.wants_usage() {
            let rewritten = request::usage_requested(&body, fields.stream_options).unwrap();
            std::hint::black_box(rewritten);
        }
    })
}

/// `{<head>"<member>":[<item>,<item>,…]}` of about `size` bytes.
fn list_body(head: &str, member: &str, item: &str, size: usize) -> String {
    let mut body = format!("{{{head}\"{member}\":[");
    while body.len() + item.len() + 3 < size {
        body.push_str(item);
        body.push(',');
    }
    body.pop();
    body.push_str("]}");
    body
}

const SIZE: usize = 1 << 20;
/// Room for what does not grow with the body (one tokenizer slice, small buffers).
const FIXED: usize = 64 * 1024;

#[test]
fn hostile_bodies_take_at_most_twice_their_size() {
    // The tokenizer's tables are built once per process, not per request.
    tokens::count("warm up");
    let model = r#""model":"m","#;
    let streamed = r#""model":"m","stream":true,"#;
    let giant_escaped = format!(
        r#"{{"model":"m","messages":[{{"role":"user","content":"{}\n"}}]}}"#,
        "a".repeat(SIZE - 80)
    );
    let many_keys = {
        let mut body = String::from("{\"model\":\"m\"");
        let mut n = 0;
        while body.len() < SIZE - 20 {
            body.push_str(&format!(",\"k\\u00{:02x}{n}\":0", 0x61 + n % 26));
            n += 1;
        }
        body.push('}');
        body
    };
    let options_keys = {
        let mut body = String::from(r#"{"model":"m","stream":true,"stream_options":{"#);
        while body.len() < SIZE - 20 {
            body.push_str(r#""a":0,"#);
        }
        body.push_str(r#""include_usage":false}}"#);
        body
    };
    let cases = [
        (
            "zeros",
            list_body(model, "messages", "0", SIZE),
            BodyKind::Chat,
        ),
        (
            "objects",
            list_body(model, "messages", "{}", SIZE),
            BodyKind::Chat,
        ),
        (
            "lists",
            list_body(model, "messages", "[]", SIZE),
            BodyKind::Chat,
        ),
        (
            "messages",
            list_body(
                model,
                "messages",
                r#"{"role":"user","content":"hello world"}"#,
                SIZE,
            ),
            BodyKind::Chat,
        ),
        (
            "parts",
            list_body(
                model,
                "messages",
                r#"{"content":[{"text":"a"},{"text":""},{},"x",[]]}"#,
                SIZE,
            ),
            BodyKind::Chat,
        ),
        (
            "strings",
            list_body(streamed, "messages", r#""aaaa""#, SIZE),
            BodyKind::Chat,
        ),
        ("escaped", giant_escaped, BodyKind::Chat),
        ("keys", many_keys, BodyKind::Chat),
        ("options", options_keys, BodyKind::Chat),
        (
            "ids",
            list_body(model, "input", "[0]", SIZE),
            BodyKind::Embedding,
        ),
        (
            "inputs",
            list_body(model, "input", "7", SIZE),
            BodyKind::Embedding,
        ),
        (
            "unread",
            list_body(model, "tools", "{\"a\":[{}]}", SIZE),
            BodyKind::Chat,
        ),
    ];
    for (name, body, kind) in &cases {
        let endpoint = match kind {
            BodyKind::Embedding => Endpoint::Embeddings,
            _ => Endpoint::ChatCompletions,
        };
        let peak = read_like_the_gateway(body, *kind, endpoint);
        assert!(
            peak <= 2 * body.len() + FIXED,
            "{name}: {peak} bytes at peak for a body of {}",
            body.len()
        );
    }
}

#[test]
fn the_estimate_is_the_same_as_without_the_bound() {
    // The bounded reader still reads: a body of the same shapes, small.
    let body = r#"{"model":"m","messages":[0,{},[],{"role":"user","content":"hello world"},{"content":[{"text":"a b"}]}]}"#;
    let fields = RequestFields::parse(body.as_bytes()).unwrap();
    // reply 3 + 5 messages × 3 + "user" 1 + "hello world" 2 + "a b" 2
    assert_eq!(
        tokens::estimate_fields(BodyKind::Chat, &fields).input,
        3 + 15 + 1 + 2 + 2
    );
}
