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
"""
import keras

from nets import ssd_vgg_keras
from nets.ssd_base import SSDNet as _SSDNetBase
from nets.ssd_base import SSDParams

__all__ = ['SSDNet', 'SSDParams', 'SMALL_SPEC']

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


def small_params(img_size=_IMG, num_classes=5):
    """SSDParams of the small network for a square input of `img_size` pixels.

    Every SAME pool and every pad-1 3x3/2 extra block halves the map (rounding up), so the
    feature maps are `ceil(img_size / 8)`, then halved four times; anchor steps are
    `img_size / map` (evenly spread centres) and anchor sizes the same fractions of the side
    (`_SCALES`) at any input size. `small_params(128)` gives maps 16, 8, 4, 2, 1.
    """
    shapes = [-(-img_size // 8)]
    for _ in range(4):
        shapes.append(-(-shapes[-1] // 2))
    return SSDParams(
        img_shape=(img_size, img_size),
        num_classes=num_classes,
        no_annotation_label=num_classes,
        feat_layers=['block4', 'block7', 'block8', 'block9', 'block10'],
        feat_shapes=[(s, s) for s in shapes],
        anchor_size_bounds=[_SCALES[0], _SCALES[-1]],
        anchor_sizes=[(round(a * img_size, 2), round(b * img_size, 2))
                      for a, b in zip(_SCALES[:-1], _SCALES[1:])],
        anchor_ratios=[[2, .5]] * 5,
        anchor_steps=[img_size / s for s in shapes],
        anchor_offset=0.5,
        normalizations=[-1, -1, -1, -1, -1],
        prior_scaling=[0.1, 0.1, 0.2, 0.2])


class SSDNet(_SSDNetBase):
    """A small VGG-style SSD: 128x128 input, feature maps 16, 8, 4, 2, 1; see module doc."""
    model_name = 'ssd_small'
    default_params = small_params(_IMG)

    def keras_model(self, **kwargs):
        """The Keras functional model; kwargs as `nets.ssd_vgg_keras.build_ssd_vgg_keras`."""
        kwargs.setdefault('name', self.model_name)
        kwargs.setdefault('kernel_initializer', 'he_uniform')
        kwargs.setdefault('head_initializer', keras.initializers.RandomNormal(stddev=HEAD_STDDEV))
        return ssd_vgg_keras.build_ssd_vgg_keras(
            self.params, arch=SMALL_SPEC, reference_compat=self.reference_compat, **kwargs)


class SSDNet192(SSDNet):
    """The same network on a 192x192 input (maps 24, 12, 6, 3, 2): for real photographs, where
    128 pixels lose too much detail; about 2.3x the cost of `ssd_small`."""
    model_name = 'ssd_small_192'
    default_params = small_params(192)
