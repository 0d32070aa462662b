"""Default boxes (anchors) per feature layer, in the slim SSD's order and values.

An anchor layer is `(y, x, h, w)`: centres `y, x: [H, W, 1]` and sizes `h, w: [A]`, all
relative to the image, so that broadcasting gives `[H, W, A]`. Aspect ratio r means w/h = r.
Nothing is clipped: centres of the last column can fall slightly outside [0, 1].

A layer's sizes are either the slim numbers `(s0, s1)` (with ratios: `A = len(sizes) +
len(ratios)` shapes, below) or explicit `(h, w)` pairs in pixels with no ratios (`A =
len(sizes)`): anchors fitted to a data set (`ssd_tf.anchor_fit`) are stored that way in the
same SSDParams fields, so the heads (`A` per location) are sized by the same rule and the slim
default path is unchanged. `with_anchor_shapes` writes them, `anchor_shapes` reads either kind.
"""
import math

import numpy as np

from ssd_tf import boxes as boxes_lib


def ssd_anchor_one_layer(img_shape, feat_shape, sizes, ratios, step, offset=0.5,
                         dtype=np.float32):
    """Anchors of one feature layer.

    img_shape: `(img_h, img_w)` in pixels. feat_shape: `(H, W)`. sizes: `(s0, s1)` in pixels
    (or `(s0,)`). ratios: list of w/h ratios. step: pixels between centres.
    Returns `(y [H, W, 1], x [H, W, 1], h [A], w [A])` with `A = len(sizes) + len(ratios)`,
    sizes ordered `s0`, `sqrt(s0*s1)`, then one per ratio in list order. Explicit sizes
    (`((h0, w0), (h1, w1), ...)` in pixels, ratios empty) give `A = len(sizes)` anchors in
    that order.
    """
    y, x = np.mgrid[0:feat_shape[0], 0:feat_shape[1]]
    y = (y.astype(dtype) + offset) * step / img_shape[0]
    x = (x.astype(dtype) + offset) * step / img_shape[1]
    y = np.expand_dims(y, axis=-1)  # [H, W, 1]
    x = np.expand_dims(x, axis=-1)  # [H, W, 1]

    if is_explicit(sizes):
        _check_explicit(sizes, ratios)
        hw = np.asarray(sizes, dtype=np.float64)  # [A, 2] pixels
        return (y, x, (hw[:, 0] / img_shape[0]).astype(dtype),
                (hw[:, 1] / img_shape[1]).astype(dtype))
    num_anchors = len(sizes) + len(ratios)
    h = np.zeros((num_anchors,), dtype=dtype)
    w = np.zeros((num_anchors,), dtype=dtype)
    h[0] = sizes[0] / img_shape[0]
    w[0] = sizes[0] / img_shape[1]
    di = 1
    if len(sizes) > 1:
        h[1] = math.sqrt(sizes[0] * sizes[1]) / img_shape[0]
        w[1] = math.sqrt(sizes[0] * sizes[1]) / img_shape[1]
        di += 1
    for i, r in enumerate(ratios):
        h[i + di] = sizes[0] / img_shape[0] / math.sqrt(r)
        w[i + di] = sizes[0] / img_shape[1] * math.sqrt(r)
    return y, x, h, w


def ssd_anchors_all_layers(img_shape, layers_shape, anchor_sizes, anchor_ratios, anchor_steps,
                           offset=0.5, dtype=np.float32):
    """Anchors of every feature layer: a list of `(y, x, h, w)` (see `ssd_anchor_one_layer`)."""
    if not (len(layers_shape) == len(anchor_sizes) == len(anchor_ratios) == len(anchor_steps)):
        raise ValueError(
            "feat_shapes, anchor_sizes, anchor_ratios and anchor_steps need one entry per "
            f"feature layer; got {len(layers_shape)}, {len(anchor_sizes)}, "
            f"{len(anchor_ratios)}, {len(anchor_steps)}")
    return [ssd_anchor_one_layer(img_shape, s, anchor_sizes[i], anchor_ratios[i],
                                 anchor_steps[i], offset=offset, dtype=dtype)
            for i, s in enumerate(layers_shape)]


def is_explicit(sizes):
    """True when a layer's `anchor_sizes` entry lists explicit `(h, w)` pixel pairs (fitted
    anchors) rather than the slim `(s0, s1)` numbers."""
    return len(sizes) > 0 and np.ndim(sizes[0]) == 1


