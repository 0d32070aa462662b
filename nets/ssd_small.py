"""`ssd_small`: a VGG-style SSD small enough to train from scratch on 2 CPU cores in minutes.

Design (the same code as SSD300, `nets.ssd_vgg_keras`, with a smaller `VGGSpec`):
- Input 128x128 (preprocessed as every network here: RGB 0..255 minus the VGG means). A first
  `Rescaling(1/64)` layer brings pixels to roughly unit scale, which a network trained from
  scratch needs (the VGG nets rely on ImageNet weights made for 0..255 inputs).
- Backbone: one 3x3 conv of 16, 16, 64 channels in blocks 1-3 (2x2 max-pools after each),
  block4 = two 3x3 convs of 64 (stride 8, the 16x16 feature map), pool4, block5 = one 3x3 conv
  of 128, pool5 3x3/1, conv6 3x3 dilation 2 (128), conv7 1x1 (128) at stride 16 (8x8), then
  block8/9/10 = 1x1 conv + pad 1 + 3x3/2 VALID conv -> 4x4, 2x2, 1x1. Feature maps
  16, 8, 4, 2, 1 (block4, block7, block8, block9, block10); 4 anchors per location (sizes s0,
  sqrt(s0*s1), ratios 2 and 1/2), 1364 anchors in all. 594,500 parameters (5 classes).
  Block 2 has 16 channels, not 32: at 64x64 its backward pass dominated a training step
  (measured: twice the training throughput for the whole network with 16).
- No BatchNorm: the convs use He (fan-in, uniform) initialisation, which keeps ReLU activation
  scales roughly constant through the ten conv layers, and the heads N(0, 0.01^2); no L2
  normalisation (normalizations all -1) since block4's scale already matches the later layers.
  This keeps training identical to inference (no moving statistics), cheap, and TFLite-simple.
- Anchor scales follow the paper's progression on the 128 input, chosen for objects of 10%-60%
  of the image side (the synthetic shapes data set): s = 0.10, 0.20, 0.37, 0.55, 0.75, 0.95 of
  the side, layer k using (s_k, s_{k+1}); successive anchor sizes differ by at most ~1.4x, so
  a centred square object always has an anchor with IoU >= 0.5.
- Default 5 classes: background + the synthetic data set's circle, cross, rectangle, triangle.

Cost: 0.07 GMAC per 128x128 image forward (bench/bench_forward.py counts it).

`ssd_small_320`, the small-object configuration (`small_objects = True`): the same layers at
a 320x320 input, with one more feature map taken from block3 (stride 4, 80x80) and anchor
scales from 0.03 of the side (`_SMALL_OBJECT_SCALES`): maps 80, 40, 20, 10, 5, 3 and 34,136
anchors, so objects of 8-16 pixels at 320 (2.5-5 % of the side) get an anchor with IoU >= 0.5:
from 10 pixels wherever they lie (a box of side s is at most stride/2 = 2 pixels from an
anchor centre along each axis, and the 13.6-pixel anchor then still overlaps a 10-pixel
square by IoU 0.51), 8-pixel squares at 91 % of the positions.
Same weights layout as `ssd_small` plus the block3 heads (615,272 parameters, 5 classes).
"""
import keras

from nets import ssd_vgg_keras
from nets.ssd_base import SSDNet as _SSDNetBase
from nets.ssd_base import SSDParams

__all__ = ['SSDNet', 'SSDNet192', 'SSDNetSmallObjects', 'SSDNetSmallObjectsFPN', 'SSDParams',
           'SMALL_SPEC']

E = ssd_vgg_keras.ExtraBlock
SMALL_SPEC = ssd_vgg_keras.VGGSpec(
    blocks=((1, 16), (1, 16), (1, 64), (2, 64), (1, 128)),
    conv6=(128, 3, 2), conv7=128,
    extras=(E('block8', 64, 128, 3, 2, 1),
            E('block9', 32, 64, 3, 2, 1),
            E('block10', 32, 64, 3, 2, 1)),
    dropout=False,
    # Mean-subtracted pixels span about +-128 (std ~60 on natural images) -> about +-2.
    input_scale=1. / 64)

# Head kernels ~N(0, 0.01^2) (as RetinaNet's heads): initial logits and offsets of about unit
# scale or less (features after the pools have a second moment of ~20), so the first steps
# neither saturate the softmax nor throw boxes far.
HEAD_STDDEV = 0.01
_IMG = 128
# Anchor scales as fractions of the image side (module docstring).
_SCALES = (0.10, 0.20, 0.37, 0.55, 0.75, 0.95)
# The small-object configuration: 6 maps from block3 (stride 4); its first anchors are 3 % and
# 4.2 % of the side (9.6 and 13.6 pixels at 320), then at most 2x per map (1.41x between
# successive anchor sizes, as above).
_SMALL_OBJECT_IMG = 320
_SMALL_OBJECT_SCALES = (0.03, 0.06, 0.12, 0.22, 0.38, 0.60, 0.90)
_FIRST_LAYER = {8: 'block4', 4: 'block3'}  # first feature map's stride -> its VGG block


