import json
from dataclasses import dataclass

import pytest

from phiflash.commands import eval_math
from phiflash.engine import FakeEngine, GenerationParams
from phiflash.tutor.data import KINDS, dataset
from phiflash.tutor.evalmath import evaluate, format_table, greedy_params


@dataclass
class OracleEngine(FakeEngine):
    """Replies with the generated solution (optionally wrong for some kinds)."""

    solutions: dict | None = None
    wrong_kinds: tuple = ()
    params_seen: list | None = None

    def stream(self, messages, params, should_stop=None):
        ex = self.solutions[messages[-1]["content"]]
        reply = ex["messages"][-1]["content"]
        if ex["kind"] in self.wrong_kinds:
            reply = reply.replace("\\boxed{", "\\boxed{9")
        self.reply = reply
        if self.params_seen is not None:
            self.params_seen.append(params)
        yield from super().stream(messages, params, should_stop)


def _oracle(problems, **kw):
    return OracleEngine(solutions={ex["messages"][-2]["content"]: ex for ex in problems}, **kw)


def test_all_correct_and_greedy():
    problems = dataset("test", 60)
    seen = []
    eng = _oracle(problems, params_seen=seen)
    res = evaluate(eng, problems, progress=False)
    assert res["accuracy"] == 1.0 and res["n"] == 60 and res["correct"] == 60
    assert res["failures"] == []
    assert list(res["per_kind"]) == list(KINDS)
    assert all(k["n"] == 10 and k["accuracy"] == 1.0 for k in res["per_kind"].values())
    assert all(p.temperature == 0 for p in seen)
    assert eng.resets == 60  # fresh cache for every problem
    assert res["tokens"] > 0


def test_wrong_kinds_counted_per_kind():
    problems = dataset("test", 60)
    res = evaluate(_oracle(problems, wrong_kinds=("frac", "percent")), problems, progress=False)
    assert res["accuracy"] == pytest.approx(40 / 60)
    assert res["per_kind"]["frac"]["accuracy"] == 0.0
    assert res["per_kind"]["add"]["accuracy"] == 1.0
    assert len(res["failures"]) == 20
    f = res["failures"][0]
    assert f["kind"] in ("frac", "percent") and f["pred"].startswith("9") and f["reply"]
    table = format_table(res)
    assert "frac" in table and "66.7%" in table


def test_constant_fake_engine():
    problems = [ex for ex in dataset("test", 200) if ex["answer"] == "5"]
    problems += dataset("test", 6)
    res = evaluate(FakeEngine(), problems, greedy_params(64), progress=False)
    n5 = len(problems) - 6
    assert res["correct"] == n5 + sum(ex["answer"] == "5" for ex in problems[n5:])


def test_no_box_and_truncation_fail():
    problems = dataset("test", 3)
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


def test_main_cli(tmp_path, capsys, monkeypatch):
    problems = dataset("test", 12)
    eng = _oracle(problems, wrong_kinds=("mul",))
    out = tmp_path / "r.json"
    rc = eval_math.main(["--n", "12", "--json", str(out), "--no-progress"], engine=eng)
    assert rc == 0
    text = capsys.readouterr().out
    assert "linear" in text and "all" in text and "83.3%" in text
    data = json.loads(out.read_text())
    assert data["n"] == 12 and data["correct"] == 10 and data["split"] == "test"
    assert data["per_kind"]["mul"]["accuracy"] == 0.0


def test_main_opens_engine(monkeypatch, capsys):
    problems = dataset("test", 4, kinds=("add", "linear"))
    eng = _oracle(problems)
    calls = []

    def fake_open(model, engine):
        calls.append((model, engine))
        return eng

    monkeypatch.setattr("phiflash.engines.open_engine", fake_open)
    rc = eval_math.main(
        ["--model", "m", "--engine", "gguf", "--n", "4", "--kinds", "add,linear", "--no-progress"]
    )
    assert rc == 0 and calls == [("m", "gguf")]
    assert "100.0%" in capsys.readouterr().out


def test_cli_dispatch(monkeypatch):
    from phiflash import cli

    seen = []
    monkeypatch.setattr(eval_math, "main", lambda argv: seen.append(argv) or 0)
    assert cli.main(["eval-math", "--n", "3"]) == 0
    assert seen == [["--n", "3"]]
