"""Every bad training input ends with exit status 2 and one clear line on stderr, never a traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from training.cli import main

pytestmark = pytest.mark.integration
FAST = ["--epochs", "1", "--hidden", "8", "--layers", "1", "--threads", "1", "--no-progress"]


def _files(root: Path) -> dict[str, Path]:
    texts = {
        "empty.txt": "\n \n",
        "latin1.txt": None,
        "words.txt": "".join(f"the cat sat on the mat number {i}\n" for i in range(60)),
        "short.csv": "timestamp\n1\n2\n3\n",
        "text.csv": "timestamp,a,b\n1,1.0,2.0\n2,x,2.5\n3,1.5,2.0\n",
        "inf.csv": "timestamp,a,b\n1,1.0,2.0\n2,inf,2.5\n3,1.5,2.0\n",
        "tiny.csv": "timestamp,a\n" + "".join(f"{i},{i % 3}\n" for i in range(8)),
        "flat.csv": "timestamp,a,b\n" + "".join(f"{i},1.0,{i % 3}\n" for i in range(50)),
        "ragged.csv": "timestamp,a,b\n1,1.0,2.0\n2,1.0\n3,1.5,2.0\n",
        "garbage.pt": "not a checkpoint",
    }
    paths = {}
    for name, text in texts.items():
        paths[name] = root / name
        if text is None:
            paths[name].write_bytes("caf\xe9\n".encode("latin-1"))
        else:
            paths[name].write_text(text, encoding="utf-8")
    return paths


CASES: dict[str, tuple[list[str], str]] = {
    "lm missing corpus": (["lm", "--corpus", "{root}/nope.txt"], "nope.txt: no such file"),
    "lm empty corpus": (["lm", "--corpus", "{root}/empty.txt"], "the corpus is empty"),
    "lm not utf-8": (["lm", "--corpus", "{root}/latin1.txt"], "not UTF-8"),
    "lm directory without splits": (["lm", "--data", "{root}"], "expected the files"),
    "lm train without valid": (["lm", "--train", "{root}/words.txt"], "go together"),
    "lm bad tokenizer regex": (
        ["lm", "--corpus", "{root}/words.txt", "--tokenizer", "(["],
        "not a valid regular",
    ),
    "lm vocab too small": (["lm", "--corpus", "{root}/words.txt", "--max-vocab", "2"], "too small"),
    "lm tied size mismatch": (["lm", "--corpus", "{root}/words.txt", "--tied", "--embedding", "5"], "tied"),
    "lm bad split": (["lm", "--corpus", "{root}/words.txt", "--valid-fraction", "0.97"], "fractions"),
    "bad model name": (["sensor", "--name", "../evil"], "--name '../evil'"),
    "bad epochs": (["lm", "--corpus", "{root}/words.txt", "--epochs", "0"], "--epochs"),
    "sensor missing csv": (["sensor", "--csv", "{root}/nope.csv"], "no such file"),
    "sensor too few columns": (["sensor", "--csv", "{root}/short.csv"], "too few columns"),
    "sensor non-numeric": (["sensor", "--csv", "{root}/text.csv"], "'x' is not a number"),
    "sensor infinite value": (["sensor", "--csv", "{root}/inf.csv"], "not a finite number"),
    "sensor too short to split": (["sensor", "--csv", "{root}/tiny.csv"], "change --valid-fraction"),
    "sensor ragged row": (["sensor", "--csv", "{root}/ragged.csv"], "2 columns, the header has 3"),
    "sensor csv without valid": (["sensor", "--train-csv", "{root}/flat.csv"], "go together"),
    "sensor bad contamination": (["sensor", "--contamination", "2"], "--contamination"),
    "export missing checkpoint": (["export", "{root}/nope.pt"], "no such checkpoint"),
    "export garbage checkpoint": (["export", "{root}/garbage.pt"], "not a readable checkpoint"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_exits_2_with_one_clear_line(
    case: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _files(tmp_path)
    argv, message = CASES[case]
    argv = [a.replace("{root}", str(tmp_path)) for a in argv]
    extra = (
        []
        if argv[0] == "export"
        else [*FAST, "--out", str(tmp_path / "m"), "--checkpoint-dir", str(tmp_path / "c")]
    )
    assert main([argv[0], *extra, *argv[1:]]) == 2  # the case's own options come last and win
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err, err
    assert err.count("\n") == 1 and "Traceback" not in err


def test_unfinished_run_checkpoint_is_refused_for_export(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    paths = _files(tmp_path)
    assert main(["lm", "--corpus", str(paths["words.txt"]), *FAST, "--out", str(tmp_path / "m"),
                 "--checkpoint-dir", str(tmp_path / "c")]) == 0  # fmt: skip
    capsys.readouterr()
    assert main(["export", str(tmp_path / "c" / "last.pt"), "--out", str(tmp_path / "m2")]) == 2
    assert "did not finish" in capsys.readouterr().err
    # and an existing artifact is not overwritten without --overwrite
    assert main(["export", str(tmp_path / "c" / "best.pt"), "--out", str(tmp_path / "m")]) == 2
    assert "exists" in capsys.readouterr().err


def test_a_bad_input_in_a_real_process_prints_no_traceback(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "training", "sensor", "--csv", str(tmp_path / "missing.csv"),
         "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.strip() == f"error: {tmp_path / 'missing.csv'}: no such file"
