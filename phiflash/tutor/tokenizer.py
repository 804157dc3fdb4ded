"""A small byte-level BPE for the tutor model, in the real Phi-4-mini tokenizer layout.

The pre-tokenizer is the GPT-4o / o200k split regex with one change: digits are split one per
piece (``\\p{N}`` instead of ``\\p{N}{1,3}``), so every digit is its own token. After the BPE
vocabulary come the real model's special tokens in the real order and with the real flags, and the
files are written like the real checkpoint's (tokenizer.json, tokenizer_config.json with the real
chat template, special_tokens_map.json, added_tokens.json, vocab.json, merges.txt,
generation_config.json).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

# The o200k split regex as in the Phi-4-mini tokenizer.json, with digits split individually.
SPLIT_REGEX = (
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+"
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)?"
    r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*"
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)?"
    r"|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)

# (content, special, rstrip) in the real order; ids follow the BPE vocabulary.
SPECIAL_TOKENS = (
    ("<|endoftext|>", True, False),
    ("<|endofprompt|>", True, False),
    ("<|assistant|>", True, True),
    ("<|end|>", True, True),
    ("<|user|>", True, True),
    ("<|system|>", True, True),
    ("<|tool|>", False, True),
    ("<|/tool|>", False, True),
    ("<|tool_call|>", False, True),
    ("<|/tool_call|>", False, True),
    ("<|tool_response|>", False, True),
    ("<|tag|>", True, True),
)

# Copied verbatim from the real tokenizer_config.json.
CHAT_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] == 'system' and 'tools' in message and "
    "message['tools'] is not none %}{{ '<|' + message['role'] + '|>' + message['content'] + "
    "'<|tool|>' + message['tools'] + '<|/tool|>' + '<|end|>' }}{% else %}{{ '<|' + "
    "message['role'] + '|>' + message['content'] + '<|end|>' }}{% endif %}{% endfor %}{% if "
    "add_generation_prompt %}{{ '<|assistant|>' }}{% else %}{{ eos_token }}{% endif %}"
)

EOS = "<|endoftext|>"
DEFAULT_VOCAB_SIZE = 2048
TRANSFORMERS_VERSION = "4.46.1"


def _strip_specials(text: str) -> list[str]:
    """Split a rendered chat on the special tokens so BPE never learns merges across them."""
    parts = [text]
    for tok, _, _ in SPECIAL_TOKENS:
        parts = [p for part in parts for p in part.split(tok)]
    return [p for p in parts if p]


def _token_entry(content: str, special: bool, rstrip: bool) -> dict:
    return {
        "content": content,
        "lstrip": False,
        "normalized": False,
        "rstrip": rstrip,
        "single_word": False,
        "special": special,
    }


def _plain_entry(content: str) -> dict:
    return {
        "content": content,
        "lstrip": False,
        "normalized": False,
        "rstrip": False,
        "single_word": False,
    }


def train_bpe(texts: Iterable[str], vocab_size: int = DEFAULT_VOCAB_SIZE):
    """A ``tokenizers.Tokenizer`` with ``vocab_size`` tokens in all (BPE + the 12 specials)."""
    from tokenizers import (
        AddedToken,
        Regex,
        Tokenizer,
        decoders,
        models,
        pre_tokenizers,
        processors,
        trainers,
    )

    n_bpe = vocab_size - len(SPECIAL_TOKENS)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(SPLIT_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False),
        ]
    )
    tok.post_processor = processors.ByteLevel(
        add_prefix_space=True, trim_offsets=False, use_regex=True
    )
    tok.decoder = decoders.ByteLevel(add_prefix_space=True, trim_offsets=True, use_regex=True)
    trainer = trainers.BpeTrainer(
        vocab_size=n_bpe,
        min_frequency=2,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=[],
        show_progress=False,
    )

    def pieces():
        for t in texts:
            yield from _strip_specials(t)

    tok.train_from_iterator(pieces(), trainer=trainer)
    got = tok.get_vocab_size()
    if got < n_bpe:  # small corpora: pad nothing, but say so through the ids
        n_bpe = got
    for content, special, rstrip in SPECIAL_TOKENS:
        added = AddedToken(
            content,
            single_word=False,
            lstrip=False,
            rstrip=rstrip,
            normalized=False,
            special=special,
        )
        if special:
            tok.add_special_tokens([added])
        else:
            tok.add_tokens([added])
    return tok


def build_tokenizer(
    out_dir: str | Path, texts: Iterable[str], vocab_size: int = DEFAULT_VOCAB_SIZE
) -> Path:
    """Train the BPE on ``texts`` and write the tokenizer files into ``out_dir``.

    Returns ``out_dir``. The special tokens get the ids right after the BPE vocabulary
    (``vocab_size - 12`` ... ``vocab_size - 1`` when the corpus is large enough).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tok = train_bpe(texts, vocab_size)
    tok.save(str(out / "tokenizer.json"))
    _normalize_tokenizer_json(out / "tokenizer.json")
    tok.model.save(str(out))  # vocab.json, merges.txt

    ids = {c: tok.token_to_id(c) for c, _, _ in SPECIAL_TOKENS}
    decoder = {
        str(ids[c]): _token_entry(c, special, rstrip) for c, special, rstrip in SPECIAL_TOKENS
    }
    config = {
        "add_bos_token": False,
        "add_eos_token": False,
        "add_prefix_space": False,
        "added_tokens_decoder": decoder,
        "bos_token": EOS,
        "chat_template": CHAT_TEMPLATE,
        "clean_up_tokenization_spaces": False,
        "eos_token": EOS,
        "model_max_length": 65536,
        "pad_token": EOS,
        "tokenizer_class": "PreTrainedTokenizerFast",  # read from tokenizer.json, as we do
        "unk_token": EOS,
    }
    _write_json(out / "tokenizer_config.json", config)
    _write_json(
        out / "special_tokens_map.json",
        {k: _plain_entry(EOS) for k in ("bos_token", "eos_token", "pad_token", "unk_token")},
    )
    _write_json(
        out / "added_tokens.json",
        {c: ids[c] for c, _, _ in sorted(SPECIAL_TOKENS) if c != EOS},
    )
    _write_json(out / "generation_config.json", generation_config(ids))
    return out


