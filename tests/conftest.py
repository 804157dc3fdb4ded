import os
from pathlib import Path

import pytest

# the shared test helpers assert too: rewrite them as pytest does test modules (before any import)
pytest.register_assert_rewrite("serve_util", "tui_util")

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

FIXTURES = Path(__file__).parent / "fixtures"
TINY = FIXTURES / "sambay-tiny"
REAL_CONFIG = FIXTURES / "real-config"


def scan_inputs(b=2, T=40, d=24, n=16, seed=0):
    """Random u, dt, A, B, C, D and incoming state of a selective scan (seeded)."""
    import mlx.core as mx

    mx.random.seed(seed)
    return (
        mx.random.normal((b, T, d)),
        mx.random.uniform(0.0, 0.3, (b, T, d)),
        -mx.exp(mx.random.normal((d, n))),
        mx.random.normal((b, T, n)),
        mx.random.normal((b, T, n)),
        mx.random.normal((d,)),
        mx.random.normal((b, d, n)),
    )


def assert_portable(out, args, **tol):
    """A scan's (y, state) ``out`` equals the portable chunked scan's on ``args`` (``tol``:
    numpy's assert_allclose tolerances)."""
    import numpy as np

    from phiflash_mlx.model import ssm_scan_chunked

    for got, want in zip(out, ssm_scan_chunked(*args)):
        np.testing.assert_allclose(np.array(got), np.array(want), **tol)


@pytest.fixture(scope="session")
def golden():
    import numpy as np

    return dict(np.load(TINY / "golden.npz"))


@pytest.fixture(scope="session")
def tiny_fp32():
    import mlx.core as mx

    from phiflash_mlx import load

    return load(TINY, dtype=mx.float32)


@pytest.fixture(scope="session")
def tiny_bf16():
    from phiflash_mlx import load

    return load(TINY)


@pytest.fixture
def store(tmp_path):
    """The chat's history store in a fresh folder (the TUI tests)."""
    from phiflash.tui.history import HistoryStore

    s = HistoryStore(tmp_path / "history.sqlite3")
    yield s
    s.close()
