"""Quick correctness check of the GPU paths on the device: fixture logits in float32 with the
CUDA scan kernel against golden, and kernel vs portable scan."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import mlx.core as mx  # noqa: E402
import numpy as np  # noqa: E402

from phiflash_mlx import load  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
TINY = ROOT / "tests" / "fixtures" / "sambay-tiny"
g = dict(np.load(TINY / "golden.npz"))
print("device", mx.default_device(), "cuda", mx.cuda.is_available())
for dtype in (mx.float32, None):
    model, tok = load(TINY, dtype=dtype)
    lg = np.array(model(mx.array(g["prompt_ids"])[None])[0].astype(mx.float32))
    err = np.abs(lg - g["logits_prefill"]).max()
    cache = model.make_cache()
    b = g["chunk_bounds"]
    rows = [
        model(mx.array(g["prompt_ids"][a:c])[None], cache=cache)[0, -1]
        for a, c in zip(b[:-1], b[1:])
    ]
    ch = np.array(mx.stack(rows).astype(mx.float32))
    rows = [model(mx.array([[int(t)]]), cache=cache)[0, -1] for t in g["decode_ids"]]
    dec = np.array(mx.stack(rows).astype(mx.float32))
    m = np.abs(g["logits_prefill"]).max()
    print(
        dtype,
        "prefill rel",
        err / m,
        "chunked rel",
        np.abs(ch - g["logits_chunked"]).max() / m,
        "decode rel",
        np.abs(dec - g["logits_decode"]).max() / m,
    )
