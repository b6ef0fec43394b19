"""WikiText tokens back to text: hand-written cases, and the tokenizer's round trip on real lines."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from service.predictors.detok import detokenize

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[3]


@pytest.mark.parametrize(
    ("tokens", "text"),
    [
        (
            "a week after the <unk> @-@ <unk> @-@ <unk> <unk> , and",
            "a week after the <unk>-<unk>-<unk> <unk>, and",
        ),
        ("weigh 0 @.@ 7 – 2 @.@ 2 kg ( 1 @.@ 5 lb ) .", "weigh 0.7 – 2.2 kg (1.5 lb)."),
        ("1 @,@ 000 people", "1,000 people"),
        ("the city 's team don 't , the players ' fans", "the city's team don't, the players' fans"),
        ('he said " it is over " , and " so " .', 'he said "it is over", and "so".'),
        ("end . <eos> next line", "end.\nnext line"),
        ("costs $ 5 ; why ? [ see ] ...", "costs $5; why? [see]..."),
        ("", ""),
    ],
)
def test_hand_written_cases(tokens: str, text: str) -> None:
    assert detokenize(tokens.split(" ") if tokens else []) == text


def test_tokenizing_the_text_again_gives_the_tokens_back() -> None:
    """The shipped lm's own tokenizer on detokenized text gives the tokens again."""
    manifest = json.loads((ROOT / "models/lm/1/manifest.json").read_text())
    pattern = re.compile(manifest["lm"]["tokenizer"]["pattern"])
    line = (
        "Homarus gammarus is a large <unk> , with a body length up to 60 centimetres ( 24 in ) and "
        'weighing up to 5 – 6 kilograms ( 11 – 13 lb ) , although it \'s 0 @.@ 7 m and " long " .'
    )
    tokens = line.split(" ")
    text = detokenize(tokens)
    assert "0.7 m" in text and " ," not in text and "( " not in text and '" long "' not in text
    # `0 @.@ 7` reads as `0.7`, which the tokenizer keeps as one number; every other token comes back
    again = pattern.findall(text)
    assert again.count("0.7") == 1
    assert [t for t in again if t != "0.7"] == [t for t in tokens if t not in {"0", "@.@", "7"}]
