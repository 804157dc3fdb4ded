"""The GGUF engine: phiflash's Engine protocol over llama-cpp-python on the SambaY fork."""

from __future__ import annotations

import codecs
import os
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from phiflash.engine import Chunk, GenerationParams, Message, check_context
from phiflash.errors import ContextLengthError, ModelLoadError, WrongArchitectureError
from phiflash_gguf.thinking import thinking_budget

ARCH = "sambay"
# The context this engine allocates (KV cells for the one global layer), at most the model's
# own (the GGUF's sambay.context_length); the cache grows no further.
DEFAULT_N_CTX = 32768


def read_header(path: str | os.PathLike) -> dict:
    """Check that ``path`` is a complete SambaY GGUF; return a few of its keys.

    Reads the header with the ``gguf`` package (no llama.cpp), so a missing, truncated,
    corrupt or wrong-architecture file gives one clear line.
    """
    import gguf

    p = Path(path)
    if not p.exists():
        raise ModelLoadError(f"no such GGUF file: {p}")
    if not p.is_file():
        raise ModelLoadError(f"not a file: {p}")
    with open(p, "rb") as f:
        magic = f.read(4)
    if magic != b"GGUF":
        raise ModelLoadError(f"{p.name} is not a GGUF file (bad magic {magic!r})")
    try:
        reader = gguf.GGUFReader(p, "r")
    except Exception as e:  # the reader raises many types on a cut or garbled file
        why = f"{type(e).__name__}: {e}".splitlines()[0]
        raise ModelLoadError(f"{p.name} is truncated or corrupt ({why})") from None

    def field(key, default=None):
        f = reader.fields.get(key)
        return default if f is None else f.contents()

    arch = field("general.architecture")
    if arch != ARCH:
        raise WrongArchitectureError(
            f"{p.name} has architecture {arch!r}, not {ARCH!r} (Phi-4-mini-flash / SambaY); "
            "convert the checkpoint with `phiflash convert-gguf`"
        )
    size = p.stat().st_size
    for t in reader.tensors:
        if t.data_offset + t.n_bytes > size:
            raise ModelLoadError(f"{p.name} is truncated (tensor {t.name} ends past the file end)")
    ftype = field("general.file_type")
    quant = "unknown"
    if ftype is not None:
        try:
            quant = gguf.LlamaFileType(int(ftype)).name
            for prefix in ("MOSTLY_", "ALL_"):
                quant = quant.removeprefix(prefix)
        except ValueError:
            quant = f"ftype {ftype}"
    return {
        "arch": arch,
        "quantization": quant,
        "n_ctx_train": int(field(f"{ARCH}.context_length", 4096)),
        "chat_template": field("tokenizer.chat_template"),
    }


def _peak_rss_gb() -> float:
    """This process's peak resident memory in GB; 0.0 where Python cannot read it (Windows)."""
    try:
        import resource
    except ImportError:
        return 0.0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # bytes on macOS, KiB elsewhere
    return peak / 1e9 if sys.platform == "darwin" else peak * 1024 / 1e9


