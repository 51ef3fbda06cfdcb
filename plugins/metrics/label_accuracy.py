"""``label_accuracy``: prompt adherence of class-conditional samples (the CLIP-score analogue)."""

from __future__ import annotations

from typing import ClassVar

from harness import Metric, MetricContext


class LabelAccuracy(Metric):
    """Share of samples that the digit classifier assigns to the label they were conditioned on.

    label_accuracy = (1/N) sum_i [argmax_c p(c | x_i) = y_i], with y_i the requested
    label of sample i (``ctx.conditions.labels``) and p the cached digit classifier
    (``plugins/metrics/digits_classifier.py``, ~0.98 held-out accuracy on real digits,
    which bounds what a perfect generator scores). 0.1 is chance for 10 classes;
    higher is better.
    """

    name = "label_accuracy"
    higher_is_better = True
    requires: ClassVar[frozenset[str]] = frozenset({"samples", "conditions"})

    def compute(self, ctx: MetricContext) -> float:
        import torch

        from plugins.metrics.digits_classifier import get_classifier

        if ctx.conditions is None or ctx.conditions.labels is None:
            raise ValueError("label_accuracy needs class labels in ctx.conditions.labels (a class-conditional dataset)")
        labels = torch.as_tensor(ctx.conditions.labels).long().cpu()
        if len(labels) != len(ctx.samples):
            raise ValueError(f"label_accuracy: {len(ctx.samples)} samples but {len(labels)} labels")
        predicted = get_classifier(ctx).predict(ctx.samples, ctx.device)
        return float((predicted == labels).float().mean())
