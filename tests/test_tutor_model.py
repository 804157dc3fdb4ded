"""The bundled tutor model (weights/phiflash-tutor) solves fixed held-out problems, greedily."""

import json

import pytest

from phiflash.paths import DEFAULT_MODEL_DIR
from phiflash.tutor.data import eval_set, prompt_messages, split_of
from phiflash.tutor.evalmath import grade, greedy_params, solve

# Indices into eval_set("phrasings", 40), held-out problems asked in templates never trained on
# (the start of what eval-math uses): one of several kinds that the committed model solves
# greedily. It does not solve all of these (see its model card), so the items pin its
# behaviour through each engine rather than its accuracy.
FIXED = (8, 17, 26, 12, 14, 15)  # add, sub, mul, frac (3/4 of), percent, word problem
REFUSAL = 1  # eval_set("refusals", 20)[1]: "Can you explain the moon?"
# Requests that come after earlier questions of the same conversation (stage 13 on): "good
# morning" after two math questions, a story request after a follow-up chain.
REFUSAL_LATER = (4, 13)


@pytest.fixture(scope="module")
def mlx_engine():
    from phiflash.engines import open_engine

    return open_engine(None, "mlx")


def test_bundled_model_is_real_layout_and_small():
    cfg = json.loads((DEFAULT_MODEL_DIR / "config.json").read_text())
    assert cfg["model_type"] == "phi4flash"
    assert cfg["architectures"] == ["Phi4FlashForCausalLM"]
    total = sum(p.stat().st_size for p in DEFAULT_MODEL_DIR.iterdir() if p.is_file())
    assert total <= 20 * 10**6
    for name in ("tokenizer.json", "tokenizer_config.json", "generation_config.json"):
        assert (DEFAULT_MODEL_DIR / name).is_file()


@pytest.mark.parametrize("index", FIXED)
def test_mlx_engine_solves_fixed_heldout_problems(mlx_engine, index):
    ex = eval_set("phrasings", 40)[index]
    assert split_of(ex["key"]) == "test"
    out = solve(mlx_engine, prompt_messages(ex), greedy_params(384))
    assert out["finish_reason"] == "stop", out
    assert "<think>" in out["reply"] and "</think>" in out["reply"]
    ok, pred = grade(ex, out["reply"], out["finish_reason"])
    assert ok, (ex["question"], ex["answer"], out["reply"])


def check_refuses(engine, index: int, later: bool) -> None:
    """eval_set("refusals", 20)[index] is refused, saying what the tutor can do; ``later``: the
    request comes after earlier questions of the conversation."""
    ex = eval_set("refusals", 20)[index]
    assert (sum(m["role"] == "user" for m in ex["messages"]) > 1) == later
    out = solve(engine, prompt_messages(ex), greedy_params(384))
    assert grade(ex, out["reply"], out["finish_reason"])[0], out
    assert "arithmetic" in out["reply"]  # it says what it can do


def test_mlx_engine_refuses_out_of_scope(mlx_engine):
    check_refuses(mlx_engine, REFUSAL, later=False)


@pytest.mark.parametrize("index", REFUSAL_LATER)
def test_mlx_engine_refuses_out_of_scope_mid_conversation(mlx_engine, index):
    check_refuses(mlx_engine, index, later=True)


@pytest.fixture(scope="module")
def gguf_engine(tmp_path_factory):
    from phiflash.engines import open_engine
    from phiflash.quantize.gguf_convert import convert

    out = tmp_path_factory.mktemp("tutor-gguf") / "tutor-q8_0.gguf"
    convert(DEFAULT_MODEL_DIR, out, "q8_0", progress=False)
    return open_engine(str(out))


@pytest.mark.parametrize("index", FIXED)
def test_gguf_engine_solves_fixed_heldout_problems(gguf_engine, index):
    ex = eval_set("phrasings", 40)[index]
    out = solve(gguf_engine, prompt_messages(ex), greedy_params(384))
    assert out["finish_reason"] == "stop", out
    ok, pred = grade(ex, out["reply"], out["finish_reason"])
    assert ok, (ex["question"], ex["answer"], out["reply"])


@pytest.mark.parametrize("index", REFUSAL_LATER)
def test_gguf_engine_refuses_out_of_scope_mid_conversation(gguf_engine, index):
    check_refuses(gguf_engine, index, later=True)
