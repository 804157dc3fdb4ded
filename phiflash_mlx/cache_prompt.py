"""Prompt caches in mlx-lm's file format: writing one (`phiflash cache-prompt`) and reading it.

A file holds the cache of every layer and, in its metadata, the prompt's token ids
(``phiflash_tokens``), so a later prompt can be checked to continue it: a Mamba state cannot
be rewound, so only a prompt that extends the cached one may reuse it. The metadata also has
the keys stock ``mlx_lm.generate --prompt-cache-file`` reads (``model``, ``tokenizer_config``),
so our files load there too. Files written by stock ``mlx_lm.cache_prompt`` store no token ids:
they are read with ``tokens=None`` and their prefix cannot be checked.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

from phiflash.errors import PromptCacheError


@dataclass
class PromptCacheFile:
    """A prompt cache read once from disk; :meth:`fresh_cache` hands out a private copy.

    Caches are updated in place while generating, so every reuse starts from a copy.
    """

    path: str
    tokens: list[int] | None  # None: a stock mlx_lm file (no token ids, prefix unchecked)
    metadata: dict
    _layers: list  # (cache class, state) per layer

    def fresh_cache(self) -> list:
        import mlx.core as mx
        from mlx.utils import tree_map

        def copy(x):
            return mx.array(x) if isinstance(x, mx.array) else x

        return [cls.from_state(tree_map(copy, state)) for cls, state in self._layers]

    def check_model(self, model) -> None:
        """Refuse, in one line, a cache whose layers do not fit ``model`` (another size).

        A one-token pass fills a fresh cache; every cached array must have its shape except
        along the key/value sequence axis.
        """
        import mlx.core as mx
        from mlx.utils import tree_flatten
        from mlx_lm.models.cache import make_prompt_cache

        probe = make_prompt_cache(model)
        want = [type(c).__name__ for c in probe]
        have = [cls.__name__ for cls, _ in self._layers]
        if want != have:
            raise PromptCacheError(
                f"{self.path} was made for another model: it caches {len(have)} layers, "
                f"this model {len(want)}"
            )
        model(mx.array([[0]]), cache=probe)
        for i, (c, (_, state)) in enumerate(zip(probe, self._layers)):
            ref = [a for _, a in tree_flatten(c.state) if isinstance(a, mx.array)]
            got = [a for _, a in tree_flatten(state) if isinstance(a, mx.array)]
            for r, g in zip(ref, got, strict=False):
                rs, gs = list(r.shape), list(g.shape)
                if len(rs) == 4 == len(gs):  # keys/values: any length along the sequence
                    rs[2] = gs[2]
                if rs != gs:
                    raise PromptCacheError(
                        f"{self.path} was made for another model: layer {i} holds shape "
                        f"{tuple(gs)}, this model needs {tuple(rs)}"
                    )
            if len(ref) != len(got):
                raise PromptCacheError(
                    f"{self.path} was made for another model: layer {i} holds {len(got)} "
                    f"arrays, this model {len(ref)}"
                )


def read_prompt_cache(path: str) -> PromptCacheFile:
    """Read a file written by `phiflash cache-prompt` or stock ``mlx_lm.cache_prompt``.

    Anything else raises one clear PromptCacheError. A stock file has ``tokens=None``.
    """
    from mlx_lm.models.cache import load_prompt_cache

    if not Path(path).is_file():
        raise PromptCacheError(f"prompt cache file not found: {path}")
    try:
        cache, meta = load_prompt_cache(path, return_metadata=True)
        layers = [(type(c), c.state) for c in cache]
        tokens = json.loads(meta["phiflash_tokens"]) if "phiflash_tokens" in meta else None
    except Exception as e:
        raise PromptCacheError(f"{path} is not a prompt cache ({type(e).__name__}: {e})") from e
    if tokens is None and "tokenizer_config" not in meta:
        raise PromptCacheError(
            f"{path} was made by neither `phiflash cache-prompt` nor mlx_lm.cache_prompt"
        )
    if not layers:
        raise PromptCacheError(f"{path} holds no cached layers")
    return PromptCacheFile(str(path), tokens, dict(meta), layers)


def cache_prompt(
    model_path,
    prompt: str,
    out_file: str,
    system_prompt: str | None = None,
    chat_template: bool = True,
    prefill_step_size: int = 2048,
    model_name: str | None = None,
    force: bool = False,
) -> dict:
    """Run the prompt through the model and save its cache with the prompt's token ids.

    With the chat template, the saved prefix is the rendered user turn without the
    generation prompt, so `phiflash generate --prompt-cache-file` (and stock
    ``mlx_lm.generate``) can append to it. ``model_name`` is stored as the file's ``model``
    (what the user typed, which stock mlx_lm.generate compares with its ``--model``; default:
    the path). An existing ``out_file`` is replaced only with ``force``; the file appears whole
    (written beside it, then renamed) or not at all.
    Returns {"tokens": n, "seconds": t, "file": out_file}.
    """
    import mlx.core as mx
    from mlx_lm.models.cache import make_prompt_cache, save_prompt_cache

    from phiflash_mlx.load import load_model, load_tokenizer

    out = Path(out_file)
    if out.suffix != ".safetensors":
        raise PromptCacheError(f"the prompt cache file must end in .safetensors: {out_file}")
    if out.is_dir():
        raise PromptCacheError(f"{out_file} is a directory")
    if out.exists() and not force:
        raise PromptCacheError(f"{out_file} exists; pass --force to replace it")
    if not out.parent.is_dir():
        raise PromptCacheError(f"no such directory: {out.parent}")
    if not os.access(out.parent, os.W_OK):
        raise PromptCacheError(f"cannot write to {out.parent} (permission denied)")

    model, config = load_model(model_path)
    tokenizer = load_tokenizer(model_path, config)
    if chat_template:
        # The new question is appended to this user message after a blank line, which keeps
        # the token boundary stable (BPE never merges across the newlines).
        prompt = prompt + "\n\n"
        messages = [{"role": "system", "content": system_prompt}] if system_prompt else []
        text = tokenizer.apply_chat_template(
            messages + [{"role": "user", "content": prompt}],
            tokenize=False,
            add_generation_prompt=False,
        ).rsplit("<|end|>", 1)[0]
    else:
        text = prompt
    tokens = tokenizer.encode(text, add_special_tokens=False)
    cache = make_prompt_cache(model)
    t0 = time.perf_counter()
    for s in range(0, len(tokens), prefill_step_size):
        model(mx.array(tokens[s : s + prefill_step_size])[None], cache=cache)
        mx.eval([c.state for c in cache])
    secs = time.perf_counter() - t0
    meta = {
        # the two keys stock mlx_lm.generate reads
        "model": model_name or str(model_path),
        "tokenizer_config": json.dumps({}),
        "phiflash_tokens": json.dumps(tokens),
        "phiflash_prompt": prompt,
        "phiflash_system": system_prompt or "",
        "phiflash_chat_template": "1" if chat_template else "0",
    }
    # the temporary name keeps the .safetensors suffix (mx.save_safetensors would add one)
    tmp = out.with_name(f".{out.stem}.phiflash-tmp-{os.getpid()}.safetensors")
    remove_stale_temps(out)
    try:
        save_prompt_cache(str(tmp), cache, meta)
        os.replace(tmp, out)
    except Exception as e:  # OSError, or mlx's RuntimeError for a failed write
        why = getattr(e, "strerror", None) or e
        raise PromptCacheError(f"cannot write {out_file}: {why}") from e
    finally:
        tmp.unlink(missing_ok=True)
    return {"tokens": len(tokens), "seconds": secs, "file": out_file}


def remove_stale_temps(out: Path) -> list[Path]:
    """Delete temporary files a killed `cache-prompt` left beside ``out`` (its pid is gone)."""
    removed = []
    if os.name == "nt":  # no signal-0 probe there; Windows is untested
        return removed
    for f in out.parent.glob(f".{out.stem}.phiflash-tmp-*.safetensors"):
        pid = f.name.rsplit("phiflash-tmp-", 1)[1].split(".", 1)[0]
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            f.unlink(missing_ok=True)
            removed.append(f)
        except OSError:  # alive (owned by another user) or unknown: leave it
            pass
    return removed
