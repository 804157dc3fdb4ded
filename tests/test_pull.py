"""`phiflash pull` / `list` / `rm` from a Hugging Face cache the test builds (offline, CPU).

The tutor stands in for the real repo id (same architecture, tokenizer layout and chat
template), so the default `phiflash pull` (no argument) runs its real path: the HF cache,
the conversion libraries, the store's manifest; then generate and chat run it by name.
"""

from __future__ import annotations

import asyncio
import json

import pytest
from hub_util import add_to_hub_cache, offline_hub

from phiflash.cli import main as cli_main
from phiflash.engines import open_engine, slow_path_notice
from phiflash.paths import DEFAULT_MODEL_DIR, REAL_MODEL
from phiflash.store import (
    CPU_FORMAT,
    GPU_FORMAT,
    default_format,
    find_model,
    load_manifest,
    mlx_has_gpu,
)

NAME = f"phi-4-mini-flash-reasoning:{CPU_FORMAT}"
ARGS = ["--prompt", "What is 12 + 30?", "--temp", "0", "--max-tokens", "40", "--verbose", "False"]


@pytest.fixture
def env(tmp_path, monkeypatch):
    cache = offline_hub(monkeypatch, tmp_path, tmp_path / "models")
    snap = add_to_hub_cache(cache, REAL_MODEL, DEFAULT_MODEL_DIR)
    return tmp_path / "models", snap


def test_pull_list_use_rm(env, capsys):
    store, snap = env
    if mlx_has_gpu():
        assert default_format() == GPU_FORMAT
        assert cli_main(["pull", "--quiet", "--format", CPU_FORMAT]) == 0
    else:
        assert default_format() == CPU_FORMAT  # no GPU here: a GGUF, never MLX
        assert cli_main(["pull", "--quiet"]) == 0  # the default repo: the real model's id
    out = capsys.readouterr().out
    assert f"pulled {NAME}" in out and f"phiflash chat --model {REAL_MODEL}" in out
    [entry] = load_manifest()
    assert (entry.repo, entry.format, entry.revision) == (REAL_MODEL, CPU_FORMAT, snap.name)
    gguf = entry.abs_path()
    assert gguf.suffix == ".gguf" and gguf.read_bytes()[:4] == b"GGUF"
    assert store in gguf.parents and entry.size_bytes == gguf.stat().st_size
    manifest = json.loads((store / "manifest.json").read_text())
    assert manifest["models"][0]["name"] == NAME
    assert not [p for p in store.rglob("*") if "tmp" in p.name]  # nothing half-written left

    # a second pull does nothing (same file, untouched)
    stamp = gguf.stat().st_mtime_ns
    assert cli_main(["pull", REAL_MODEL]) == 0
    assert "already pulled" in capsys.readouterr().out
    assert gguf.stat().st_mtime_ns == stamp and len(load_manifest()) == 1

    assert cli_main(["list"]) == 0
    listing = capsys.readouterr().out
    assert NAME in listing and REAL_MODEL in listing and CPU_FORMAT in listing

    # the pulled model wins over the HF cache (which holds the same repo id) and the alias
    for name in (REAL_MODEL, "phi4-flash", NAME):
        assert find_model(name) == gguf, name
    engine = open_engine(REAL_MODEL)
    assert engine.name == "gguf" and engine.model_path == str(gguf)
    assert cli_main(["generate", "--model", REAL_MODEL, *ARGS]) == 0
    by_repo = capsys.readouterr().out
    assert cli_main(["generate", "--model", str(gguf), *ARGS]) == 0
    assert capsys.readouterr().out == by_repo and by_repo.startswith("<think>")
    assert cli_main(["generate", "--model", "phi4-flash", *ARGS]) == 0
    assert capsys.readouterr().out == by_repo

    # the chat, by name, with no further flag
    from phiflash.tui.app import make_app
    from phiflash.tui.history import HistoryStore

    async def chat():
        hist = HistoryStore(store.parent / "h.sqlite3")
        app = make_app(
            engine_factory=lambda: open_engine(REAL_MODEL), store=hist, export_dir=store.parent
        )
        async with app.run_test(size=(100, 40)) as pilot:
            for _ in range(3000):
                if app.engine is not None or app.load_error:
                    break
                await pilot.pause(0.01)
            assert app.load_error is None and app.engine.model_path == str(gguf)
            app.params.temperature, app.params.max_tokens = 0.0, 40
            await pilot.click("#prompt")
            await pilot.press(*"What is 12 + 30?", "enter")
            for _ in range(3000):
                if len(app.conversation.turns) == 2 and app.chat_screen.streaming is None:
                    break
                await pilot.pause(0.01)
            assert app.conversation.turns[-1].content.startswith("<think>")
        hist.close()

    asyncio.run(chat())

    # serve, by repo id: the pulled GGUF
    from serve_util import Server

    with Server(REAL_MODEL, store.parent / "serve.log") as server:
        status, body = server.request("GET", "/v1/models")
        assert status == 200 and REAL_MODEL in json.dumps(body)
        assert "(gguf Q4_0" in server.tail()

    # rm by name: gone from the store and the listing; the name falls back to the HF cache
    assert cli_main(["rm", NAME]) == 0
    assert f"removed {NAME}" in capsys.readouterr().out
    assert not gguf.exists() and load_manifest() == []
    assert not any(p.is_file() for p in store.rglob("*") if p.name != "manifest.json")
    assert find_model(REAL_MODEL) == snap
    assert cli_main(["list"]) == 0
    assert "no pulled models" in capsys.readouterr().out
    assert cli_main(["rm", NAME]) == 1
    assert "no pulled model" in capsys.readouterr().err


