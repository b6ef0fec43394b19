"""The unchanged entry point under `torchrun --nproc_per_node 2` (gloo): both ranks end bit-identical."""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]


# AWD-LSTM's loop: every rank must draw the same window lengths, or DDP's all-reduces fall out of step
@pytest.mark.parametrize(
    "awd_loop", [[], ["--variable-bptt", "--ar", "2", "--tar", "1"]], ids=["plain", "awd"]
)
def test_two_processes_train_on_their_own_streams_and_end_with_identical_weights(
    corpus_dir: Path, tmp_path: Path, awd_loop: list[str]
) -> None:
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        "-m", "training", "lm", "--data", str(corpus_dir), "--hidden", "8", "--layers", "1", "--epochs", "2",
        "--batch-size", "4", "--bptt", "8", "--dropout", "0.2", "--threads", "1", "--no-progress",
        "--out", str(tmp_path / "models"), "--checkpoint-dir", str(tmp_path / "ckpt"), *awd_loop,
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    # 2 ranks x 4 streams each: the layout line reports all 8 streams, each rank trains on its 4
    assert "8 streams" in result.stdout and "2 process(es)" in result.stdout
    match = re.search(r"ddp: 2 ranks, weights sha256 (\[.*\])", result.stdout)
    assert match, result.stdout
    digests = ast.literal_eval(match.group(1))
    assert len(digests) == 2 and digests[0] == digests[1]  # dropout masks differ by rank; weights do not
    losses = [float(v) for v in re.findall(r"epoch \d: train ([0-9.]+)", result.stdout)]
    assert len(losses) == 2 and losses[1] < losses[0]  # it trained
    manifest = json.loads((tmp_path / "models" / "lm" / "1" / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["training"]["config"]["world_size"] == 2
