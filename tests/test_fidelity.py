"""`phiflash eval-quant`: the metrics, the CLI, MLX and GGUF models."""

import json

import numpy as np
import pytest
from conftest import TINY

from phiflash.cli import main as cli_main
from phiflash.quantize import convert as conv
from phiflash.quantize import fidelity


@pytest.fixture(scope="module")
def q8(tmp_path_factory):
    out = tmp_path_factory.mktemp("fid") / "q8"
    conv.convert(TINY, out, quantize=True, q_bits=8, progress=False)
    return out


def test_metrics_on_known_distributions():
    rng = np.random.default_rng(0)
    ref = rng.normal(size=(50, 32)).astype(np.float32)
    tokens = rng.integers(0, 32, size=50).tolist()
    same = fidelity.compare_logits(ref, ref.copy(), tokens)
    assert same["kl_mean"] == pytest.approx(0, abs=1e-12) and same["top1_agreement"] == 1.0
    assert same["ppl_model"] == pytest.approx(same["ppl_reference"])
    # uniform model: KL = log V - H(ref) per position, perplexity = V
    uni = fidelity.compare_logits(ref, np.zeros_like(ref), tokens)
    lp = ref - np.log(np.exp(ref).sum(-1, keepdims=True))
    expected = (np.exp(lp) * (lp + np.log(32))).sum(-1)
    assert uni["kl_mean"] == pytest.approx(expected.mean(), rel=1e-6)
    assert uni["kl_p99"] == pytest.approx(np.percentile(expected, 99), rel=1e-6)
    assert uni["ppl_model"] == pytest.approx(32, rel=1e-6)
    nll = -lp[np.arange(49), tokens[1:]].mean()
    assert same["ppl_reference"] == pytest.approx(np.exp(nll), rel=1e-6)
    # a padded vocabulary (GGUF may differ) is compared on the common rows
    wide = np.concatenate([ref, np.full((50, 4), -1e9, np.float32)], axis=1)
    assert fidelity.compare_logits(ref, wide, tokens)["kl_mean"] < 1e-9


def test_evaluate_self_is_exact_and_q8_is_close(q8):
    same = fidelity.evaluate(TINY, TINY, max_tokens=64)
    assert same["kl_mean"] == 0.0 and same["top1_agreement"] == 1.0
    r = fidelity.evaluate(TINY, q8, max_tokens=64)
    assert r["positions"] == 64 and 0 < r["kl_mean"] < 0.2 and r["top1_agreement"] > 0.7


def test_cli_text_file_and_json(q8, tmp_path, golden, capsys):
    text = tmp_path / "t.txt"
    text.write_text(str(golden["prompt_text"]))
    args = ["eval-quant", "--reference", str(TINY), "--model", str(q8), "--text", str(text)]
    assert cli_main(args + ["--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["positions"] == 103 and set(r) >= {"kl_mean", "kl_p99", "top1_agreement"}
    report = fidelity.format_report(r)
    for label in ("KL mean:", "KL p99:", "top-1 agreement:", "perplexity:", "positions:  "):
        assert label in report


def test_gguf_model_through_eval_quant(tmp_path, capsys):
    from phiflash.quantize.gguf_convert import convert

    g = convert(TINY, tmp_path / "tiny-f32.gguf", "f32", progress=False)
    args = ["eval-quant", "--reference", str(TINY), "--model", str(g), "--float32", "--json"]
    code = cli_main(args)
    r = json.loads(capsys.readouterr().out)
    # the same float32 weights through llama.cpp (F16 KV cache) and through MLX
    assert code == 0 and r["positions"] > 50
    assert r["kl_mean"] < 1e-4 and r["top1_agreement"] >= 0.95


def test_bad_paths(tmp_path, capsys):
    code = cli_main(["eval-quant", "--reference", str(TINY), "--model", str(tmp_path / "x")])
    assert code == 1 and "not found" in capsys.readouterr().err
    code = cli_main(
        ["eval-quant", "--reference", str(TINY), "--model", str(TINY), "--text", "/nope"]
    )
    assert code == 1 and "cannot read --text" in capsys.readouterr().err
