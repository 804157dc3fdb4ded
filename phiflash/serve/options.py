"""Classroom controls and request validation shared by both servers (MLX and GGUF).

A teacher fixes the controls when the server starts (:class:`Classroom`); every generation
request goes through :func:`validate`, which refuses a bad request with a
:class:`RequestError` (an HTTP 4xx and one clear message) or returns the body the stock server
then serves: the model pinned, the system prompt in place, every sampling parameter filled in
with the project's defaults, and the :class:`~phiflash.engine.GenerationParams` the request asked
for. The servers pass per-request options on from those params only (see
``phiflash.serve.mlx.request_logits_processors``), so a new option is a row of :data:`_NUMBERS`
plus the line that applies it.
"""

from __future__ import annotations

import hmac
import json
import threading
from dataclasses import dataclass, field

from phiflash.engine import (
    DEFAULT_MAX_TOKENS,
    DEFAULT_TEMP,
    DEFAULT_TOP_P,
    GenerationParams,
    check_context,
    default_max_tokens,
)
from phiflash.errors import ContextLengthError, InvalidParamsError, PhiflashError

CHAT_PATHS = ("/v1/chat/completions", "/chat/completions")
TEXT_PATHS = ("/v1/completions",)
ROLES = ("system", "user", "assistant")
# the models listing and the health check of `phiflash serve` carry this key with what the chat
# shows (engine, quantization, context); a stock server has none of it
EXTENSION = "phiflash"
COUNT_TOKENS_PATH = "/phiflash/count_tokens"
# mlx_lm.server's name for the model given at start; both servers accept it in requests
DEFAULT_MODEL = "default_model"


class RequestError(PhiflashError):
    """A request the server refuses: an HTTP status and one line for the client."""

    def __init__(self, status: int, message: str, code: str = "invalid_request_error"):
        super().__init__(message)
        self.status = status
        self.code = code

    def body(self) -> dict:
        """OpenAI's error shape: ``{"error": {"message", "type", "code"}}``."""
        kind = "invalid_request_error" if self.status < 500 else "server_error"
        return {"error": {"message": str(self), "type": kind, "code": self.code}}


@dataclass
class Classroom:
    """What the teacher sets at start (``phiflash serve`` flags)."""

    model_id: str  # the one model name requests may carry (also DEFAULT_MODEL)
    engine: str = ""  # "mlx" / "gguf"
    quantization: str = ""
    context_limit: int = 0
    max_tokens_cap: int | None = None
    thinking_budget_cap: int | None = None
    queue_limit: int | None = None
    system_prompt: str | None = None
    api_key: str | None = None
    _in_flight: int = field(default=0, init=False, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)

    def __post_init__(self):
        if self.max_tokens_cap is not None and self.max_tokens_cap < 1:
            raise PhiflashError(f"--max-tokens-cap must be at least 1, got {self.max_tokens_cap}")
        if self.thinking_budget_cap is not None and self.thinking_budget_cap < 1:
            raise PhiflashError(
                f"--thinking-budget-cap must be at least 1, got {self.thinking_budget_cap}"
            )
        if self.queue_limit is not None and self.queue_limit < 1:
            raise PhiflashError(f"--queue-limit must be at least 1, got {self.queue_limit}")

    @property
    def default_max_tokens(self) -> int:
        """New tokens for a request that names no max_tokens: the project's default for this
        model's context (phiflash.engine.default_max_tokens), capped."""
        default = (
            default_max_tokens(self.context_limit) if self.context_limit else DEFAULT_MAX_TOKENS
        )
        return min(default, self.max_tokens_cap or default)

    # -- authentication ----------------------------------------------------------------------
    def check_key(self, authorization: str | None) -> None:
        """``Authorization: Bearer <key>`` must match ``--api-key`` (when one is set)."""
        if self.api_key is None:
            return
        scheme, _, given = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            given.strip().encode(), self.api_key.encode()
        ):
            raise RequestError(401, "missing or wrong API key", "invalid_api_key")

    # -- queue limit -------------------------------------------------------------------------
    def admit(self) -> None:
        """Count one generation request in; past ``queue_limit`` waiting or running: 503."""
        with self._lock:
            if self.queue_limit is not None and self._in_flight >= self.queue_limit:
                raise RequestError(
                    503,
                    f"the server is busy ({self._in_flight} requests running or queued, "
                    f"limit {self.queue_limit}); try again shortly",
                    "server_busy",
                )
            self._in_flight += 1

    def release(self) -> None:
        with self._lock:
            self._in_flight -= 1

    @property
    def in_flight(self) -> int:
        return self._in_flight

    # -- what the chat client reads -----------------------------------------------------------
    def describe(self) -> dict:
        return {
            "engine": self.engine,
            "quantization": self.quantization,
            "context_limit": self.context_limit,
            "max_tokens_cap": self.max_tokens_cap,
            "default_max_tokens": self.default_max_tokens,
            "thinking_budget": True,  # requests may carry `thinking_budget` (0 = no limit)
            "thinking_budget_cap": self.thinking_budget_cap,
            "queue_limit": self.queue_limit,
            "fixed_system_prompt": self.system_prompt is not None,
            "count_tokens": COUNT_TOKENS_PATH,
        }

    def models(self) -> dict:
        """The ``/v1/models`` answer: the pinned model, with the phiflash extension."""
        model = {"id": self.model_id, "object": "model", "owned_by": "phiflash"}
        return {"object": "list", "data": [{**model, EXTENSION: self.describe()}]}

    def health(self) -> dict:
        return {"status": "ok", "model": self.model_id, "in_flight": self.in_flight}


