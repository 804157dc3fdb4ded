"""Deterministic generator of short math-tutoring dialogues for the bundled tutor model.

Every example is a chat in the real Phi-4-mini-flash format::

    [{"role": "system", ...}?, {"role": "user", "content": question},
     {"role": "assistant", "content": "<think>steps</think>short answer \\boxed{answer}"}]

Math kinds (one question, one answer): ``add``, ``sub``, ``mul``, ``div`` (column methods and long
division, carries/borrows shown digit by digit, a division's quotient digits read off the divisor's
multiples written out first, numbers from 0 to seven digits, negative differences), ``frac``
(add/sub/mul/div simplified through the gcd, ``3/4 of 12``), ``linear`` (any small integer
coefficients, missing terms, the unknown on both sides, negative answers), ``percent`` (x% of y,
what percent, percent change) and ``word`` (word problems with units and money). Dialogue kinds:
``followup`` (a second question that uses the previous answer), ``newq`` (a new, unrelated question
in the same conversation) and ``refusal`` (an out-of-scope request, answered with a short, kind
refusal that says what the tutor can do; no ``\\boxed{}``).

Every operator is written in every spelling students use (``+ - − × * · x ÷ /`` and words), and
each kind has at least ten phrasings, casual ones included ("whats 7*8", no question mark,
lowercase). Two splits keep the evaluation honest:

* problems: each problem has a canonical key (independent of phrasing, operands of commutative
  operations sorted); its hash bucket decides train or test (``TEST_BUCKETS`` of
  ``N_BUCKETS``);
* phrasings: whole templates are held out of training (``phrasing="heldout"``); the eval asks
  test problems in them.
"""

from __future__ import annotations

import hashlib
import random
from fractions import Fraction
from math import gcd

MATH_KINDS = ("add", "sub", "mul", "div", "frac", "linear", "percent", "word")
DIALOGUE_KINDS = ("followup", "newq", "refusal")
KINDS = MATH_KINDS + DIALOGUE_KINDS
SPLITS = ("train", "test")
PHRASINGS = ("train", "heldout")
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
P_SYSTEM = 0.15
P_EVAL_PROMPT = 0.15
P_CASUAL = 0.35

PLACES = (
    "ones",
    "tens",
    "hundreds",
    "thousands",
    "ten thousands",
    "hundred thousands",
    "millions",
    "ten millions",
    "hundred millions",
    "billions",
    "ten billions",
    "hundred billions",
)

# What the tutor says it can do (refusals).
CAN_DO = (
    "I can help with arithmetic (+ − × ÷), fractions, percentages and linear equations "
    "like 3x + 5 = 20."
)


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


# --------------------------------------------------------------------------- number helpers


def _digits(n: int) -> list[int]:
    """Digits of n >= 0, least significant first."""
    return [int(c) for c in reversed(str(n))]


def _rand_digits(rng: random.Random, nd: int) -> int:
    return rng.randint(0, 9) if nd == 1 else rng.randint(10 ** (nd - 1), 10**nd - 1)


def _num(rng: random.Random, n: int) -> str:
    """``n`` as a student writes it: sometimes with thousands separators."""
    if abs(n) >= 1000 and rng.random() < 0.25:
        return f"{n:,}"
    return str(n)


def _paren(n: int) -> str:
    return f"({n})" if n < 0 else str(n)


def _frac_tex(q: Fraction) -> str:
    if q.denominator == 1:
        return str(q.numerator)
    sign = "-" if q < 0 else ""
    return f"{sign}\\frac{{{abs(q.numerator)}}}{{{q.denominator}}}"


def _gold_tex(answer: str) -> str:
    """A plain answer ("19/12", "-5") in LaTeX ("\\frac{19}{12}", "-5")."""
    return _frac_tex(Fraction(answer))


def _frac_plain(q: Fraction) -> str:
    return str(q.numerator) if q.denominator == 1 else f"{q.numerator}/{q.denominator}"


# --------------------------------------------------------------------------- column methods


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


def add_steps(a: int, b: int) -> tuple[list[str], int]:
    """a + b for a, b >= 0: the reasoning lines and the sum."""
    s = a + b
    if a < 10 and b < 10:
        return [f"{a} + {b} = {s}."], s
    lines = ["Add column by column from the right."] + _column_add(a, b)
    return lines + [f"So {a} + {b} = {s}."], s


def sub_steps(a: int, b: int) -> tuple[list[str], int]:
    """a - b for a, b >= 0 (negative when b > a)."""
    d = a - b
    if a < b:
        inner, _ = sub_steps(b, a)
        return [f"{b} is bigger than {a}, so the answer is negative: work out {b} - {a}."] + inner[
            :-1
        ] + [f"So {b} - {a} = {-d}, and {a} - {b} = {d}."], d
    if a < 20 and b < 10:
        return [f"{a} - {b} = {d}."], d
    lines = ["Subtract column by column from the right."] + _column_sub(a, b)
    return lines + [f"So {a} - {b} = {d}."], d


def mul_steps(a: int, b: int) -> tuple[list[str], int]:
    """a × b for a, b >= 0 (the shorter factor is written second)."""
    p = a * b
    if a < 10 and b < 10:
        return [f"{a} × {b} = {p}."], p
    if a == 0 or b == 0:
        return [f"Anything times 0 is 0: {a} × {b} = 0."], 0
    x, y = (a, b) if len(str(a)) >= len(str(b)) else (b, a)
    if y < 10:
        lines = [f"Multiply {x} by {y} digit by digit from the right."] + _column_mul1(x, y)
    else:
        t, o = divmod(y, 10)
        p1, p2 = x * o, x * t
        lines = [f"Split {y} = {t * 10} + {o}."]
        if o:
            lines += [f"{x} × {o}:"] + _column_mul1(x, o) + [f"So {x} × {o} = {p1}."]
        lines += [f"{x} × {t}:"] + _column_mul1(x, t)
        lines += [f"So {x} × {t} = {p2}, and {x} × {t * 10} = {p2 * 10}."]
        if o:
            lines += [f"Add {p1} + {p2 * 10}:"] + _column_add(p1, p2 * 10)
    return lines + [f"So {a} × {b} = {p}."], p