def _check_explicit(sizes, ratios):
    if len(ratios):
        raise ValueError(f"explicit anchor sizes (h, w) {sizes!r} take no ratios, got "
                         f"{ratios!r}")
    hw = np.asarray(sizes, dtype=np.float64)
    if hw.ndim != 2 or hw.shape[1] != 2 or not np.all(np.isfinite(hw)) or np.any(hw <= 0):
        raise ValueError(f"explicit anchor sizes must be positive finite (h, w) pixel pairs, "
                         f"got {sizes!r}")


def anchor_shapes(params):
    """The anchor shapes of every layer of an SSDParams, slim or explicit: a list per layer
    of `[A, 2]` float64 arrays `(h, w)` relative to `params.img_shape`, in the order of
    `ssd_anchor_one_layer` (so `A` is the layer's anchors per location)."""
    out = []
    for sizes, ratios in zip(params.anchor_sizes, params.anchor_ratios):
        _, _, h, w = ssd_anchor_one_layer(params.img_shape, (1, 1), sizes, ratios, 1.,
                                          dtype=np.float64)
        out.append(np.stack([h, w], axis=-1))
    return out


def with_anchor_shapes(params, shapes):
    """SSDParams with explicit anchors: `shapes` is a list per layer of `(h, w)` pairs
    relative to `params.img_shape` (`[A_l, 2]`); see `with_anchor_sizes`."""
    img_h, img_w = params.img_shape
    # Pixels rounded to 1e-4 (a readable config.json; far below any anchor's precision).
    return with_anchor_sizes(params, [[(round(float(h) * img_h, 4), round(float(w) * img_w, 4))
                                       for h, w in np.asarray(layer).reshape(-1, 2)]
                                      for layer in shapes])


def with_anchor_sizes(params, sizes):
    """SSDParams with explicit anchors: `sizes` is a list per layer of `(h, w)` pixel pairs,
    stored in `anchor_sizes` with empty `anchor_ratios`; every other field is kept.
    ValueError when there is not one list per feature map or a size is not positive."""
    if len(sizes) != len(params.feat_shapes):
        raise ValueError(f"{len(sizes)} layers of anchor sizes for a network with "
                         f"{len(params.feat_shapes)} feature maps")
    sizes = [tuple((float(h), float(w)) for h, w in layer) for layer in sizes]
    for layer in sizes:
        if not layer:
            raise ValueError("a feature map without anchor sizes")
        _check_explicit(layer, ())
    return params._replace(anchor_sizes=sizes, anchor_ratios=[[] for _ in sizes])


def num_boxes_per_layer(anchors):
    """Number of default boxes `H * W * A` of each layer (all positions, all shapes).

    Not `nets.ssd_vgg_keras.num_anchors_per_location`, which is `A` (boxes per cell).
    """
    return [int(y.shape[0] * y.shape[1] * np.asarray(h).shape[0]) for y, x, h, w in anchors]


def anchors_flat(anchors):
    """Anchor layers -> `(ya, xa, ha, wa)`, numpy `[K]` each, layer-major then H, W, A.

    `K = sum(H * W * A)`; the order is the one of `tf.reshape(layer_tensor, [-1, ...])` on
    per-layer `[H, W, A, ...]` tensors, concatenated over layers.
    """
    ys, xs, hs, ws = [], [], [], []
    for y, x, h, w in anchors:
        y, x, h, w = (np.asarray(v) for v in (y, x, h, w))
        shape = (y.shape[0], y.shape[1], h.shape[0])
        ys.append(np.broadcast_to(y, shape).reshape(-1))
        xs.append(np.broadcast_to(x, shape).reshape(-1))
        hs.append(np.broadcast_to(h, shape).reshape(-1))
        ws.append(np.broadcast_to(w, shape).reshape(-1))
    return tuple(np.concatenate(v) for v in (ys, xs, hs, ws))


def anchors_to_boxes(anchors):
    """Flattens anchor layers into yxyx boxes `[K, 4]` (order of `anchors_flat`)."""
    y, x, h, w = anchors_flat(anchors)
    return boxes_lib.cxcywh_to_yxyx(np.stack([y, x, h, w], axis=-1)).numpy()
