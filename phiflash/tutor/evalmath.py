"""``phiflash eval-math``: greedy accuracy on the held-out tutor problems, for any engine.

Each problem is sent as a fresh chat (the engine's cache is reset), the reply's last
``\\boxed{}`` is compared with the gold answer by :func:`phiflash.tutor.answers.answers_equal`.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterable

from phiflash.engine import DEFAULT_MAX_TOKENS, Engine, GenerationParams
from phiflash.tutor.answers import answers_equal, extract_boxed
from phiflash.tutor.data import KINDS, prompt_messages

DEFAULT_N = 500


def greedy_params(max_tokens: int = DEFAULT_MAX_TOKENS) -> GenerationParams:
    return GenerationParams(max_tokens=max_tokens, temperature=0.0, top_p=1.0, top_k=0, seed=0)


def solve(engine: Engine, messages: list[dict], params: GenerationParams) -> dict:
    """Run one chat from an empty cache; the reply text, its token count and finish reason."""
    engine.reset()
    parts, last = [], None
    for chunk in engine.stream(messages, params):
        parts.append(chunk.text)
        last = chunk
    return {
        "reply": "".join(parts),
        "tokens": last.generation_tokens if last else 0,
        "finish_reason": last.finish_reason if last else None,
    }


def evaluate(
    engine: Engine,
    problems: Iterable[dict],
    params: GenerationParams | None = None,
    progress: bool | None = None,
    on_result: Callable[[dict], None] | None = None,
) -> dict:
    """Accuracy of ``engine`` on ``problems`` (examples from :func:`tutor_data.dataset`).

    ``params`` defaults to greedy decoding. Returns dict(accuracy, n, correct, per_kind,
    failures, tokens, seconds); ``per_kind`` maps kind -> dict(n, correct, accuracy) and
    ``failures`` lists dict(kind, question, gold, pred, reply, finish_reason).
    ``progress``: a tqdm bar (None = only on a terminal).
    """
    from tqdm import tqdm

    params = params or greedy_params()
    problems = list(problems)
    per_kind: dict[str, dict] = {}
    failures = []
    correct = tokens = 0
    start = time.perf_counter()
    bar = tqdm(
        problems,
        desc="eval-math",
        unit="problem",
        disable=(not sys.stderr.isatty()) if progress is None else not progress,
        file=sys.stderr,
    )
    for i, ex in enumerate(bar):
        out = solve(engine, prompt_messages(ex), params)
        pred = extract_boxed(out["reply"])
        ok = answers_equal(pred, ex["answer"])
        tokens += out["tokens"]
        k = per_kind.setdefault(ex["kind"], {"n": 0, "correct": 0})
        k["n"] += 1
        k["correct"] += int(ok)
        correct += int(ok)
        if not ok:
            failures.append(
                {
                    "kind": ex["kind"],
                    "question": ex.get("question", ex["messages"][-2]["content"]),
                    "gold": ex["answer"],
                    "pred": pred,
                    "reply": out["reply"],
                    "finish_reason": out["finish_reason"],
                }
            )
        if on_result is not None:
            on_result({"example": ex, "pred": pred, "correct": ok, **out})
        bar.set_postfix(acc=f"{correct / (i + 1):.1%}")
    bar.close()
    for k in per_kind.values():
        k["accuracy"] = k["correct"] / k["n"]
    order = {k: i for i, k in enumerate(KINDS)}
    per_kind = dict(sorted(per_kind.items(), key=lambda kv: order.get(kv[0], len(order))))
    n = len(problems)
    return {
        "accuracy": correct / n if n else 0.0,
        "n": n,
        "correct": correct,
        "per_kind": per_kind,
        "failures": failures,
        "tokens": tokens,
        "seconds": time.perf_counter() - start,
    }


def format_table(result: dict) -> str:
    """The per-kind accuracy table (plain text)."""
    lines = [f"{'kind':<10}{'n':>6}{'correct':>9}{'accuracy':>10}", "-" * 35]
    for kind, k in result["per_kind"].items():
        lines.append(f"{kind:<10}{k['n']:>6}{k['correct']:>9}{k['accuracy']:>10.1%}")
    lines.append("-" * 35)
    lines.append(f"{'all':<10}{result['n']:>6}{result['correct']:>9}{result['accuracy']:>10.1%}")
    return "\n".join(lines)
