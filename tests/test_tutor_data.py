import collections
import json
import random
import re
from fractions import Fraction
from pathlib import Path

import pytest

from phiflash.tutor import data as D
from phiflash.tutor.check import check_answer, solve_problem
from phiflash.tutor.data import (
    EVAL_SETS,
    KINDS,
    MATH_KINDS,
    dataset,
    eval_set,
    make_example,
    prompt_messages,
    render,
    split_of,
    texts,
)

FIXTURE = Path(__file__).parent / "fixtures" / "sambay-tiny"
BOXED_REPLY = re.compile(r"<think>[^<>]+</think>[^<>\n]*\\boxed\{[^\n]+\}[^<>\n]*")


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
    assert eval_set("phrasings", 20) == eval_set("phrasings", 40)[:20]


def test_example_shape_and_kinds():
    rng = random.Random(0)
    for kind in KINDS:
        for phrasing in ("train", "heldout"):
            for _ in range(20):
                ex = make_example(rng, kind, phrasing)
                assert ex["kind"] == kind
                roles = [m["role"] for m in ex["messages"]]
                if roles[0] == "system":
                    roles = roles[1:]
                if kind in ("followup", "newq", "refusal"):  # 0-3 earlier questions, then one
                    ok = (4, 6, 8) if kind != "refusal" else (2, 4, 6, 8)
                    assert len(roles) in ok and roles == ["user", "assistant"] * (
                        len(roles) // 2
                    ), roles
                else:
                    assert roles == ["user", "assistant"], roles
                reply = ex["messages"][-1]["content"]
                if kind == "refusal":
                    assert ex["answer"] is None and "\\boxed" not in reply
                    assert "arithmetic" in reply and len(reply) < 400  # says what it can do
                else:
                    assert BOXED_REPLY.fullmatch(reply), reply
                    for m in ex["messages"][:-1]:
                        if m["role"] == "assistant":
                            assert BOXED_REPLY.fullmatch(m["content"])
                assert prompt_messages(ex) == ex["messages"][:-1]


def _shape(q: str) -> str:
    return re.sub(r"[\d,./]+", "N", q.lower()).rstrip("?. ")


def test_round_robin_kinds_and_phrasing_variety():
    ds = dataset("train", 2200, seed=1)
    assert [ex["kind"] for ex in ds[: len(KINDS)]] == list(KINDS)
    for kind in KINDS:
        qs = [ex["question"] for ex in ds if ex["kind"] == kind]
        assert len({_shape(q) for q in qs}) >= 10, kind
    qs = [ex["messages"][-2]["content"] for ex in ds]
    assert any(q.startswith("Please reason step by step") for q in qs)
    assert any(ex["messages"][0]["role"] == "system" for ex in ds)
    # casual typing, every operator spelling, small and large numbers, negative answers
    assert any(q.startswith("whats ") for q in qs) and any(q == q.lower() for q in qs)
    for sym in (
        "+",
        "plus",
        "−",
        "minus",
        "take away",
        "×",
        "*",
        "·",
        " x ",
        "times",
        "multiplied by",
        "÷",
        "/",
        "divided by",
    ):
        assert any(sym in q for q in qs), sym
    answers = [int(ex["answer"]) for ex in ds if ex["kind"] in ("add", "sub", "mul", "div")]
    assert min(answers) < 0 and any(0 <= a < 10 for a in answers) and max(answers) >= 10**6
    assert any(re.search(r"\d,\d{3}", q) for q in qs)  # thousands separators
    assert any("$" in q for q in qs)  # money


def test_linear_forms():
    qs = [ex["question"] for ex in dataset("train", 400, seed=4, kinds=("linear",))]
    eqs = " ".join(qs)
    assert re.search(r"(?<![\w-])-?1?\d{1,2}[a-z] = -?\d+", eqs)  # no constant: "2x = 10"
    assert re.search(r"[a-z] [-+] \d+ = -?\d*[a-z]", eqs)  # the unknown on both sides
    assert re.search(r"1[0-5][a-z]", eqs)  # coefficients of 10 and more
    assert any(int(ex["answer"]) < 0 for ex in dataset("train", 100, seed=4, kinds=("linear",)))


def test_answers_are_correct_by_sympy():
    """The generator's gold answers agree with the independent sympy checker wherever the
    checker can read the question (all kinds but word problems and follow-ups)."""
    checked = 0
    for split in ("train", "test"):
        for ex in dataset(split, 1100, seed=5, kinds=MATH_KINDS + ("newq",)):
            sol = solve_problem(ex["question"], timeout=60)  # generous: a loaded CI machine
            if sol is None:
                assert ex["kind"] in ("word", "newq"), ex["question"]
                continue
            gold = Fraction(ex["answer"])
            assert sol.value == gold or (sol.signless and sol.value == -gold), ex["question"]
            checked += 1
    assert checked > 1800


