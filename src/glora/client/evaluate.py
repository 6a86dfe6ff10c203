"""Evaluation of a global model: ``W0 + delta`` per adapted layer, plus the aggregated head.

The server state is loaded as dense weights into the cache's plain (non-PEFT) copy of the
backbone, so evaluation costs one forward pass per batch, whatever the method and the ranks.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from glora.client.tokenize import batch_inputs
from glora.errors import ConfigError
from glora.models import ModelCache

MetricFn = Callable[[Tensor, Tensor], dict[str, float]]


@torch.no_grad()
def logits(model: nn.Module, data: Sequence[Tensor], batch_size: int = 128) -> Tensor:
    """Logits (``n x num_labels``, float32 CPU) of any Hugging Face classifier, plain or PEFT.

    Examples are batched by length (then put back in order), so a batch is padded only to the
    length of similar examples: on sentences this halves the tokens a pass computes.
    """
    model.eval()
    order = torch.argsort(data[1].sum(dim=1), stable=True)
    out = torch.cat([model(**batch_inputs(data, order[i:i + batch_size])[0]).logits.float()
                     for i in range(0, len(order), batch_size)])
    return out[torch.argsort(order)]


def to_predictions(out: Tensor) -> Tensor:
    """Class ids (argmax), or the values of a one-output regression head."""
    return out[:, 0] if out.shape[1] == 1 else out.argmax(dim=1)


def named_metrics(names: Sequence[str], preds: Tensor, labels: Tensor) -> dict[str, float]:
    """Metrics by name from :mod:`glora.data.metrics`; plain accuracy where that is absent."""
    try:
        from glora.data.metrics import compute_metrics
    except ImportError:
        if list(names) != ["accuracy"]:
            raise ConfigError(f"metrics {list(names)} need glora.data.metrics, which is not "
                              "installed; ask for ['accuracy'] only.") from None
        return {"accuracy": float((preds == labels).float().mean())}
    return compute_metrics(list(names), preds.numpy(), labels.numpy())


def predict(cache: ModelCache, deltas: dict[str, Tensor], head: dict[str, Tensor] | None,
            data: Sequence[Tensor], batch_size: int = 128) -> Tensor:
    """Predictions of the global model ``W0 + deltas`` with ``head`` on tokenized ``data``."""
    return to_predictions(logits(cache.global_model(deltas, head), data, batch_size))


def evaluate(cache: ModelCache, deltas: dict[str, Tensor], head: dict[str, Tensor] | None,
             data: Sequence[Tensor], metrics: Sequence[str] | MetricFn = ("accuracy",),
             batch_size: int = 128) -> dict[str, float]:
    """Metrics of the global model on ``data``, plus its mean ``loss`` (cross-entropy, or MSE
    for regression).

    Args:
        metrics: names from ``glora.data.metrics.METRICS``, or a function
            ``(predictions, labels) -> {name: value}``.
    """
    out = logits(cache.global_model(deltas, head), data, batch_size)
    labels = data[-1]
    preds = to_predictions(out)
    scores = metrics(preds, labels) if callable(metrics) else named_metrics(metrics, preds, labels)
    loss = F.mse_loss(preds, labels.float()) if out.shape[1] == 1 else F.cross_entropy(out, labels)
    return {**{k: float(v) for k, v in scores.items()}, "loss": float(loss)}
