"""Reference logits for the tiny Gemma 3n from an independent implementation (Hugging Face transformers).

Run where torch + transformers are installed (the project's GPU lending machine has them):

    python tests/reference/make_gemma3n_reference.py CHECKPOINT_DIR INPUTS.json OUT.npz

CHECKPOINT_DIR is `mlx-dm tiny-model` output; INPUTS.json holds {"prompts": [[ids...], ...],
"weights_sha256": "..."}. Writes float32 logits of every position of every prompt, and the greedy
continuation (8 tokens, generated with the KV cache) of each prompt.
"""

import json
import sys

import numpy as np
import torch
from safetensors.torch import load_file
from transformers import Gemma3nForCausalLM, Gemma3nTextConfig
import transformers


def main(checkpoint: str, inputs_path: str, out_path: str) -> None:
    config = json.load(open(f"{checkpoint}/config.json"))["text_config"]
    text_config = Gemma3nTextConfig(**{k: v for k, v in config.items() if k not in ("architectures", "torch_dtype")})
    text_config._attn_implementation = "eager"
    torch.manual_seed(0)
    model = Gemma3nForCausalLM(text_config)
    state = load_file(f"{checkpoint}/model.safetensors")
    renamed = {k.replace("model.language_model.", "model."): v.to(torch.float32) for k, v in state.items()}
    missing, unexpected = model.load_state_dict(renamed, strict=False)
    print("transformers", transformers.__version__, "torch", torch.__version__)
    print("missing:", missing)
    print("unexpected:", unexpected)
    allowed_missing = {"lm_head.weight"}
    assert set(missing) <= allowed_missing, missing
    model = model.to(torch.float32).eval()
    inputs = json.load(open(inputs_path))
    logits, greedy = [], []
    with torch.no_grad():
        for ids in inputs["prompts"]:
            x = torch.tensor([ids])
            out = model(input_ids=x, use_cache=False).logits[0].float().numpy()
            logits.append(out)
            generated = model.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=8, do_sample=False, use_cache=True,
                                       pad_token_id=0, eos_token_id=None)
            greedy.append(generated[0, len(ids):].tolist())
    arrays = {f"logits_{i}": a for i, a in enumerate(logits)}
    arrays["greedy"] = np.array(greedy, dtype=np.int64)
    np.savez_compressed(out_path, **arrays,
                        meta=np.array(json.dumps({"weights_sha256": inputs["weights_sha256"],
                                                  "transformers": transformers.__version__,
                                                  "torch": torch.__version__, "unexpected": list(unexpected)})))
    print("greedy", greedy)


if __name__ == "__main__":
    main(*sys.argv[1:4])
