"""Deterministic generator of short math-tutoring dialogues for the bundled tutor model.

Every example is a chat in the real Phi-4-mini-flash format::

    [{"role": "system", ...}?, {"role": "user", "content": question},
     {"role": "assistant", "content": "<think>steps</think>short answer \\boxed{answer}"}]

Kinds: ``add``, ``sub``, ``mul`` (column methods, carries/borrows shown digit by digit),
``frac`` (add/sub/mul/div, simplified through the gcd), ``linear`` (ax + b = c and
ax + b = cx + d with integer solutions) and ``percent`` (x% of y, what percent, percent change).

The held-out test split is disjoint from training: each problem has a canonical key (independent
of phrasing, operands of commutative operations sorted) and a hash bucket of that key decides its
split (``TEST_BUCKETS`` of ``N_BUCKETS`` go to test).
"""

from __future__ import annotations

import hashlib
import random
from fractions import Fraction
from math import gcd

KINDS = ("add", "sub", "mul", "frac", "linear", "percent")
SPLITS = ("train", "test")
N_BUCKETS = 10
TEST_BUCKETS = 1  # buckets 0 .. TEST_BUCKETS-1 are held out
DEFAULT_SEEDS = {"train": 0, "test": 1234}

EVAL_PROMPT = "Please reason step by step, and put your final answer within \\boxed{{}}. {question}"
SYSTEM_PROMPTS = (
    "You are a patient math tutor.",
    "You are a helpful assistant that solves math problems step by step.",
    "You are a friendly tutor. Explain your reasoning briefly.",
    "Solve the problem. Show your steps.",
)
P_SYSTEM = 0.2
P_EVAL_PROMPT = 0.25

PLACES = ("ones", "tens", "hundreds", "thousands", "ten thousands", "hundred thousands")


# --------------------------------------------------------------------------- chat template


def render(messages: list[dict], add_generation_prompt: bool = False, eos: str = "<|endoftext|>"):
    """The real chat template's text: ``<|role|>content<|end|>`` per message, then
    ``<|assistant|>`` (generation prompt) or the eos token. No newlines between segments."""
    out = []
    for m in messages:
        if m["role"] == "system" and m.get("tools") is not None:
            out.append(f"<|system|>{m['content']}<|tool|>{m['tools']}<|/tool|><|end|>")
        else:
            out.append(f"<|{m['role']}|>{m['content']}<|end|>")
    out.append("<|assistant|>" if add_generation_prompt else eos)
    return "".join(out)


# --------------------------------------------------------------------------- split


def problem_bucket(key: str) -> int:
    h = hashlib.sha256(key.encode("utf-8")).digest()
    return int.from_bytes(h[:8], "big") % N_BUCKETS


def split_of(key: str) -> str:
    return "test" if problem_bucket(key) < TEST_BUCKETS else "train"


# --------------------------------------------------------------------------- helpers


def _digits(n: int) -> list[int]:
    """Digits of n >= 0, least significant first."""
    return [int(c) for c in reversed(str(n))]


def _rand_digits(rng: random.Random, nd: int) -> int:
    return rng.randint(10 ** (nd - 1), 10**nd - 1)


def _paren(n: int) -> str:
    return f"({n})" if n < 0 else str(n)


def _frac_tex(q: Fraction) -> str:
    if q.denominator == 1:
        return str(q.numerator)
    sign = "-" if q < 0 else ""
    return f"{sign}\\frac{{{abs(q.numerator)}}}{{{q.denominator}}}"


def _frac_plain(q: Fraction) -> str:
    return str(q.numerator) if q.denominator == 1 else f"{q.numerator}/{q.denominator}"


