"""Hub ids everywhere a model is taken, through a Hugging Face cache the test builds (offline).

The cache has huggingface_hub's real layout: ``models--org--name/blobs/<sha256>``,
``snapshots/<commit>/<file>`` symlinks to the blobs, ``refs/main`` holding the commit; the
library reads it as it would after ``hf download`` (nothing is stubbed).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from conftest import TINY
from hub_util import add_to_hub_cache, offline_hub

from phiflash.cli import main as cli_main
from phiflash.errors import ModelLoadError
from phiflash.paths import DEFAULT_MODEL_DIR, REAL_MODEL, resolve_model

TINY_REPO = "phiflash-test/sambay-tiny"
TUTOR_REPO = "phiflash-test/tutor"


@pytest.fixture
def hub(tmp_path, monkeypatch):
    """An offline HF cache holding the fixture, the tutor, and the tutor as the real repo id."""
    cache = offline_hub(monkeypatch, tmp_path, tmp_path / "store")
    snaps = {
        TINY_REPO: add_to_hub_cache(cache, TINY_REPO, TINY),
        TUTOR_REPO: add_to_hub_cache(cache, TUTOR_REPO, DEFAULT_MODEL_DIR),
        REAL_MODEL: add_to_hub_cache(cache, REAL_MODEL, DEFAULT_MODEL_DIR),
    }
    return snaps


def test_resolve_from_the_cache_and_alias(hub):
    assert resolve_model(TINY_REPO) == hub[TINY_REPO]
    assert (resolve_model(TINY_REPO) / "config.json").is_file()
    assert resolve_model("phi4-flash") == hub[REAL_MODEL]  # the alias, then the cache


def test_not_cached_offline_names_commands_that_exist(hub, capsys):
    with pytest.raises(ModelLoadError) as e:
        resolve_model("phiflash-test/not-there")
    msg = str(e.value)
    assert "\n" not in msg and "huggingface-cli" not in msg
    assert "phiflash pull phiflash-test/not-there" in msg
    assert "hf download phiflash-test/not-there" in msg
    assert cli_main(["generate", "--model", "phiflash-test/not-there"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "hf download" in err[0]
    with pytest.raises(ModelLoadError, match="not a local path"):
        resolve_model("no-such-dir-or-alias")


def test_interrupted_download_is_named(hub):
    """A snapshot whose cached tree listing (written by huggingface_hub's own writer, as a
    download does) names a file that is not there, an interrupted download, is reported as
    incomplete with the command that finishes it."""
    from huggingface_hub._tree_cache import TreeCacheEntry, write_tree_cache

    folder = Path(os.environ["HF_HUB_CACHE"]) / ("models--" + TINY_REPO.replace("/", "--"))
    commit = (folder / "refs" / "main").read_text()
    names = [p.name for p in hub[TINY_REPO].iterdir()] + ["model-00002-of-00002.safetensors"]
    write_tree_cache(str(folder), commit, {n: TreeCacheEntry(1, "0" * 40) for n in names})
    with pytest.raises(ModelLoadError) as e:
        resolve_model(TINY_REPO)
    assert "incomplete" in str(e.value) and f"phiflash pull {TINY_REPO}" in str(e.value)


def test_convert_takes_a_hub_id(hub, tmp_path, capsys):
    out = tmp_path / "mlx-8"
    assert (
        cli_main(
            [
                "convert",
                "--hf-path",
                TINY_REPO,
                "--mlx-path",
                str(out),
                "-q",
                "--q-bits",
                "8",
                "--no-progress",
            ]
        )
        == 0
    )
    assert (out / "config.json").is_file() and (out / "tokenizer.json").is_file()


def test_convert_gguf_takes_a_hub_id(hub, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert cli_main(["convert-gguf", "--hf-path", TINY_REPO, "--outtype", "f32", "--quiet"]) == 0
    made = tmp_path / "sambay-tiny-F32.gguf"  # a hub id: the default output goes to the cwd
    assert made.is_file() and made.read_bytes()[:4] == b"GGUF"
    assert not list(hub[TINY_REPO].glob("*.gguf"))  # never into the cache


def test_generate_eval_quant_and_cache_prompt_take_a_hub_id(hub, tmp_path, capsys):
    args = ["--prompt", "What is 2 + 3?", "--temp", "0", "--max-tokens", "30", "--verbose", "False"]
    assert cli_main(["generate", "--model", TUTOR_REPO, *args]) == 0
    by_id = capsys.readouterr().out
    assert cli_main(["generate", "--model", str(DEFAULT_MODEL_DIR), *args]) == 0
    assert capsys.readouterr().out == by_id and by_id.startswith("<think>")
    assert cli_main(["generate", "--model", "phi4-flash", *args]) == 0  # alias -> cache
    assert capsys.readouterr().out == by_id
    cache_file = tmp_path / "p.safetensors"
    assert (
        cli_main(
            [
                "cache-prompt",
                "--model",
                TUTOR_REPO,
                "--prompt",
                "What is",
                "--prompt-cache-file",
                str(cache_file),
            ]
        )
        == 0
    )
    assert cache_file.is_file()
    assert (
        cli_main(
            [
                "eval-quant",
                "--reference",
                TINY_REPO,
                "--model",
                TINY_REPO,
                "--max-tokens",
                "64",
                "--json",
            ]
        )
        == 0
    )
    assert '"top1_agreement": 1.0' in capsys.readouterr().out.replace("1.0,", "1.0")


def test_help_tells_the_resolution_order(capsys):
    for cmd in ("generate", "chat", "eval-math"):
        with pytest.raises(SystemExit):
            cli_main([cmd, "--help"])
        text = " ".join(capsys.readouterr().out.split())
        assert "pulled model" in text and "Hugging Face cache" in text and "alias" in text, cmd
