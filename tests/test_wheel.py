"""phiflash as users install it: a built wheel in a fresh venv, run from outside the checkout.

The wheel is built from a copy of the working tree (`pip wheel --no-build-isolation`, so no
network: setuptools comes from the dev extras) and installed, not editable, into a new venv.
The new venv reaches the dependencies through a ``.pth`` line naming this interpreter's
site-packages, after its own: the phiflash it imports is the wheel's (checked), and nothing is
downloaded.
"""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
import sysconfig
import venv
import zipfile
from pathlib import Path

import pytest
from test_bad_inputs import run_chat_in_pty, screen_text

REPO = Path(__file__).resolve().parent.parent
TUTOR_FILES = {
    "config.json",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
    "generation_config.json",
}
# modules Windows lacks: our packages may use them only inside functions or behind a guard
POSIX_ONLY = {"fcntl", "resource", "termios", "pty", "tty", "grp", "pwd"}


def working_tree(dst: Path) -> None:
    """Copy what git would ship (tracked and untracked-not-ignored files) to ``dst``."""
    names = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        capture_output=True,
        check=True,
    ).stdout.split(b"\0")
    for name in filter(None, names):
        src = REPO / os.fsdecode(name)
        if src.is_file():
            (dst / os.fsdecode(name)).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst / os.fsdecode(name))


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    root = tmp_path_factory.mktemp("wheel")
    src, dist, env_dir = root / "src", root / "dist", root / "venv"
    working_tree(src)
    r = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(src), "--no-deps", "--no-build-isolation"]
        + ["--no-index", "-w", str(dist), "-q"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    (wheel,) = dist.glob("phiflash-*.whl")
    venv.create(env_dir, with_pip=True)
    py = env_dir / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
    purelib = subprocess.run(
        [str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    Path(purelib, "phiflash-deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    r = subprocess.run(
        [str(py), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    outside = root / "elsewhere"
    outside.mkdir()
    return {"wheel": wheel, "py": py, "bin": py.parent, "purelib": Path(purelib), "cwd": outside}


def run(installed, *args, **kw):
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    env.pop("PYTHONPATH", None)
    return subprocess.run(
        list(args), cwd=installed["cwd"], capture_output=True, text=True, env=env, timeout=300, **kw
    )


def test_wheel_carries_the_tutor_and_data_files(installed):
    names = set(zipfile.ZipFile(installed["wheel"]).namelist())
    for f in TUTOR_FILES:
        assert f"phiflash/weights/phiflash-tutor/{f}" in names, f
    assert "phiflash/tui/app.tcss" in names
    assert "phiflash/quantize/convert.py" in names
    assert any(n.startswith("phiflash_gguf/patches/") for n in names)
    assert any(n.startswith("phiflash_gguf/overlay/") for n in names)
    assert not any("/eval/" in n or "train_log" in n for n in names)  # model files only


def test_installed_package_is_the_wheel_not_the_checkout(installed):
    r = run(
        installed,
        str(installed["py"]),
        "-c",
        "import phiflash, phiflash.paths as p; print(phiflash.__file__); "
        "print(p.DEFAULT_MODEL_DIR); print(p.default_model())",
    )
    assert r.returncode == 0, r.stderr
    pkg, model_dir, default = r.stdout.splitlines()
    purelib = str(installed["purelib"])
    assert pkg.startswith(purelib) and model_dir.startswith(purelib) and default == model_dir
    assert (Path(model_dir) / "model.safetensors").is_file()


def test_generate_runs_from_the_wheel(installed):
    phiflash = str(installed["bin"] / "phiflash")
    r = run(installed, phiflash, "generate", "-p", "What is 2 + 3?", "--max-tokens", "8")
    assert r.returncode == 0, r.stderr[-2000:]
    assert "Generation: 8 tokens" in r.stdout and "Traceback" not in r.stderr
    assert os.listdir(installed["cwd"]) == []  # nothing written where it ran


@pytest.mark.skipif(os.name == "nt", reason="needs a POSIX pseudo-terminal")
def test_chat_starts_from_the_wheel(installed, tmp_path):
    """`phiflash chat` on the bundled tutor: the model loads (the stats bar names it: the bf16
    tutor runs in fp32 where MLX has no GPU)."""
    from phiflash.store import mlx_has_gpu

    loaded = "mlx · bf16" if mlx_has_gpu() else "mlx · fp32"
    cmd = [str(installed["bin"] / "phiflash"), "chat"]
    code, out = run_chat_in_pty(tmp_path / "data", until=loaded, cmd=cmd, PHIFLASH_FAKE_ENGINE="0")
    assert code == 0 and "Traceback" not in out
    screen = screen_text(out)
    assert loaded in screen and "Could not load" not in screen  # the stats bar, loaded
    assert (tmp_path / "data" / "history.sqlite3").is_file()


def test_no_posix_only_import_at_module_level(installed):
    """What Windows lacks is imported only where it is used (inside a function or a guard)."""
    bad = []
    for top in ("phiflash", "phiflash_mlx", "phiflash_gguf"):
        for f in sorted((installed["purelib"] / top).rglob("*.py")):
            for node in ast.parse(f.read_text()).body:
                if isinstance(node, ast.Import):
                    names = [a.name.split(".")[0] for a in node.names]
                elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                    names = [node.module.split(".")[0]]
                else:
                    continue
                bad += [
                    f"{f.relative_to(installed['purelib'])}: {n}" for n in names if n in POSIX_ONLY
                ]
    assert bad == []
