"""How close the fork runs the sambay-tiny fixture to its golden logits, as numbers.

``tests/test_gguf_fork.py`` asserts the bar (1e-4); this prints what is reached: max |logits -
golden| / max |golden| over every prompt row and over every decode step, for an F32 GGUF with
an F32 KV cache, flash attention on and off.

    python benchmarks/gguf_golden_error.py
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import numpy as np

TINY = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "sambay-tiny"


def rel(a: np.ndarray, ref: np.ndarray) -> float:
    return float(np.abs(a - ref).max() / np.abs(ref).max())


def main() -> int:
    from phiflash.quantize.gguf_convert import convert
    from phiflash_gguf.build import FORK_VERSION, ensure_llama_cpp

    lc = ensure_llama_cpp()
    golden = dict(np.load(TINY / "golden.npz"))
    ids = golden["prompt_ids"].tolist()
    with tempfile.TemporaryDirectory() as tmp:
        path = convert(TINY, Path(tmp) / "tiny-f32.gguf", "f32", progress=False)
        print(f"llama-cpp-python {FORK_VERSION}, sambay-tiny F32 GGUF, F32 KV cache")
        for fa in (True, False):
            llm = lc.Llama(str(path), n_ctx=256, n_batch=128, logits_all=True, flash_attn=fa,
                           n_threads=2, verbose=False, type_k=lc.GGML_TYPE_F32,
                           type_v=lc.GGML_TYPE_F32)  # fmt: skip
            llm.eval(ids)
            prefill = rel(np.array(llm.scores[: len(ids)]), golden["logits_prefill"])
            steps = []
            for t in golden["decode_ids"].tolist():
                llm.eval([t])
                steps.append(np.array(llm.scores[llm.n_tokens - 1]))
            decode = rel(np.stack(steps), golden["logits_decode"])
            print(f"flash attention {'on ' if fa else 'off'}: prefill (all {len(ids)} rows) "
                  f"{prefill:.2e}, decode ({len(steps)} steps) {decode:.2e}")  # fmt: skip
            llm.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
