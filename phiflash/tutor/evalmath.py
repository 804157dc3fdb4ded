"""``phiflash eval-math``: greedy accuracy of any engine on the held-out tutor sets.

Four reports, kept apart (:data:`phiflash.tutor.data.EVAL_SETS`): held-out *problems* (asked in
training phrasings), held-out *phrasings* (whole templates never trained on), *follow-ups*
(a last question that uses the previous answer, or a new unrelated question, after one to three
earlier questions in the same conversation) and *refusals* (out-of-scope requests in held-out
wordings, some after earlier questions). Accuracy is also reported by the number of questions
in the conversation.

Each example is sent as a fresh chat (the engine's cache is reset). The answer is read from the
reply by :func:`phiflash.tutor.answers.extract_boxed` -- the extraction the chat's badge uses --
and graded by math-verify (gold first). math-verify's own timeouts use signals, which fail off the
main thread, so they are switched off and each grading runs in a worker thread awaited for at most
``GRADE_TIMEOUT`` seconds (a grading that takes longer counts as wrong). A refusal is correct
when the reply finished and holds no ``\\boxed{}``.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout

from phiflash.engine import DEFAULT_MAX_TOKENS, Engine, GenerationParams
from phiflash.errors import PhiflashError
from phiflash.tutor.answers import extract_boxed
from phiflash.tutor.check import check_answer
from phiflash.tutor.data import EVAL_SETS, KINDS, prompt_messages

DEFAULT_N = 100  # per eval set
GRADE_TIMEOUT = 10.0

_POOL: ThreadPoolExecutor | None = None


def greedy_params(max_tokens: int = DEFAULT_MAX_TOKENS) -> GenerationParams:
    return GenerationParams(max_tokens=max_tokens, temperature=0.0, top_p=1.0, top_k=0, seed=0)


def _verify(gold: str, pred: str) -> bool:
    import logging

    from math_verify import parse, verify

    # it warns on every call that its own timeouts are off: we bound the time ourselves
    logging.getLogger("math_verify").setLevel(logging.ERROR)

    g = parse(f"${gold}$", parsing_timeout=None)
    p = parse(f"\\boxed{{{pred}}}", parsing_timeout=None)
    return bool(g) and bool(p) and bool(verify(g, p, timeout_seconds=None))


def math_verify_equal(gold: str, pred: str | None, timeout: float = GRADE_TIMEOUT) -> bool:
    """math-verify's verdict on ``pred`` (a boxed answer's content) against ``gold`` (LaTeX),
    in a worker thread bounded by ``timeout`` seconds (False when it runs over)."""
    global _POOL
    if pred is None or gold is None:
        return False
    import math_verify  # noqa: F401  (imported outside the timed part)

    if _POOL is None:
        _POOL = ThreadPoolExecutor(max_workers=2, thread_name_prefix="phiflash-grade")
    fut = _POOL.submit(_verify, gold, pred)
    try:
        return fut.result(timeout=timeout)
    except FutureTimeout:
        return False
    except Exception:  # math-verify raises on input it cannot parse: not the gold answer
        return False


def grade(example: dict, reply: str, finish_reason: str | None = "stop") -> tuple[bool, str | None]:
    """(correct, extracted answer) of ``reply`` for ``example``."""
    pred = extract_boxed(reply)
    if example.get("answer") is None:  # a refusal: a finished reply without an answer box
        return pred is None and finish_reason == "stop" and bool(reply.strip()), pred
    gold = example.get("gold") or example["answer"]
    return math_verify_equal(gold, pred), pred


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


class ProblemFileError(PhiflashError):
    """A ``--problems`` file that cannot be read as problems."""


OWN_SET = "own"  # the report name of problems read from a file


def load_problems(path: str) -> list[dict]:
    """Problems of your own from a JSON Lines file, one object per line:
    ``{"question": "whats 7*8", "answer": "56"}``, or ``{"messages": [...], "answer": ...}``
    for a conversation that ends with the student's turn (``role`` user/assistant/system).
    ``answer`` is the gold answer (a number, a fraction such as ``3/4``, LaTeX); ``null`` or no
    ``answer`` means the right reply is a refusal. An optional ``kind`` groups the per-kind
    report. Blank lines and lines starting with ``#`` are skipped."""
    import json

    try:
        with open(path, encoding="utf-8") as fh:
            lines = fh.read().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise ProblemFileError(f"cannot read {path}: {getattr(e, 'strerror', None) or e}") from e
    out = []
    for no, line in enumerate(lines, 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        where = f"{path}:{no}"
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise ProblemFileError(f"{where}: not JSON ({e.msg})") from e
        if not isinstance(obj, dict):
            raise ProblemFileError(f"{where}: expected a JSON object")
        messages = obj.get("messages")
        if messages is None:
            question = obj.get("question")
            if not isinstance(question, str) or not question.strip():
                raise ProblemFileError(f'{where}: needs a non-empty "question" or "messages"')
            messages = [{"role": "user", "content": question}]
        ok = (
            isinstance(messages, list)
            and messages
            and all(
                isinstance(m, dict)
                and m.get("role") in ("system", "user", "assistant")
                and isinstance(m.get("content"), str)
                for m in messages
            )
            and messages[-1]["role"] == "user"
        )
        if not ok:
            raise ProblemFileError(
                f'{where}: "messages" must be a list of {{role, content}} objects '
                "ending with a user turn"
            )
        answer = obj.get("answer")
        if answer is not None and (
            isinstance(answer, bool) or not isinstance(answer, str | int | float)
        ):
            raise ProblemFileError(f'{where}: "answer" must be a string, a number or null')
        kind = obj.get("kind", "refusal" if answer is None else OWN_SET)
        out.append(
            {
                "messages": [{"role": m["role"], "content": m["content"]} for m in messages],
                "answer": None if answer is None else str(answer),
                "kind": str(kind),
                "question": messages[-1]["content"],
                "set": OWN_SET,
            }
        )
    if not out:
        raise ProblemFileError(f"{path}: no problems in it")
    return out


def _tally(table: dict, key: str, ok: bool) -> None:
    t = table.setdefault(key, {"n": 0, "correct": 0})
    t["n"] += 1
    t["correct"] += int(ok)


def _finish(table: dict, order: Iterable[str]) -> dict:
    for t in table.values():
        t["accuracy"] = t["correct"] / t["n"]
    rank = {k: i for i, k in enumerate(order)}
    return dict(sorted(table.items(), key=lambda kv: rank.get(kv[0], len(rank))))


def evaluate(
    engine: Engine,
    problems: Iterable[dict],
    params: GenerationParams | None = None,
    progress: bool | None = None,
    on_result: Callable[[dict], None] | None = None,
) -> dict:
    """Accuracy of ``engine`` on ``problems`` (examples of :func:`tutor.data.eval_set` or
    :func:`tutor.data.dataset`; those without a ``set`` tag count as ``problems``).

    ``params`` defaults to greedy decoding. Returns dict(accuracy, n, correct, per_set,
    per_kind, per_length, check, failures, tokens, seconds); ``per_set`` and ``per_kind`` map a
    name to dict(n, correct, accuracy), ``per_length`` the number of questions in the
    conversation ("1", "2", …) to the same, ``check`` counts the chat's sympy marks on these replies
    (checked, differs, none) and where they disagree with math-verify (false_differs: ✗ on a
    right answer, false_checked: ✓ on a wrong one), and ``failures`` lists dict(set, kind,
    question, gold, pred, reply, finish_reason, mark). ``progress``: a tqdm bar (None = only on a
    terminal).
    """
    from tqdm import tqdm

    params = params or greedy_params()
    problems = list(problems)
    per_kind: dict[str, dict] = {}
    per_set: dict[str, dict] = {}
    per_length: dict[str, dict] = {}
    failures = []
    check = {"checked": 0, "differs": 0, "none": 0, "false_differs": 0, "false_checked": 0}
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
        ok, pred = grade(ex, out["reply"], out["finish_reason"])
        users = [m["content"] for m in ex["messages"] if m["role"] == "user"]
        mark = check_answer(users[-1], out["reply"], follow_up=len(users) > 1) if users else None
        if mark is None:
            check["none"] += 1
        else:
            check["checked" if mark.ok else "differs"] += 1
            check["false_differs"] += int(ok and not mark.ok)
            check["false_checked"] += int(mark.ok and not ok)
        tokens += out["tokens"]
        name = ex.get("set", "problems")
        _tally(per_kind, ex["kind"], ok)
        _tally(per_set, name, ok)
        _tally(per_length, str(len(users)), ok)
        correct += int(ok)
        if not ok:
            failures.append(
                {
                    "set": name,
                    "kind": ex["kind"],
                    "question": ex.get("question") or (users[-1] if users else ""),
                    "gold": ex["answer"],
                    "pred": pred,
                    "reply": out["reply"],
                    "finish_reason": out["finish_reason"],
                    "mark": None if mark is None else mark.badge(),
                }
            )
        if on_result is not None:
            on_result({"example": ex, "pred": pred, "correct": ok, "mark": mark, **out})
        bar.set_postfix(acc=f"{correct / (i + 1):.1%}")
    bar.close()
    n = len(problems)
    return {
        "accuracy": correct / n if n else 0.0,
        "n": n,
        "correct": correct,
        "per_set": _finish(per_set, EVAL_SETS),
        "per_kind": _finish(per_kind, KINDS),
        "per_length": _finish(per_length, sorted(per_length, key=int)),
        "check": check,
        "failures": failures,
        "tokens": tokens,
        "seconds": time.perf_counter() - start,
    }


def _rows(table: dict) -> list[str]:
    return [
        f"{name:<10}{t['n']:>6}{t['correct']:>9}{t['accuracy']:>10.1%}" for name, t in table.items()
    ]


def format_table(result: dict) -> str:
    """The per-set and per-kind accuracy tables (plain text)."""
    head = f"{'set':<10}{'n':>6}{'correct':>9}{'accuracy':>10}"
    lines = [head, "-" * 35, *_rows(result["per_set"]), "-" * 35]
    lines.append(f"{'all':<10}{result['n']:>6}{result['correct']:>9}{result['accuracy']:>10.1%}")
    lines += ["", f"{'kind':<10}{'n':>6}{'correct':>9}{'accuracy':>10}", "-" * 35]
    lines += _rows(result["per_kind"])
    lengths = result.get("per_length", {})
    if len(lengths) > 1:
        lines += ["", f"{'questions':<10}{'n':>6}{'correct':>9}{'accuracy':>10}", "-" * 35]
        lines += _rows(lengths)
    c = result.get("check")
    if c:
        lines += [
            "",
            f"chat's sympy check on these replies: {c['checked']} checked ✓, {c['differs']} "
            f"differs ✗, {c['none']} no mark; disagreeing with math-verify: "
            f"{c['false_differs']} false ✗, {c['false_checked']} false ✓",
        ]
    return "\n".join(lines)
