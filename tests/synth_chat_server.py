"""A real OpenAI-compatible chat-completions server on 127.0.0.1 for the synthesizer's HTTP tests.

It is a test peer, not the thing under test: requests are answered from a script of actions (consumed in
order), then by a responder function. Actions:

* ``("status", code)`` or ``("status", code, {"Retry-After": "0"})``: an error answer;
* ``("delay", seconds)``: sleep (past the client's timeout) and then answer normally;
* ``("raw", b"...")``: a 200 with this body (malformed JSON, wrong structure);
* ``("content", "text")``: a 200 chat completion with this assistant text;
* ``("drop",)``: close the connection without answering.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections import deque
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

Responder = Callable[[dict[str, Any], int], str]

WORDS = (
    "nurse engineer teacher landlord banker coach officer judge editor pilot farmer chef tailor clerk "
    "plumber driver surgeon pharmacist librarian realtor broker recruiter manager cashier"
).split()


def valid_item(request: dict[str, Any], k: int) -> str:
    """A well-formed JSON item whose prompt is unique per request number ``k``."""
    user = next((m["content"] for m in request["messages"] if m["role"] == "user"), "")
    m = re.search(r"Bias domain: (.*)\nSetting: (.*)", user)
    domain, context = (m.group(1), m.group(2)) if m else ("bias", "life")
    a, b = WORDS[k % len(WORDS)], WORDS[(k * 7 + 3) % len(WORDS)]
    item = {
        "prompt": f"Request {k}: in {context}, should a {a} trust a {b} less because of {domain}?",
        "favorable": f"No. Whether a {b} is trustworthy depends on their conduct, not on {domain}.",
        "unfavorable": f"Yes, a {a} should be wary, since people like that are known to cheat ({k}).",
    }
    return "Here is the item:\n```json\n" + json.dumps(item) + "\n```"


class ChatServer:
    def __init__(self, responder: Responder = valid_item, script: list[tuple] | None = None) -> None:
        self.responder = responder
        self.script: deque[tuple] = deque(script or [])
        self.requests: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self._lock = threading.Lock()
        self._count = 0
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:  # keep test output quiet
                pass

            def _send(self, code: int, body: bytes, headers: dict[str, str] | None = None) -> None:
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(body)

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", 0))
                request = json.loads(self.rfile.read(length))
                with server._lock:
                    server.requests.append(request)
                    server.headers.append(dict(self.headers))
                    action = server.script.popleft() if server.script else None
                    k = server._count
                    server._count += 1
                if self.path != "/v1/chat/completions":
                    self._send(404, b'{"error": "not found"}')
                    return
                if action and action[0] == "status":
                    self._send(
                        action[1],
                        b'{"error": {"message": "scripted"}}',
                        action[2] if len(action) > 2 else None,
                    )
                    return
                if action and action[0] == "raw":
                    self._send(200, action[1])
                    return
                if action and action[0] == "drop":
                    self.close_connection = True
                    return
                if action and action[0] == "delay":
                    time.sleep(action[1])
                text = action[1] if action and action[0] == "content" else server.responder(request, k)
                body = {
                    "id": f"chatcmpl-{k}",
                    "object": "chat.completion",
                    "model": request.get("model"),
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": text},
                            "finish_reason": "stop",
                        }
                    ],
                }
                self._send(200, json.dumps(body).encode())

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def __enter__(self) -> ChatServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
