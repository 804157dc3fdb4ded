"""Reading a final answer out of a reply and comparing it with the gold answer.

``extract_boxed`` takes the last ``\\boxed{...}`` (nested braces allowed), ``normalize_answer``
strips LaTeX/text decoration and ``answers_equal`` compares numerically where both sides are
numbers (integers, decimals, ``a/b``, ``\\frac{a}{b}``, ``\\dfrac34``, percentages, thousands
separators), and as normalized strings otherwise.
"""

from __future__ import annotations

import re
from fractions import Fraction

_BOX_CMDS = ("\\boxed", "\\fbox")


def _match_brace(s: str, start: int) -> int | None:
    """Index of the brace closing the one at ``start`` (None when unbalanced)."""
    depth = 0
    i = start
    while i < len(s):
        c = s[i]
        if c == "\\":  # skip escaped characters such as \{ \}
            i += 2
            continue
        if c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
            if depth == 0:
                return i
        i += 1
    return None


def extract_boxed(text: str | None) -> str | None:
    """Content of the last ``\\boxed{...}`` (or ``\\fbox{...}``, ``\\boxed 5``) in ``text``."""
    if not text:
        return None
    best = -1
    cmd_len = 0
    for cmd in _BOX_CMDS:
        for m in re.finditer(re.escape(cmd) + r"(?![A-Za-z])", text):
            if m.start() > best:
                best, cmd_len = m.start(), len(cmd)
    if best < 0:
        return None
    i = best + cmd_len
    while i < len(text) and text[i] == " ":
        i += 1
    if i < len(text) and text[i] == "{":
        end = _match_brace(text, i)
        if end is None:
            return None
        return text[i + 1 : end]
    m = re.match(r"[^\s$]+", text[i:])  # "\boxed 5"
    return m.group(0) if m else None


def _closes_at_end(s: str, open_: str, close: str) -> bool:
    """True when the bracket opening ``s`` is closed by its last character."""
    depth = 0
    for i, c in enumerate(s):
        if c == open_:
            depth += 1
        elif c == close:
            depth -= 1
            if depth == 0:
                return i == len(s) - 1
    return False


def _strip_outer(s: str) -> str:
    s = s.strip()
    changed = True
    while changed:
        changed = False
        for a, b in (("$", "$"), ("\\(", "\\)"), ("\\[", "\\]"), ("{", "}"), ("(", ")")):
            if s.startswith(a) and s.endswith(b) and len(s) >= len(a) + len(b):
                inner = s[len(a) : len(s) - len(b)]
                if a == "{" and _match_brace(s, 0) != len(s) - 1:
                    continue
                if a == "(" and (not _closes_at_end(s, "(", ")") or "," in inner):
                    continue
                s = inner.strip()
                changed = True
    return s


_TEXT_CMD = re.compile(r"\\(?:text|textbf|mathrm|mathbf|textit|mbox|operatorname)\s*\{([^{}]*)\}")
_FRAC_SHORT = re.compile(r"\\frac\s*(\d)\s*(\d)")  # \frac34
_FRAC_HALF = re.compile(r"\\frac\s*\{([^{}]*)\}\s*(\d)")  # \frac{3}4
_FRAC_HALF2 = re.compile(r"\\frac\s*(\d)\s*\{([^{}]*)\}")  # \frac3{4}
_THOUSANDS = re.compile(r"(?<![\d.])\d{1,3}(?:,\d{3})+(?![\d])")
_THOUSANDS_SPACE = re.compile(r"(?<![\d.])\d{1,3}(?:(?:\\,|\\ |\{,\}|\s)\d{3})+(?![\d])")
_ASSIGN = re.compile(r"^[A-Za-z](?:_\{?\w+\}?)?\s*=\s*")


