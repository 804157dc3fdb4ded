import pytest

from phiflash.tutor.answers import (
    answers_equal,
    extract_boxed,
    normalize_answer,
    parse_number,
    score_reply,
)


@pytest.mark.parametrize(
    "text, expected",
    [
        (r"The answer is \boxed{5}.", "5"),
        (r"\boxed{1} then \boxed{2}", "2"),
        (r"$\boxed{\frac{3}{4}}$", r"\frac{3}{4}"),
        (r"\boxed{\frac{\sqrt{2}}{2}}", r"\frac{\sqrt{2}}{2}"),
        (r"\boxed{ 25\% }", r" 25\% "),
        (r"\boxed {7}", "7"),
        (r"\boxed 5$.", "5"),
        (r"\fbox{9}", "9"),
        (r"\boxed{\{1, 2\}}", r"\{1, 2\}"),
        (r"<think>maybe \boxed{3}</think>so \boxed{4}", "4"),
    ],
)
def test_extract_boxed(text, expected):
    assert extract_boxed(text) == expected


@pytest.mark.parametrize("text", [None, "", "no box here", r"\boxed{unclosed", r"\boxedx{1}"])
def test_extract_boxed_none(text):
    assert extract_boxed(text) is None


@pytest.mark.parametrize(
    "raw, norm",
    [
        ("$5$", "5"),
        ("x = 5", "5"),
        ("y=-3", "-3"),
        (r"\dfrac{3}{4}", r"\frac{3}{4}"),
        (r"\tfrac34", r"\frac{3}{4}"),
        (r"25\%", "25"),
        ("25 %", "25"),
        ("1,234,567", "1234567"),
        (r"1{,}234", "1234"),
        (r"1\,234", "1234"),
        ("42.", "42"),
        (r"\text{12}", "12"),
        (r"\left( 7 \right)", "7"),
        ("{8}", "8"),
        (r"\$30", "30"),
        ("90^\\circ", "90"),
        ("−4", "-4"),
    ],
)
def test_normalize_answer(raw, norm):
    assert normalize_answer(raw) == norm


@pytest.mark.parametrize(
    "pred, gold",
    [
        ("3/4", "0.75"),
        (r"\frac{3}{4}", "3/4"),
        (r"\dfrac{3}{4}", "0.75"),
        (r"\dfrac34", "3/4"),
        (r"\frac{6}{8}", "3/4"),
        ("0.750", "3/4"),
        ("-5/12", r"-\frac{5}{12}"),
        (r"\frac{-5}{12}", "-5/12"),
        (r"-\frac{5}{12}", "-5/12"),
        ("-(5/12)", "-5/12"),
        ("19/12", r"1\frac{7}{12}"),
        ("25%", "25"),
        (r"25\%", "25"),
        ("x = 5", "5"),
        (r"$x=-8$", "-8"),
        ("1,234", "1234"),
        (" $ 12 $ ", "12"),
        ("12.0", "12"),
        (".5", "1/2"),
        ("+7", "7"),
        ("0.333", "1/3"),
        ("0.6667", "2/3"),
        (r"\text{apples}", "Apples"),
        ("2", r"\frac{4}{2}"),
    ],
)
def test_answers_equal(pred, gold):
    assert answers_equal(pred, gold)


@pytest.mark.parametrize(
    "pred, gold",
    [
        ("3/5", "3/4"),
        ("0.33", "1/3"),  # too few places to be a rounding of 1/3
        ("0.7", "3/4"),
        ("-5", "5"),
        ("25", "0.25"),
        ("", "5"),
        (None, "5"),
        ("5", None),
        ("1/0", "0"),
        ("12", "123"),
        ("x", "5"),
    ],
)
def test_answers_not_equal(pred, gold):
    assert not answers_equal(pred, gold)


def test_parse_number():
    from fractions import Fraction

    assert parse_number("-3/4") == Fraction(-3, 4)
    assert parse_number(r"\frac{1}{2}") == Fraction(1, 2)
    assert parse_number(r"\frac{1}{2}+\frac{1}{3}") is None
    assert parse_number("1.25") == Fraction(5, 4)
    assert parse_number("abc") is None


def test_score_reply():
    ok, pred = score_reply(r"<think>2+3=5</think>The answer is $\boxed{5}$.", "5")
    assert ok and pred == "5"
    ok, pred = score_reply("no box: 5", "5")
    assert not ok and pred is None


def test_generated_answers_match_their_boxes():
    from phiflash.tutor.data import dataset

    for ex in dataset("train", 300, seed=3):
        reply = ex["messages"][-1]["content"]
        if ex["answer"] is None:  # a refusal: no answer box
            assert ex["kind"] == "refusal" and extract_boxed(reply) is None
            continue
        assert answers_equal(extract_boxed(reply), ex["answer"]), reply