@pytest.mark.skipif(mlx_has_gpu(), reason="the notice is for machines without a GPU")
def test_formats_side_by_side_and_mlx_notice(env, capsys, monkeypatch):
    import phiflash.engines

    monkeypatch.setattr(phiflash.engines, "_noticed", set())  # "once" per process
    store, _ = env
    assert cli_main(["pull", "phi4-flash", "--format", "mlx-4bit", "--quiet"]) == 0
    err = capsys.readouterr().err
    assert "MLX has no GPU here" in err and f"--format {CPU_FORMAT}" in err
    assert cli_main(["pull", "phi4-flash", "--quiet"]) == 0
    assert {e.format for e in load_manifest()} == {"mlx-4bit", CPU_FORMAT}
    assert find_model(REAL_MODEL).suffix == ".gguf"  # this machine's format first
    mlx_dir = find_model(REAL_MODEL, "mlx")
    assert (mlx_dir / "config.json").is_file()
    assert json.loads((mlx_dir / "config.json").read_text())["quantization"]["bits"] == 4

    # generate on the MLX 4-bit model says once that GGUF is the fast path here
    assert cli_main(["generate", "--model", REAL_MODEL, "--engine", "mlx", *ARGS]) == 0
    err = capsys.readouterr().err
    assert err.count("note: MLX 4-bit without a GPU is slow here") == 1
    assert "400x" in err and f"phiflash pull REPO --format {CPU_FORMAT}" in err
    engine = open_engine(str(DEFAULT_MODEL_DIR))  # bf16: not the slow quantized path
    assert slow_path_notice(engine) is None

    # the chat says it too, in the window
    from phiflash.tui.app import make_app
    from phiflash.tui.history import HistoryStore

    async def chat():
        hist = HistoryStore(store.parent / "h.sqlite3")
        app = make_app(open_engine(REAL_MODEL, "mlx"), store=hist, export_dir=store.parent)
        async with app.run_test(size=(100, 40)) as pilot:
            await pilot.pause()
            notes = [str(n.message) for n in app._notifications]
            assert any("GGUF engine" in n and "400x" in n for n in notes), notes
        hist.close()

    asyncio.run(chat())

    # rm one format
    assert cli_main(["rm", REAL_MODEL, "--format", "mlx-4bit"]) == 0
    assert [e.format for e in load_manifest()] == [CPU_FORMAT]
    assert not mlx_dir.exists()


def test_bad_names_one_line(env, capsys):
    assert cli_main(["pull", "phiflash-test/not-cached"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "hf download phiflash-test/not-cached" in err[0]
    assert cli_main(["pull", "not-an-alias"]) == 1
    assert "not a Hugging Face repo id" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli_main(["pull", "--format", "gguf-q2_k"])
    assert load_manifest() == []


def test_force_and_a_pull_cut_before_its_manifest(env, capsys):
    store, _ = env
    args = ["pull", "phi4-flash", "--format", "gguf-q8_0", "--quiet"]
    assert cli_main(args) == 0
    [entry] = load_manifest()
    first = entry.abs_path().stat().st_mtime_ns
    assert cli_main([*args, "--force"]) == 0  # converted again, still one entry
    [again] = load_manifest()
    assert again.abs_path() == entry.abs_path() and again.abs_path().stat().st_mtime_ns != first
    # a pull killed after converting but before writing the manifest: the next one redoes it
    (store / "manifest.json").unlink()
    assert cli_main(args) == 0
    assert [e.name for e in load_manifest()] == ["phi-4-mini-flash-reasoning:gguf-q8_0"]
    assert len(list(store.rglob("*.gguf"))) == 1
