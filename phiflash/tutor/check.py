"""Checking a tutor's answer independently: parse the student's problem, solve it with sympy.

:func:`check_answer` reads the student's question (not the model's reasoning), and when it is in a
checkable class -- arithmetic (``+ - × * · ÷ /`` and their words), fractions, percentages
(``15% of 80``, ``what percent of 80 is 20``, percent change), ``3/4 of 12`` and linear
equations in one unknown (``-x + 6 = -3x + 2``) -- it solves the problem with sympy and compares
the result with the model's ``\\boxed{}`` answer (taken by :func:`answers.extract_boxed`, the one
extraction used everywhere). Anything else gives ``None``: no mark.

The question is never evaluated as code. A small tokenizer and a recursive-descent parser turn
the mathematical part into sympy objects (``Integer``, ``Rational``, ``Symbol``, ``Add``,
``Mul``, ``Pow``); ``sympify``/``parse_expr`` (which call ``eval``) are not used. Inputs are
bounded (length, digits per number, nesting, exponents), and solving runs in a worker thread
whose result is awaited for at most ``timeout`` seconds (no signals, so it works off the main
thread too).
"""

from __future__ import annotations

import re
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from fractions import Fraction

from phiflash.tutor.answers import answers_equal, extract_boxed, normalize_answer, parse_number

MAX_QUESTION = 400  # characters; longer questions are not checked
MAX_DIGITS = 15  # per number
MAX_TOKENS = 80
MAX_DEPTH = 12  # nested parentheses / unary signs
MAX_EXPONENT = 12
DEFAULT_TIMEOUT = 2.0

_POOL: ThreadPoolExecutor | None = None


class NotCheckable(Exception):
    """The text is outside the grammar (internal: callers get ``None``)."""


@dataclass(frozen=True)
class Solution:
    kind: str  # "arithmetic" | "percent" | "percent_change" | "linear"
    value: Fraction
    var: str | None = None  # the unknown of an equation
    signless: bool = False  # "percent change" asked without a direction: a decrease's size too
    decimal: bool = False  # the question has decimals: show a terminating value as a decimal

    def display(self) -> str:
        v = _decimal(self.value) if self.decimal else None
        v = v or _plain(self.value)
        if self.kind in ("percent", "percent_change"):
            v += "%"
        return f"{self.var} = {v}" if self.var else v


@dataclass(frozen=True)
class CheckResult:
    ok: bool  # the model's answer equals sympy's
    expected: str  # sympy's answer, plain text ("19/12", "x = -2", "25%")
    got: str  # the model's boxed answer as given

    def badge(self) -> str:
        return "checked ✓" if self.ok else f"differs ✗ (sympy: {self.expected})"


def _decimal(q: Fraction) -> str | None:
    """``q`` as a terminating decimal ("4.75"), or None when it does not terminate."""
    d, k = q.denominator, 0
    while d % 10 == 0 or d % 2 == 0 or d % 5 == 0:
        d //= 2 if d % 2 == 0 else 5
        k += 1
    if d != 1 or k > MAX_DIGITS:
        return None
    text = f"{abs(q) * 10**k // 1:0{k + 1}d}".rjust(k + 1, "0")
    whole, frac = text[:-k] if k else text, text[-k:] if k else ""
    frac = frac.rstrip("0")
    return ("-" if q < 0 else "") + whole + (f".{frac}" if frac else "")


def _plain(q: Fraction) -> str:
    return str(q.numerator) if q.denominator == 1 else f"{q.numerator}/{q.denominator}"


# --------------------------------------------------------------------------- tokenizer

_NUMBER = re.compile(r"\d{1,3}(?:,\d{3})+(?:\.\d+)?(?![\d,])|\d+(?:\.\d+)?|\.\d+")
_TOKEN = re.compile(r"\s*(?:(?P<num>\d|\.\d)|(?P<word>[a-z]+)|(?P<op>\*\*|[-+*/()%^=]))")
_FRACTION_TAIL = re.compile(r"/(\d+)(?![\d.,])")
_WORD_OPS = {"of": "of"}


