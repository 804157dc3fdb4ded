import json
import random
import re
from fractions import Fraction
from pathlib import Path

import pytest

from phiflash.tutor.data import (
    KINDS,
    dataset,
    make_example,
    prompt_messages,
    render,
    split_of,
    texts,
)

FIXTURE = Path(__file__).parent / "fixtures" / "sambay-tiny"


def test_render_matches_template_layout():
    msgs = [
        {"role": "system", "content": "S"},
        {"role": "user", "content": "U"},
        {"role": "assistant", "content": "A"},
    ]
    assert render(msgs) == "<|system|>S<|end|><|user|>U<|end|><|assistant|>A<|end|><|endoftext|>"
    assert render(msgs[:2], add_generation_prompt=True) == (
        "<|system|>S<|end|><|user|>U<|end|><|assistant|>"
    )


def test_deterministic():
    assert dataset("train", 50, seed=7) == dataset("train", 50, seed=7)
    assert dataset("train", 50, seed=7) != dataset("train", 50, seed=8)
    assert dataset("test", 30) == dataset("test", 60)[:30]  # prefix property


def test_example_shape_and_kinds():
    rng = random.Random(0)
    for kind in KINDS:
        for _ in range(20):
            ex = make_example(rng, kind)
            assert ex["kind"] == kind
            roles = [m["role"] for m in ex["messages"]]
            assert roles in (["user", "assistant"], ["system", "user", "assistant"])
            reply = ex["messages"][-1]["content"]
            assert re.fullmatch(r"<think>[^<>]+</think>[^<>\n]*\\boxed\{[^\n]+\}[^<>\n]*", reply), (
                reply
            )
            assert prompt_messages(ex) == ex["messages"][:-1]


def test_round_robin_kinds_and_phrasing_variety():
    ds = dataset("train", 600, seed=1)
    assert [ex["kind"] for ex in ds[:6]] == list(KINDS)
    for kind in KINDS:
        qs = [ex["messages"][-2]["content"] for ex in ds if ex["kind"] == kind]
        starts = {q.split()[0] for q in qs}
        assert len(starts) >= 3, (kind, starts)
    assert any(ex["messages"][-2]["content"].startswith("Please reason step by step") for ex in ds)
    assert any(ex["messages"][0]["role"] == "system" for ex in ds)


def _gold(ex) -> Fraction:
    q = ex["question"]
    nums = [int(x) for x in re.findall(r"-?\d+", q)]
    kind = ex["kind"]
    if kind == "add":
        return Fraction(nums[0] + nums[1])
    if kind == "sub":
        if q.startswith("Subtract"):
            return Fraction(nums[1] - nums[0])
        return Fraction(nums[0] - nums[1])
    if kind == "mul":
        return Fraction(nums[0] * nums[1])
    if kind == "frac":
        m = re.search(r"(\d+)/(\d+) (\S+|plus|minus|times|divided by) (\d+)/(\d+)", q)
        x, y = Fraction(int(m[1]), int(m[2])), Fraction(int(m[4]), int(m[5]))
        op = m[3]
        if op in ("+", "plus"):
            return x + y
        if op in ("-", "minus"):
            return x - y
        if op in ("×", "*", "times"):
            return x * y
        return x / y
    if kind == "linear":
        var = ex["messages"][-1]["content"].split("</think>")[1][0]
        eq = re.search(rf"(?<![A-Za-z])([-\d{var}][-\d\s{var}+]*=[-\d\s{var}+]+)", q)[1].strip()
        lhs, rhs = eq.split("=")

        def lin(side):
            side = side.replace(" ", "").replace("-", "+-")
            a = b = 0
            for t in filter(None, side.split("+")):
                if t.endswith(var):
                    c = t[:-1]
                    a += int(c) if c not in ("", "-") else (1 if c == "" else -1)
                else:
                    b += int(t)
            return a, b

        (a, b), (c, d) = lin(lhs), lin(rhs)
        return Fraction(d - b, a - c)
    if kind == "percent":
        if re.search(r"\d+(%| percent) of \d+", q):
            return Fraction(nums[0] * nums[1], 100)
        if "change" in q or "increase" in q or "decrease" in q or "goes" in q:
            y, z = nums[0], nums[1]
            v = Fraction(z - y, y) * 100
            return v if "change" in q else abs(v)
        if q.startswith(("What percent", "What percentage")):
            y, z = nums[0], nums[1]
        elif q.startswith("Express"):
            z, y = nums[0], nums[1]
        else:
            z, y = nums[0], nums[1]
        return Fraction(z, y) * 100
    raise AssertionError(kind)


def test_answers_are_correct():
    for split in ("train", "test"):
        for ex in dataset(split, 1200, seed=5):
            assert Fraction(ex["answer"]) == _gold(ex), ex


def test_steps_are_arithmetically_consistent():
    """Every 'a op b = c' written in a reasoning trace is true."""
    num = r"\(?-?\d+\)?"
    pat = re.compile(rf"(?<![\d/.(])({num}(?: [-+×÷] {num})+) = ({num})(?![\d/%])")
    checked = 0
    for ex in dataset("train", 600, seed=2):
        think = ex["messages"][-1]["content"].split("</think>")[0]
        for m in pat.finditer(think):
            expr = m[1].replace("×", "*").replace("÷", "/")
            assert re.fullmatch(r"[-+*/()\d ]+", expr)
            assert eval(expr) == int(m[2].strip("()")), (m[0], think)
            checked += 1
    assert checked > 1000


