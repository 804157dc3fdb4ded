"""The thinking budget: after N tokens inside <think> the engine generates </think> (several
plain-text tokens in the tutor's tokenizer, as in the real model's) and the answer follows.

Checked on the bundled tutor, greedy, on both engines, by the token ids the engine streams:
the think block holds at most N tokens before the forced ids of </think>, an answer follows,
and without a budget the same prompt thinks for longer (so the budget is what cut it).
"""

import mlx.core as mx
import pytest

from phiflash.cli import main as cli_main
from phiflash.engine import GenerationParams
from phiflash.errors import InvalidParamsError
from phiflash.paths import DEFAULT_MODEL_DIR
from phiflash.thinking import (
    OPEN_WITHIN,
    PROMPT_TAIL,
    BudgetFeed,
    ThinkingBudget,
    opens_thinking,
)

QUESTION = [{"role": "user", "content": "What is 4821 + 3967?"}]
BUDGET = 8


def split_reply(chunks, decode):
    """(tokens inside the first think block, tokens from its closing tag on, answer text).

    A token belongs to the block when it carries text after ``<think>`` and starts before
    ``</think>``; the closing tag starts at the token that holds its ``<``."""
    ids = [c.token for c in chunks if c.token is not None]
    ends, text = [], ""
    for t in ids:
        text += decode(t)
        ends.append(len(text))
    body_start = text.index("<think>") + len("<think>")
    close_at = text.index("</think>", body_start)
    starts = [0, *ends[:-1]]
    inside = [t for t, a, b in zip(ids, starts, ends) if b > body_start and a < close_at]
    close_start = next(i for i, b in enumerate(ends) if b > close_at)
    if starts[close_start] < close_at:  # that token also held reasoning text
        close_start += 1
    return inside, ids[close_start:], text[close_at + len("</think>") :]


# -- the state machine ------------------------------------------------------------------------


def test_state_machine_counts_and_forces():
    pieces = {1: "<th", 2: "ink>", 3: "a", 4: "b", 10: "</", 11: "think", 12: ">"}
    tb = ThinkingBudget(2, [10, 11, 12], pieces.__getitem__)
    for t in (1, 2):
        assert tb.forced() is None
        tb.feed(t)
    assert tb.state == "thinking" and tb.thinking_tokens == 0
    tb.feed(3)
    assert tb.forced() is None
    tb.feed(4)
    assert tb.thinking_tokens == 2
    forced = []
    while tb.forced() is not None:
        forced.append(tb.forced())
        tb.feed(forced[-1])
    assert forced == [10, 11, 12] and tb.state == "done"
    tb.feed(3)  # the answer: free
    assert tb.forced() is None


def test_state_machine_no_limit_and_natural_close():
    pieces = {1: "<think>", 3: "x", 10: "</", 11: "think", 12: ">"}
    tb = ThinkingBudget(0, [10, 11, 12], pieces.__getitem__)
    for t in [1] + [3] * 50:
        tb.feed(t)
        assert tb.forced() is None
    assert tb.thinking_tokens == 50
    tb = ThinkingBudget(5, [10, 11, 12], pieces.__getitem__)
    for t in (1, 3, 10, 11, 12, 3, 3, 3, 3, 3):
        assert tb.forced() is None  # closed by the model itself before the budget
        tb.feed(t)
    assert tb.state == "done"


def test_prompt_that_opens_the_block():
    assert opens_thinking("<|assistant|><think>")
    assert not opens_thinking("<|assistant|><think>a</think>b<|end|><|assistant|>")
    # an earlier reply stopped while thinking: its open block is history, not this reply's
    assert not opens_thinking("<|assistant|><think>a<|end|><|user|>go on<|end|><|assistant|>")
    pieces = {3: "x", 10: "</", 11: "think", 12: ">"}
    tb = ThinkingBudget(1, [10, 11, 12], pieces.__getitem__, inside=True)
    tb.feed(3)
    assert tb.forced() == 10


def test_negative_budget_is_refused():
    with pytest.raises(InvalidParamsError, match="thinking budget"):
        GenerationParams(thinking_budget=-1).validate()
    with pytest.raises(ValueError):
        ThinkingBudget(-1, [1], str)


# -- the engines on the tutor -----------------------------------------------------------------


@pytest.fixture(scope="module")
def mlx_engine():
    from phiflash_mlx.engine import MLXEngine

    return MLXEngine(str(DEFAULT_MODEL_DIR))


