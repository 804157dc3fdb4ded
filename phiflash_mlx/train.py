"""``phiflash train``: train a small SambaY (phi4flash) model from scratch on tutor dialogues.

The model is the inference :class:`phiflash_mlx.model.Model` itself (in training mode the
selective scan runs through the differentiable chunked scan). Data comes from
:mod:`phiflash.tutor.data` (train split only), tokenized with a tutor tokenizer dir
(:mod:`phiflash.tutor.tokenizer`); the loss covers only the assistant's tokens (its reply and
the closing ``<|end|>``). AdamW with linear warm-up and cosine decay, global-norm gradient
clipping, fp32 master weights (bf16 optional), checkpoints with optimizer state for
``--resume``, periodic held-out evaluation (teacher-forced exact match, which equals greedy
reproduction of the reference solution, and a real batched greedy decode), and export of the
final model as a Hugging Face-layout checkpoint like the real one (config.json with model_type
phi4flash, model.safetensors with the real tensor names in bf16 with ``A_log`` and ``lambda_*``
in float32, the tokenizer files, generation_config.json).

Library use::

    from phiflash_mlx.train import TrainConfig, train
    result = train(TrainConfig(out_dir="runs/tutor", steps=2000))
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import math
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from phiflash.blas import preload_openblas

preload_openblas()

import mlx.core as mx  # noqa: E402
import mlx.nn as nn  # noqa: E402
import mlx.optimizers as optim  # noqa: E402
import numpy as np  # noqa: E402
from mlx.utils import tree_flatten, tree_map, tree_unflatten  # noqa: E402

from phiflash.tutor.data import KINDS, kinds_arg  # noqa: E402
from phiflash_mlx.load import TOKENIZER_FILES  # noqa: E402
from phiflash_mlx.model import Model, ModelArgs, keeps_fp32  # noqa: E402

# The bundled tutor model's architecture: every dimension of the real model is present.
TUTOR_MODEL = dict(
    vocab_size=704,
    hidden_size=256,
    intermediate_size=448,
    num_hidden_layers=12,
    num_attention_heads=8,
    num_key_value_heads=4,
    sliding_window=128,
    mb_per_layer=2,
    mamba_d_state=16,
    mamba_d_conv=4,
    mamba_expand=2,
    max_position_embeddings=4096,
)
# A small variant that trains on a CPU in tens of minutes.
SMALL_MODEL = dict(
    TUTOR_MODEL,
    hidden_size=128,
    intermediate_size=384,
    num_hidden_layers=8,
    num_attention_heads=8,
    num_key_value_heads=4,
    sliding_window=64,
)
# A tiny variant for tests and CPU smoke runs.
TINY_MODEL = dict(
    TUTOR_MODEL,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=2,
    sliding_window=16,
)
REPO = Path(__file__).resolve().parent.parent
DEFAULT_TOKENIZER = REPO / "weights" / "phiflash-tutor"


@dataclass
class TrainConfig:
    out_dir: str = "runs/tutor"
    init_from: str | None = None  # start from the weights of an exported model dir
    tokenizer: str = str(DEFAULT_TOKENIZER)
    model: dict = field(default_factory=lambda: dict(TUTOR_MODEL))
    steps: int = 3000
    batch_size: int = 64
    lr: float = 2e-3
    min_lr_ratio: float = 0.05
    warmup: int = 100
    weight_decay: float = 0.05
    betas: tuple = (0.9, 0.98)
    clip: float = 1.0
    dtype: str = "float32"  # parameter dtype while training: float32 or bfloat16
    seed: int = 0
    max_len: int = 1024  # longest training sequence (tokens); longer dialogues are dropped
    chunk: int = 4096  # examples generated per data chunk (sorted by length into batches)
    kinds: tuple[str, ...] = KINDS  # problem-kind mix, round-robin; repeat a kind to oversample
    workers: int = 0  # data threads (0 = generate in the training loop)
    eval_every: int = 250
    eval_n: int = 192  # held-out problems for the teacher-forced exact match
    greedy_every: int = 0  # 0 = only at the end
    greedy_n: int = 96  # per eval set (problems, phrasings, follow-ups, refusals): greedy decode
    ckpt_every: int = 250
    time_limit: float = 0.0  # seconds; stop (and export) when exceeded; 0 = none
    # seconds of training: the lr decays over this wall time (not over ``steps``, then a cap),
    # and training stops (exports, evaluates) when it is spent; 0 = schedule by steps
    train_seconds: float = 0.0
    export_dir: str | None = None  # default: <out_dir>/model
    export_tokenizer: bool = True  # copy the tokenizer files into the export dir
    resume: bool = False
    stop_after: int = 0  # stop (checkpoint + export) after this many steps of this run; 0 = none
    micro_tokens: int = 8192  # tokens per forward/backward (batch rows are split to fit)
    compile: bool = False  # mx.compile of the step: JIT of the fused kernels is very slow on CUDA
    progress: bool | None = None
    log_every: int = 10


# ------------------------------------------------------------------------------ model set-up


def model_args(model: dict) -> ModelArgs:
    return ModelArgs.from_dict(dict(model, model_type="phi4flash"))


def init_model(args: ModelArgs, seed: int = 0, dtype=mx.float32) -> Model:
    """A fresh model with the HF Phi4Flash initialisation (normal(0, 0.02) matrices, zero
    biases, Mamba's log-uniform dt bias in [1e-3, 0.1], S4D-real A, normal(0, 0.1) lambdas)."""
    mx.random.seed(seed)
    model = Model(args)
    params = dict(tree_flatten(model.parameters()))
    new = {}
    for name, p in params.items():
        leaf = name.rsplit(".", 1)[-1]
        parent = name.rsplit(".", 2)[-2] if name.count(".") >= 1 else ""
        if leaf in ("lambda_q1", "lambda_k1", "lambda_q2", "lambda_k2"):
            v = 0.1 * mx.random.normal(p.shape)
        elif leaf in ("A_log", "D"):
            v = p
        elif parent == "conv1d":
            bound = 1.0 / math.sqrt(args.mamba_d_conv)
            v = mx.random.uniform(-bound, bound, p.shape)
        elif parent == "dt_proj" and leaf == "bias":
            dt = mx.exp(
                mx.random.uniform(0, 1, p.shape) * (math.log(0.1) - math.log(1e-3)) + math.log(1e-3)
            )
            dt = mx.maximum(dt, 1e-4)
            v = dt + mx.log(-mx.expm1(-dt))  # inverse softplus
        elif parent == "dt_proj":
            bound = args.mamba_dt_rank**-0.5
            v = mx.random.uniform(-bound, bound, p.shape)
        elif "norm" in parent or parent == "subln":
            v = mx.ones(p.shape) if leaf == "weight" else mx.zeros(p.shape)
        elif leaf == "bias":
            v = mx.zeros(p.shape)
        else:
            v = 0.02 * mx.random.normal(p.shape)
        new[name] = v.astype(mx.float32 if keeps_fp32(name) else dtype)
    model.update(tree_unflatten(list(new.items())))
    mx.eval(model.parameters())
    return model


def hf_config(model: dict, special_ids: dict[str, int]) -> dict:
    """config.json in the real checkpoint's layout (scalar sliding_window + layer_types)."""
    args = model_args(model)
    L = args.num_hidden_layers
    eos = special_ids["<|endoftext|>"]
    layer_types = ["sliding_attention" if args.windows[i] else "full_attention" for i in range(L)]
    return {
        "architectures": ["Phi4FlashForCausalLM"],
        "attention_dropout": 0.0,
        "auto_map": {
            "AutoConfig": "configuration_phi4flash.Phi4FlashConfig",
            "AutoModelForCausalLM": "modeling_phi4flash.Phi4FlashForCausalLM",
            "AutoTokenizer": "Xenova/gpt-4o",
        },
        "pad_token_id": eos,
        "bos_token_id": eos,
        "embd_pdrop": 0.0,
        "eos_token_id": eos,
        "hidden_act": "silu",
        "hidden_size": args.hidden_size,
        "initializer_range": 0.02,
        "intermediate_size": args.intermediate_size,
        "layer_norm_eps": args.layer_norm_eps,
        "max_position_embeddings": args.max_position_embeddings,
        "_attn_implementation": "flash_attention_2",
        "mb_per_layer": args.mb_per_layer,
        "mamba_d_state": args.mamba_d_state,
        "mamba_d_conv": args.mamba_d_conv,
        "mamba_expand": args.mamba_expand,
        "mamba_dt_rank": "auto",
        "mamba_conv_bias": args.mamba_conv_bias,
        "mamba_proj_bias": args.mamba_proj_bias,
        "model_type": "phi4flash",
        "num_attention_heads": args.num_attention_heads,
        "num_hidden_layers": L,
        "num_key_value_heads": args.num_key_value_heads,
        "resid_pdrop": 0.0,
        "rope_theta": 10000.0,
        "sliding_window": model["sliding_window"],
        "torch_dtype": "bfloat16",
        "tie_word_embeddings": True,
        "transformers_version": "4.46.1",
        "use_cache": True,
        "mlp_bias": False,
        "lm_head_bias": False,
        "vocab_size": args.vocab_size,
        "layer_types": layer_types,
    }


def export(
    model: Model,
    model_cfg: dict,
    tokenizer_dir,
    out_dir,
    dtype: str = "bfloat16",
    tokenizer_files: bool = True,
):
    """Write ``model`` as a Hugging Face-layout phi4flash checkpoint into ``out_dir``.

    ``model.safetensors`` holds the real tensor names (no lm_head: tied embeddings) in
    ``dtype`` except ``A_log`` and ``lambda_*``, which stay float32 like the real checkpoint.
    """
    from phiflash.tutor.tokenizer import generation_config, special_token_ids

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tok_dir = Path(tokenizer_dir)
    ids = special_token_ids(tok_dir)
    if tokenizer_files and out.resolve() != tok_dir.resolve():
        for name in TOKENIZER_FILES:
            if (tok_dir / name).is_file():
                shutil.copyfile(tok_dir / name, out / name)
    dt = getattr(mx, dtype)
    weights = {
        k: v.astype(mx.float32 if keeps_fp32(k) else dt)
        for k, v in tree_flatten(model.parameters())
    }
    tmp = out / "model.safetensors.tmp.safetensors"
    mx.save_safetensors(str(tmp), weights, metadata={"format": "pt"})
    os.replace(tmp, out / "model.safetensors")
    _write_json(out / "config.json", hf_config(model_cfg, ids))
    _write_json(out / "generation_config.json", generation_config(ids))
    return out


def _write_json(path: Path, obj) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, ensure_ascii=False, indent=2) + "\n")
    os.replace(tmp, path)


