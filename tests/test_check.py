"""The sympy answer checker: its grammar on tricky and hostile questions, and the comparison."""

from __future__ import annotations

import time
from fractions import Fraction

import pytest

from phiflash.tutor import check
from phiflash.tutor.check import (
    CheckResult,
    NotCheckable,
    check_answer,
    parse_expression,
    solve_problem,
    tokenize,
)

SOLVED = [
    ("What is 3 + 4?", "7"),
    ("whats 7*8", "56"),
    ("what's 12 × 3", "36"),
    ("12 · 3", "36"),
    ("3 x 4", "12"),
    ("12 ÷ 4", "3"),
    ("12 / 8", "3/2"),
    ("12 divided by 4", "3"),
    ("6 multiplied by 7", "42"),
    ("9 times 9", "81"),
    ("10 take away 3", "7"),
    ("ten minus three is not supported but 10 minus 3 is", None),
    ("What is 100 − 137?", "-37"),
    ("12 - 20 = ?", "-8"),
    ("what is 0 + 0", "0"),
    ("what is 2 + 3 * 4", "14"),
    ("(2 + 3) * 4", "20"),
    ("1,234 + 5,678", "6912"),
    ("What is 1,000,000 - 1?", "999999"),
    ("what is $12 + $5", "17"),
    ("What is 3.5 + 1.25?", "4.75"),
    ("3/4 of 12", "9"),
    ("Compute 3/4 + 1/6. Simplify your answer.", "11/12"),
    ("What is 2/3 ÷ 4/9?", "3/2"),
    ("15% of 80", "12"),
    ("What is 15 percent of 80?", "12"),
    ("What percent of 80 is 20?", "25%"),
    ("20 is what percent of 80?", "25%"),
    ("Express 12 out of 48 as a percent.", "25%"),
    ("What is the percent change from 80 to 60?", "-25%"),
    ("What is the percent decrease from 80 to 60?", "25%"),
    ("A price rises from 80 to 100. By what percent did it increase?", "25%"),
    ("A value changes from 50 to 40. What is the percent change?", "-20%"),
    ("Add 5 and 6", "11"),
    ("Subtract 17 from 50.", "33"),
    ("take away 3 from 10", "7"),
    ("the product of 12 and 11", "132"),
    ("Find the sum of 250 and 750.", "1000"),
    ("divide 84 by 7", "12"),
    ("-x + 6 = -3x + 2", "x = -2"),
    ("Solve for x: 2x = 10", "x = 5"),
    ("solve 2x=10", "x = 5"),
    ("Find x if 3x + 2 = 11.", "x = 3"),
    ("What value of y satisfies 4y - 3 = 9?", "y = 3"),
    ("2x + 3 = 11. What is x?", "x = 4"),
    ("Solve the equation 5n = 3n + 8.", "n = 4"),
    ("2(x + 3) = 14", "x = 4"),
    ("12x - 7 = 5x + 14", "x = 3"),
    ("x + 5 = 2", "x = -3"),
    ("3x = 2", "x = 2/3"),
    (
        "Please reason step by step, and put your final answer within \\boxed{}. What is 8 - 13?",
        "-5",
    ),
]

NOT_CHECKABLE = [
    "hi",
    "write an essay about dogs",
    "what is the derivative of x^2",
    "x^2 = 4",  # not linear
    "1/x = 2",
    "x + y = 3",  # two unknowns
    "x = x + 1",  # no solution
    "2x = 2x",  # every x
    "solve for y: 2x = 4",  # asks for another unknown
    "1 1/2 + 1",  # a mixed number: ambiguous, not guessed
    "1,23 + 4",  # not a thousands separator
    "5 + 10%",  # a bare percent: ambiguous
    "what is 5 / 0",
    "0^-1 + 1",
    "9",  # a bare number is no problem
    "what is x + 3",
    "seven plus two",
    "import os",
    "__import__('os').system('ls')",
    "eval(1+1)",
    "1 + 1; rm -rf /",
    "9" * 40 + " + 1",
    "(" * 100 + "1" + ")" * 100,
    "-" * 200 + "1",
    "2^1000000",
    "2**99",
    "2^3^4",
    "1" + " + 1" * 500,
    "\x00\x01 + 2",
    "3 + 4 and 5 + 6",
    "what is 1/2 + 1/3 as a decimal",
    "3 from 4 to 5 by what percent " * 13,  # a frame's words around other numbers
    "from 1 to " * 40,
]


@pytest.mark.parametrize("question,expected", SOLVED)
def test_solves(question, expected):
    sol = solve_problem(question, timeout=30)  # generous: a loaded machine
    if expected is None:
        assert sol is None
    else:
        assert sol is not None, question
        assert sol.display() == expected