def multiples_line(b: int) -> str:
    """'7 × 1 = 7, 7 × 2 = 14, ..., 7 × 9 = 63.': each one the last plus ``b``, so a small model
    writes the table by adding, then reads every quotient digit off it (copying the factor of
    the largest multiple that fits) instead of recalling a times table."""
    return ", ".join(f"{b} × {k} = {b * k}" for k in range(1, 10)) + "."


def div_steps(a: int, b: int) -> tuple[list[str], int]:
    """a ÷ b for b >= 1 dividing a >= 0 exactly: the multiples of b, then the comparison with
    ``b × 10`` that decides the path (a one-digit quotient read off the multiples, or long
    division from the left with each digit read off them), written out so the model copies the
    choice instead of guessing it."""
    q = a // b
    assert q * b == a
    if b == 1:
        return [f"Dividing by 1 changes nothing: {a} ÷ 1 = {a}."], a
    if a == 0:
        return [f"0 divided by anything is 0: 0 ÷ {b} = 0."], 0
    table = multiples_line(b)
    ten = f"{b} × 10 = {b * 10}"
    if a < 10 * b:
        return [
            f"The multiples of {b}: {table}",
            f"{a} is less than {ten}, so the answer is one digit.",
            f"{a} is {b} × {q}, so {a} ÷ {b} = {q}.",
        ], q
    digits = str(a)
    lines = [
        f"The multiples of {b}: {table}",
        f"{a} is at least {ten}, so divide {a} by {b} from the left.",
    ]
    cur, i = 0, 0
    while i < len(digits) and cur * 10 + int(digits[i]) < b:
        cur = cur * 10 + int(digits[i])
        i += 1
    cur = cur * 10 + int(digits[i])
    lines.append(f"Start with {cur}.")
    while True:
        qd, r = divmod(cur, b)
        lines.append(f"{b} goes into {cur} {qd} times ({b} × {qd} = {b * qd}), remainder {r}.")
        i += 1
        if i >= len(digits):
            break
        cur = r * 10 + int(digits[i])
        lines.append(f"Bring down {digits[i]}: {cur}.")
    return lines + [f"So {a} ÷ {b} = {q}."], q


def signed_steps(op: str, a: int, b: int) -> tuple[list[str], int]:
    """``a op b`` for integers (``b >= 0`` for + and -, ``b >= 1`` for × and ÷)."""
    if op == "+":
        if a >= 0:
            return add_steps(a, b)
        lines, r = sub_steps(b, -a)
        return [f"Adding {b} to {a} is {b} - {-a}."] + lines, r
    if op == "-":
        if a >= 0:
            return sub_steps(a, b)
        lines, s = add_steps(-a, b)
        return [f"{a} - {b} is the negative of {-a} + {b}."] + lines + [f"So {a} - {b} = {-s}."], -s
    if op == "×":
        lines, p = mul_steps(abs(a), b)
        if a < 0:
            return lines + [f"One factor is negative, so {a} × {b} = {-p}."], -p
        return lines, p
    lines, q = div_steps(abs(a), b)
    if a < 0:
        return lines + [f"A negative divided by a positive is negative: {a} ÷ {b} = {-q}."], -q
    return lines, q


# --------------------------------------------------------------------------- phrasings

# Operator spellings (a symbol or a word, written as the student types it).
OPS = {
    "+": ("+", "+", "+", "plus"),
    "-": ("-", "-", "-", "−", "minus", "take away"),
    "×": ("×", "*", "*", "·", "x", "times", "multiplied by"),
    "÷": ("÷", "/", "/", "divided by"),
}

# {e} is the expression ("12 + 7"); whole templates in the second tuple are never trained on.
EXPR_TEMPLATES = (
    (
        "What is {e}?",
        "what is {e}",
        "Compute {e}.",
        "Calculate {e}.",
        "{e} = ?",
        "{e}",
        "{e}?",
        "what's {e}?",
        "whats {e}",
        "How much is {e}?",
        "Work out {e}.",
        "Evaluate {e}.",
        "Find {e}.",
        "can you do {e}",
        "Solve {e}",
        "{e} =",
        "hey can you work out {e}",
        "quick question, what is {e}?",
        "I need to work out {e}.",
    ),
    (
        "Tell me {e}.",
        "hey what's {e}",
        "Quick one: {e}",
        "I need {e} please",
        "what do you get for {e}?",
    ),
)
WORD_OP_TEMPLATES = {
    "+": (
        (
            "Find the sum of {a} and {b}.",
            "Add {a} and {b}.",
            "add {a} to {b}",
            "What do you get when you add {a} and {b}?",
            "What is the sum of {a} and {b}?",
        ),
        ("What is the total of {a} and {b}?", "If you add {a} and {b}, what do you get?"),
    ),
    "-": (
        (
            "Subtract {b} from {a}.",
            "What is the difference between {a} and {b}?",
            "take {b} away from {a}",
            "What do you get when you subtract {b} from {a}?",
            "subtract {b} from {a} please",
        ),
        (
            "How much is left when you take {b} from {a}?",
            "If you subtract {b} from {a}, what is left?",
        ),
    ),
    "×": (
        (
            "Multiply {a} by {b}.",
            "Find the product of {a} and {b}.",
            "What is {a} multiplied by {b}?",
            "multiply {a} and {b}",
            "What is the product of {a} and {b}?",
        ),
        ("What do you get if you multiply {a} by {b}?", "What are {a} lots of {b}?"),
    ),
    "÷": (
        (
            "Divide {a} by {b}.",
            "What is {a} divided by {b}?",
            "What is the quotient of {a} and {b}?",
            "How many times does {b} go into {a}?",
            "divide {a} by {b} please",
        ),
        ("If you divide {a} by {b}, what do you get?", "How many {b}s are in {a}?"),
    ),
}


def _pool(templates: tuple[tuple[str, ...], tuple[str, ...]], phrasing: str) -> tuple[str, ...]:
    return templates[0] if phrasing == "train" else templates[1]


def _casual(rng: random.Random, q: str) -> str:
    """A student's typing: lowercase, no final punctuation, "whats"."""
    if rng.random() >= P_CASUAL:
        return q
    r = rng.random()
    if r < 0.4:
        q = q[0].lower() + q[1:]
    elif r < 0.7:
        q = q.lower()
    if rng.random() < 0.5:
        q = q.rstrip("?.")
    if rng.random() < 0.3:
        q = q.replace("What is", "whats").replace("what is", "whats")
    return q


