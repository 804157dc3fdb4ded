"""`phiflash cache-prompt` + `phiflash generate --prompt-cache-file`: reuse and refusal."""

import json

import pytest
from conftest import TINY

from phiflash.cli import main as cli_main

CONTEXT = "Nia has 40 coins. Tara gives Nia 24 more coins."
QUESTION = "How many coins does Nia have now?"
SYSTEM = "You are a careful math tutor."


def generated_text(out: str) -> str:
    return out.split("==========\n")[1]


@pytest.fixture(scope="module")
def cache_file(tmp_path_factory):
    f = tmp_path_factory.mktemp("pc") / "ctx.safetensors"
    args = ["cache-prompt", "--model", str(TINY), "--prompt", CONTEXT]
    assert cli_main(args + ["--system-prompt", SYSTEM, "--prompt-cache-file", str(f)]) == 0
    return f


def generate(capsys, *args):
    code = cli_main(["generate", "--temp", "0", "--max-tokens", "12", *args])
    cap = capsys.readouterr()
    return code, cap.out, cap.err


def test_cache_file_is_mlx_lm_format_with_the_prompt_tokens(cache_file, capsys):
    from mlx_lm.models.cache import load_prompt_cache

    cache, meta = load_prompt_cache(str(cache_file), return_metadata=True)
    assert len(cache) == 6  # mamba, swa, mamba, swa, mamba_mem, global; GMU/cross own none
    assert meta["phiflash_prompt"] == CONTEXT + "\n\n" and meta["phiflash_system"] == SYSTEM
    assert cache[5].offset == len(json.loads(meta["phiflash_tokens"])) > 10


def test_reuse_gives_the_same_greedy_tokens_as_no_cache(cache_file, capsys):
    code, cached, err = generate(capsys, "--prompt-cache-file", str(cache_file), "-p", QUESTION)
    assert code == 0, err
    code, plain, err = generate(
        capsys, "--model", str(TINY), "--system-prompt", SYSTEM, "-p", f"{CONTEXT}\n\n{QUESTION}"
    )
    assert code == 0, err
    assert generated_text(cached) == generated_text(plain)
    assert len(generated_text(plain).strip()) > 0
    # the cached run only fed the new tokens
    n_cached = int(cached.split("Prompt: ")[1].split(" ")[0])
    n_plain = int(plain.split("Prompt: ")[1].split(" ")[0])
    assert 0 < n_cached < n_plain - 10


def test_non_prefix_prompt_is_refused(cache_file, capsys):
    code, _, err = generate(
        capsys, "--prompt-cache-file", str(cache_file), "--system-prompt", "Other.", "-p", "Hi"
    )
    err = err.strip()
    assert code != 0 and len(err.splitlines()) == 1
    assert "not a prefix" in err and "cannot be rewound" in err


def test_not_a_cache_file(tmp_path, capsys):
    bad = tmp_path / "x.safetensors"
    bad.write_bytes(b"nope")
    code, _, err = generate(capsys, "--model", str(TINY), "--prompt-cache-file", str(bad))
    assert code != 0 and len(err.strip().splitlines()) == 1 and "prompt cache" in err
