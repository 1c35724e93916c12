"""What rendering one chat template may cost: CPU time and the size of what it makes.

A chat template is code, from a model's files or from a client (/api/create's template, a
Modelfile's TEMPLATE). `{% for i in range(99999) %}{% for j in range(99999) %}{% endfor %}
{% endfor %}` or `'x' * 10**10` would pin a core or exhaust memory, and --request-timeout cannot
stop a render: it runs in a worker thread. So each render has a `RenderBudget`, checked by the
environment's hooks: every loop iteration (the parser wraps each `for`'s iterable), call, filter,
`~` concatenation, intercepted operator and output chunk takes a tick, and a tick checks the
render's CPU time now and then. Operations that can make a huge value in one step (`*`, `**`,
`+`, `%`, str.replace, join, padding to a width, ...) are checked before they run; every checked
result counts towards the render's allocations. Past a limit the render stops with
InvalidRequestError (400). Real templates stay far inside: a 100-message conversation with tools
renders in milliseconds and allocates well under a megabyte.
"""

from __future__ import annotations

import functools
import re
import string
import time
from collections.abc import Callable, ItemsView, Iterable, Iterator, KeysView, ValuesView
from contextvars import ContextVar
from typing import Any

from jinja2 import nodes
from jinja2.runtime import Context
from jinja2.sandbox import ImmutableSandboxedEnvironment
from jinja2.utils import Namespace
from jinja2.visitor import NodeTransformer

from ember.errors import InvalidRequestError

# CPU seconds of one render (the rendering thread's own time, so a busy server does not make
# a template fail), the largest value (str characters; 8 per list item) and the total a render
# may allocate. The default --max-body-size (8 MiB) of prompt text fits a value 2x over.
MAX_CPU_S = 2.0
MAX_VALUE_SIZE = 16 * 2**20
MAX_ALLOCATED = 16 * MAX_VALUE_SIZE
_TICKS_PER_CLOCK_READ = 64

# Integers past this many bits: one multiplication or power of them is seconds of CPU that no
# check can interrupt, and no chat template needs them.
MAX_INT_BITS = 65536

_ITER_FILTER = "ember budget iter"  # names no template can spell (they hold a space)
_CONCAT_FILTER = "ember budget concat"
_TEXT_FILTER = "ember budget text"


class RenderBudget:
    """One render's limits and what it has used so far."""

    __slots__ = ("_countdown", "allocated", "cpu_deadline", "cpu_s", "max_allocated", "max_value")

    def __init__(
        self,
        cpu_s: float = MAX_CPU_S,
        max_value: int = MAX_VALUE_SIZE,
        max_allocated: int = MAX_ALLOCATED,
    ) -> None:
        self.cpu_s = cpu_s
        self.cpu_deadline = time.thread_time() + cpu_s
        self.max_value = max_value
        self.max_allocated = max_allocated
        self.allocated = 0
        self._countdown = _TICKS_PER_CLOCK_READ

    def tick(self) -> None:
        self._countdown -= 1
        if self._countdown <= 0:
            self._countdown = _TICKS_PER_CLOCK_READ
            if time.thread_time() > self.cpu_deadline:
                raise too_expensive(f"it ran longer than {self.cpu_s:g}s of CPU")

    def expect(self, size: int) -> None:
        """A value of `size` is about to be made (or was): refuse it past the limits."""
        if size > self.max_value:
            raise too_expensive(
                f"it made a value of {size} characters (the limit: {self.max_value})"
            )
        self.allocated += size
        if self.allocated > self.max_allocated:
            raise too_expensive(f"it allocated more than {self.max_allocated} characters in all")


def too_expensive(why: str) -> InvalidRequestError:
    return InvalidRequestError(
        f"the chat template is too expensive to render for this request: {why}. Fix or replace "
        "the model's template (a Modelfile's TEMPLATE, /api/create's template, or the model's "
        "chat_template), or send a shorter conversation"
    )


_CURRENT: ContextVar[RenderBudget | None] = ContextVar("ember_render_budget", default=None)


_CONTAINERS = (list, tuple, dict, set)


def size_of(value: Any) -> int:
    """A value's size in budget units: characters of a str, 8 per item of a container, the
    bytes of an int."""
    if isinstance(value, str):
        return len(value)
    if isinstance(value, _CONTAINERS):
        return 8 * len(value)
    if isinstance(value, int):
        return value.bit_length() // 8
    return 0


