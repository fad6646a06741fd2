"""SSD anchors (priors) of the official code (``cvnets/misc/anchor_generator.py``).

For output strides ``[16, 32, 64, 128, 256, -1]`` the anchor sizes are
``scales = linspace(0.1, 1.05, len(strides) + 1)``: map ``i`` has a small box
``scales[i]``, a big box ``sqrt(scales[i] * scales[i+1])`` and, per aspect
ratio ``r`` (unique values, in ``list(set(ratios))`` order), the small box
stretched to ``(s * sqrt(r), s / sqrt(r))`` and ``(s / sqrt(r), s * sqrt(r))``.
Per location (row-major over the map): ``[small, big, r1 wide, r1 tall,
r2 wide, r2 tall]``, centres ``((x + 0.5) / W, (y + 0.5) / H)``; everything
in image-normalised units, center form ``(cx, cy, w, h)``, clipped to [0, 1].
Locations of one map precede those of the next (the head outputs are
concatenated in the same order).
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from mvit3_keras import specs as S


@dataclasses.dataclass(frozen=True)
class AnchorConfig:
    """The anchor generator of the official SSDLite yamls."""

    output_strides: tuple = (16, 32, 64, 128, 256, -1)
    aspect_ratios: tuple = ((2, 3), (2, 3), (2, 3), (2, 3), (2, 3), (2,))
    min_scale: float = 0.1
    max_scale: float = 1.05
    clip: bool = True

    def __post_init__(self):
        strides = tuple(int(s) for s in self.output_strides)
        object.__setattr__(self, "output_strides", strides)
        object.__setattr__(self, "aspect_ratios", tuple(tuple(r) for r in self.aspect_ratios))
        if any(s not in (8, 16, 32, -1) and (s < 64 or s & (s - 1)) for s in strides):
            raise ValueError(
                f"output_strides must be 8, 16, 32, powers of two >= 64 or -1, got {list(strides)}"
            )
        extra = [s for s in strides if s > 32 or s == -1]
        if extra != sorted(s for s in extra if s > 32) + ([-1] if -1 in extra else []):
            raise ValueError(
                "extra maps must come in increasing stride with -1 (global) last, "
                f"got {list(strides)}"
            )
        if len(strides) != len(self.aspect_ratios):
            raise ValueError(
                f"one aspect-ratio list per output stride: {len(strides)} strides, "
                f"{len(self.aspect_ratios)} lists"
            )

    def unique_ratios(self, index: int) -> list:
        # ``list(set(...))``: the official order (ascending for small ints).
        return list(set(self.aspect_ratios[index]))

    def anchors_per_location(self) -> list:
        return [2 + 2 * len(set(r)) for r in self.aspect_ratios]

    def sizes(self) -> list:
        scales = np.linspace(self.min_scale, self.max_scale, len(self.output_strides) + 1)
        return [
            (float(scales[i]), math.sqrt(scales[i] * scales[i + 1]))
            for i in range(len(self.output_strides))
        ]

    def to_dict(self) -> dict:
        return {
            "output_strides": list(self.output_strides),
            "aspect_ratios": [list(r) for r in self.aspect_ratios],
            "min_scale": self.min_scale,
            "max_scale": self.max_scale,
            "clip": self.clip,
        }

    @classmethod
    def from_dict(cls, d: dict) -> AnchorConfig:
        return cls(
            output_strides=tuple(int(s) for s in d["output_strides"]),
            aspect_ratios=tuple(tuple(r) for r in d["aspect_ratios"]),
            min_scale=float(d["min_scale"]),
            max_scale=float(d["max_scale"]),
            clip=bool(d["clip"]),
        )


def generate_anchors(feature_map_sizes, config: AnchorConfig = AnchorConfig()) -> np.ndarray:
    """All anchors ``[N, 4]`` (float32, center form ``cx, cy, w, h``) in head order.

    ``feature_map_sizes``: ``[(H, W), ...]`` of the maps, one per output stride.
    """
    if len(feature_map_sizes) != len(config.output_strides):
        raise ValueError(
            f"{len(feature_map_sizes)} feature map sizes for {len(config.output_strides)} strides"
        )
    out = []
    for index, ((h, w), (small, big)) in enumerate(zip(feature_map_sizes, config.sizes())):
        per_location = [(small, small), (big, big)]
        for ratio in config.unique_ratios(index):
            r = math.sqrt(ratio)
            per_location += [(small * r, small / r), (small / r, small * r)]
        ys, xs = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
        cx = ((xs.reshape(-1) + 0.5) / w)[:, None]
        cy = ((ys.reshape(-1) + 0.5) / h)[:, None]
        wh = np.asarray(per_location)  # [A, 2]
        boxes = np.empty((h * w, len(per_location), 4))
        boxes[..., 0] = cx
        boxes[..., 1] = cy
        boxes[..., 2] = wh[None, :, 0]
        boxes[..., 3] = wh[None, :, 1]
        out.append(boxes.reshape(-1, 4).astype(np.float32))
    anchors = np.concatenate(out, axis=0)
    if config.clip:
        anchors = np.clip(anchors, 0.0, 1.0)
    return anchors


def _half_up(n: int) -> int:
    return (n + 1) // 2  # 3x3 conv, stride 2, padding 1


def feature_map_sizes(spec: S.ModelSpec, image_size, output_strides) -> list:
    """Spatial sizes of the SSD maps for an ``(H, W)`` input (no model needed).

    Backbone: every stride-2 stage gives ``ceil(n / 2)``; v2-family
    MobileViT blocks (layer_3..5) enlarge odd maps to the next even size
    (docs/semantics.md section 3). Extra layers: stride-2 separable convs
    (``ceil(n / 2)``) chained from layer_5; stride -1 is the 1x1 global map.
    """
    h, w = (int(s) for s in image_size)
    by_stride = {}
    for stride in (2, 4, 8, 16, 32):  # conv_1 (+ layer_1), layer_2 .. layer_5
        h, w = _half_up(h), _half_up(w)
        if spec.family == S.V2_FAMILY and stride >= 8:
            h, w = h + h % 2, w + w % 2
        by_stride[stride] = (h, w)
    result, chained = [], by_stride[32]
    for stride in output_strides:
        if stride in (8, 16, 32):
            result.append(by_stride[stride])
        elif stride == -1:
            chained = (1, 1)
            result.append(chained)
        else:
            chained = (_half_up(chained[0]), _half_up(chained[1]))
            result.append(chained)
    return result