# ------------------------------------------------------------------------------ data


class Encoder:
    """Tokenizes tutor examples into (ids, n_prompt): the loss covers ids[n_prompt:]."""

    def __init__(self, tokenizer_dir):
        from tokenizers import Tokenizer

        self.tok = Tokenizer.from_file(str(Path(tokenizer_dir) / "tokenizer.json"))
        self.end = self.tok.token_to_id("<|end|>")

    def encode(self, examples: list[dict]) -> list[tuple[np.ndarray, int]]:
        from phiflash.tutor.data import prompt_messages, render

        prompts = [render(prompt_messages(ex), add_generation_prompt=True) for ex in examples]
        replies = [ex["messages"][-1]["content"] + "<|end|>" for ex in examples]
        p_enc = self.tok.encode_batch(prompts, add_special_tokens=False)
        f_enc = self.tok.encode_batch(
            [p + r for p, r in zip(prompts, replies)], add_special_tokens=False
        )
        out = []
        for p, f in zip(p_enc, f_enc):
            n = len(p.ids)
            if f.ids[:n] != p.ids:  # cannot happen: the prompt ends with a special token
                raise RuntimeError("prompt tokens are not a prefix of the dialogue's tokens")
            out.append((np.asarray(f.ids, dtype=np.int32), n))
        return out

    def encode_prompts(self, examples: list[dict]) -> list[list[int]]:
        from phiflash.tutor.data import prompt_messages, render

        prompts = [render(prompt_messages(ex), add_generation_prompt=True) for ex in examples]
        return [e.ids for e in self.tok.encode_batch(prompts, add_special_tokens=False)]


