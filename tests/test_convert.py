"""`phiflash convert` on the sambay-tiny fixture: layout, round trip, fidelity, stock mlx-lm."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest
from conftest import TINY

from phiflash.cli import main as cli_main
from phiflash.quantize import convert as conv
from phiflash.quantize.fidelity import compare_logits
from phiflash_mlx.load import load_model
from phiflash_mlx.model import keeps_fp32

NEVER_QUANTIZED = ("A_log", "D", "conv1d.weight", "conv1d.bias", "dt_proj.bias", "lambda_q1")


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    root = tmp_path_factory.mktemp("conv")
    out = {}
    for name, kw in {
        "bf16": {},
        "q8": {"quantize": True, "q_bits": 8},
        "q4": {"quantize": True, "q_bits": 4},
        "q4g32": {"quantize": True, "q_bits": 4, "q_group_size": 32},
        "mix": {"quant_recipe": "sambay_mixed_4_8"},
    }.items():
        out[name] = conv.convert(TINY, root / name, progress=False, **kw)
    return {k: Path(v["path"]) for k, v in out.items()} | {"_info": out, "_root": root}


def logits(path, tokens, dtype=None):
    model, _ = load_model(path, dtype=dtype)
    return np.array(model(mx.array(tokens)[None])[0].astype(mx.float32))


def no_leftovers(parent: Path):
    return not [p for p in parent.iterdir() if "phiflash-tmp" in p.name]


def test_bf16_conversion_reproduces_hf_logits_exactly(converted, golden):
    ids = golden["prompt_ids"].tolist()
    assert np.array_equal(logits(TINY, ids), logits(converted["bf16"], ids))
    src = mx.load(str(TINY / "model.safetensors"))
    out = mx.load(str(converted["bf16"] / "model.safetensors"))
    assert set(out) == set(src)
    for k, v in src.items():
        # sanitize() stores A_log, D, the lambdas and dt bias in float32 (exact upcasts)
        assert out[k].dtype == (mx.float32 if keeps_fp32(k) else v.dtype), k
        assert mx.array_equal(out[k], v.astype(out[k].dtype)), k


def test_layout_is_mlx_lms(converted):
    d = converted["mix"]
    for f in ("model.safetensors", "model.safetensors.index.json", "config.json", "model.py"):
        assert (d / f).is_file(), f
    for f in ("tokenizer.json", "tokenizer_config.json", "generation_config.json"):
        assert (d / f).read_bytes() == (TINY / f).read_bytes()
    src_model = Path(conv.__file__).parent.parent / "phiflash_mlx" / "model.py"
    assert (d / "model.py").read_text() == src_model.read_text()
    cfg = json.loads((d / "config.json").read_text())
    assert list(cfg) == sorted(cfg)
    assert cfg["model_file"] == "model.py" and "auto_map" not in cfg
    q = cfg["quantization"]
    assert q == cfg["quantization_config"]
    assert (q["bits"], q["group_size"], q["mode"]) == (4, 64, "affine")
    assert q["model.layers.0.attn.x_proj"]["bits"] == 8
    assert q["model.layers.1.attn.Wqkv"]["bits"] == 8
    assert q["model.embed_tokens"]["bits"] == 8
    assert "model.layers.0.mlp.fc1" not in q  # 4-bit = the default
    index = json.loads((d / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"]) == set(mx.load(str(d / "model.safetensors")))
    info = converted["_info"]
    assert info["q4"]["size_bytes"] < info["mix"]["size_bytes"] < info["q8"]["size_bytes"]
    assert 4.5 < info["q4"]["bits_per_weight"] < info["q8"]["bits_per_weight"] < 9.5


def test_only_linear_weights_and_embedding_are_quantized(converted):
    src = mx.load(str(TINY / "model.safetensors"))
    for name in ("q4", "mix"):
        w = mx.load(str(converted[name] / "model.safetensors"))
        packed = {k[: -len(".scales")] for k in w if k.endswith(".scales")}
        for p in packed:
            assert p.endswith(("proj", "Wqkv", "fc1", "fc2", "embed_tokens")), p
            assert w[p + ".weight"].dtype == mx.uint32
        assert "model.embed_tokens" in packed and "model.layers.4.attn.in_proj" in packed
        for k, v in src.items():
            if k.endswith(NEVER_QUANTIZED) or "norm" in k or "subln" in k or "lambda" in k:
                assert mx.array_equal(w[k], v.astype(w[k].dtype)), k
                assert k.rsplit(".", 1)[0] not in packed, k
    w = mx.load(str(converted["q4"] / "model.safetensors"))
    assert w["model.layers.0.attn.A_log"].dtype == mx.float32


def test_quantization_error_within_half_a_step(converted):
    model, _ = load_model(converted["q4"])
    src = mx.load(str(TINY / "model.safetensors"))
    m = model.model.layers[1].mlp.fc1
    deq = mx.dequantize(m.weight, m.scales, m.biases, m.group_size, m.bits)
    err = mx.abs(deq - src["model.layers.1.mlp.fc1.weight"]).reshape(-1, 64)
    step = mx.repeat(m.scales.reshape(-1, 1), 64, axis=1)
    # within one step (half a step, plus bf16 rounding of the scale and bias)
    assert bool(mx.all(err <= 1.05 * mx.abs(step)))
    assert float(err.max()) > 0.3 * float(mx.abs(step).min())  # it was really quantized


@pytest.fixture(scope="module")
def fid(converted, golden):
    """Metrics of each conversion against the bf16 weights, both computed in float32 (so the
    numbers measure the weights, not bf16 activation rounding)."""
    ids = golden["prompt_ids"].tolist()
    ref = logits(converted["bf16"], ids, mx.float32)
    out = {"_ref": ref}
    for name in ("q8", "q4", "q4g32", "mix"):
        out[name + "_logits"] = lg = logits(converted[name], ids, mx.float32)
        out[name] = compare_logits(ref, lg, ids)
    return out


def test_8bit_fidelity(fid):
    # Measured: top-1 86.4%, KL mean 0.024. The random fixture amplifies any perturbation
    # (docs/CONVERT.md); every position the reference decides by > 1 logit agrees.
    r, ref = fid["q8"], fid["_ref"]
    assert r["top1_agreement"] >= 0.85 and r["kl_mean"] < 0.03
    top2 = np.sort(ref, -1)
    sure = top2[:, -1] - top2[:, -2] > 1.0
    assert sure.sum() > 40
    assert (fid["q8_logits"].argmax(-1) == ref.argmax(-1))[sure].all()


def test_4bit_and_recipe_fidelity_order(fid):
    assert fid["q8"]["kl_mean"] < fid["mix"]["kl_mean"] < fid["q4"]["kl_mean"]
    assert fid["q4g32"]["kl_mean"] < fid["q4"]["kl_mean"]
    assert fid["q4"]["top1_agreement"] > 0.2  # chance is 1/1024


def test_bundled_tutor_model_quantization_fidelity(tmp_path):
    """The issue's bars (8-bit top-1 >= 99%, 4-bit >= 90% vs bf16) are out of reach on the
    random fixture (8-bit 86%, 4-bit 25%: near-tied logits everywhere), so they are held on the
    trained tutor model over 512 tokens of held-out dialogues. Float32 compute isolates the
    weights' error (measured: 8-bit 100%, 4-bit 98.8%; with bf16 compute on both sides, where
    activation rounding adds to it, `phiflash eval-quant` measures 99.0% / 98.2%)."""
    from phiflash.paths import DEFAULT_MODEL_DIR
    from phiflash.quantize.convert import convert
    from phiflash.quantize.fidelity import evaluate
    from phiflash.tutor.data import texts

    text = "".join(texts("test", 12))
    r = {}
    for name, kw in {"q8": {"q_bits": 8}, "q4": {"q_bits": 4}}.items():
        out = tmp_path / name
        convert(DEFAULT_MODEL_DIR, out, quantize=True, progress=False, **kw)
        r[name] = evaluate(DEFAULT_MODEL_DIR, out, text=text, max_tokens=512, float32=True)
    assert r["q8"]["top1_agreement"] >= 0.99
    assert r["q4"]["top1_agreement"] >= 0.90
    assert r["q8"]["kl_mean"] < r["q4"]["kl_mean"] < 0.05


def test_stock_mlx_lm_generate_matches_phiflash(converted):
    from phiflash_mlx import generate, load

    d = converted["mix"]
    prompt = "What is 12 + 30?"
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    r = subprocess.run(
        [sys.executable, "-m", "mlx_lm", "generate", "--model", str(d), "--trust-remote-code"]
        + ["--temp", "0", "--max-tokens", "12", "--prompt", prompt],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    stock = r.stdout.split("==========\n")[1].rstrip("\n")
    model, tok = load(d)
    text = tok.apply_chat_template(
        [{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=False
    )
    ours = generate(model, tok, text, max_tokens=12, temp=0.0)
    assert stock == ours and len(ours) > 0


def test_mlx_lm_load_api_reads_quantized_dirs(converted, golden):
    from mlx_lm import load as mlx_load

    ids = golden["prompt_ids"].tolist()[:40]
    for name in ("q4",):
        model, _ = mlx_load(str(converted[name]), trust_remote_code=True)
        theirs = np.array(model(mx.array(ids)[None])[0].astype(mx.float32))
        assert np.array_equal(theirs, logits(converted[name], ids)), name


def test_sharded_output_and_dequantize(tmp_path, golden):
    ids = golden["prompt_ids"].tolist()
    r = conv.convert(TINY, tmp_path / "sh", progress=False, max_shard_bytes=600_000)
    d = Path(r["path"])
    assert r["files"] > 1 and not (d / "model.safetensors").exists()
    assert (d / f"model-00001-of-{r['files']:05d}.safetensors").is_file()
    assert np.array_equal(logits(TINY, ids), logits(d, ids))
    conv.convert(TINY, tmp_path / "q8", quantize=True, q_bits=8, progress=False)
    conv.convert(tmp_path / "q8", tmp_path / "dq", dequantize=True, progress=False)
    cfg = json.loads((tmp_path / "dq" / "config.json").read_text())
    assert "quantization" not in cfg and "quantization_config" not in cfg
    w = mx.load(str(tmp_path / "dq" / "model.safetensors"))
    assert not any(k.endswith(".scales") for k in w)
    q8, _ = load_model(tmp_path / "q8")
    m = q8.model.layers[2].mlp.fc2
    deq = mx.dequantize(m.weight, m.scales, m.biases, m.group_size, m.bits)
    assert mx.array_equal(w["model.layers.2.mlp.fc2.weight"], deq)
    assert no_leftovers(tmp_path)


def test_dtype_keeps_fp32_parameters(tmp_path):
    conv.convert(TINY, tmp_path / "f16", dtype="float16", progress=False)
    w = mx.load(str(tmp_path / "f16" / "model.safetensors"))
    assert w["model.layers.1.mlp.fc1.weight"].dtype == mx.float16
    assert w["model.layers.0.attn.A_log"].dtype == mx.float32
    assert w["model.layers.0.attn.dt_proj.bias"].dtype == mx.float32
    assert json.loads((tmp_path / "f16" / "config.json").read_text())["torch_dtype"] == "float16"


def run_cli(capsys, *args):
    code = cli_main(["convert", *map(str, args), "--no-progress"])
    err = capsys.readouterr().err.strip()
    return code, err


def test_bad_input_one_line_and_no_output(tmp_path, capsys):
    bad = tmp_path / "llama"
    shutil.copytree(TINY, bad)
    cfg = json.loads((bad / "config.json").read_text())
    cfg.update(model_type="llama", architectures=["LlamaForCausalLM"])
    (bad / "config.json").write_text(json.dumps(cfg))
    code, err = run_cli(capsys, "--hf-path", bad, "--mlx-path", tmp_path / "o1", "-q")
    assert code == 1 and len(err.splitlines()) == 1 and "not phi4flash" in err
    assert not (tmp_path / "o1").exists()

    trunc = tmp_path / "trunc"
    shutil.copytree(TINY, trunc)
    f = trunc / "model.safetensors"
    f.write_bytes(f.read_bytes()[:-5000])
    code, err = run_cli(capsys, "--hf-path", trunc, "--mlx-path", tmp_path / "o2")
    assert code == 1 and len(err.splitlines()) == 1 and "truncated" in err
    assert not (tmp_path / "o2").exists() and no_leftovers(tmp_path)


def test_existing_output_needs_force(tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep").write_text("x")
    code, err = run_cli(capsys, "--hf-path", TINY, "--mlx-path", out)
    assert code == 1 and "already exists" in err and (out / "keep").exists()
    assert cli_main(["convert", "--hf-path", str(TINY), "--mlx-path", str(out), "--force"]) == 0
    captured = capsys.readouterr()
    assert "bits per weight" in captured.out and "MiB" in captured.out
    assert not (out / "keep").exists() and (out / "model.safetensors").is_file()
    assert no_leftovers(tmp_path)


def test_unsupported_q_bits_refused_by_argparse(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        conv.main(
            ["--hf-path", str(TINY), "--mlx-path", str(tmp_path / "o"), "-q", "--q-bits", "3"]
        )
    assert e.value.code == 2 and "invalid choice" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        conv.main(["--hf-path", str(TINY), "-q", "--q-group-size", "48"])
    assert not (tmp_path / "o").exists()


def test_write_failure_leaves_nothing(tmp_path, monkeypatch):
    def boom(out, *a, **k):
        (out / "model.safetensors").write_bytes(b"partial")
        raise OSError("No space left on device")

    monkeypatch.setattr(conv, "save_weights", boom)
    with pytest.raises(conv.ConversionError, match="No space left"):
        conv.convert(TINY, tmp_path / "out", quantize=True, progress=False)
    assert not (tmp_path / "out").exists() and no_leftovers(tmp_path)


def test_quantize_model_in_memory_matches_converter(converted):
    model, _ = load_model(TINY)
    q = conv.quantize_model(model, 4, 64, "sambay_mixed_4_8")
    cfg = json.loads((converted["mix"] / "config.json").read_text())
    assert q == cfg["quantization"]
    from mlx.utils import tree_flatten

    ours = dict(tree_flatten(model.parameters()))
    saved = mx.load(str(converted["mix"] / "model.safetensors"))
    assert set(ours) == set(saved)
    assert all(mx.array_equal(ours[k], saved[k]) for k in saved)


def test_next_run_removes_what_a_killed_run_left(tmp_path):
    """A conversion killed outright leaves `.<name>.phiflash-tmp-<pid>`; the next conversion
    into the folder removes it once that process is gone, and leaves a live one's alone."""
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        stale_dir = tmp_path / f".out.phiflash-tmp-{dead.pid}"
        stale_dir.mkdir()
        (stale_dir / "model.safetensors").write_bytes(b"partial")
        stale_file = tmp_path / f".x.gguf.phiflash-tmp-{dead.pid}.src16"
        stale_file.write_bytes(b"partial")
        busy = tmp_path / f".other.phiflash-tmp-{live.pid}"
        busy.mkdir()
        unrelated = tmp_path / ".out.tmp-keep"
        unrelated.mkdir()
        conv.convert(TINY, tmp_path / "out", progress=False)
        names = sorted(p.name for p in tmp_path.iterdir())
        assert names == sorted(["out", busy.name, unrelated.name])
    finally:
        live.kill()
        live.wait()


def test_output_inside_the_input_is_refused(tmp_path, capsys):
    src = tmp_path / "ckpt"
    shutil.copytree(TINY, src)
    code, err = run_cli(capsys, "--hf-path", src, "--mlx-path", src / "mlx", "--force")
    assert code == 1 and "inside the input" in err and not (src / "mlx").exists()
    code, err = run_cli(capsys, "--hf-path", src, "--mlx-path", src, "--force")
    assert code == 1 and "is the input" in err
    code, err = run_cli(capsys, "--hf-path", src, "--mlx-path", tmp_path, "--force")
    assert code == 1 and "contains the input" in err
    assert sorted(p.name for p in src.iterdir()) == sorted(p.name for p in TINY.iterdir())