def _column_add(a: int, b: int) -> list[str]:
    da, db = _digits(a), _digits(b)
    n = max(len(da), len(db))
    lines, carry = [], 0
    for i in range(n):
        x = da[i] if i < len(da) else 0
        y = db[i] if i < len(db) else 0
        s = x + y + carry
        expr = f"{x} + {y}" + (f" + {carry}" if carry else "")
        line = f"{PLACES[i]}: {expr} = {s}, write {s % 10}"
        carry = s // 10
        lines.append(line + (f", carry {carry}." if carry else "."))
    if carry:
        lines.append(f"{PLACES[n]}: write {carry}.")
    return lines


def _column_sub(a: int, b: int) -> list[str]:
    """a >= b >= 0."""
    da, db = _digits(a), _digits(b)
    lines, borrow = [], 0
    for i in range(len(da)):
        x = da[i]
        y = db[i] if i < len(db) else 0
        if i >= len(db) and not borrow:
            lines.append(f"{PLACES[i]}: write {x}.")
            continue
        top = f"{x} - {borrow}" if borrow else f"{x}"
        if x - borrow >= y:
            d = x - borrow - y
            lines.append(f"{PLACES[i]}: {top} - {y} = {d}, write {d}.")
            borrow = 0
        else:
            d = x + 10 - borrow - y
            top = f"1{x} - {borrow}" if borrow else f"1{x}"
            lines.append(f"{PLACES[i]}: {top} - {y} = {d}, write {d}, borrow 1.")
            borrow = 1
    return lines


def _column_mul1(a: int, m: int) -> list[str]:
    """a times a single digit m."""
    lines, carry = [], 0
    da = _digits(a)
    for i, x in enumerate(da):
        p = x * m + carry
        expr = f"{x} × {m}" + (f" + {carry}" if carry else "")
        line = f"{PLACES[i]}: {expr} = {p}, write {p % 10}"
        carry = p // 10
        lines.append(line + (f", carry {carry}." if carry else "."))
    if carry:
        lines.append(f"{PLACES[len(da)]}: write {carry}.")
    return lines


def _simplify_line(num: int, den: int) -> tuple[str, Fraction]:
    """'gcd(18, 30) = 6, so 18/30 = 3/5.' (den > 0)."""
    q = Fraction(num, den)
    g = gcd(abs(num), den)
    if num == 0:
        return f"{num}/{den} = 0.", q
    if g == 1:
        return f"gcd({abs(num)}, {den}) = 1, so {num}/{den} is in lowest terms.", q
    return f"gcd({abs(num)}, {den}) = {g}, so {num}/{den} = {_frac_plain(q)}.", q


# --------------------------------------------------------------------------- kinds


def _gen_add(rng: random.Random) -> dict:
    a = _rand_digits(rng, rng.randint(2, 4))
    b = _rand_digits(rng, rng.randint(2, 4))
    ans = a + b
    q = rng.choice(
        (
            "What is {a} + {b}?",
            "Compute {a} + {b}.",
            "Calculate {a} + {b}.",
            "Find the sum of {a} and {b}.",
            "Add {a} and {b}.",
            "{a} + {b} = ?",
            "What is {a} plus {b}?",
            "Work out {a} + {b}.",
        )
    ).format(a=a, b=b)
    steps = (
        ["Add column by column from the right."] + _column_add(a, b) + [f"So {a} + {b} = {ans}."]
    )
    return dict(
        question=q,
        steps=steps,
        final=f"{a} + {b} = \\boxed{{{ans}}}",
        answer=str(ans),
        key=f"add:{min(a, b)}+{max(a, b)}",
    )


def _gen_sub(rng: random.Random) -> dict:
    na = rng.randint(2, 4)
    a = _rand_digits(rng, na)
    b = _rand_digits(rng, rng.randint(2, na))
    if b >= a:
        a, b = max(a, b), min(a, b)
    if a == b:
        b = a - rng.randint(1, 9)
    ans = a - b
    q = rng.choice(
        (
            "What is {a} - {b}?",
            "Compute {a} - {b}.",
            "Calculate {a} - {b}.",
            "Subtract {b} from {a}.",
            "Find the difference {a} - {b}.",
            "{a} - {b} = ?",
            "What is {a} minus {b}?",
        )
    ).format(a=a, b=b)
    steps = ["Subtract column by column from the right."] + _column_sub(a, b)
    steps.append(f"So {a} - {b} = {ans}.")
    return dict(
        question=q,
        steps=steps,
        final=f"{a} - {b} = \\boxed{{{ans}}}",
        answer=str(ans),
        key=f"sub:{a}-{b}",
    )


