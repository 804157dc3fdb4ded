"""The stats line above the key footer."""

from __future__ import annotations

from textual.widgets import Static

from phiflash.engine import Chunk


class StatsBar(Static):
    def __init__(self, **kwargs):
        super().__init__("", **kwargs)
        self.engine_label = "no model"
        self.context_limit = 0
        self.last: Chunk | None = None
        self.context_used = 0

    def set_engine(self, engine) -> None:
        self.engine_label = f"{engine.name} · {engine.quantization}"
        self.context_limit = engine.context_limit
        self.refresh_text()

    def show(self, chunk: Chunk | None, context_used: int | None = None) -> None:
        self.last = chunk
        if chunk is not None and chunk.context_used:
            self.context_used = chunk.context_used
        if context_used is not None:
            self.context_used = context_used
        self.refresh_text()

    def refresh_text(self) -> None:
        c = self.last
        gen = f"{c.generation_tps:.1f}" if c and c.generation_tokens else "–"
        prompt = f"{c.prompt_tps:.1f}" if c and c.prompt_tps else "–"
        peak = f"{c.peak_memory_gb:.2f} GB" if c and c.peak_memory_gb else "–"
        limit = self.context_limit or "?"
        self.update(
            f"gen {gen} tok/s │ prompt {prompt} tok/s │ ctx {self.context_used}/{limit}"
            f" │ peak {peak} │ {self.engine_label}"
        )
