"""The command line, in process: help texts, settings from flags and environment, `models`, `bench`."""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
from pathlib import Path

import pytest

from service import cli
from service.settings import Settings

pytestmark = pytest.mark.unit


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    try:
        code = cli.main(argv)
    except SystemExit as exit_:  # argparse's --help and usage errors
        code = int(exit_.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def test_help_lists_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(["--help"], capsys)
    assert code == 0
    for command in ("serve", "models", "train", "export", "bench"):
        assert command in out


def test_serve_help_lists_every_setting_with_env_var_and_default(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(["serve", "--help"], capsys)
    assert code == 0
    for flag in ("--host", "--port", "--models-dir", "--workers"):
        assert flag in out
    for name in Settings.model_fields:
        assert f"RNNSERVE_{name.upper()}" in out, name
    assert "RNNSERVE_MAX_BATCH_SIZE" in out and "default 256" in out
    assert "RNNSERVE_PROVIDERS" in out and "default cpu" in out


def test_flags_override_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RNNSERVE_PORT", "9001")
    monkeypatch.setenv("RNNSERVE_HOST", "0.0.0.0")
    monkeypatch.setenv("RNNSERVE_MAX_BATCH_SIZE", "8")
    settings = cli.settings_from_args(cli.build_parser().parse_args(["serve", "--port", "9100"]))
    assert settings.port == 9100  # the flag wins
    assert settings.host == "0.0.0.0"  # no flag: the environment
    assert settings.max_batch_size == 8
    assert cli.settings_from_args(
        cli.build_parser().parse_args(["models", "--models-dir", "x"])
    ).models_dir == Path("x")


def test_grpc_port_flag_environment_and_off(monkeypatch: pytest.MonkeyPatch) -> None:
    def grpc_port(*flags: str) -> int | None:
        return cli.settings_from_args(cli.build_parser().parse_args(["serve", *flags])).grpc_port

    monkeypatch.delenv("RNNSERVE_GRPC_PORT", raising=False)
    assert grpc_port() == 8001  # Triton's default
    monkeypatch.setenv("RNNSERVE_GRPC_PORT", "9002")
    assert grpc_port() == 9002
    assert grpc_port("--grpc-port", "0") == 0
    assert grpc_port("--grpc-port", "off") is None
    monkeypatch.setenv("RNNSERVE_GRPC_PORT", "")
    assert grpc_port() is None  # empty disables, as for the snapshot path


def test_invalid_settings_are_refused_before_serving(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run(["serve", "--port", "70000"], capsys)
    assert code == 2 and "invalid settings" in err and "port" in err
    monkeypatch.setenv("RNNSERVE_CAPACITY_POLICY", "maybe")
    code, _, err = run(["serve"], capsys)
    assert code == 2 and "capacity_policy" in err


def test_several_workers_need_a_shared_store(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(["serve", "--workers", "2"], capsys)
    assert code == 2 and "RNNSERVE_STORE=redis" in err
    code, _, err = run(["serve", "--workers", "0"], capsys)
    assert code == 2


def test_bench_hands_over_to_the_benchmark_suite(capfd: pytest.CaptureFixture[str]) -> None:
    if cli.missing_packages("bench"):
        pytest.skip("the benchmark suite needs the [bench] extra")
    assert cli.main(["bench", "--help"]) == 0
    out = capfd.readouterr().out
    assert "--quick" in out and "benchmarks/results" in out


def test_a_missing_extra_is_named_with_its_install_command(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # hide the benchmark package from the import system, as on a serving-only install
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "benchmarks" else real_find_spec(name, *a),
    )
    code, _, err = run(["bench", "--quick"], capsys)
    assert code == 2
    assert re.search(r"lacks [^;]*\bbenchmarks\b", err) and "pip install 'rnnserve[bench]'" in err


def test_models_lists_and_verifies(tiny_models_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(["models", "--models-dir", str(tiny_models_dir)], capsys)
    assert code == 0, out
    rows = [line.split() for line in out.splitlines()]
    assert rows[0][:3] == ["MODEL", "VERSION", "TASK"]
    listed = {(row[0], row[2], row[3], row[-1]) for row in rows[1:-1]}
    assert ("lm-gru", "lm", "gru", "ok") in listed and ("sensor-rnn", "sensor", "rnn", "ok") in listed
    assert len(listed) == 6
    assert "6 of 6 artifact(s) verified" in out


def test_models_fails_on_a_tampered_or_missing_artifact(
    tiny_models_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "models"
    shutil.copytree(tiny_models_dir / "lm-rnn", root / "lm-rnn")
    shutil.copytree(tiny_models_dir / "sensor-gru", root / "sensor-gru")
    onnx = root / "lm-rnn" / "1" / "model.onnx"
    onnx.write_bytes(onnx.read_bytes()[:-1] + b"\x00")
    code, out, _ = run(["models", "--models-dir", str(root)], capsys)
    assert code == 1
    assert "FAILED" in out and "sha256" in out
    assert "1 of 2 artifact(s) verified" in out
    code, _, err = run(["models", "--models-dir", str(tmp_path / "nothing-here")], capsys)
    assert code == 1 and "no artifacts" in err


def test_train_hands_over_to_the_training_package(capfd: pytest.CaptureFixture[str]) -> None:
    if cli.missing_packages("train"):
        pytest.skip("training needs the [train] extra")
    assert cli.main(["train", "--help"]) == 0
    out = capfd.readouterr().out
    assert "lm" in out and "sensor" in out and "export" in out


@pytest.mark.parametrize("task", ["lm", "sensor"])
def test_train_help_needs_no_torch(
    task: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    """Without torch (the service says torch is missing; in the child a `torch` that cannot be
    imported) `rnnserve train TASK --help` lists the options, under its own name."""
    (tmp_path / "torch.py").write_text("raise ImportError('no torch in this test')\n")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")]))
    monkeypatch.setattr(cli, "missing_packages", lambda command: ["torch"])
    assert cli.main(["train", task, "--help"]) == 0
    out = capfd.readouterr().out
    assert out.startswith(f"usage: rnnserve train {task} ") and "--hidden" in out and "--out" in out
    assert ("--max-vocab" if task == "lm" else "--plant-seed") in out
    assert cli.main(["train", task, "--epochs", "1"]) == 2  # training itself still says what is missing
    assert "pip install 'rnnserve[train]'" in capfd.readouterr().err
