"""Start-up switches read from the environment: on/off words either way, else the default."""

from __future__ import annotations

import pytest

from ember.envflags import env_flag, env_switch


@pytest.mark.parametrize(
    ("value", "default", "expected"),
    [
        (None, True, True),
        (None, False, False),
        ("", True, True),
        ("1", False, True),
        (" On ", False, True),
        ("yes", False, True),
        ("0", True, False),
        ("FALSE", True, False),
        ("off", True, False),
        ("maybe", True, True),
        ("maybe", False, False),
    ],
)
def test_env_flag(
    monkeypatch: pytest.MonkeyPatch, value: str | None, default: bool, expected: bool
) -> None:
    if value is None:
        monkeypatch.delenv("EMBER_TEST_FLAG", raising=False)
    else:
        monkeypatch.setenv("EMBER_TEST_FLAG", value)
    assert env_flag("EMBER_TEST_FLAG", default) is expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [(None, None), ("", None), ("maybe", None), ("1", True), (" On ", True), ("off", False)],
)
def test_env_switch_leaves_the_default_to_the_caller(
    monkeypatch: pytest.MonkeyPatch, value: str | None, expected: bool | None
) -> None:
    if value is None:
        monkeypatch.delenv("EMBER_TEST_FLAG", raising=False)
    else:
        monkeypatch.setenv("EMBER_TEST_FLAG", value)
    assert env_switch("EMBER_TEST_FLAG") is expected
