"""The engine protocol over an OpenAI-compatible HTTP server (`phiflash chat --server URL`).

:class:`RemoteEngine` streams chat completions from ``phiflash serve`` or any server that speaks
OpenAI's ``/v1/chat/completions`` with server-sent events. Engine layer (next to the MLX and
GGUF engines); it imports only the core and the standard library.

What the chat shows comes from the server:

- ``phiflash serve`` lists its model in ``/v1/models`` with a ``phiflash`` object (engine,
  quantization, context) and counts a conversation's prompt tokens at ``/phiflash/count_tokens``;
  the stats line then reads as for a local engine ("remote mlx · bf16", ``ctx used/limit``).
- a stock server has neither: quantization shows "–" and the context limit "?", and the prompt
  tokens come from the usage the server reports at the end of a reply (when it does).

Rates are measured here, on the client: generation tokens per second from the first streamed
token, and "prompt" tokens per second up to the first token, which includes the time a request
waited in the server's queue.
"""

from __future__ import annotations

import http.client
import json
import time
from collections.abc import Callable, Iterator
from urllib.parse import urlsplit

from phiflash.engine import Chunk, GenerationParams, Message, chat_thinking_budget
from phiflash.errors import ContextLengthError, ModelLoadError, PhiflashError

EXTENSION = "phiflash"  # the key phiflash serve adds to each /v1/models entry
NOT_REPORTED = "–"


class RemoteError(PhiflashError):
    """The server refused a request or broke off a reply."""


