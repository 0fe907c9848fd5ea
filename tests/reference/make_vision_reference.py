"""Reference image embeddings of the tiny-vision model's towers from transformers + timm (float32).

Run where torch, transformers (>= 5) and timm are installed (the project's GPU lending machine has
them), on the vision tensors and config of `--base tiny-vision` (.mlx-dm/models/tiny-gemma3n-vision):

    python tests/reference/make_vision_reference.py CONFIG.json VISION.safetensors OUT.npz

Encodes mlx_dm.evaluate.gguf_checks.test_image(768) (pixels / 255, Gemma 3n's MobileNetV5 takes no mean or
std) through the vision tower and the multimodal embedder, as Gemma3nModel.get_image_features does.
"""

import hashlib
import json
import os
import sys

import numpy as np
import torch
from safetensors.torch import load_file
from transformers import Gemma3nConfig, Gemma3nForConditionalGeneration

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", ".."))
from mlx_dm.evaluate.gguf_checks import test_image  # noqa: E402

ROWS = [0, 1, 37, 128, 200, 255]  # image tokens kept in the fixture (all 256 would be 2 MB)


def weights_digest(weights: dict) -> str:
    digest = hashlib.sha256()
    for name in sorted(weights):
        digest.update(name.encode() + weights[name].float().numpy().tobytes())
    return digest.hexdigest()


def main(config_path: str, weights_path: str, out_path: str) -> None:
    config = json.load(open(config_path))
    model = Gemma3nForConditionalGeneration(Gemma3nConfig(**{
        k: v for k, v in config.items() if k not in ("architectures", "model_type", "transformers_version")})).float().eval()
    weights = load_file(weights_path)
    missing, unexpected = model.load_state_dict({k: v.float() for k, v in weights.items()}, strict=False)
    assert not unexpected and not [m for m in missing if "vision" in m], (unexpected, missing)
    pixels = torch.from_numpy(test_image(768).astype(np.float32) / 255.0).permute(2, 0, 1)[None]
    with torch.no_grad():
        features = model.model.get_image_features(pixel_values=pixels)
    features = getattr(features, "pooler_output", features)[0].numpy()
    np.savez(out_path, rows=np.array(ROWS), embeddings=features[ROWS].astype(np.float32),
             mean_abs=np.float32(np.abs(features).mean()), shape=np.array(features.shape),
             weights_sha256=weights_digest(weights))


if __name__ == "__main__":
    main(*sys.argv[1:4])