def _gen_mul(rng: random.Random) -> dict:
    form = rng.choice(("2x1", "3x1", "2x2"))
    if form == "2x1":
        a, b = rng.randint(10, 99), rng.randint(2, 9)
    elif form == "3x1":
        a, b = rng.randint(100, 999), rng.randint(2, 9)
    else:
        a, b = rng.randint(11, 99), rng.randint(11, 99)
    ans = a * b
    sym = rng.choice(("×", "×", "*"))
    q = rng.choice(
        (
            "What is {a} {s} {b}?",
            "Compute {a} {s} {b}.",
            "Calculate {a} {s} {b}.",
            "Multiply {a} by {b}.",
            "Find the product of {a} and {b}.",
            "{a} {s} {b} = ?",
            "What is {a} times {b}?",
        )
    ).format(a=a, b=b, s=sym)
    if b < 10:
        steps = [f"Multiply {a} by {b} digit by digit from the right."] + _column_mul1(a, b)
    else:
        t, o = divmod(b, 10)
        p1, p2 = a * o, a * t
        steps = [f"Split {b} = {t * 10} + {o}."]
        steps += [f"{a} × {o}:"] + _column_mul1(a, o) + [f"So {a} × {o} = {p1}."]
        steps += [f"{a} × {t}:"] + _column_mul1(a, t)
        steps += [f"So {a} × {t} = {p2}, and {a} × {t * 10} = {p2 * 10}."]
        steps += [f"Add {p1} + {p2 * 10}:"] + _column_add(p1, p2 * 10)
    steps.append(f"So {a} × {b} = {ans}.")
    return dict(
        question=q,
        steps=steps,
        final=f"{a} × {b} = \\boxed{{{ans}}}",
        answer=str(ans),
        key=f"mul:{min(a, b)}*{max(a, b)}",
    )


_FRAC_OPS = {
    "add": ("+", "plus"),
    "sub": ("-", "minus"),
    "mul": ("×", "times"),
    "div": ("÷", "divided by"),
}