def _expr(rng: random.Random, a: str, op: str, b: str) -> str:
    """``a op b`` in one of the operator's spellings; between fractions ("2/3 ÷ 4/9") never
    "/" for ÷ and never without spaces, which would read as one long fraction."""
    fractions = "/" in a or "/" in b
    sym = rng.choice([s for s in OPS[op] if not (fractions and s == "/")])
    if sym.isalpha() or " " in sym:
        return f"{a} {sym} {b}"
    if sym != "x" and not fractions and rng.random() < 0.3:
        return f"{a}{sym}{b}"
    return f"{a} {sym} {b}"


def _arith_question(rng: random.Random, op: str, a: int, b: int, phrasing: str) -> str:
    sa, sb = _num(rng, a), _num(rng, b)
    if rng.random() < 0.3:
        t = rng.choice(_pool(WORD_OP_TEMPLATES[op], phrasing))
        return t.format(a=sa, b=sb)
    t = rng.choice(_pool(EXPR_TEMPLATES, phrasing))
    return t.format(e=_expr(rng, sa, op, sb))


# --------------------------------------------------------------------------- math kinds


def _size(rng: random.Random) -> int:
    """A digit count: single digits and small numbers often, up to seven digits."""
    return rng.choice((1, 1, 1, 2, 2, 2, 3, 3, 4, 4, 5, 6, 7))


def _arith_problem(rng: random.Random, phrasing: str, op: str, a: int, b: int, key: str) -> dict:
    """One ``a op b`` problem, worked by that operator's long-hand steps."""
    steps, ans = _STEPS[op](a, b)
    return dict(
        question=_arith_question(rng, op, a, b, phrasing),
        steps=steps,
        final=f"{a} {op} {b} = \\boxed{{{ans}}}",
        answer=str(ans),
        key=key,
    )


_STEPS = {"+": add_steps, "-": sub_steps, "×": mul_steps, "÷": div_steps}


def _gen_add(rng: random.Random, phrasing: str) -> dict:
    a, b = _rand_digits(rng, _size(rng)), _rand_digits(rng, _size(rng))
    return _arith_problem(rng, phrasing, "+", a, b, f"add:{min(a, b)}+{max(a, b)}")


def _gen_sub(rng: random.Random, phrasing: str) -> dict:
    a, b = _rand_digits(rng, _size(rng)), _rand_digits(rng, _size(rng))
    if a < b and rng.random() < 0.6:  # most differences are positive, a third negative
        a, b = b, a
    return _arith_problem(rng, phrasing, "-", a, b, f"sub:{a}-{b}")


def _gen_mul(rng: random.Random, phrasing: str) -> dict:
    form = rng.choice(("1x1", "1x1", "2x1", "3x1", "4x1", "5x1", "2x2", "2x2", "3x2"))
    na, nb = int(form[0]), int(form[2])
    a, b = _rand_digits(rng, na), _rand_digits(rng, nb)
    if rng.random() < 0.5:
        a, b = b, a
    return _arith_problem(rng, phrasing, "×", a, b, f"mul:{min(a, b)}*{max(a, b)}")


def _gen_div(rng: random.Random, phrasing: str) -> dict:
    b = rng.choice((2, 3, 4, 5, 6, 7, 8, 9, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 15, 20, 25))
    q = _rand_digits(rng, rng.choice((1, 1, 2, 2, 3, 4)))
    if q == 0 and rng.random() < 0.7:
        q = rng.randint(1, 9)
    a = b * q
    return _arith_problem(rng, phrasing, "÷", a, b, f"div:{a}/{b}")


def _simplify_line(num: int, den: int) -> tuple[str, Fraction]:
    """'gcd(18, 30) = 6, so 18/30 = 3/5.' (den > 0)."""
    q = Fraction(num, den)
    g = gcd(abs(num), den)
    if num == 0:
        return f"{num}/{den} = 0.", q
    if g == 1:
        return f"gcd({abs(num)}, {den}) = 1, so {num}/{den} is in lowest terms.", q
    return f"gcd({abs(num)}, {den}) = {g}, so {num}/{den} = {_frac_plain(q)}.", q


_FRAC_OPS = {"add": "+", "sub": "-", "mul": "×", "div": "÷"}
FRAC_TEMPLATES = (
    (
        "Compute {e}.",
        "What is {e}?",
        "Calculate {e}. Simplify your answer.",
        "Simplify {e}.",
        "Find {e} in lowest terms.",
        "what's {e}",
        "whats {e}",
        "{e} = ?",
        "{e}",
        "Work out {e}.",
        "How much is {e}?",
        "Give me {e} as a fraction.",
    ),
    ("Tell me {e} as a fraction.", "hey what is {e}", "Can you do {e} for me?"),
)
FRAC_OF_TEMPLATES = (
    (
        "What is {f} of {y}?",
        "Find {f} of {y}.",
        "Compute {f} of {y}.",
        "what's {f} of {y}",
        "{f} of {y}",
        "How much is {f} of {y}?",
        "Calculate {f} of {y}.",
        "whats {f} of {y}",
        "{f} of {y} = ?",
        "Work out {f} of {y}.",
    ),
    ("Tell me {f} of {y}.", "I need {f} of {y}"),
)


def _gen_frac(rng: random.Random, phrasing: str) -> dict:
    if rng.random() < 0.2:  # a fraction of a number
        d = rng.randint(2, 12)
        n = rng.randint(1, d - 1)
        k = rng.randint(1, 20)
        y, ans = d * k, n * k
        f = f"{n}/{d}"
        q = rng.choice(_pool(FRAC_OF_TEMPLATES, phrasing)).format(f=f, y=y)
        steps = [f"{y} ÷ {d} = {k}.", f"{k} × {n} = {ans}."]
        return dict(
            question=q,
            steps=steps,
            final=f"{f} of {y} is \\boxed{{{ans}}}.",
            answer=str(ans),
            key=f"fracof:{n}/{d}:{y}",
        )
    op = rng.choice(tuple(_FRAC_OPS))
    while True:
        b, d = rng.randint(2, 12), rng.randint(2, 12)
        a, c = rng.randint(1, b - 1), rng.randint(1, d - 1)
        lcm = b * d // gcd(b, d)
        if op in ("add", "sub") and lcm > 36:
            continue
        break
    x, y = Fraction(a, b), Fraction(c, d)
    sym = _FRAC_OPS[op]
    fa, fc = f"{a}/{b}", f"{c}/{d}"
    expr = f"{fa} {sym} {fc}"
    q = rng.choice(_pool(FRAC_TEMPLATES, phrasing)).format(e=_expr(rng, fa, sym, fc))
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


