"""The GPU window's canary and throughput baseline on the CPU: the pieces that run first on a GPU, so
CI runs them under the project's pins and again under the GPU image's transformers (.ci/run)."""
from __future__ import annotations

import argparse
import json

import numpy as np
import torch

from benchmarks import gpu_canary, training


def test_attention_kernels_are_named_from_the_aten_ops_of_a_step():
    assert gpu_canary.attention_kernels({"mm", "_scaled_dot_product_cudnn_attention",
                                         "_scaled_dot_product_cudnn_attention_backward"}) == ["cuDNN"]
    assert gpu_canary.attention_kernels({"_scaled_dot_product_flash_attention",
                                         "_scaled_dot_product_efficient_attention_backward"}) == ["flash",
                                                                                                  "memory-efficient"]
    assert gpu_canary.attention_kernels({"bmm", "_softmax"}) == ["math (decomposed: no fused attention op "
                                                                 "dispatched)"]


def test_leg_gaps_are_the_largest_differences():
    a = {"weights": {"w": torch.tensor([1.0, 2.0]), "b": torch.tensor([0.5])}, "losses": torch.tensor([[3.0, 4.0]])}
    b = {"weights": {"w": torch.tensor([1.0, 2.25]), "b": torch.tensor([0.0])}, "losses": torch.tensor([[3.0, 3.875]])}
    assert gpu_canary.leg_gaps(a, b) == (0.5, 0.125)
    assert gpu_canary.leg_gaps(a, a) == (0.0, 0.0)


def test_the_canary_on_the_cpu(tmp_path):
    """Graphs skipped (both legs eager, so exactly equal), the attention kernel of the fused step named, fp32 with no
    loss scaling, memory not measured: each answer printed and in the JSON."""
    threads = torch.get_num_threads()
    try:
        assert gpu_canary.main(["--device", "cpu", "--k", "2", "--steps", "2", "--memory-k", "0", "--threads", "1",
                                "--json", str(tmp_path / "canary.json")]) == 0
    finally:
        torch.set_num_threads(threads)  # main() sets the process's threads
    answers = json.loads((tmp_path / "canary.json").read_text())
    assert answers["graphs"] == {"k": 2, "steps": 2, "captured": False, "max_weight_diff": 0.0, "max_loss_diff": 0.0}
    assert answers["attention"] == ["flash (CPU)"] and answers["fp16_overflows"] == [0, 0]
    assert answers["memory"] is None and answers["libraries"]["cudnn"] is None
    assert answers["libraries"]["torch"] == torch.__version__


def test_the_hf_trainer_baseline_runs_two_steps_on_the_cpu():
    """The baseline the throughput table compares with: the HF Trainer (with accelerate) set up like the authors',
    1 untimed and 1 timed step on the CPU."""
    tokens = np.random.default_rng(0).integers(4, 90, size=(300, 12)).astype(np.uint8)
    args = argparse.Namespace(steps=1, warmup=1, precision="fp32")
    baseline = training.time_baseline(tokens, args, torch.device("cpu"))
    assert baseline["ms_per_step"] > 0 and baseline["samples_per_s"] > 0
    assert baseline["optimizer"].startswith("adamw")