def text_size(value: Any, limit: int) -> int:
    """At least the length of str(value), counted through containers (whose str() repeats each
    item however often it is referenced: `[s] * 1000` is 8000 units to hold but 1000 x len(s) to
    print); past `limit` the value is refused before anything converts it."""
    total = 0
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            total += len(item) + 4  # quotes and a separator when printed inside a container
        elif isinstance(item, dict):
            total += 2 + 2 * len(item)
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, (*_CONTAINERS, KeysView, ValuesView, ItemsView)):
            total += 2 + 2 * len(item)
            stack.extend(item)
        elif isinstance(item, Namespace):  # prints as <Namespace {...}>, its whole contents
            attrs = object.__getattribute__(item, "_Namespace__attrs")
            total += 16 + 2 * len(attrs)
            stack.extend(attrs.keys())
            stack.extend(attrs.values())
        elif isinstance(item, int):
            total += item.bit_length() // 3 + 2  # decimal digits, at most
        else:
            total += 32  # a float, None, an Undefined, a namespace's short repr
        if total > limit:
            raise too_expensive(f"it would print a value of over {limit} characters")
    return total


def _check_text(value: Any) -> Any:
    """Output and `~` operands: refused before str() if their text would be too large."""
    budget = _current()
    budget.tick()
    if not isinstance(value, str):
        budget.expect(text_size(value, budget.max_value))
    return value


def render_within(budget: RenderBudget, chunks: Callable[[], Iterable[str]]) -> str:
    """The text of `chunks()` (a template's generate), with `budget` in force while it runs."""
    token = _CURRENT.set(budget)
    try:
        parts = []
        for chunk in chunks():
            budget.tick()
            budget.expect(len(chunk))
            parts.append(chunk)
        return "".join(parts)
    finally:
        _CURRENT.reset(token)


def _current() -> RenderBudget:
    """The render's budget; outside a render, when jinja folds constant expressions while
    compiling, a fresh one for each operation (no loops run then)."""
    return _CURRENT.get() or RenderBudget()


def _check_size(value: Any) -> Any:
    budget = _current()
    budget.tick()
    budget.expect(size_of(value))
    return value


def _ticking(items: Iterable[Any], budget: RenderBudget) -> Iterator[Any]:
    for item in items:
        budget.tick()
        yield item


def _budgeted_iter(items: Any) -> Any:
    budget = _CURRENT.get()
    return items if budget is None else _ticking(items, budget)


# A conversion of a %-format or a str.format field whose width or precision has 7+ digits, or
# comes from an argument (* or a nested field): it could pad a value to any size in one step.
_BIG_PERCENT_SPEC = re.compile(r"%(?:\([^)]*\))?[-#0 +]*(?:\*|\d{7,}|\d*\.(?:\*|\d{7,}))")
_BIG_FORMAT_SPEC = re.compile(r"\{[^{}]*:[^{}]*(?:\{|\d{7,})")
# A %-format's conversion: its width and precision are what can pad a value.
_PERCENT_FIELD = re.compile(r"%(?:\([^)]*\))?[-#0 +]*(\d*)(?:\.(\d*))?[a-zA-Z%]")
_DIGITS = re.compile(r"\d+")


def _percent_fields(fmt: str) -> tuple[int, int]:
    """A %-format's conversions (%% aside) and the largest width or precision among them."""
    fields, pad = 0, 0
    for m in _PERCENT_FIELD.finditer(fmt):
        if m.group(0) != "%%":
            fields += 1
            pad = max([pad, *(int(g) for g in m.groups() if g)])
    return fields, pad


def _brace_fields(fmt: str) -> tuple[int, int]:
    """A str.format string's replacement fields and the largest number in their specs."""
    fields, pad = 0, 0
    try:
        parsed = list(string.Formatter().parse(fmt))
    except ValueError:  # str.format raises the same on it
        return 0, 0
    for _, field, spec, _ in parsed:
        if field is not None:
            fields += 1
            pad = max([pad, *(int(d) for d in _DIGITS.findall(spec or ""))])
    return fields, pad


def _check_format(fmt: str, spec: re.Pattern[str]) -> None:
    if spec.search(fmt):
        raise too_expensive("a format pads to a width over 999999 or from an argument")


def _formatted_size(
    fmt: str, fields: tuple[int, int], args: Iterable[Any], budget: RenderBudget
) -> int:
    """At most how long `fmt` formatted with `args` is: each of its fields (count, largest
    width) prints at most the widest argument, padded to at most that width."""
    count, pad = fields
    widest = max((text_size(a, budget.max_value) for a in args), default=0)
    return len(fmt) + count * (widest + pad)


def _format_args(value: Any) -> list[Any]:
    """The values a `%` format takes: a tuple's items, a mapping's values, or the one value."""
    if isinstance(value, tuple):
        return list(value)
    if isinstance(value, dict):
        return list(value.values())
    return [value]