def bucket_len(n: int, multiple: int = 32) -> int:
    return -(-n // multiple) * multiple


def make_batches(encoded, batch_size: int, max_len: int, seed: int):
    """Sort by length, cut into batches of ``batch_size``, pad each to a multiple of 32 and
    shuffle the batch order. Returns a list of (inputs, targets, mask) numpy arrays."""
    enc = [e for e in encoded if len(e[0]) <= max_len + 1]
    enc.sort(key=lambda e: len(e[0]))
    batches = []
    for s in range(0, len(enc) - batch_size + 1, batch_size):
        group = enc[s : s + batch_size]
        T = bucket_len(max(len(ids) for ids, _ in group) - 1, 64)
        x = np.zeros((batch_size, T), np.int32)
        y = np.zeros((batch_size, T), np.int32)
        m = np.zeros((batch_size, T), np.float32)
        for i, (ids, n) in enumerate(group):
            L = len(ids) - 1
            x[i, :L] = ids[:-1]
            y[i, :L] = ids[1:]
            m[i, n - 1 : L] = 1.0  # targets ids[n:] are the assistant's tokens
        batches.append((x, y, m))
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(batches))
    return [batches[i] for i in order]


def _chunk_seed(seed: int, chunk: int) -> int:
    return seed * 1_000_003 + chunk


