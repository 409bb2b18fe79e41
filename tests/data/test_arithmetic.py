"""The safe calculator (research.data.arithmetic): exact values, refusals by node type, bounded work."""

import fractions
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from research.data.arithmetic import FOUR_OPERATIONS, CalculatorError, Limits, evaluate, format_value

F = fractions.Fraction


@st.composite
def expressions(draw, depth=0):
    """(text, exact value) of a random expression, built together so the value is a reference."""
    if depth >= 3 or draw(st.booleans()):
        n = draw(st.integers(0, 999))
        return str(n), F(n)
    op = draw(st.sampled_from("+-*/"))
    (a, va), (b, vb) = draw(expressions(depth + 1)), draw(expressions(depth + 1))
    if op == "/" and vb == 0:
        op = "+"
    value = {"+": va + vb, "-": va - vb, "*": va * vb, "/": va / vb if vb else None}[op]
    return f"({a} {op} {b})", value


@settings(max_examples=200, deadline=None)
@given(expressions())
def test_values_are_exact(case):
    text, value = case
    assert evaluate(text) == value


def test_every_operator_and_sign():
    assert evaluate("7 // 2 + 7 % 3 - -2 ** 3 + +1") == 3 + 1 + 8 + 1
    assert evaluate("2 ** -2") == F(1, 4) and evaluate("0.5 * 4") == 2
    assert format_value(F(7)) == "7" and format_value(F(5, 2)) == "2.5" and format_value(F(1, 3)) == "0.333333"


@pytest.mark.parametrize(
    "text, reason",
    [
        ("x + 1", "not allowed: Name"),
        ("(1).real", "not allowed: Attribute"),
        ("__import__('os').system('true')", "not allowed: Call"),
        ("abs(-1)", "not allowed: Call"),
        ("[1, 2][0]", "not allowed: Subscript"),
        ("lambda: 1", "not allowed: Lambda"),
        ("'a' * 3", "not allowed: Constant"),
        ("True + 1", "not allowed: Constant"),
        ("1j * 1j", "not allowed: Constant"),
        ("1 << 9999", "not allowed: LShift"),
        ("not 1", "not allowed: Not"),
        ("1 < 2", "not allowed: Compare"),
        ("1 / 0", "division by zero"),
        ("5 % (2 - 2)", "division by zero"),
        ("0 ** -1", "division by zero"),
        ("2 ** 0.5", "only integer exponents"),
        ("2 ** 1000", "exponent 1000 exceeds the limit"),
        ("10 ** 100", "would exceed the magnitude limit"),
        ("99999999999 * 99999999999 * 99999999999", "exceeds the magnitude limit"),
        ("1 +", "not an expression"),
        ("1" * 300, "characters long"),
        ("-" * 40 + "1", "nests deeper than 32"),
    ],
)
def test_refusals_name_the_reason(text, reason):
    with pytest.raises(CalculatorError, match=reason):
        evaluate(text)


def test_work_is_bounded_before_it_is_done():
    start = time.perf_counter()
    for text in ("9 ** 9 ** 9", "(10 ** 29) ** 128", "2 ** 128 ** 128", "((2 ** 99) ** 99) ** 99"):
        with pytest.raises(CalculatorError):
            evaluate(text)
    assert time.perf_counter() - start < 0.1  # refused from the operands' sizes, not computed
    assert evaluate("2 ** 99", limits=Limits(max_abs=2**99)) == 2**99


def test_countdown_rules_are_a_restriction():
    used = []
    assert evaluate("(25 - 5) * 4", operators=FOUR_OPERATIONS, integers_only=True, used=used) == 80
    assert used == [25, 5, 4]
    for text in ("-5 + 10", "2 ** 3", "2.5 * 2", "7 // 2"):
        with pytest.raises(CalculatorError):
            evaluate(text, operators=FOUR_OPERATIONS, integers_only=True)
