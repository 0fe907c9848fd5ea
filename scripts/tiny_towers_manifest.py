"""Write mlx_dm/model/tiny_towers.json: names and shapes of small but real Gemma 3n towers.

Needs torch, transformers (>= 5) and timm, which mlx-dm itself does not; run it where they are:

    python scripts/tiny_towers_manifest.py mlx_dm/model/tiny_towers.json

transformers builds Gemma 3n's vision tower through timm (MobileNetV5, `mobilenetv5_300m_enc`, here
with channel multiplier 1/16: 8M instead of 300M parameters, same blocks, stages, attention and
multi-scale fusion; its 2048 output features are fixed by timm) and its audio tower (one conformer
layer of width 64). The tiny model's builder draws random weights for these names and shapes.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(out: Path) -> None:
    import timm
    import torch
    import transformers
    from transformers import Gemma3nConfig, Gemma3nForConditionalGeneration

    from mlx_dm.model.tiny import TinySpec, multimodal_config

    config = multimodal_config(TinySpec())
    config["vision_config"]["model_args"] = {"channel_multiplier": 0.0625}
    config["audio_config"].update({"hidden_size": 64, "conf_num_attention_heads": 2, "conf_num_hidden_layers": 1})
    hf_config = Gemma3nConfig(**{k: v for k, v in config.items()
                                 if k not in ("architectures", "model_type", "transformers_version")})
    torch.manual_seed(0)
    model = Gemma3nForConditionalGeneration(hf_config)
    tensors = {name: list(value.shape) for name, value in model.state_dict().items()
               if name.startswith(("model.vision_tower.", "model.audio_tower.", "model.embed_vision.", "model.embed_audio."))}
    saved = json.loads(hf_config.to_json_string())
    for section in ("vision_config", "audio_config"):
        saved[section].pop("transformers_version", None)
        saved[section].pop("vocab_offset", None)
    out.write_text(json.dumps({
        "about": f"Tensor names and shapes of Gemma 3n's vision tower (timm mobilenetv5_300m_enc with channel_multiplier "
                 f"1/16) and audio tower (1 conformer layer, width 64) for the tiny model's text width 64, as transformers "
                 f"{transformers.__version__} + timm {timm.__version__} build them. Written by scripts/tiny_towers_manifest.py "
                 "on a machine with torch and timm.",
        "vision_config": saved["vision_config"], "audio_config": saved["audio_config"], "tensors": tensors}, indent=0))
    print(f"{out}: {len(tensors)} tensors, {sum(int(torch.tensor(s).prod()) for s in tensors.values()):,} parameters")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "mlx_dm/model/tiny_towers.json"))
