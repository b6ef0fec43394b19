"""`--recipe`: a preset of defaults that explicit flags still override."""

from __future__ import annotations

import pytest

from training.cli import parse_args
from training.recipes import RECIPES

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_a_recipe_sets_every_value_it_names(name: str) -> None:
    args = parse_args(["lm", "--recipe", name])
    assert {k: getattr(args, k) for k in RECIPES[name]} == RECIPES[name]


def test_flags_beside_a_recipe_win_and_no_recipe_keeps_the_old_defaults() -> None:
    args = parse_args(["lm", "--epochs", "3", "--recipe", "small", "--weight-drop", "0.05"])
    assert (args.epochs, args.weight_drop, args.hidden) == (3, 0.05, RECIPES["small"]["hidden"])
    plain = parse_args(["lm"])
    assert (plain.recipe, plain.optimizer, plain.weight_drop, plain.dropout, plain.nonmono) == (
        None, "adam", 0.0, 0.2, 0,
    )  # fmt: skip


def test_an_unknown_recipe_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        parse_args(["lm", "--recipe", "huge"])
    assert exc.value.code == 2 and "invalid choice: 'huge'" in capsys.readouterr().err