def normalize_answer(s: str | None) -> str:
    """A canonical string form: LaTeX decoration, units of markup, ``x =``, ``%``, ``$``,
    thousands separators and trailing periods removed; ``\\dfrac``/``\\tfrac`` -> ``\\frac``."""
    if s is None:
        return ""
    s = str(s).strip()
    s = _strip_outer(s)
    s = re.sub(r"\\(?:left|right|big|Big|bigg|Bigg)(?![A-Za-z])", "", s)
    s = s.replace("\\displaystyle", "")
    for _ in range(3):
        s = _TEXT_CMD.sub(r"\1", s)
    s = re.sub(r"\\[dt]frac", r"\\frac", s)
    s = _FRAC_SHORT.sub(r"\\frac{\1}{\2}", s)
    s = _FRAC_HALF.sub(r"\\frac{\1}{\2}", s)
    s = _FRAC_HALF2.sub(r"\\frac{\1}{\2}", s)
    s = s.replace("\\%", "%").replace("percent", "%")
    s = s.replace("^\\circ", "").replace("^{\\circ}", "").replace("°", "")
    s = s.replace("\\$", "").replace("$", "")
    s = s.replace("\\!", "").replace("\\;", " ").replace("\\quad", " ")
    s = s.replace("−", "-").replace("–", "-")  # unicode minus / en dash
    s = _THOUSANDS.sub(lambda m: m.group(0).replace(",", ""), s)
    s = _THOUSANDS_SPACE.sub(lambda m: re.sub(r"\\,|\\ |\{,\}|\s", "", m.group(0)), s)
    s = s.replace("\\,", "")
    s = _strip_outer(s)
    # "x = 5" -> "5" (also "x=5", "y_1 = 3"); only a single leading assignment.
    s = _ASSIGN.sub("", s)
    s = s.strip().rstrip(".").strip()
    s = re.sub(r"\s*%$", "", s)  # "25 %" -> "25"
    s = _strip_outer(s)
    s = re.sub(r"\s+", " ", s).strip()
    return s


_NUM = r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)"


def parse_number(s: str) -> Fraction | None:
    """A normalized answer as an exact number, or None."""
    t = s.replace(" ", "")
    if not t:
        return None
    sign = 1
    while t.startswith(("-", "+")) and len(t) > 1 and not re.fullmatch(_NUM, t):
        if t[0] == "-":
            sign = -sign
        t = t[1:]
        t = _strip_outer(t).replace(" ", "")
    if re.fullmatch(_NUM, t):
        return sign * Fraction(t)
    m = re.fullmatch(r"\\frac\{(.+)\}\{(.+)\}", t)
    if m and _match_brace(t, 5) == 5 + len(m.group(1)) + 1:
        num, den = parse_number(m.group(1)), parse_number(m.group(2))
        if num is None or den is None or den == 0:
            return None
        return sign * num / den
    m = re.fullmatch(rf"\(?({_NUM})\)?/\(?({_NUM})\)?", t)
    if m:
        den = Fraction(m.group(2))
        return None if den == 0 else sign * Fraction(m.group(1)) / den
    m = re.fullmatch(r"(\d+)\\frac\{(\d+)\}\{(\d+)\}", t)  # mixed number 1\frac{1}{2}
    if m and int(m.group(3)):
        return sign * (int(m.group(1)) + Fraction(int(m.group(2)), int(m.group(3))))
    return None


def answers_equal(pred: str | None, gold: str | None) -> bool:
    """True when ``pred`` and ``gold`` are the same answer after normalising.

    Numbers compare exactly as fractions; a decimal prediction with at least three decimal
    places also matches a gold value that rounds to it (0.333 vs 1/3).
    """
    if pred is None or gold is None:
        return False
    p, g = normalize_answer(pred), normalize_answer(gold)
    if not p:
        return False
    pv, gv = parse_number(p), parse_number(g)
    if pv is not None and gv is not None:
        if pv == gv:
            return True
        m = re.fullmatch(r"[+-]?\d*\.(\d{3,})", p.replace(" ", ""))
        if m:
            places = len(m.group(1))
            return abs(gv - pv) <= Fraction(1, 2 * 10**places)
        return False
    return p.replace(" ", "").lower() == g.replace(" ", "").lower()


def score_reply(reply: str, gold: str) -> tuple[bool, str | None]:
    """(correct, extracted answer) for a full model reply."""
    pred = extract_boxed(reply)
    return answers_equal(pred, gold), pred