class RemoteEngine:
    """Chat completions from a server at ``url`` (``http://HOST:PORT``, optionally ``/v1``)."""

    def __init__(
        self,
        url: str,
        api_key: str | None = None,
        model: str | None = None,
        timeout: float = 600.0,
    ):
        parts = urlsplit(url if "://" in url else f"http://{url}")
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ModelLoadError(f"--server must be http://HOST:PORT, got {url!r}")
        try:
            self._port = parts.port or (443 if parts.scheme == "https" else 80)
        except ValueError:
            raise ModelLoadError(f"--server has a bad port: {url!r}") from None
        self._https = parts.scheme == "https"
        self._host = parts.hostname
        base = parts.path.rstrip("/")
        self._base = base[: -len("/v1")] if base.endswith("/v1") else base
        self.url = f"{parts.scheme}://{parts.netloc}{self._base}"
        self.api_key = api_key
        self.timeout = timeout
        listing = self._get_json("/v1/models")
        entries = listing.get("data") if isinstance(listing, dict) else None
        if not entries:
            raise ModelLoadError(f"{self.url} lists no model at /v1/models")
        ids = [e.get("id") for e in entries if isinstance(e, dict)]
        if model is not None and model not in ids:
            raise ModelLoadError(f"{self.url} does not serve {model!r} (it serves {ids})")
        entry = entries[ids.index(model)] if model is not None else entries[0]
        ext = entry.get(EXTENSION) if isinstance(entry.get(EXTENSION), dict) else {}
        self.model_id = str(entry.get("id"))
        self.model_path = self.model_id
        self.name = f"remote {ext['engine']}" if ext.get("engine") else "remote"
        self.quantization = str(ext.get("quantization") or NOT_REPORTED)
        self.context_limit = int(ext.get("context_limit") or 0)
        self.server_info = ext
        self._count_path = ext.get("count_tokens")
        # what the chat uses unless the user chose (None: a stock server, the chat's own)
        self.default_max_tokens = ext.get("default_max_tokens")
        self.default_thinking_budget = None
        if ext.get("thinking_budget"):
            budget = chat_thinking_budget(str(ext.get("engine")), self.context_limit)
            cap = ext.get("thinking_budget_cap")
            self.default_thinking_budget = min(budget, cap) if budget and cap else budget or 0

    # -- HTTP ---------------------------------------------------------------------------------
    def _connect(self) -> http.client.HTTPConnection:
        cls = http.client.HTTPSConnection if self._https else http.client.HTTPConnection
        return cls(self._host, self._port, timeout=self.timeout)

    def _headers(self) -> dict:
        h = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream"}
        if self.api_key:
            h["Authorization"] = f"Bearer {self.api_key}"
        return h

    def _open(self, method: str, path: str, body: dict | None = None):
        conn = self._connect()
        try:
            data = json.dumps(body).encode() if body is not None else None
            conn.request(method, self._base + path, data, self._headers())
            return conn, conn.getresponse()
        except (OSError, http.client.HTTPException) as e:
            conn.close()
            raise ModelLoadError(f"cannot reach {self.url}: {e}") from None

    @staticmethod
    def _refusal(status: int, data: bytes) -> PhiflashError:
        try:
            err = json.loads(data).get("error") or json.loads(data).get("detail")
        except (ValueError, AttributeError):
            err = None
        message = err.get("message") if isinstance(err, dict) else err
        code = err.get("code") if isinstance(err, dict) else None
        text = str(message or data[:200].decode("utf-8", "replace") or "no message")
        cls = ContextLengthError if code == "context_length_exceeded" else RemoteError
        return cls(f"the server answered {status}: {text}")

    def _get_json(self, path: str, body: dict | None = None):
        conn, resp = self._open("POST" if body is not None else "GET", path, body)
        try:
            data = resp.read()
        finally:
            conn.close()
        if resp.status != 200:
            raise self._refusal(resp.status, data)
        try:
            return json.loads(data)
        except ValueError:
            raise RemoteError(f"{self.url}{path} did not answer JSON") from None

    # -- protocol -----------------------------------------------------------------------------
    def apply_chat_template(self, messages: list[Message]) -> str:
        raise RemoteError("the chat template is applied by the server; there is no local prompt")

    def count_tokens(self, messages: list[Message]) -> int:
        if not self._count_path:
            raise RemoteError(f"{self.url} does not count tokens (it is not `phiflash serve`)")
        return int(self._get_json(self._count_path, {"messages": messages})["prompt_tokens"])

    def reset(self) -> None:
        """Nothing to drop here: the server keeps (and reuses) its own prompt caches."""

    def stream(
        self,
        messages: list[Message],
        params: GenerationParams,
        should_stop: Callable[[], bool] | None = None,
    ) -> Iterator[Chunk]:
        n_prompt = self.count_tokens(messages) if self._count_path else 0
        body = {"messages": [{"role": m["role"], "content": m["content"]} for m in messages]}
        return self._stream("/v1/chat/completions", body, params, should_stop, n_prompt)

    def stream_prompt(
        self,
        prompt: str,
        params: GenerationParams,
        should_stop: Callable[[], bool] | None = None,
    ) -> Iterator[Chunk]:
        return self._stream("/v1/completions", {"prompt": prompt}, params, should_stop, 0)

    # -- streaming ------------------------------------------------------------------------------
    def _request_body(self, body: dict, params: GenerationParams) -> dict:
        body = dict(body, model=self.model_id, stream=True)
        body["stream_options"] = {"include_usage": True}
        body["temperature"] = params.temperature
        body["top_p"] = params.top_p
        if params.max_tokens > 0:  # -1 (until the context is full): the server's default
            body["max_tokens"] = params.max_tokens
        if params.top_k:
            body["top_k"] = params.top_k
        if params.min_p:
            body["min_p"] = params.min_p
        if params.seed is not None:
            body["seed"] = params.seed
        if params.thinking_budget > 0:
            if not self.server_info.get("thinking_budget"):
                raise RemoteError(
                    f"{self.url} has no thinking budget (it is not `phiflash serve`); "
                    "set the thinking budget to 0"
                )
            body["thinking_budget"] = params.thinking_budget
        return body

    def _stream(self, path, body, params, should_stop, n_prompt) -> Iterator[Chunk]:
        conn, resp = self._open("POST", path, self._request_body(body, params))
        if resp.status != 200:
            data = resp.read()
            conn.close()
            raise self._refusal(resp.status, data)
        return self._chunks(conn, resp, should_stop, n_prompt)

    def _chunks(self, conn, resp, should_stop, n_prompt) -> Iterator[Chunk]:
        t0 = time.perf_counter()
        t_first = None
        n_gen = 0
        finish = None
        n_reported = None  # the server's own count of generated tokens, when it sends usage
        thinking = False  # inside a "reasoning" part (servers that split the think block off)

        def chunk(text: str, finish_reason: str | None) -> Chunk:
            now = time.perf_counter()
            gen_s = now - t_first if t_first is not None and n_gen > 1 else 0.0
            first_s = (t_first or now) - t0
            return Chunk(
                text=text,
                prompt_tokens=n_prompt,
                prompt_tps=n_prompt / first_s if n_prompt and first_s > 0 else 0.0,
                generation_tokens=n_gen,
                generation_tps=(n_gen - 1) / gen_s if gen_s > 0 else 0.0,
                context_used=n_prompt + n_gen,
                finish_reason=finish_reason,
            )

        try:
            while True:
                if should_stop is not None and should_stop():
                    yield chunk("", "cancelled")
                    return
                try:
                    line = resp.readline()
                except TimeoutError:
                    raise RemoteError(
                        f"no answer from {self.url} in {self.timeout:.0f} s"
                    ) from None
                except (OSError, http.client.HTTPException) as e:
                    raise RemoteError(f"the server broke off the reply: {e}") from None
                if not line:
                    break
                line = line.decode("utf-8", "replace").strip()
                if not line.startswith("data:"):
                    continue  # blank separators, comments (keepalives), event names
                payload = line[len("data:") :].strip()
                if payload == "[DONE]":
                    break
                try:
                    event = json.loads(payload)
                except ValueError:
                    raise RemoteError(f"the server sent a bad event: {payload[:200]}") from None
                if "error" in event:
                    raise self._refusal(200, payload.encode())
                usage = event.get("usage")
                if isinstance(usage, dict):
                    n_prompt = int(usage.get("prompt_tokens") or n_prompt)
                    n_reported = usage.get("completion_tokens")
                for choice in event.get("choices") or []:
                    delta = choice.get("delta") or {}
                    text = ""
                    reasoning = delta.get("reasoning") or delta.get("reasoning_content")
                    if reasoning:
                        text += ("" if thinking else "<think>") + reasoning
                        thinking = True
                    content = delta.get("content") if "delta" in choice else choice.get("text")
                    if content:
                        text += ("</think>" if thinking else "") + content
                        thinking = False
                    if choice.get("finish_reason"):
                        finish = choice["finish_reason"]
                    if text:
                        n_gen += 1
                        if t_first is None:
                            t_first = time.perf_counter()
                        yield chunk(text, None)
            if thinking:
                yield chunk("</think>", None)
            if finish is None:
                raise RemoteError("the server ended the reply without a finish reason")
            if isinstance(n_reported, int) and n_reported > 0:
                n_gen = n_reported
            yield chunk("", "length" if finish == "length" else "stop")
        finally:
            resp.close()
            conn.close()