@pytest.fixture(scope="module")
def gguf_engine(tmp_path_factory):
    from phiflash.quantize.gguf_convert import convert
    from phiflash_gguf.engine import GGUFEngine

    path = convert(
        DEFAULT_MODEL_DIR, tmp_path_factory.mktemp("g") / "tutor-f32.gguf", "f32", progress=False
    )
    return GGUFEngine(str(path), n_ctx=4096)


def _decoder(engine):
    if engine.name == "mlx":
        return lambda t: engine.tokenizer.decode([t])
    return lambda t: engine.llm.detokenize([t]).decode("utf-8", "replace")


def _close_ids(engine):
    if engine.name == "mlx":
        return engine.tokenizer.encode("</think>", add_special_tokens=False)
    return engine.llm.tokenize(b"</think>", add_bos=False, special=False)


@pytest.mark.parametrize("which", ["mlx", "gguf"])
def test_budget_ends_the_think_block(which, request):
    engine = request.getfixturevalue(f"{which}_engine")
    decode = _decoder(engine)
    free = list(engine.stream(QUESTION, GenerationParams(max_tokens=200, temperature=0)))
    engine.reset()
    capped = list(
        engine.stream(
            QUESTION, GenerationParams(max_tokens=200, temperature=0, thinking_budget=BUDGET)
        )
    )
    free_inside, _, _ = split_reply(free, decode)
    inside, close, answer = split_reply(capped, decode)
    assert len(free_inside) > BUDGET + 5, "the tutor must think for longer than the budget"
    assert len(inside) <= BUDGET
    # the block ends with the tokenizer's own ids of </think>, forced one by one
    ids = _close_ids(engine)
    assert len(ids) > 1
    assert close[: len(ids)] == ids
    assert answer.strip(), "an answer follows the forced </think>"
    assert capped[-1].generation_tokens <= 200  # the budget counts toward max_tokens
    # the reasoning before the cut is the model's own: the same tokens as without a budget
    assert inside == free_inside[: len(inside)]


def test_mlx_budget_processor_per_row_in_batch_generator(mlx_engine):
    """The server's path: one processor per row of mlx-lm's BatchGenerator, each row its own
    budget (and one row with none)."""
    from mlx_lm.generate import BatchGenerator

    from phiflash_mlx.thinking import budget_processor

    tok = mlx_engine.tokenizer
    prompt = tok.encode(mlx_engine.apply_chat_template(QUESTION), add_special_tokens=False)
    budgets = [4, 12, 0]
    gen = BatchGenerator(
        mlx_engine.model, max_tokens=200, sampler=lambda lp: mx.argmax(lp, axis=-1)
    )
    procs = [[budget_processor(tok, n)] if n else [] for n in budgets]
    uids = gen.insert([prompt] * 3, logits_processors=procs)
    out = {u: [] for u in uids}
    done = set()
    for _ in range(400):
        for r in gen.next_generated():
            out[r.uid].append(r.token)
            if r.finish_reason is not None:
                done.add(r.uid)
        if done == set(uids):
            break
    decode = _decoder(mlx_engine)

    class C:  # the shape split_reply reads
        def __init__(self, t):
            self.token = t

    lengths = []
    for uid, n in zip(uids, budgets):
        inside, close, answer = split_reply([C(t) for t in out[uid]], decode)
        if n:
            assert len(inside) <= n and close[: len(_close_ids(mlx_engine))] == _close_ids(
                mlx_engine
            )
            assert answer.strip()
        lengths.append(len(inside))
    assert lengths[0] < lengths[1] < lengths[2]


def test_generate_cli_flag(capsys):
    code = cli_main(
        [
            "generate",
            "--prompt",
            "What is 4821 + 3967?",
            "--temp",
            "0",
            "--max-tokens",
            "120",
            "--thinking-budget",
            "3",
            "--verbose",
            "False",
        ]
    )
    out = capsys.readouterr().out
    assert code == 0
    think = out.split("<think>", 1)[1].split("</think>", 1)[0]
    assert len(think) < 40 and out.split("</think>", 1)[1].strip()
    assert cli_main(["generate", "--thinking-budget", "-2"]) == 1
    assert "--thinking-budget" in capsys.readouterr().err