def _number(body: dict, name: str, kind: type, lo=None, hi=None, lo_open=False):
    value = body.get(name)
    if value is None:
        return None
    ok = isinstance(value, kind) and not isinstance(value, bool)
    if kind is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not ok:
        want = "an integer" if kind is int else "a number"
        raise RequestError(400, f"{name} must be {want}, got {value!r}", "invalid_value")
    if (lo is not None and (value <= lo if lo_open else value < lo)) or (
        hi is not None and value > hi
    ):
        where = f"{'(' if lo_open else '['}{lo}, {hi if hi is not None else '∞'}]"
        raise RequestError(400, f"{name} must be in {where}, got {value}", "invalid_value")
    return value


# name -> (type, low, high, low bound open); each parsed value lands in GenerationParams
_NUMBERS = {
    "temperature": (float, 0.0, 2.0, False),
    "top_p": (float, 0.0, 1.0, True),
    "top_k": (int, 0, None, False),
    "min_p": (float, 0.0, 1.0, False),
    "seed": (int, None, None, False),
    "thinking_budget": (int, 0, None, False),  # tokens inside <think>; 0 = no limit
}
# options of other servers that this server does not serve: refused, never ignored
_REFUSED = {
    "adapters": "adapters are not served",
    "draft_model": "speculative decoding with another model is not served",
}


def _max_tokens(body: dict, room: Classroom) -> int:
    value = body.get("max_tokens")
    alt = body.get("max_completion_tokens")
    if value is not None and alt is not None and value != alt:
        raise RequestError(400, "max_tokens and max_completion_tokens disagree", "invalid_value")
    value = alt if value is None else value
    if value is None:
        return room.default_max_tokens
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise RequestError(
            400,
            f"max_tokens must be a positive integer, got {value!r} (omit it for the server's "
            f"default of {room.default_max_tokens})",
            "invalid_value",
        )
    if room.max_tokens_cap is not None and value > room.max_tokens_cap:
        raise RequestError(
            400,
            f"max_tokens {value} exceeds this server's cap of {room.max_tokens_cap}",
            "max_tokens_cap",
        )
    return value


def _cap_thinking_budget(params: GenerationParams, room: Classroom) -> None:
    """With ``--thinking-budget-cap``: no budget (0) gets the cap, a larger one is refused."""
    cap = room.thinking_budget_cap
    if cap is None:
        return
    if params.thinking_budget > cap:
        raise RequestError(
            400,
            f"thinking_budget {params.thinking_budget} exceeds this server's cap of {cap}",
            "thinking_budget_cap",
        )
    params.thinking_budget = params.thinking_budget or cap


