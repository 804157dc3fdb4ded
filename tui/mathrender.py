"""LaTeX in model output -> Unicode text that reads well in a terminal.

Why pylatexenc: it is a maintained, pure-Python LaTeX *parser* (``LatexWalker``) with a large
table of symbol macros (``\\alpha`` -> α, ``\\le`` -> ≤, ``\\infty`` -> ∞, ...) in
``LatexNodes2Text``. The alternative, unicodeit, only substitutes symbols through regexes: it has
no parse tree, so it cannot parenthesise ``\\frac{a+b}{c}`` correctly or tell which braces belong
to a superscript. We walk pylatexenc's tree ourselves for the structural macros that its own
``latex2text`` flattens ambiguously (``\\frac{a+b}{c}`` -> ``a+b/c``, ``x^{10}`` -> ``x^10``) and
delegate every other macro to its symbol table.

Public API:
- :func:`latex_to_unicode` converts one math expression (no delimiters).
- :func:`render_markdown` converts the math spans (``$…$``, ``$$…$$``, ``\\(…\\)``, ``\\[…\\]``,
  bare ``\\boxed{…}``) of a Markdown text and leaves the rest alone.
- :class:`MathStream` does the same incrementally for streamed text: it only emits output for
  input whose rendering can no longer change, so it can feed ``Markdown.append``.
"""

from __future__ import annotations

import re
from functools import lru_cache

from pylatexenc import latexwalker as lw
from pylatexenc.latex2text import LatexNodes2Text
from pylatexenc.macrospec import MacroSpec

_SUP = dict(zip("0123456789+-=()nijkx", "⁰¹²³⁴⁵⁶⁷⁸⁹⁺⁻⁼⁽⁾ⁿⁱʲᵏˣ"))
_SUP.update(zip("abcdefghlmoprstuvwyz", "ᵃᵇᶜᵈᵉᶠᵍʰˡᵐᵒᵖʳˢᵗᵘᵛʷʸᶻ"))
_SUP["−"] = "⁻"
_SUB = dict(zip("0123456789+-=()aeijkmnoprstuvx", "₀₁₂₃₄₅₆₇₈₉₊₋₌₍₎ₐₑᵢⱼₖₘₙₒₚᵣₛₜᵤᵥₓ"))
_SUB["−"] = "₋"
_FRACTIONS = {"1/2": "½", "1/3": "⅓", "2/3": "⅔", "1/4": "¼", "3/4": "¾"}
_ROOTS = {"2": "√", "3": "∛", "4": "∜"}
_EXTRA_SYMBOLS = {
    "cdot": "·",
    "times": "×",
    "div": "÷",
    "pm": "±",
    "mp": "∓",
    "le": "≤",
    "leq": "≤",
    "ge": "≥",
    "geq": "≥",
    "ne": "≠",
    "neq": "≠",
    "approx": "≈",
    "equiv": "≡",
    "dots": "…",
    "ldots": "…",
    "cdots": "⋯",
    "quad": "  ",
    "qquad": "    ",
    ",": " ",
    ";": " ",
    ":": " ",
    "!": "",
    " ": " ",
    "%": "%",
    "$": "$",
    "{": "{",
    "}": "}",
    "implies": "⟹",
    "iff": "⟺",
    "to": "→",
    "rightarrow": "→",
    "Rightarrow": "⇒",
    "circ": "∘",
    "degree": "°",
}
_IGNORED = {"displaystyle", "textstyle", "left", "right", "big", "Big", "bigg", "Bigg", "limits"}
_TEXT_MACROS = {"text", "textrm", "textbf", "mathrm", "mathbf", "mathit", "textit", "operatorname"}
_FRAC_MACROS = {"frac", "dfrac", "tfrac", "cfrac"}
_ATOM = re.compile(r"^(?:[\w.]+(?:\(.*\))?|[^\s\w]|\(.*\)|\[.*\])$")
_BOX = ("⟦", "⟧")
_INLINE_MAX = 300  # an inline $ without a close this near is a dollar sign, not math


@lru_cache(maxsize=1)
def _context():
    db = lw.get_default_latex_context_db()
    specs = [MacroSpec(m, "{{") for m in ("dfrac", "tfrac", "cfrac", "binom", "overset")]
    specs += [MacroSpec(m, "{") for m in ("boxed", "pmod", "operatorname", "textbf", "mathit")]
    db.add_context_category("phiflash", macros=specs, prepend=True)
    return db


@lru_cache(maxsize=1)
def _symbols() -> LatexNodes2Text:
    return LatexNodes2Text(math_mode="text", strict_latex_spaces=True)