def _side(coef: int, const: int, var: str, const_first: bool = False) -> str:
    """'3x + 7', '3x - 7', '3x' (or '7 + 3x' with const_first)."""
    t = _term(coef, var)
    if const == 0:
        return t
    if const_first:
        if coef < 0:
            return f"{const} - {_term(-coef, var)}"
        return f"{const} + {t}"
    return f"{t} + {const}" if const > 0 else f"{t} - {-const}"


LINEAR_TEMPLATES = (
    (
        "Solve {eq}.",
        "Solve for {v}: {eq}",
        "Find {v} if {eq}.",
        "What value of {v} satisfies {eq}?",
        "{eq}. What is {v}?",
        "Solve the equation {eq}.",
        "solve {eq}",
        "{eq}, solve for {v}",
        "If {eq}, what is {v}?",
        "{eq}",
        "solve for {v} {eq}",
        "what is {v} if {eq}",
    ),
    ("Find the value of {v}: {eq}", "whats {v} when {eq}", "{eq}. find {v}"),
)


def _gen_linear(rng: random.Random, phrasing: str) -> dict:
    var = rng.choice(("x", "x", "x", "x", "y", "n", "m", "k", "t"))
    xv = rng.randint(-20, 20)
    form = rng.choice(("one", "one", "one", "const_first", "swapped", "two", "two"))
    steps = []
    if form != "two":
        a = rng.choice([k for k in range(-15, 16) if k != 0])
        if rng.random() < 0.3:
            a = rng.choice((1, 1, -1, 2, 3))
        b = 0 if rng.random() < 0.2 else rng.randint(-50, 50)
        c = a * xv + b
        left = _side(a, b, var, const_first=form == "const_first" and b != 0)
        eq = f"{c} = {left}" if form == "swapped" else f"{left} = {c}"
        if form == "swapped":
            steps.append(f"Swap the sides: {_side(a, b, var)} = {c}.")
        k, rhs = a, c
        key = f"lin:{a},{b},{c}"
    else:
        a, cc = rng.sample([k for k in range(-9, 13) if k != 0], 2)
        b = 0 if rng.random() < 0.15 else rng.randint(-30, 30)
        d = (a - cc) * xv + b
        if b == 0 and d == 0:
            d = (a - cc) * xv + 7
            b = 7
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
    else:
        steps.append(f"So {var} = {xv}.")
    assert r == k * xv
    q = rng.choice(_pool(LINEAR_TEMPLATES, phrasing)).format(eq=eq, v=var)
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


PCT_OF_TEMPLATES = (
    (
        "What is {p}% of {y}?",
        "Find {p}% of {y}.",
        "Compute {p}% of {y}.",
        "Calculate {p} percent of {y}.",
        "What number is {p}% of {y}?",
        "whats {p}% of {y}",
        "{p}% of {y}",
        "{p} percent of {y}?",
        "how much is {p}% of {y}",
        "what's {p} percent of {y}",
    ),
    ("Tell me {p}% of {y}.", "I need {p}% of {y}", "take {p}% of {y}"),
)
PCT_WHAT_TEMPLATES = (
    (
        "What percent of {y} is {z}?",
        "{z} is what percent of {y}?",
        "What percentage of {y} is {z}?",
        "Express {z} out of {y} as a percent.",
        "what percent is {z} of {y}",
        "{z} out of {y} is what percent?",
        "whats {z} as a percent of {y}",
        "What percent of {y} is {z}",
        "{z} is what percentage of {y}",
        "what percentage is {z} out of {y}?",
    ),
    ("Write {z} out of {y} as a percentage.", "how many percent of {y} is {z}?"),
)
PCT_CHANGE_TEMPLATES = (
    (
        "A price {verb} from {y} to {z}. By what percent did it {word}?",
        "What is the percent {word} from {y} to {z}?",
        "A number goes from {y} to {z}. Find the percent {word}.",
        "percent {word} from {y} to {z}",
        "Find the percentage {word} from {y} to {z}.",
        "whats the percent {word} from {y} to {z}",
        "From {y} to {z}: what is the percent {word}?",
        "The score {verb} from {y} to {z}. What is the percent {word}?",
        "By what percent does {y} {word} to get {z}?",
        "{y} to {z} is what percent {word}?",
        "Going from {y} to {z}, what is the percent {word}?",
    ),
    (
        "A price {verb} from ${y} to ${z}. What is the percent {word}?",
        "what's the percentage {word} going from {y} to {z}",
    ),
)
PCT_SIGNED_TEMPLATES = (
    (
        "What is the percent change from {y} to {z}?",
        "A value changes from {y} to {z}. What is the percent change?",
        "percent change from {y} to {z}",
        "Find the percent change from {y} to {z}.",
    ),
    ("whats the percentage change from {y} to {z}",),
)


def _gen_percent(rng: random.Random, phrasing: str) -> dict:
    sub = rng.choice(("of", "of", "what", "change"))
    k = rng.randint(1, 30)
    if sub == "of":
        p = 5 * rng.randint(1, 19) if rng.random() < 0.7 else rng.randint(1, 99)
        n, d, line = _pct_fraction(p)
        y, ans = d * k, n * k
        q = rng.choice(_pool(PCT_OF_TEMPLATES, phrasing)).format(p=p, y=_num(rng, y))
        steps = [line, f"{y} ÷ {d} = {k}."]
        if k >= 10 and n >= 10:
            more, _ = mul_steps(k, n)
            steps += more
        else:
            steps.append(f"{k} × {n} = {ans}.")
        return dict(
            question=q,
            steps=steps,
            final=f"{p}% of {y} is \\boxed{{{ans}}}.",
            answer=str(ans),
            key=f"pct_of:{p}:{y}",
        )
    if sub == "what":
        p = 5 * rng.randint(1, 20)
        g = gcd(p, 100)
        n, d = p // g, 100 // g
        y, z = d * k, n * k
        q = rng.choice(_pool(PCT_WHAT_TEMPLATES, phrasing)).format(y=y, z=z)
        steps = [f"{z}/{y}: gcd({z}, {y}) = {k}, so {z}/{y} = {_frac_plain(Fraction(n, d))}."]
        more, ans = _to_percent_lines(n, d)
        steps += more
        return dict(
            question=q,
            steps=steps + [],
            final=f"{z} is \\boxed{{{ans}\\%}} of {y}.",
            answer=str(ans),
            gold=f"{ans}\\%",
            key=f"pct_what:{z}:{y}",
        )
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
        q = rng.choice(_pool(PCT_SIGNED_TEMPLATES, phrasing)).format(y=y, z=z)
    else:
        verb = "rises" if up else "falls"
        q = rng.choice(_pool(PCT_CHANGE_TEMPLATES, phrasing)).format(y=y, z=z, verb=verb, word=word)
    if up:
        more, _ = sub_steps(z, y)
        steps = [f"Change: {z} - {y}, an increase."] + more
    else:
        more, _ = sub_steps(y, z)
        steps = [f"Change: {y} - {z}, a decrease."] + more
    steps.append(f"{ch}/{y}: gcd({ch}, {y}) = {k}, so {ch}/{y} = {_frac_plain(Fraction(n, d))}.")
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
    return dict(
        question=q,
        steps=steps,
        final=final,
        answer=str(ans),
        gold=f"{ans}\\%",
        key=f"pct_change:{y}:{z}",
    )