def generation_config(ids: dict[str, int]) -> dict:
    return {
        "_from_model_config": True,
        "bos_token_id": ids[EOS],
        "eos_token_id": [ids["<|end|>"], ids[EOS]],
        "pad_token_id": ids[EOS],
        "transformers_version": TRANSFORMERS_VERSION,
    }


def special_token_ids(tokenizer_dir: str | Path) -> dict[str, int]:
    """Special token -> id, read from a tokenizer.json."""
    data = json.loads((Path(tokenizer_dir) / "tokenizer.json").read_text())
    return {t["content"]: t["id"] for t in data["added_tokens"]}


def _normalize_tokenizer_json(path: Path) -> None:
    """Key order of the real file's added_tokens entries (cosmetic, keeps diffs readable)."""
    data = json.loads(path.read_text())
    keys = ("id", "content", "single_word", "lstrip", "rstrip", "normalized", "special")
    data["added_tokens"] = [{k: t[k] for k in keys} for t in data["added_tokens"]]
    path.write_text(json.dumps(data, ensure_ascii=False, indent=2) + "\n")


def _write_json(path: Path, obj) -> None:
    path.write_text(json.dumps(obj, ensure_ascii=False, indent=2) + "\n")


def main(argv: list[str] | None = None) -> int:
    """``python -m phiflash.tutor.tokenizer OUT_DIR [--n N] [--vocab-size V]``."""
    import argparse

    from phiflash.tutor.data import texts

    ap = argparse.ArgumentParser(description="train the tutor tokenizer on generated dialogues")
    ap.add_argument("out_dir")
    ap.add_argument("--n", type=int, default=20000, help="training dialogues (default 20000)")
    ap.add_argument("--vocab-size", type=int, default=DEFAULT_VOCAB_SIZE)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    out = build_tokenizer(args.out_dir, texts("train", args.n, args.seed), args.vocab_size)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
