"""What machine this is, which device MLX will use and why, and the training profile that fits.

Memory figures come from the OS and from MLX's own memory APIs, never from guesses.
"""

from __future__ import annotations

import importlib.metadata
import math
import os
import platform
import shutil
import subprocess
from dataclasses import asdict, dataclass, field
from pathlib import Path

from . import cpu_blas

GIB = 1024**3


@dataclass(frozen=True)
class TrainingProfile:
    """Defaults for training chosen from the memory MLX may use."""

    name: str
    batch_size: int
    max_seq_length: int
    grad_checkpoint: bool
    quantize_base: bool
    reason: str


@dataclass(frozen=True)
class Hardware:
    os_name: str
    os_version: str
    machine: str
    chip: str
    cpu_count: int
    device: str  # "gpu (Metal)", "gpu (CUDA)" or "cpu"
    device_reason: str
    cpu_blas: str
    total_memory_bytes: int
    available_memory_bytes: int
    mlx_memory_limit_bytes: int
    unified_memory: bool
    free_disk_bytes: int
    versions: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


def _package_version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _sysctl(key: str) -> str:
    try:
        return subprocess.run(["sysctl", "-n", key], capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def _linux_meminfo() -> dict[str, int]:
    values: dict[str, int] = {}
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            key, _, rest = line.partition(":")
            parts = rest.split()
            if parts:
                values[key] = int(parts[0]) * 1024
    except OSError:
        pass
    return values


def _memory() -> tuple[int, int]:
    """Total and available system memory in bytes."""
    system = platform.system()
    if system == "Linux":
        info = _linux_meminfo()
        return info.get("MemTotal", 0), info.get("MemAvailable", info.get("MemFree", 0))
    if system == "Darwin":
        total = int(_sysctl("hw.memsize") or 0)
        available = total
        try:
            out = subprocess.run(["vm_stat"], capture_output=True, text=True, timeout=5).stdout
            page = int(_sysctl("hw.pagesize") or 16384)
            pages = {}
            for line in out.splitlines()[1:]:
                key, _, value = line.partition(":")
                pages[key.strip()] = int(value.strip().rstrip(".") or 0)
            free = pages.get("Pages free", 0) + pages.get("Pages inactive", 0) + pages.get("Pages speculative", 0)
            available = free * page
        except (OSError, subprocess.SubprocessError, ValueError):
            pass
        return total, available
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") if hasattr(os, "sysconf") else 0
    return total, total


def _chip() -> str:
    if platform.system() == "Darwin":
        return _sysctl("machdep.cpu.brand_string") or platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def nvidia_driver() -> bool:
    """An NVIDIA driver is loaded (as scripts/train-model.js decides between MLX's CUDA and CPU builds)."""
    if Path("/proc/driver/nvidia/version").exists():
        return True
    try:
        return subprocess.run(["nvidia-smi", "-L"], capture_output=True, timeout=20).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def _mlx_device() -> tuple[str, str, int]:
    """The device MLX will use, why, and the memory limit MLX reports for it."""
    try:
        import mlx.core as mx
    except ImportError as exc:  # pragma: no cover - mlx is a hard dependency
        return "none", f"mlx is not importable ({exc})", 0
    limit = int(mx.get_memory_limit())
    if mx.metal.is_available():
        return "gpu (Metal)", "MLX found a Metal GPU (Apple Silicon); unified memory is shared with the CPU", limit
    cuda = getattr(mx, "cuda", None)
    if cuda is not None and cuda.is_available():
        return "gpu (CUDA)", "MLX was built with CUDA and found an NVIDIA GPU", limit
    if platform.system() == "Darwin" and platform.machine() != "arm64":
        why = "Intel Mac: MLX's Metal backend needs Apple Silicon, so MLX runs on the CPU"
    elif platform.system() == "Darwin":
        why = "Metal is not available to MLX (a VM or an old macOS?): running on the CPU"
    elif nvidia_driver():
        why = ("an NVIDIA GPU is here, but this MLX build has no CUDA backend (mlx[cpu]): running on the CPU; "
               "delete .venv and run again (the bootstrap then installs MLX's CUDA build), or MLX_DM_MLX_BACKEND=cuda")
    else:
        why = "no Metal GPU and no NVIDIA driver: MLX's CPU build (mlx[cpu]) runs on the CPU"
    return "cpu", why, limit


def detect() -> Hardware:
    total, available = _memory()
    device, reason, limit = _mlx_device()
    disk = shutil.disk_usage(Path.cwd())
    versions = {
        name: _package_version(name)
        for name in ("mlx", "mlx-lm", "llama_cpp_python", "gguf", "huggingface-hub", "sentencepiece")
    }
    return Hardware(
        os_name=platform.system(),
        os_version=platform.release() if platform.system() != "Darwin" else platform.mac_ver()[0],
        machine=platform.machine(),
        chip=_chip(),
        cpu_count=os.cpu_count() or 1,
        device=device,
        device_reason=reason,
        cpu_blas=cpu_blas.status,
        total_memory_bytes=total,
        available_memory_bytes=available,
        mlx_memory_limit_bytes=limit,
        unified_memory=device == "gpu (Metal)",
        free_disk_bytes=disk.free,
        versions=versions,
    )


def checkpoint_bytes(folder) -> int:
    from pathlib import Path

    return sum(p.stat().st_size for p in Path(folder).glob("*.safetensors"))


def float32_bytes(folder, training: bool = False) -> int:
    """Bytes of the checkpoint's weights once in float32, from the safetensors headers (no weights
    read): a float32 checkpoint stays its size, a bfloat16 one doubles. Packed quantised tensors
    (integer types) count at twice their stored size. ``training``: what a training run holds,
    without Gemma 3n's per-layer embedding table (it keeps only the rows its data uses:
    model/per_layer_embeddings.py)."""
    from .files import safetensors_headers
    from .model.hub import PER_LAYER_TABLE

    return sum(2 * (info["data_offsets"][1] - info["data_offsets"][0]) if info["dtype"][0] in "IU"
               else 4 * math.prod(info["shape"]) for name, info in safetensors_headers(folder).items()
               if not (training and name.endswith(PER_LAYER_TABLE)))


def fits_without_savings(hw: Hardware, base_folder) -> bool:
    """True when the base in float32, as training holds it, takes under a quarter of the memory MLX
    may use: then a 4-bit base and gradient checkpointing only cost time (and MLX's quantised
    matmuls are slow on CPUs)."""
    budget = hw.mlx_memory_limit_bytes or hw.total_memory_bytes
    return 0 < float32_bytes(base_folder, training=True) < budget / 4


def recommend_profile(hw: Hardware) -> TrainingProfile:
    """Training defaults for Gemma 3n E2B from the memory MLX may use on this device.

    E2B has 4.5B parameters, 2.0B of them in the per-layer embedding table, of which training keeps
    only the rows its data uses (model/per_layer_embeddings.py). So training holds about 2.4B:
    4.9 GB in bf16, 1.4 GB as a 4-bit base. The thresholds leave room for activations (the output
    head's logits at the DM positions, 262,400 per position, are the largest) and the OS. They were
    set before the table was cut and not measured on a Mac since: a 16 GB Mac (about 10.7 GiB usable)
    may well train a bf16 base now.
    """
    budget = hw.mlx_memory_limit_bytes or hw.total_memory_bytes
    gib = budget / GIB
    if hw.device == "cpu":
        return TrainingProfile("cpu", 1, 1024, True, gib < 24,
                               f"CPU only ({gib:.0f} GiB usable): small batches, checkpointed layers")
    if gib < 12:
        return TrainingProfile("small", 1, 1024, True, True,
                               f"{gib:.0f} GiB usable by MLX: 4-bit base (QLoRA) and gradient checkpointing")
    if gib < 24:
        return TrainingProfile("medium", 2, 2048, True, False,
                               f"{gib:.0f} GiB usable by MLX: bf16 base with gradient checkpointing")
    return TrainingProfile("large", 4, 2048, False, False,
                           f"{gib:.0f} GiB usable by MLX: bf16 base, no checkpointing needed")
