"""`phiflash pull` / `list` / `rm`: the user's model store (:mod:`phiflash.store`).

``pull`` downloads a hub checkpoint once (huggingface_hub's cache: progress bars, resumable,
offline when cached) and converts it once into the store, in the format this machine runs
fastest; ``list`` shows what is pulled; ``rm`` removes a pulled model. A pulled model is then
found by its repo id, alias or name: ``phiflash chat --model microsoft/Phi-4-mini-flash-reasoning``.
"""

from __future__ import annotations

import argparse
import sys
import time

from phiflash.console import command_main
from phiflash.errors import PhiflashError
from phiflash.paths import ALIASES, REAL_MODEL, hub_snapshot, repo_id_for
from phiflash.store import (
    CPU_FORMAT,
    FORMATS,
    GPU_FORMAT,
    Entry,
    default_format,
    dir_size,
    entry_dir,
    entry_name,
    load_manifest,
    lookup,
    mlx_has_gpu,
    models_dir,
    record,
    remove,
)

# format -> keyword arguments of the converter (phiflash.quantize.convert / gguf_convert)
MLX_ARGS = {
    "mlx-4bit": dict(quantize=True, q_bits=4, q_group_size=64),
    "mlx-8bit": dict(quantize=True, q_bits=8, q_group_size=64),
    "mlx-bf16": dict(dtype="bfloat16"),
}


def _size(n: int) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 1e8 else f"{n / 1e6:.1f} MB"


def convert_into_store(src, repo: str, fmt: str, progress: bool = True):
    """Convert the checkpoint ``src`` into the store's folder for (repo, fmt); returns the path.

    The converters write temp files beside their output and rename at the end, so an
    interrupted pull leaves no half-made model (and the manifest is written after)."""
    folder = entry_dir(repo, fmt)
    folder.parent.mkdir(parents=True, exist_ok=True)
    if FORMATS[fmt] == "mlx":
        from phiflash.quantize.convert import convert

        convert(src, folder, force=True, progress=progress, **MLX_ARGS[fmt])
        return folder
    from phiflash.quantize.gguf_convert import convert as convert_gguf

    outtype = fmt.removeprefix("gguf-")
    folder.mkdir(parents=True, exist_ok=True)
    out = folder / f"{repo.rsplit('/', 1)[-1]}-{outtype.upper()}.gguf"
    convert_gguf(src, out, outtype, progress=progress, force=True)
    return out


def pull(repo: str, fmt: str | None = None, force: bool = False, progress: bool = True):
    """Pull ``repo`` (hub id or alias) in ``fmt`` (default: this machine's). Returns
    (entry, made): ``made`` is False when it was already pulled (nothing done)."""
    repo_id = repo_id_for(repo)
    if repo_id is None:
        raise PhiflashError(
            f"{repo!r} is not a Hugging Face repo id (org/name) or an alias "
            f"({', '.join(sorted(ALIASES))})"
        )
    fmt = fmt or default_format()
    if fmt not in FORMATS:
        raise PhiflashError(f"unknown --format {fmt!r} (choose from {', '.join(FORMATS)})")
    have = [e for e in lookup(repo_id, fmt) if e.abs_path().exists()]
    if have and not force:
        return have[0], False
    t0 = time.perf_counter()
    src = hub_snapshot(repo_id)  # the HF cache; a download (with progress) when not cached
    if progress:
        print(f"converting {repo_id} to {fmt} into {entry_dir(repo_id, fmt)}", file=sys.stderr)
    path = convert_into_store(src, repo_id, fmt, progress)
    entry = Entry(
        name=entry_name(repo_id, fmt),
        repo=repo_id,
        format=fmt,
        path=str(path.relative_to(models_dir())),
        revision=src.name,
        size_bytes=dir_size(path),
        created=time.time(),
    )
    record(entry)
    entry.seconds = time.perf_counter() - t0
    return entry, True


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="phiflash pull",
        description="Download a model from the Hugging Face hub once and convert it once into "
        "your model store, in the format this machine runs fastest. Afterwards "
        "`phiflash chat --model REPO` (or the alias) runs the pulled model: a pulled model "
        "wins over the Hugging Face cache and the alias. "
        f"Store: {models_dir()} (PHIFLASH_MODELS_DIR moves it).",
    )
    p.add_argument(
        "repo",
        nargs="?",
        default=REAL_MODEL,
        help=f"hub repo id or alias (default {REAL_MODEL}; alias phi4-flash)",
    )
    p.add_argument(
        "--format",
        choices=list(FORMATS),
        default=None,
        help=f"what to make (default here: {default_format()}; {GPU_FORMAT} where MLX has a GPU "
        f"such as Apple silicon, else {CPU_FORMAT}: see the README)",
    )
    p.add_argument("--force", action="store_true", help="convert again even if already pulled")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    fmt = args.format or default_format()
    if FORMATS[fmt] == "mlx" and fmt != "mlx-bf16" and not mlx_has_gpu():
        print(
            f"note: MLX has no GPU here; {fmt} will run slowly (the GGUF engine is the fast path "
            f"without a GPU: --format {CPU_FORMAT})",
            file=sys.stderr,
        )
    entry, made = pull(args.repo, fmt, args.force, progress=not args.quiet)
    if not made:
        print(f"{entry.name} is already pulled ({entry.abs_path()}); --force converts it again")
        return 0
    print(
        f"pulled {entry.name}: {_size(entry.size_bytes)} in {entry.seconds:.0f} s -> "
        f"{entry.abs_path()}\nrun it: phiflash chat --model {entry.repo}"
    )
    return 0


def list_main(argv=None) -> int:
    p = argparse.ArgumentParser(
        prog="phiflash list", description=f"The models made by `phiflash pull` ({models_dir()})."
    )
    p.parse_args(argv)
    entries = load_manifest()
    if not entries:
        print(f"no pulled models (get one: phiflash pull {REAL_MODEL})")
        return 0
    rows = [("NAME", "REPO", "FORMAT", "SIZE", "PULLED")]
    for e in entries:
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(e.created)) if e.created else ""
        size = _size(e.size_bytes) if e.abs_path().exists() else "missing"
        rows.append((e.name, e.repo, e.format, size, when))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
    return 0


def rm_main(argv=None) -> int:
    p = argparse.ArgumentParser(
        prog="phiflash rm",
        description="Remove a pulled model (its download stays in the Hugging Face cache: "
        "`hf cache rm model/ORG/NAME` frees it).",
    )
    p.add_argument("name", help="a name from `phiflash list`, or a repo id / alias (all formats)")
    p.add_argument("--format", choices=list(FORMATS), default=None, help="only this format")
    args = p.parse_args(argv)
    for e in remove(args.name, args.format):
        print(f"removed {e.name} ({_size(e.size_bytes)})")
    return 0


if __name__ == "__main__":
    command_main(main)
