"""phiflash train: loss goes down, checkpoint + resume, export loads strictly with equal logits."""

import json

import mlx.core as mx
import numpy as np
import pytest
from mlx.utils import tree_flatten

from phiflash_mlx import train as T

MICRO = dict(
    T.TINY_MODEL,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=2,
    sliding_window=16,
)


def _cfg(tmp_path, **kw):
    base = dict(
        out_dir=str(tmp_path / "run"),
        model=dict(MICRO),
        steps=8,
        batch_size=4,
        chunk=32,
        lr=1e-2,
        warmup=2,
        eval_every=0,
        eval_n=0,
        greedy_n=0,
        ckpt_every=0,
        log_every=1,
        progress=False,
        compile=False,
        max_len=160,
    )
    base.update(kw)
    return T.TrainConfig(**base)


def _log(run_dir):
    lines = (run_dir / "train_log.jsonl").read_text().splitlines()
    return [json.loads(x) for x in lines]


@pytest.fixture(autouse=True)
def _cpu():
    old = mx.default_device()
    mx.set_default_device(mx.cpu)
    yield
    mx.set_default_device(old)


def test_batches_mask_only_assistant_tokens():
    from phiflash.tutor.data import dataset

    enc = T.Encoder(T.DEFAULT_TOKENIZER)
    ex = dataset("train", 3, 5)
    x, y, m = T.make_batches(enc.encode(ex), 3, 400, 0)[0]
    assert x.shape == y.shape == m.shape and x.shape[1] % 64 == 0
    tok = enc.tok
    for i in range(3):
        target = tok.decode(y[i][m[i] > 0].tolist(), skip_special_tokens=False)
        assert target.startswith("<think>") and target.endswith("<|end|>")
        assert "<|assistant|>" not in target and "<|user|>" not in target
    assert (x[:, 1:][m[:, 1:] > 0] == y[:, :-1][m[:, 1:] > 0]).all()


def test_loss_decreases(tmp_path):
    cfg = _cfg(tmp_path, steps=16, chunk=64)
    r = T.train(cfg)
    assert r["step"] == 16
    losses = [x["loss"] for x in _log(tmp_path / "run") if "loss" in x and "event" not in x]
    assert len(losses) == 16
    assert np.mean(losses[-3:]) < losses[0] - 1.0
    start = next(x for x in _log(tmp_path / "run") if x.get("event") == "start")
    assert start["config"]["tokenizer"] == "weights/phiflash-tutor"  # the default, repo-relative
    assert start["config"]["out_dir"] == cfg.out_dir  # outside the repository: as given


def test_checkpoint_resume_matches_uninterrupted(tmp_path):
    full = _cfg(tmp_path / "a", steps=6)
    T.train(full)
    part = _cfg(tmp_path / "b", steps=6, stop_after=3)
    r1 = T.train(part)
    assert r1["step"] == 3 and r1["stopped_early"]
    state = json.loads((tmp_path / "b" / "run" / "checkpoint" / "state.json").read_text())
    assert state["step"] == 3
    r2 = T.train(_cfg(tmp_path / "b", steps=6, resume=True))
    assert r2["step"] == 6
    la = [x for x in _log(tmp_path / "a" / "run") if "loss" in x and "event" not in x]
    lb = [x for x in _log(tmp_path / "b" / "run") if "loss" in x and "event" not in x]
    assert [x["step"] for x in lb] == [1, 2, 3, 4, 5, 6]
    np.testing.assert_allclose([x["loss"] for x in lb], [x["loss"] for x in la], rtol=1e-4)
    pa = mx.load(str(tmp_path / "a" / "run" / "checkpoint" / "params.safetensors"))
    pb = mx.load(str(tmp_path / "b" / "run" / "checkpoint" / "params.safetensors"))
    assert pa.keys() == pb.keys()
    for k in pa:
        np.testing.assert_allclose(np.array(pa[k]), np.array(pb[k]), rtol=1e-4, atol=1e-6)
    oa = mx.load(str(tmp_path / "a" / "run" / "checkpoint" / "optimizer.safetensors"))
    ob = mx.load(str(tmp_path / "b" / "run" / "checkpoint" / "optimizer.safetensors"))
    assert int(oa["step"]) == int(ob["step"]) == 6