def test_gguf_budget_in_llama_cpp_pythons_own_loop(gguf_engine):
    """The server's GGUF path: llama-cpp-python's create_chat_completion with the budget as a
    logits processor (one per request)."""
    from llama_cpp import LogitsProcessorList

    from phiflash_gguf.thinking import budget_logits_processor

    llm = gguf_engine.llm
    gguf_engine.reset()
    try:
        texts = []
        for n in (0, BUDGET):
            procs = LogitsProcessorList([budget_logits_processor(llm, n)]) if n else None
            r = llm.create_completion(
                gguf_engine.apply_chat_template(QUESTION),
                max_tokens=200,
                temperature=0.0,
                logits_processor=procs,
            )
            texts.append(r["choices"][0]["text"])
            llm.reset()
        free, capped = texts
        decode = _decoder(gguf_engine)

        class C:
            def __init__(self, t):
                self.token = t

        def split(text):
            ids = llm.tokenize(text.encode(), add_bos=False, special=False)
            return split_reply([C(t) for t in ids], decode)

        assert len(split(free)[0]) > BUDGET + 5
        inside, _, answer = split(capped)
        assert len(inside) <= BUDGET + 1 and answer.strip()  # (+1: re-tokenized text)
        assert capped.split("</think>")[0] != free.split("</think>")[0]
    finally:
        gguf_engine.reset()


@pytest.mark.parametrize("which", ["mlx", "gguf"])
def test_prompt_that_opened_the_block_counts_from_the_first_token(which, request):
    """A template that ends its generation prompt with <think>: the budget counts from the
    first generated token."""
    engine = request.getfixturevalue(f"{which}_engine")
    decode = _decoder(engine)
    prompt = engine.apply_chat_template(QUESTION) + "<think>"
    engine.reset()
    chunks = list(
        engine.stream_prompt(
            prompt, GenerationParams(max_tokens=60, temperature=0, thinking_budget=4)
        )
    )
    ids = [c.token for c in chunks]
    text = "".join(decode(t) for t in ids)
    assert "</think>" in text
    close = _close_ids(engine)
    start = next(i for i in range(len(ids)) if ids[i : i + len(close)] == close)
    assert start <= 4 and text.split("</think>", 1)[1].strip()
    engine.reset()


def test_budget_feed_reads_only_new_tokens():
    """The processors' shared bookkeeping: the prompt tail once, then each new token once."""
    vocab = [chr(c) for c in range(128)]  # token id = one ASCII character
    ids = [ord(c) for c in "</think>"]
    asked, starts = [], []

    def start(tail):
        starts.append(tail)
        text = "".join(vocab[t] for t in tail)
        return ThinkingBudget(3, ids, lambda t: vocab[t], inside=opens_thinking(text))

    prompt = [ord(c) for c in "x" * 100 + "<|assistant|><think>"]
    tokens = list(prompt)
    feed = BudgetFeed(start)

    def step():
        def last(k):
            asked.append(k)
            return tokens[-k:]

        return feed.forced(len(tokens), last)

    assert step() is None  # the prompt opened the block: 0 tokens spent
    assert starts == [prompt[-PROMPT_TAIL:]] and asked == [PROMPT_TAIL]
    out = []
    for t in "ab":
        tokens.append(ord(t))
        assert step() is None
    tokens.append(ord("c"))  # the 3rd token of thinking: </think> is forced from here
    for _ in ids:
        out.append(step())
        tokens.append(out[-1])
    assert out == ids and asked[1:] == [1] * (len(asked) - 1)  # one new token per call
    assert step() is None and feed.done
    empty = BudgetFeed(start)
    assert empty.forced(0, lambda k: [][-k:]) is None and starts[-1] == []


def test_a_reply_without_reasoning_is_not_watched_to_its_end():
    decoded = []

    def decode(t):
        decoded.append(t)
        return "<think>" if t == 1 else "a"

    tb = ThinkingBudget(2, [9], decode)
    for _ in range(OPEN_WITHIN):
        tb.feed(0)
    assert tb.state == "done" and tb.forced() is None
    tb.feed(1)  # a late "<think>" is answer text: never forced closed
    assert tb.state == "done" and len(decoded) == OPEN_WITHIN
    late = ThinkingBudget(2, [9], decode)  # opened within the window: tracked as before
    for t in [0] * (OPEN_WITHIN - 1) + [1, 0, 0]:
        late.feed(t)
    assert late.state == "closing" and late.forced() == 9