def tokenize(text: str) -> list[tuple[str, str]]:
    """``(kind, value)`` tokens: ``num`` (digits, thousands commas removed), ``frac`` (``2/3``
    written without spaces: one number), ``var`` (one letter), ``op`` (``+ - * / ( ) % ^ =
    of``). Raises NotCheckable on anything else."""
    out: list[tuple[str, str]] = []
    i, n = 0, len(text)
    while i < n:
        if text[i].isspace():
            i += 1
            continue
        m = _TOKEN.match(text, i)
        if not m:
            raise NotCheckable(f"unexpected {text[i]!r}")
        if m.group("num"):
            start = m.start("num")
            nm = _NUMBER.match(text, start)
            if not nm:
                raise NotCheckable("bad number")
            digits = nm.group(0).replace(",", "")
            if len(digits.replace(".", "")) > MAX_DIGITS:
                raise NotCheckable("number too long")
            i = nm.end()
            fm = _FRACTION_TAIL.match(text, i) if digits.isdigit() else None
            if fm:  # "2/3" written tight is one fraction: 2/3 ÷ 4/9 = (2/3) ÷ (4/9)
                if int(fm.group(1)) == 0 or len(fm.group(1)) > MAX_DIGITS:
                    raise NotCheckable("bad fraction")
                out.append(("frac", f"{digits}/{fm.group(1)}"))
                i = fm.end()
            else:
                out.append(("num", digits))
            if i < n and (text[i].isdigit() or text[i] in ",."):
                raise NotCheckable("ambiguous number")
            continue
        if m.group("word"):
            w = m.group("word")
            if w in _WORD_OPS:
                out.append(("op", _WORD_OPS[w]))
            elif len(w) == 1:
                out.append(("var", w))
            else:
                raise NotCheckable(f"word {w!r}")
            i = m.end()
            continue
        op = m.group("op")
        out.append(("op", "^" if op == "**" else op))
        i = m.end()
        if len(out) > MAX_TOKENS:
            raise NotCheckable("too long")
    return out


# --------------------------------------------------------------------------- parser


class _Parser:
    """Recursive descent over the tokens, building sympy objects.

    equation := expr '=' expr
    expr     := term (('+' | '-') term)*
    term     := unary (('*' | '/' | 'of') unary | <implicit: a letter or '('> unary)*
    unary    := ('-' | '+') unary | power
    power    := postfix ('^' ['-'] integer)?
    postfix  := atom '%'?          (a percent must be followed by 'of')
    atom     := number | fraction | letter | '(' expr ')'
    """

    def __init__(self, tokens: list[tuple[str, str]]):
        import sympy

        self.sp = sympy
        self.toks = tokens
        self.i = 0
        self.depth = 0
        self.vars: set[str] = set()

    def peek(self) -> tuple[str, str] | None:
        return self.toks[self.i] if self.i < len(self.toks) else None

    def take(self, value: str | None = None) -> tuple[str, str]:
        t = self.peek()
        if t is None or (value is not None and t != ("op", value)):
            raise NotCheckable(f"expected {value or 'more'}")
        self.i += 1
        return t

    def at(self, value: str) -> bool:
        return self.peek() == ("op", value)

    def done(self) -> bool:
        return self.i == len(self.toks)

    def _enter(self):
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise NotCheckable("nested too deeply")

    def expr(self):
        self._enter()
        left = self.term()
        while self.at("+") or self.at("-"):
            op = self.take()[1]
            right = self.term()
            left = self.sp.Add(left, right if op == "+" else -right)
        self.depth -= 1
        return left

    def term(self):
        left = self.unary()
        while True:
            t = self.peek()
            if t in (("op", "*"), ("op", "/"), ("op", "of")):
                op = self.take()[1]
                right = self.unary()
                if op == "/":
                    if right == 0:
                        raise NotCheckable("division by zero")
                    left = self.sp.Mul(left, self.sp.Pow(right, -1))
                else:
                    left = self.sp.Mul(left, right)
            elif t is not None and (t[0] == "var" or t == ("op", "(")):
                left = self.sp.Mul(left, self.power())  # 3x, 2(x + 1)
            else:
                return left

    def unary(self):
        if self.at("-") or self.at("+"):
            self._enter()
            op = self.take()[1]
            v = self.unary()
            self.depth -= 1
            return -v if op == "-" else v
        return self.power()

    def power(self):
        base = self.postfix()
        if self.at("^"):
            self.take()
            neg = False
            if self.at("-"):
                self.take()
                neg = True
            kind, val = self.take()
            if kind != "num" or "." in val or int(val) > MAX_EXPONENT:
                raise NotCheckable("exponent")
            e = -int(val) if neg else int(val)
            if e < 0 and base == 0:
                raise NotCheckable("division by zero")
            if self.at("^"):
                raise NotCheckable("stacked exponents")
            return self.sp.Pow(base, e)
        return base

    def postfix(self):
        v = self.atom()
        if self.at("%"):
            self.take()
            if not self.at("of"):
                raise NotCheckable("a percent not followed by 'of'")
            v = self.sp.Mul(v, self.sp.Rational(1, 100))
        return v

    def atom(self):
        t = self.peek()
        if t is None:
            raise NotCheckable("expected a number")
        kind, val = t
        if kind == "num":
            self.i += 1
            return _rational(self.sp, val)
        if kind == "frac":
            self.i += 1
            p, q = val.split("/")
            return self.sp.Rational(int(p), int(q))
        if kind == "var":
            self.i += 1
            self.vars.add(val)
            return self.sp.Symbol(val)
        if t == ("op", "("):
            self.take("(")
            v = self.expr()
            self.take(")")
            return v
        raise NotCheckable(f"unexpected {val!r}")