def build_chunk(cfg: TrainConfig, chunk: int):
    """All batches of data chunk ``chunk`` (deterministic in (seed, chunk, kinds))."""
    from phiflash.tutor.data import dataset

    seed, batch_size, max_len = cfg.seed, cfg.batch_size, cfg.max_len
    enc = Encoder(cfg.tokenizer)
    examples = dataset("train", cfg.chunk, _chunk_seed(seed, chunk), kinds=cfg.kinds)
    return make_batches(enc.encode(examples), batch_size, max_len, _chunk_seed(seed, chunk))


class DataStream:
    """Step ``s`` -> batch ``s % K`` of chunk ``s // K``; chunks are built ahead by workers."""

    def __init__(self, cfg: TrainConfig, start_step: int = 0):
        self.cfg = cfg
        self.per_chunk = None
        self.pool = None
        self.futures = {}
        first = build_chunk(cfg, 0)
        self.per_chunk = len(first)
        self.cache = {0: first}
        if cfg.workers > 0:
            # Threads: tokenizers encodes in Rust without the GIL, and mlx waits without it.
            from concurrent.futures import ThreadPoolExecutor

            self.pool = ThreadPoolExecutor(cfg.workers)
        self.step = start_step

    def _submit(self, c: int):
        if self.pool is not None and c not in self.futures and c not in self.cache:
            self.futures[c] = self.pool.submit(build_chunk, self.cfg, c)

    def _get_chunk(self, c: int):
        if c not in self.cache:
            if c in self.futures:
                self.cache[c] = self.futures.pop(c).result()
            else:
                self.cache[c] = build_chunk(self.cfg, c)
        for old in [k for k in self.cache if k < c]:
            del self.cache[old]
        return self.cache[c]

    def next(self):
        c, i = divmod(self.step, self.per_chunk)
        for ahead in range(1, max(2, self.cfg.workers + 1)):
            self._submit(c + ahead)
        batch = self._get_chunk(c)[i]
        self.step += 1
        return batch

    def close(self):
        if self.pool is not None:
            self.pool.shutdown(wait=False, cancel_futures=True)


# ------------------------------------------------------------------------------ loss, eval


def loss_fn(model, x, y, m):
    logits = model(x).astype(mx.float32)
    ce = nn.losses.cross_entropy(logits, y, reduction="none")
    return (ce * m).sum() / mx.maximum(m.sum(), 1.0)


def eval_batches(encoder: Encoder, problems: list[dict], batch_size: int):
    enc = encoder.encode(problems)
    out = []
    for s in range(0, len(enc), batch_size):
        group = enc[s : s + batch_size]
        T = bucket_len(max(len(ids) for ids, _ in group) - 1)
        B = len(group)
        x = np.zeros((B, T), np.int32)
        y = np.zeros((B, T), np.int32)
        m = np.zeros((B, T), np.float32)
        for i, (ids, n) in enumerate(group):
            L = len(ids) - 1
            x[i, :L], y[i, :L] = ids[:-1], ids[1:]
            m[i, n - 1 : L] = 1.0
        out.append((x, y, m, [problems[s + i]["kind"] for i in range(B)]))
    return out


def teacher_forced_eval(model: Model, batches) -> dict:
    """Held-out loss and exact match: the share of problems whose every reply token is the
    argmax given the reference prefix, i.e. greedy decoding reproduces the reference reply
    (a lower bound of greedy accuracy)."""
    total = count = 0.0
    exact, kinds = [], []
    for x, y, m, ks in batches:
        logits = model(mx.array(x)).astype(mx.float32)
        ce = nn.losses.cross_entropy(logits, mx.array(y), reduction="none")
        mm = mx.array(m)
        wrong = ((mx.argmax(logits, axis=-1) != mx.array(y)) * mm).sum(axis=1)
        total += float((ce * mm).sum())
        count += float(mm.sum())
        exact += (np.array(wrong) == 0).tolist()
        kinds += ks
    per_kind = {}
    for k, e in zip(kinds, exact):
        per_kind.setdefault(k, []).append(e)
    return {
        "val_loss": total / max(count, 1.0),
        "exact": float(np.mean(exact)),
        "exact_per_kind": {k: float(np.mean(v)) for k, v in per_kind.items()},
    }


