import json
import time
from dataclasses import dataclass

import pytest

from phiflash.commands import eval_math
from phiflash.engine import FakeEngine, GenerationParams
from phiflash.errors import PhiflashError
from phiflash.tutor import evalmath
from phiflash.tutor.data import EVAL_SETS, MATH_KINDS, dataset, eval_set
from phiflash.tutor.evalmath import (
    evaluate,
    format_table,
    grade,
    greedy_params,
    math_verify_equal,
)


@dataclass
class OracleEngine(FakeEngine):
    """Replies with the generated solution (wrong where ``wrong_if(example)`` holds)."""

    solutions: dict | None = None
    wrong_if: object = None  # a predicate on the example
    params_seen: list | None = None

    def stream(self, messages, params, should_stop=None):
        ex = self.solutions[json.dumps(messages)]
        reply = ex["messages"][-1]["content"]
        if self.wrong_if is not None and self.wrong_if(ex):
            reply = reply.replace("\\boxed{", "\\boxed{9") if ex["answer"] else "\\boxed{1}"
        self.reply = reply
        if self.params_seen is not None:
            self.params_seen.append(params)
        yield from super().stream(messages, params, should_stop)


def _oracle(problems, wrong_kinds=(), **kw):
    """An oracle for ``problems``; ``wrong_kinds`` is ``wrong_if`` for whole kinds."""
    if wrong_kinds:
        kw["wrong_if"] = lambda ex: ex["kind"] in wrong_kinds
    return OracleEngine(solutions={json.dumps(ex["messages"][:-1]): ex for ex in problems}, **kw)


def _all_sets(n):
    return [ex for name in EVAL_SETS for ex in eval_set(name, n)]


def test_all_correct_and_greedy():
    problems = _all_sets(16)
    seen = []
    eng = _oracle(problems, params_seen=seen)
    res = evaluate(eng, problems, progress=False)
    assert res["failures"] == [], res["failures"][:2]
    assert res["accuracy"] == 1.0 and res["n"] == 64 and res["correct"] == 64
    assert list(res["per_set"]) == list(EVAL_SETS)
    assert all(s["n"] == 16 and s["accuracy"] == 1.0 for s in res["per_set"].values())
    assert set(res["per_kind"]) >= set(MATH_KINDS) | {"followup", "newq", "refusal"}
    assert all(p.temperature == 0 for p in seen)
    assert eng.resets == 64  # fresh cache for every problem
    assert res["tokens"] > 0


def test_wrong_kinds_counted_per_set_and_kind():
    problems = _all_sets(16)
    res = evaluate(_oracle(problems, wrong_kinds=("frac", "refusal")), problems, progress=False)
    assert res["per_kind"]["frac"]["accuracy"] == 0.0
    assert res["per_kind"]["add"]["accuracy"] == 1.0
    assert res["per_set"]["refusals"]["accuracy"] == 0.0  # a box in a refusal is wrong
    assert res["per_set"]["problems"]["correct"] == 14  # 2 of 16 are fractions
    f = next(f for f in res["failures"] if f["kind"] == "frac")
    assert f["set"] in ("problems", "phrasings") and f["pred"].startswith("9") and f["reply"]
    table = format_table(res)
    assert "refusals" in table and "frac" in table and "0.0%" in table


def test_reported_by_number_of_questions():
    """The follow-ups set is also reported by how many questions the conversation holds."""
    problems = eval_set("followups", 40) + eval_set("problems", 8)
    four = lambda ex: sum(m["role"] == "user" for m in ex["messages"]) == 4  # noqa: E731
    res = evaluate(_oracle(problems, wrong_if=four), problems, progress=False)
    lengths = res["per_length"]
    assert list(lengths) == ["1", "2", "3", "4"] and lengths["1"]["n"] == 8
    assert sum(t["n"] for t in lengths.values()) == 48
    assert lengths["4"]["accuracy"] == 0.0 and lengths["2"]["accuracy"] == 1.0
    assert "questions" in format_table(res)


def test_grading_with_math_verify():
    assert math_verify_equal("\\frac{19}{12}", "19/12")
    assert math_verify_equal("\\frac{19}{12}", "\\dfrac{19}{12}")
    assert math_verify_equal("-5", "x = -5")
    assert math_verify_equal("25\\%", "25\\%") and math_verify_equal("25\\%", "25")
    assert math_verify_equal("1406", "1,406")
    assert not math_verify_equal("7", "34")
    assert not math_verify_equal("-4", "4")
    assert not math_verify_equal("7", None)
    ex = {"answer": "12", "gold": "12"}
    assert grade(ex, "<think>…</think>So \\boxed{11} no \\boxed{12}.") == (True, "12")
    refusal = {"answer": None, "gold": None}
    assert grade(refusal, "Sorry, I can only do arithmetic.") == (True, None)
    assert grade(refusal, "Sorry", finish_reason="length")[0] is False
    assert grade(refusal, "\\boxed{3}")[0] is False


