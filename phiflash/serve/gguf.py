"""`phiflash serve` on a .gguf: llama-cpp-python's server routes over our own ``Llama``.

The app is llama-cpp-python's FastAPI router (``llama_cpp.server.app.router``: chat and text
completions, streaming, its error formatting) with:

- the ``Llama`` our :class:`~phiflash_gguf.engine.GGUFEngine` builds (its threads, context and
  window-sized sliding-window cache), pinned behind :class:`PinnedProxy`: a request naming any
  other model gets a 404, never the default model silently;
- ``interrupt_requests`` off: a request that arrives while another streams waits its turn (the
  stock default cuts the running stream off, so two students asking at once got one truncated
  answer);
- :class:`ClassroomMiddleware` in front (API key, queue limit, :mod:`phiflash.serve.options`
  validation and defaults, ``/health``, ``/v1/models`` with the phiflash extension, the token
  count).

llama-cpp-python generates one sequence at a time, so requests queue: see docs/SERVE.md for the
measured latency under concurrent students and what multi-sequence batching would take.
"""

from __future__ import annotations

import json
from contextvars import ContextVar

from phiflash.engine import GenerationParams
from phiflash.serve.options import (
    CHAT_PATHS,
    COUNT_TOKENS_PATH,
    DEFAULT_MODEL,
    TEXT_PATHS,
    Classroom,
    RequestError,
    check_messages,
    check_room_context,
    parse_body,
    validate,
)

# llama-cpp-python's own endpoints that stay reachable besides the completions
PASS_THROUGH = ("/extras/tokenize", "/extras/tokenize/count", "/extras/detokenize")

# the params of the request being served: set by the middleware, read in the worker thread
# where llama-cpp-python generates (anyio copies the context into it)
_REQUEST: ContextVar[GenerationParams | None] = ContextVar("phiflash_request", default=None)


def request_logits_processors(params: GenerationParams | None, engine) -> list:
    """Per-request logits processors for llama-cpp-python (the GGUF twin of
    ``phiflash.serve.mlx.request_logits_processors``)."""
    processors: list = []
    if params is not None and params.thinking_budget > 0:
        from phiflash_gguf.thinking import budget_logits_processor

        processors.append(budget_logits_processor(engine.llm, params.thinking_budget))
    return processors


def classroom_llama(engine) -> None:
    """Give ``engine.llm`` a ``create_completion`` that adds the request's own processors.

    llama-cpp-python's routes call ``Llama.create_chat_completion`` / ``Llama.__call__``, and
    both end in ``self.create_completion``: the one method a subclass sees for every request.
    """
    base = type(engine.llm)

    class ClassroomLlama(base):
        def create_completion(self, *args, **kwargs):
            extra = request_logits_processors(_REQUEST.get(), engine)
            if extra:
                from llama_cpp import LogitsProcessorList

                own = kwargs.get("logits_processor") or []
                kwargs["logits_processor"] = LogitsProcessorList([*own, *extra])
            return super().create_completion(*args, **kwargs)

    engine.llm.__class__ = ClassroomLlama


class PinnedProxy:
    """Stands in for llama-cpp-python's ``LlamaProxy``: one ``Llama``, never another."""

    def __init__(self, llama, model_id: str):
        self.llama = llama
        self.model_id = model_id

    def __call__(self, model: str | None = None):
        if model not in (None, self.model_id, DEFAULT_MODEL):
            from fastapi import HTTPException

            raise HTTPException(404, f"model {model!r} is not served here")
        return self.llama

    def __iter__(self):
        yield self.model_id

    def free(self) -> None:
        pass


async def _send_json(send, status: int, payload: dict) -> None:
    data = json.dumps(payload).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": data})


async def _read_json(receive):
    chunks, more = [], True
    while more:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise RequestError(400, "the client went away")
        chunks.append(message.get("body", b""))
        more = message.get("more_body", False)
    return parse_body(b"".join(chunks))