def greedy_decode(model: Model, prompts: list[list[int]], stop_ids, max_new: int = 448):
    """Batched greedy decoding without a cache: right-padded rows, each step runs the whole
    (bucketed) prefix and appends every row's argmax at its own position. Exact for a causal
    model; fine for short eval replies. Returns the generated ids per prompt."""
    B = len(prompts)
    lens = np.array([len(p) for p in prompts])
    cap = int(lens.max()) + max_new
    buf = np.zeros((B, cap), np.int32)
    for i, p in enumerate(prompts):
        buf[i, : len(p)] = p
    pos = lens.copy()  # next position to write
    done = np.zeros(B, bool)
    stop = np.array(sorted(stop_ids))
    for _ in range(max_new):
        T = bucket_len(int(pos[~done].max()), 32)
        logits = model(mx.array(buf[:, :T]))
        idx = mx.array(np.minimum(pos - 1, T - 1))
        last = mx.take_along_axis(logits, idx[:, None, None], axis=1)[:, 0]
        nxt = np.array(mx.argmax(last, axis=-1)).astype(np.int32)
        for i in np.nonzero(~done)[0]:
            buf[i, pos[i]] = nxt[i]
            pos[i] += 1
            if nxt[i] in stop or pos[i] >= cap:
                done[i] = True
        if done.all():
            break
    return [buf[i, lens[i] : pos[i]].tolist() for i in range(B)]


def greedy_eval(model: Model, tokenizer_dir, problems: list[dict], batch_size: int = 96):
    """Greedy accuracy graded like eval-math (the one ``\\boxed{}`` extraction, math-verify;
    a refusal is right when it finished without a box), overall, per eval set and per kind."""
    from tokenizers import Tokenizer

    from phiflash.tutor.evalmath import grade

    enc = Encoder(tokenizer_dir)
    tok: Tokenizer = enc.tok
    stop = {enc.end, tok.token_to_id("<|endoftext|>")}
    correct, per_kind, per_set = [], {}, {}
    for s in range(0, len(problems), batch_size):
        group = problems[s : s + batch_size]
        outs = greedy_decode(model, enc.encode_prompts(group), stop)
        for ex, ids in zip(group, outs):
            text = tok.decode([t for t in ids if t not in stop], skip_special_tokens=False)
            finished = "stop" if ids and ids[-1] in stop else "length"
            ok, _ = grade(ex, text, finished)
            correct.append(ok)
            per_kind.setdefault(ex["kind"], []).append(ok)
            per_set.setdefault(ex.get("set", "problems"), []).append(ok)
    return {
        "greedy_acc": float(np.mean(correct)),
        "greedy_n": len(correct),
        "greedy_per_set": {k: float(np.mean(v)) for k, v in per_set.items()},
        "greedy_per_kind": {k: float(np.mean(v)) for k, v in per_kind.items()},
    }


# ------------------------------------------------------------------------------ checkpoints


def save_checkpoint(path, model: Model, optimizer, step: int, cfg: TrainConfig, extra=None):
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    mx.save_safetensors(
        str(path / "params.tmp.safetensors"), dict(tree_flatten(model.parameters()))
    )
    opt = {k: v for k, v in tree_flatten(optimizer.state) if isinstance(v, mx.array)}
    mx.save_safetensors(str(path / "optimizer.tmp.safetensors"), opt)
    os.replace(path / "params.tmp.safetensors", path / "params.safetensors")
    os.replace(path / "optimizer.tmp.safetensors", path / "optimizer.safetensors")
    _write_json(
        path / "state.json",
        {"step": step, "config": config_record(cfg), **(extra or {})},
    )


def config_record(cfg: TrainConfig) -> dict:
    """The config as logs and checkpoints record it: a path inside the repository relative to
    it (the default tokenizer is one), so a committed log names no directory of the machine
    that trained."""
    rec = dataclasses.asdict(cfg)
    for key, value in rec.items():
        if isinstance(value, str) and os.path.isabs(value):
            path = Path(value).resolve()
            if path.is_relative_to(REPO):
                rec[key] = str(path.relative_to(REPO))
    return rec


def load_checkpoint(path, model: Model, optimizer) -> dict:
    path = Path(path)
    state = json.loads((path / "state.json").read_text())
    model.load_weights(str(path / "params.safetensors"), strict=True)
    opt = mx.load(str(path / "optimizer.safetensors"))
    optimizer.state = tree_unflatten(list(opt.items()))
    mx.eval(model.parameters(), optimizer.state)
    return state


# ------------------------------------------------------------------------------ training


