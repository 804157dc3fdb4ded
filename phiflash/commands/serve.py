"""`phiflash serve`: one OpenAI-compatible server for a classroom (MLX dir or .gguf)."""

from __future__ import annotations

import argparse
import ipaddress
import logging
import os
import sys
from pathlib import Path
from types import SimpleNamespace

from phiflash.console import command_main
from phiflash.engine import DEFAULT_MAX_TOKENS, REASONING_CONTEXT, REASONING_MAX_TOKENS
from phiflash.engines import add_engine_args
from phiflash.errors import PhiflashError

API_KEY_ENV = "PHIFLASH_API_KEY"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="phiflash serve",
        description=(
            "Serve the model over an OpenAI-compatible HTTP API (/v1/chat/completions, "
            "/v1/completions, streaming, /v1/models, /health). Students connect with "
            "`phiflash chat --server http://HOST:PORT` or any OpenAI client."
        ),
    )
    add_engine_args(p)
    p.add_argument("--host", default="127.0.0.1", help="listen address (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8080, help="listen port (default 8080)")
    p.add_argument(
        "--api-key",
        default=os.environ.get(API_KEY_ENV),
        help=f"key every request must send as `Authorization: Bearer KEY` (or ${API_KEY_ENV})",
    )
    p.add_argument("--name", help="the model name clients see (default: the model's file name)")
    p.add_argument(
        "--max-tokens-cap",
        type=int,
        help=f"most new tokens a request may ask for (default: no cap); requests that name none "
        f"get the chat's default ({DEFAULT_MAX_TOKENS}, {REASONING_MAX_TOKENS} for a model with "
        f"a {REASONING_CONTEXT}-token context), capped",
    )
    p.add_argument(
        "--thinking-budget-cap",
        type=int,
        help="most tokens a reply may think (inside <think>) before </think> is forced; "
        "requests that name no budget get the cap",
    )
    p.add_argument("--queue-limit", type=int, help="most requests running or waiting (503 past it)")
    p.add_argument("--system-prompt", help="a fixed system prompt for every chat request")
    g = p.add_argument_group("MLX")
    g.add_argument(
        "--one-at-a-time", action="store_true", help="serve requests in turn instead of batching"
    )
    g.add_argument(
        "--decode-concurrency", type=int, default=32, help="most requests decoded in one batch"
    )
    g = p.add_argument_group("GGUF")
    g.add_argument("--threads", type=int, help="CPU threads (default: all cores)")
    g.add_argument("--n-ctx", type=int, help="context cells to allocate")
    p.add_argument("--log-level", default="WARNING", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    return p


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _check(p: argparse.ArgumentParser, args) -> None:
    if not 0 < args.port < 65536:
        p.error(f"--port must be in 1..65535, got {args.port}")
    for flag in (
        "max_tokens_cap",
        "thinking_budget_cap",
        "queue_limit",
        "decode_concurrency",
        "threads",
        "n_ctx",
    ):
        value = getattr(args, flag)
        if value is not None and value < 1:
            p.error(f"--{flag.replace('_', '-')} must be at least 1, got {value}")
    if args.api_key is not None and not args.api_key.strip():
        p.error("--api-key is empty")
    if args.system_prompt is not None and not args.system_prompt.strip():
        p.error("--system-prompt is empty")


def main(argv: list[str] | None = None) -> int:
    p = build_parser()
    args = p.parse_args(argv)
    _check(p, args)
    logging.basicConfig(
        level=getattr(logging, args.log_level), format="%(asctime)s %(levelname)s %(message)s"
    )
    from phiflash.serve.options import Classroom
    from phiflash.store import find_model

    path = find_model(args.model, args.engine)  # pulled model > HF cache > alias
    kind = args.engine or ("gguf" if str(path).endswith(".gguf") else "mlx")
    name = args.name or (args.model if args.model and not Path(args.model).exists() else path.name)
    room = dict(
        model_id=name,
        engine=kind,
        max_tokens_cap=args.max_tokens_cap,
        thinking_budget_cap=args.thinking_budget_cap,
        queue_limit=args.queue_limit,
        system_prompt=args.system_prompt,
        api_key=args.api_key,
    )
    if kind == "gguf":
        from phiflash.serve import gguf
        from phiflash_gguf.engine import DEFAULT_N_CTX, GGUFEngine

        engine = GGUFEngine(str(path), n_threads=args.threads, n_ctx=args.n_ctx or DEFAULT_N_CTX)
        classroom = Classroom(
            **room, quantization=engine.quantization, context_limit=engine.context_limit
        )
        _announce(args, classroom, "one request at a time, the others queue")
        gguf.serve(engine, classroom, args.host, args.port, args.log_level.lower())
    elif kind == "mlx":
        from phiflash.checkpoint import read_config
        from phiflash.serve import mlx
        from phiflash_mlx.engine import describe_quantization

        cli_args = mlx.server_args(
            name,
            one_at_a_time=args.one_at_a_time,
            decode_concurrency=args.decode_concurrency,
        )
        provider = mlx.PinnedModelProvider(cli_args, str(path))
        classroom = Classroom(
            **room,
            quantization=describe_quantization(read_config(path), provider.model),
            context_limit=int(provider.model.args.max_position_embeddings),
        )
        how = "in turn" if not provider.is_batchable else "batched"
        from phiflash.engines import slow_path_notice

        # MLX quantized without a GPU: say once that the GGUF engine is the fast path
        note = slow_path_notice(SimpleNamespace(name="mlx", quantization=classroom.quantization))
        if note:
            print(f"note: {note}", file=sys.stderr)
        _announce(args, classroom, f"concurrent requests {how}")
        mlx.serve(provider, classroom, args.host, args.port)
    else:  # pragma: no cover - argparse choices
        raise PhiflashError(f"unknown engine {kind!r}")
    return 0


def _announce(args, room, how: str) -> None:
    url = f"http://{args.host}:{args.port}"
    print(
        f"serving {room.model_id} ({room.engine} {room.quantization}, context "
        f"{room.context_limit}; {how}) at {url}/v1",
        file=sys.stderr,
    )
    print(f"students: phiflash chat --server {url}", file=sys.stderr, flush=True)
    if not _is_loopback(args.host) and args.api_key is None:
        print(
            f"warning: listening on {args.host} without --api-key: anyone who can reach this "
            "machine can use the model",
            file=sys.stderr,
            flush=True,
        )


if __name__ == "__main__":
    command_main(main)
