"""Math rendering, the think/answer split, and the history store (no UI)."""

from __future__ import annotations

from phiflash.tui.conversation import Conversation, Turn, split_think
from phiflash.tui.history import HistoryStore, export_markdown
from phiflash.tui.mathrender import MathStream, latex_to_unicode, render_markdown
from phiflash.tutor.answers import extract_boxed


def test_latex_to_unicode():
    assert latex_to_unicode(r"\frac{1}{2}+\sqrt{x^2+1}") == "½+√(x²+1)"
    assert latex_to_unicode(r"\frac{a+b}{c}") == "(a+b)/c"
    assert latex_to_unicode(r"x^{10} \cdot y_3 \le \pi") == "x¹⁰ · y₃ ≤ π"
    assert latex_to_unicode(r"\sqrt[3]{8}") == "∛8"
    assert latex_to_unicode(r"\dfrac{n(n+1)}{2}") == "n(n+1)/2"
    assert latex_to_unicode(r"\boxed{42}") == "⟦42⟧"


def test_render_markdown_delimiters_and_dollars():
    text = r"Let \(x=\frac{3}{4}\), $y^2$ and \[\boxed{7}\] but $5 and $6 stay."
    out = render_markdown(text)
    assert "x=¾" in out and "y²" in out and "**⟦7⟧**" in out
    assert "$5 and $6 stay." in out


def test_math_stream_matches_whole_render_for_any_split():
    text = r"So $x^2 = 4$, hence \(x = \pm 2\). Also \[\frac{1}{3}\] and \boxed{2}. Cost: $5."
    for step in (1, 2, 3, 7):
        stream, out = MathStream(), ""
        for i in range(0, len(text), step):
            out += stream.feed(text[i : i + step])
        assert out + stream.flush() == render_markdown(text)


def test_extract_boxed_and_split_think():
    assert extract_boxed(r"\boxed{1} then \boxed{\frac{1}{2}}") == r"\frac{1}{2}"
    s = split_think("<think>abc</thi")
    assert s.thinking and s.think == "abc" and s.answer == ""
    s = split_think("<think>abc</think>\nAnswer")
    assert not s.thinking and s.answer == "Answer"
    assert split_think("plain").answer == "plain"


def test_history_store_roundtrip_and_export(tmp_path):
    store = HistoryStore(tmp_path / "h.db")
    conv = Conversation(system_prompt="Be kind.", title="2+3")
    store.add(conv, Turn("user", "2+3"))
    reply = Turn("assistant", "<think>hmm", "streaming")
    store.add(conv, reply)
    store.update(reply.id, "<think>hmm</think>It is $\\boxed{5}$.", "streaming")
    loaded = store.load(conv.id)
    assert loaded.turns[1].status == "stopped"  # died while streaming
    md = export_markdown(loaded, "m")
    assert "## Tutor" in md and "It is $\\boxed{5}$." in md and "*(stopped)*" in md
    store.delete(conv.id)
    assert store.list() == [] and store.load(conv.id) is None
