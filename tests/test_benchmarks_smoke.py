"""Smoke test of benchmarks/train_throughput.py: a --quick run end to end.

PyTorch and JAX are hidden from the run (a folder of stand-in modules that
raise ImportError comes first on PYTHONPATH), so the test behaves the same
whether or not they are installed: scratchvae-numpy is timed, the other two
systems are skipped with a note.
"""
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "train_throughput.py"


def _hide(tmp_path, *modules):
    folder = tmp_path / "hidden"
    folder.mkdir()
    for m in modules:
        (folder / f"{m}.py").write_text(f"raise ImportError('{m} hidden by the smoke test')\n")
    return folder


def test_quick_run_writes_the_json_record(tmp_path):
    out = tmp_path / "tp.json"
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(_hide(tmp_path, "torch", "jax")), str(ROOT)])
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--threads", "1",
         "--systems", "scratchvae-numpy,torch-eager,jax-jit", "--json", str(out)],
        capture_output=True, text=True, timeout=120, cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stderr
    assert "| scratchvae-numpy |" in proc.stdout

    rec = json.loads(out.read_text())
    assert rec["benchmark"] == "train_throughput"
    assert rec["config"]["quick"] is True and rec["config"]["batch_sizes"] == [128]
    assert rec["machine"]["logical_cpus"] >= 1 and rec["machine"]["python"]
    assert rec["versions"]["numpy"]
    assert rec["threads"]["requested"] == 1
    assert rec["threads"]["env"]["OPENBLAS_NUM_THREADS"] == "1"
    assert rec["model"]["flop_per_example"]["total"] == 3_280_000
    assert rec["sgemm"]["gflops"]["median"] > 0
    assert rec["sgemm"]["gemm_limit_examples_per_s"] > 0

    by_system = {r["system"]: r for r in rec["results"]}
    assert set(by_system) == {"scratchvae-numpy", "torch-eager", "jax-jit"}
    ours = by_system["scratchvae-numpy"]
    assert ours["status"] == "ok" and ours["batch_size"] == 128
    assert len(ours["rounds"]) == 1 and ours["rounds"][0]["steps"] == 3
    assert ours["examples_per_s"]["median"] > 0
    assert 0 < ours["percent_of_gemm_limit"] < 100
    assert ours["first_step_s"] > 0
    assert ours["info"]["backend"] == "numpy"
    assert rec["scratchvae"]["scratchvae-numpy"]["backend"] == "numpy"
    for name, package in (("torch-eager", "torch"), ("jax-jit", "jax")):
        assert by_system[name]["status"] == "skipped"
        assert package in by_system[name]["note"]
        assert rec["systems"][name]["status"] == "skipped"


def _load_script():
    sys.path.insert(0, str(SCRIPT.parent))
    try:
        spec = importlib.util.spec_from_file_location("train_throughput", SCRIPT)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(SCRIPT.parent))


def test_flop_count_of_one_step():
    tt = _load_script()
    f = tt.step_flops()
    # forward: 784x400 + 2 x 400x20 + 20x400 + 400x784 multiply-adds per example
    assert f["forward"] == 2 * (784 * 400 + 2 * 400 * 20 + 20 * 400 + 400 * 784) == 1_302_400
    # backward: every weight gradient, and every input gradient except the first layer's
    assert f["backward"] == 2 * (651_200 + 651_200 - 784 * 400) == 1_977_600
    assert len(f["gemms"]) == 5 + 5 + 4


def test_unknown_system_is_refused():
    proc = subprocess.run([sys.executable, str(SCRIPT), "--systems", "tensorflow", "--quick"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "unknown system" in proc.stderr