class GGUFEngine:
    """Streams replies from a SambaY GGUF through llama-cpp-python (``Llama``)."""

    name = "gguf"

    def __init__(
        self,
        model_path: str,
        n_threads: int | None = None,
        n_ctx: int = DEFAULT_N_CTX,
        flash_attn: bool = True,
        n_batch: int = 512,
        verbose: bool = False,
        **llama_kwargs,
    ):
        info = read_header(model_path)
        from phiflash_gguf.build import ensure_llama_cpp

        self._lc = ensure_llama_cpp()
        self.model_path = str(model_path)
        self.quantization = info["quantization"]
        self.context_limit = min(int(n_ctx), info["n_ctx_train"])
        self._template = info["chat_template"]
        threads = n_threads or os.cpu_count() or 1
        # a window-sized cache for the sliding-window layers (llama.cpp's default keeps
        # n_ctx cells for them too); only prefix reuse is needed, never a rollback
        llama_kwargs.setdefault("swa_full", False)
        try:
            self.llm = self._lc.Llama(
                model_path=self.model_path,
                n_ctx=self.context_limit,
                n_threads=threads,
                n_threads_batch=threads,
                n_batch=n_batch,
                flash_attn=flash_attn,
                verbose=verbose,
                **llama_kwargs,
            )
        except (ValueError, RuntimeError) as e:
            raise ModelLoadError(f"llama.cpp could not load {Path(model_path).name}: {e}") from None
        self.n_threads = threads
        self._vocab = self._lc.llama_model_get_vocab(self.llm.model)
        self._tokens: list[int] = []  # tokens whose state is in the cache
        self.last_prompt_eval = 0  # prompt tokens the last call had to process

    # -- protocol -------------------------------------------------------------------------

    def apply_chat_template(self, messages: list[Message]) -> str:
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        if not self._template:
            raise ModelLoadError(f"{Path(self.model_path).name} carries no chat template")
        eos = self.llm.detokenize([self.llm.token_eos()], special=True).decode("utf-8", "replace")
        fmt = Jinja2ChatFormatter(
            self._template, eos_token=eos, bos_token="", add_generation_prompt=True
        )
        return fmt(messages=messages).prompt

    def count_tokens(self, messages: list[Message]) -> int:
        return len(self.tokenize(self.apply_chat_template(messages)))

    def tokenize(self, text: str) -> list[int]:
        return self.llm.tokenize(text.encode("utf-8"), add_bos=False, special=True)

    def reset(self) -> None:
        self.llm.reset()  # clears the KV cache and the recurrent state of a hybrid model
        self._tokens = []

    def stream(
        self,
        messages: list[Message],
        params: GenerationParams,
        should_stop: Callable[[], bool] | None = None,
    ) -> Iterator[Chunk]:
        ids = self.tokenize(self.apply_chat_template(messages))
        return self._generate(ids, params, should_stop, reuse=True)

    def stream_prompt(
        self,
        prompt: str,
        params: GenerationParams,
        should_stop: Callable[[], bool] | None = None,
    ) -> Iterator[Chunk]:
        return self._generate(self.tokenize(prompt), params, should_stop, reuse=False)

    # -- generation -----------------------------------------------------------------------

    def _sampler(self, params: GenerationParams):
        lc = self._lc
        chain = lc.llama_sampler_chain_init(lc.llama_sampler_chain_default_params())
        if params.temperature <= 0:
            lc.llama_sampler_chain_add(chain, lc.llama_sampler_init_greedy())
            return chain
        if params.top_k and params.top_k > 0:
            lc.llama_sampler_chain_add(chain, lc.llama_sampler_init_top_k(params.top_k))
        if params.top_p and params.top_p < 1.0:
            lc.llama_sampler_chain_add(chain, lc.llama_sampler_init_top_p(params.top_p, 1))
        if params.min_p and params.min_p > 0:
            lc.llama_sampler_chain_add(chain, lc.llama_sampler_init_min_p(params.min_p, 1))
        lc.llama_sampler_chain_add(chain, lc.llama_sampler_init_temp(params.temperature))
        seed = params.seed if params.seed is not None else int.from_bytes(os.urandom(4), "little")
        lc.llama_sampler_chain_add(chain, lc.llama_sampler_init_dist(seed & 0xFFFFFFFF))
        return chain

    def _generate(self, ids, params, should_stop, reuse: bool) -> Iterator[Chunk]:
        if not ids:
            raise ContextLengthError("empty prompt")
        check_context(len(ids), params.max_tokens, self.context_limit)
        return self._run(ids, params, should_stop, reuse)

    def _run(self, ids, params, should_stop, reuse) -> Iterator[Chunk]:
        lc, llm = self._lc, self.llm
        n_cached = len(self._tokens)
        if reuse and 0 < n_cached < len(ids) and ids[:n_cached] == self._tokens:
            new = ids[n_cached:]
        else:
            self.reset()
            new = ids
        sampler = self._sampler(params)
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        n_prompt = len(ids)
        room = self.context_limit - len(ids)
        max_tokens = params.max_tokens if params.max_tokens > 0 else room  # -1: until full
        n_think = params.thinking_budget
        budget = thinking_budget(llm, ids, n_think) if n_think > 0 else None
        try:
            t0 = time.perf_counter()
            llm.eval(new)
            self._tokens = list(ids)
            self.last_prompt_eval = len(new)
            t_prompt = max(time.perf_counter() - t0, 1e-9)
            prompt_tps = len(new) / t_prompt
            t_gen = time.perf_counter()
            n_gen = 0
            while True:
                if should_stop is not None and should_stop():
                    yield self._chunk("", None, n_prompt, prompt_tps, n_gen, t_gen, "cancelled")
                    return
                forced = budget.forced() if budget is not None else None
                if forced is None:
                    tok = lc.llama_sampler_sample(sampler, llm.ctx, -1)
                else:  # the thinking budget is spent: the next id of </think>
                    tok = forced
                piece = llm.detokenize([tok])  # once: for the budget and for the text
                if budget is not None:
                    budget.feed(tok, piece.decode("utf-8", "replace"))
                n_gen += 1
                if lc.llama_vocab_is_eog(self._vocab, tok):
                    tail = decoder.decode(b"", final=True)
                    yield self._chunk(tail, tok, n_prompt, prompt_tps, n_gen, t_gen, "stop")
                    return
                text = decoder.decode(piece)
                if n_gen >= max_tokens:
                    text += decoder.decode(b"", final=True)
                    yield self._chunk(text, tok, n_prompt, prompt_tps, n_gen, t_gen, "length")
                    return
                llm.eval([tok])
                self._tokens.append(tok)
                yield self._chunk(text, tok, n_prompt, prompt_tps, n_gen, t_gen, None)
        finally:
            lc.llama_sampler_free(sampler)

    def _chunk(self, text, tok, n_prompt, prompt_tps, n_gen, t_gen, finish) -> Chunk:
        elapsed = max(time.perf_counter() - t_gen, 1e-9)
        return Chunk(
            text=text,
            token=tok,
            prompt_tokens=n_prompt,
            prompt_tps=prompt_tps,
            generation_tokens=n_gen,
            generation_tps=n_gen / elapsed,
            peak_memory_gb=_peak_rss_gb(),
            context_used=len(self._tokens),
            finish_reason=finish,
        )


def position_logits(
    model_path: str | os.PathLike, n_threads: int | None = None, flash_attn: bool = True
) -> Callable[[list[int]], np.ndarray]:
    """Logits source for ``phiflash eval-quant``: ``tokens -> [T, vocab]`` float32, row t
    predicting token t+1 (every row computed, so the cross-decoder runs on the whole prompt)."""
    read_header(model_path)  # fail fast on a bad file, before any tokens are read

    def logits(tokens: list[int]) -> np.ndarray:
        engine = GGUFEngine(
            model_path, n_threads, n_ctx=len(tokens) + 1, flash_attn=flash_attn, logits_all=True
        )
        try:
            engine.llm.eval(list(tokens))
            return np.array(engine.llm.scores[: len(tokens)], dtype=np.float32)
        finally:
            engine.llm.close()

    return logits