def test_test_split_is_disjoint_from_train():
    test = dataset("test", 500)
    assert len({ex["key"] for ex in test}) == 500  # unique held-out problems
    assert all(split_of(ex["key"]) == "test" for ex in test)
    train = dataset("train", 5000)
    assert all(split_of(ex["key"]) == "train" for ex in train)
    assert not {ex["key"] for ex in test} & {ex["key"] for ex in train}
    # a question with the same problem in other words lands in the same split
    assert not {ex["question"] for ex in test} & {ex["question"] for ex in train}


def test_commutative_keys():
    rng = random.Random(3)
    for _ in range(200):
        ex = make_example(rng, "add")
        a, b = map(int, re.findall(r"\d+", ex["question"])[:2])
        assert ex["key"] == f"add:{min(a, b)}+{max(a, b)}"


def test_bad_arguments():
    with pytest.raises(ValueError):
        dataset("valid", 3)
    with pytest.raises(ValueError):
        dataset("train", 3, kinds=("calculus",))


# ----------------------------------------------------------------------------- tokenizer


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory):
    from phiflash.tutor.tokenizer import build_tokenizer

    out = tmp_path_factory.mktemp("tutor_tok")
    build_tokenizer(out, texts("train", 3000, seed=11), vocab_size=2048)
    return out


def test_tokenizer_files_and_specials(tok_dir):
    from phiflash.tutor.tokenizer import CHAT_TEMPLATE, SPECIAL_TOKENS

    for name in (
        "tokenizer.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
        "added_tokens.json",
        "generation_config.json",
        "vocab.json",
        "merges.txt",
    ):
        assert (tok_dir / name).is_file(), name
    tj = json.loads((tok_dir / "tokenizer.json").read_text())
    fx = json.loads((FIXTURE / "tokenizer.json").read_text())
    ours = [{k: v for k, v in t.items() if k != "id"} for t in tj["added_tokens"]]
    real = [{k: v for k, v in t.items() if k != "id"} for t in fx["added_tokens"]]
    assert ours == real  # same tokens, same order, same flags
    ids = [t["id"] for t in tj["added_tokens"]]
    n_bpe = len(tj["model"]["vocab"])
    assert ids == list(range(n_bpe, n_bpe + len(SPECIAL_TOKENS)))
    assert n_bpe + len(SPECIAL_TOKENS) <= 2048
    assert tj["decoder"] == fx["decoder"] and tj["post_processor"] == fx["post_processor"]

    cfg = json.loads((tok_dir / "tokenizer_config.json").read_text())
    fcfg = json.loads((FIXTURE / "tokenizer_config.json").read_text())
    assert cfg["chat_template"] == fcfg["chat_template"] == CHAT_TEMPLATE
    for k in fcfg:
        if k != "added_tokens_decoder":
            assert cfg[k] == fcfg[k], k
    assert [v["content"] for v in cfg["added_tokens_decoder"].values()] == [
        v["content"] for v in fcfg["added_tokens_decoder"].values()
    ]
    assert json.loads((tok_dir / "special_tokens_map.json").read_text()) == json.loads(
        (FIXTURE / "special_tokens_map.json").read_text()
    )
    gen = json.loads((tok_dir / "generation_config.json").read_text())
    eot, end = ids[0], ids[3]
    assert gen["eos_token_id"] == [end, eot]
    assert gen["bos_token_id"] == gen["pad_token_id"] == eot


def test_tokenizer_hf_chat_template_and_roundtrip(tok_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tok_dir))
    assert tok.eos_token == "<|endoftext|>"
    for ex in dataset("test", 60):
        msgs = prompt_messages(ex)
        text = tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
        assert text == render(msgs, add_generation_prompt=True)
        full = tok.apply_chat_template(ex["messages"], tokenize=False)
        assert full == render(ex["messages"])
        ids = tok.encode(full, add_special_tokens=False)
        assert tok.decode(ids) == full
        assert ids[-2:] == tok.convert_tokens_to_ids(["<|end|>", "<|endoftext|>"])
    for s in ("héllo wörld ∑ 😀", "  two  spaces\n\nnewlines\t", "x^2 + 3x = 10"):
        assert tok.decode(tok.encode(s, add_special_tokens=False)) == s


def test_tokenizer_splits_digits(tok_dir):
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(tok_dir / "tokenizer.json"))
    pieces = tok.encode("12345 + 678 = 13023").tokens
    digit_pieces = [p for p in pieces if any(c.isdigit() for c in p)]
    assert all(len(p.lstrip("Ġ")) == 1 for p in digit_pieces), pieces
    assert len(digit_pieces) == 13
    specials = tok.encode("<|user|>hi<|end|><|assistant|>").tokens
    assert specials[0] == "<|user|>" and "<|end|>" in specials and specials[-1] == "<|assistant|>"


def test_dialogue_token_lengths(tok_dir):
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(tok_dir / "tokenizer.json"))
    lens = [len(tok.encode(render(ex["messages"])).ids) for ex in dataset("test", 300)]
    assert max(lens) <= 360
    assert sum(lens) / len(lens) <= 170
