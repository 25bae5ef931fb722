"""The zoo's training target: the scene attributes that the `scenes` captions state.

Six classification problems (shape, colour, size, count, background, position) are flattened into one
classifier head: `num_labels` = the sum of the class counts, each attribute owning a contiguous slice of
the logits. The label names `"attr=value"` are written into the model config's `id2label`, so a saved
folder describes its own head (`layout_from_config`) even if `ATTRIBUTES` grows later.
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from convergence.datasets import scenes

# The one definition of the target classes, derived from the sampler's own constants.
ATTRIBUTES: "OrderedDict[str, list]" = OrderedDict(
    shape=list(scenes.SHAPES),
    color=list(scenes.COLORS),
    size=list(scenes.SIZES),
    count=sorted(scenes.COUNT_WORDS),
    background=list(scenes.BACKGROUNDS),
    position=list(scenes.POSITIONS) + ["scattered"],
)
SEP = "="


class AttributeLayoutError(ValueError):
    """A dataset or config that does not fit the attribute layout."""


def label_names(attributes: dict = ATTRIBUTES) -> list[str]:
    return [f"{attr}{SEP}{value}" for attr, values in attributes.items() for value in values]


def id2label(attributes: dict = ATTRIBUTES) -> dict[int, str]:
    return dict(enumerate(label_names(attributes)))


def layout_from_config(config) -> "OrderedDict[str, list[str]]":
    """attr -> class names (as strings), in logit order, parsed from `config.id2label`."""
    layout: OrderedDict[str, list[str]] = OrderedDict()
    labels = [config.id2label[i] for i in range(config.num_labels)]
    for label in labels:
        attr, sep, value = str(label).partition(SEP)
        if not sep:
            raise AttributeLayoutError(
                f"label '{label}' is not 'attribute{SEP}value': this model was not trained by the vision zoo"
            )
        if attr in layout and (list(layout)[-1] != attr or value in layout[attr]):
            raise AttributeLayoutError(f"label '{label}' repeated or not contiguous with its attribute in id2label")
        layout.setdefault(attr, []).append(value)
    return layout


def slices(layout: dict) -> dict[str, slice]:
    """attr -> its slice of the flattened logits."""
    out, start = {}, 0
    for attr, values in layout.items():
        out[attr] = slice(start, start + len(values))
        start += len(values)
    return out


def encode_targets(df: pd.DataFrame, layout: dict) -> torch.Tensor:
    """Class index of every attribute per row: LongTensor [N, n_attributes] (column order = layout)."""
    missing = [a for a in layout if a not in df]
    if missing:
        raise AttributeLayoutError(
            f"samples lack attribute columns {missing}: the vision zoo trains on a `scenes` dataset "
            f"(columns {list(layout)})"
        )
    columns = []
    for attr, values in layout.items():
        index = {str(v): i for i, v in enumerate(values)}  # compare as strings: counts are ints in parquet
        raw = df[attr].astype(str).to_numpy()
        unknown = sorted(set(raw) - set(index))
        if unknown:
            raise AttributeLayoutError(f"attribute '{attr}' has values {unknown} outside its classes {values}")
        columns.append(np.array([index[v] for v in raw], dtype=np.int64))
    return torch.from_numpy(np.stack(columns, axis=1))


def attribute_loss(logits: torch.Tensor, targets: torch.Tensor, layout: dict) -> torch.Tensor:
    """Sum over attributes of the mean cross-entropy on that attribute's slice of the logits."""
    return sum(F.cross_entropy(logits[:, s], targets[:, j]) for j, s in enumerate(slices(layout).values()))


def predict(logits: torch.Tensor, layout: dict) -> torch.Tensor:
    """Argmax class per attribute: [N, n_attributes]."""
    return torch.stack([logits[:, s].argmax(1) for s in slices(layout).values()], dim=1)


def accuracies(predictions: torch.Tensor, targets: torch.Tensor, layout: dict) -> dict:
    """{"accuracy": {attr: fraction correct}, "mean_accuracy": their unweighted mean, "n": rows}."""
    correct = (predictions == targets).double().mean(0).tolist()
    per_attr = {attr: float(c) for attr, c in zip(layout, correct)}
    return {"accuracy": per_attr, "mean_accuracy": float(np.mean(correct)), "n": int(len(targets))}


def majority_baseline(train_targets: torch.Tensor, test_targets: torch.Tensor, layout: dict) -> dict:
    """Accuracy of always answering each attribute's most frequent training class: the chance level."""
    majority = torch.mode(train_targets, dim=0).values
    return accuracies(majority.expand_as(test_targets), test_targets, layout)
