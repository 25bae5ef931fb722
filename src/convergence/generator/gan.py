"""A small DCGAN for the `scenes` images: architecture, seeded training, saving and loading.

Generator (`DCGANGenerator`): z `[B, latent_dim]` -> a 4x4 map (`stem`: linear, BatchNorm, ReLU), then
one stage per doubling of the side (`up1`, `up2`, ...: 4x4 transposed convolution with stride 2,
BatchNorm, ReLU; channels halve as the side doubles, ending at `width`), then `to_rgb` (transposed
convolution to 3 channels, tanh). Images are in [-1, 1]. Its unit layers (`unit_layers`) are the stem
and every stage: the maps that the Rosetta matching reads, by module name.

Discriminator: the mirror image with spectral normalisation on every layer (Miyato et al. 2018),
trained with the hinge loss (Lim & Ye 2017; as in SAGAN/BigGAN), Adam (beta1 = 0.5, as DCGAN). It sees
real and generated images through the same kinds of random translation and colour jitter (DiffAugment,
Zhao et al. 2020): with 1,024 training images and a few thousand steps, the discriminator otherwise wins
within a few hundred steps and the generator collapses to one texture (what we saw without them; the
colour jitter gave more varied object colours than translation alone in a side-by-side run). The saved generator is an
exponential moving average of the trained one (`ema`), which samples better than the last iterate at
no training cost (Yazici et al. 2019).

Any other generator works with the rest of the package if it is a `torch.nn.Module` whose
`forward(z)` returns `[B, 3, H, W]` images in [-1, 1] and that has a `latent_dim` attribute; its unit
layers are given by module name (`named_modules()`), by default its `unit_layers` attribute.
"""

from __future__ import annotations

import copy
import json
import math
import time
from contextlib import contextmanager, nullcontext
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm.auto import tqdm

from convergence.utils import package_versions, sha256_file

ARCH_DEFAULTS = {"dcgan": {"width": 16, "image_size": 64}}
REQUIRED_ARCH_KEYS = ("latent_dim",)
WEIGHTS_FILE = "generator.safetensors"
SPEC_FILE = "generator.json"
METRICS_FILE = "metrics.json"
SAMPLES_FILE = "samples.png"
KIND = "generator"


class GeneratorError(ValueError):
    """A bad generator spec or folder, with the key or file and the fix in the message."""


def normalize_generator_spec(arch_spec: dict, where: str = "arch") -> dict:
    """Fill defaults and check a generator arch spec; `where` names the config key in errors."""
    arch_spec = dict(arch_spec or {})
    arch = arch_spec.get("arch", "dcgan")
    if arch not in ARCH_DEFAULTS:
        raise GeneratorError(f"{where}.arch: '{arch}' is not a generator architecture (known: {', '.join(ARCH_DEFAULTS)})")
    for key in REQUIRED_ARCH_KEYS:
        if arch_spec.get(key) is None:
            raise GeneratorError(f"{where}.{key} is required for a generator (its latent size, e.g. {key}: 64)")
    known = set(ARCH_DEFAULTS[arch]) | set(REQUIRED_ARCH_KEYS) | {"arch"}
    unknown = sorted(set(arch_spec) - known)
    if unknown:
        raise GeneratorError(f"{where}: unknown keys {unknown} for arch '{arch}' (known: {sorted(known)})")
    spec = {"arch": arch, **ARCH_DEFAULTS[arch], **arch_spec}
    for key in ("latent_dim", "width", "image_size"):
        if not isinstance(spec[key], int) or spec[key] < 1:
            raise GeneratorError(f"{where}.{key} must be a positive integer, got {spec[key]!r}")
    side = spec["image_size"]
    if side < 8 or side & (side - 1):
        raise GeneratorError(f"{where}.image_size must be a power of two >= 8 (the stem is 4x4), got {side}")
    return spec


def _n_stages(image_size: int) -> int:
    """Doublings from the 4x4 stem to the image side, the last one being `to_rgb`."""
    return int(math.log2(image_size)) - 2


