"""Loading errors, the tokenizer, generation API and `phiflash generate`."""

import importlib
import json
import shutil
import subprocess
import sys

import mlx.core as mx
import pytest
from conftest import TINY

from phiflash.errors import ModelLoadError, WrongArchitectureError
from phiflash_mlx import load


def copy_tiny(tmp_path):
    dst = tmp_path / "m"
    shutil.copytree(TINY, dst)
    return dst


def cli(*args, stdin=None):
    return subprocess.run(
        [sys.executable, "-m", "phiflash.cli", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_missing_dir():
    with pytest.raises(ModelLoadError, match="not found"):
        load("/nonexistent/model/dir")


def test_no_safetensors(tmp_path):
    d = copy_tiny(tmp_path)
    (d / "model.safetensors").unlink()
    with pytest.raises(ModelLoadError, match="no .safetensors"):
        load(d)


def test_truncated_safetensors(tmp_path):
    d = copy_tiny(tmp_path)
    f = d / "model.safetensors"
    f.write_bytes(f.read_bytes()[:-1000])
    with pytest.raises(ModelLoadError, match="truncated"):
        load(d)


def test_corrupt_safetensors(tmp_path):
    d = copy_tiny(tmp_path)
    (d / "model.safetensors").write_bytes(b"\xff" * 64)
    with pytest.raises(ModelLoadError, match="corrupt"):
        load(d)


def _rewrite(d, fn):
    w = mx.load(str(d / "model.safetensors"))
    fn(w)
    mx.save_safetensors(str(d / "model.safetensors"), w)


def test_missing_and_extra_and_misshapen_tensor(tmp_path):
    d = copy_tiny(tmp_path)
    _rewrite(d, lambda w: w.pop("model.layers.3.attn.Wqkv.bias"))
    with pytest.raises(ModelLoadError, match="missing tensors: model.layers.3.attn.Wqkv.bias"):
        load(d)
    d = copy_tiny(tmp_path / "b")
    _rewrite(d, lambda w: w.__setitem__("model.layers.0.attn.extra", mx.zeros((2,))))
    with pytest.raises(ModelLoadError, match="unexpected tensors"):
        load(d)
    d = copy_tiny(tmp_path / "c")
    _rewrite(d, lambda w: w.__setitem__("model.layers.0.attn.D", mx.zeros((7,))))
    with pytest.raises(ModelLoadError, match=r"model.layers.0.attn.D has shape \(7,\)"):
        load(d)


def test_sharded_checkpoint_with_index(tmp_path):
    d = copy_tiny(tmp_path)
    w = mx.load(str(d / "model.safetensors"))
    (d / "model.safetensors").unlink()
    names = sorted(w)
    half = len(names) // 2
    shards = {
        "model-00001-of-00002.safetensors": names[:half],
        "model-00002-of-00002.safetensors": names[half:],
    }
    weight_map = {}
    for fname, keys in shards.items():
        mx.save_safetensors(str(d / fname), {k: w[k] for k in keys})
        weight_map.update({k: fname for k in keys})
    (d / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    model, _ = load(d)
    assert model.model.layers[5].attn.Wqkv.weight.shape == (256, 128)


def test_wrong_architecture(tmp_path):
    d = copy_tiny(tmp_path)
    cfg = json.loads((d / "config.json").read_text())
    cfg.update(model_type="llama", architectures=["LlamaForCausalLM"])
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(WrongArchitectureError, match="'llama' model, not phi4flash"):
        load(d)


def test_missing_tokenizer(tmp_path):
    d = copy_tiny(tmp_path)
    (d / "tokenizer.json").unlink()
    with pytest.raises(ModelLoadError, match="no tokenizer"):
        load(d)


def test_tokenizer_and_chat_template(tiny_bf16, golden):
    _, tok = tiny_bf16
    messages = json.loads(str(golden["prompt_messages"]))
    text = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert text == str(golden["prompt_text"])
    assert tok.encode(text, add_special_tokens=False) == golden["prompt_ids"].tolist()
    assert set(tok.eos_token_ids) == {1003, 1000}  # <|end|>, <|endoftext|>


def test_generate_api_greedy(tiny_bf16, golden):
    from phiflash_mlx import generate

    model, tok = tiny_bf16
    text = generate(model, tok, golden["prompt_ids"].tolist(), max_tokens=16, temp=0.0)
    assert text == tok.decode(golden["greedy_ids"].tolist())


def test_context_too_long(tiny_bf16):
    from phiflash.errors import ContextLengthError
    from phiflash_mlx import stream_generate

    model, tok = tiny_bf16
    with pytest.raises(ContextLengthError, match="context of 4096"):
        next(stream_generate(model, tok, [1] * 4000, max_tokens=200))


def test_cli_greedy_equals_golden_continuation(golden):
    from phiflash_mlx import load as _load

    messages = json.loads(str(golden["prompt_messages"]))
    r = cli(
        "generate",
        "--model",
        str(TINY),
        "--system-prompt",
        messages[0]["content"],
        "--prompt",
        "-",
        "--temp",
        "0",
        "--max-tokens",
        "16",
        "--verbose",
        "False",
        stdin=messages[1]["content"],
    )
    assert r.returncode == 0, r.stderr
    _, tok = _load(TINY)
    assert r.stdout == tok.decode(golden["greedy_ids"].tolist()) + "\n"


def test_cli_verbose_prints_stats():
    r = cli(
        "generate", "--model", str(TINY), "--prompt", "hello", "--max-tokens", "5", "--seed", "1"
    )
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0] == "=" * 10
    assert any(line.startswith("Prompt: ") and "tokens-per-sec" in line for line in lines)
    assert any(line.startswith("Generation: 5 tokens") for line in lines)
    assert any(line.startswith("Peak memory: ") for line in lines)


@pytest.mark.parametrize(
    "args,needle",
    [
        (["--model", "/nonexistent/dir"], "model not found"),
        (["--model", "tests/fixtures/real-config"], "no .safetensors"),
        (["--max-tokens", "0", "--model", str(TINY)], "--max-tokens must be positive"),
    ],
)
def test_cli_bad_input_one_line(args, needle):
    r = cli("generate", *args)
    assert r.returncode != 0
    assert needle in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    assert "Traceback" not in r.stderr


def test_cli_bad_flag_is_refused():
    r = cli("generate", "--temp", "hot")
    assert r.returncode == 2 and "invalid float value" in r.stderr


def test_module_entry_point():
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "phiflash.commands.generate",
            "--model",
            str(TINY),
            "--prompt",
            "hi",
            "--max-tokens",
            "3",
            "--verbose",
            "False",
            "--temp",
            "0",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() != ""


def _edit_config(d, **changes):
    cfg = json.loads((d / "config.json").read_text())
    for k, v in changes.items():
        if v is None:
            cfg.pop(k, None)
        else:
            cfg[k] = v
    (d / "config.json").write_text(json.dumps(cfg))


def test_model_type_and_architectures_must_agree(tmp_path):
    """One rule for every command (phiflash.checkpoint): model_type phi4flash AND, if given,
    architectures naming Phi4FlashForCausalLM."""
    d = copy_tiny(tmp_path)
    _edit_config(d, model_type="llama")
    with pytest.raises(WrongArchitectureError, match="model_type 'llama' but architectures"):
        load(d)
    _edit_config(d, model_type="phi4flash", architectures=["LlamaForCausalLM"])
    with pytest.raises(WrongArchitectureError, match="'LlamaForCausalLM' model, not phi4flash"):
        load(d)
    _edit_config(d, architectures=None)  # no architectures field: model_type decides
    model, _ = load(d)
    assert model.model_type == "phi4flash"


@pytest.mark.parametrize(
    "changes,needle",
    [
        ({"hidden_size": None}, "incomplete: no 'hidden_size'"),
        ({"vocab_size": None, "num_hidden_layers": None}, "no 'vocab_size', 'num_hidden_layers'"),
        ({"hidden_size": "128"}, "hidden_size must be a positive integer, not '128'"),
        ({"num_attention_heads": 0}, "num_attention_heads must be a positive integer"),
    ],
)
def test_incomplete_or_bad_config(tmp_path, changes, needle):
    d = copy_tiny(tmp_path)
    _edit_config(d, **changes)
    with pytest.raises(ModelLoadError, match=needle) as e:
        load(d)
    assert "\n" not in str(e.value)


def test_tensor_stored_in_two_shards(tmp_path):
    d = copy_tiny(tmp_path)
    w = mx.load(str(d / "model.safetensors"))
    (d / "model.safetensors").unlink()
    mx.save_safetensors(str(d / "model-00001-of-00002.safetensors"), w)
    dup = {"model.layers.0.attn.D": w["model.layers.0.attn.D"]}
    mx.save_safetensors(str(d / "model-00002-of-00002.safetensors"), dup)
    with pytest.raises(ModelLoadError, match="model.layers.0.attn.D is stored twice"):
        load(d)


def test_auto_dtype_runs_a_small_16_bit_checkpoint_in_float32_on_the_cpu(monkeypatch):
    """The chat's and eval-math's choice (``dtype="auto"``): MLX's CPU bf16 matmuls are ~20x
    slower than float32's, so a small unquantized bf16 checkpoint is computed in float32 there;
    the other commands (kept equal to stock mlx-lm's), explicit dtypes, quantized checkpoints,
    big checkpoints and GPUs keep what they ask for."""
    from phiflash.engines import open_engine
    from phiflash_mlx.engine import MLXEngine

    load_mod = importlib.import_module("phiflash_mlx.load")  # (the package exports load())
    load_model, load_weights = load_mod.load_model, load_mod.load_weights

    dtype_of = lambda m: m.model.embed_tokens.weight.dtype  # noqa: E731
    assert mx.default_device() == mx.cpu
    assert dtype_of(load_model(TINY, dtype="auto")[0]) == mx.float32
    assert dtype_of(load_model(TINY)[0]) == mx.bfloat16  # None keeps the stored dtypes
    with pytest.raises(ValueError, match="'float32'"):  # a dtype's name is not a dtype
        load_model(TINY, dtype="float32")
    assert MLXEngine(str(TINY)).quantization == "bf16"
    assert MLXEngine(str(TINY), dtype="auto").quantization == "fp32"
    assert open_engine(str(TINY), mlx_dtype="auto").quantization == "fp32"
    assert open_engine(str(TINY)).quantization == "bf16"

    config = json.loads((TINY / "config.json").read_text())
    weights = load_weights(TINY)
    assert load_mod.auto_dtype(config, weights) == mx.float32
    quantized = {**config, "quantization": {"bits": 4, "group_size": 64}}
    assert load_mod.auto_dtype(quantized, weights) is None
    monkeypatch.setattr(load_mod, "CPU_FLOAT32_MAX_BYTES", 1000)
    assert load_mod.auto_dtype(config, weights) is None
    monkeypatch.undo()
    as_f32 = {k: v.astype(mx.float32) for k, v in weights.items()}
    assert load_mod.auto_dtype(config, as_f32) is None  # nothing 16-bit to widen
    monkeypatch.setattr(mx, "default_device", lambda: mx.Device(mx.gpu))  # as MLX returns it
    assert load_mod.auto_dtype(config, weights) is None