class ClassroomMiddleware:
    """ASGI middleware: the classroom checks before llama-cpp-python's routes see a request."""

    def __init__(self, app, classroom: Classroom, engine):
        self.app = app
        self.room = classroom
        self.engine = engine

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        try:
            await self._route(scope, receive, send)
        except RequestError as e:
            await _send_json(send, e.status, e.body())

    async def _route(self, scope, receive, send):
        room, path, method = self.room, scope["path"], scope["method"]
        if method == "GET" and path == "/health":
            return await _send_json(send, 200, room.health())
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        room.check_key(headers.get("authorization"))
        if method == "GET" and path.rstrip("/") == "/v1/models":
            return await _send_json(send, 200, room.models())
        if method == "POST" and path == COUNT_TOKENS_PATH:
            from starlette.concurrency import run_in_threadpool

            body = await _read_json(receive)
            messages = check_messages(body if isinstance(body, dict) else {}, room)
            n = await run_in_threadpool(self.engine.count_tokens, messages)
            return await _send_json(send, 200, {"prompt_tokens": n})
        if method == "POST" and path in CHAT_PATHS + TEXT_PATHS:
            body, params = validate(await _read_json(receive), room, chat=path in CHAT_PATHS)
            await self._check_context(body, params)
            body["model"] = room.model_id
            body.setdefault("repeat_penalty", 1.0)  # llama-cpp-python's default is 1.1
            room.admit()
            token = _REQUEST.set(params)
            try:
                await self.app(*self._with_body(scope, receive, body, path in CHAT_PATHS), send)
            finally:
                _REQUEST.reset(token)
                room.release()
            return
        if method == "POST" and path in PASS_THROUGH:
            return await self.app(scope, receive, send)
        raise RequestError(404, f"no such endpoint: {method} {path}", "not_found")

    async def _check_context(self, body: dict, params) -> None:
        """The project's one overflow rule (llama-cpp-python would lower max_tokens silently)."""
        from starlette.concurrency import run_in_threadpool

        if "messages" in body:
            n = await run_in_threadpool(self.engine.count_tokens, body["messages"])
        else:
            n = len(await run_in_threadpool(self.engine.tokenize, body["prompt"]))
        check_room_context(n, params, self.room)

    @staticmethod
    def _with_body(scope, receive, body: dict, chat: bool):
        data = json.dumps(body).encode()
        drop = (b"content-length", b"content-type")
        headers = [(k, v) for k, v in scope["headers"] if k.lower() not in drop]
        headers += [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(data))]
        path = "/v1/chat/completions" if chat else "/v1/completions"
        scope = dict(scope, headers=headers, path=path, raw_path=path.encode())
        sent = False

        async def replay():
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": data, "more_body": False}
            return await receive()  # the disconnect that stops a stream

        return scope, replay


def build_app(engine, classroom: Classroom):
    """llama-cpp-python's routes over ``engine.llm``, behind the classroom middleware."""
    from fastapi import FastAPI
    from llama_cpp.server import app as lc_app
    from llama_cpp.server.settings import ServerSettings
    from starlette_context.middleware import RawContextMiddleware
    from starlette_context.plugins import RequestIdPlugin

    lc_app.set_server_settings(ServerSettings(api_key=classroom.api_key, interrupt_requests=False))
    classroom_llama(engine)
    lc_app._llama_proxy = PinnedProxy(engine.llm, classroom.model_id)
    app = FastAPI(title="phiflash serve")
    app.add_middleware(RawContextMiddleware, plugins=(RequestIdPlugin(),))
    app.include_router(lc_app.router)
    return ClassroomMiddleware(app, classroom, engine)


def serve(engine, classroom: Classroom, host: str, port: int, log_level: str = "warning"):
    """Run the app with uvicorn until interrupted."""
    import uvicorn

    uvicorn.run(build_app(engine, classroom), host=host, port=port, log_level=log_level)
