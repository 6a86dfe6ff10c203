"""The per-process model cache that clients train in and the server evaluates with, for any task.

Keys are PEFT's adapter-name-free keys (``get_peft_model_state_dict``): a LoRA layer is named by its
prefix ``base_model.model.<module>`` (``<prefix>.lora_A.weight`` is ``r x d_in``,
``<prefix>.lora_B.weight`` is ``d_out x r``) and a head by ``base_model.model.<head>.<param>``
(PEFT ``modules_to_save``). The task (:mod:`glora.tasks`) says how the model loads, which modules
are its head and which PEFT task type its LoRA config has.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from peft import LoraConfig, PeftModel, TaskType, get_peft_model
from peft.tuners.tuners_utils import check_target_module_exists
from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as PEFT_TARGETS
from torch import Tensor, nn

from glora.contract import lora_scaling
from glora.devices import BASE_DTYPE
from glora.errors import ConfigError
from glora.global_model import LORA_A, LORA_B
from glora.tasks import get_task

PEFT_PREFIX = "base_model.model."

# peft 0.21 still calls a transformers helper that transformers 5 deprecated; nothing to act on.
warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)


def linear_names(model: nn.Module) -> list[str]:
    """The distinct last names of the model's ``nn.Linear`` modules (what LoRA can target)."""
    return sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules()
                   if isinstance(m, nn.Linear)})


def default_targets(model: nn.Module) -> tuple[str, ...]:
    """PEFT's default LoRA target modules for the model's architecture (``config.model_type``).

    Raises:
        ConfigError: PEFT has no default for it; names the type and its linear layers.
    """
    kind = getattr(getattr(model, "config", None), "model_type", None)
    if kind not in PEFT_TARGETS:
        raise ConfigError(f"PEFT has no default LoRA target modules for model type {kind!r}; set "
                          f"`model.target_modules` to some of its linear layers: "
                          f"{linear_names(model)}.")
    return tuple(PEFT_TARGETS[kind])


def lora_config(task_type: TaskType, rank: int, alpha: float, target_modules: Sequence[str],
                rslora: bool = False, dropout: float = 0.0,
                modules_to_save: Sequence[str] | None = None,
                rank_pattern: dict[str, int] | None = None,
                alpha_pattern: dict[str, float] | None = None) -> LoraConfig:
    """PEFT LoRA config: LoRA on ``target_modules``; a head, if any, trained whole.

    Scaling is ``alpha / rank`` (``alpha / sqrt(rank)`` with ``rslora``); ``rank_pattern`` and
    ``alpha_pattern`` (regex of module name -> value) override them per layer.
    ``modules_to_save`` ``None`` is PEFT's choice for the task type (for SEQ_CLS the
    ``classifier`` or ``score`` head; nothing for CAUSAL_LM).
    """
    if not isinstance(rank, int) or rank < 1:
        raise ValueError(f"`rank` must be a positive integer, got {rank!r}.")
    return LoraConfig(task_type=task_type, r=rank, lora_alpha=alpha,
                      target_modules=list(target_modules), use_rslora=rslora,
                      lora_dropout=dropout,
                      modules_to_save=None if modules_to_save is None else list(modules_to_save),
                      rank_pattern=dict(rank_pattern or {}),
                      alpha_pattern=dict(alpha_pattern or {}))


@dataclass
class Adapter:
    """One rank's adapter inside the cache's PEFT model, with its parameters by PEFT key."""

    model: PeftModel
    name: str
    lora: dict[str, nn.Parameter]  # <prefix>.lora_A.weight / .lora_B.weight
    head: dict[str, nn.Parameter]  # base_model.model.<head>.<param>
    base_layers: dict[str, nn.Linear]  # prefix -> the frozen layer LoRA wraps


def adapter_parameters(model: PeftModel, name: str) -> dict[str, nn.Parameter]:
    """Parameters of adapter ``name`` under the keys ``get_peft_model_state_dict`` gives them."""
    tag = f".{name}."
    return {k.replace(tag, ".").replace(".modules_to_save.", "."): p
            for k, p in model.named_parameters() if tag in k}


def check_tensors(shapes: dict[str, tuple[int, ...]], values: dict[str, Tensor], what: str) -> None:
    """Check that ``values`` has exactly the keys of ``shapes``, with those shapes.

    Raises:
        ValueError: naming the missing or unexpected keys, or the key whose shape differs.
    """
    if values.keys() != shapes.keys():
        missing = sorted(shapes.keys() - values.keys())
        extra = sorted(values.keys() - shapes.keys())
        raise ValueError(f"{what} keys do not match the model: missing {missing[:4]}"
                         f"{' ...' if len(missing) > 4 else ''}, unexpected {extra[:4]}"
                         f"{' ...' if len(extra) > 4 else ''}.")
    for key, shape in shapes.items():
        if tuple(values[key].shape) != tuple(shape):
            raise ValueError(f"{what} `{key}` has shape {tuple(values[key].shape)}, the model "
                             f"expects {tuple(shape)}.")