NAMES = ("Sam", "Maya", "Leo", "Ava", "Noah", "Zoe", "Omar", "Lily", "Ben", "Ana", "Kai", "Ella")
ITEMS = ("apples", "marbles", "stickers", "cards", "books", "pencils", "cookies", "stamps")
# (op, train templates, held-out templates); {n} name, {i} item, {a} {b} numbers, {u} unit.
WORD_TEMPLATES = {
    "+": (
        (
            "{n} has {a} {i} and gets {b} more. How many {i} does {n} have now?",
            "A book costs ${a} and a bag costs ${b}. How much do they cost together?",
            "{n} walked {a} km on Monday and {b} km on Tuesday. How far did {n} walk in total?",
            "There are {a} {i} in one box and {b} in another. How many {i} are there altogether?",
            "{n} saved ${a} in May and ${b} in June. how much did {n} save in total",
            "A book has {a} pages in part one and {b} pages in part two. How many pages in all?",
            "{n} ran {a} m yesterday and {b} m today. How far did {n} run altogether?",
            "{n} read {a} books last year and {b} this year. How many books did {n} read?",
        ),
        ("{n} read {a} pages yesterday and {b} pages today. How many pages is that in all?",),
    ),
    "-": (
        (
            "{n} had {a} {i} and gave away {b}. How many {i} are left?",
            "{n} has ${a} and spends ${b}. How much money is left?",
            "A tank holds {a} liters. {b} liters are used. How many liters remain?",
            "{n} had {a} {i} and lost {b}. how many are left",
            "A shop had {a} {i} and sold {b}. How many {i} does it have now?",
            "{n} cuts {b} cm off a ribbon {a} cm long. How much ribbon is left?",
            "{n} has a rope {a} m long and uses {b} m of it. How much rope is left?",
        ),
        ("A rope is {a} cm long. {n} cuts off {b} cm. How long is the rope now?",),
    ),
    "×": (
        (
            "Each box holds {b} {i}. How many {i} are in {a} boxes?",
            "A ticket costs ${b}. How much do {a} tickets cost?",
            "{n} buys {a} packs of {i} with {b} in each pack. How many {i} is that?",
            "A car drives {b} km every hour. How far does it go in {a} hours?",
            "There are {a} rows of {b} chairs. how many chairs are there",
            "A worker earns ${b} for each shift. What does the worker earn for {a} shifts?",
            "{n} buys {a} lots of {b} {i}. How many {i} is that?",
        ),
        ("{n} earns ${b} an hour. How much does {n} earn in {a} hours?",),
    ),
    "÷": (
        (
            "{a} {i} are shared equally among {b} friends. How many does each friend get?",
            "{n} pays ${a} for {b} notebooks. How much does one notebook cost?",
            "{a} students get into teams of {b}. How many teams are there?",
            "A ribbon {a} cm long is cut into {b} equal pieces. How long is each piece?",
            "{n} has {a} {i} and puts them into bags of {b}. how many bags",
            "A {a} m path is split into {b} equal parts. How long is each part?",
            "{n} spends {a} minutes driving over {b} days, the same each day. How many minutes is "
            "that per day?",
            "A school trip costs ${a} for {b} students, shared equally. How much does each pay?",
        ),
        ("A {a} km trip is split into {b} equal days of driving. How far is each day?",),
    ),
}
DISCOUNT_TEMPLATES = (
    (
        "A jacket costs ${y} and is {p}% off. What is the sale price?",
        "A ${y} game is on sale for {p}% off. How much does it cost now?",
        "{n} buys a ${y} bike with a {p}% discount. How much does {n} pay?",
        "A shop has marked a ${y} coat down by {p}%. How much is it now?",
        "After a {p}% discount, what does a ${y} lamp cost?",
    ),
    ("A ${y} lamp is marked down by {p}%. What does it cost after the discount?",),
)


def _gen_word(rng: random.Random, phrasing: str) -> dict:
    name, items = rng.choice(NAMES), rng.choice(ITEMS)
    op = rng.choice(("+", "-", "×", "÷", "%"))
    if op == "%":
        p = 5 * rng.randint(1, 15)
        n, d, line = _pct_fraction(p)
        k = rng.randint(1, 20)
        y = d * k
        off = n * k
        q = rng.choice(_pool(DISCOUNT_TEMPLATES, phrasing)).format(y=y, p=p, n=name)
        more, ans = sub_steps(y, off)
        steps = [f"The discount is {p}% of {y}.", line, f"{y} ÷ {d} = {k}.", f"{k} × {n} = {off}."]
        steps += [f"Sale price: {y} - {off}."] + more
        return dict(
            question=q,
            steps=steps,
            final=f"The sale price is \\boxed{{{ans}}} dollars.",
            answer=str(ans),
            key=f"word_disc:{p}:{y}",
        )
    if op == "+":
        a, b = _rand_digits(rng, rng.randint(1, 3)), _rand_digits(rng, rng.randint(1, 3))
        steps, ans = add_steps(a, b)
        lead = f"Add: {a} + {b}."
    elif op == "-":
        a, b = _rand_digits(rng, rng.randint(2, 4)), _rand_digits(rng, rng.randint(1, 3))
        if b > a:
            a, b = b, a
        steps, ans = sub_steps(a, b)
        lead = f"Take away: {a} - {b}."
    elif op == "×":
        a, b = rng.randint(2, 30), rng.randint(2, 12)
        steps, ans = mul_steps(a, b)
        lead = f"Multiply: {a} × {b}."
    else:
        b = rng.randint(2, 12)
        ans0 = rng.randint(2, 40)
        a = b * ans0
        steps, ans = div_steps(a, b)
        lead = f"Share equally: {a} ÷ {b}."
    t = rng.choice(_pool(WORD_TEMPLATES[op], phrasing))
    q = t.format(n=name, i=items, a=a, b=b)
    money = "$" in t
    unit = "dollars" if money else ""
    final = f"The answer is \\boxed{{{ans}}}" + (f" {unit}." if unit else ".")
    return dict(
        question=q,
        steps=[lead] + steps,
        final=final,
        answer=str(ans),
        key=f"word:{a}{op}{b}",
    )