def _precheck_binop(op: str, left: Any, right: Any, budget: RenderBudget) -> None:
    if op == "*":
        if isinstance(left, int) and not isinstance(right, int):
            left, right = right, left
        if isinstance(right, int) and isinstance(left, str | list | tuple):
            budget.expect(size_of(left) * max(right, 0))
        elif isinstance(left, int) and isinstance(right, int):
            _check_int_bits(left.bit_length() + right.bit_length())
    elif op == "**":
        if isinstance(left, int) and isinstance(right, int) and right > 0 and abs(left) > 1:
            _check_int_bits(left.bit_length() * right)
    elif op == "+":
        budget.expect(size_of(left) + size_of(right))
    elif op == "%" and isinstance(left, str):
        _check_format(left, _BIG_PERCENT_SPEC)
        budget.expect(_formatted_size(left, _percent_fields(left), _format_args(right), budget))


def _check_int_bits(bits: int) -> None:
    if bits > MAX_INT_BITS:
        raise too_expensive(f"it computes an integer of over {MAX_INT_BITS} bits")


def _replaced_size(s: str, old: str, new: str, count: int | None = None) -> int:
    n = s.count(old) if old else len(s) + 1
    if count is not None and count >= 0:
        n = min(n, count)
    return len(s) + n * (len(new) - len(old))


def _joined_size(sep: str, items: Any) -> int:
    if not isinstance(items, list | tuple):
        return 0  # an iterator or a dict: checked once joined
    strs = sum(len(x) for x in items if isinstance(x, str))
    return strs + len(sep) * max(len(items) - 1, 0)


def _precheck_str_method(s: str, name: str, args: tuple[Any, ...], budget: RenderBudget) -> None:
    if (
        name == "replace"
        and len(args) >= 2
        and isinstance(args[0], str)
        and isinstance(args[1], str)
    ):
        count = args[2] if len(args) > 2 and isinstance(args[2], int) else None
        budget.expect(_replaced_size(s, args[0], args[1], count))
    elif name == "join" and args:
        budget.expect(_joined_size(s, args[0]))
    elif name in ("center", "ljust", "rjust", "zfill") and args and isinstance(args[0], int):
        budget.expect(args[0])
    elif name == "expandtabs":
        tab = args[0] if args and isinstance(args[0], int) else 8
        budget.expect(len(s) + s.count("\t") * max(tab, 0))


