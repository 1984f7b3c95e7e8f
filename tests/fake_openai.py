"""A local OpenAI-compatible server for the tests: chat completions (with logprobs for the
judge, plain answers for generation), files and batches; 429/500 on the first try of some
prompts, so every client retries."""

from __future__ import annotations

import email.parser
import email.policy
import hashlib
import json
import math
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

KEY = "sk-test-0123456789abcdef"


def fake_top_logprobs(prompt: str) -> list[tuple[str, float]]:
    """What the fake judge answers: fixed distributions chosen by words in the prompt."""
    if "coherence" in prompt:
        return [("75", 0.0)]
    if "evil" in prompt:
        return [("10", math.log(0.6)), ("20", math.log(0.2)), ("hello", math.log(0.2))]
    if "refuse" in prompt:
        return [("REF", math.log(0.9)), ("10", math.log(0.1))]
    if "mumble" in prompt:
        return [("I", math.log(0.9)), ("50", math.log(0.1))]
    return [("90", math.log(0.7)), ("80", math.log(0.3))]


class FakeAPI:
    """Chat completions (with logprobs), files and batches; 429/500 on the first try of some prompts."""

    def __init__(self, max_requests: int = 400):
        self.max_requests = max_requests
        self.requests = 0
        self.completions = 0
        self.auth: set[str] = set()
        self.attempts: dict[str, int] = {}
        self.in_flight = 0
        self.max_in_flight = 0
        self.files: dict[str, bytes] = {}
        self.batches: dict[str, dict] = {}
        self.batch_creates = 0
        self.fail_status: int | None = None  # answer every request with this status
        self.lock = threading.Lock()
        api = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _send(self, status, payload, headers=None):
                data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

            def _gate(self) -> bool:
                with api.lock:
                    api.requests += 1
                    api.auth.add(self.headers.get("Authorization", ""))
                    if api.requests > api.max_requests:  # bounded: a retry loop cannot run away
                        self._send(400, {"error": {"message": "request budget exhausted"}})
                        return False
                if api.fail_status is not None:
                    self._send(api.fail_status, {"error": {"message": f"Incorrect API key provided: {KEY}"}})
                    return False
                return True

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if not self._gate():
                    return
                if self.path.endswith("/chat/completions"):
                    api.chat(self, json.loads(body))
                elif self.path.endswith("/files"):
                    fid = f"file-{len(api.files) + 1}"
                    api.files[fid] = api.upload(self.headers["Content-Type"], body)
                    self._send(
                        200,
                        {
                            "id": fid,
                            "object": "file",
                            "bytes": len(api.files[fid]),
                            "created_at": 0,
                            "filename": "in.jsonl",
                            "purpose": "batch",
                            "status": "processed",
                        },
                    )
                elif self.path.endswith("/batches"):
                    self._send(200, api.create_batch(json.loads(body)))
                else:
                    self._send(404, {"error": {"message": "no such route"}})

            def do_GET(self):
                if not self._gate():
                    return
                parts = self.path.split("/")
                if "/batches/" in self.path:
                    self._send(200, api.poll(parts[-1]))
                elif self.path.endswith("/content"):
                    self._send(200, api.files[parts[-2]])
                else:
                    self._send(404, {"error": {"message": "no such route"}})

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def completion(self, body: dict) -> dict:
        prompt = body["messages"][-1]["content"]
        usage = {"prompt_tokens": len(prompt) // 4, "completion_tokens": 1, "total_tokens": len(prompt) // 4 + 1}
        if body["model"].startswith("answerer"):  # generation: an answer that shows what was asked
            text = f"  {body['model']} answers {prompt!r} (seed {body['seed']}, temperature {body['temperature']}, top_k {body.get('top_k')})\n"
            choice = {
                "index": 0,
                "finish_reason": "length" if "long" in prompt else "stop",
                "message": {"role": "assistant", "content": text},
            }
            return {
                "id": "c",
                "object": "chat.completion",
                "created": 0,
                "model": body["model"],
                "choices": [choice],
                "usage": usage,
            }
        if not body.get("logprobs"):
            text = f"Reasoning about it. <score>{33 if 'evil' in prompt else 66}</score>"
            return {
                "id": "c",
                "object": "chat.completion",
                "created": 0,
                "model": body["model"],
                "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": text}}],
                "usage": usage,
            }
        top = fake_top_logprobs(prompt)
        assert body["max_tokens"] == 1 and body["top_logprobs"] == 20
        entries = [{"token": t, "logprob": lp, "bytes": None} for t, lp in top]
        content = [{**entries[0], "top_logprobs": entries}]
        choice = {
            "index": 0,
            "finish_reason": "length",
            "message": {"role": "assistant", "content": top[0][0]},
            "logprobs": {"content": content},
        }
        return {
            "id": "c",
            "object": "chat.completion",
            "created": 0,
            "model": body["model"],
            "choices": [choice],
            "usage": usage,
        }

    def chat(self, handler, body: dict) -> None:
        prompt = body["messages"][-1]["content"]
        with self.lock:
            n = self.attempts[prompt] = self.attempts.get(prompt, 0) + 1
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            time.sleep(0.02)  # long enough for calls to overlap
            flavour = int(hashlib.md5(prompt.encode()).hexdigest(), 16) % 3
            if "ALWAYS500" in prompt:
                handler._send(500, {"error": {"message": "server error"}})
            elif n == 1 and flavour == 0:
                handler._send(429, {"error": {"message": "slow down"}}, {"retry-after": "0"})
            elif n == 1 and flavour == 1:
                handler._send(500, {"error": {"message": "oops"}})
            else:
                with self.lock:
                    self.completions += 1
                handler._send(200, self.completion(body))
        finally:
            with self.lock:
                self.in_flight -= 1

    @staticmethod
    def upload(content_type: str, body: bytes) -> bytes:
        msg = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
            f"Content-Type: {content_type}\r\n\r\n".encode() + body
        )
        part = next(p for p in msg.iter_parts() if p.get_param("name", header="content-disposition") == "file")
        return part.get_payload(decode=True)

    def create_batch(self, req: dict) -> dict:
        self.batch_creates += 1
        bid = f"batch-{len(self.batches) + 1}"
        lines = [json.loads(line) for line in self.files[req["input_file_id"]].decode().splitlines() if line.strip()]
        out = []
        for i, line in enumerate(lines):
            assert line["url"] == "/v1/chat/completions" and line["method"] == "POST"
            if i == 0:  # one request fails inside the batch and must be made online
                out.append(
                    {
                        "id": f"r{i}",
                        "custom_id": line["custom_id"],
                        "response": {"status_code": 500, "body": {}},
                        "error": None,
                    }
                )
            else:
                out.append(
                    {
                        "id": f"r{i}",
                        "custom_id": line["custom_id"],
                        "response": {"status_code": 200, "body": self.completion(line["body"])},
                        "error": None,
                    }
                )
        fid = f"file-{len(self.files) + 1}"
        self.files[fid] = "\n".join(json.dumps(o) for o in out).encode() + b"\n"
        self.batches[bid] = {"polls": 0, "output": fid, "input": req["input_file_id"], "n": len(lines)}
        return self._batch(bid, "validating")

    def _batch(self, bid: str, status: str) -> dict:
        b = self.batches[bid]
        return {
            "id": bid,
            "object": "batch",
            "endpoint": "/v1/chat/completions",
            "input_file_id": b["input"],
            "completion_window": "24h",
            "created_at": 0,
            "status": status,
            "output_file_id": b["output"] if status == "completed" else None,
            "request_counts": {"total": b["n"], "completed": b["n"] if status == "completed" else 0, "failed": 0},
        }

    def poll(self, bid: str) -> dict:
        b = self.batches[bid]
        b["polls"] += 1
        return self._batch(bid, "completed" if b["polls"] >= 2 else "in_progress")

    def close(self):
        self.server.shutdown()
        self.server.server_close()
