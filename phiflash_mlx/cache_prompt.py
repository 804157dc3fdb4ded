"""Prompt caches in mlx-lm's file format: writing one (`phiflash cache-prompt`) and reading it.

A file holds the cache of every layer and, in its metadata, the prompt's token ids
(``phiflash_tokens``), so a later prompt can be checked to continue it: a Mamba state cannot
be rewound, so only a prompt that extends the cached one may reuse it.
"""

from __future__ import annotations

import json
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
    tokens: list[int]
    metadata: dict
    _layers: list  # (cache class, state) per layer

    def fresh_cache(self) -> list:
        import mlx.core as mx
        from mlx.utils import tree_map

        def copy(x):
            return mx.array(x) if isinstance(x, mx.array) else x

        return [cls.from_state(tree_map(copy, state)) for cls, state in self._layers]


def read_prompt_cache(path: str) -> PromptCacheFile:
    """Read a file written by `phiflash cache-prompt`, or raise one clear PromptCacheError."""
    from mlx_lm.models.cache import load_prompt_cache

    if not Path(path).is_file():
        raise PromptCacheError(f"prompt cache file not found: {path}")
    try:
        cache, meta = load_prompt_cache(path, return_metadata=True)
    except Exception as e:
        raise PromptCacheError(f"{path} is not a prompt cache ({e})") from e
    if "phiflash_tokens" not in meta:
        raise PromptCacheError(f"{path} was not made by `phiflash cache-prompt`")
    layers = [(type(c), c.state) for c in cache]
    return PromptCacheFile(str(path), json.loads(meta["phiflash_tokens"]), dict(meta), layers)


def cache_prompt(
    model_path,
    prompt: str,
    out_file: str,
    system_prompt: str | None = None,
    chat_template: bool = True,
    prefill_step_size: int = 2048,
) -> dict:
    """Run the prompt through the model and save its cache with the prompt's token ids.

    With the chat template, the saved prefix is the rendered user turn without the
    generation prompt, so `phiflash generate --prompt-cache-file` can append to it.
    Returns {"tokens": n, "seconds": t, "file": out_file}.
    """
    import mlx.core as mx
    from mlx_lm.models.cache import make_prompt_cache, save_prompt_cache

    from phiflash_mlx.load import load_model, load_tokenizer

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
        "model": str(model_path),
        "phiflash_tokens": json.dumps(tokens),
        "phiflash_prompt": prompt,
        "phiflash_system": system_prompt or "",
        "phiflash_chat_template": "1" if chat_template else "0",
    }
    save_prompt_cache(out_file, cache, meta)
    return {"tokens": len(tokens), "seconds": secs, "file": out_file}
