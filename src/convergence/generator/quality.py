"""Offline sample quality of a generator, read by a zoo attribute classifier (FID-like, no Inception net).

An unconditional generator's samples carry no labels, so their attributes cannot be "right"; what can be
compared is how the classifier sees them against how it sees real images:

- `frechet`: the Fréchet distance (the FID formula, Heusel et al. 2017) between Gaussians fitted to the
  classifier's last hidden state (spatially averaged) on generated and on real held-out images;
- `attribute_tvd`: per attribute, the total variation distance between the distributions of the
  classifier's predicted classes on generated and on real images (0 = the same mix of shapes, colours,
  counts, ...);
- `confidence`: the mean top class probability per attribute (a classifier unsure of a generated
  image's shape sees no clear shape: the Inception Score's intuition).

Every number comes with two references measured the same way, so it can be read without a threshold:
real training images against the same held-out images (the floor a perfect generator reaches at this
sample size) and the random-init generator (the ceiling of a generator that learnt nothing). The
classifier's own accuracy on the real held-out images says how far it can be trusted.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from scipy import linalg

from convergence.vision import attributes as A

BATCH = 128


class Evaluator:
    """A zoo attribute classifier (a folder written by `convergence.vision.zoo`) as a function of uint8 images."""

    def __init__(self, folder: str | Path):
        from transformers import AutoImageProcessor, AutoModelForImageClassification

        self.folder = Path(folder)
        self.model = AutoModelForImageClassification.from_pretrained(self.folder, use_safetensors=True).eval()
        self.processor = AutoImageProcessor.from_pretrained(self.folder)
        self.layout = A.layout_from_config(self.model.config)

    @torch.no_grad()
    def read(self, images: np.ndarray) -> dict[str, np.ndarray]:
        """`images [N, H, W, 3]` uint8 -> predictions `[N, n_attr]`, top probabilities `[N, n_attr]`,
        features `[N, D]` (last hidden state, averaged over positions)."""
        from PIL import Image

        preds, probs, feats = [], [], []
        for start in range(0, len(images), BATCH):
            pil = [Image.fromarray(img) for img in images[start:start + BATCH]]
            pixels = self.processor(images=pil, return_tensors="pt")["pixel_values"]
            out = self.model(pixel_values=pixels, output_hidden_states=True)
            logits = out.logits.float()
            preds.append(A.predict(logits, self.layout))
            probs.append(torch.stack([logits[:, s].softmax(1).max(1).values
                                      for s in A.slices(self.layout).values()], dim=1))
            last = out.hidden_states[-1].float()
            feats.append(last.mean((2, 3)) if last.ndim == 4 else last.mean(1))
        return {"pred": torch.cat(preds).numpy(), "prob": torch.cat(probs).numpy(), "feat": torch.cat(feats).numpy()}

    def accuracy(self, read: dict, targets: np.ndarray) -> dict:
        return A.accuracies(torch.from_numpy(read["pred"]), torch.from_numpy(np.asarray(targets)), self.layout)


def frechet_distance(x: np.ndarray, y: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to the rows of `x` and `y` (float64; the FID formula)."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    if len(x) < 2 or len(y) < 2:
        raise ValueError(f"the Fréchet distance needs >= 2 samples per side, got {len(x)} and {len(y)}")
    mu_x, mu_y = x.mean(0), y.mean(0)
    cov_x, cov_y = np.cov(x, rowvar=False), np.cov(y, rowvar=False)
    root, _ = linalg.sqrtm(cov_x @ cov_y, disp=False)
    root = np.real(root)  # sqrtm of a product of PSD matrices: imaginary parts are rounding
    value = float(((mu_x - mu_y) ** 2).sum() + np.trace(cov_x + cov_y - 2 * root))
    return max(value, 0.0)


def attribute_tvd(pred_x: np.ndarray, pred_y: np.ndarray, layout: dict) -> dict[str, float]:
    """Per attribute, total variation distance between the predicted-class distributions of x and y."""
    out = {}
    for j, (attr, values) in enumerate(layout.items()):
        px = np.bincount(pred_x[:, j], minlength=len(values)) / len(pred_x)
        py = np.bincount(pred_y[:, j], minlength=len(values)) / len(pred_y)
        out[attr] = float(0.5 * np.abs(px - py).sum())
    return out


def compare(evaluator: Evaluator, read_x: dict, read_y: dict) -> dict:
    """Quality numbers of sample set x against reference set y (module docstring)."""
    tvd = attribute_tvd(read_x["pred"], read_y["pred"], evaluator.layout)
    return {
        "frechet": frechet_distance(read_x["feat"], read_y["feat"]),
        "attribute_tvd": tvd,
        "mean_attribute_tvd": float(np.mean(list(tvd.values()))),
        "confidence": {attr: float(v) for attr, v in zip(evaluator.layout, read_x["prob"].mean(0))},
        "n": int(len(read_x["pred"])),
    }