_GENERATORS = {
    "add": _gen_add,
    "sub": _gen_sub,
    "mul": _gen_mul,
    "div": _gen_div,
    "frac": _gen_frac,
    "linear": _gen_linear,
    "percent": _gen_percent,
    "word": _gen_word,
}


# --------------------------------------------------------------------------- dialogue kinds

# ({k} the number; "double"/"half" style templates carry their own number)
FOLLOWUP_TEMPLATES = {
    "+": (
        (
            "now add {k} to that",
            "What if we add {k}?",
            "and plus {k}?",
            "add {k} to the answer",
            "now what is that plus {k}?",
            "Now add {k}.",
            "what do you get if you add {k} to it?",
            "ok now + {k}",
            "and if I add {k} to that?",
            "then add {k}",
        ),
        ("Add {k} to your answer.", "what's that + {k}?"),
    ),
    "-": (
        (
            "now subtract {k}",
            "take away {k} from that",
            "what is that minus {k}?",
            "Now subtract {k} from the answer.",
            "and minus {k}?",
            "subtract {k} from it",
            "ok now - {k}",
            "what if we take away {k}?",
            "then subtract {k}",
            "Now take {k} away.",
        ),
        ("Subtract {k} from your answer.", "what's that - {k}?"),
    ),
    "×": (
        (
            "now multiply it by {k}",
            "what is that times {k}?",
            "and times {k}?",
            "Multiply the answer by {k}.",
            "now what is that × {k}?",
            "ok now * {k}",
            "what if we multiply by {k}?",
            "then times {k}",
            "now times {k}",
            "Now multiply that by {k}.",
        ),
        ("Multiply your answer by {k}.", "what's that x {k}?"),
    ),
    "÷": (
        (
            "now divide it by {k}",
            "what is that divided by {k}?",
            "and divided by {k}?",
            "Divide the answer by {k}.",
            "now what is that ÷ {k}?",
            "ok now / {k}",
            "then divide by {k}",
            "what if we divide that by {k}?",
            "Now split that into {k} equal parts.",
            "divide that by {k}",
        ),
        ("Divide your answer by {k}.", "what's that / {k}?"),
    ),
}
SPECIAL_FOLLOWUPS = (
    (("×", 2, "double it"), ("×", 2, "what is twice that?"), ("×", 3, "triple that")),
    (("÷", 2, "what is half of that?"), ("×", 2, "now double that")),
)
VAR_FOLLOWUPS = (
    (
        ("×", "now what is {v} times {k}?"),
        ("+", "what is {v} + {k}?"),
        ("-", "and {v} - {k}?"),
        ("×", "what is {k}{v}?"),
        ("×", "so what is {v} × {k}?"),
        ("+", "what's {v} plus {k}"),
    ),
    (("×", "then what is {v} * {k}?"), ("-", "what is {v} minus {k}?")),
)
NEWQ_BRIDGES = ("", "", "", "ok, next one: ", "thanks! ", "another one: ", "new question: ")


def _integer_answer(p: dict) -> bool:
    """The answer is a whole number (a follow-up can compute on it), not a fraction."""
    return "/" not in p["answer"]


def _first_turn(rng: random.Random, split: str, phrasing: str, integer: bool) -> dict:
    """A first question and its full reply (for the dialogue kinds)."""
    kinds = ("add", "sub", "mul", "div", "linear", "percent", "word")
    if not integer:
        kinds = kinds + ("frac",)
    for _ in range(1000):
        p = _GENERATORS[rng.choice(kinds)](rng, phrasing)
        if split_of(p["key"]) != split:
            continue
        if integer and not _integer_answer(p):
            continue
        return p
    raise RuntimeError("no first turn")


def _reply(p: dict) -> str:
    return "<think>" + "\n".join(p["steps"]) + "</think>" + p["final"]


def _followup_turn(rng: random.Random, phrasing: str, prev_turn: dict) -> dict:
    """A question that uses ``prev_turn``'s integer answer, and its worked reply."""
    prev = int(prev_turn["answer"])
    var = None
    if prev_turn["final"].split(" = ")[0].isalpha() and rng.random() < 0.5:
        var = prev_turn["final"].split(" = ")[0]  # "x = \boxed{3}": ask about x itself
    op = rng.choice(("+", "-", "×", "÷"))
    if op in "+-":
        k = max(1, _rand_digits(rng, rng.choice((1, 1, 2, 2, 3))))
    elif op == "×" and abs(prev) >= 10**6:
        op, k = "+", rng.randint(1, 999)
    elif op == "×":
        k = rng.randint(2, 12 if abs(prev) < 10000 else 9)
    else:
        divisors = [d for d in range(2, 13) if prev % d == 0]
        if not divisors or prev == 0:
            op, k = "×", rng.randint(2, 9)
        else:
            k = rng.choice(divisors)
    if var is not None:
        op, t = rng.choice(_pool(VAR_FOLLOWUPS, phrasing))
        if op == "×":
            k = rng.randint(2, 12)
        elif op == "÷":
            op = "×"
        q = t.format(v=var, k=k)
        lead = f"{var} = {prev}."
    else:
        special = [s for s in _pool(SPECIAL_FOLLOWUPS, phrasing) if s[0] != "÷" or prev % 2 == 0]
        if special and rng.random() < 0.15:
            op, k, q = rng.choice(special)
        else:
            q = rng.choice(_pool(FOLLOWUP_TEMPLATES[op], phrasing)).format(k=k)
        lead = f"The previous answer is {prev}."
    steps, ans = signed_steps(op, prev, k)
    return dict(
        question=_casual(rng, q),
        steps=[lead] + steps,
        final=f"{_paren(prev)} {op} {k} = \\boxed{{{ans}}}",
        answer=str(ans),
        key=f"fu:{prev_turn['key']}:{op}{k}",
        split_key=prev_turn.get("split_key", prev_turn["key"]),
    )


