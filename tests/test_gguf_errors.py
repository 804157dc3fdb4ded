"""Bad input for the GGUF side and the converters: one clear line and a non-zero exit, never a
traceback, the input unchanged and nothing written; convert-gguf's safe output."""

import ctypes
import hashlib
import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from phiflash.errors import ModelLoadError, WrongArchitectureError
from phiflash.quantize.gguf_convert import convert
from phiflash_gguf.engine import GGUFEngine, read_header

TINY = Path(__file__).parent / "fixtures" / "sambay-tiny"
ROOT = Path(__file__).parent.parent


def _cli(*args):
    return subprocess.run(
        [sys.executable, "-m", "phiflash.cli", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )


def _one_line_error(proc, *needles):
    assert proc.returncode != 0
    err = proc.stderr.strip()
    assert "Traceback" not in err
    assert len(err.splitlines()) == 1, err
    for n in needles:
        assert n in err, err


@pytest.fixture(scope="module")
def f32_gguf(tmp_path_factory):
    return convert(TINY, tmp_path_factory.mktemp("g") / "tiny-f32.gguf", "f32", progress=False)


@pytest.fixture
def llama_gguf(tmp_path):
    import gguf
    import numpy as np

    path = tmp_path / "other.gguf"
    w = gguf.GGUFWriter(path, "llama")
    w.add_block_count(1)
    w.add_tensor("token_embd.weight", np.zeros((4, 8), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def test_missing_file(tmp_path):
    with pytest.raises(ModelLoadError, match="no such GGUF file"):
        GGUFEngine(str(tmp_path / "nope.gguf"))


def test_truncated_gguf(tmp_path, f32_gguf):
    data = f32_gguf.read_bytes()
    for cut in (len(data) // 2, 100):
        bad = tmp_path / f"cut{cut}.gguf"
        bad.write_bytes(data[:cut])
        with pytest.raises(ModelLoadError, match="truncated|corrupt") as e:
            GGUFEngine(str(bad))
        assert "\n" not in str(e.value)


def test_not_a_gguf(tmp_path):
    bad = tmp_path / "x.gguf"
    bad.write_bytes(b"hello world" * 10)
    with pytest.raises(ModelLoadError, match="not a GGUF file"):
        read_header(bad)


def test_wrong_architecture_names_it(llama_gguf):
    with pytest.raises(WrongArchitectureError, match="'llama'"):
        GGUFEngine(str(llama_gguf))


def test_generate_cli_reports_bad_gguf_in_one_line(tmp_path, f32_gguf, llama_gguf):
    bad = tmp_path / "cut.gguf"
    bad.write_bytes(f32_gguf.read_bytes()[:5000])
    _one_line_error(_cli("generate", "--model", str(bad), "--prompt", "hi"), "truncated")
    _one_line_error(_cli("generate", "--model", str(llama_gguf), "--prompt", "hi"), "'llama'")


def test_convert_cli_errors(tmp_path):
    out = tmp_path / "o.gguf"
    _one_line_error(
        _cli("convert-gguf", "--hf-path", str(tmp_path / "missing"), "--outfile", str(out)),
        "not found",
    )

    phi3 = tmp_path / "phi3"
    phi3.mkdir()
    (phi3 / "config.json").write_text(json.dumps({"model_type": "phi3"}))
    _one_line_error(_cli("convert-gguf", "--hf-path", str(phi3), "--outfile", str(out)), "'phi3'")

    cut = tmp_path / "cut"
    shutil.copytree(TINY, cut)
    st = cut / "model.safetensors"
    st.chmod(0o644)
    st.write_bytes(st.read_bytes()[: st.stat().st_size // 2])
    _one_line_error(_cli("convert-gguf", "--hf-path", str(cut), "--outfile", str(out)), "truncated")
    assert not out.exists()
    assert not list(tmp_path.glob(".o.gguf*"))  # no temp file left behind


# ---------------------------------------------------------------------------------------------
# Bad checkpoints and outputs, through the installed `phiflash` command: convert, convert-gguf
# and the loader behind generate give one line, exit != 0, leave the input unchanged and write
# nothing.

PHIFLASH = Path(sys.executable).with_name("phiflash")
CMD = [str(PHIFLASH)] if PHIFLASH.is_file() else [sys.executable, "-m", "phiflash.cli"]
ENV = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TRANSFORMERS_VERBOSITY="error")


def _drop_dac_override():
    """Run the child without root's permission bypass, so a 0555 folder is read-only to it."""
    libc = ctypes.CDLL(None, use_errno=True)
    for cap in (1, 2):  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH
        if libc.prctl(24, cap, 0, 0, 0) != 0:  # PR_CAPBSET_DROP
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


def phiflash(*args, as_user=False, timeout=300, **kw):
    root = as_user and os.geteuid() == 0
    return subprocess.run(
        [*CMD, *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=ENV,
        cwd=ROOT,
        preexec_fn=_drop_dac_override if root else None,
        **kw,
    )


def snapshot(*dirs: Path) -> dict:
    """Every file under ``dirs`` with its size, mtime and content hash."""
    out = {}
    for d in dirs:
        for f in sorted(d.rglob("*")):
            if f.is_file():
                out[str(f)] = (f.stat().st_size, f.stat().st_mtime_ns, _sha(f))
            else:
                out[str(f)] = "dir"
    return out


def _sha(f: Path) -> str:
    return hashlib.sha256(f.read_bytes()).hexdigest()


def _config_edit(fn):
    def setup(d: Path):
        cfg = json.loads((d / "config.json").read_text())
        fn(cfg)
        (d / "config.json").write_text(json.dumps(cfg))

    return setup


def _weights_edit(fn):
    def setup(d: Path):
        import mlx.core as mx

        w = mx.load(str(d / "model.safetensors"))
        fn(w)
        mx.save_safetensors(str(d / "model.safetensors"), w)

    return setup


def _truncate(d: Path):
    f = d / "model.safetensors"
    f.write_bytes(f.read_bytes()[:-5000])


def _bad_json(d: Path):
    (d / "config.json").write_text('{"model_type": "phi4flash",')


def _set_d_shape(w):
    import mlx.core as mx

    w["model.layers.0.attn.D"] = mx.zeros((7,), dtype=mx.bfloat16)


BAD_INPUTS = {
    "incomplete-config": (_config_edit(lambda c: c.pop("hidden_size")), "no 'hidden_size'"),
    "llama-model-type": (
        _config_edit(lambda c: c.update(model_type="llama")),
        "is a 'llama' model, not phi4flash",
    ),
    "llama-architecture": (
        _config_edit(lambda c: c.update(architectures=["LlamaForCausalLM"])),
        "is a 'LlamaForCausalLM' model, not phi4flash",
    ),
    "misshapen-tensor": (
        _weights_edit(_set_d_shape),
        "tensor model.layers.0.attn.D has shape (7,), expected (256,)",
    ),
    "missing-tensor": (
        _weights_edit(lambda w: w.pop("model.layers.5.attn.Wqkv.bias")),
        "missing tensors: model.layers.5.attn.Wqkv.bias",
    ),
    "truncated-weights": (_truncate, "truncated safetensors file model.safetensors"),
    "config-not-json": (_bad_json, "is not valid JSON"),
}


def _command(cmd: str, src: Path, out_dir: Path) -> list:
    if cmd == "convert":
        return ["convert", "--hf-path", src, "--mlx-path", out_dir / "mlx", "--no-progress"]
    if cmd == "convert-gguf":
        return ["convert-gguf", "--hf-path", src, "--outfile", out_dir / "m.gguf", "--quiet"]
    return ["generate", "--model", src, "--prompt", "hi", "--max-tokens", "2"]


def _assert_one_line_refusal(proc, needle):
    err = proc.stderr.strip()
    assert proc.returncode not in (0, None), proc.stdout
    assert "Traceback" not in err, err
    assert len(err.splitlines()) == 1, err
    assert err.startswith("error: ") and needle in err, err


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
@pytest.mark.parametrize("cmd", ["convert", "convert-gguf", "generate"])
def test_bad_checkpoint_one_line_nothing_written(tmp_path, cmd, case):
    setup, needle = BAD_INPUTS[case]
    src = tmp_path / "ckpt"
    shutil.copytree(TINY, src)
    setup(src)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    before = snapshot(src, out_dir)
    proc = phiflash(*_command(cmd, src, out_dir), as_user=True)
    _assert_one_line_refusal(proc, needle)
    assert snapshot(src, out_dir) == before  # input unchanged, no stray file anywhere


def test_mixed_model_type_is_one_verdict_for_every_command(tmp_path):
    """model_type llama with Phi4Flash architectures: the same sentence from all three."""
    src = tmp_path / "ckpt"
    shutil.copytree(TINY, src)
    _config_edit(lambda c: c.update(model_type="llama"))(src)
    msgs = set()
    for cmd in ("convert", "convert-gguf", "generate"):
        proc = phiflash(*_command(cmd, src, tmp_path))
        assert proc.returncode == 1, proc.stderr
        msgs.add(proc.stderr.strip().replace(str(src.resolve()), str(src)))
    assert len(msgs) == 1, msgs
    assert "model_type 'llama' but architectures Phi4FlashForCausalLM" in msgs.pop()


@pytest.mark.parametrize("cmd", ["convert", "convert-gguf"])
def test_read_only_output_folder(tmp_path, cmd):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        before = snapshot(TINY, ro)
        proc = phiflash(*_command(cmd, TINY, ro), as_user=True)
        _assert_one_line_refusal(proc, "permission denied")
        assert snapshot(TINY, ro) == before
    finally:
        ro.chmod(0o755)


def test_convert_gguf_force_and_mode(tmp_path):
    out = tmp_path / "m.gguf"
    out.write_bytes(b"keep me")
    proc = phiflash("convert-gguf", "--hf-path", TINY, "--outfile", out, "--outtype", "f32")
    _assert_one_line_refusal(proc, "already exists; pass --force")
    assert out.read_bytes() == b"keep me"
    proc = phiflash(
        "convert-gguf", "--hf-path", TINY, "--outfile", out, "--outtype", "f32", "--force"
    )
    assert proc.returncode == 0, proc.stderr
    assert out.read_bytes()[:4] == b"GGUF"
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(out.stat().st_mode) == 0o666 & ~umask  # 0644 under the usual umask
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.gguf"]


@pytest.mark.parametrize("target", ["model.safetensors", "tokenizer.json", "link-to-weights"])
def test_convert_gguf_never_writes_over_an_input(tmp_path, target):
    src = tmp_path / "ckpt"
    shutil.copytree(TINY, src)
    out = src / target
    if target.startswith("link"):
        out.symlink_to(src / "model.safetensors")
    before = snapshot(src)
    proc = phiflash("convert-gguf", "--hf-path", src, "--outfile", out, "--force", "--quiet")
    _assert_one_line_refusal(proc, "is an input file")
    assert snapshot(src) == before


def test_default_outfile_beside_the_checkpoint_is_not_an_input(tmp_path):
    src = tmp_path / "ckpt"
    shutil.copytree(TINY, src)
    for _ in range(2):  # the second run replaces the first output with --force
        proc = phiflash("convert-gguf", "--hf-path", src, "--outtype", "f16", "--quiet", "--force")
        assert proc.returncode == 0, proc.stderr
    assert (src / "ckpt-F16.gguf").is_file()
    assert not [p for p in src.iterdir() if "phiflash-tmp" in p.name]


# ---------------------------------------------------------------------------------------------
# The 16-bit intermediate


def test_intermediate_keeps_checkpoint_dtypes_and_quantizes_as_f32(tmp_path):
    """bf16 matrices are copied as bf16, only F32-stored ones stay F32 (A_log is 2-D F32 in the
    real checkpoint), and the quantized file equals one made from a full F32 intermediate."""
    import gguf
    import mlx.core as mx

    from phiflash.quantize import gguf_convert as gc

    src = tmp_path / "ckpt"
    shutil.copytree(TINY, src)
    _weights_edit(
        lambda w: w.__setitem__(
            "model.layers.1.mlp.fc1.weight", w["model.layers.1.mlp.fc1.weight"].astype(mx.float32)
        )
    )(src)
    ck = gc.read_checkpoint(src)
    mid = tmp_path / "mid.gguf"
    gc.write_float_gguf(ck, mid, "source", progress=False)
    types = {t.name: t.tensor_type.name for t in gguf.GGUFReader(mid).tensors}
    assert types["token_embd.weight"] == "BF16"
    assert types["blk.0.ffn_up.weight"] == "BF16"
    assert types["blk.1.ffn_up.weight"] == "F32"  # stored F32 in the checkpoint
    assert types["blk.0.ssm_a"] == "F32" and types["blk.0.ssm_d"] == "F32"
    matrices = [p for p in ck.plan if len(p.shape) == 2 and not p.force_f32]
    assert sum(p.ref.nbytes for p in matrices) <= mid.stat().st_size

    new = gc.convert(src, tmp_path / "new.gguf", "q8_0", progress=False)
    f32 = tmp_path / "f32.gguf"
    gc.write_float_gguf(ck, f32, "f32", progress=False)
    gc.quantize_gguf(f32, tmp_path / "old.gguf", "q8_0")
    assert _sha(new) == _sha(tmp_path / "old.gguf")


# ---------------------------------------------------------------------------------------------
# Interrupts: Ctrl-C mid-quantization, kill -9, and the next run's clean-up


def write_random_checkpoint(dst: Path, shard_bytes: int = 1 << 30, **sizes) -> Path:
    """A random SambaY checkpoint in the real layout (names from the model file; A_log and the
    lambdas F32, everything else BF16; sharded with an index), the fixture's tokenizer."""
    import mlx.core as mx
    from mlx.utils import tree_flatten

    from phiflash_mlx.model import Model, ModelArgs

    dst.mkdir(parents=True)
    cfg = json.loads((TINY / "config.json").read_text())
    cfg.pop("layer_types", None)
    cfg.update(sizes)
    (dst / "config.json").write_text(json.dumps(cfg, indent=2))
    for name in ("tokenizer.json", "tokenizer_config.json", "generation_config.json"):
        shutil.copyfile(TINY / name, dst / name)
    args = ModelArgs.from_dict(cfg)
    shapes = {k: v.shape for k, v in tree_flatten(Model(args).parameters())}
    f32 = ("A_log", "lambda_q1", "lambda_k1", "lambda_q2", "lambda_k2")
    shard, size, n, weight_map = {}, 0, 0, {}

    def flush():
        nonlocal shard, size, n
        n += 1
        name = f"model-{n:05d}.safetensors"
        mx.save_safetensors(str(dst / name), shard)
        weight_map.update({k: name for k in shard})
        shard, size = {}, 0

    mx.random.seed(0)
    for k, shape in sorted(shapes.items()):
        dtype = mx.float32 if k.rsplit(".", 1)[-1] in f32 else mx.bfloat16
        v = (mx.random.normal(shape) * 0.02).astype(dtype)
        mx.eval(v)
        shard[k] = v
        size += v.nbytes
        if size >= shard_bytes:
            flush()
    if shard:
        flush()
    index = {"metadata": {}, "weight_map": weight_map}
    (dst / "model.safetensors.index.json").write_text(json.dumps(index))
    return dst


@pytest.fixture(scope="module")
def medium_ckpt(tmp_path_factory):
    """Big enough that quantizing to Q4_K_M takes a few seconds on two cores (~0.3 GB)."""
    return write_random_checkpoint(
        tmp_path_factory.mktemp("medium") / "ckpt",
        vocab_size=32000,
        hidden_size=1024,
        intermediate_size=3072,
        num_hidden_layers=8,
        num_attention_heads=16,
        num_key_value_heads=8,
        sliding_window=128,
    )


def _children(pid: int) -> list[int]:
    out = []
    for stat_file in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat_file.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(stat_file.parent.name))
    return out


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _interruptible() -> None:
    """In the child before exec: Ctrl-C's default action, as in a terminal. A test run started
    in the background of a non-interactive shell inherits SIGINT ignored, and Python keeps an
    ignored SIGINT ignored, so the command would never see the Ctrl-C these tests send."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _start_quantizing(ckpt: Path, out: Path):
    """Start convert-gguf q4_k_m; return (process, quantizer child pid) once the child runs."""
    import time

    proc = subprocess.Popen(
        [*CMD, "convert-gguf", "--hf-path", str(ckpt), "--outfile", str(out)]
        + ["--outtype", "q4_k_m", "--threads", "1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=ENV,
        cwd=ROOT,
        preexec_fn=_interruptible,
    )
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        kids = [c for c in _children(proc.pid) if _alive(c)]
        if kids:
            time.sleep(1.0)  # the child is inside llama_model_quantize now (imports take ~1 s)
            assert proc.poll() is None, proc.communicate()
            return proc, kids[0]
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.05)
    proc.kill()
    raise AssertionError("convert-gguf never started quantizing")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_ctrl_c_mid_quantization_leaves_nothing(tmp_path, medium_ckpt):
    import signal

    out_dir = tmp_path / "out"
    out_dir.mkdir()
    before = snapshot(medium_ckpt)
    proc, child = _start_quantizing(medium_ckpt, out_dir / "m.gguf")
    assert [p.name for p in out_dir.iterdir() if "phiflash-tmp" in p.name]  # mid-way indeed
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    err = err.decode()
    assert proc.returncode == 130, err
    assert "Traceback" not in err and err.strip().splitlines()[-1] == "interrupted", err
    assert not _alive(child)  # the quantizer was stopped, not left to finish
    assert list(out_dir.iterdir()) == []
    assert snapshot(medium_ckpt) == before


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_kill_9_leftovers_removed_by_next_run(tmp_path, medium_ckpt):
    import signal
    import time

    out_dir = tmp_path / "out"
    out_dir.mkdir()
    proc, child = _start_quantizing(medium_ckpt, out_dir / "m.gguf")
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    for _ in range(100):  # the quantizer dies with its parent
        if not _alive(child):
            break
        time.sleep(0.05)
    assert not _alive(child)
    left = sorted(p.name for p in out_dir.iterdir())
    assert left and all(f".m.gguf.phiflash-tmp-{proc.pid}" in n for n in left), left

    r = phiflash("convert-gguf", "--hf-path", TINY, "--outfile", out_dir / "tiny.gguf", "--quiet")
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in out_dir.iterdir()) == ["tiny.gguf"]


@pytest.mark.parametrize("cmd", ["convert", "convert-gguf"])
def test_ctrl_c_while_writing_leaves_nothing(tmp_path, medium_ckpt, cmd):
    """Interrupted while writing its temp file/dir (float32, ~1 GB): exit 130, nothing left."""
    import signal
    import time

    out_dir = tmp_path / "out"
    out_dir.mkdir()
    if cmd == "convert":
        args = ["--mlx-path", str(out_dir / "m"), "--dtype", "float32", "--no-progress"]
    else:
        args = ["--outfile", str(out_dir / "m.gguf"), "--outtype", "f32", "--quiet"]
    proc = subprocess.Popen(
        [*CMD, cmd, "--hf-path", str(medium_ckpt), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=ENV,
        cwd=ROOT,
        preexec_fn=_interruptible,
    )
    deadline = time.monotonic() + 240
    while not [p for p in out_dir.iterdir() if "phiflash-tmp" in p.name]:
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.01)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    err = err.decode()
    assert proc.returncode == 130, err
    assert "Traceback" not in err and err.strip().splitlines()[-1] == "interrupted", err
    assert list(out_dir.iterdir()) == []
