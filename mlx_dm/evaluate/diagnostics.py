"""Numerics that exist only for diagnosis: MLX made to compute Gemma 3n as llama.cpp does.

llama.cpp departs from the reference on purpose in two places. With both switched on here, an f32
GGUF must match MLX to float32 rounding (a test), and the parity report shows how much of a GGUF's
difference from the trained model they explain.
"""

from __future__ import annotations

import contextlib


@contextlib.contextmanager
def llama_cpp_sparsity_std():
    """Diagnosis only: compute Gemma 3n's activation sparsity with llama.cpp's sample standard
    deviation (n-1, src/models/gemma3n.cpp) instead of the reference's population one (n)."""
    import mlx.core as mx
    import mlx.nn as nn
    import mlx_lm.models.gemma3n as gemma3n

    original = gemma3n.gelu_topk

    def sample_std_topk(inputs, std_multiplier):
        mean = mx.mean(inputs, axis=-1, keepdims=True)
        std = mx.sqrt(mx.sum((inputs - mean) ** 2, axis=-1, keepdims=True) / (inputs.shape[-1] - 1))
        return nn.gelu_approx(mx.maximum(0, inputs - (mean + std * std_multiplier.astype(std.dtype))))

    gemma3n.gelu_topk = sample_std_topk
    try:
        yield
    finally:
        gemma3n.gelu_topk = original


@contextlib.contextmanager
def llama_cpp_gelu_table():
    """Diagnosis only: GELU as llama.cpp's CPU backend computes it, from a table indexed by the
    input rounded to f16, giving an f16 value (ggml-cpu/vec.h, GGML_GELU_FP16); exact outside
    [-10, 10]."""
    import mlx.core as mx
    import mlx.nn as nn

    original = nn.gelu_approx

    def table_gelu(inputs):
        rounded = original(inputs.astype(mx.float16).astype(inputs.dtype)).astype(mx.float16).astype(inputs.dtype)
        return mx.where(inputs <= -10, 0, mx.where(inputs >= 10, inputs, rounded))

    nn.gelu_approx = table_gelu
    try:
        yield
    finally:
        nn.gelu_approx = original


@contextlib.contextmanager
def llama_cpp_numerics():
    """Both of llama.cpp's deliberate numeric differences from the reference, for checking that a
    GGUF computes the trained graph: with them, an f32 GGUF must match MLX to float32 rounding."""
    with llama_cpp_sparsity_std(), llama_cpp_gelu_table():
        yield