def copy_into(params: dict[str, Tensor], values: dict[str, Tensor], what: str) -> None:
    """Copy ``values`` into ``params`` (same keys and shapes, see :func:`check_tensors`)."""
    check_tensors({k: tuple(p.shape) for k, p in params.items()}, values, what)
    with torch.no_grad():
        for key, p in params.items():
            p.copy_(values[key])


class ModelCache:
    """A backbone loaded once per process, serving PEFT adapters of any rank and the global model.

    Every rank is one named adapter (``rank<r>``) of a single PEFT model built on the backbone
    itself, so switching ranks costs nothing and the frozen weights exist once: the global model
    (:meth:`global_model`) is the same backbone with the adapter layers switched off (PEFT's
    ``disable_adapter_layers``), and a client task switches them back on. Nothing a client task
    writes survives into the next:
    :func:`glora.training.train.train_client` overwrites the adapter, the head and the frozen
    weights of the adapted layers (``W0`` plus the task's base deltas) before training.

    Args:
        model: a local folder or Hugging Face id; ``None`` is the task's packaged model.
        num_labels: classes (1 for regression); classification only.
        target_modules: modules that get LoRA (PEFT's matching: exact name or name suffix);
            ``None``: PEFT's default for the model's architecture (:func:`default_targets`).
        alpha: LoRA alpha; the scaling is ``alpha / r`` (``alpha / sqrt(r)`` with ``rslora``).
        dropout: LoRA dropout.
        max_rank: when given, checked against every adapted layer now rather than at first use.
        problem_type: passed to Hugging Face (``None`` infers it); classification only.
        seed: seed of a new head's initialization (the same in every process).
        task: registry name of the task (:mod:`glora.tasks`).
        device: where the model lives, trains and evaluates (``"cpu"``, ``"cuda:0"``, ...;
            :func:`glora.devices.resolve_device` turns ``train.device`` into one).
        dtype: ``model.dtype``, the frozen weights' dtype (``fp32``, ``bf16``, ``fp16``); the
            trained parameters (LoRA factors, head) are float32 whatever it is.
    """

    def __init__(self, model: str | None = None, num_labels: int = 2,
                 target_modules: Sequence[str] | None = None, alpha: float = 16.0,
                 rslora: bool = False, dropout: float = 0.0, max_rank: int | None = None,
                 problem_type: str | None = None, seed: int = 0,
                 task: str = "classification", device: str | torch.device = "cpu",
                 dtype: str = "fp32") -> None:
        self.task = get_task(task)
        self.device = torch.device(device)
        self.model_name = model
        self.path = self.task.resolve(model)
        self.num_labels = num_labels
        self.alpha, self.rslora, self.dropout = float(alpha), bool(rslora), float(dropout)
        self.dtype = BASE_DTYPE[dtype]
        self._load_args = (num_labels, problem_type, seed)
        self.plain = self._load()
        self.target_modules = tuple(target_modules or default_targets(self.plain))
        self.head_modules = self.task.head_modules(self.plain)
        self._plain_layers = self._find_layers()
        self.layers = {k: tuple(m.weight.shape) for k, m in self._plain_layers.items()}
        self._w0 = {k: m.weight.detach().clone() for k, m in self._plain_layers.items()}
        self._plain_head = self._head_of(self.plain)
        self.head_init = {k: p.detach().clone() for k, p in self._plain_head.items()}
        self._peft: PeftModel | None = None
        self._adapters: dict[int, Adapter] = {}
        if max_rank is not None:
            self.check_rank(max_rank)

    def _find_layers(self) -> dict[str, nn.Linear]:
        """The modules LoRA adapts, by PEFT prefix (PEFT's own matching rule)."""
        config = lora_config(self.task.peft_type, 1, self.alpha, self.target_modules,
                             modules_to_save=self.head_modules)
        found = {name: m for name, m in self.plain.named_modules()
                 if name and check_target_module_exists(config, name)}
        wrong = [f"`{n}` ({type(m).__name__})" for n, m in found.items()
                 if not isinstance(m, nn.Linear)]
        if wrong:
            raise ConfigError(f"`target_modules` {list(self.target_modules)} match modules that "
                              f"are not nn.Linear: {', '.join(wrong[:4])}; name linear layers "
                              "only.")
        if not found:
            raise ConfigError(f"`target_modules` {list(self.target_modules)} match no layer of the "
                              f"model; its linear layers are named {linear_names(self.plain)}.")
        return {PEFT_PREFIX + n: m for n, m in found.items()}

    def scaling(self, rank: int) -> float:
        """LoRA scaling at ``rank``: ``alpha / r``, or ``alpha / sqrt(r)`` with rsLoRA."""
        return lora_scaling(self.alpha, rank, self.rslora)

    def check_rank(self, rank: int) -> None:
        """Reject a rank that is not positive or exceeds an adapted layer's ``min(d_out, d_in)``."""
        if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
            raise ConfigError(f"`rank` must be a positive integer, got {rank!r}.")
        for key, (d_out, d_in) in self.layers.items():
            if rank > min(d_out, d_in):
                raise ConfigError(f"rank {rank} is larger than layer `{key}` ({d_out} x {d_in}) "
                                  f"allows (at most {min(d_out, d_in)}); lower `lora.ranks`.")

    def _head_of(self, net: nn.Module) -> dict[str, nn.Parameter]:
        return {PEFT_PREFIX + f"{m}.{n}": p for m in self.head_modules
                for n, p in net.get_submodule(m).named_parameters()}

    def _load(self) -> nn.Module:
        """The backbone as stored (pretrained weights, the seeded initial head), frozen."""
        return self.task.load_model(self.path, *self._load_args, self.dtype
                                    ).requires_grad_(False).to(self.device)

    def fresh_base(self) -> nn.Module:
        """A copy of the backbone with the pretrained weights and the initial head (loaded again
        once the backbone carries the clients' adapters)."""
        if self._peft is not None:
            return self._load()
        net = copy.deepcopy(self.plain)
        self.load_base({k: net.get_submodule(k.removeprefix(PEFT_PREFIX)) for k in self.layers}, {})
        copy_into(self._head_of(net), self.head_init, "head")
        return net

    def adapter(self, rank: int) -> Adapter:
        """The (active) adapter of ``rank``, created on first request; weights are whatever the
        last task left, so callers overwrite them."""
        if rank not in self._adapters:
            self.check_rank(rank)
            name = f"rank{rank}"
            config = lora_config(self.task.peft_type, rank, self.alpha, self.target_modules,
                                 self.rslora, self.dropout)
            with torch.random.fork_rng(devices=[]):  # PEFT's init draws from the global RNG
                if self._peft is None:  # on the backbone itself, reset to its initial state
                    self.load_base(self._plain_layers, {})
                    copy_into(self._plain_head, self.head_init, "head")
                    self._peft = get_peft_model(self.plain, config, adapter_name=name)
                else:
                    self._peft.add_adapter(name, config)
            params = adapter_parameters(self._peft, name)
            for p in params.values():  # a half-precision base's head copy, too, trains in fp32
                p.data = p.data.float()
            lora = {k: p for k, p in params.items() if k.endswith((LORA_A, LORA_B))}
            head = {k: p for k, p in params.items() if k not in lora}
            prefixes = {k.removesuffix(LORA_A).removesuffix(LORA_B) for k in lora}
            if prefixes != self.layers.keys() or head.keys() != self.head_init.keys():
                raise RuntimeError(f"PEFT adapted {sorted(prefixes)} and saved {sorted(head)}, "
                                   f"expected {sorted(self.layers)} and {sorted(self.head_init)}.")
            base = {k: self._peft.get_submodule(k).get_base_layer() for k in self.layers}
            self._adapters[rank] = Adapter(self._peft, name, lora, head, base)
        adapter = self._adapters[rank]
        adapter.model.base_model.enable_adapter_layers()  # off while the global model was used
        adapter.model.set_adapter(adapter.name)
        return adapter

    def load_base(self, layers: dict[str, nn.Linear], deltas: dict[str, Tensor]) -> None:
        """Set each layer's frozen weight to ``W0 + deltas[prefix]`` (``W0`` where absent),
        added in float32 and rounded once to the base's dtype."""
        unknown = sorted(deltas.keys() - self._w0.keys())
        if unknown:
            raise ValueError(f"base deltas for layers the model does not adapt: {unknown[:4]}; "
                             f"adapted layers look like `{next(iter(self._w0))}`.")
        weights = {k: (self._w0[k].float() + deltas[k].float()).to(self._w0[k].dtype)
                   if k in deltas else self._w0[k] for k in layers}
        copy_into({k: m.weight for k, m in layers.items()}, weights, "base delta")

    def global_model(self, deltas: dict[str, Tensor], head: dict[str, Tensor] | None) -> nn.Module:
        """The plain model ``W0 + deltas`` per adapted layer with ``head`` (``None``/empty: the
        initial head), in eval mode: the backbone, its adapter layers (if any) switched off.
        Valid until the next call here or to :meth:`adapter` (the same module is reused)."""
        self.load_base(self._plain_layers, deltas)
        copy_into(self._plain_head, head or self.head_init, "head")
        if self._peft is not None:
            self._peft.base_model.disable_adapter_layers()
        return self.plain.eval()