# How many questions come before the last one in a dialogue: a student often keeps one
# conversation going for several questions instead of starting a new one.
HISTORY_LENGTHS = (1, 2, 3)
HISTORY_WEIGHTS = (0.5, 0.3, 0.2)
P_REFUSAL_HISTORY = 0.4  # an out-of-scope request after earlier questions; else it opens one


def _history(rng: random.Random, split: str, phrasing: str, integer_last: bool) -> list[dict]:
    """The earlier questions of a dialogue, each a problem dict with its worked reply: the
    first a fresh problem, each later one a follow-up on the answer before it (when that is
    an integer) or a new problem. ``integer_last`` makes the last one have an integer answer."""
    n = rng.choices(HISTORY_LENGTHS, HISTORY_WEIGHTS)[0]
    turns: list[dict] = []
    for i in range(n):
        last = i == n - 1
        prev = turns[-1] if turns else None
        if prev is not None and _integer_answer(prev) and rng.random() < 0.5:
            turns.append(_followup_turn(rng, phrasing, prev))
            continue
        p = _first_turn(rng, split, phrasing, integer=integer_last and last)
        if prev is not None:
            p = dict(p, question=rng.choice(NEWQ_BRIDGES) + p["question"])
        turns.append(p)
    return turns


def _turn_pairs(history: list[dict]) -> list[tuple[str, str]]:
    return [(p["question"], _reply(p)) for p in history]


def _gen_followup(rng: random.Random, phrasing: str, split: str = "train") -> dict:
    history = _history(rng, split, phrasing, integer_last=True)
    p = _followup_turn(rng, phrasing, history[-1])
    return dict(p, turns=_turn_pairs(history))


def _gen_newq(rng: random.Random, phrasing: str, split: str = "train") -> dict:
    history = _history(rng, split, phrasing, integer_last=False)
    for _ in range(1000):
        p = _GENERATORS[rng.choice(MATH_KINDS)](rng, phrasing)
        if split_of(p["key"]) == split:
            break
    return dict(
        turns=_turn_pairs(history),
        question=rng.choice(NEWQ_BRIDGES) + p["question"],
        steps=p["steps"],
        final=p["final"],
        answer=p["answer"],
        gold=p.get("gold"),
        key="nq:" + ":".join(t["key"] for t in history) + ":" + p["key"],
        split_key=p["key"],
    )


TOPICS = (
    "dogs",
    "the ocean",
    "the French revolution",
    "climate change",
    "my summer holiday",
    "friendship",
    "space travel",
    "the moon",
    "volcanoes",
    "football",
)
REFUSAL_TEMPLATES = (
    (
        "Write an essay about {t}.",
        "write a poem about {t}",
        "Tell me about {t}.",
        "Can you summarize {t} for me?",
        "What is the derivative of x^{p}?",
        "integrate x^{p} dx",
        "Solve x^2 - {s}x + {q} = 0.",
        "What is the limit of 1/x as x goes to infinity?",
        "tell me a joke",
        "how are you?",
        "What's the capital of France?",
        "Translate 'good morning' into Spanish.",
        "write python code to sort a list",
        "Prove that there are infinitely many primes.",
        "What is sin({p}0°)?",
        "Find the area of a circle with radius {p}.",
        "who are you",
        "What is log base 2 of {q}?",
        "Solve the system x + y = {s}, x - y = {p}.",
        "what's the weather like today",
        "hi",
        "hello!",
        "Explain photosynthesis.",
        "Can you help me with my history homework?",
        "What is the meaning of life?",
        "Differentiate sin(x) cos(x).",
        "Write a story about {t}.",
        "Recommend a good movie.",
        # powers of x look like equations but are out of scope (added for stage 9: stage 8,
        # with one quadratic refusal template, solved "x^2 = 38" as a linear equation)
        "Find the roots of x^2 + {s}x - {q}.",
        "Expand (x + {p})^2.",
        "Simplify x^{p} · x^{s}.",
        "Complete the square for x^2 + {s}x.",
        "Graph y = x^2 + {p}.",
        "what is the vertex of y = x^2 - {s}x",
        "If x^2 = {q}{s}, what is x?",
        "solve 2x^2 = {q}{p}",
        "x^2 - {q} = 0, solve for x",
        "Solve x^3 = {q}.",
        "find x when x^2 + {p} = {q}{s}",
        "Factorise x^2 - {s}x + {q}.",
    ),
    (
        "Write a short story about {t}.",
        "what is the integral of {p}x^2",
        "Can you explain {t}?",
        "good morning",
        "What is the derivative of sin({p}x)?",
        "what's the best pizza topping",
        "Solve x^2 = {q}{p}.",
        "write me a song about {t}",
        "Who was the first president of the USA?",
        "Factor x^2 + {s}x + {q}.",
    ),
)
REFUSALS = (
    "Sorry, I can't help with that. I'm a small math tutor: " + CAN_DO,
    "That's outside what I can do. " + CAN_DO + " Try one of those!",
    "I'm only a small math tutor, so I can't answer that. " + CAN_DO,
)
GREETING = "Hi! I'm a small math tutor. " + CAN_DO + " What would you like to solve?"


def _gen_refusal(rng: random.Random, phrasing: str, split: str = "train") -> dict:
    t = rng.choice(_pool(REFUSAL_TEMPLATES, phrasing))
    p, s, q = rng.randint(2, 9), rng.randint(2, 9), rng.randint(2, 9)
    q = t.format(t=rng.choice(TOPICS), p=p, s=s, q=q)
    q = _casual(rng, q)
    greeting = q.lower().rstrip("!?. ") in ("hi", "hello", "hello!", "good morning", "hey")
    reply_text = GREETING if greeting else rng.choice(REFUSALS)
    later = rng.random() < P_REFUSAL_HISTORY
    history = _history(rng, split, phrasing, integer_last=False) if later else []
    return dict(
        turns=_turn_pairs(history),
        question=q,
        steps=["This is not an arithmetic, fraction, percent or linear equation problem."],
        final=reply_text,
        answer=None,
        key=f"ref:{q.lower()}",
    )