def small_params(img_size=_IMG, num_classes=5, first_stride=8, scales=_SCALES):
    """SSDParams of the small network for a square input of `img_size` pixels.

    Every SAME pool and every pad-1 3x3/2 extra block halves the map (rounding up), so the
    feature maps are `ceil(img_size / first_stride)` (first_stride 8: block4; 4: block3 as an
    extra first map), then halved down to block10; anchor steps are `img_size / map` (evenly
    spread centres) and anchor sizes the same fractions of the side (`scales`, one more than
    the maps: map k uses (s_k, s_{k+1})) at any input size. `small_params(128)` gives maps
    16, 8, 4, 2, 1; `small_params(320, first_stride=4, scales=_SMALL_OBJECT_SCALES)` gives
    80, 40, 20, 10, 5, 3.
    """
    if first_stride not in _FIRST_LAYER:
        raise ValueError(f"first_stride must be one of {sorted(_FIRST_LAYER)}, got "
                         f"{first_stride}")
    layers = ([_FIRST_LAYER[first_stride]] + (['block4'] if first_stride == 4 else []) +
              ['block7', 'block8', 'block9', 'block10'])
    if len(scales) != len(layers) + 1:
        raise ValueError(f"{len(layers)} feature maps need {len(layers) + 1} scales, got "
                         f"{len(scales)}")
    shapes = [-(-img_size // first_stride)]
    for _ in range(len(layers) - 1):
        shapes.append(-(-shapes[-1] // 2))
    n = len(layers)
    return SSDParams(
        img_shape=(img_size, img_size),
        num_classes=num_classes,
        no_annotation_label=num_classes,
        feat_layers=layers,
        feat_shapes=[(s, s) for s in shapes],
        anchor_size_bounds=[scales[0], scales[-1]],
        anchor_sizes=[(round(a * img_size, 2), round(b * img_size, 2))
                      for a, b in zip(scales[:-1], scales[1:])],
        anchor_ratios=[[2, .5]] * n,
        anchor_steps=[img_size / s for s in shapes],
        anchor_offset=0.5,
        normalizations=[-1] * n,
        prior_scaling=[0.1, 0.1, 0.2, 0.2])


class SSDNet(_SSDNetBase):
    """A small VGG-style SSD: 128x128 input, feature maps 16, 8, 4, 2, 1; see module doc."""
    model_name = 'ssd_small'
    default_params = small_params(_IMG)
    # the main job's rate (1200 steps of 32, cosine; docs/benchmarks.md "The main job"):
    # 0.006 reached VOC07 0.90 where 0.002 needed twice the steps
    default_learning_rate = 0.006
    top_down = None  # or `ssd_vgg_keras.TopDown`: an FPN-lite path (`ssd_small_320_fpn`)

    def keras_model(self, **kwargs):
        """The Keras functional model; kwargs as `nets.ssd_vgg_keras.build_ssd_vgg_keras`."""
        kwargs.setdefault('name', self.model_name)
        kwargs.setdefault('kernel_initializer', 'he_uniform')
        kwargs.setdefault('head_initializer', keras.initializers.RandomNormal(stddev=HEAD_STDDEV))
        kwargs.setdefault('top_down', self.top_down)
        return ssd_vgg_keras.build_ssd_vgg_keras(
            self.params, arch=SMALL_SPEC, reference_compat=self.reference_compat, **kwargs)


class SSDNet192(SSDNet):
    """The same network on a 192x192 input (maps 24, 12, 6, 3, 2): for real photographs, where
    128 pixels lose too much detail; about 2.3x the cost of `ssd_small`."""
    model_name = 'ssd_small_192'
    default_params = small_params(192)
    default_learning_rate = 0.002  # the rate of the raccoon figures (docs/benchmarks.md)


class SSDNetSmallObjects(SSDNet):
    """The small-object configuration: 320x320 input, a stride-4 first map from block3 (maps
    80, 40, 20, 10, 5, 3), anchors from 3 % of the side; for objects of 8-16 pixels and up
    (module docstring)."""
    model_name = 'ssd_small_320'
    small_objects = True
    # measured on the real small-object dev set (bench_small_objects.py --devset, 1100 steps
    # of 32, bfloat16): VOC07 0.7295 / 0.7316 at 0.006 against 0.6838 / 0.6680 at 0.002
    # (seeds 0 / 1; docs/small-objects.md)
    default_learning_rate = 0.006
    default_params = small_params(_SMALL_OBJECT_IMG, first_stride=4,
                                  scales=_SMALL_OBJECT_SCALES)


class SSDNetSmallObjectsFPN(SSDNetSmallObjects):
    """`ssd_small_320` with a top-down fusion path (FPN-lite) over its three finest maps
    (block3 80x80, block4 40x40, block7 20x20; 64 channels): the stride-4 map, three convs
    deep, gets block4's and block7's features added (`nets.ssd_vgg_keras._top_down`). Same
    anchors and maps. Experimental: trains about 0.83x as fast as `ssd_small_320` on 2 CPU
    cores, and on the real small-object dev set it was below it on both seeds measured (VOC07
    0.719 and 0.741 against 0.739 and 0.747, docs/small-objects.md), so the coverage warning
    recommends `ssd_small_320`."""
    model_name = 'ssd_small_320_fpn'
    small_objects = False
    top_down = ssd_vgg_keras.TopDown(levels=3, channels=64)
