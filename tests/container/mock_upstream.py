#!/usr/bin/env python3
"""A minimal OpenAI-compatible upstream for the container smoke test (smoke.sh).

The Rust suite's mock (tests/support/upstream.rs) lives inside the test binary; the
container needs one it can reach over the network, so this one runs on the host, on the
Python standard library only. It answers POST /v1/chat/completions (JSON, or SSE when
"stream": true, with a usage chunk when stream_options.include_usage asks for one) and
GET /v1/models, and refuses any request whose Authorization is not `Bearer $MOCK_API_KEY`,
so a 200 through keygate proves the upstream credential was sent. Every request path is
appended to --log, one per line.

Usage: mock_upstream.py --host ADDR --port PORT --log FILE   (PORT 0: any; prints the port)
"""

import argparse
import json
import os
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

API_KEY = os.environ.get("MOCK_API_KEY", "sk-mock")
REPLY = "Hello from the mock upstream."


def usage(body):
    prompt = sum(3 + len(str(m.get("content", "")).split()) for m in body.get("messages", []))
    completion = len(REPLY.split())
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):  # quiet: the log file records what matters
        pass

    def record(self):
        with open(self.server.log_path, "a", encoding="utf-8") as log:
            log.write(f"{self.command} {self.path} auth={'ok' if self.authorized() else 'bad'}\n")

    def authorized(self):
        return self.headers.get("Authorization") == f"Bearer {API_KEY}"

    def send_json(self, status, value):
        data = json.dumps(value).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def refuse(self):
        self.send_json(401, {"error": {"message": "Incorrect API key provided", "type": "invalid_request_error",
                                       "param": None, "code": "invalid_api_key"}})

    def do_GET(self):
        self.record()
        if not self.authorized():
            return self.refuse()
        if self.path == "/v1/models":
            return self.send_json(200, {"object": "list", "data": [
                {"id": "gpt-4o-mini", "object": "model", "created": 0, "owned_by": "mock"}]})
        self.send_json(404, {"error": {"message": f"Invalid URL (GET {self.path})", "type": "invalid_request_error"}})

    def do_POST(self):
        length = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(length) or b"{}")
        self.record()
        if not self.authorized():
            return self.refuse()
        if self.path != "/v1/chat/completions":
            return self.send_json(404, {"error": {"message": f"Invalid URL (POST {self.path})",
                                                  "type": "invalid_request_error"}})
        model, created = body.get("model", "gpt-4o-mini"), int(time.time())
        if not body.get("stream"):
            return self.send_json(200, {
                "id": "chatcmpl-mock", "object": "chat.completion", "created": created, "model": model,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": REPLY},
                             "finish_reason": "stop"}],
                "usage": usage(body)})
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Connection", "close")
        self.end_headers()

        def event(choices, with_usage=None):
            chunk = {"id": "chatcmpl-mock", "object": "chat.completion.chunk", "created": created,
                     "model": model, "choices": choices}
            if include_usage:
                chunk["usage"] = with_usage
            self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
            self.wfile.flush()

        event([{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}])
        for word in REPLY.split(" "):
            event([{"index": 0, "delta": {"content": word + " "}, "finish_reason": None}])
        event([{"index": 0, "delta": {}, "finish_reason": "stop"}])
        if include_usage:
            event([], usage(body))
        self.wfile.write(b"data: [DONE]\n\n")
        self.wfile.flush()
        self.close_connection = True


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--log", required=True)
    args = parser.parse_args()
    server = ThreadingHTTPServer((args.host, args.port), Handler)
    server.log_path = args.log
    print(server.server_address[1], flush=True)
    sys.stdout.close()
    server.serve_forever()


if __name__ == "__main__":
    main()
