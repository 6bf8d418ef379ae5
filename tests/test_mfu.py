import json

import torch

from selfsup.train import mfu


def test_peak_is_measured_once_and_cached(monkeypatch, tmp_path):
    monkeypatch.setenv("SELFSUP_CACHE", str(tmp_path))
    monkeypatch.setattr(mfu.os, "getloadavg", lambda: (0.0, 0.0, 0.0))
    monkeypatch.setattr(mfu, "_busy", {})  # earlier runs of this process may have measured it on a busy CPU
    calls = []
    monkeypatch.setattr(mfu, "_measure", lambda device, dtype: calls.append(dtype) or 1.5e11)
    assert mfu.peak_flops(torch.device("cpu"), torch.float32) == 1.5e11
    assert mfu.peak_flops(torch.device("cpu"), torch.float32) == 1.5e11
    assert mfu.peak_flops(torch.device("cpu"), torch.bfloat16) == 1.5e11
    assert calls == [torch.float32, torch.bfloat16]  # one measurement per precision
    cached = json.loads((tmp_path / "peak_flops.json").read_text())
    assert len(cached) == 2 and all("threads=" in k for k in cached)


def test_a_peak_measured_on_a_busy_cpu_serves_its_run_only(monkeypatch, tmp_path):
    """Measured while other processes hold the cores, the peak reads low and every later run's MFU would read high."""
    monkeypatch.setenv("SELFSUP_CACHE", str(tmp_path))
    monkeypatch.setattr(mfu.os, "getloadavg", lambda: (float(mfu.os.cpu_count()), 0.0, 0.0))
    calls = []
    monkeypatch.setattr(mfu, "_busy", {})
    monkeypatch.setattr(mfu, "_measure", lambda device, dtype: calls.append(dtype) or 4e10)
    assert mfu.peak_flops(torch.device("cpu"), torch.float32) == 4e10
    assert mfu.peak_flops(torch.device("cpu"), torch.float32) == 4e10
    assert calls == [torch.float32] and not (tmp_path / "peak_flops.json").exists()


def test_measured_peak_is_a_plausible_matmul_rate():
    flops = mfu._measure(torch.device("cpu"), torch.float32, n=256, seconds=0.05)
    assert 1e8 < flops < 1e14


def test_measuring_the_peak_leaves_the_runs_random_numbers_alone():
    """Measured on a machine's first run only: drawing from the global generator made that run differ from every
    later one with the same seed."""
    from selfsup.train.mfu import _measure

    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    _measure(torch.device("cpu"), torch.float32, n=64, seconds=0.01)
    assert torch.equal(torch.rand(3), expected)
