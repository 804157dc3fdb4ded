"""The CUDA scan kernels' sources compile, on a machine without a GPU.

MLX's CUDA backend compiles a kernel's body at its first launch, inside a function whose
parameters it writes from the inputs and outputs (``const float* u``, ..., ``float* y``) and
whose template arguments become ``constexpr int`` lines. This test writes the same function
around each of the model's CUDA sources (``_CUDA_KERNELS``) and compiles it to PTX with nvcc,
so a syntax or type error shows here rather than on the first prompt on a GPU. Whether the
kernels compute the right numbers is tests/test_gpu.py's part (on a GPU) and, for their math
and wiring, tests/test_metal_scan.py's (on a CPU).
"""

import shutil
import subprocess

import pytest

from phiflash_mlx import model as model_mod

NVCC = shutil.which("nvcc")


def kernel_function(name: str, inputs: list[str], outputs: list[str], body: str) -> str:
    params = [f"const {'int' if x == 'dims' else 'float'}* {x}" for x in inputs]
    params += [f"float* {x}" for x in outputs]
    head = f"__global__ void {name}({', '.join(params)}) {{\n"
    return head + "  constexpr int DI = 5120;\n  constexpr int NS = 16;\n" + body + "\n}\n"


@pytest.mark.skipif(NVCC is None, reason="needs nvcc (the CUDA toolkit)")
@pytest.mark.parametrize("which", sorted(model_mod._CUDA_KERNELS))
def test_cuda_kernel_source_compiles(tmp_path, which):
    name, inputs, outputs, body = model_mod._CUDA_KERNELS[which]
    src = tmp_path / f"{which}.cu"
    src.write_text(kernel_function(name, inputs, outputs, body))
    proc = subprocess.run(
        [
            NVCC,
            "-arch=sm_80",
            "-ptx",
            "-Werror",
            "all-warnings",
            str(src),
            "-o",
            str(tmp_path / "k.ptx"),
        ],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
