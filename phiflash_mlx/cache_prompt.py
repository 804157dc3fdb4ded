"""`phiflash cache-prompt`: process a prompt once and save the cache (mlx-lm's format)."""

from __future__ import annotations

import argparse
import json
import sys
import time


def cache_prompt(
    model_path,
    prompt: str,
    out_file: str,
    system_prompt: str | None = None,
    chat_template: bool = True,
) -> dict:
    """Run the prompt through the model and save its cache with the prompt's token ids.

    With the chat template, the saved prefix is the rendered user turn without the
    generation prompt, so `phiflash generate --prompt-cache-file` can append to it.
    Returns {"tokens": n, "seconds": t, "file": out_file}.
    """
    import mlx.core as mx
    from mlx_lm.models.cache import make_prompt_cache, save_prompt_cache

    from phiflash_mlx.engine import MLXEngine

    engine = MLXEngine(model_path)
    if chat_template:
        # The new question is appended to this user message after a blank line, which keeps
        # the token boundary stable (BPE never merges across the newlines).
        prompt = prompt + "\n\n"
        messages = [{"role": "system", "content": system_prompt}] if system_prompt else []
        text = engine.tokenizer.apply_chat_template(
            messages + [{"role": "user", "content": prompt}],
            tokenize=False,
            add_generation_prompt=False,
        ).rsplit("<|end|>", 1)[0]
    else:
        text = prompt
    tokens = engine.encode(text)
    cache = make_prompt_cache(engine.model)
    t0 = time.perf_counter()
    step = engine.prefill_step_size
    for s in range(0, len(tokens), step):
        engine.model(mx.array(tokens[s : s + step])[None], cache=cache)
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


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        prog="phiflash cache-prompt",
        description="Pre-process a prompt and save the model state, like mlx_lm.cache_prompt. "
        "Reuse it with `phiflash generate --prompt-cache-file FILE --prompt REST`, where the "
        "new prompt continues the cached one (a Mamba state cannot be rewound).",
    )
    p.add_argument("--model", default=None, help="model dir (default: the bundled model)")
    p.add_argument("--prompt", "-p", required=True, help="prompt to cache ('-' = stdin)")
    p.add_argument("--system-prompt", default=None)
    p.add_argument("--ignore-chat-template", action="store_true")
    p.add_argument("--prompt-cache-file", required=True, help="output .safetensors file")
    args = p.parse_args(argv)
    from phiflash.paths import resolve_model

    prompt = sys.stdin.read() if args.prompt == "-" else args.prompt
    r = cache_prompt(
        resolve_model(args.model),
        prompt,
        args.prompt_cache_file,
        args.system_prompt,
        not args.ignore_chat_template,
    )
    print(
        f"Saved {r['tokens']} prompt tokens to {r['file']} "
        f"({r['tokens'] / max(r['seconds'], 1e-9):.1f} tokens-per-sec)"
    )
    return 0