def _rational(sp, digits: str):
    """A decimal literal as an exact sympy Rational, built from its digits."""
    whole, _, frac = digits.partition(".")
    num = int((whole or "0") + frac)
    return sp.Rational(num, 10 ** len(frac))


def parse_expression(text: str):
    """``text`` (already normalised) as a sympy expression without unknowns."""
    p = _Parser(tokenize(text))
    v = p.expr()
    if not p.done() or p.vars:
        raise NotCheckable("not a plain expression")
    return v


def parse_equation(text: str):
    """``text`` as (lhs, rhs, variable name) of an equation in one unknown."""
    p = _Parser(tokenize(text))
    lhs = p.expr()
    p.take("=")
    rhs = p.expr()
    if not p.done() or len(p.vars) != 1:
        raise NotCheckable("not an equation in one unknown")
    return lhs, rhs, next(iter(p.vars))


# --------------------------------------------------------------------------- the question

_EVAL_PROMPT = re.compile(
    r"please reason step by step, and put your final answer within \\boxed\{\}\.?", re.I
)
_CHARS = {
    "−": "-",
    "–": "-",
    "—": "-",
    "×": "*",
    "·": "*",
    "⋅": "*",
    "∙": "*",
    "✕": "*",
    "÷": "/",
    "∕": "/",
    "’": "'",
    "\u00a0": " ",
    "\u202f": " ",
}
_PHRASES = (
    (r"\bmultiplied by\b", "*"),
    (r"\btimes\b", "*"),
    (r"\bdivided by\b", "/"),
    (r"\bplus\b", "+"),
    (r"\bminus\b", "-"),
    (r"\btake away\b", "-"),
    (r"\bpercent\b", "%"),
    (r"\bper cent\b", "%"),
)
# Words that tie a follow-up to an earlier turn.
_REFERS_BACK = re.compile(
    r"\b(it|its|it's|that|this|those|these|answer|result|previous|last|same|again|above|"
    r"before|now|then|also|too|instead|one more)\b"
)
_LEAD = re.compile(
    r"^(?:(?:and|hey|hi|hello|ok|okay|so|um|uh|well|please|pls|plz|quick question|question|"
    r"quick one|next one|another one|new question|next|thanks|thank you|thx|"
    r"can you|could you|would you|will you|help me|tell me|i need to|i want to|i need|"
    r"if you|let's|lets|now)\b[,:!]?\s*)+"
)
_ASK = re.compile(
    r"^(?:what do you get (?:when you|if you|for)|what number is|"
    r"what is|what's|whats|what s|wat is|wats|what are|how much is|how much are|"
    r"compute|calculate|evaluate|work out|figure out|find|simplify|solve|do|give me|"
    r"take(?= [\d.,]+ ?(?:%|percent) of)|"
    r"get|determine)\b\s*(?:the value of\s*|the answer to\s*|the result of\s*)?:?\s*"
)
_TAIL = re.compile(
    r"\s*(?:,?\s*(?:please|pls|plz|thanks|thank you|thx)|in lowest terms|in simplest form|"
    r"as a fraction|simplified|simplify your answer|and simplify|exactly|for me|"
    r",\s*what (?:do you get|is left|is the result))$"
)