def lr_at(cfg: TrainConfig, step: int, elapsed: float) -> float:
    """The learning rate of a time-scheduled run (``train_seconds``): linear warm-up over
    ``warmup`` steps, then cosine decay to ``min_lr_ratio`` over the training wall time."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    frac = min(1.0, max(0.0, elapsed / cfg.train_seconds))
    end = cfg.lr * cfg.min_lr_ratio
    return end + (cfg.lr - end) * 0.5 * (1.0 + math.cos(math.pi * frac))


def make_optimizer(cfg: TrainConfig):
    if cfg.train_seconds > 0:  # the loop sets the rate before each step (lr_at)
        return optim.AdamW(
            learning_rate=cfg.lr, betas=list(cfg.betas), weight_decay=cfg.weight_decay
        )
    decay_steps = max(cfg.steps - cfg.warmup, 1)
    cosine = optim.cosine_decay(cfg.lr, decay_steps, end=cfg.lr * cfg.min_lr_ratio)
    if cfg.warmup > 0:
        warm = optim.linear_schedule(cfg.lr / cfg.warmup, cfg.lr, cfg.warmup)
        schedule = optim.join_schedules([warm, cosine], [cfg.warmup])
    else:
        schedule = cosine
    return optim.AdamW(learning_rate=schedule, betas=list(cfg.betas), weight_decay=cfg.weight_decay)


ECHO = False  # also print log records (set by the CLI when there is no progress bar)


def _log(fh, record: dict, echo: bool = False):
    if echo or ECHO:
        print(json.dumps(record)[:300], flush=True)
    if fh is not None:
        fh.write(json.dumps(record) + "\n")
        fh.flush()


def train(cfg: TrainConfig) -> dict:
    """Train (or resume) and export. Returns dict(step, loss, eval, export_dir, seconds)."""
    from tqdm import tqdm

    from phiflash.tutor.data import EVAL_SETS, dataset, eval_set

    if cfg.greedy_n and importlib.util.find_spec("math_verify") is None:
        # checked before training, not when the final evaluation needs it minutes later
        raise SystemExit(
            "error: the greedy evaluation grades with math-verify, which is not installed "
            "(pip install math-verify, or pass --greedy-n 0)"
        )
    t0 = time.perf_counter()
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ckpt = out / "checkpoint"
    export_dir = Path(cfg.export_dir) if cfg.export_dir else out / "model"
    dtype = getattr(mx, cfg.dtype)
    args = model_args(cfg.model)
    model = init_model(args, cfg.seed, dtype)
    if cfg.init_from:
        w = model.sanitize(mx.load(str(Path(cfg.init_from) / "model.safetensors")))
        model.load_weights([(k, v.astype(dtype)) for k, v in w.items()], strict=True)
    model.train()
    optimizer = make_optimizer(cfg)
    optimizer.init(model.trainable_parameters())
    start = 0
    if cfg.resume and (ckpt / "state.json").is_file():
        start = load_checkpoint(ckpt, model, optimizer)["step"]
    n_params = sum(v.size for _, v in tree_flatten(model.parameters()))

    encoder = Encoder(cfg.tokenizer)
    heldout = dataset("test", cfg.eval_n) if cfg.eval_n else []
    ev_batches = eval_batches(encoder, heldout, 64) if heldout else []
    greedy_problems = (
        [ex for name in EVAL_SETS for ex in eval_set(name, cfg.greedy_n)] if cfg.greedy_n else []
    )

    exp_kw = {"tokenizer_files": cfg.export_tokenizer}
    state = [model.state, optimizer.state]

    grad_fn = nn.value_and_grad(model, loss_fn)

    def step_fn(x, y, m):
        # Micro-batches of at most micro_tokens tokens (the scan's activations are large: the
        # CUDA training kernels keep micro_tokens x d_inner x d_state float32 states per Mamba
        # layer), gradients summed with weights that make them the gradient of the mean loss.
        rows = max(1, cfg.micro_tokens // x.shape[1])
        total = mx.maximum(m.sum(), 1.0)
        loss, grads = 0.0, None
        for s in range(0, x.shape[0], rows):
            ms = m[s : s + rows]
            w = ms.sum() / total
            li, gi = grad_fn(model, x[s : s + rows], y[s : s + rows], ms)
            gi = tree_map(lambda g, w=w: g * w, gi)
            loss = loss + li * w
            grads = gi if grads is None else tree_map(mx.add, grads, gi)
            if rows < x.shape[0]:
                mx.eval(grads, loss)
        grads, norm = optim.clip_grad_norm(grads, cfg.clip)
        if cfg.dtype != "float32":
            grads = tree_map(lambda g: g.astype(mx.float32), grads)
        optimizer.update(model, grads)
        return loss, norm

    if cfg.compile:
        step_fn = mx.compile(step_fn, inputs=state, outputs=state)

    log_fh = open(out / "train_log.jsonl", "a")
    _log(
        log_fh,
        {
            "event": "start",
            "step": start,
            "params": n_params,
            "device": str(mx.default_device()),
            "config": config_record(cfg),
        },
    )
    data = DataStream(cfg, start)
    bar = tqdm(
        total=cfg.steps,
        initial=start,
        desc="train",
        unit="step",
        disable=(not sys.stderr.isatty()) if cfg.progress is None else not cfg.progress,
        file=sys.stderr,
        dynamic_ncols=True,
    )
    losses, tokens, step = [], 0, start
    last_eval: dict = {}
    t_train = time.perf_counter()

    def evaluate(greedy: bool):
        model.eval()
        r = teacher_forced_eval(model, ev_batches) if ev_batches else {}
        if greedy and greedy_problems:
            r.update(greedy_eval(model, cfg.tokenizer, greedy_problems))
        model.train()
        return r

    stopped_early = False
    try:
        while step < cfg.steps:
            x, y, m = data.next()
            if cfg.train_seconds > 0:
                optimizer.learning_rate = lr_at(cfg, step - start, time.perf_counter() - t_train)
            loss, norm = step_fn(mx.array(x), mx.array(y), mx.array(m))
            mx.eval(loss, norm, state)
            step += 1
            if step == start + 1:
                _log(
                    log_fh, {"first_step_s": round(time.perf_counter() - t_train, 2), "T": x.shape}
                )
            tokens += int(m.sum())
            losses.append(float(loss))
            bar.update(1)
            if step % cfg.log_every == 0 or step == cfg.steps:
                avg = float(np.mean(losses[-cfg.log_every :]))
                lr = float(optimizer.learning_rate)
                el = time.perf_counter() - t_train
                bar.set_postfix(loss=f"{avg:.4f}", lr=f"{lr:.2e}", **last_eval_short(last_eval))
                _log(
                    log_fh,
                    {
                        "step": step,
                        "loss": avg,
                        "grad_norm": float(norm),
                        "lr": lr,
                        "target_tokens": tokens,
                        "seconds": round(el, 2),
                    },
                )
            timed_out = bool(cfg.time_limit) and time.perf_counter() - t0 > cfg.time_limit
            timed_out = timed_out or (cfg.stop_after > 0 and step - start >= cfg.stop_after)
            spent = cfg.train_seconds > 0 and time.perf_counter() - t_train >= cfg.train_seconds
            if spent:
                break
            if cfg.eval_every and (step % cfg.eval_every == 0) and step < cfg.steps:
                g = bool(cfg.greedy_every) and step % cfg.greedy_every == 0
                last_eval = evaluate(g)
                _log(log_fh, {"step": step, **last_eval})
            if (cfg.ckpt_every and step % cfg.ckpt_every == 0) or timed_out:
                save_checkpoint(ckpt, model, optimizer, step, cfg)
                export(model, cfg.model, cfg.tokenizer, export_dir, **exp_kw)
            if timed_out:
                stopped_early = True
                break
    finally:
        bar.close()
        data.close()

    save_checkpoint(ckpt, model, optimizer, step, cfg)
    export(model, cfg.model, cfg.tokenizer, export_dir, **exp_kw)
    # the final numbers are those of the exported (bf16) weights
    stored = mx.load(str(export_dir / "model.safetensors"))
    model.load_weights([(k, v.astype(dtype)) for k, v in stored.items()], strict=True)
    final = evaluate(greedy=True)
    seconds = time.perf_counter() - t0
    result = {
        "event": "end",
        "step": step,
        "stopped_early": stopped_early,
        "loss": float(np.mean(losses[-cfg.log_every :])) if losses else None,
        "target_tokens_this_run": tokens,
        "params": n_params,
        "seconds": round(seconds, 1),
        "export_dir": str(export_dir),
        **final,
    }
    _log(log_fh, result)
    log_fh.close()
    return result


def last_eval_short(r: dict) -> dict:
    out = {}
    if "exact" in r:
        out["exact"] = f"{r['exact']:.1%}"
    if "greedy_acc" in r:
        out["greedy"] = f"{r['greedy_acc']:.1%}"
    return out


# ------------------------------------------------------------------------------ CLI


def _parser() -> argparse.ArgumentParser:
    d = TrainConfig()
    ap = argparse.ArgumentParser(
        prog="phiflash train",
        description="Train a small SambaY (phi4flash) model from scratch on generated math "
        "tutoring dialogues and export it as a Hugging Face-layout checkpoint.",
    )
    ap.add_argument("--out", default=d.out_dir, help=f"run dir (default {d.out_dir})")
    ap.add_argument("--export", default=None, help="exported model dir (default OUT/model)")
    ap.add_argument("--tokenizer", default=d.tokenizer, help="dir with the tutor tokenizer files")
    ap.add_argument(
        "--size", choices=("tutor", "small", "tiny"), default="tutor", help="architecture"
    )
    ap.add_argument("--steps", type=int, default=d.steps)
    ap.add_argument("--batch-size", type=int, default=d.batch_size)
    ap.add_argument("--lr", type=float, default=d.lr)
    ap.add_argument(
        "--micro-tokens",
        type=int,
        default=d.micro_tokens,
        help="tokens per forward/backward; a step's rows are split to fit (memory)",
    )
    ap.add_argument("--warmup", type=int, default=d.warmup)
    ap.add_argument("--weight-decay", type=float, default=d.weight_decay)
    ap.add_argument("--clip", type=float, default=d.clip)
    ap.add_argument("--dtype", choices=("float32", "bfloat16"), default=d.dtype)
    ap.add_argument("--seed", type=int, default=d.seed)
    ap.add_argument("--workers", type=int, default=d.workers, help="data threads")
    ap.add_argument("--chunk", type=int, default=d.chunk, help="examples per data chunk")
    ap.add_argument(
        "--kinds",
        type=kinds_arg,
        default=KINDS,
        help="comma-separated problem-kind mix, drawn round-robin; repeat a kind to oversample "
        f"it (default: {','.join(KINDS)})",
    )
    ap.add_argument("--eval-every", type=int, default=d.eval_every)
    ap.add_argument("--eval-n", type=int, default=d.eval_n)
    ap.add_argument("--greedy-every", type=int, default=d.greedy_every)
    ap.add_argument("--greedy-n", type=int, default=d.greedy_n)
    ap.add_argument("--ckpt-every", type=int, default=d.ckpt_every)
    ap.add_argument("--log-every", type=int, default=d.log_every)
    ap.add_argument("--time-limit", type=float, default=0.0, help="seconds, then stop and export")
    ap.add_argument(
        "--train-seconds",
        type=float,
        default=0.0,
        help="train this long: the lr decays over this wall time, --steps becomes a cap",
    )
    ap.add_argument("--max-len", type=int, default=d.max_len, help="longest sequence (tokens)")
    ap.add_argument(
        "--no-tokenizer-files",
        action="store_true",
        help="export only config.json, generation_config.json and model.safetensors",
    )
    ap.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint")
    ap.add_argument(
        "--init-from",
        default=None,
        metavar="DIR",
        help="start from the weights of an exported model dir (fresh optimizer)",
    )
    ap.add_argument("--cpu", action="store_true", help="train on the CPU")
    ap.add_argument("--no-progress", action="store_true", help="no bar; log lines to stdout")
    ap.add_argument("--compile", action="store_true", help="mx.compile the step (slow JIT)")
    return ap


def main(argv: list[str] | None = None) -> int:
    a = _parser().parse_args(argv)
    if a.cpu:
        mx.set_default_device(mx.cpu)
    cfg = TrainConfig(
        out_dir=a.out,
        export_dir=a.export,
        tokenizer=a.tokenizer,
        model=dict({"tutor": TUTOR_MODEL, "small": SMALL_MODEL, "tiny": TINY_MODEL}[a.size]),
        steps=a.steps,
        batch_size=a.batch_size,
        lr=a.lr,
        warmup=a.warmup,
        micro_tokens=a.micro_tokens,
        weight_decay=a.weight_decay,
        clip=a.clip,
        dtype=a.dtype,
        seed=a.seed,
        workers=a.workers,
        chunk=a.chunk,
        kinds=a.kinds,
        eval_every=a.eval_every,
        eval_n=a.eval_n,
        greedy_every=a.greedy_every,
        greedy_n=a.greedy_n,
        ckpt_every=a.ckpt_every,
        log_every=a.log_every,
        time_limit=a.time_limit,
        train_seconds=a.train_seconds,
        max_len=a.max_len,
        resume=a.resume,
        init_from=a.init_from,
        export_tokenizer=not a.no_tokenizer_files,
        progress=False if a.no_progress else None,
        compile=a.compile,
    )
    global ECHO
    ECHO = a.no_progress
    print(f"phiflash train: device {mx.default_device()}, out {cfg.out_dir}", flush=True)
    r = train(cfg)
    print(json.dumps(r, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
