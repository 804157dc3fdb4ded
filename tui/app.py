"""`phiflash chat`: the terminal math tutor.

``make_app`` builds the app for the CLI and for the tests; ``main`` parses the flags. The app
holds the plain-data state (conversation, settings, engine); screens display it.
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

from textual.app import App

from phiflash.engine import (
    CHAT_THINKING_BUDGET,
    DEFAULT_MAX_TOKENS,
    DEFAULT_TEMP,
    DEFAULT_TOP_P,
    FakeEngine,
    GenerationParams,
    chat_thinking_budget,
    default_max_tokens,
)
from phiflash.errors import InvalidParamsError
from phiflash.paths import RESOLUTION_HELP
from phiflash.tui.conversation import Conversation
from phiflash.tui.history import HistoryStore
from phiflash.tui.screens.chat import ChatScreen
from phiflash.tui.worker import EngineFailed, EngineReady, describe_error

DEMO_REPLY = (
    "<think>The problem asks for the sum of the first 10 positive integers. "
    "Use Gauss's pairing: 1 + 10, 2 + 9, and so on give 5 pairs of 11. "
    "So the sum is 5 times 11 = 55. Check with the formula n(n+1)/2 = 10 * 11 / 2 = 55. "
    "Good.</think>\n"
    "Pair the numbers from both ends:\n\n"
    "- $1 + 10 = 11$, $2 + 9 = 11$, … there are $\\frac{10}{2} = 5$ such pairs.\n"
    "- In general $\\sum_{k=1}^{n} k = \\frac{n(n+1)}{2}$.\n\n"
    "So the sum is\n\\[ 5 \\times 11 = \\boxed{55} \\]"
)


class PhiflashApp(App):
    CSS_PATH = "app.tcss"
    TITLE = "phiflash chat"

    def __init__(
        self,
        engine=None,
        *,
        engine_factory: Callable[[], object] | None = None,
        store: HistoryStore | None = None,
        params: GenerationParams | None = None,
        system_prompt: str | None = None,
        resume: bool = False,
        export_dir: Path | None = None,
        batch_interval: float = 0.05,
        model_label: str = "",
    ):
        super().__init__()
        self.engine = engine
        self.engine_factory = engine_factory
        self.store = store or HistoryStore.default()
        saved = self.store.get_settings()
        self.params = params or GenerationParams(
            max_tokens=saved.get("max_tokens") or DEFAULT_MAX_TOKENS,
            temperature=saved.get("temperature", DEFAULT_TEMP),
            top_p=saved.get("top_p", DEFAULT_TOP_P),
            thinking_budget=saved.get("thinking_budget") or 0,
        )
        # limits the user chose (saved or given); the others follow the engine when it loads
        self.chosen = (
            {k for k in ("max_tokens", "thinking_budget") if saved.get(k) is not None}
            if params is None
            else {"max_tokens", "thinking_budget"}
        )
        self.system_prompt = (
            system_prompt if system_prompt is not None else saved.get("system_prompt", "")
        )
        self.resume = resume
        self.export_dir = Path(export_dir) if export_dir else Path.cwd()
        self.batch_interval = batch_interval
        self.model_label = model_label or (getattr(engine, "model_path", "") if engine else "")
        self.engine_lock = threading.Lock()
        self.load_error: str | None = None
        self.last_export: Path | None = None
        self.conversation = Conversation(system_prompt=self.system_prompt)
        self.chat_screen = ChatScreen()

    def get_default_screen(self) -> ChatScreen:
        return self.chat_screen

    async def start(self) -> None:
        """Called once the chat screen is mounted: resume, then load the engine."""
        if self.store.notice:  # the history db was damaged or cannot be written
            self.notify(self.store.notice, severity="warning", timeout=15)
        # a write that fails later (disk full, file gone): the store goes on in memory and
        # says so (notify posts a message: safe from the generation worker's thread)
        self.store.on_notice = lambda msg: self.notify(msg, severity="warning", timeout=15)
        if self.resume:
            last = self.store.last_id()
            if last is None:
                self.notify("No saved conversation to resume.", timeout=3)
            else:
                await self.open_conversation(last)
        if self.engine is not None:
            self._engine_ready(self.engine)
        elif self.engine_factory is not None:
            self.chat_screen.show_loading(f"Loading {self.model_label or 'the model'}…")
            self.run_worker(self._load_engine, thread=True, group="load")
        else:
            self.chat_screen.show_loading(None)

    def _load_engine(self) -> None:
        try:
            engine = self.engine_factory()
        except ImportError as e:
            self.post_message(EngineFailed(f"this engine is not available here ({e})"))
        except Exception as e:
            self.post_message(EngineFailed(describe_error(e)))
        else:
            self.post_message(EngineReady(engine))

    def _engine_ready(self, engine) -> None:
        self.engine = engine
        self.model_label = self.model_label or engine.model_path
        self.chat_screen.show_loading(None)
        self.chat_screen.query_one("#stats").set_engine(engine)
        self._engine_defaults(engine)
        self.sub_title = f"{Path(engine.model_path).name} · {engine.name} {engine.quantization}"

    def _engine_defaults(self, engine) -> None:
        """Max tokens and thinking budget for this model unless the user chose them (a
        reasoning-size model gets phiflash.engine's REASONING_MAX_TOKENS and the engine's chat
        budget); and, once, a word when MLX runs a quantized model without a GPU."""
        limit = int(getattr(engine, "context_limit", 0) or 0)
        if "max_tokens" not in self.chosen and limit:
            # a server's own default first (RemoteEngine: within the server's cap)
            server_default = getattr(engine, "default_max_tokens", None)
            self.params.max_tokens = server_default or default_max_tokens(limit)
        if "thinking_budget" not in self.chosen and limit:
            budget = getattr(engine, "default_thinking_budget", None)
            if budget is None:
                budget = chat_thinking_budget(engine.name, limit)
            self.params.thinking_budget = budget
        if getattr(engine, "name", "") == "mlx":
            from phiflash.engines import slow_path_notice

            note = slow_path_notice(engine)
            if note:
                self.notify(note, severity="warning", timeout=20)

    def on_engine_ready(self, message: EngineReady) -> None:
        self._engine_ready(message.engine)

    async def on_engine_failed(self, message: EngineFailed) -> None:
        self.load_error = message.error
        self.chat_screen.show_loading(None)
        await self.chat_screen.add_error(f"Could not load the model: {message.error}")

    # state changes, called by the screens

    def new_problem(self) -> None:
        """A fresh context: empty conversation, engine cache dropped."""
        if self.engine is not None:
            with self.engine_lock:
                self.engine.reset()
        self.conversation = Conversation(system_prompt=self.system_prompt)

    async def open_conversation(self, conversation_id: int) -> None:
        conv = self.store.load(conversation_id)
        if conv is None:
            return
        if self.engine is not None:
            with self.engine_lock:
                self.engine.reset()
        self.conversation = conv
        await self.chat_screen.show_conversation()

    def apply_settings(
        self,
        system_prompt: str,
        temp: float,
        top_p: float,
        max_tokens: int,
        thinking_budget: int | None = None,
    ):
        # a limit equal to this engine's default is saved as "default" (None), so it follows
        # the next model (the tutor's 2048 tokens must not cut the real model's reasoning)
        limit = int(getattr(self.engine, "context_limit", 0) or 0)
        defaults = {
            "max_tokens": default_max_tokens(limit) if limit else DEFAULT_MAX_TOKENS,
            "thinking_budget": chat_thinking_budget(getattr(self.engine, "name", ""), limit),
        }
        chosen = {"max_tokens": max_tokens, "thinking_budget": thinking_budget}
        for key, value in chosen.items():
            if value is None:
                continue
            setattr(self.params, key, value)
            keep = value != defaults[key]
            self.store.put_settings({key: value if keep else None})
            (self.chosen.add if keep else self.chosen.discard)(key)
        self.system_prompt = system_prompt
        self.params.temperature = temp
        self.params.top_p = top_p
        self.params.max_tokens = max_tokens
        if not self.conversation.turns:
            self.conversation.system_prompt = system_prompt
        self.store.put_settings(
            {
                "system_prompt": system_prompt,
                "temperature": temp,
                "top_p": top_p,
            }
        )


def make_app(engine=None, **kwargs) -> PhiflashApp:
    """The app for the CLI and the tests (``engine`` ready-made, or ``engine_factory``)."""
    return PhiflashApp(engine, **kwargs)


class _SlowLoadFake(FakeEngine):
    """The hidden demo engine (``PHIFLASH_FAKE_ENGINE=1``): canned math with a visible load."""


def _demo_engine() -> FakeEngine:
    time.sleep(float(os.environ.get("PHIFLASH_FAKE_LOAD_S", "1.5")))
    delay = float(os.environ.get("PHIFLASH_FAKE_DELAY", "0.08"))
    return _SlowLoadFake(reply=DEMO_REPLY, delay=delay, model_path="demo (fake engine)")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="phiflash chat", description="Terminal math tutor on Phi-4-mini-flash-reasoning."
    )
    p.add_argument("--model", help=f"{RESOLUTION_HELP} (default: the bundled tutor model)")
    p.add_argument("--engine", choices=["mlx", "gguf"], help="force an engine")
    p.add_argument("--system-prompt", help="system prompt for new problems")
    p.add_argument("--temp", type=float, help=f"sampling temperature (default {DEFAULT_TEMP})")
    p.add_argument("--top-p", type=float, help=f"nucleus sampling (default {DEFAULT_TOP_P})")
    p.add_argument(
        "--max-tokens", type=int, help=f"max tokens per answer (default {DEFAULT_MAX_TOKENS})"
    )
    p.add_argument(
        "--thinking-budget",
        type=int,
        metavar="N",
        help="end the reasoning after N tokens inside <think> (0 = no limit; default: "
        f"{CHAT_THINKING_BUDGET['gguf']} on GGUF, {CHAT_THINKING_BUDGET['mlx']} on MLX for the "
        "real model, none for the tutor)",
    )
    p.add_argument("--resume", action="store_true", help="reopen the last conversation")
    p.add_argument("--server", help="chat with a `phiflash serve` at http://HOST:PORT instead")
    p.add_argument(
        "--api-key",
        default=os.environ.get("PHIFLASH_API_KEY"),
        help="the server's API key (or $PHIFLASH_API_KEY)",
    )
    args = p.parse_args(argv)
    if args.server is not None and args.engine is not None:
        p.error("--engine is the server's choice; leave it out with --server")
    given = {k: v for k, v in (("temperature", args.temp), ("top_p", args.top_p)) if v is not None}
    if args.max_tokens is not None:
        given["max_tokens"] = args.max_tokens
    if args.thinking_budget is not None:
        given["thinking_budget"] = args.thinking_budget
    names = {
        "temperature": "--temp",
        "top_p": "--top-p",
        "max_tokens": "--max-tokens",
        "thinking_budget": "--thinking-budget",
    }
    try:  # the one rule, as `phiflash generate` and the settings screen apply it
        params = GenerationParams(**given).validate(names)
        if {"max_tokens", "thinking_budget"} <= given.keys():  # else max tokens is the model's
            params.check_budget_room(names)
    except InvalidParamsError as e:
        p.exit(2, f"{p.prog}: error: {e}\n")  # one line, without the usage block
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if os.environ.get("PHIFLASH_FAKE_ENGINE") == "1":
        factory, label = _demo_engine, "demo (fake engine)"
    else:
        from phiflash.engines import open_engine

        def factory():
            if args.server is not None:  # the model is the one that server serves
                from phiflash.remote import RemoteEngine

                return RemoteEngine(args.server, api_key=args.api_key, model=args.model)
            return open_engine(args.model, args.engine, mlx_dtype="auto")

        label = args.server or args.model or "the bundled model"
    store = HistoryStore.default()
    if store.notice:
        print(f"note: {store.notice}", file=sys.stderr)
    app = make_app(
        engine_factory=factory,
        store=store,
        system_prompt=args.system_prompt,
        resume=args.resume,
        model_label=label,
    )
    for name, attr in (
        ("temp", "temperature"),
        ("top_p", "top_p"),
        ("max_tokens", "max_tokens"),
        ("thinking_budget", "thinking_budget"),
    ):
        value = getattr(args, name)
        if value is not None:
            setattr(app.params, attr, value)
            app.chosen.add(attr)
    app.run()
    store.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