def _script(text: str, table: dict[str, str], mark: str) -> str:
    text = text.strip()
    if text and all(ch in table for ch in text):
        return "".join(table[ch] for ch in text)
    return f"{mark}{text}" if len(text) == 1 else f"{mark}({text})"


def _wrap(text: str) -> str:
    text = text.strip()
    return text if _ATOM.match(text) else f"({text})"


class _Converter:
    def __init__(self, box: tuple[str, str]):
        self.box = box

    def nodes(self, nodelist) -> str:
        out: list[str] = []
        pending: str | None = None  # "^" or "_" waiting for its argument node
        for node in nodelist or []:
            if node is None or node.isNodeType(lw.LatexCommentNode):
                continue
            if pending is not None:
                arg = self.node(node)
                out.append(_script(arg, _SUP if pending == "^" else _SUB, pending))
                pending = None
                continue
            if node.isNodeType(lw.LatexCharsNode):
                text, pending = self.chars(node.chars)
                out.append(text)
            else:
                out.append(self.node(node))
        if pending:
            out.append(pending)
        return "".join(out)

    def chars(self, chars: str) -> tuple[str, str | None]:
        """Scripts inside a run of characters (``x^2``); a trailing ``^`` waits for a group."""
        out, i, n = [], 0, len(chars)
        while i < n:
            ch = chars[i]
            if ch in "^_" and i + 1 < n:
                out.append(_script(chars[i + 1], _SUP if ch == "^" else _SUB, ch))
                i += 2
                continue
            if ch in "^_":
                return "".join(out), ch
            out.append("−" if ch == "-" else ch)
            i += 1
        return "".join(out), None

    def arg(self, node, i: int) -> str:
        args = node.nodeargd.argnlist if node.nodeargd else []
        if i >= len(args) or args[i] is None:
            return ""
        return self.node(args[i])

    def node(self, node) -> str:
        if node.isNodeType(lw.LatexCharsNode):
            text, pending = self.chars(node.chars)
            return text + (pending or "")
        if node.isNodeType(lw.LatexGroupNode):
            return self.nodes(node.nodelist)
        if node.isNodeType(lw.LatexMathNode):
            return self.nodes(node.nodelist)
        if node.isNodeType(lw.LatexSpecialsNode):
            return {"&": " ", "~": " "}.get(node.specials_chars, node.specials_chars)
        if node.isNodeType(lw.LatexEnvironmentNode):
            body = self.nodes(node.nodelist)
            rows = [r.strip() for r in body.split("\n") if r.strip()]
            return "; ".join(rows) if node.environmentname in ("cases",) else " ".join(rows)
        if node.isNodeType(lw.LatexMacroNode):
            return self.macro(node)
        return ""

    def macro(self, node) -> str:
        name = node.macroname
        if name in _FRAC_MACROS:
            num, den = self.arg(node, 0).strip(), self.arg(node, 1).strip()
            plain = f"{num}/{den}"
            if plain in _FRACTIONS:
                return _FRACTIONS[plain]
            return f"{_wrap(num)}/{_wrap(den)}"
        if name == "sqrt":
            index, body = self.arg(node, 0).strip(), self.arg(node, 1).strip()
            root = _ROOTS.get(index or "2") or (_script(index, _SUP, "^") + "√")
            return root + _wrap(body)
        if name == "boxed":
            return f"{self.box[0]}{self.arg(node, 0).strip()}{self.box[1]}"
        if name == "binom":
            return f"C({self.arg(node, 0).strip()}, {self.arg(node, 1).strip()})"
        if name == "pmod":
            return f" (mod {self.arg(node, 0).strip()})"
        if name in _TEXT_MACROS:
            return self.arg(node, 0)
        if name in ("overline", "bar"):
            return "".join(ch + "\u0305" for ch in self.arg(node, 0))
        if name == "\\":
            return "\n"
        if name in _IGNORED:
            return ""
        space = " " if getattr(node, "macro_post_space", "") else ""
        if name in _EXTRA_SYMBOLS:
            return _EXTRA_SYMBOLS[name] + space
        try:
            text = _symbols().macro_node_to_text(node)
        except Exception:  # an unknown or malformed macro: show it as written
            text = node.latex_verbatim()
        return text + space


def latex_to_unicode(expr: str, box: tuple[str, str] = _BOX) -> str:
    """One LaTeX math expression (without ``$`` delimiters) as Unicode text."""
    try:
        walker = lw.LatexWalker(expr, latex_context=_context(), tolerant_parsing=True)
        nodes, _, _ = walker.get_latex_nodes()
    except Exception:  # never fail on odd model output: show it raw
        return expr
    text = _Converter(box).nodes(nodes)
    text = re.sub(r"[ \t]{2,}", " ", text)
    return text.strip()