def test_export_loads_strictly_with_equal_logits(tmp_path):
    from phiflash_mlx import load
    from phiflash_mlx.load import check_safetensors

    args = T.model_args(MICRO)
    model = T.init_model(args, seed=3)
    # Round the weights the export stores in bf16, so both sides hold identical values.
    rounded = [
        (k, v if T.keeps_fp32(k) else v.astype(mx.bfloat16).astype(v.dtype))
        for k, v in tree_flatten(model.parameters())
    ]
    model.load_weights(rounded)
    model.eval()
    out = T.export(model, MICRO, T.DEFAULT_TOKENIZER, tmp_path / "exported")
    names = {p.name for p in out.iterdir()}
    assert {"config.json", "model.safetensors", "generation_config.json", "tokenizer.json"} <= names
    check_safetensors(out / "model.safetensors")
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["model_type"] == "phi4flash"
    assert cfg["architectures"] == ["Phi4FlashForCausalLM"]
    assert cfg["layer_types"][1] == "sliding_attention" and cfg["sliding_window"] == 16
    stored = mx.load(str(out / "model.safetensors"))
    assert "lm_head.weight" not in stored
    assert stored["model.layers.0.attn.A_log"].dtype == mx.float32
    assert stored["model.layers.1.attn.inner_cross_attn.lambda_q1"].dtype == mx.float32
    assert stored["model.embed_tokens.weight"].dtype == mx.bfloat16
    # the converter's rule (keeps_fp32): D and the dt bias stay float32 too
    assert stored["model.layers.0.attn.D"].dtype == mx.float32
    assert stored["model.layers.0.attn.dt_proj.bias"].dtype == mx.float32

    loaded, tok = load(out, dtype=mx.float32)
    ids = tok.encode(
        "<|user|>What is 12 + 34?<|end|><|assistant|><think>", add_special_tokens=False
    )
    x = mx.array([ids])
    np.testing.assert_allclose(np.array(loaded(x)), np.array(model(x)), rtol=1e-5, atol=1e-5)


def test_cli_parser_defaults():
    a = T._parser().parse_args([])
    assert a.steps > 0 and a.size == "tutor"
    args = T.model_args(T.TUTOR_MODEL)
    kinds = [args.layer_kind(i) for i in range(args.num_hidden_layers)]
    L = args.num_hidden_layers
    assert kinds[L // 2] == "mamba_mem" and kinds[L // 2 + 1] == "attn"
    assert set(kinds[L // 2 + 2 :]) == {"gmu", "cross"}


def test_kinds_mix_drives_the_training_data(tmp_path):
    from phiflash.tutor.data import KINDS

    assert T._parser().parse_args([]).kinds == KINDS
    a = T._parser().parse_args(["--kinds", "percent,percent,linear"])
    assert a.kinds == ("percent", "percent", "linear")
    with pytest.raises(SystemExit):
        T._parser().parse_args(["--kinds", "add,calculus"])
    # only percent problems in the batches: every target contains a percent sign
    cfg = _cfg(tmp_path, chunk=16, batch_size=4, kinds=("percent",))
    tok = T.Encoder(cfg.tokenizer).tok
    for x, y, m in T.build_chunk(cfg, 0):
        for row in range(x.shape[0]):
            assert "%" in tok.decode(y[row][m[row] > 0].tolist(), skip_special_tokens=False)


def test_time_schedule_and_final_eval_on_the_eval_sets(tmp_path):
    cfg = _cfg(tmp_path, steps=10_000, train_seconds=3.0, warmup=2, greedy_n=1, max_len=768)
    assert T.lr_at(cfg, 0, 0.0) == pytest.approx(cfg.lr / 2)  # warm-up by steps
    assert T.lr_at(cfg, 5, 0.0) == pytest.approx(cfg.lr)
    assert T.lr_at(cfg, 5, 1.5) == pytest.approx(cfg.lr * (0.05 + 0.95 * 0.5))
    assert T.lr_at(cfg, 50, 99.0) == pytest.approx(cfg.lr * 0.05)  # the floor once spent
    r = T.train(cfg)
    assert 0 < r["step"] < 10_000  # stopped by the wall-time budget, not the step cap
    log = [x for x in _log(tmp_path / "run") if "lr" in x]
    lrs = [x["lr"] for x in log]
    assert lrs[-1] < max(lrs)  # decayed over the time budget
    # the final greedy eval covers one example of each eval set, graded like eval-math
    assert r["greedy_n"] == 4
    assert set(r["greedy_per_set"]) == {"problems", "phrasings", "followups", "refusals"}


def test_a_missing_grader_stops_before_training(tmp_path, monkeypatch):
    real = T.importlib.util.find_spec
    monkeypatch.setattr(
        T.importlib.util, "find_spec", lambda name: None if name == "math_verify" else real(name)
    )
    with pytest.raises(SystemExit, match="math-verify.*--greedy-n 0"):
        T.train(_cfg(tmp_path, steps=3, greedy_n=1))
    assert not (tmp_path / "run").exists()  # nothing trained, nothing written
    assert T.train(_cfg(tmp_path, steps=1, greedy_n=0))["step"] == 1