def _gen_frac(rng: random.Random) -> dict:
    op = rng.choice(tuple(_FRAC_OPS))
    while True:
        b, d = rng.randint(2, 12), rng.randint(2, 12)
        a, c = rng.randint(1, b - 1), rng.randint(1, d - 1)
        lcm = b * d // gcd(b, d)
        if op in ("add", "sub") and lcm > 36:
            continue
        break
    x, y = Fraction(a, b), Fraction(c, d)
    sym, word = _FRAC_OPS[op]
    fa, fc = f"{a}/{b}", f"{c}/{d}"
    expr = f"{fa} {sym} {fc}"
    if rng.random() < 0.15:
        sym2 = {"×": "*", "÷": "÷"}.get(sym, sym)
        expr_q = f"{fa} {sym2} {fc}"
    else:
        expr_q = expr
    q = rng.choice(
        (
            f"Compute {expr_q}.",
            f"What is {expr_q}?",
            f"Calculate {expr_q}. Simplify your answer.",
            f"Simplify {expr_q}.",
            f"What is {fa} {word} {fc}?",
            f"Find {expr_q} in lowest terms.",
        )
    )
    steps = []
    if op in ("add", "sub"):
        if b == d:
            num = a + c if op == "add" else a - c
            steps.append(f"The denominators are the same: {b}.")
            steps.append(f"{a} {sym} {c} = {num}, so {num}/{b}.")
            den = b
        else:
            steps.append(f"Common denominator: lcm({b}, {d}) = {lcm}.")
            m1, m2 = lcm // b, lcm // d
            steps.append(f"{lcm} ÷ {b} = {m1}, so {fa} = {a * m1}/{lcm}.")
            steps.append(f"{lcm} ÷ {d} = {m2}, so {fc} = {c * m2}/{lcm}.")
            num = a * m1 + c * m2 if op == "add" else a * m1 - c * m2
            steps.append(f"{a * m1} {sym} {c * m2} = {num}, so {num}/{lcm}.")
            den = lcm
    elif op == "mul":
        num, den = a * c, b * d
        steps.append(f"Multiply the numerators: {a} × {c} = {num}.")
        steps.append(f"Multiply the denominators: {b} × {d} = {den}.")
    else:
        num, den = a * d, b * c
        steps.append(f"Dividing by {fc} is multiplying by {d}/{c}.")
        steps.append(f"{fa} × {d}/{c}: {a} × {d} = {num} and {b} × {c} = {den}.")
    line, ans = _simplify_line(num, den)
    steps.append(line)
    assert ans == (
        x + y if op == "add" else x - y if op == "sub" else x * y if op == "mul" else x / y
    )
    if op in ("add", "mul"):
        key = f"frac:{min((a, b), (c, d))}{op}{max((a, b), (c, d))}"
    else:
        key = f"frac:{(a, b)}{op}{(c, d)}"
    return dict(
        question=q,
        steps=steps,
        final=f"{expr} = \\boxed{{{_frac_tex(ans)}}}",
        answer=_frac_plain(ans),
        key=key,
    )


def _term(coef: int, var: str) -> str:
    if coef == 1:
        return var
    if coef == -1:
        return f"-{var}"
    return f"{coef}{var}"


def _side(coef: int, const: int, var: str) -> str:
    """'3x + 7', '3x - 7', '3x'."""
    t = _term(coef, var)
    if const > 0:
        return f"{t} + {const}"
    if const < 0:
        return f"{t} - {-const}"
    return t


def _gen_linear(rng: random.Random) -> dict:
    var = rng.choice(("x", "x", "x", "y", "n"))
    xv = rng.randint(-10, 10)
    two_sided = rng.random() < 0.4
    steps = []
    if not two_sided:
        a = rng.randint(1, 9) * (-1 if rng.random() < 0.2 else 1)
        b = rng.choice([k for k in range(-20, 21) if k != 0])
        c = a * xv + b
        eq = f"{_side(a, b, var)} = {c}"
        k, rhs = a, c
        key = f"lin:{a},{b},{c}"
    else:
        a, cc = rng.sample([k for k in range(-6, 10) if k != 0], 2)
        b = rng.randint(-15, 15)
        d = (a - cc) * xv + b
        eq = f"{_side(a, b, var)} = {_side(cc, d, var)}"
        if cc > 0:
            steps.append(
                f"Subtract {_term(cc, var)} from both sides: {_side(a - cc, b, var)} = {d}."
            )
        else:
            steps.append(f"Add {_term(-cc, var)} to both sides: {_side(a - cc, b, var)} = {d}.")
        k, rhs = a - cc, d
        key = f"lin2:{a},{b},{cc},{d}"
    # k*var + b = rhs
    if b > 0:
        steps.append(f"Subtract {b} from both sides: {_term(k, var)} = {rhs} - {b} = {rhs - b}.")
    elif b < 0:
        steps.append(f"Add {-b} to both sides: {_term(k, var)} = {rhs} + {-b} = {rhs - b}.")
    r = rhs - b
    if k != 1:
        steps.append(f"Divide both sides by {_paren(k)}: {var} = {_paren(r)} ÷ {_paren(k)} = {xv}.")
    assert r == k * xv
    q = rng.choice(
        (
            f"Solve {eq}.",
            f"Solve for {var}: {eq}",
            f"Find {var} if {eq}.",
            f"What value of {var} satisfies {eq}?",
            f"{eq}. What is {var}?",
            f"Solve the equation {eq}.",
        )
    )
    return dict(
        question=q,
        steps=steps,
        final=f"{var} = \\boxed{{{xv}}}",
        answer=str(xv),
        key=key,
    )