def _normalise(question: str) -> str:
    s = _EVAL_PROMPT.sub(" ", question)
    for a, b in _CHARS.items():
        s = s.replace(a, b)
    s = s.lower()
    s = re.sub(r"\$(?=\s*\d)", "", s)  # money: "$12" -> "12"
    s = re.sub(r"\s+", " ", s).strip()
    return s


def _strip_frame(s: str) -> str:
    s = s.strip().rstrip("?.!").strip()
    for _ in range(3):
        s = _TAIL.sub("", s).strip().rstrip("?.!,").strip()
    s = _LEAD.sub("", s)
    s = _ASK.sub("", s)
    s = re.sub(r"\s*=\s*\??$", "", s)  # "12 + 5 = ?"
    return s.strip().rstrip("?.!").strip()


def _words_to_ops(s: str) -> str:
    for pat, rep in _PHRASES:
        s = re.sub(pat, f" {rep} ", s)
    s = re.sub(r"(?<=\d)\s*x\s*(?=[\d(])", " * ", s)  # "3 x 4" (arithmetic only)
    return re.sub(r"\s+", " ", s).strip()


_E = r"(.+?)"
_BINARY = (
    (rf"^(?:the )?sum of {_E} and {_E}$", "+", False),
    (rf"^add {_E} (?:and|to|with|plus) {_E}$", "+", False),
    (rf"^(?:the )?difference (?:between|of) {_E} and {_E}$", "-", False),
    (rf"^subtract {_E} from {_E}$", "-", True),
    (rf"^take away {_E} from {_E}$", "-", True),
    (rf"^take {_E} (?:away )?from {_E}$", "-", True),
    (rf"^(?:the )?product of {_E} and {_E}$", "*", False),
    (rf"^multiply {_E} (?:by|and|with) {_E}$", "*", False),
    (rf"^(?:the )?quotient of {_E} and {_E}$", "/", False),
    (rf"^divide {_E} by {_E}$", "/", False),
    (rf"^{_E} (?:added to|more than) {_E}$", "+", False),
    (rf"^(?:the )?total of {_E} and {_E}$", "+", False),
    (rf"^how many times does {_E} go into {_E}$", "/", True),
    (rf"^how many {_E}s are (?:there )?in {_E}$", "/", True),
    (rf"^{_E} lots of {_E}$", "*", False),
    (rf"^{_E} less than {_E}$", "-", True),
)
_PCT = r"(?:%|percent|per cent|percentage)"
_PERCENT_OF_WHAT = (
    (rf"^(?:what|what's|whats|which) {_PCT} of {_E} is {_E}$", False),
    (rf"^{_E} is what {_PCT} of {_E}$", True),
    (rf"^(?:express |write )?{_E} out of {_E} as an? {_PCT}$", True),
    (rf"^what {_PCT} is {_E} of {_E}$", True),
    (rf"^how many {_PCT} of {_E} is {_E}$", False),
    (rf"^{_E} as an? {_PCT} of {_E}$", True),
    (rf"^{_E} out of {_E} is what {_PCT}$", True),
    (rf"^what {_PCT} is {_E} out of {_E}$", True),
)
_CHANGE = re.compile(
    rf"{_PCT} (change|increase|decrease|rise|drop|fall)\b[^\d=]*?\bfrom (.+?) to (.+?)$"
    rf"|from (.+?) to (.+?)\b[^\d=]*?\bby what {_PCT}(?: did (?:it|the \w+) (\w+))?$"
    rf"|from (.+?) to (.+?)[.,;:]\s*(?:what is|what's|whats|find)? ?the {_PCT} "
    rf"(change|increase|decrease)$"
    rf"|^by what {_PCT} does (.+?) (increase|decrease|rise|fall|change) to (?:get |reach )?(.+?)$"
    rf"|^(?:from )?(.+?) to (.+?) is (?:what|which) {_PCT} (change|increase|decrease)$"
)
_EQ_LEAD = re.compile(
    r"^(?:solve|find|determine|what is|what's|whats|work out|get)?\s*(?:the value of\s*)?"
    r"(?:for\s+)?(?:([a-z])\s*(?::|,|\bif\b|\bwhen\b|\bgiven\b|\bwhere\b|\bsuch that\b|$|"
    r"(?=\s*-?\s*\d*\s*[a-z(]?[^=]*=)(?<=for [a-z]))\s*)?"
    r"(?:the equation|equation|if|when|given that|given|where|such that)?\s*:?\s*"
)
_EQ_VALUE = re.compile(
    r"^what (?:value of ([a-z])|number ([a-z])) (?:satisfies|solves|makes)\s*:?\s*(.+?)"
    r"(?: true)?$"
)
_EQ_TAIL = re.compile(r"[.,;:]?\s*(?:what is|what's|whats|find|solve for|so|then)\s+([a-z])\s*\??$")