def test_followups_use_the_previous_answer():
    """Every follow-up, the last question and any earlier one, starts from the boxed answer
    just before it and computes the right number."""
    seen = 0
    for ex in dataset("train", 300, seed=6, kinds=("followup", "newq")):
        replies = [m["content"] for m in ex["messages"] if m["role"] == "assistant"]
        for before, reply in zip(replies, replies[1:]):
            think, final = reply.split("</think>")
            lead = re.match(r"<think>(?:The previous answer is|[a-z] =) (-?\d+)\.\n", think)
            if lead is None:
                assert ex["kind"] == "newq" or reply is not replies[-1], think
                continue
            seen += 1
            prev = re.search(r"\\boxed\{(-?\d+)(?:\\%)?\}", before)[1]
            assert lead[1] == prev, (prev, think)
            op = re.search(r"\(?(-?\d+)\)? ([-+×÷]) (\d+) = \\boxed\{(-?\d+)\}", final)
            a, sym, k, ans = int(op[1]), op[2], int(op[3]), int(op[4])
            assert a == int(prev)
            if reply is replies[-1]:
                assert ans == int(ex["answer"])
            if sym == "÷":
                assert a % k == 0 and ans * k == a
            else:
                assert ans == {"+": a + k, "-": a - k, "×": a * k}[sym]
    assert seen > 200  # the 150 last follow-ups and the follow-ups inside longer dialogues


def test_dialogues_run_to_four_questions():
    """A student keeps one conversation for several questions: follow-ups and new questions
    come after one to three earlier questions, an out-of-scope request after none to three, in
    training and in the eval sets."""
    cases = (
        ((2, 3, 4), dataset("train", 200, seed=4, kinds=("followup", "newq"))),
        ((2, 3, 4), eval_set("followups", 200)),
        ((1, 2, 3, 4), dataset("train", 300, seed=4, kinds=("refusal",))),
        ((1, 2, 3, 4), eval_set("refusals", 300)),
    )
    for lengths, exs in cases:
        users = collections.Counter(sum(m["role"] == "user" for m in ex["messages"]) for ex in exs)
        assert set(users) == set(lengths) and min(users.values()) >= 15, users


def _value(expr: str) -> Fraction:
    """A trace's 'a op b op c' (integers, parenthesised negatives, × ÷ before + -)."""
    toks = re.findall(r"\(-?\d+\)|-?\d+|[-+×÷−]", expr.replace(" - ", " − "))
    toks = ["-" if t == "−" else t for t in toks]
    terms, ops = [Fraction(int(toks[0].strip("()")))], []
    for op, t in zip(toks[1::2], toks[2::2]):
        v = Fraction(int(t.strip("()")))
        if op == "×":
            terms[-1] *= v
        elif op == "÷":
            terms[-1] /= v
        else:
            ops.append(op)
            terms.append(v)
    total = terms[0]
    for op, v in zip(ops, terms[1:]):
        total = total + v if op == "+" else total - v
    return total


def test_steps_are_arithmetically_consistent():
    """Every 'a op b = c' written in a reasoning trace is true."""
    num = r"(?:\(-?\d+\)|-?\d+)"
    pat = re.compile(rf"(?<![\d/.])({num}(?: [-+×÷] {num})+) = ({num})(?![\d/%])")
    checked = 0
    for ex in dataset("train", 800, seed=2):
        for m_ in ex["messages"]:
            if m_["role"] != "assistant":
                continue
            think = m_["content"].split("</think>")[0]
            for m in pat.finditer(think):
                assert _value(m[1]) == int(m[2].strip("()")), (m[0], think)
                checked += 1
    assert checked > 1500


def test_test_split_is_disjoint_from_train():
    test = dataset("test", 500)
    assert len({ex["key"] for ex in test if ex["kind"] != "refusal"}) == len(
        [ex for ex in test if ex["kind"] != "refusal"]
    )
    assert all(split_of(ex["split_key"]) == "test" for ex in test)
    train = dataset("train", 5000)
    assert all(split_of(ex["split_key"]) == "train" for ex in train)
    assert not {ex["key"] for ex in test} & {ex["key"] for ex in train}
    for name in EVAL_SETS:  # refusals: held-out templates, never trained on (no problems)
        if name != "refusals":
            assert all(split_of(ex["split_key"]) == "test" for ex in eval_set(name, 100))
    assert len({ex["question"] for ex in eval_set("refusals", 100)}) == 100


