"""`schemas.is_text`, the decoders' fast check, accepts exactly what `check_text` accepts."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from service import schemas

pytestmark = pytest.mark.unit

# the edges: ASCII controls (tab, newline, return allowed), DEL, non-ASCII, lone surrogates
CHARS = st.sampled_from(
    [
        "a",
        " ",
        "~",
        "\t",
        "\n",
        "\r",
        "\x00",
        "\x08",
        "\x0b",
        "\x1f",
        "\x7f",
        "\xe9",
        "\u2028",
        "\ud800",
        "\udfff",
        "\U0001f600",
    ]
)


def accepted(value: str) -> bool:
    try:
        schemas.check_text(value)
    except ValueError:
        return False
    return True


@given(st.lists(CHARS, max_size=12).map("".join))
def test_is_text_is_check_text(value: str) -> None:
    assert schemas.is_text(value) == accepted(value)


@pytest.mark.parametrize(
    ("value", "text"),
    [("", True), ("0123abcdef" * 400, True), ("2014-04-01 13:05:00\t", True), ("ok\x07", False)],
)
def test_hand_written_cases(value: str, text: bool) -> None:
    assert schemas.is_text(value) is text and accepted(value) is text
