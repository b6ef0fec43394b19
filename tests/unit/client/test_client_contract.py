"""The client package stands alone and knows every error the server can answer."""

from __future__ import annotations

import subprocess
import sys

import pytest

from rnnserve_client import errors as client_errors
from service import errors as server_errors

pytestmark = pytest.mark.unit

# Import rnnserve_client with the server's dependencies made unimportable.
_BLOCKED = """
import importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {BLOCKED}:
            raise ImportError("blocked: " + name)
sys.meta_path.insert(0, Block())
import rnnserve_client
from rnnserve_client import AsyncClient, Client
print(sorted(m for m in sys.modules if m.split(".")[0] in {WATCHED}))
"""


def test_client_imports_without_the_server_dependencies() -> None:
    server_only = {"service", "fastapi", "onnxruntime", "numpy", "pydantic", "uvicorn", "redis", "torch"}
    code = _BLOCKED.replace("{BLOCKED}", repr(server_only)).replace("{WATCHED}", repr(server_only))
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def _server_errors(base: type[server_errors.ServiceError]) -> list[type[server_errors.ServiceError]]:
    found = [base]
    for sub in base.__subclasses__():
        found.extend(_server_errors(sub))
    return found


@pytest.mark.parametrize("server_error", _server_errors(server_errors.ServiceError), ids=lambda c: c.code)
def test_every_server_error_code_has_its_typed_error(server_error: type[server_errors.ServiceError]) -> None:
    args = {"expected_seq": 3} if server_error is server_errors.SequenceConflict else {}
    instance = server_error("why", **args)
    typed = client_errors.error_from(instance.status, instance.body(), "2")
    assert type(typed).__name__ != "RnnserveError"
    assert (typed.status, typed.code, typed.message) == (instance.status, instance.code, "why")
    assert typed.code == type(typed).code, f"{instance.code} has no class of its own in the client"
    assert typed.retry_after_s == 2.0


def test_an_unknown_code_gets_the_class_of_its_status() -> None:
    typed = client_errors.error_from(400, {"error": {"code": "brand_new", "message": "m", "details": {}}})
    assert isinstance(typed, client_errors.BadRequest) and typed.code == "brand_new"
    assert isinstance(client_errors.error_from(404, {"error": "V2 shape"}), client_errors.NotFound)
    conflict = client_errors.error_from(
        0, {"error": {"code": "seq_conflict", "details": {"expected_seq": 7}}}
    )
    assert isinstance(conflict, client_errors.SequenceConflict) and conflict.expected_seq == 7
