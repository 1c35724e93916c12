"""Chat templates are held to a budget: endless loops, recursion and values that would
exhaust memory end in InvalidRequestError (400) within the CPU limit; real templates, on long
conversations with tools, stay far inside it and render as before."""

from __future__ import annotations

import time
from typing import Any

import pytest

from ember.errors import InvalidRequestError
from ember.tokenizer.chat_template import compile_template, render_chat_template
from ember.tokenizer.template_budget import RenderBudget
from tests.tokenizer.tokenizer_builders import CHATML_TEMPLATE, LLAMA3_TEMPLATE

CPU_S = 0.3

TOO_EXPENSIVE = {
    "nested ranges": "{% for i in range(99999) %}{% for j in range(99999) %}{% endfor %}{% endfor %}",
    "nested loops over the messages": "{% for a in messages %}{% for b in messages %}"
    "{% for c in messages %}{% for d in messages %}{% endfor %}{% endfor %}{% endfor %}{% endfor %}",
    "nested loops over a string": "{% set s = 'x' * 99999 %}{% for a in s %}{% for b in s %}"
    "{% endfor %}{% endfor %}",
    "exponential macro": "{% macro f(n) %}{% if n %}{{ f(n - 1) }}{{ f(n - 1) }}{% endif %}"
    "{% endmacro %}{{ f(60) }}",
    "string repetition": "{{ 'x' * 10**10 }}",
    "list repetition": "{{ ([1] * 10**9)|length }}",
    "big power": "{{ 7 ** 1000000000 }}",
    "doubling with ~": "{% set ns = namespace(s='x') %}{% for i in range(64) %}"
    "{% set ns.s = ns.s ~ ns.s %}{% endfor %}",
    "doubling with +": "{% set ns = namespace(s='x') %}{% for i in range(64) %}"
    "{% set ns.s = ns.s + ns.s %}{% endfor %}",
    "center filter": "{{ 'x'|center(10**10) }}",
    "rjust method": "{{ 'x'.rjust(10**10) }}",
    "replace filter": "{% set s = 'x' * 10**6 %}{{ s|replace('x', s) }}",
    "replace method": "{% set s = 'x' * 10**6 %}{{ s.replace('x', s) }}",
    "indent": "{% set s = '\\n' * 10**6 %}{{ s|indent(1000) }}",
    "percent width": "{{ '%01000000000d' % 1 }}",
    "format filter width": "{{ '%01000000000d'|format(1) }}",
    "str.format width": "{{ '{:>1000000000}'.format(1) }}",
    "join": "{% set s = 'x' * 10**6 %}{{ s.join(range(99999)|map('string')|list) }}",
    "batch": "{{ [1]|batch(10**10, 'x')|list|length }}",
    "tojson indent": "{{ messages|tojson(indent=10**9) }}",
    "endless output": "{% for i in range(99999) %}{% for j in range(99999) %}xxxxxxxx"
    "{% endfor %}{% endfor %}",
    # Values cheap to hold but huge to print: one string referenced many times.
    "printing a list of one big string": "{% set s = 'x' * 10**6 %}{{ [s] * 10**5 }}",
    "~ with a tuple of one big string": "{% set s = 'x' * 10**6 %}{{ 'p' ~ ((s,) * 10**5) }}",
    "tojson of one big string many times": "{% set s = 'x' * 10**6 %}{{ ([s] * 10**5)|tojson }}",
    "string filter": "{% set s = 'x' * 10**6 %}{{ ([s] * 10**5)|string|length }}",
    "nested dict printed": "{% set s = 'x' * 10**6 %}{% set d = {'k': [s] * 50} %}{{ [d] * 1000 }}",
    # Formats whose fields each stay under the width limit but add up.
    "many padded percent fields": "{{ ('%999999s' * 20000) % (('',) * 20000) }}",
    "one mapping key printed many times": "{% set s = 'x' * 10**6 %}"
    "{{ ('%(a)s' * 10000) % {'a': s} }}",
    "str.format field repeated": "{% set s = 'x' * 10**6 %}{{ ('{0}' * 10000).format(s) }}",
    "format filter fields": "{% set s = 'x' * 10**6 %}{{ ('%s' * 100)|format(*([s] * 100)) }}",
    "a namespace printed": "{% set s = 'x' * 10**6 %}{{ namespace(v=[s] * 3000) }}",
    "dict values printed": "{% set s = 'x' * 10**6 %}{{ {'a': [s] * 3000}.values() }}",
    "an iterator joined": "{% set s = 'x' * 10**6 %}{{ ([s] * 3000)|select|join|length }}",
    # Integer arithmetic that no tick can interrupt.
    "power just under the old cap": "{% set x = 3 ** 16000000 %}ok",
    "big integer product": "{% set a = 7 ** 20000 %}{{ (a * a * a * a * a * a * a)|string|length }}",
}


