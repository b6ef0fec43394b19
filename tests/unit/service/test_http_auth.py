"""Bearer-key authentication: who the caller is, or 401."""

from __future__ import annotations

import pytest

from service.auth import Authenticator, owner_id
from service.errors import Unauthorized

pytestmark = pytest.mark.unit


def test_no_keys_means_auth_off() -> None:
    auth = Authenticator(frozenset())
    assert not auth.enabled
    assert auth.owner(None) is None
    assert auth.owner("Bearer anything") is None


def test_each_key_is_its_own_owner_and_never_the_key_itself() -> None:
    auth = Authenticator(frozenset({"alpha", "beta"}))
    assert auth.enabled
    alpha, beta = auth.owner("Bearer alpha"), auth.owner("Bearer beta")
    assert alpha == owner_id("alpha") and beta == owner_id("beta") and alpha != beta
    assert alpha is not None and "alpha" not in alpha
    assert auth.owner("bearer  alpha ") == alpha  # scheme case and spaces do not matter
    assert auth.owner(None, token="beta") == beta  # the WebSocket's ?token=
    assert auth.owner("Bearer alpha", token="beta") == alpha  # the header wins


@pytest.mark.parametrize(
    ("header", "token"),
    [
        (None, None),
        ("Bearer gamma", None),
        ("Basic alpha", None),
        ("Bearer", None),
        ("alpha", None),
        (None, "gamma"),
        (None, ""),
    ],
)
def test_missing_or_wrong_keys_are_401(header: str | None, token: str | None) -> None:
    auth = Authenticator(frozenset({"alpha"}))
    with pytest.raises(Unauthorized) as refused:
        auth.owner(header, token)
    assert refused.value.status == 401
    assert refused.value.headers == {"WWW-Authenticate": "Bearer"}