def _template_regex(t: str) -> re.Pattern:
    """A template as a regex: number placeholders match text with a digit, the others any."""
    out, pos = "^", 0
    t = t.rstrip("?.")
    for m in re.finditer(r"\{(\w+)\}", t):
        out += re.escape(t[pos : m.start()])
        special = {"v": "[a-z]", "eq": ".*?=.*?"}
        default = ".+?" if m[1] in ("n", "i", "t", "verb", "word") else ".*?\\d.*?"
        out += special.get(m[1], default)
        pos = m.end()
    return re.compile(out + re.escape(t[pos:]) + r"[?.]?$", re.I)


# Every (train templates, held-out templates) pool of a math question.
MATH_POOLS = [
    D.EXPR_TEMPLATES,
    D.FRAC_TEMPLATES,
    D.FRAC_OF_TEMPLATES,
    D.LINEAR_TEMPLATES,
    D.PCT_OF_TEMPLATES,
    D.PCT_WHAT_TEMPLATES,
    D.PCT_CHANGE_TEMPLATES,
    D.PCT_SIGNED_TEMPLATES,
    D.DISCOUNT_TEMPLATES,
    *D.WORD_OP_TEMPLATES.values(),
    *D.WORD_TEMPLATES.values(),
    *D.FOLLOWUP_TEMPLATES.values(),
]


def _words(template: str) -> set[str]:
    return set(re.findall(r"[a-z]+", re.sub(r"\{[^}]*\}", " ", template).lower()))


def test_heldout_math_words_are_taught():
    """A held-out math template is a new sentence, never new words: the model has no
    pre-training, so a word it never saw ("lots", "rope", "marked down") cannot mean anything
    to it. Every word of a held-out math template is in some training template (a refusal's
    "tell me" included)."""
    taught = set().union(*(_words(t) for pool in MATH_POOLS for t in pool[0]))
    taught |= set().union(*(_words(t) for _, t in D.VAR_FOLLOWUPS[0]))
    taught |= set().union(*(_words(t) for t in D.REFUSAL_TEMPLATES[0]))  # "tell me about …"
    heldout = [t for pool in MATH_POOLS for t in pool[1]] + [t for _, t in D.VAR_FOLLOWUPS[1]]
    missing = {t: sorted(_words(t) - taught) for t in heldout if _words(t) - taught}
    assert not missing, missing


def test_heldout_phrasings_never_trained_on():
    pools = [*MATH_POOLS, D.REFUSAL_TEMPLATES]
    heldout = [_template_regex(t) for pool in pools for t in pool[1]]
    heldout += [_template_regex(t) for _, t in D.VAR_FOLLOWUPS[1]]
    assert len(heldout) >= 40
    train_qs = {
        m["content"]
        for ex in dataset("train", 6000, seed=9)
        for m in ex["messages"]
        if m["role"] == "user"
    }
    for rx in heldout:
        hits = [q for q in train_qs if rx.match(q)]
        assert not hits, (rx.pattern, hits[:3])
    test_qs = [ex["question"] for ex in eval_set("phrasings", 200)]
    assert sum(any(rx.match(q) for rx in heldout) for q in test_qs) >= 150


def test_zero_false_marks_on_the_eval_sets():
    """The chat's checker never marks a correct reply ✗, and marks a wrong one ✗ whenever it
    can read the question (measured on the generated replies of every eval set)."""
    marks = {"ok": 0, "none": 0}
    for name in EVAL_SETS:
        for ex in eval_set(name, 150):
            users = [m["content"] for m in ex["messages"] if m["role"] == "user"]
            reply = ex["messages"][-1]["content"]
            r = check_answer(users[-1], reply, follow_up=len(users) > 1, timeout=60)
            assert r is None or r.ok, (users[-1], r)
            marks["ok" if r else "none"] += 1
            if r is not None:
                wrong = reply[: reply.rindex("\\boxed{")] + "\\boxed{12345678}."
                assert not check_answer(users[-1], wrong, follow_up=len(users) > 1, timeout=60).ok
    assert marks["ok"] >= 300  # of 600: math questions but word problems, follow-ups, refusals


def test_commutative_keys():
    rng = random.Random(3)
    for _ in range(200):
        ex = make_example(rng, "add")
        a, b = map(int, re.findall(r"\d+", ex["question"].replace(",", ""))[:2])
        assert ex["key"] == f"add:{min(a, b)}+{max(a, b)}"


def test_bad_arguments():
    with pytest.raises(ValueError):
        dataset("valid", 3)
    with pytest.raises(ValueError):
        dataset("train", 3, kinds=("calculus",))
    with pytest.raises(ValueError):
        dataset("train", 3, phrasing="new")
    with pytest.raises(ValueError):
        eval_set("homework", 3)


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
    # the trainer's longest sequence (TrainConfig.max_len; it drops the rare longer dialogue)
    assert sorted(lens)[int(0.99 * len(lens))] <= 1024
    assert max(lens) <= 2048 and sum(lens) / len(lens) <= 200
