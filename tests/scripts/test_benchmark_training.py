from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


@pytest.fixture
def run_module(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import run
    import training

    yield run, training
    for name in ("run", "training", "accuracy", "benchmark_data", "common"):
        sys.modules.pop(name, None)


def test_budget_passes_dataset_weights_to_the_bundle_and_names_them(run_module):
    _, training = run_module
    plain = training.Budget()
    assert "dataset_weights" not in plain.overrides() and "weights" not in plain.text()
    weighted = training.Budget(dataset_weights=(1.0, 3.0), weights_text="ACDC x 3, the others x 1")
    assert weighted.overrides()["dataset_weights"] == [1.0, 3.0]
    assert "datasets drawn uniformly with the weights ACDC x 3, the others x 1, loss" in weighted.text()


@pytest.mark.parametrize("text,expected", [("acdc=3", ("acdc", 3.0)), ("kvasir=0.5", ("kvasir", 0.5))])
def test_weight_arguments(run_module, text, expected):
    run, _ = run_module
    assert run._weight(text) == expected


@pytest.mark.parametrize("text,message", [
    ("brain=2", "expected NAME=W with NAME one of chaos_t2, acdc, xray_lung, ph2, kvasir, got 'brain=2'"),
    ("acdc", "expected NAME=W"),
    ("acdc=0", "a dataset weight must be > 0, got 'acdc=0'"),
])
def test_bad_weight_arguments(run_module, text, message):
    run, _ = run_module
    with pytest.raises(argparse.ArgumentTypeError, match=message):
        run._weight(text)
