"""Base checkpoints: the Hugging Face cache for repo ids, a local folder as given, or the tiny builder."""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

from ..errors import ModelError

TINY = "tiny"
TINY_VISION = "tiny-vision"  # the tiny model with small vision and audio towers (mmproj exports)
TINY_BASES = (TINY, TINY_VISION)  # the built-in offline models
GEMMA3_270M = "gemma3-270m"  # real Gemma 3 270M weights from an optional package (model/gguf_import.py)
KNOWN_BASES = {
    "e2b": "google/gemma-3n-E2B-it",
    "e4b": "google/gemma-3n-E4B-it",
}
# What a text DM needs; the towers' weights live in the same safetensors shards.
ALLOW_PATTERNS = ["*.json", "*.safetensors", "tokenizer.model", "*.jinja", "*.txt"]


# Gemma 3n's per-layer embedding table (see per_layer_embeddings.py).
PER_LAYER_TABLE = "embed_tokens_per_layer.weight"

def resolve_base(name: str, project_dir: Path, scenarios_dir: Path | None = None) -> Path:
    """A local folder holding the base checkpoint: built (tiny), as given (path), or downloaded once."""
    if name == TINY:
        from .tiny import build_tiny_model

        return build_tiny_model(Path(project_dir) / ".mlx-dm" / "models" / "tiny-gemma3n", scenarios_dir)
    if name == TINY_VISION:
        from .tiny import TINY_VISION_SPEC, build_tiny_model

        return build_tiny_model(Path(project_dir) / ".mlx-dm" / "models" / "tiny-gemma3n-vision", scenarios_dir,
                                TINY_VISION_SPEC)
    if name.lower() == GEMMA3_270M:
        from .gguf_import import gemma3_270m_base

        return gemma3_270m_base(Path(project_dir) / ".mlx-dm" / "models")
    name = KNOWN_BASES.get(name.lower(), name)
    local = Path(name).expanduser()
    if local.exists() or name.startswith((".", "/", "~")):
        return _check_local(local)
    return download(name)


def _check_local(path: Path) -> Path:
    if not path.is_dir():
        raise ModelError(f"base model path {path} is not a folder", "pass a folder with config.json and *.safetensors, or a Hugging Face repo id")
    missing = [f for f in ("config.json",) if not (path / f).exists()]
    if missing or not list(path.glob("*.safetensors")):
        raise ModelError(f"{path} is not a Hugging Face checkpoint (missing {', '.join(missing) or '*.safetensors'})",
                         "point --base at the folder that holds config.json, tokenizer.model and the .safetensors files")
    config = json.loads((path / "config.json").read_text())
    if config.get("model_type") not in ("gemma3n", "gemma3", "gemma3_text"):
        raise ModelError(f"{path} holds a '{config.get('model_type')}' model, not Gemma 3n or Gemma 3",
                         "use google/gemma-3n-E2B-it (default), google/gemma-3n-E4B-it, or a Gemma 3 text model")
    return path


def download(repo_id: str) -> Path:
    """Download (or reuse) a snapshot in the standard Hugging Face cache; resumable, with progress."""
    from huggingface_hub import snapshot_download
    from huggingface_hub import errors as hf_errors

    try:
        return Path(snapshot_download(repo_id, allow_patterns=ALLOW_PATTERNS))
    except hf_errors.GatedRepoError as exc:
        raise ModelError(
            f"{repo_id} is gated: your Hugging Face account has not accepted its licence, or no token was found",
            f"accept the licence at the model's page on huggingface.co, then run `hf auth login` (or set HF_TOKEN)",
        ) from exc
    except hf_errors.RepositoryNotFoundError as exc:
        raise ModelError(
            f"{repo_id} was not found on the Hugging Face Hub (or it is private and no token was given)",
            "check the name (e.g. google/gemma-3n-E2B-it); for a private repo run `hf auth login` or set HF_TOKEN",
        ) from exc
    except hf_errors.LocalEntryNotFoundError as exc:
        raise ModelError(
            f"cannot download {repo_id}: the Hugging Face Hub is not reachable and the model is not in the cache "
            f"({os.environ.get('HF_HUB_CACHE') or '~/.cache/huggingface/hub'})",
            f"connect once and run `hf download {repo_id}`, or copy the checkpoint folder here and pass --base PATH; "
            "`--base tiny` trains the built-in offline model",
        ) from exc
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            raise ModelError(f"disk full while downloading {repo_id}",
                             "free some space (E2B needs about 11 GB) or set HF_HOME to a bigger disk") from exc
        raise ModelError(f"cannot download {repo_id}: {exc}",
                         "check your network connection; `--base tiny` works offline") from exc
    except hf_errors.HfHubHTTPError as exc:
        status = getattr(getattr(exc, "response", None), "status_code", None)
        if status == 401:
            raise ModelError(f"the Hugging Face Hub refused your token for {repo_id} (401)",
                             "run `hf auth login` again or set a valid HF_TOKEN") from exc
        raise ModelError(f"downloading {repo_id} failed: {exc}", "try again; downloads resume where they stopped") from exc