@pytest.mark.parametrize("question", NOT_CHECKABLE)
def test_not_checkable(question):
    assert solve_problem(question, timeout=30) is None


def test_hostile_inputs_are_fast():
    start = time.perf_counter()
    for q in NOT_CHECKABLE:
        solve_problem(q)
    solve_problem("(" * 10_000)
    solve_problem("1+" * 10_000 + "1")
    assert time.perf_counter() - start < 5.0


def test_tokenizer_and_parser():
    assert tokenize("1,234.5 + x") == [("num", "1234.5"), ("op", "+"), ("var", "x")]
    assert tokenize("2**3") == [("num", "2"), ("op", "^"), ("num", "3")]
    with pytest.raises(NotCheckable):
        tokenize("1,2345")
    with pytest.raises(NotCheckable):
        tokenize("abc")
    with pytest.raises(NotCheckable):
        tokenize("{1}")
    assert parse_expression("2(3 + 4)") == 14
    assert parse_expression("-2^2") == -4  # the sign applies after the power
    assert parse_expression("50% of 30") == 15
    assert parse_expression("0.1 + 0.2") * 10 == 3  # exact, not binary floating point
    with pytest.raises(NotCheckable):
        parse_expression("3x")  # an unknown in arithmetic
    with pytest.raises(NotCheckable):
        parse_expression("((((((((((((((1))))))))))))))")  # nested too deeply


def test_never_evaluates_text(monkeypatch):
    import sympy

    def boom(*a, **k):
        raise AssertionError("sympify/parse_expr must not be called")

    monkeypatch.setattr(sympy, "sympify", boom)
    monkeypatch.setattr(sympy.parsing.sympy_parser, "parse_expr", boom)
    monkeypatch.setattr("builtins.eval", boom)
    assert solve_problem("What is 3/4 + 1/6?").value == Fraction(11, 12)
    assert solve_problem("-x + 6 = -3x + 2").value == -2


def test_check_answer_marks():
    ok = check_answer("What is 3 + 4?", "<think>3 + 4 = 7</think>So \\boxed{7}.")
    assert ok == CheckResult(True, "7", "7") and ok.badge() == "checked ✓"
    bad = check_answer("What is 3 + 4?", "<think></think>\\boxed{34}")
    assert not bad.ok and bad.badge() == "differs ✗ (sympy: 7)"
    # the one boxed extraction: the last box counts
    assert check_answer("3 + 4", "\\boxed{8} no, \\boxed{7}").ok
    # answer forms: fractions, decimals, x =, percent signs, units, thousands separators
    assert check_answer("3/4 + 1/6", "\\boxed{\\frac{11}{12}}").ok
    assert check_answer("3/4 + 1/4", "\\boxed{1}").ok
    assert check_answer("10 / 4", "\\boxed{2.5}").ok
    assert check_answer("1 / 3", "\\boxed{0.333}").ok
    assert check_answer("Solve 2x = 10", "\\boxed{x = 5}").ok
    assert check_answer("What percent of 80 is 20?", "\\boxed{25\\%}").ok
    assert check_answer("what is 3 + 4", "\\boxed{7 apples}").ok
    assert check_answer("999 + 1,001", "\\boxed{2,000}").ok
    assert check_answer("What is 8 - 13?", "\\boxed{-5}").ok
    assert not check_answer("What is 8 - 13?", "\\boxed{5}").ok
    # a neutral "percent change" accepts the size of a decrease, a directed one its size only
    assert check_answer("What is the percent change from 80 to 60?", "\\boxed{-25\\%}").ok
    assert check_answer("What is the percent change from 80 to 60?", "\\boxed{25\\%}").ok
    # ... but an increase given as a decrease is wrong (seen on the bundled model's replies)
    bad = check_answer("whats the percentage change from 16 to 24", "\\boxed{-50\\%}")
    assert bad is not None and not bad.ok and bad.expected == "50%"
    assert check_answer("whats the percentage change from 16 to 24", "\\boxed{50\\%}").ok
    assert check_answer("What is the percent decrease from 80 to 60?", "\\boxed{25\\%}").ok