def _pct_fraction(p: int) -> tuple[int, int, str]:
    """p% as a reduced fraction n/d and the line that reduces it."""
    g = gcd(p, 100)
    n, d = p // g, 100 // g
    if d == 1:
        return n, d, f"{p}% = {p}/100 = {n}."
    return n, d, f"{p}% = {p}/100, gcd({p}, 100) = {g}, so {p}% = {n}/{d}."


def _to_percent_lines(n: int, d: int) -> tuple[list[str], int]:
    """n/d (d divides 100) as a percent."""
    if d == 1:
        return [f"{n} = {n} × 100% = {n * 100}%."], n * 100
    m = 100 // d
    return [f"100 ÷ {d} = {m} and {n} × {m} = {n * m}, so {n}/{d} = {n * m}%."], n * m


def _gen_percent(rng: random.Random) -> dict:
    sub = rng.choice(("of", "what", "change"))
    k = rng.randint(1, 25)
    if sub == "of":
        p = 5 * rng.randint(1, 19)
        n, d, line = _pct_fraction(p)
        y = d * k
        ans = n * k
        q = rng.choice(
            (
                f"What is {p}% of {y}?",
                f"Find {p}% of {y}.",
                f"Compute {p}% of {y}.",
                f"Calculate {p} percent of {y}.",
                f"What number is {p}% of {y}?",
            )
        )
        steps = [line, f"{y} ÷ {d} = {k}.", f"{k} × {n} = {ans}."]
        final = f"{p}% of {y} is \\boxed{{{ans}}}."
        key = f"pct_of:{p}:{y}"
    elif sub == "what":
        p = 5 * rng.randint(1, 20)
        g = gcd(p, 100)
        n, d = p // g, 100 // g
        y, z = d * k, n * k
        q = rng.choice(
            (
                f"What percent of {y} is {z}?",
                f"{z} is what percent of {y}?",
                f"What percentage of {y} is {z}?",
                f"Express {z} out of {y} as a percent.",
            )
        )
        steps = [f"{z}/{y}: gcd({z}, {y}) = {k}, so {z}/{y} = {_frac_plain(Fraction(n, d))}."]
        more, ans = _to_percent_lines(n, d)
        steps += more
        final = f"{z} is \\boxed{{{ans}\\%}} of {y}."
        key = f"pct_what:{z}:{y}"
    else:
        up = rng.random() < 0.5
        p = 5 * (rng.randint(1, 40) if up else rng.randint(1, 19))
        g = gcd(p, 100)
        n, d = p // g, 100 // g
        y = d * k
        ch = n * k
        z = y + ch if up else y - ch
        word = "increase" if up else "decrease"
        signed = rng.random() < 0.3
        if signed:
            q = rng.choice(
                (
                    f"What is the percent change from {y} to {z}?",
                    f"A value changes from {y} to {z}. What is the percent change?",
                )
            )
        else:
            verb = "rises" if up else "falls"
            q = rng.choice(
                (
                    f"A price {verb} from {y} to {z}. By what percent did it {word}?",
                    f"What is the percent {word} from {y} to {z}?",
                    f"A number goes from {y} to {z}. Find the percent {word}.",
                )
            )
        if up:
            steps = [f"Change: {z} - {y} = {ch}, an increase."]
        else:
            steps = [f"Change: {y} - {z} = {ch}, a decrease."]
        steps.append(
            f"{ch}/{y}: gcd({ch}, {y}) = {k}, so {ch}/{y} = {_frac_plain(Fraction(n, d))}."
        )
        more, ans = _to_percent_lines(n, d)
        steps += more
        if signed and not up:
            ans = -ans
            steps.append(f"A decrease is a negative change: {ans}%.")
        final = (
            f"The percent change is \\boxed{{{ans}\\%}}."
            if signed
            else f"It is a {ans}% {word}: \\boxed{{{ans}\\%}}."
        )
        key = f"pct_change:{y}:{z}"
    return dict(question=q, steps=steps, final=final, answer=str(ans), key=key)