class DCGANGenerator(nn.Module):
    """z `[B, latent_dim]` -> images `[B, 3, image_size, image_size]` in [-1, 1] (module docstring)."""

    def __init__(self, latent_dim: int, width: int = 16, image_size: int = 64):
        super().__init__()
        self.latent_dim, self.width, self.image_size = int(latent_dim), int(width), int(image_size)
        stages = _n_stages(self.image_size)
        channels = self.width * 2 ** (stages - 1)
        self.stem = nn.Sequential(
            nn.Linear(self.latent_dim, channels * 16, bias=False), nn.Unflatten(1, (channels, 4, 4)),
            nn.BatchNorm2d(channels), nn.ReLU(),
        )
        names = ["stem"]
        for i in range(1, stages):
            block = nn.Sequential(nn.ConvTranspose2d(channels, channels // 2, 4, 2, 1, bias=False),
                                  nn.BatchNorm2d(channels // 2), nn.ReLU())
            self.add_module(f"up{i}", block)
            names.append(f"up{i}")
            channels //= 2
        self.to_rgb = nn.Sequential(nn.ConvTranspose2d(channels, 3, 4, 2, 1), nn.Tanh())
        self.unit_layers = tuple(names)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.stem(z)
        for name in self.unit_layers[1:]:
            h = getattr(self, name)(h)
        return self.to_rgb(h)


class Discriminator(nn.Module):
    """Images `[B, 3, S, S]` -> one hinge score each; spectral norm on every layer."""

    def __init__(self, width: int = 16, image_size: int = 64):
        super().__init__()
        sn = nn.utils.spectral_norm
        layers, channels = [sn(nn.Conv2d(3, width, 4, 2, 1)), nn.LeakyReLU(0.2)], width
        for _ in range(_n_stages(image_size) - 1):
            layers += [sn(nn.Conv2d(channels, 2 * channels, 4, 2, 1)), nn.LeakyReLU(0.2)]
            channels *= 2
        self.features = nn.Sequential(*layers, nn.Flatten())
        self.score = sn(nn.Linear(channels * 16, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.score(self.features(x)).squeeze(1)


@contextmanager
def _seeded(seed: int | None):
    """Seed torch inside a forked RNG: building a model does not move the caller's global RNG."""
    with torch.random.fork_rng(devices=[]) if seed is not None else nullcontext():
        if seed is not None:
            torch.manual_seed(int(seed))
        yield


def build_generator(arch_spec: dict, seed: int | None = None) -> DCGANGenerator:
    """A randomly initialised generator (seeded if `seed` is given), in eval mode."""
    spec = normalize_generator_spec(arch_spec)
    with _seeded(seed):
        model = DCGANGenerator(spec["latent_dim"], spec["width"], spec["image_size"])
    return model.eval()


def sample_latents(n: int, latent_dim: int, seed: int) -> torch.Tensor:
    """`n` standard normal latents from their own seeded generator (the same seed gives the same z)."""
    return torch.randn(int(n), int(latent_dim), generator=torch.Generator().manual_seed(int(seed)))


@torch.no_grad()
def generate(generator: nn.Module, z: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """Images `[N, 3, H, W]` in [-1, 1] for latents `z`, batch by batch, in eval mode."""
    was_training = generator.training
    generator.eval()
    try:
        return torch.cat([generator(z[i:i + batch_size]) for i in range(0, len(z), batch_size)])
    finally:
        generator.train(was_training)


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """`[N, 3, H, W]` in [-1, 1] -> `[N, H, W, 3]` uint8 (how the images are saved and shown)."""
    return ((images.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()


def from_uint8(images: np.ndarray) -> torch.Tensor:
    """`[N, H, W, 3]` uint8 -> `[N, 3, H, W]` float32 in [-1, 1]."""
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() / 127.5 - 1


def image_grid(images: np.ndarray, columns: int = 8, pad: int = 2) -> np.ndarray:
    """`[N, H, W, 3]` uint8 -> one uint8 mosaic, white padding."""
    n, h, w, _ = images.shape
    rows = math.ceil(n / columns)
    out = np.full((rows * (h + pad) + pad, columns * (w + pad) + pad, 3), 255, np.uint8)
    for i, img in enumerate(images):
        r, c = divmod(i, columns)
        out[pad + r * (h + pad):pad + r * (h + pad) + h, pad + c * (w + pad):pad + c * (w + pad) + w] = img
    return out


# ---------------------------------------------------------------- training


def translate(images: torch.Tensor, fraction: float, generator: torch.Generator) -> torch.Tensor:
    """Each image shifted by a random whole number of pixels, up to `fraction` of its side in x and y; the
    edge pixels fill the gap (a scene's border is its background). DiffAugment's translation (Zhao et al.
    2020), applied alike to real and generated images before the discriminator: it cannot tell them apart
    by position statistics it memorised, and the generator still learns un-shifted images."""
    if fraction <= 0:
        return images
    b, c, h, w = images.shape
    reach = int(round(h * fraction))
    tx = torch.randint(-reach, reach + 1, (b, 1, 1), generator=generator)
    ty = torch.randint(-reach, reach + 1, (b, 1, 1), generator=generator)
    ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    index = ((ys[None] + ty).clamp(0, h - 1) * w + (xs[None] + tx).clamp(0, w - 1)).view(b, 1, -1).expand(b, c, -1)
    return images.flatten(2).gather(2, index).view(b, c, h, w)


def colour_jitter(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """DiffAugment-style colour: per image, a brightness offset in [-0.25, 0.25] and a saturation factor in
    [0, 2] (distance from the pixel's grey level scaled), on images in [-1, 1]."""
    b = len(images)
    brightness = (torch.rand(b, 1, 1, 1, generator=generator) - 0.5) * 0.5
    saturation = torch.rand(b, 1, 1, 1, generator=generator) * 2
    grey = images.mean(1, keepdim=True)
    return (images - grey) * saturation + grey + brightness


def augment(images: torch.Tensor, translate_fraction: float, colour: bool, generator: torch.Generator) -> torch.Tensor:
    images = translate(images, translate_fraction, generator)
    return colour_jitter(images, generator) if colour else images


def _hinge_d(real_scores: torch.Tensor, fake_scores: torch.Tensor) -> torch.Tensor:
    return F.relu(1 - real_scores).mean() + F.relu(1 + fake_scores).mean()


@torch.no_grad()
def _update_ema(ema: nn.Module, model: nn.Module, decay: float) -> None:
    for p_ema, p in zip(ema.parameters(), model.parameters()):
        p_ema.lerp_(p, 1 - decay)
    for b_ema, b in zip(ema.buffers(), model.buffers()):  # BatchNorm running statistics
        b_ema.copy_(b)


def fit_gan(images: torch.Tensor, arch_spec: dict, *, steps: int, batch_size: int = 32, lr: float = 5e-4,
            d_lr_factor: float = 1.0, betas: tuple[float, float] = (0.5, 0.999), ema: float = 0.99,
            translate_fraction: float = 0.125, colour_augment: bool = True, seed: int = 0, progress: bool = True,
            log_every: int = 100) -> tuple[DCGANGenerator, dict]:
    """Train a DCGAN on `images [N, 3, S, S]` in [-1, 1]; returns (EMA generator in eval mode, history).

    One discriminator and one generator step per iteration, both on batches of `batch_size`, the
    discriminator seeing real and generated images through the same kind of random translation
    (`translate_fraction`, 0 = off) and colour jitter (`colour_augment`). Data, latents and translations come from generators seeded by
    `seed`, so a run is reproducible on one machine and thread count. `history` holds the hinge losses
    every `log_every` steps and the training time.
    """
    spec = normalize_generator_spec(arch_spec)
    if images.ndim != 4 or images.shape[1:] != (3, spec["image_size"], spec["image_size"]):
        raise GeneratorError(f"training images have shape {tuple(images.shape)}, the generator makes "
                             f"[N, 3, {spec['image_size']}, {spec['image_size']}]; set arch.image_size")
    with _seeded(seed):
        gen = DCGANGenerator(spec["latent_dim"], spec["width"], spec["image_size"])
        disc = Discriminator(spec["width"], spec["image_size"])
    average = copy.deepcopy(gen).eval()
    opt_g = torch.optim.Adam(gen.parameters(), lr=lr, betas=betas)
    opt_d = torch.optim.Adam(disc.parameters(), lr=lr * d_lr_factor, betas=betas)
    rng = torch.Generator().manual_seed(int(seed) + 1)
    history = {"step": [], "loss_d": [], "loss_g": []}
    gen.train()
    t0 = time.perf_counter()
    bar = tqdm(range(int(steps)), desc="train generator", unit="step", disable=not progress, mininterval=5)
    for step in bar:
        real = images[torch.randint(len(images), (batch_size,), generator=rng)]
        z = torch.randn(batch_size, spec["latent_dim"], generator=rng)
        with torch.no_grad():
            fake = gen(z)
        loss_d = _hinge_d(disc(augment(real, translate_fraction, colour_augment, rng)),
                          disc(augment(fake, translate_fraction, colour_augment, rng)))
        opt_d.zero_grad(set_to_none=True)
        loss_d.backward()
        opt_d.step()
        z = torch.randn(batch_size, spec["latent_dim"], generator=rng)
        loss_g = -disc(augment(gen(z), translate_fraction, colour_augment, rng)).mean()
        opt_g.zero_grad(set_to_none=True)
        loss_g.backward()
        opt_g.step()
        _update_ema(average, gen, ema)
        if step % log_every == 0 or step == steps - 1:
            history["step"].append(step)
            history["loss_d"].append(loss_d.item())
            history["loss_g"].append(loss_g.item())
            bar.set_postfix(d=f"{loss_d.item():.3f}", g=f"{loss_g.item():.3f}")
            tqdm.write(f"step {step + 1}/{steps}: hinge loss D {loss_d.item():.4f}, G {loss_g.item():.4f}")
    history["train_time_s"] = time.perf_counter() - t0
    return average.eval(), history


# ---------------------------------------------------------------- saving and loading


def save_generator(generator: DCGANGenerator, arch_spec: dict, folder: str | Path, metrics: dict | None = None,
                   samples: np.ndarray | None = None) -> None:
    """Write weights (safetensors), the arch spec, metrics.json and a sample grid into `folder` (plain write:
    wrap it in `atomic_path`)."""
    from PIL import Image
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in generator.state_dict().items()}
    save_file(state, folder / WEIGHTS_FILE)
    spec = {"kind": KIND, **normalize_generator_spec(arch_spec), "unit_layers": list(generator.unit_layers)}
    (folder / SPEC_FILE).write_text(json.dumps(spec, indent=2) + "\n")
    if samples is not None:
        Image.fromarray(image_grid(samples)).save(folder / SAMPLES_FILE)
    metrics = dict(metrics or {}, weights_sha256=sha256_file(folder / WEIGHTS_FILE), arch=spec)
    (folder / METRICS_FILE).write_text(json.dumps(metrics, indent=2) + "\n")


def load_generator(folder: str | Path, init: str = "trained", seed: int = 0) -> tuple[DCGANGenerator, dict]:
    """(generator in eval mode, its spec) from a folder written by `save_generator`.

    `init="random"`: the same architecture with a seeded initialisation (the random-init control).
    """
    from safetensors.torch import load_file

    folder = Path(folder)
    spec_file = folder / SPEC_FILE
    if not spec_file.exists():
        raise GeneratorError(f"{folder} holds no trained generator ({SPEC_FILE} is missing): run "
                             f"`snakemake {folder}`")
    spec = json.loads(spec_file.read_text())
    if "class" in spec:
        build = lambda s=None: _build_custom(spec, folder, s)  # noqa: E731
    else:
        arch = {k: v for k, v in spec.items() if k not in ("kind", "unit_layers")}
        build = lambda s=None: build_generator(arch, seed=s)  # noqa: E731
    if init == "random":
        return build(seed), spec
    model = build()
    try:
        model.load_state_dict(load_file(folder / WEIGHTS_FILE))
    except (OSError, RuntimeError) as e:
        raise GeneratorError(f"{folder / WEIGHTS_FILE}: cannot load the generator's weights ({e}); delete the "
                             "folder and rerun to retrain it") from e
    return model.eval(), spec


def _build_custom(spec: dict, folder: Path, seed: int | None) -> nn.Module:
    """Your own generator: `generator.json` names its class (`"class": "package.module:Name"`, importable)
    and its constructor's `kwargs`; it needs `latent_dim` and `unit_layers` (module names)."""
    import importlib

    module_name, _, attr = str(spec["class"]).partition(":")
    try:
        cls = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as e:
        raise GeneratorError(f"{folder / SPEC_FILE}: cannot import the generator class '{spec['class']}' ({e}); "
                             "give it as 'package.module:ClassName' on the Python path") from e
    with _seeded(seed):
        model = cls(**spec.get("kwargs", {}))
    if not hasattr(model, "latent_dim"):
        raise GeneratorError(f"{spec['class']} has no `latent_dim` attribute (the size of z its forward takes)")
    if spec.get("unit_layers") and not getattr(model, "unit_layers", None):
        model.unit_layers = tuple(spec["unit_layers"])
    return model.eval()


def provenance() -> dict:
    return {"packages": package_versions(("convergence", "torch", "numpy", "transformers"))}