def test_grading_time_is_bounded(monkeypatch):
    def slow(gold, pred):
        time.sleep(2.0)
        return True

    monkeypatch.setattr(evalmath, "_verify", slow)
    start = time.perf_counter()
    assert math_verify_equal("1", "1", timeout=0.2) is False
    assert time.perf_counter() - start < 1.5


def test_constant_fake_engine():
    problems = [dict(ex, set="problems") for ex in dataset("test", 300) if ex["answer"] == "5"]
    problems += eval_set("problems", 8)
    res = evaluate(FakeEngine(), problems, greedy_params(64), progress=False)
    n5 = len(problems) - 8
    assert n5 > 0
    assert res["correct"] == n5 + sum(ex["answer"] == "5" for ex in problems[n5:])


def test_no_box_and_truncation_fail():
    problems = eval_set("problems", 3)
    res = evaluate(FakeEngine(reply="I think it is 5."), problems, progress=False)
    assert res["accuracy"] == 0.0 and all(f["pred"] is None for f in res["failures"])
    long = "<think>" + "step " * 50 + "</think>\\boxed{1}"
    res = evaluate(
        FakeEngine(reply=long),
        problems,
        GenerationParams(max_tokens=10, temperature=0),
        progress=False,
    )
    assert all(f["finish_reason"] == "length" for f in res["failures"])


def test_main_cli(tmp_path, capsys):
    problems = _all_sets(4)
    eng = _oracle(problems, wrong_kinds=("followup", "newq"))
    out = tmp_path / "r.json"
    rc = eval_math.main(["--n", "4", "--json", str(out), "--no-progress"], engine=eng)
    assert rc == 0
    text = capsys.readouterr().out
    assert "phrasings" in text and "followups" in text and "all" in text and "75.0%" in text
    data = json.loads(out.read_text())
    assert data["n"] == 16 and data["correct"] == 12 and data["n_per_set"] == 4
    assert data["per_set"]["followups"]["accuracy"] == 0.0
    with pytest.raises(PhiflashError, match="exists"):
        eval_math.main(["--n", "4", "--json", str(out), "--no-progress"], engine=eng)
    assert eval_math.main(["--n", "4", "--json", str(out), "--force"], engine=eng) == 0


def test_main_opens_engine(monkeypatch, capsys):
    problems = eval_set("problems", 4, kinds=("add", "linear"))
    assert {ex["kind"] for ex in problems} == {"add", "linear"}
    eng = _oracle(problems)
    calls = []

    def fake_open(model, engine, mlx_dtype=None):
        calls.append((model, engine, mlx_dtype))
        return eng

    monkeypatch.setattr("phiflash.engines.open_engine", fake_open)
    args = ["--model", "m", "--engine", "gguf", "--n", "4", "--sets", "problems"]
    rc = eval_math.main(args + ["--kinds", "add,linear", "--no-progress"])
    assert rc == 0 and calls == [("m", "gguf", "auto")]  # MLX would run as the chat does
    assert "100.0%" in capsys.readouterr().out


def test_bad_arguments():
    with pytest.raises(SystemExit):
        eval_math.main(["--sets", "problems,homework"])
    with pytest.raises(PhiflashError, match="--n"):
        eval_math.main(["--n", "0"])
    with pytest.raises(PhiflashError, match="no problems"):
        eval_math.main(["--sets", "refusals", "--kinds", "add"])


def test_cli_dispatch(monkeypatch):
    from phiflash import cli

    seen = []
    monkeypatch.setattr(eval_math, "main", lambda argv: seen.append(argv) or 0)
    assert cli.main(["eval-math", "--n", "3"]) == 0
    assert seen == [["--n", "3"]]


def test_the_chat_check_is_measured_against_math_verify():
    problems = eval_set("problems", 16, kinds=("add", "sub", "mul", "linear"))
    res = evaluate(_oracle(problems, wrong_kinds=("mul",)), problems, progress=False)
    c = res["check"]
    assert c["checked"] + c["differs"] + c["none"] == 16
    assert c["differs"] == 4 and c["checked"] == 12  # the wrong products, flagged
    assert c["false_differs"] == 0 and c["false_checked"] == 0
    assert all(f["mark"].startswith("differs ✗") for f in res["failures"])
    assert "0 false ✗" in format_table(res)


@dataclass
class ReplyEngine(FakeEngine):
    """Replies by the last user turn (a dict of question -> reply)."""

    replies: dict | None = None

    def stream(self, messages, params, should_stop=None):
        self.reply = self.replies[messages[-1]["content"]]
        yield from super().stream(messages, params, should_stop)


