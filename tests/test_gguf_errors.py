"""Bad input for the GGUF side: one clear line and a non-zero exit, never a traceback."""

import json
import shutil
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