def test_no_mark():
    assert check_answer("What is 3 + 4?", "7") is None  # no box
    assert check_answer("write a poem", "\\boxed{7}") is None  # not checkable
    assert check_answer("What is 3 + 4?", "\\boxed{seven}") is None  # no number
    assert check_answer("What is 3 + 4?", "\\boxed{2 r 1}") is None
    # follow-ups: one that points back gets no mark, a new standalone question does
    assert check_answer("now multiply that by 3", "\\boxed{21}", follow_up=True) is None
    assert check_answer("what is it times 3", "\\boxed{21}", follow_up=True) is None
    assert check_answer("and 5 times 3?", "\\boxed{15}", follow_up=True).ok
    assert check_answer("what is x + 2", "\\boxed{5}", follow_up=True) is None


def test_timeout_gives_no_mark(monkeypatch):
    def slow(question):
        time.sleep(1.0)
        raise NotCheckable("late")

    monkeypatch.setattr(check, "_solve_text", slow)
    start = time.perf_counter()
    assert solve_problem("What is 3 + 4?", timeout=0.1) is None
    assert time.perf_counter() - start < 0.9


# --------------------------------------------------------------------------- the chat's badge


def _run_chat(tmp_path, reply: str, questions: list[str]) -> list[str]:
    """Ask ``questions`` in one conversation of `phiflash chat` (fake engine answering
    ``reply``); the answer badges' texts once every check has finished."""
    import asyncio

    from phiflash.engine import FakeEngine
    from phiflash.tui.app import make_app
    from phiflash.tui.history import HistoryStore
    from phiflash.tui.widgets.message import AssistantMessage

    async def run():
        store = HistoryStore(tmp_path / f"h{len(list(tmp_path.iterdir()))}.sqlite3")
        app = make_app(FakeEngine(reply=reply), store=store, export_dir=tmp_path, batch_interval=0)
        async with app.run_test(size=(100, 40)) as pilot:
            for q in questions:
                await pilot.click("#prompt")
                await pilot.press(*q, "enter")
                deadline = time.monotonic() + 60  # CI's 2 cores may be busy
                while time.monotonic() < deadline:
                    screen = app.chat_screen
                    msgs = app.query(AssistantMessage)
                    idle = all(w.is_finished for w in screen.workers) and all(
                        w.is_finished for m in msgs for w in m.workers
                    )
                    if screen.streaming is None and idle and len(msgs) == questions.index(q) + 1:
                        break
                    await pilot.pause(0.01)
                await pilot.pause()
            out = [str(m.query_one(".boxed").render()) for m in app.query(AssistantMessage)]
        store.close()
        return out

    return asyncio.run(run())


def test_chat_badge_marks(tmp_path):
    right = "<think>2 + 3 = 5.</think>The answer is $\\boxed{5}$."
    badges = _run_chat(tmp_path, right, ["what is 2+3", "now times 3", "what is 10 - 5"])
    assert "Answer: 5" in badges[0] and "checked ✓" in badges[0]
    assert "✓" not in badges[1] and "✗" not in badges[1]  # a follow-up that points back
    assert "checked ✓" in badges[2]  # a new standalone question in the same conversation
    wrong = "<think>2 + 3 = 6.</think>The answer is $\\boxed{6}$."
    (badge,) = _run_chat(tmp_path, wrong, ["What is 2 * 3 - 1?"])
    assert "differs ✗ (sympy: 5)" in badge
    (badge,) = _run_chat(tmp_path, right, ["write me a poem"])
    assert "Answer: 5" in badge and "✓" not in badge and "✗" not in badge


def test_welcome_says_what_the_bundled_model_can_do(tmp_path):
    import asyncio

    from phiflash.engine import FakeEngine
    from phiflash.paths import DEFAULT_MODEL_DIR
    from phiflash.tui.app import make_app
    from phiflash.tui.history import HistoryStore
    from phiflash.tui.screens.chat import runs_bundled_model

    assert runs_bundled_model("the bundled model") and runs_bundled_model(str(DEFAULT_MODEL_DIR))
    assert not runs_bundled_model("microsoft/Phi-4-mini-flash-reasoning")
    assert not runs_bundled_model("")

    async def welcome(label):
        store = HistoryStore(tmp_path / f"w{len(list(tmp_path.iterdir()))}.sqlite3")
        app = make_app(
            FakeEngine(), store=store, export_dir=tmp_path, batch_interval=0, model_label=label
        )
        async with app.run_test(size=(100, 40)) as pilot:
            await pilot.pause()
            text = str(app.chat_screen.query_one("#welcome").render())
        store.close()
        return text

    bundled = asyncio.run(welcome("the bundled model"))
    assert "arithmetic, fractions, percentages and linear equations" in bundled
    assert "phiflash pull microsoft/Phi-4-mini-flash-reasoning" in bundled.replace("\n", " ")
    assert "phiflash pull" not in asyncio.run(welcome("microsoft/Phi-4-mini-flash-reasoning"))