_DIALOGUES = {"followup": _gen_followup, "newq": _gen_newq, "refusal": _gen_refusal}


# --------------------------------------------------------------------------- public API


def make_example(
    rng: random.Random, kind: str | None = None, phrasing: str = "train", split: str = "train"
) -> dict:
    """One dialogue: dict(messages, answer, gold, kind, question, key, split_key).

    ``answer`` is the canonical gold answer ("132", "19/12", "-5", "25"; None for a refusal),
    ``gold`` the same in LaTeX for math-verify ("25\\%" where a percent is asked for),
    ``question`` the last user message without the eval prompt, ``key`` the problem's canonical
    form and ``split_key`` the key whose hash decides its split (the new problem's key for
    ``newq``, the first problem's key for ``followup``). ``phrasing`` picks the templates
    (``train`` or the held-out ``heldout``); ``split`` is the split the first turn of a
    dialogue kind is drawn from.
    """
    kind = kind or rng.choice(KINDS)
    if phrasing not in PHRASINGS:
        raise ValueError(f"phrasing must be one of {PHRASINGS}, not {phrasing!r}")
    if kind in _DIALOGUES:
        p = _DIALOGUES[kind](rng, phrasing, split)
    else:
        p = _GENERATORS[kind](rng, phrasing)
        p["question"] = _casual(rng, p["question"])
    messages = []
    if rng.random() < P_SYSTEM:
        messages.append({"role": "system", "content": rng.choice(SYSTEM_PROMPTS)})
    turns = p.get("turns", [])
    for i, (q, r) in enumerate(turns):
        if i == 0 and rng.random() < P_EVAL_PROMPT:
            q = EVAL_PROMPT.format(question=q)
        messages += [{"role": "user", "content": q}, {"role": "assistant", "content": r}]
    user = p["question"]
    if not turns and kind != "refusal" and rng.random() < P_EVAL_PROMPT:
        user = EVAL_PROMPT.format(question=user)
    messages.append({"role": "user", "content": user})
    reply = "<think>" + "\n".join(p["steps"]) + "</think>" + p["final"]
    messages.append({"role": "assistant", "content": reply})
    gold = p.get("gold") or (_gold_tex(p["answer"]) if p["answer"] is not None else None)
    return dict(
        messages=messages,
        answer=p["answer"],
        gold=gold,
        kind=kind,
        question=p["question"],
        key=p["key"],
        split_key=p.get("split_key", p["key"]),
    )


def dataset(
    split: str = "train",
    n: int = 1000,
    seed: int | None = None,
    kinds: tuple[str, ...] = KINDS,
    unique: bool | None = None,
    phrasing: str = "train",
) -> list[dict]:
    """``n`` examples of ``split``, kinds in round-robin order (a prefix of a longer list).

    Only problems whose key hashes into the split are kept. ``unique`` (default: on for test)
    drops repeated problems. The default seed differs per split, so ``dataset("test", 500)``
    is a fixed held-out set. ``phrasing="heldout"`` asks in the templates never trained on.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, not {split!r}")
    if phrasing not in PHRASINGS:
        raise ValueError(f"phrasing must be one of {PHRASINGS}, not {phrasing!r}")
    for k in kinds:
        if k not in _GENERATORS and k not in _DIALOGUES:
            raise ValueError(f"unknown kind {k!r} (choose from {', '.join(KINDS)})")
    if seed is None:
        seed = DEFAULT_SEEDS[split]
    if unique is None:
        unique = split == "test"
    rng = random.Random(f"{split}:{seed}:{phrasing}" if phrasing != "train" else f"{split}:{seed}")
    out, seen = [], set()
    for i in range(n):
        kind = kinds[i % len(kinds)]
        for _ in range(10000):
            ex = make_example(rng, kind, phrasing, split)
            # a held-out refusal template is never trained on: no problem split to respect
            free = kind == "refusal" and phrasing == "heldout"
            if (split_of(ex["split_key"]) != split and not free) or (unique and ex["key"] in seen):
                continue
            break
        else:
            raise RuntimeError(f"could not draw {n} distinct {split} problems of kind {kind}")
        seen.add(ex["key"])
        out.append(ex)
    return out


# The eval's four reports: (split, kinds, phrasing).
EVAL_SETS = {
    "problems": ("test", MATH_KINDS, "train"),
    "phrasings": ("test", MATH_KINDS, "heldout"),
    "followups": ("test", ("followup", "newq"), "train"),
    "refusals": ("test", ("refusal",), "heldout"),
}


def eval_set(
    name: str, n: int, seed: int | None = None, kinds: tuple[str, ...] | None = None
) -> list[dict]:
    """The held-out examples of one eval report (see ``EVAL_SETS``), each tagged ``set``;
    ``kinds`` keeps only those of the set's kinds (an empty list when none is left)."""
    if name not in EVAL_SETS:
        raise ValueError(f"unknown eval set {name!r} (choose from {', '.join(EVAL_SETS)})")
    split, set_kinds, phrasing = EVAL_SETS[name]
    kinds = tuple(k for k in set_kinds if kinds is None or k in kinds)
    if not kinds or n <= 0:
        return []
    out = dataset(split, n, seed, kinds=kinds, phrasing=phrasing, unique=True)
    return [dict(ex, set=name) for ex in out]


def kinds_arg(text: str) -> tuple[str, ...]:
    """argparse type for ``--kinds``: comma-separated kinds ("add,percent,percent")."""
    import argparse

    kinds = tuple(k.strip() for k in text.split(",") if k.strip())
    bad = [k for k in kinds if k not in _GENERATORS and k not in _DIALOGUES]
    if bad or not kinds:
        raise argparse.ArgumentTypeError(
            f"unknown kind {bad[0] if bad else text!r} (choose from {','.join(KINDS)})"
        )
    return kinds


def prompt_messages(example: dict) -> list[dict]:
    """The messages to send to a model: everything before the last assistant reply."""
    msgs = example["messages"]
    return [dict(m) for m in (msgs[:-1] if msgs[-1]["role"] == "assistant" else msgs)]


def texts(split: str = "train", n: int = 1000, seed: int | None = None) -> list[str]:
    """Rendered training texts (full chats ending with the eos token)."""
    return [render(ex["messages"]) for ex in dataset(split, n, seed)]
