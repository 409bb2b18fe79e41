"""A safe calculator: arithmetic expressions evaluated exactly from their syntax tree, never by `eval`.

    evaluate("(3 + 4) * 2 ** 10 / 7")   # Fraction(1024)
    evaluate("__import__('os')")        # CalculatorError: not allowed: Call

Only number literals, + - * / // % **, unary + - and parentheses are read;
names, attributes, calls, subscripts and everything else are refused by node
type. Work is bounded before it is done: the text's length and nesting depth,
every intermediate value's magnitude, and a power's exponent (checked against
the base's size before computing, so "9**9**9" is refused in microseconds
rather than allocating gigabytes). Values are exact fractions; a float literal
is read as the fraction it denotes.

Used by the Countdown verifier (research.data.reasoning, + - * / on integers)
and the agents' calculator tool (research.apps.agent).
"""

import ast
import dataclasses
import fractions
import math
import operator


class CalculatorError(ValueError):
    """The expression is not one this calculator evaluates, or would exceed its limits."""


@dataclasses.dataclass(frozen=True)
class Limits:
    max_chars: int = 256
    max_depth: int = 32  # nesting of the syntax tree
    max_abs: int = 10**30  # every intermediate |value| (and its denominator)
    max_exponent: int = 128  # |exponent| of **; integer exponents only


OPERATORS = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}
SIGNS = (ast.UAdd, ast.USub)
FOUR_OPERATIONS = (ast.Add, ast.Sub, ast.Mult, ast.Div)  # and no signs: Countdown's rules


def evaluate(
    text: str,
    *,
    limits: Limits = Limits(),
    operators=(*OPERATORS, *SIGNS),
    integers_only: bool = False,
    used: list | None = None,
) -> fractions.Fraction:
    """The exact value of `text`; CalculatorError (a ValueError) naming the reason otherwise.

    operators: the ast operator classes allowed (default: all of OPERATORS and SIGNS); integers_only: refuse
    float literals; used: a list that receives the number literals in the order read.
    """
    if not isinstance(text, str):
        raise CalculatorError(f"expression must be a string, got {type(text).__name__}")
    if len(text) > limits.max_chars:
        raise CalculatorError(f"expression is {len(text)} characters long; the limit is {limits.max_chars}")
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except (SyntaxError, ValueError) as e:
        raise CalculatorError(f"not an expression: {e.msg if isinstance(e, SyntaxError) else e}") from None

    def check(value):
        if abs(value.numerator) > limits.max_abs or value.denominator > limits.max_abs:
            raise CalculatorError(f"an intermediate value exceeds the magnitude limit {limits.max_abs:.0e}")
        return value

    def walk(node, depth):
        if depth > limits.max_depth:
            raise CalculatorError(f"expression nests deeper than {limits.max_depth}")
        if isinstance(node, ast.Constant) and type(node.value) in (int, float):
            if integers_only and type(node.value) is not int:
                raise CalculatorError(f"only integers are allowed, got {node.value!r}")
            if isinstance(node.value, float) and not math.isfinite(node.value):
                raise CalculatorError(f"not a finite number: {node.value!r}")
            if used is not None:
                used.append(node.value)
            return check(fractions.Fraction(node.value))
        if isinstance(node, ast.UnaryOp) and type(node.op) in SIGNS and type(node.op) in operators:
            value = walk(node.operand, depth + 1)
            return -value if isinstance(node.op, ast.USub) else value
        if isinstance(node, ast.BinOp) and type(node.op) in OPERATORS and type(node.op) in operators:
            left, right = walk(node.left, depth + 1), walk(node.right, depth + 1)
            if isinstance(node.op, (ast.Div, ast.FloorDiv, ast.Mod)) and right == 0:
                raise CalculatorError("division by zero")
            if isinstance(node.op, ast.Pow):
                return check(_power(left, right, limits))
            return check(fractions.Fraction(OPERATORS[type(node.op)](left, right)))
        what = type(node.op).__name__ if isinstance(node, (ast.BinOp, ast.UnaryOp)) else type(node).__name__
        raise CalculatorError(f"not allowed: {what}")

    return walk(tree.body, 0)


def _power(base: fractions.Fraction, exponent: fractions.Fraction, limits: Limits) -> fractions.Fraction:
    if exponent.denominator != 1:
        raise CalculatorError(f"only integer exponents are allowed, got {exponent}")
    n = exponent.numerator
    if abs(n) > limits.max_exponent:
        raise CalculatorError(f"exponent {n} exceeds the limit {limits.max_exponent}")
    if base == 0 and n < 0:
        raise CalculatorError("division by zero")
    # The result's size is known before computing it: refuse what would exceed the magnitude limit.
    biggest = max(abs(base.numerator), base.denominator)
    if biggest > 1 and abs(n) * math.log10(biggest) > math.log10(limits.max_abs):
        raise CalculatorError(f"the power would exceed the magnitude limit {limits.max_abs:.0e}")
    return base**n


def format_value(value: fractions.Fraction) -> str:
    """An integer as itself, otherwise a decimal rounded to 6 places ("7", "2.5", "0.333333")."""
    if value.denominator == 1:
        return str(value.numerator)
    return f"{float(value):.6f}".rstrip("0").rstrip(".")