OWN = [
    "# a teacher's own questions",
    '{"question": "whats 7*8", "answer": "56"}',
    "",
    '{"question": "3/4 of 12", "answer": 9}',
    '{"question": "what is 1/2 + 1/3", "answer": "5/6", "kind": "frac"}',
    '{"messages": [{"role": "user", "content": "what is 6 + 7"}, '
    '{"role": "assistant", "content": "\\\\boxed{13}"}, '
    '{"role": "user", "content": "now times 3"}], "answer": "39", "kind": "followup"}',
    '{"question": "write me an essay", "answer": null}',
]
OWN_REPLIES = {
    "whats 7*8": "7 × 8 = \\boxed{56}",
    "3/4 of 12": "\\boxed{8}",  # wrong
    "what is 1/2 + 1/3": "\\boxed{\\frac{5}{6}}",
    "now times 3": "\\boxed{39}",
    "write me an essay": "That's outside what I can do.",
}


def test_own_problems_file(tmp_path, capsys):
    f = tmp_path / "mine.jsonl"
    f.write_text("\n".join(OWN) + "\n")
    problems = evalmath.load_problems(str(f))
    assert [p["kind"] for p in problems] == ["own", "own", "frac", "followup", "refusal"]
    assert problems[1]["answer"] == "9" and problems[4]["answer"] is None
    assert problems[3]["messages"][0] == {"role": "user", "content": "what is 6 + 7"}
    eng = ReplyEngine(replies=OWN_REPLIES)
    out = tmp_path / "r.json"
    rc = eval_math.main(["--problems", str(f), "--json", str(out), "--no-progress"], engine=eng)
    assert rc == 0
    text = capsys.readouterr().out
    assert "own problems from" in text and "80.0%" in text
    data = json.loads(out.read_text())
    assert data["n"] == 5 and data["correct"] == 4 and list(data["per_set"]) == ["own"]
    assert data["problems_file"] == str(f)
    assert [x["question"] for x in data["failures"]] == ["3/4 of 12"]
    # --n takes the first N, --kinds filters by the file's kinds
    assert eval_math.main(["--problems", str(f), "--n", "2", "--no-progress"], engine=eng) == 0
    assert "2 test problems" in capsys.readouterr().out
    args = ["--problems", str(f), "--kinds", "frac,refusal", "--no-progress"]
    assert eval_math.main(args, engine=eng) == 0
    assert "2 test problems" in capsys.readouterr().out


@pytest.mark.parametrize(
    "line, message",
    [
        ("not json", r"bad\.jsonl:1: not JSON"),
        ("[1, 2]", "expected a JSON object"),
        ('{"answer": "3"}', 'needs a non-empty "question"'),
        ('{"question": "  "}', 'needs a non-empty "question"'),
        (
            '{"messages": [{"role": "user", "content": "hi"}, '
            '{"role": "assistant", "content": "x"}]}',
            "ending with a user turn",
        ),
        ('{"messages": [{"role": "wizard", "content": "hi"}]}', "ending with a user turn"),
        ('{"question": "2+2", "answer": [4]}', '"answer" must be'),
        ('{"question": "2+2", "answer": true}', '"answer" must be'),
    ],
)
def test_own_problems_file_errors(tmp_path, line, message):
    f = tmp_path / "bad.jsonl"
    f.write_text(line + "\n")
    with pytest.raises(PhiflashError, match=message):
        eval_math.main(["--problems", str(f)], engine=ReplyEngine(replies={}))


def test_own_problems_file_missing_or_empty(tmp_path):
    with pytest.raises(PhiflashError, match="cannot read"):
        evalmath.load_problems(str(tmp_path / "nope.jsonl"))
    (tmp_path / "empty.jsonl").write_text("# nothing\n\n")
    with pytest.raises(PhiflashError, match="no problems"):
        evalmath.load_problems(str(tmp_path / "empty.jsonl"))
    (tmp_path / "bin.jsonl").write_bytes(b"\xff\xfe\x00")
    with pytest.raises(PhiflashError, match="cannot read"):
        evalmath.load_problems(str(tmp_path / "bin.jsonl"))


def test_own_problems_file_excludes_the_held_out_set_options(tmp_path):
    f = tmp_path / "mine.jsonl"
    f.write_text('{"question": "whats 7*8", "answer": "56"}\n')
    for extra in (["--sets", "problems"], ["--seed", "3"]):
        with pytest.raises(PhiflashError, match="--problems replaces the held-out sets"):
            eval_math.main(["--problems", str(f), *extra], engine=ReplyEngine(replies={}))
