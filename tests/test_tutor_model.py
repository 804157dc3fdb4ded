"""The bundled tutor model (weights/phiflash-tutor) solves fixed held-out problems, greedily."""

import json

import pytest

from phiflash.evalmath import greedy_params, solve
from phiflash.mathcheck import answers_equal, extract_boxed
from phiflash.paths import DEFAULT_MODEL_DIR
from phiflash.tutor_data import dataset, prompt_messages, split_of

# Indices into dataset("test", 60): the fixed held-out set eval-math uses (its first 60).
FIXED = (0, 1, 2, 3, 4, 5)

pytestmark = pytest.mark.skipif(
    not (DEFAULT_MODEL_DIR / "model.safetensors").is_file(),
    reason="bundled model weights are missing",
)


@pytest.fixture(scope="module")
def mlx_engine():
    from phiflash.engine import open_engine

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
    ex = dataset("test", 60)[index]
    assert split_of(ex["key"]) == "test"
    out = solve(mlx_engine, prompt_messages(ex), greedy_params(384))
    assert out["finish_reason"] == "stop", out
    assert "<think>" in out["reply"] and "</think>" in out["reply"]
    pred = extract_boxed(out["reply"])
    assert answers_equal(pred, ex["answer"]), (ex["question"], ex["answer"], out["reply"])