def _expr_value(text: str, sp):
    v = parse_expression(_words_to_ops(text))
    if not v.is_Rational:
        raise NotCheckable("not a rational number")
    return v


def _to_fraction(v) -> Fraction:
    return Fraction(int(v.p), int(v.q))


def _solve_text(question: str) -> Solution:
    import sympy as sp

    s = _normalise(question)
    if not s or len(s) > MAX_QUESTION:
        raise NotCheckable("empty or too long")
    core = _strip_frame(s)

    # percent change
    m = _CHANGE.search(core)
    if m:
        g = [x for x in m.groups()]
        if g[0] is not None:
            word, y, z = g[0], g[1], g[2]
        elif g[3] is not None:
            y, z, word = g[3], g[4], g[5] or "change"
        elif g[6] is not None:
            y, z, word = g[6], g[7], g[8]
        elif g[9] is not None:
            y, word, z = g[9], g[10], g[11]
        else:
            y, z, word = g[12], g[13], g[14]
        yv, zv = _expr_value(y, sp), _expr_value(z, sp)
        if yv == 0:
            raise NotCheckable("change from zero")
        ch = _to_fraction((zv - yv) / yv * 100)
        up = word in ("increase", "rise", "rose", "increased", "grow", "grew", "go")
        down = word in ("decrease", "drop", "fall", "fell", "decreased", "dropped", "shrink")
        if up and ch < 0 or down and ch > 0:
            raise NotCheckable("direction contradicts the numbers")
        if up or down:
            return Solution("percent_change", abs(ch))
        return Solution("percent_change", ch, signless=True)

    # what percent of y is z
    for pat, swapped in _PERCENT_OF_WHAT:
        m = re.match(pat, core)
        if m:
            a, b = m.group(1), m.group(2)
            z, y = (a, b) if swapped else (b, a)
            try:
                yv, zv = _expr_value(y, sp), _expr_value(z, sp)
            except NotCheckable:
                continue  # another reading may fit ("what percent is 5 out of 20")
            if yv == 0:
                raise NotCheckable("percent of zero")
            return Solution("percent", _to_fraction(zv / yv * 100))

    # an equation in one unknown
    if "=" in core:
        eq = core
        var_named = None
        m = _EQ_VALUE.match(eq)
        if m:
            var_named = m.group(1) or m.group(2)
            eq = m.group(3)
        else:
            mt = _EQ_TAIL.search(eq)
            if mt:
                var_named = mt.group(1)
                eq = eq[: mt.start()]
            ml = _EQ_LEAD.match(eq)
            if ml and ml.end():
                var_named = var_named or ml.group(1)
                eq = eq[ml.end() :]
        eq = re.sub(r"\s*(?:for ([a-z]))$", "", eq.strip().rstrip(".?!").strip())
        lhs, rhs, var = parse_equation(_words_to_ops_eq(eq))
        if var_named and var_named != var:
            raise NotCheckable("asks for another unknown")
        x = sp.Symbol(var)
        diff = sp.expand(lhs - rhs)
        try:
            poly = sp.Poly(diff, x)
        except sp.PolynomialError as e:
            raise NotCheckable("not a polynomial equation") from e
        if poly.degree() != 1:
            raise NotCheckable("not linear")
        sols = sp.solve(sp.Eq(lhs, rhs), x)
        if len(sols) != 1 or not sols[0].is_Rational:
            raise NotCheckable("no single rational solution")
        return Solution("linear", _to_fraction(sols[0]), var=var)

    # arithmetic, by words or symbols
    for pat, op, swapped in _BINARY:
        m = re.match(pat, core)
        if m:
            a, b = m.group(1), m.group(2)
            if swapped:
                a, b = b, a
            try:
                av, bv = _expr_value(a, sp), _expr_value(b, sp)
            except NotCheckable:
                continue
            if op == "/" and bv == 0:
                raise NotCheckable("division by zero")
            v = {"+": av + bv, "-": av - bv, "*": av * bv, "/": av / bv if bv else 0}[op]
            return Solution("arithmetic", _to_fraction(v))
    tokens = tokenize(_words_to_ops(core))
    if not _has_operation(tokens):
        raise NotCheckable("a bare number is not a problem")
    v = _expr_value(core, sp)
    return Solution("arithmetic", _to_fraction(v), decimal="." in core)


