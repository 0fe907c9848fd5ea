"""The device MLX uses and the training profile chosen for it (hardware.py). CI has no GPU: the
choice is shown on the values a GPU machine reports."""

from __future__ import annotations

import dataclasses

from mlx_dm import hardware
from mlx_dm.hardware import recommend_profile

GIB = 2**30


def machine(device: str, limit_gib: float) -> hardware.Hardware:
    here = hardware.detect()
    return dataclasses.replace(here, device=device, mlx_memory_limit_bytes=int(limit_gib * GIB),
                               unified_memory=device == "gpu (Metal)")


def test_an_h200_trains_a_bf16_base_in_large_batches_without_savings():
    profile = recommend_profile(machine("gpu (CUDA)", 133))
    assert (profile.name, profile.batch_size, profile.max_seq_length) == ("large", 4, 2048)
    assert not profile.quantize_base and not profile.grad_checkpoint


def test_small_gpus_and_the_cpu_get_the_savings():
    assert recommend_profile(machine("gpu (Metal)", 10.7)).quantize_base  # a 16 GB Mac
    assert recommend_profile(machine("gpu (CUDA)", 20)).grad_checkpoint
    cpu = recommend_profile(machine("cpu", 20))
    assert cpu.name == "cpu" and cpu.batch_size == 1 and cpu.grad_checkpoint


def test_doctor_names_a_gpu_the_cpu_build_leaves_unused(monkeypatch):
    """An NVIDIA driver beside MLX's CPU build: the reason says so and how to get the CUDA build."""
    import platform

    monkeypatch.setattr(platform, "system", lambda: "Linux")
    monkeypatch.setattr(hardware, "nvidia_driver", lambda: True)
    device, reason, _ = hardware._mlx_device()
    if device == "cpu":
        assert "an NVIDIA GPU is here" in reason and "MLX_DM_MLX_BACKEND=cuda" in reason
    monkeypatch.setattr(hardware, "nvidia_driver", lambda: False)
    device, reason, _ = hardware._mlx_device()
    if device == "cpu":
        assert "no NVIDIA driver" in reason