_MD_SPECIAL = re.compile(r"([\\`*_\[\]<>#|])")


def _md_math(expr: str) -> str:
    rendered = latex_to_unicode(expr, box=("\x00", "\x01"))
    rendered = _MD_SPECIAL.sub(r"\\\1", rendered)
    return rendered.replace("\x00", f"**{_BOX[0]}").replace("\x01", f"{_BOX[1]}**")


# Math span openers and their closers. ``$`` is only math when it hugs its content
# (``$x$`` but not ``costs $5 and $6``), the usual heuristic of pandoc and markdown-it plugins.
_OPENERS = (("$$", "$$", True), ("\\[", "\\]", True), ("\\(", "\\)", False), ("$", "$", False))


def _find_close(text: str, start: int, closer: str, final: bool) -> int:
    """Index of ``closer`` after ``start``; -1 if not there yet, -2 if this is no math span.

    An inline ``$`` span holds no other ``$``: the next ``$`` closes it if it hugs the content
    and is not followed by a digit, otherwise the opener was a dollar sign.
    """
    j = text.find(closer, start)
    if closer != "$":
        return j
    if j < 0:
        too_far = len(text) - start > _INLINE_MAX or "\n\n" in text[start:]
        return -2 if too_far else -1
    if j + 1 == len(text) and not final:
        return -1  # the next character decides (a digit or "$" means no close)
    if (
        j == start
        or text[j - 1] in " \t\n"
        or text[j + 1 : j + 2] == "$"
        or text[j + 1 : j + 2].isdigit()
        or j - start > _INLINE_MAX
        or "\n\n" in text[start:j]
    ):
        return -2
    return j


def _boxed_end(text: str, start: int) -> int:
    """End index of a bare ``\\boxed{...}`` starting at ``start`` (balanced braces), or -1."""
    depth = 0
    for k in range(start + len("\\boxed"), len(text)):
        if text[k] == "{":
            depth += 1
        elif text[k] == "}":
            depth -= 1
            if depth == 0:
                return k + 1
        elif depth == 0 and not text[k].isspace():
            return -1
    return -1


def _render_prefix(text: str, final: bool) -> tuple[str, int]:
    """Render ``text`` up to the last point whose rendering cannot change.

    Returns (rendered, consumed). With ``final`` everything is consumed: an unclosed math
    span is then shown as written.
    """
    out: list[str] = []
    i = plain = 0
    n = len(text)
    while i < n:
        ch = text[i]
        if ch not in "$\\":
            i += 1
            continue
        if not final and i >= n - 1:
            break  # a lone "$" or "\" at the end may start a delimiter
        if not final and "\\boxed".startswith(text[i : i + 6]) and i + 6 > n:
            break  # maybe the start of a bare \boxed
        if text.startswith("\\boxed", i):
            end = _boxed_end(text, i)
            if end < 0:
                if final:
                    i += 1
                    continue
                break
            out.append(text[plain:i] + _md_math(text[i:end]))
            i = plain = end
            continue
        for opener, closer, display in _OPENERS:
            if not text.startswith(opener, i):
                continue
            body = i + len(opener)
            if opener == "$" and (body >= n or text[body] in " \t\n"):
                if body >= n and not final:
                    return "".join(out) + text[plain:i], i
                opener = None
                break
            j = _find_close(text, body, closer, final)
            if j < 0:
                if final or j == -2:
                    opener = None
                    break
                return "".join(out) + text[plain:i], i
            math = _md_math(text[body:j])
            out.append(text[plain:i] + (f"\n\n{math}\n\n" if display else math))
            i = plain = j + len(closer)
            break
        else:
            opener = None
        if opener is None:
            i += 2 if ch == "\\" else 1
    if not final:
        i = min(i, n)
        return "".join(out) + text[plain:i], i
    return "".join(out) + text[plain:], n


def render_markdown(text: str) -> str:
    """A whole Markdown text with its math spans rendered as Unicode."""
    return _render_prefix(text, final=True)[0]


class MathStream:
    """Incremental :func:`render_markdown`: ``feed`` returns only output that is final."""

    def __init__(self) -> None:
        self.raw = ""
        self._done = 0

    def feed(self, text: str) -> str:
        self.raw += text
        rendered, consumed = _render_prefix(self.raw[self._done :], final=False)
        self._done += consumed
        return rendered

    def flush(self) -> str:
        rendered, consumed = _render_prefix(self.raw[self._done :], final=True)
        self._done += consumed
        return rendered
