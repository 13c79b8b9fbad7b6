"""The multi-process path on CPU: `accelerate launch --multi_gpu --num_processes 2` runs real DDP here (torchrun
starts the processes, gloo joins them; accelerate's `--cpu` flag would start one process unless MPI is installed).

Two processes with half the per-device batch take the same optimizer steps on the same examples as one process
with the whole batch, so the loss curve and the adapter must agree within float tolerance; only rank 0 writes;
and what the run records counts what every rank saw, not rank 0's share alone.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

# Loaded by every process through PYTHONPATH: rank 1 logs each file it opens for writing or renames into place.
SPY = '''
import builtins, io, os
if os.environ.get("RANK") == "1":
    _log = os.environ["STMKIT_WRITE_LOG"]
    def _note(path):
        with _open(_log, "a") as f:
            f.write(f"{path}\\n")
    _open = io.open
    def _spy_open(file, mode="r", *a, **k):
        if isinstance(file, (str, os.PathLike)) and any(c in mode for c in "wax+"):
            _note(file)
        return _open(file, mode, *a, **k)
    builtins.open = io.open = _spy_open
    for _name in ("replace", "rename"):
        def _wrap(fn):
            def spy(src, dst, *a, **k):
                _note(dst)
                return fn(src, dst, *a, **k)
            return spy
        setattr(os, _name, _wrap(getattr(os, _name)))
'''

OVERRIDES = "training.lora_dropout=0.0,training.epochs=2,training.grad_accum=1,data.n_val=0"


def _train(tmp_path: Path, name: str, batch: int, processes: int) -> dict:
    spy_dir = tmp_path / "spy"
    spy_dir.mkdir(exist_ok=True)
    (spy_dir / "sitecustomize.py").write_text(SPY)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(spy_dir), os.environ.get("PYTHONPATH", "")]),
           "STMKIT_CACHE": str(tmp_path / "cache"), "STMKIT_WRITE_LOG": str(tmp_path / f"{name}.writes"),
           "OMP_NUM_THREADS": "1"}
    args = ["--profile", "smoke", "--overrides", f"{OVERRIDES},training.batch_size={batch}", "--method", "gt",
            "--run-name", name, "--results-dir", str(tmp_path / "results")]
    if processes == 1:
        cmd = [sys.executable, "-m", "stmkit.sft", *args]
    else:
        # accelerate's --cpu launches a single process unless MPI is installed; --multi_gpu launches through
        # torchrun, and on a machine without a GPU its processes join over gloo
        cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(processes),
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "stmkit.sft",
               *args]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    record = json.loads((tmp_path / "results" / "runs" / name / "run.json").read_text())
    return record["results"]


def _losses(adapter_dir: str) -> list[float]:
    from stmkit.training import TrainResult

    result = TrainResult.load(Path(adapter_dir).parent)
    return result.train_losses()["loss"].tolist()


def _adapter(path: str) -> dict:
    from safetensors.torch import load_file

    return load_file(str(Path(path) / "adapter_model.safetensors"))


@pytest.mark.slow
def test_two_processes_with_half_the_batch_train_like_one_with_all_of_it(tmp_path):
    one = _train(tmp_path, "one", batch=4, processes=1)
    two = _train(tmp_path, "two", batch=2, processes=2)
    assert one["training"]["world_size"] == 1 and two["training"]["world_size"] == 2

    # the same optimizer steps, so the same loss curve (logged as the mean over both ranks) and the same adapter
    t1, t2 = one["training"], two["training"]
    assert t1["steps"] == t2["steps"] > 1
    curve1, curve2 = _losses(one["adapter_dir"]), _losses(two["adapter_dir"])
    assert len(curve1) == len(curve2) == t1["steps"]
    assert curve2 == pytest.approx(curve1, rel=1e-3)
    a1, a2 = _adapter(one["adapter_dir"]), _adapter(two["adapter_dir"])
    assert a1.keys() == a2.keys()
    for k in a1:
        assert (a1[k] - a2[k]).abs().max().item() < 1e-4, k

    # what the record counts was gathered from both ranks: every example, every epoch
    assert t2["examples_seen"] == t1["examples_seen"] == 2 * t1["examples"]
    assert t2["distinct_examples_seen"] == t1["examples"]

    # only rank 0 wrote the adapter, run.json and the cache entry (rank 1 saves its copy to a private temp folder)
    writes = (tmp_path / "two.writes").read_text().splitlines()
    assert any("adapter" in w for w in writes)  # the spy saw rank 1 save ...
    ours = [w for w in writes if str(tmp_path / "results") in w or str(tmp_path / "cache") in w]
    assert ours == [], ours[:10]  # ... but nothing where the results and the cache live
