"""Run the model's CUDA kernel sources on a CPU: a small warp emulator for tests.

Each kernel body (``phiflash_mlx.model._CUDA_KERNELS``) is wrapped in the function MLX's CUDA
backend writes around it (``const float* u, ...``, outputs last, template arguments as
``constexpr int``) and compiled with g++ next to a few lines that stand in for CUDA: the
thread and block indices are thread-local variables, every warp runs as 32 OS threads, and
``__shfl_xor_sync`` exchanges values through the warp's buffer between two barriers (so all
32 lanes must reach each shuffle, as on a GPU: a divergent shuffle hangs here). Blocks and
warps run one after another, which the kernels allow (no shared memory, no block barriers).

``kernel(which)`` returns a callable with the signature MLX's kernels have, so a test can
monkeypatch ``phiflash_mlx.model._cuda_kernel`` (or ``_step_kernel``, the decode-step kernels)
and run the model's own launch code.
"""

from __future__ import annotations

import atexit
import shutil
import subprocess
import tempfile
from functools import cache
from pathlib import Path

import mlx.core as mx
import numpy as np

from phiflash_mlx import model as model_mod

GXX = shutil.which("g++")

_PRELUDE = r"""
#include <math.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <barrier>
#include <thread>
#include <vector>

struct Idx { int x, y, z; };
thread_local Idx threadIdx, blockIdx, blockDim;
struct Warp { std::barrier<> bar{32}; float buf[32]; };
thread_local Warp* warp_;
thread_local int lane_;

float __shfl_xor_sync(unsigned, float v, int off) {
    warp_->buf[lane_] = v;
    warp_->bar.arrive_and_wait();
    float r = warp_->buf[lane_ ^ off];
    warp_->bar.arrive_and_wait();
    return r;
}
"""

_MAIN = r"""
static void* load(const char* path, size_t bytes) {
    void* p = malloc(bytes ? bytes : 1);
    FILE* f = fopen(path, "rb");
    if (!f || fread(p, 1, bytes, f) != bytes) { fprintf(stderr, "read %s\n", path); exit(2); }
    fclose(f);
    return p;
}

int main(int argc, char** argv) {
    // argv: dir, grid threads, then the byte size of every input and output in order
    const char* dir = argv[1];
    int threads = atoi(argv[2]);
    char path[4096];
@LOADS@
    for (int block = 0; block < threads / 128; ++block) {
        for (int w = 0; w < 4; ++w) {
            Warp warp;
            std::vector<std::thread> lanes;
            for (int lane = 0; lane < 32; ++lane) {
                lanes.emplace_back([&, block, w, lane] {
                    threadIdx = {w * 32 + lane, 0, 0};
                    blockIdx = {block, 0, 0};
                    blockDim = {128, 1, 1};
                    warp_ = &warp;
                    lane_ = lane;
                    @NAME@(@ARGS@);
                });
            }
            for (auto& t : lanes) t.join();
        }
    }
@SAVES@
    return 0;
}
"""


def kernel_function(
    name: str, inputs: list[str], outputs: list[str], body: str, array_type="float", **template
) -> str:
    """The kernel as MLX's CUDA backend writes it (``__global__`` left to the caller): arrays
    of ``array_type`` (``dims`` int), outputs last, the template arguments as ``constexpr int``
    (a dtype argument as ``using T = float;``, or the type named by a string)."""
    params = [f"const {'int' if x == 'dims' else array_type}* {x}" for x in inputs]
    params += [f"{array_type}* {x}" for x in outputs]
    consts = ""
    for k, v in template.items():
        if isinstance(v, mx.Dtype):
            assert v == mx.float32, "the emulator runs float32 kernels"
            consts += f"  using {k} = float;\n"
        elif isinstance(v, str):
            consts += f"  using {k} = {v};\n"
        else:
            consts += f"  constexpr int {k} = {v};\n"
    return f"void {name}({', '.join(params)}) {{\n{consts}\n{body}\n}}\n"


def kernel_source(which: str) -> tuple[str, list[str], list[str], str]:
    """(name, inputs, outputs, body) of a CUDA kernel of the model: one of ``_CUDA_KERNELS``,
    or "step_conv" / "step_scan", the decode-step kernels."""
    if which.startswith("step_"):
        step = which.removeprefix("step_")
        return (*model_mod._STEP_IO[step], model_mod._step_source(step, "cuda"))
    return model_mod._CUDA_KERNELS[which]


@cache
def _build_dir() -> Path:
    """One directory for the process's emulator builds, removed when it exits."""
    path = Path(tempfile.mkdtemp(prefix="cuda-emu-"))
    atexit.register(shutil.rmtree, path, True)
    return path


@cache
def _binary(which: str, template: tuple) -> Path:
    name, inputs, outputs, body = kernel_source(which)
    names = inputs + outputs
    loads = "".join(
        f'    snprintf(path, sizeof path, "%s/{x}.bin", dir);\n'
        f"    {'int' if x == 'dims' else 'float'}* {x} = "
        f"({'int' if x == 'dims' else 'float'}*)load(path, atol(argv[{3 + i}]));\n"
        for i, x in enumerate(inputs)
    ) + "".join(
        f"    float* {x} = (float*)calloc(1, atol(argv[{3 + len(inputs) + i}]) + 1);\n"
        for i, x in enumerate(outputs)
    )
    saves = "".join(
        f'    snprintf(path, sizeof path, "%s/{x}.out", dir);\n'
        f'    {{ FILE* f = fopen(path, "wb"); fwrite({x}, 1, atol(argv[{3 + len(inputs) + i}]), f);'
        f" fclose(f); }}\n"
        for i, x in enumerate(outputs)
    )
    src = (
        _PRELUDE
        + kernel_function(name, inputs, outputs, body, **dict(template))
        + _MAIN.replace("@LOADS@", loads)
        .replace("@SAVES@", saves)
        .replace("@NAME@", name)
        .replace("@ARGS@", ", ".join(names))
    )
    tag = "_".join(f"{k}{v}" for k, v in template if not isinstance(v, mx.Dtype))
    out = _build_dir() / f"{which}{tag}"
    out.with_suffix(".cpp").write_text(src)
    cmd = [GXX, "-std=c++20", "-O1", "-pthread", str(out.with_suffix(".cpp")), "-o", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(f"g++ failed for {which}:\n{proc.stderr[-3000:]}")
    return out


def kernel(which: str):
    """A stand-in for ``mx.fast.cuda_kernel``'s kernel ``which`` that runs its source here."""
    _, input_names, output_names, _ = kernel_source(which)

    def run(*, inputs, template, grid, threadgroup, output_shapes, output_dtypes):
        assert threadgroup == (128, 1, 1) and grid[0] % 128 == 0
        assert all(dt == mx.float32 for dt in output_dtypes)
        binary = _binary(which, tuple(template))
        with tempfile.TemporaryDirectory(prefix="cuda-emu-run-") as tmp:
            sizes = []
            for name, x in zip(input_names, inputs):
                a = np.ascontiguousarray(np.array(x), np.int32 if name == "dims" else np.float32)
                (Path(tmp) / f"{name}.bin").write_bytes(a.tobytes())
                sizes.append(a.nbytes)
            sizes += [int(np.prod(s)) * 4 for s in output_shapes]
            subprocess.run(
                [str(binary), tmp, str(grid[0]), *map(str, sizes)], check=True, timeout=120
            )
            return [
                mx.array(np.fromfile(Path(tmp) / f"{name}.out", np.float32).reshape(shape))
                for name, shape in zip(output_names, output_shapes)
            ]

    return run