def check_model(body: dict, room: Classroom) -> None:
    model = body.get("model")
    if model is None or model in (room.model_id, DEFAULT_MODEL):
        return
    if not isinstance(model, str):
        raise RequestError(400, f"model must be a string, got {model!r}", "invalid_value")
    raise RequestError(
        404,
        f"model {model!r} is not served here; this server serves only {room.model_id!r}",
        "model_not_found",
    )


def check_messages(body: dict, room: Classroom) -> list[dict]:
    """The chat messages, checked, with the teacher's fixed system prompt in front."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise RequestError(400, "messages must be a non-empty list", "invalid_value")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ROLES:
            raise RequestError(
                400, f"messages[{i}] needs a role of {', '.join(ROLES)}", "invalid_value"
            )
        if not isinstance(m.get("content"), str):
            raise RequestError(400, f"messages[{i}].content must be a string", "invalid_value")
    if room.system_prompt is None:
        return [{"role": m["role"], "content": m["content"]} for m in messages]
    if any(m["role"] == "system" for m in messages):
        raise RequestError(
            400, "this server sets the system prompt; send no system message", "fixed_system"
        )
    head = [{"role": "system", "content": room.system_prompt}]
    return head + [{"role": m["role"], "content": m["content"]} for m in messages]


def parse_body(data: bytes):
    """A request body's JSON (an empty body reads as null), or a RequestError."""
    try:
        return json.loads(data.decode() or "null")
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise RequestError(400, f"the body is not valid JSON ({e})") from None


def check_room_context(prompt_tokens: int, params: GenerationParams, room: Classroom) -> None:
    """The project's one overflow rule for a request, before it is queued (a RequestError)."""
    try:
        check_context(prompt_tokens, params.max_tokens, room.context_limit)
    except ContextLengthError as e:
        raise RequestError(400, str(e), "context_length_exceeded") from None


def validate(body, room: Classroom, chat: bool) -> tuple[dict, GenerationParams]:
    """The body the stock server serves, and the params it asked for (or a RequestError)."""
    if not isinstance(body, dict):
        raise RequestError(400, "the request body must be a JSON object", "invalid_value")
    check_model(body, room)
    for name, why in _REFUSED.items():
        if body.get(name) is not None:
            raise RequestError(400, f"{name}: {why}", "unsupported_option")
    if body.get("n", 1) != 1:
        raise RequestError(400, "n must be 1 (one answer per request)", "invalid_value")
    if not isinstance(body.get("stream", False), bool):
        raise RequestError(400, "stream must be true or false", "invalid_value")
    stop = body.get("stop")
    if stop is not None and not (
        isinstance(stop, str) or (isinstance(stop, list) and all(isinstance(s, str) for s in stop))
    ):
        raise RequestError(400, "stop must be a string or a list of strings", "invalid_value")

    out = {k: v for k, v in body.items() if k not in ("model", "max_completion_tokens")}
    if chat:
        out["messages"] = check_messages(body, room)
    else:
        if room.system_prompt is not None:
            raise RequestError(
                400,
                "this server has a fixed system prompt: use /v1/chat/completions",
                "fixed_system",
            )
        if not isinstance(body.get("prompt"), str) or not body["prompt"]:
            raise RequestError(400, "prompt must be a non-empty string", "invalid_value")

    params = GenerationParams(
        max_tokens=_max_tokens(body, room), temperature=DEFAULT_TEMP, top_p=DEFAULT_TOP_P
    )
    for name, (kind, lo, hi, lo_open) in _NUMBERS.items():
        value = _number(body, name, kind, lo, hi, lo_open)
        if value is not None:
            setattr(params, name, value)
    names = {name: name for name in ("top_p", "min_p", "top_k", "max_tokens", "thinking_budget")}
    try:  # the project's rules on top of the server's own bounds (catches NaN too); a budget
        # the request chose must leave room for the answer (the cap's default is not checked)
        params.validate(names).check_budget_room(names)
    except InvalidParamsError as e:
        raise RequestError(400, str(e), "invalid_value") from None
    _cap_thinking_budget(params, room)
    out.pop("thinking_budget", None)  # applied by the server's own hook, not a stock field
    out.update(
        max_tokens=params.max_tokens,
        temperature=params.temperature,
        top_p=params.top_p,
        top_k=params.top_k,
        min_p=params.min_p,
    )
    if params.seed is not None:
        out["seed"] = params.seed
    return out, params