_GENERATORS = {
    "add": _gen_add,
    "sub": _gen_sub,
    "mul": _gen_mul,
    "frac": _gen_frac,
    "linear": _gen_linear,
    "percent": _gen_percent,
}


# --------------------------------------------------------------------------- public API


def make_example(rng: random.Random, kind: str | None = None) -> dict:
    """One dialogue: dict(messages, answer, kind, question, key).

    ``answer`` is the canonical gold answer ("132", "19/12", "-5", "25"), ``question`` the bare
    problem text and ``key`` its canonical form (used for the train/test split).
    """
    kind = kind or rng.choice(KINDS)
    p = _GENERATORS[kind](rng)
    user = p["question"]
    if rng.random() < P_EVAL_PROMPT:
        user = EVAL_PROMPT.format(question=user)
    messages = []
    if rng.random() < P_SYSTEM:
        messages.append({"role": "system", "content": rng.choice(SYSTEM_PROMPTS)})
    messages.append({"role": "user", "content": user})
    reply = "<think>" + "\n".join(p["steps"]) + "</think>" + p["final"]
    messages.append({"role": "assistant", "content": reply})
    return dict(
        messages=messages, answer=p["answer"], kind=kind, question=p["question"], key=p["key"]
    )


def dataset(
    split: str = "train",
    n: int = 1000,
    seed: int | None = None,
    kinds: tuple[str, ...] = KINDS,
    unique: bool | None = None,
) -> list[dict]:
    """``n`` examples of ``split``, kinds in round-robin order (a prefix of a longer list).

    Only problems whose key hashes into the split are kept. ``unique`` (default: on for test)
    drops repeated problems. The default seed differs per split, so
    ``dataset("test", 500)`` is the fixed held-out set.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, not {split!r}")
    for k in kinds:
        if k not in _GENERATORS:
            raise ValueError(f"unknown kind {k!r} (choose from {', '.join(KINDS)})")
    if seed is None:
        seed = DEFAULT_SEEDS[split]
    if unique is None:
        unique = split == "test"
    rng = random.Random(f"{split}:{seed}")
    out, seen = [], set()
    for i in range(n):
        kind = kinds[i % len(kinds)]
        for _ in range(10000):
            ex = make_example(rng, kind)
            if split_of(ex["key"]) != split or (unique and ex["key"] in seen):
                continue
            break
        else:
            raise RuntimeError(f"could not draw {n} distinct {split} problems of kind {kind}")
        seen.add(ex["key"])
        out.append(ex)
    return out


def kinds_arg(text: str) -> tuple[str, ...]:
    """argparse type for ``--kinds``: comma-separated kinds ("add,percent,percent")."""
    import argparse

    kinds = tuple(k.strip() for k in text.split(",") if k.strip())
    bad = [k for k in kinds if k not in _GENERATORS]
    if bad or not kinds:
        raise argparse.ArgumentTypeError(
            f"unknown kind {bad[0] if bad else text!r} (choose from {','.join(KINDS)})"
        )
    return kinds


def prompt_messages(example: dict) -> list[dict]:
    """The messages to send to a model: everything before the assistant's reply."""
    msgs = example["messages"]
    return [dict(m) for m in (msgs[:-1] if msgs[-1]["role"] == "assistant" else msgs)]


def texts(split: str = "train", n: int = 1000, seed: int | None = None) -> list[str]:
    """Rendered training texts (full chats ending with the eos token)."""
    return [render(ex["messages"]) for ex in dataset(split, n, seed)]