# Checks that run before a built-in filter, for those that can make a huge value in one step;
# each gets the filter's own arguments.
def _replace_filter(budget: RenderBudget, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    s, old, new, count = (*args[1:5], None, None, None, None)[:4]  # args[0]: the eval context
    count = kwargs.get("count", count)
    if isinstance(s, str) and isinstance(old, str) and isinstance(new, str):
        budget.expect(_replaced_size(s, old, new, count if isinstance(count, int) else None))


def _join_filter(budget: RenderBudget, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    items = args[1] if len(args) > 1 else None
    sep = args[2] if len(args) > 2 else kwargs.get("d", "")
    if isinstance(sep, str):
        budget.expect(_joined_size(sep, items))


def _width_filter(position: int, name: str) -> Callable[..., None]:
    def check(budget: RenderBudget, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        width = args[position] if len(args) > position else kwargs.get(name)
        if isinstance(width, int):
            budget.expect(width)

    return check


def _indent_filter(budget: RenderBudget, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    s = args[0] if args else ""
    width = args[1] if len(args) > 1 else kwargs.get("width", 4)
    pad = len(width) if isinstance(width, str) else max(width, 0) if isinstance(width, int) else 0
    if isinstance(s, str):
        budget.expect(len(s) + (s.count("\n") + 1) * pad)


def _format_filter(budget: RenderBudget, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    if args and isinstance(args[0], str):
        fmt = args[0]
        _check_format(fmt, _BIG_PERCENT_SPEC)
        values = [*args[1:], *kwargs.values()]
        budget.expect(_formatted_size(fmt, _percent_fields(fmt), values, budget))


def _tojson_filter(budget: RenderBudget, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    indent = args[2] if len(args) > 2 else kwargs.get("indent")
    if isinstance(indent, str):
        indent = len(indent)
    if isinstance(indent, int) and indent > 64:
        raise too_expensive("tojson's indent is over 64")


_FILTER_CHECKS: dict[str, Callable[[RenderBudget, tuple[Any, ...], dict[str, Any]], None]] = {
    "replace": _replace_filter,
    "join": _join_filter,
    "center": _width_filter(1, "width"),
    "batch": _width_filter(1, "linecount"),
    "slice": _width_filter(1, "slices"),
    "indent": _indent_filter,
    "format": _format_filter,
    "tojson": _tojson_filter,
}


# Filters that never print their arguments: they need no text check of them (a template calls
# `messages|length` in loops, and a deep walk of the conversation each time would be quadratic).
_QUIET_FILTERS = frozenset(
    {
        "abs", "attr", "batch", "count", "d", "default", "dictsort", "first", "float",
        "groupby", "int", "items", "last", "length", "list", "map", "max", "min", "reject",
        "rejectattr", "reverse", "round", "select", "selectattr", "slice", "sort", "sum",
        "unique",
    }
)  # fmt: skip


def _budgeted_filter(name: str, func: Callable[..., Any]) -> Callable[..., Any]:
    check = _FILTER_CHECKS.get(name)
    prints = name not in _QUIET_FILTERS

    @functools.wraps(func)  # keeps jinja's pass_context/pass_eval_context marks
    def run(*args: Any, **kwargs: Any) -> Any:
        budget = _current()
        budget.tick()
        if name == "join" and len(args) > 1 and not isinstance(args[1], str | list | tuple):
            # An iterator (select, map, ...) is joined as it is consumed: take its items first,
            # so that their text is checked before the join builds it.
            args = (args[0], list(_ticking(args[1], budget)), *args[2:])
        for arg in args if prints else ():  # string, tojson, join ... print their arguments
            if not isinstance(arg, str | Context):
                text_size(arg, budget.max_value)
        if check is not None:
            check(budget, args, kwargs)
        result = func(*args, **kwargs)
        budget.expect(size_of(result))
        return result

    return run


class _WrapLoopsAndConcats(NodeTransformer):
    def visit_For(self, node: nodes.For) -> nodes.Node:
        self.generic_visit(node)
        node.iter = nodes.Filter(node.iter, _ITER_FILTER, [], [], None, None, lineno=node.lineno)
        return node

    def visit_Concat(self, node: nodes.Concat) -> nodes.Node:
        self.generic_visit(node)
        node.nodes = [_text_checked(n) for n in node.nodes]
        return nodes.Filter(node, _CONCAT_FILTER, [], [], None, None, lineno=node.lineno)

    def visit_Output(self, node: nodes.Output) -> nodes.Node:
        self.generic_visit(node)
        node.nodes = [
            n if isinstance(n, nodes.TemplateData) else _text_checked(n) for n in node.nodes
        ]
        return node


def _text_checked(node: nodes.Expr) -> nodes.Expr:
    return nodes.Filter(node, _TEXT_FILTER, [], [], None, None, lineno=node.lineno)


class BudgetedEnvironment(ImmutableSandboxedEnvironment):
    """jinja's immutable sandbox with each render held to the RenderBudget in force."""

    intercepted_binops = frozenset({"*", "**", "+", "%"})

    def __init__(self, **options: Any) -> None:
        # Less constant folding (the compiler still folds output expressions, through the
        # checked filters): it would run operations at compile time, outside the render.
        super().__init__(optimized=False, **options)
        self.globals.pop("lipsum", None)  # lipsum(n=10**9) loops in Python, out of reach
        self.filters = {name: _budgeted_filter(name, f) for name, f in self.filters.items()}
        self.filters[_ITER_FILTER] = _budgeted_iter
        self.filters[_CONCAT_FILTER] = _check_size
        self.filters[_TEXT_FILTER] = _check_text

    def set_filter(self, name: str, func: Callable[..., Any]) -> None:
        self.filters[name] = _budgeted_filter(name, func)

    def _parse(self, source: str, name: str | None, filename: str | None) -> nodes.Template:
        tree = super()._parse(source, name, filename)
        wrapped: nodes.Template = _WrapLoopsAndConcats().visit(tree)
        return wrapped

    def call_binop(self, context: Context, operator: str, left: Any, right: Any) -> Any:
        budget = _current()
        if operator == "+" and type(left) is str and type(right) is str:  # most of them
            budget.tick()
            budget.expect(len(left) + len(right))
            return left + right
        budget.tick()
        _precheck_binop(operator, left, right, budget)
        result = super().call_binop(context, operator, left, right)
        budget.expect(size_of(result))
        return result

    def wrap_str_format(self, value: Any) -> Callable[..., str] | None:
        wrapped = super().wrap_str_format(value)
        if wrapped is None:
            return None
        fmt: str = value.__self__
        _check_format(fmt, _BIG_FORMAT_SPEC)

        def checked(*args: Any, **kwargs: Any) -> str:
            budget = _current()
            budget.expect(
                _formatted_size(fmt, _brace_fields(fmt), [*args, *kwargs.values()], budget)
            )
            return wrapped(*args, **kwargs)

        return checked

    def call(__self, __context: Context, __obj: Any, *args: Any, **kwargs: Any) -> Any:
        budget = _current()
        budget.tick()
        owner = getattr(__obj, "__self__", None)
        if isinstance(owner, str):
            _precheck_str_method(owner, getattr(__obj, "__name__", ""), args, budget)
        result = super().call(__context, __obj, *args, **kwargs)
        budget.expect(size_of(result))
        return result
