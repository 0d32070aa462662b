"""The SSDNet object shared by every network: parameters, anchors, encoding, loss, detection.

A network module (ssd_vgg_300, ssd_vgg_512, ...) subclasses `SSDNet`, sets `default_params`
and `model_name`, and implements `keras_model`. Box maths lives in `ssd_tf/`; this class only
binds it to the network's parameters, as the slim `SSDNet` did.
"""
import collections

import numpy as np

from ssd_tf import anchors as anchors_lib
from ssd_tf import encoding
from ssd_tf import losses as losses_lib
from ssd_tf import postprocess

# The slim SSDParams fields, in the original's order. `no_annotation_label` and
# `anchor_size_bounds` are read by nothing here (the slim code did not use them at run time
# either: anchor sizes come from `anchor_sizes`); they are kept so that the tuple mirrors the
# slim one field for field.
# `anchor_sizes[i]` is the slim `(s0, s1)` in pixels (with `anchor_ratios[i]`), or, for anchors
# fitted to a data set (`ssd_tf.anchor_fit`, train_ssd.py --anchors=auto), explicit `(h, w)`
# pixel pairs with empty ratios (`ssd_tf.anchors.with_anchor_shapes`); either way a layer has
# `A = len(anchor_sizes[i]) + len(anchor_ratios[i])` anchors per location, which sizes its
# heads. The default networks keep the slim form, so their anchors are the slim ones exactly.
SSDParams = collections.namedtuple('SSDParameters', [
    'img_shape', 'num_classes', 'no_annotation_label', 'feat_layers', 'feat_shapes',
    'anchor_size_bounds', 'anchor_sizes', 'anchor_ratios', 'anchor_steps', 'anchor_offset',
    'normalizations', 'prior_scaling'])


class SSDNet:
    """SSD network definition: `SSDNet(params=None, reference_compat=False)`.

    `reference_compat=True` reproduces the slim SSD's encoding, loss and detection numerically;
    the default applies the fixes listed in SPEC.md (bipartite matching, per-image mining,
    normalisation by positives, label smoothing, combined NMS with clipping).
    """
    default_params = None  # set by each network module
    model_name = None
    # train_ssd.py's peak learning rate (Adam, after warm-up) when --learning_rate is unset;
    # a network whose training was measured at another rate overrides it
    default_learning_rate = 0.002

    def __init__(self, params=None, reference_compat=False):
        if params is None:
            params = self.default_params
        if not isinstance(params, tuple) or len(params) != len(SSDParams._fields):
            raise TypeError(f"params must be an SSDParams with fields {SSDParams._fields}, "
                            f"got {params!r}")
        self.params = SSDParams(*params)
        self.reference_compat = bool(reference_compat)

    # ------------------------------------------------------------------ network
    def keras_model(self, **kwargs):
        """Returns the Keras functional model; implemented by each network module."""
        raise NotImplementedError(f"{type(self).__name__} does not define a Keras model")

    # ------------------------------------------------------------------ anchors
    def anchors(self, img_shape=None, dtype=np.float32):
        """Default boxes per feature layer: list of `(y, x, h, w)`.

        `y, x: [H, W, 1]` anchor centres, `h, w: [A]` sizes, relative to the image.
        """
        p = self.params
        return anchors_lib.ssd_anchors_all_layers(
            img_shape if img_shape is not None else p.img_shape, p.feat_shapes, p.anchor_sizes,
            p.anchor_ratios, p.anchor_steps, offset=p.anchor_offset, dtype=dtype)

    # ------------------------------------------------------------------ targets
    def bboxes_encode(self, labels, bboxes, anchors, match_threshold=0.5, scope=None):
        """Encodes one image's ground truth on the anchors.

        labels `[N]` int, bboxes `[N, 4]` yxyx relative. Returns `(gclasses, glocalisations,
        gscores)`, lists per layer of `[H, W, A]` int64, `[H, W, A, 4]` (`[x, y, w, h]`
        offsets) and `[H, W, A]` (IoU with the matched box).
        """
        del scope
        p = self.params
        return encoding.bboxes_encode(
            labels, bboxes, anchors, num_classes=p.num_classes,
            prior_scaling=p.prior_scaling, match_threshold=match_threshold,
            reference_compat=self.reference_compat)

    def bboxes_decode(self, feat_localizations, anchors, scope=None):
        """Decodes per-layer offsets `[..., H, W, A, 4]` into yxyx boxes (unclipped)."""
        del scope
        return encoding.bboxes_decode(feat_localizations, anchors,
                                      prior_scaling=self.params.prior_scaling,
                                      reference_compat=self.reference_compat)

    # ------------------------------------------------------------------ loss
    def losses(self, logits, localisations, gclasses, glocalisations, gscores,
               match_threshold=0.5, negative_ratio=3., alpha=1., label_smoothing=0.,
               scope=None, num_positives=None, class_balance=0., class_positives=None):
        """Multibox loss on batched per-layer tensors; see `ssd_tf.losses.ssd_losses`."""
        del scope
        return losses_lib.ssd_losses(
            logits, localisations, gclasses, glocalisations, gscores,
            match_threshold=match_threshold, negative_ratio=negative_ratio, alpha=alpha,
            label_smoothing=label_smoothing, reference_compat=self.reference_compat,
            num_positives=num_positives, class_balance=class_balance,
            class_positives=class_positives)

    # ------------------------------------------------------------------ detection
    def detected_bboxes(self, predictions, localisations, select_threshold=None,
                        nms_threshold=None, clipping_bbox=None,
                        top_k=postprocess.SELECT_TOP_K, keep_top_k=postprocess.KEEP_TOP_K):
        """Selection + NMS on per-layer predictions `[B, H, W, A, C]` and decoded boxes.

        `localisations` are decoded boxes (`bboxes_decode`), `[B, H, W, A, 4]` per layer.
        reference_compat: the slim `(rscores, rbboxes)` dicts keyed by class 1..C-1, per
        class `[B, keep_top_k]` / `[B, keep_top_k, 4]`, zero-padded; None thresholds take the
        slim signature's values (select 0, nms `postprocess.REFERENCE_NMS_THRESHOLD` 0.5).
        Default: a dict with `scores [B, K]`, `bboxes [B, K, 4]`, `classes [B, K]` and
        `num_detections [B]` from combined NMS over all classes (K = keep_top_k); None
        thresholds take `postprocess.SELECT_THRESHOLD` and `postprocess.NMS_THRESHOLD`.
        """
        if self.reference_compat:
            if nms_threshold is None:
                nms_threshold = postprocess.REFERENCE_NMS_THRESHOLD
            return postprocess.detected_bboxes_reference(
                predictions, localisations, num_classes=self.params.num_classes,
                select_threshold=select_threshold, nms_threshold=nms_threshold,
                clipping_bbox=clipping_bbox, top_k=top_k, keep_top_k=keep_top_k)
        return postprocess.detected_bboxes_combined(
            predictions, localisations,
            select_threshold=(postprocess.SELECT_THRESHOLD if select_threshold is None
                              else select_threshold),
            nms_threshold=postprocess.NMS_THRESHOLD if nms_threshold is None else nms_threshold,
            clipping_bbox=clipping_bbox if clipping_bbox is not None else (0., 0., 1., 1.),
            top_k=top_k, keep_top_k=keep_top_k)