def _has_operation(tokens: list[tuple[str, str]]) -> bool:
    """A binary operation (or a written fraction) between operands: "+ 3" alone has none."""
    operand = ("num", "var", "frac")
    for i, (kind, val) in enumerate(tokens):
        if kind == "frac":
            return True
        if kind == "op" and val in "+-*/^of" and i > 0:
            prev = tokens[i - 1]
            if prev[0] in operand or prev == ("op", ")") or prev == ("op", "%"):
                return True
    return False


def _words_to_ops_eq(s: str) -> str:
    """Operator words inside an equation (no 'x' for times: x is the unknown)."""
    for pat, rep in _PHRASES:
        s = re.sub(pat, f" {rep} ", s)
    return re.sub(r"\s+", " ", s).strip()


def _pool() -> ThreadPoolExecutor:
    global _POOL
    if _POOL is None:
        _POOL = ThreadPoolExecutor(max_workers=2, thread_name_prefix="phiflash-check")
    return _POOL


def solve_problem(question: str, timeout: float = DEFAULT_TIMEOUT) -> Solution | None:
    """sympy's answer to ``question``, or None when it is not checkable (or took too long)."""
    if not isinstance(question, str) or len(question) > 4 * MAX_QUESTION:
        return None
    import sympy  # noqa: F401  (imported here, outside the timed part)

    def work():
        try:
            return _solve_text(question)
        except (NotCheckable, ValueError, ZeroDivisionError, RecursionError, OverflowError):
            return None

    fut = _pool().submit(work)
    try:
        return fut.result(timeout=timeout)
    except FutureTimeout:
        fut.cancel()
        return None


def refers_back(question: str) -> bool:
    """True when the question uses words that point at an earlier turn ("it", "that", ...)."""
    return bool(_REFERS_BACK.search(_normalise(question)))


_LEADING_NUMBER = re.compile(r"^([-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?)\s*%?\s*([a-z ]*)$")


def _boxed_value(boxed: str) -> str | None:
    """The model's boxed answer as a plain number string, or None when it is no number."""
    text = normalize_answer(boxed)
    if parse_number(text) is not None:
        return text
    t = _normalise(text)
    m = _LEADING_NUMBER.match(t)  # "12 apples", "25% decrease"
    if m:
        return m.group(1).replace(",", "")
    try:
        v = parse_expression(t)
    except (NotCheckable, ValueError, RecursionError):
        return None
    return _plain(_to_fraction(v)) if v.is_Rational else None


def check_answer(
    question: str,
    reply: str,
    follow_up: bool = False,
    timeout: float = DEFAULT_TIMEOUT,
) -> CheckResult | None:
    """Compare the ``\\boxed{}`` answer in ``reply`` with sympy's solution of ``question``.

    ``follow_up``: the question is not the conversation's first; it is checked only when it
    stands alone (no words such as "it"/"that"/"the answer" pointing back). Returns None when
    there is nothing to check (no boxed answer, a problem outside the grammar, a boxed answer
    that is not a number, a follow-up that depends on earlier turns, or a timeout).
    """
    boxed = extract_boxed(reply)
    if boxed is None or not isinstance(question, str):
        return None
    if follow_up and refers_back(question):
        return None
    sol = solve_problem(question, timeout)
    if sol is None:
        return None
    got = _boxed_value(boxed)
    if got is None:
        return None
    gold = _plain(sol.value)
    ok = answers_equal(got, gold)
    if not ok and sol.signless and sol.value < 0:  # the size of a decrease, never -increase
        ok = answers_equal(got, _plain(-sol.value))
    return CheckResult(ok=ok, expected=sol.display(), got=boxed)
