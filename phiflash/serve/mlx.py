"""`phiflash serve` on MLX: mlx-lm 0.32.2's server, extended through its own classes.

- :class:`PinnedModelProvider` (a ``ModelProvider``) loads the model once with
  :func:`phiflash_mlx.load` (HF dir, converted dir, hub id, bundled tutor) and refuses every
  other model, adapter or draft model a request names: a request's ``model`` field never
  loads a path or a hub repo. ``one_at_a_time`` turns batching off (``is_batchable = False``).
- :class:`ClassroomHandler` (an ``APIHandler``) checks the API key, the queue limit and the
  request (:mod:`phiflash.serve.options`) before the stock handler reads the body, and answers
  ``/health``, ``/v1/models`` (with the phiflash extension) and the token count itself.
- :class:`ClassroomResponseGenerator` (a ``ResponseGenerator``) carries each request's
  :class:`~phiflash.engine.GenerationParams` to the generation thread, where
  :func:`request_logits_processors` adds per-request logits processors to the stock ones.

mlx-lm 0.32.2's ``server.run`` does not pass its ``handler_class`` on to ``_run_http_server``,
so :func:`serve` builds the same three pieces itself and hands the handler to
``_run_http_server``.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import threading

from mlx_lm import server as mlx_server

from phiflash.engine import DEFAULT_TEMP, DEFAULT_TOP_P, GenerationParams
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


def request_logits_processors(params: GenerationParams | None, tokenizer) -> list:
    """Per-request logits processors beyond mlx-lm's own (built in the generation thread).

    The one place a per-request option becomes a processor; each row of a batch gets its own
    list (mlx-lm's BatchGenerator calls it with that row's tokens), so each request's thinking
    budget is its own.
    """
    processors: list = []
    if params is None:  # a request that did not come through ClassroomHandler
        return processors
    if params.thinking_budget > 0:
        from phiflash_mlx.thinking import budget_processor

        processors.append(budget_processor(tokenizer, params.thinking_budget))
    return processors


_stock_logits_processors = mlx_server._make_logits_processors


def _with_request_processors(provider):
    """mlx-lm's ``_make_logits_processors`` plus each request's own (request_logits_processors)."""

    def make(args):
        params = getattr(args, "phiflash_params", None)
        return _stock_logits_processors(args) + request_logits_processors(
            params, provider.tokenizer
        )

    return make


def server_args(
    model_id: str,
    one_at_a_time: bool = False,
    decode_concurrency: int = 32,
    prompt_concurrency: int = 8,
    prefill_step_size: int = 2048,
    prompt_cache_size: int = 10,
    max_tokens: int = 2048,
) -> argparse.Namespace:
    """The namespace mlx_lm.server's ``main`` would parse, with phiflash's defaults."""
    return argparse.Namespace(
        model=model_id,
        adapter_path=None,
        draft_model=None,
        num_draft_tokens=3,
        trust_remote_code=False,
        chat_template="",
        use_default_chat_template=False,
        chat_template_args={},
        allowed_origins=["*"],
        temp=DEFAULT_TEMP,
        top_p=DEFAULT_TOP_P,
        top_k=0,
        min_p=0.0,
        max_tokens=max_tokens,
        decode_concurrency=decode_concurrency,
        prompt_concurrency=prompt_concurrency,
        prefill_step_size=prefill_step_size,
        prompt_cache_size=prompt_cache_size,
        prompt_cache_bytes=None,
        kv_bits=None,
        kv_group_size=64,
        quantized_kv_start=mlx_server.DEFAULT_QUANTIZED_KV_START,
        pipeline=False,
        one_at_a_time=one_at_a_time,
    )


class PinnedModelProvider(mlx_server.ModelProvider):
    """Serves the one model loaded at start; any other model, adapter or draft is refused."""

    def __init__(self, cli_args: argparse.Namespace, model_path: str, dtype=None):
        super().__init__(cli_args)
        self.model_path = str(model_path)
        self._dtype = dtype
        self._load(DEFAULT_MODEL)  # at start, so a bad model ends `serve` with one line

    def _load(self, model_path, adapter_path=None, draft_model_path=None):
        from mlx_lm.models.cache import make_prompt_cache

        from phiflash_mlx import load

        self.reset()
        from phiflash.paths import resolve_model
        from phiflash_mlx.load import load_tokenizer

        model, tokenizer = load(self.model_path, dtype=self._dtype)
        # the HTTP threads count prompt tokens with their own tokenizer: a fast tokenizer used
        # by two threads at once can fail ("Already borrowed"), and the generation thread
        # tokenizes with the other one
        self.counting_tokenizer = load_tokenizer(resolve_model(self.model_path))
        self.counting_lock = threading.Lock()
        self.model_key = (DEFAULT_MODEL, None, None)
        self.model, self.tokenizer = model, tokenizer
        self.processor = None
        self.draft_model = None
        # every cache of the model merges into a batch (the model honours mlx-lm's batch
        # caches); --one-at-a-time serves requests in turn instead
        self.is_batchable = not self.cli_args.one_at_a_time and all(
            hasattr(c, "merge") for c in make_prompt_cache(model)
        )

    def load(self, model_path, adapter_path=None, draft_model_path=None):
        if model_path not in (DEFAULT_MODEL, self.cli_args.model):
            raise ValueError(f"model {model_path!r} is not served here")
        if adapter_path is not None:
            raise ValueError("adapters are not served")
        if draft_model_path not in (None, DEFAULT_MODEL):
            raise ValueError("draft models are not served")
        if self.model is None:
            self._load(DEFAULT_MODEL)
        return self.model, self.tokenizer


class ClassroomResponseGenerator(mlx_server.ResponseGenerator):
    """Hands each request's GenerationParams to the generation thread with its arguments."""

    def generate(self, request, generation_args, progress_callback=None):
        generation_args.phiflash_params = getattr(request, "phiflash_params", None)
        return super().generate(request, generation_args, progress_callback)


