"""Vision models: pooling their hidden states, and the in-pipeline zoo trained on `scenes` (DESIGN §4).

`pool_vision_hidden_states` turns ViT tokens `[B, T, D]` or CNN maps `[B, C, H, W]` into `[B, L, D]`.
`convergence.vision.zoo` builds small transformers ViTs/ResNets, trains them on the scene attributes the
captions state (`convergence.vision.attributes`) and saves folders that load with `AutoModel`.
"""

from .pooling import POOLINGS, pool_vision_hidden_states

__all__ = ["POOLINGS", "pool_vision_hidden_states"]
