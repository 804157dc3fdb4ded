"""The portable selective scan against the rest of a prompt prefill, on MLX's CPU backend.

A model with random weights (float32: MLX's CPU matmuls are ~20x slower in bfloat16) prefills
one chunk of ``--tokens`` tokens the way mlx-lm does (one model call, cache states evaluated,
no logits). The scan is timed inside the prefill: its inputs are evaluated before it starts and
its outputs when it ends, so "scan" is the time of the Mamba layers' selective scans and
"rest" everything else of the same prefill. Every scan implementation runs in every repeat,
interleaved in an order that rotates from repeat to repeat (the CPU may be shared), and the
table gives medians:

* ``numpy``: the CPU prompt path (``ssm_scan_numpy``: each segment's decays in one vectorized
  numpy call, the recurrence in place);
* ``chunked``: the portable MLX scan, the former CPU prompt path and still the one of a GPU
  without a scan kernel (``ssm_scan_chunked``: blocks scanned side by side, each decay
  computed once), measured in the same run as the baseline;
* ``logdepth``: the scan before that (blocks of 64, a log-depth scan over full states);
* ``numpy-fullmask``: the prompt path with the sliding-window layers attending over the
  whole prompt under a window mask (the former attention), instead of in bands.

With ``--ref REV`` the model file of that git revision (``phiflash_mlx/model.py``) runs the
``numpy`` variant too, on the same weights, in the same rotation (row ``ref REV``), and the
largest difference between the two prefills' cache states is printed.

    python benchmarks/bench_prefill_cpu.py --width tutor
    python benchmarks/bench_prefill_cpu.py --width real --layers 8
    python benchmarks/bench_prefill_cpu.py --variants numpy --ref HEAD~1 --repeat 9
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import _common  # noqa: F401  (first: the project on the path, OpenBLAS loaded before mlx)
import mlx.core as mx
from _common import ROOT, machine_line, paths_off, real_config
from mlx.utils import tree_flatten
from mlx_lm.models.cache import make_prompt_cache

from phiflash_mlx import model as model_mod

TUTOR_CONFIG = ROOT / "weights" / "phiflash-tutor" / "config.json"
VARIANTS = {  # name: (the CPU's prompt scan, banded sliding-window prefill)
    "numpy": ("numpy", True),
    "chunked": ("chunked", True),
    "logdepth": ("logdepth", True),
    "numpy-fullmask": ("numpy", False),
}


def config(width: str, layers: int | None) -> dict:
    cfg = json.loads(TUTOR_CONFIG.read_text()) if width == "tutor" else real_config()
    if layers:
        if layers % 2:
            raise SystemExit("--layers must be even (Mamba and attention layers alternate)")
        cfg["num_hidden_layers"] = layers
        cfg.pop("layer_types", None)
        if isinstance(cfg.get("sliding_window"), list):
            cfg["sliding_window"] = next(w for w in cfg["sliding_window"] if w)
    return cfg


def model_at(rev: str):
    """``phiflash_mlx/model.py`` as of git revision ``rev``, imported as its own module."""
    got = subprocess.run(
        ["git", "-C", str(ROOT), "show", f"{rev}:phiflash_mlx/model.py"],
        capture_output=True,
        text=True,
    )
    if got.returncode:
        raise SystemExit(f"--ref {rev}: {got.stderr.strip() or 'git show failed'}")
    src = got.stdout
    with tempfile.TemporaryDirectory(prefix="phiflash-ref-") as tmp:
        path = Path(tmp) / "model_ref.py"
        path.write_text(src)
        spec = importlib.util.spec_from_file_location("model_ref", path)
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
    return mod


def prefill(model, tokens, variant, mod=model_mod) -> tuple[float, float, list]:
    """(total seconds, seconds inside the selective scans, cache) of one prefill chunk run by
    the model file ``mod``."""
    scan, banded = VARIANTS[variant]
    numpy_scan = mod.ssm_scan_numpy
    scan = getattr(mod, f"ssm_scan_{scan}")
    spent = [0.0]
    plain = mod.selective_scan

    def timed_scan(*args, **kw):
        mx.eval(args)
        t = time.perf_counter()
        out = plain(*args, **kw)
        mx.eval(out)
        spent[0] += time.perf_counter() - t
        return out

    mod.ssm_scan_numpy, mod.selective_scan = scan, timed_scan
    try:
        with paths_off(mod, *([] if banded else ["BANDED_WINDOW_PREFILL"])):
            cache = make_prompt_cache(model)
            t = time.perf_counter()
            model(tokens, cache=cache)
            mx.eval([c.state for c in cache])
            total = time.perf_counter() - t
    finally:
        mod.ssm_scan_numpy, mod.selective_scan = numpy_scan, plain
    return total, spent[0], cache


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--width", choices=("tutor", "real"), default="tutor")
    p.add_argument("--layers", type=int, default=None, help="fewer layers (even), same widths")
    p.add_argument("--tokens", type=int, default=2048)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--variants", default="numpy,chunked,numpy-fullmask")
    p.add_argument("--ref", default=None, help="git revision whose model file runs too")
    a = p.parse_args(argv)
    mx.set_default_device(mx.cpu)
    cfg = config(a.width, a.layers)
    args = model_mod.ModelArgs.from_dict(cfg)
    mx.random.seed(0)
    model = model_mod.Model(args)
    model.eval()
    mx.eval(model.parameters())
    n_scan = sum(layer.kind in ("mamba", "mamba_mem") for layer in model.layers)
    tokens = mx.random.randint(0, args.vocab_size, (1, a.tokens))
    names = a.variants.split(",")
    if unknown := [n for n in names if n not in VARIANTS]:
        raise SystemExit(f"unknown --variants {unknown}; choose from {list(VARIANTS)}")
    runners = {name: (model, name, model_mod) for name in names}
    if a.ref:
        ref = model_at(a.ref)
        ref_model = ref.Model(ref.ModelArgs.from_dict(cfg))
        ref_model.eval()
        ref_model.load_weights(tree_flatten(model.parameters()))
        runners[f"ref {a.ref}"] = (ref_model, "numpy", ref)
        names.append(f"ref {a.ref}")
    states = {}
    for name, (m, variant, mod) in runners.items():  # warm-up: compiles every kernel shape
        cache = prefill(m, tokens, variant, mod)[2]
        states[name] = [v for _, v in tree_flatten([c.state for c in cache])]
    if a.ref:
        diff = max(
            float(mx.abs(x - y).max())
            for x, y in zip(states[names[0]], states[names[-1]])
            if x is not None
        )
        print(f"largest cache-state difference, {names[0]} vs {names[-1]}: {diff:.3g}")
    runs = {name: [] for name in names}
    for rep in range(a.repeat):  # the order rotates: a load that drifts favours no variant
        for name in names[rep % len(names) :] + names[: rep % len(names)]:
            m, variant, mod = runners[name]
            runs[name].append(prefill(m, tokens, variant, mod)[:2])
            print(name, json.dumps(runs[name][-1]), flush=True)
    print()
    print(f"{datetime.now(UTC):%Y-%m-%d}, MLX {mx.__version__} CPU, {machine_line()}")
    print(
        f"width {a.width}: hidden {args.hidden_size},"
        f" d_inner {args.mamba_expand * args.hidden_size}"
        f", {args.num_hidden_layers} layers ({n_scan} with a scan), float32, one {a.tokens}-token"
        f" prefill, medians of {a.repeat}"
    )
    print("| variant | prefill s | scan s | rest s | scan share |\n|---|---|---|---|---|")
    med = {}
    for name in names:
        total = statistics.median(r[0] for r in runs[name])
        scan = statistics.median(r[1] for r in runs[name])
        med[name] = (total, scan)
        print(f"| {name} | {total:.2f} | {scan:.2f} | {total - scan:.2f} | {scan / total:.0%} |")
    for new, old in (("numpy", "chunked"), ("chunked", "logdepth")):
        if new in med and old in med:
            print(f"scan speed-up {new} vs {old}: {med[old][1] / med[new][1]:.2f}x")
    if "numpy" in med and "numpy-fullmask" in med:
        r = med["numpy-fullmask"][0] / med["numpy"][0]
        print(f"prefill speed-up banded vs full-mask sliding windows: {r:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