class ClassroomHandler(mlx_server.APIHandler):
    """mlx-lm's handler behind the classroom checks (key, queue limit, validation)."""

    classroom: Classroom  # set by make_handler

    def log_message(self, format, *args):  # noqa: A002 - BaseHTTPRequestHandler's signature
        logging.debug("%s - %s", self.address_string(), format % args)

    def _send_json(self, status: int, payload: dict) -> None:
        data = json.dumps(payload).encode()
        self._set_completion_headers(status)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
        self.wfile.flush()

    def _read_json(self):
        try:
            length = int(self.headers.get("Content-Length", ""))
        except ValueError:
            raise RequestError(411, "a Content-Length header is required") from None
        return parse_body(self.rfile.read(length))

    def do_GET(self):
        try:
            if self.path == "/health":
                return self._send_json(200, self.classroom.health())
            self.classroom.check_key(self.headers.get("Authorization"))
            if self.path.rstrip("/") == "/v1/models":
                return self._send_json(200, self.classroom.models())
            raise RequestError(404, f"no such endpoint: GET {self.path}", "not_found")
        except RequestError as e:
            self._send_json(e.status, e.body())

    def do_POST(self):
        room = self.classroom
        try:
            room.check_key(self.headers.get("Authorization"))
            if self.path == COUNT_TOKENS_PATH:
                return self._count_tokens(self._read_json())
            if self.path not in CHAT_PATHS + TEXT_PATHS:
                raise RequestError(404, f"no such endpoint: POST {self.path}", "not_found")
            body, params = validate(self._read_json(), room, chat=self.path in CHAT_PATHS)
            self._check_context(body, params)
            room.admit()
        except RequestError as e:
            return self._send_json(e.status, e.body())
        body["model"] = room.model_id  # PinnedModelProvider.load serves it; answers echo it
        self.phiflash_params = params
        data = json.dumps(body).encode()
        self.rfile = io.BytesIO(data)  # the stock handler reads the checked body
        del self.headers["Content-Length"]
        self.headers["Content-Length"] = str(len(data))
        try:
            super().do_POST()
        except (BrokenPipeError, ConnectionResetError):
            logging.info("client went away; its request was stopped")
        finally:
            room.release()

    def handle_chat_completions(self):
        request = super().handle_chat_completions()
        request.phiflash_params = self.phiflash_params
        return request

    def handle_text_completions(self):
        request = super().handle_text_completions()
        request.phiflash_params = self.phiflash_params
        return request

    def _prompt_tokens(self, body: dict) -> int:
        provider = self.response_generator.model_provider
        tokenizer = provider.counting_tokenizer
        with provider.counting_lock:
            if "messages" in body:
                return len(
                    tokenizer.apply_chat_template(
                        body["messages"], add_generation_prompt=True, tokenize=True
                    )
                )
            return len(tokenizer.encode(body["prompt"]))

    def _check_context(self, body: dict, params: GenerationParams) -> None:
        """The project's one overflow rule, before the request is queued."""
        check_room_context(self._prompt_tokens(body), params, self.classroom)

    def _count_tokens(self, body) -> None:
        body = {"messages": check_messages(body if isinstance(body, dict) else {}, self.classroom)}
        self._send_json(200, {"prompt_tokens": self._prompt_tokens(body)})


def make_handler(classroom: Classroom) -> type[ClassroomHandler]:
    return type("Handler", (ClassroomHandler,), {"classroom": classroom})


def serve(provider: PinnedModelProvider, classroom: Classroom, host: str, port: int) -> None:
    """Run mlx-lm's HTTP server with the classroom handler until interrupted."""
    # mlx-lm builds each request's processors with this module function, in the generation
    # thread; ours adds the request's own
    mlx_server._make_logits_processors = _with_request_processors(provider)
    cache = mlx_server.LRUPromptCache(provider.cli_args.prompt_cache_size)
    generator = ClassroomResponseGenerator(provider, cache)
    try:
        mlx_server._run_http_server(host, port, generator, handler_class=make_handler(classroom))
    finally:
        if generator.generation_available():
            generator.stop_and_join()
