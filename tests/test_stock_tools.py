"""Stock mlx-lm and transformers on the dirs `phiflash convert` writes: the same tokens, the same
generated text, and float32 kept for A_log, D, the lambdas and dt bias by `mlx_lm.convert`."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import mlx.core as mx
import pytest
from conftest import TINY

from phiflash.paths import DEFAULT_MODEL_DIR
from phiflash.quantize import convert as conv
from phiflash_mlx.load import load_tokenizer
from phiflash_mlx.model import keeps_fp32

ROOT = Path(__file__).parent.parent
ENV = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TRANSFORMERS_VERBOSITY="error")
PHIFLASH = Path(sys.executable).with_name("phiflash")
CMD = [str(PHIFLASH)] if PHIFLASH.is_file() else [sys.executable, "-m", "phiflash.cli"]

# think tags, a leading minus, newlines after punctuation, numbers with commas, CRLF, spaces
TRICKY = [
    "<think>\nLet me see.</think>",
    "<think>x</think>\\boxed{-2}",
    "-x + 6 = -3x + 2",
    "x.\ny",
    "Done.\n\nNext:\nok!\n",
    "1,234,567 and 12,000.50",
    "What is 3,000+4?\n\nSolve: -x = 2.",
    "  two leading spaces, trailing  ",
    "a\r\nb\tc",
    "<|user|>hi<|end|><|assistant|>",
]
PROMPTS = [
    "Solve for x: -x + 6 = -3x + 2.",
    "What is 1,250 + 3,750?",
    "Simplify 12/18.",
    "Compute 7 * 8 - 5.",
]


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    root = tmp_path_factory.mktemp("stock")
    return {
        "fixture": Path(conv.convert(TINY, root / "fixture", progress=False)["path"]),
        "tutor": Path(conv.convert(DEFAULT_MODEL_DIR, root / "tutor", progress=False)["path"]),
    }


def stock_tokenizer(path):
    from mlx_lm.utils import load_tokenizer as mlx_lm_load_tokenizer

    return mlx_lm_load_tokenizer(Path(path))


def assert_same_tokens(stock, ours):
    for s in TRICKY:
        ids = ours.encode(s, add_special_tokens=False)
        assert stock.encode(s, add_special_tokens=False) == ids, s
        assert stock.decode(ids) == ours.decode(ids) == s, s


@pytest.mark.parametrize("which", ["fixture", "tutor"])
def test_stock_mlx_lm_tokenizer_equals_ours(converted, which):
    d = converted[which]
    stock, ours = stock_tokenizer(d), load_tokenizer(d)
    assert_same_tokens(stock, ours)
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": TRICKY[2]}]
    kw = {"add_generation_prompt": True, "tokenize": False}
    assert stock.apply_chat_template(msgs, **kw) == ours.apply_chat_template(msgs, **kw)
    # stock mlx_lm.load takes the stop tokens from generation_config.json, as we do
    from mlx_lm.utils import load as mlx_lm_load

    _, loaded = mlx_lm_load(str(d), trust_remote_code=True)
    assert set(loaded.eos_token_ids) == set(ours.eos_token_ids) and len(ours.eos_token_ids) == 2
    assert_same_tokens(loaded, ours)


@pytest.mark.parametrize("which", ["fixture", "tutor"])
def test_transformers_autotokenizer_equals_ours(converted, which):
    from transformers import AutoTokenizer

    d = converted[which]
    assert_same_tokens(AutoTokenizer.from_pretrained(str(d)), load_tokenizer(d))


def test_gpt2_tokenizer_class_is_what_made_them_differ(converted, tmp_path):
    """The source checkpoints' "GPT2Tokenizer" made transformers 5 ignore tokenizer.json's
    pre-tokenizer; the converted dirs say PreTrainedTokenizerFast, which reads it."""
    d = tmp_path / "gpt2"
    shutil.copytree(converted["tutor"], d)
    cfg_file = d / "tokenizer_config.json"
    cfg = json.loads(cfg_file.read_text())
    assert cfg["tokenizer_class"] == "PreTrainedTokenizerFast"
    cfg["tokenizer_class"] = "GPT2Tokenizer"
    cfg_file.write_text(json.dumps(cfg))
    stock, ours = stock_tokenizer(d), load_tokenizer(d)
    differ = [s for s in TRICKY if stock.encode(s) != ours.encode(s)]
    assert "-x + 6 = -3x + 2" in differ and "x.\ny" in differ


@pytest.mark.parametrize("src", [TINY, DEFAULT_MODEL_DIR], ids=["fixture", "tutor"])
def test_bundled_dirs_tokenize_as_their_tokenizer_json(src):
    """Our loader reads tokenizer.json as the tokenizers library does, whatever the config."""
    from tokenizers import Tokenizer

    raw = Tokenizer.from_file(str(src / "tokenizer.json"))
    cfg = json.loads((src / "tokenizer_config.json").read_text())
    assert cfg["tokenizer_class"] == "PreTrainedTokenizerFast"
    ours = load_tokenizer(src)
    for s in TRICKY:
        assert ours.encode(s, add_special_tokens=False) == raw.encode(s).ids, s


def _run(cmd, timeout=300):
    r = subprocess.run(
        cmd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=ENV,
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    return r.stdout


@pytest.mark.parametrize("prompt", PROMPTS)
def test_stock_mlx_lm_generate_text_equals_phiflash_generate(converted, prompt):
    d = converted["tutor"]
    common = ["--model", str(d), "--temp", "0", "--max-tokens", "160", "--verbose", "False"]
    stock = _run([sys.executable, "-m", "mlx_lm", "generate", "--trust-remote-code", *common,
                  "--prompt", prompt])  # fmt: skip
    ours = _run([*CMD, "generate", *common, "--prompt", prompt])
    assert stock.strip() and stock == ours


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_stock_mlx_lm_convert_keeps_fp32_and_the_tokenizer(converted, tmp_path, dtype):
    src = converted["fixture"]
    out = tmp_path / "stock"
    _run([sys.executable, "-m", "mlx_lm", "convert", "--hf-path", str(src), "--mlx-path",
          str(out), "--dtype", dtype, "--trust-remote-code"])  # fmt: skip
    stock_w = mx.load(str(out / "model.safetensors"))
    kept = sorted(k for k in stock_w if keeps_fp32(k))
    for name in ("A_log", "D", "dt_proj.bias", "lambda_q1", "lambda_k2"):
        assert any(k.endswith(name) for k in kept), name
    for k, v in stock_w.items():
        assert v.dtype == (mx.float32 if keeps_fp32(k) else getattr(mx, dtype)), k
    # the same weights as our own converter gives for that dtype
    ours = Path(conv.convert(TINY, tmp_path / "ours", dtype=dtype, progress=False)["path"])
    ours_w = mx.load(str(ours / "model.safetensors"))
    assert set(ours_w) == set(stock_w)
    assert all(mx.array_equal(ours_w[k], stock_w[k]) for k in ours_w)
    # the tokenizer mlx_lm.convert re-saved still tokenizes as ours on the source
    assert_same_tokens(stock_tokenizer(out), load_tokenizer(src))
    assert_same_tokens(load_tokenizer(out), load_tokenizer(src))
