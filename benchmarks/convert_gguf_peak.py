"""Peak disk and memory of `phiflash convert-gguf` at the real model's size.

Writes a random checkpoint with the real model's names, shapes and dtypes (about 7.7 GB, kept
in WORKDIR/ckpt for later runs), then runs `phiflash convert-gguf` on it while polling, every
0.2 s, the disk used in the output folder (temp files included) and the RSS of the converter
and its quantizer child. Prints one JSON line.

    python benchmarks/convert_gguf_peak.py WORKDIR [--outtype q4_0]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import _common


def _tree(pid: int) -> list[int]:
    """``pid`` and its descendants (Linux /proc)."""
    kids: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        kids.setdefault(ppid, []).append(int(stat.parent.name))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo += kids.get(p, [])
    return out


def _rss(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _disk(folder: Path) -> int:
    total = 0
    for f in folder.iterdir():
        try:
            total += f.stat().st_blocks * 512
        except OSError:
            pass
    return total


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("workdir", type=Path)
    ap.add_argument("--outtype", default="q4_0")
    args = ap.parse_args()
    _common.use_project()
    sys.path.insert(0, str(_common.ROOT / "tests"))
    from test_gguf_errors import write_random_checkpoint

    from phiflash.checkpoint import REQUIRED_SIZES

    ckpt = args.workdir / "ckpt"
    if not ckpt.exists():
        real = json.loads(_common.REAL_CONFIG.read_text())
        keys = (*REQUIRED_SIZES, "sliding_window", "max_position_embeddings")
        write_random_checkpoint(ckpt, **{k: real[k] for k in keys})
    out_dir = args.workdir / "out"
    out_dir.mkdir(exist_ok=True)
    out = out_dir / f"model-{args.outtype}.gguf"
    cmd = [sys.executable, "-m", "phiflash.cli", "convert-gguf", "--hf-path", str(ckpt)]
    cmd += ["--outfile", str(out), "--outtype", args.outtype, "--quiet", "--force"]
    out.unlink(missing_ok=True)
    before = _disk(out_dir)  # other files already there do not count
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=_common.ROOT)
    peak_disk = peak_rss = 0
    while proc.poll() is None:
        peak_disk = max(peak_disk, _disk(out_dir) - before)
        peak_rss = max(peak_rss, sum(_rss(p) for p in _tree(proc.pid)))
        time.sleep(0.2)
    ck_bytes = sum(f.stat().st_size for f in ckpt.glob("*.safetensors"))
    result = {
        "outtype": args.outtype,
        "rc": proc.returncode,
        "wall_s": round(time.perf_counter() - t0, 1),
        "checkpoint_GB": round(ck_bytes / 1e9, 2),
        "peak_disk_GB": round(peak_disk / 1e9, 2),
        "output_GB": round(out.stat().st_size / 1e9, 2) if out.exists() else None,
        "peak_rss_GB": round(peak_rss / 1e9, 2),
    }
    print(json.dumps(result))
    return proc.returncode


if __name__ == "__main__":
    sys.exit(main())