def render(source: str, messages: list[dict[str, Any]], **kw: Any) -> str:
    return render_chat_template(
        source,
        messages,
        add_generation_prompt=True,
        tools=kw.pop("tools", None),
        special_tokens={"bos_token": "<s>", "eos_token": "</s>"},
        template_kwargs={},
        **kw,
    )


@pytest.mark.parametrize("case", sorted(TOO_EXPENSIVE))
def test_expensive_templates_are_stopped_with_a_400(case: str) -> None:
    messages = [{"role": "user", "content": "hi"}] * 100
    t0 = time.monotonic()
    with pytest.raises(InvalidRequestError) as err:
        render(TOO_EXPENSIVE[case], messages, budget=RenderBudget(cpu_s=CPU_S))
    assert time.monotonic() - t0 < 10 * CPU_S + 2  # wall time on a busy machine
    assert err.value.status_code == 400
    assert "too expensive" in err.value.message and "template" in err.value.message


def test_endless_recursion_is_a_400() -> None:
    source = "{% macro f(n) %}{{ f(n) }}{% endmacro %}{{ f(1) }}"
    with pytest.raises(InvalidRequestError, match="recursed too deeply"):
        render(source, [{"role": "user", "content": "hi"}])


def test_compiling_folds_nothing_outside_the_budget() -> None:
    t0 = time.monotonic()
    template = compile_template("{{ 'x'|center(10**10) }}")  # not run while compiling
    assert template is not None and time.monotonic() - t0 < 1


WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}


def long_conversation() -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = [{"role": "system", "content": "Be brief."}]
    for i in range(100):
        if i % 4 == 3:
            call = {"type": "function", "function": {"name": "get_weather", "arguments": {}}}
            messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
            messages.append({"role": "tool", "content": '{"temp_c": 21}'})
        else:
            role = "user" if i % 2 == 0 else "assistant"
            messages.append({"role": role, "content": f"message {i} " + "lorem ipsum " * 20})
    return messages


@pytest.mark.parametrize("source", [LLAMA3_TEMPLATE, CHATML_TEMPLATE], ids=["llama3", "chatml"])
def test_real_templates_stay_far_inside_the_budget(source: str) -> None:
    tight = RenderBudget(cpu_s=CPU_S, max_value=2**20, max_allocated=8 * 2**20)
    text = render(source, long_conversation(), tools=[WEATHER_TOOL] * 8, budget=tight)
    assert text.count("lorem ipsum") == 20 * 75 and "get_weather" in text
    assert tight.allocated < 2**20


def test_a_long_message_near_the_body_limit_renders() -> None:
    content = "word " * (8 * 2**20 // 5)  # the default --max-body-size of text
    text = render(CHATML_TEMPLATE, [{"role": "user", "content": content}])
    assert content in text


def test_numbers_in_a_formats_text_are_not_widths() -> None:
    """Only a conversion's width pads: a date in the literal text is not a 20-million width."""
    src = (
        "{{ 'released 20240601: %s' % 'a' }}|{{ 'year 2024 {}'.format('b') }}|"
        "{{ 'v 123456789 %s'|format('c') }}|{{ '%5s|%-3d|%.2f' % ('d', 7, 1.5) }}"
    )
    assert render(src, []) == "released 20240601: a|year 2024 b|v 123456789 c|    d|7  |1.50"
