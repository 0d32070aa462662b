"""Detection post-processing: the one home of score selection, NMS and their defaults.

Inputs are per-layer class probabilities `[B, H, W, A, C]` and decoded boxes
`[B, H, W, A, 4]` (yxyx, relative; see `encoding.bboxes_decode`). Decoding offsets is the job
of `encoding`; `detections_from_raw` only glues the two for callers holding raw outputs.

- `detected_bboxes_reference`: the slim chain (select, sort, per-class NMS), per-class dicts,
  zero-padded, boxes unclipped unless `clipping_bbox` is given.
- `detected_bboxes_combined` (default): per-class top-k candidates, then
  `tf.image.combined_non_max_suppression` keeping `keep_top_k` detections over all classes,
  boxes clipped, and a count of valid detections (padding rows are not detections). Used by
  evaluation and the SavedModel export.
- `tflite_postprocess`: the same selection for ONE image with TFLite builtin ops only.
- `tflite_detection_postprocess`: TFLite's custom op TFLite_Detection_PostProcess (decoding
  and per-class NMS in one op, as the TF OD API's mobile SSDs), `detection_postprocess_scales`
  maps our prior_scaling to its scales. `TFLITE_POSTPROCESS_OPTIONS` names both variants.
- `detections_from_raw`: raw per-layer network outputs -> decode -> `detected_bboxes_combined`;
  with `mirrored=` the outputs of the left-right mirrored images are first averaged in
  (`average_mirrored`: test-time flip).
- `detections_of(model, images, ...)`: the model run on images (and, with
  `test_time_flip=True`, on their mirror images in the same batch), then `detections_from_raw`.

Detection defaults (defined here only; evaluation, export, the scripts and `SSDNet` read them):
`SELECT_THRESHOLD` 0.01, `SELECT_TOP_K` 400 candidates per class, `NMS_THRESHOLD` 0.45,
`KEEP_TOP_K` 200 detections per image for evaluation, `MAX_DETECTIONS` 100 for deployed models,
`MATCHING_THRESHOLD` 0.5 (IoU for a detection to match a ground-truth box).
"""
import numpy as np
import tensorflow as tf

from ssd_tf import anchors as anchors_lib
from ssd_tf import boxes as boxes_lib

# The slim eval script's (eval_ssd_network.py) detection settings.
SELECT_THRESHOLD = 0.01
SELECT_TOP_K = 400
KEEP_TOP_K = 200
NMS_THRESHOLD = 0.45
MATCHING_THRESHOLD = 0.5
# Detections per image of an exported model (as the TF Object Detection API's exported SSDs).
MAX_DETECTIONS = 100
# The slim `SSDNet.detected_bboxes` signature's own NMS default (its eval script passed 0.45);
# kept for `reference_compat=True` only.
REFERENCE_NMS_THRESHOLD = 0.5
DETECTION_DEFAULTS = dict(select_threshold=SELECT_THRESHOLD, nms_threshold=NMS_THRESHOLD,
                          top_k=SELECT_TOP_K, keep_top_k=KEEP_TOP_K)


def _flatten_layers(predictions, localisations):
    """Per-layer `[B, H, W, A, C]` / `[B, H, W, A, 4]` -> `[B, K, C]` and `[B, K, 4]`."""
    if len(predictions) != len(localisations):
        raise ValueError(f"{len(predictions)} prediction layers for {len(localisations)} "
                         "box layers")
    preds, boxes = [], []
    for p, l in zip(predictions, localisations):
        p = tf.convert_to_tensor(p)
        l = tf.convert_to_tensor(l)
        b = tf.shape(p)[0]
        # Keep the anchor count static when the layer shape is known (top-k needs it).
        inner = p.shape[1:-1]
        k = int(np.prod(inner)) if inner.is_fully_defined() else -1
        c = p.shape[-1] if p.shape[-1] is not None else tf.shape(p)[-1]
        preds.append(tf.reshape(p, [b, k, c]))
        boxes.append(tf.reshape(l, [b, k, 4]))
    return tf.concat(preds, axis=1), tf.concat(boxes, axis=1)


def bboxes_clip(bbox_ref, bboxes):
    """The slim `bboxes_clip`: boxes `[..., 4]` intersected with the window `bbox_ref` `[4]`
    (all yxyx); `boxes.clip_boxes(..., reference_compat=True)`."""
    return boxes_lib.clip_boxes(bboxes, bbox_ref, reference_compat=True)


def detected_bboxes_reference(predictions, localisations, num_classes, select_threshold=None,
                              nms_threshold=REFERENCE_NMS_THRESHOLD, clipping_bbox=None,
                              top_k=SELECT_TOP_K, keep_top_k=KEEP_TOP_K):
    """The slim `detected_bboxes`: dicts keyed by class 1..C-1.

    Per class and image: scores below `select_threshold` become 0 and their boxes all-zero
    (kept, not removed); the top `top_k` by score (ties to the lower index in layer-major
    order); greedy NMS (suppress IoU > `nms_threshold`); `keep_top_k` kept per class,
    zero-padded. Returns `(rscores, rbboxes)`: `{c: [B, keep_top_k]}`, `{c: [B, keep_top_k, 4]}`.
    """
    select_threshold = 0.0 if select_threshold is None else select_threshold
    scores_all, boxes_all = _flatten_layers(predictions, localisations)  # [B,K,C], [B,K,4]
    rscores, rbboxes = {}, {}
    for c in range(1, num_classes):
        scores = scores_all[:, :, c]  # [B, K]
        fmask = tf.cast(tf.greater_equal(scores, select_threshold), scores.dtype)
        scores = scores * fmask
        bboxes = boxes_all * tf.expand_dims(fmask, axis=-1)  # [B, K, 4]
        k = min(top_k, int(scores.shape[1])) if scores.shape[1] is not None else top_k
        scores, idxes = tf.nn.top_k(scores, k=k, sorted=True)  # [B, k]
        bboxes = tf.gather(bboxes, idxes, batch_dims=1)  # [B, k, 4]

        def nms_one(args):
            s, b = args
            keep = tf.image.non_max_suppression(b, s, keep_top_k, nms_threshold)
            s = tf.gather(s, keep)
            b = tf.gather(b, keep)
            pad = keep_top_k - tf.shape(s)[0]
            return tf.pad(s, [[0, pad]]), tf.pad(b, [[0, pad], [0, 0]])

        s, b = tf.map_fn(nms_one, (scores, bboxes),
                         fn_output_signature=(tf.TensorSpec([keep_top_k], scores.dtype),
                                              tf.TensorSpec([keep_top_k, 4], bboxes.dtype)))
        if clipping_bbox is not None:
            b = bboxes_clip(clipping_bbox, b)
        rscores[c] = s
        rbboxes[c] = b
    return rscores, rbboxes


def detected_bboxes_combined(predictions, localisations, select_threshold=SELECT_THRESHOLD,
                             nms_threshold=NMS_THRESHOLD, clipping_bbox=(0., 0., 1., 1.),
                             top_k=SELECT_TOP_K, keep_top_k=KEEP_TOP_K):
    """Batched detection over all classes with combined NMS.

    predictions: per layer `[B, H, W, A, C]` probabilities (class 0 = background).
    localisations: per layer `[B, H, W, A, 4]` decoded yxyx boxes.
    Per class, the `top_k` highest-scoring anchors are candidates; scores below
    `select_threshold` are dropped; NMS per class (IoU > `nms_threshold` suppressed);
    the best `keep_top_k` over all classes are kept; boxes clamped into `clipping_bbox`
    (`boxes.clip_boxes`, as `tflite_postprocess`; pass None to leave them unclipped).
    Returns a dict: `scores [B, K]`, `bboxes [B, K, 4]` yxyx, `classes [B, K]` int32 in
    1..C-1, `num_detections [B]` int32 (rows past it are zero padding), `K = keep_top_k`.
    """
    select_threshold = 0.0 if select_threshold is None else select_threshold
    scores_all, boxes_all = _flatten_layers(predictions, localisations)  # [B,K,C], [B,K,4]
    scores_all = tf.cast(scores_all, tf.float32)
    boxes_all = tf.cast(boxes_all, tf.float32)
    if clipping_bbox is not None:
        boxes_all = boxes_lib.clip_boxes(boxes_all, clipping_bbox)
    cls_scores = tf.transpose(scores_all[:, :, 1:], [0, 2, 1])  # [B, C-1, K]
    num_anchors = scores_all.shape[1]
    k = top_k if num_anchors is None else min(top_k, int(num_anchors))
    cand_scores, cand_idx = tf.nn.top_k(cls_scores, k=k, sorted=True)  # [B, C-1, k]
    cand_boxes = tf.gather(boxes_all, cand_idx, batch_dims=1)  # [B, C-1, k, 4]
    # combined NMS wants class-specific boxes [B, N, q, 4] and scores [B, N, q].
    boxes_q = tf.transpose(cand_boxes, [0, 2, 1, 3])  # [B, k, C-1, 4]
    scores_q = tf.transpose(cand_scores, [0, 2, 1])  # [B, k, C-1]
    return _combined_nms(boxes_q, scores_q, k, keep_top_k, nms_threshold, select_threshold)


def _combined_nms(boxes_q, scores_q, max_per_class, keep_top_k, nms_threshold,
                  score_threshold):
    """Combined NMS of class-specific boxes `[B, N, q, 4]` and scores `[B, N, q]` (q = C-1
    or 1 shared box) -> the detections dict of `detected_bboxes_combined` (classes 1..C-1,
    rows past `num_detections` zero)."""
    nmsed_boxes, nmsed_scores, nmsed_classes, valid = tf.image.combined_non_max_suppression(
        boxes_q, scores_q, max_output_size_per_class=max_per_class, max_total_size=keep_top_k,
        iou_threshold=nms_threshold, score_threshold=score_threshold,
        pad_per_class=False, clip_boxes=False)
    valid = tf.cast(valid, tf.int32)
    row = tf.range(keep_top_k)[None, :]
    live = row < valid[:, None]  # [B, K]
    classes = tf.where(live, tf.cast(nmsed_classes, tf.int32) + 1, 0)
    return {'scores': tf.where(live, nmsed_scores, 0.),
            'bboxes': tf.where(live[..., None], nmsed_boxes, 0.),
            'classes': classes,
            'num_detections': valid}


def merge_detections(boxes, scores, classes, valid, num_classes, nms_threshold, keep_top_k):
    """Per-class NMS over detections gathered from several passes of each image (tiled
    inference, `ssd_tf.tiling`).

    boxes `[B, N, 4]` (relative to the image), scores `[B, N]`, classes `[B, N]` int 1..C-1,
    valid bool `[B, N]` (False: padding, or dropped). num_classes: C (with the background).
    Returns the dict of `detected_bboxes_combined` (boxes clamped into [0, 1]), K = keep_top_k.
    """
    boxes = tf.cast(boxes, tf.float32)
    scores = tf.where(valid, tf.cast(scores, tf.float32), 0.)
    one_hot = tf.one_hot(tf.cast(classes, tf.int32) - 1, num_classes - 1)  # [B, N, C-1]
    # a score of exactly 0 is padding; any real detection passed the select threshold
    out = _combined_nms(boxes[:, :, None, :], one_hot * scores[..., None], keep_top_k,
                        keep_top_k, nms_threshold, 1e-12)
    out['bboxes'] = boxes_lib.clip_boxes(out['bboxes'])  # padding rows stay 0
    return out


def tflite_postprocess(scores, boxes, num_classes, select_threshold=SELECT_THRESHOLD,
                       nms_threshold=NMS_THRESHOLD, max_detections=MAX_DETECTIONS,
                       top_k=SELECT_TOP_K):
    """Per-class NMS with TFLite builtin ops, for ONE image.

    scores `[K, C]` class probabilities (0 = background), boxes `[K, 4]` yxyx relative (clipped
    here to [0, 1]). Per class 1..C-1: the `top_k` best anchors, NMS V4 (padded) with the
    score threshold, at most `max_detections`; then the best `max_detections` over all classes.
    Returns `(boxes [M, 4], classes [M] float32, scores [M], count [] float32)`, M =
    max_detections, rows past count zero. Same selection as `detected_bboxes_combined` with
    `keep_top_k = max_detections` (tested for parity); only the op set differs.
    """
    boxes = boxes_lib.clip_boxes(boxes)
    k = min(int(top_k), int(scores.shape[0]))
    all_scores, all_boxes, all_classes = [], [], []
    for c in range(1, num_classes):  # unrolled: C-1 NMS ops, static shapes throughout
        cand_scores, cand_idx = tf.math.top_k(scores[:, c], k=k)
        cand_boxes = tf.gather(boxes, cand_idx)
        keep, count = tf.raw_ops.NonMaxSuppressionV4(
            boxes=cand_boxes, scores=cand_scores, max_output_size=max_detections,
            iou_threshold=nms_threshold, score_threshold=select_threshold,
            pad_to_max_output_size=True)
        live = tf.range(max_detections) < count
        all_scores.append(tf.where(live, tf.gather(cand_scores, keep), -1.))
        all_boxes.append(tf.gather(cand_boxes, keep))
        all_classes.append(tf.fill([max_detections], float(c)))
    scores_m, pick = tf.math.top_k(tf.concat(all_scores, 0), k=max_detections)
    live = scores_m >= 0.
    boxes_m = tf.where(live[:, None], tf.gather(tf.concat(all_boxes, 0), pick), 0.)
    classes_m = tf.where(live, tf.gather(tf.concat(all_classes, 0), pick), 0.)
    scores_m = tf.where(live, scores_m, 0.)
    return boxes_m, classes_m, scores_m, tf.reduce_sum(tf.cast(live, tf.float32))


# TFLite post-processing variants (export_savedmodel.py --tflite_postprocess). The default,
# builtin_nms, was faster in 3 of 4 cases of bench/bench_export.py --postprocess, finds the
# SavedModel's detections exactly and needs no custom op (README "Export and deployment").
TFLITE_POSTPROCESS_OPTIONS = ('builtin_nms', 'detection_postprocess')
TFLITE_POSTPROCESS = 'builtin_nms'
DETECTION_POSTPROCESS_OP = 'TFLite_Detection_PostProcess'


def detection_postprocess_scales(prior_scaling, reference_compat=False):
    """`(y_scale, x_scale, h_scale, w_scale)` of TFLite_Detection_PostProcess that decode our
    offsets as `encoding.bboxes_decode` does. The op computes `yc = t_y / y_scale * ha + ya`,
    `h = exp(t_h / h_scale) * ha` (same for x, w); ours `yc = t_y * s_y * ha + ya`, so each
    scale is 1 / our factor: prior_scaling `[s0, s1, s2, s3]` applies to y, x, h, w, or with
    `reference_compat` (the slim decoder) to x, y, w, h. Golden: (0.1, 0.1, 0.2, 0.2) ->
    (10, 10, 5, 5); (0.1, 0.2, 0.3, 0.4) -> (10, 5, 1/0.3, 2.5), compat (5, 10, 2.5, 1/0.3).
    """
    s_y, s_x, s_h, s_w = (float(v) for v in prior_scaling)
    if reference_compat:
        s_x, s_y, s_w, s_h = (float(v) for v in prior_scaling)
    return 1. / s_y, 1. / s_x, 1. / s_h, 1. / s_w


def tflite_detection_postprocess(offsets, scores, anchors, num_classes, scales,
                                 select_threshold=SELECT_THRESHOLD, nms_threshold=NMS_THRESHOLD,
                                 max_detections=MAX_DETECTIONS):
    """TFLite's custom op TFLite_Detection_PostProcess (in the default op resolver of the
    TFLite/LiteRT runtimes, the one of the TF OD API's mobile SSDs), for ONE image.

    offsets `[K, 4]` our `[x, y, w, h]` encodings; scores `[K, C]` class probabilities
    (0 = background, skipped by the op); anchors `(ya, xa, ha, wa)` numpy `[K]` each
    (`anchors.anchors_flat`); scales from `detection_postprocess_scales`. The op decodes the
    boxes itself, then regular (per-class) NMS: per class the anchors scoring above
    `select_threshold`, NMS at `nms_threshold` keeping `max_detections`, then the best
    `max_detections` over all classes. Returns `(boxes [M, 4] yxyx clipped to [0, 1],
    classes [M] float 0-based (class id - 1), scores [M], count [] float32)`, M =
    max_detections. In TensorFlow the op is an empty composite function (zeros) that the
    TFLite converter replaces by the op: only the converted model computes detections.
    """
    m = int(max_detections)
    y_scale, x_scale, h_scale, w_scale = scales
    attrs = [('max_detections', 'i', m), ('max_classes_per_detection', 'i', 1),
             ('detections_per_class', 'i', m), ('use_regular_nms', 'b', 'true'),
             ('nms_score_threshold', 'f', repr(float(select_threshold))),
             ('nms_iou_threshold', 'f', repr(float(nms_threshold))),
             ('num_classes', 'i', int(num_classes) - 1),
             ('y_scale', 'f', repr(float(y_scale))), ('x_scale', 'f', repr(float(x_scale))),
             ('h_scale', 'f', repr(float(h_scale))), ('w_scale', 'f', repr(float(w_scale)))]
    implements = ' '.join([f'name: "{DETECTION_POSTPROCESS_OP}"'] + [
        f'attr {{ key: "{k}" value {{ {t}: {v} }} }}' for k, t, v in attrs])

    @tf.function(experimental_implements=implements)
    def op(box_encodings, class_predictions, op_anchors):  # pylint: disable=unused-argument
        return (tf.zeros([1, m, 4]), tf.zeros([1, m]), tf.zeros([1, m]), tf.zeros([1]))

    ya, xa, ha, wa = (np.asarray(v, np.float32) for v in anchors)
    # The op's encodings and anchors are centre form in the order y, x, h, w.
    yxhw = tf.gather(tf.convert_to_tensor(offsets, tf.float32), [1, 0, 3, 2], axis=-1)
    boxes, classes, out_scores, count = op(yxhw[None], tf.cast(scores, tf.float32)[None],
                                           tf.constant(np.stack([ya, xa, ha, wa], -1)))
    return boxes_lib.clip_boxes(boxes[0]), classes[0], out_scores[0], count[0]


def average_mirrored(predictions, bboxes, mirrored_predictions, mirrored_bboxes):
    """Test-time flip: per-layer outputs of images averaged with those of their mirror images.

    predictions: per layer `[B, H, W, A, C]`; bboxes: per layer decoded `[B, H, W, A, 4]` yxyx
    relative to the network input. mirrored_*: the same for the images flipped left-right (the
    whole network input), boxes relative to that mirrored input. Each mirrored layer is
    flipped back along W (anchor column j <-> W-1-j, the anchor at the mirrored place) and its
    boxes mirrored (`x -> 1 - x`), then averaged with the image's, anchor by anchor: class
    probabilities and box corners (for grids whose anchor centres are not exactly
    mirror-symmetric, SSD300's, the two anchors averaged are a few pixels apart; each box is
    still decoded on its own anchor). Returns `(predictions, bboxes)` per-layer lists.
    """
    out_p, out_b = [], []
    for p, b, mp, mb in zip(predictions, bboxes, mirrored_predictions, mirrored_bboxes):
        mp = tf.reverse(mp, [-3])
        mb = boxes_lib.flip_left_right(tf.reverse(mb, [-3]))
        out_p.append((p + tf.cast(mp, p.dtype)) / 2.)
        out_b.append((b + tf.cast(mb, b.dtype)) / 2.)
    return out_p, out_b


def detections_from_raw(predictions, localisations, net, anchors,
                        select_threshold=SELECT_THRESHOLD, nms_threshold=NMS_THRESHOLD,
                        top_k=SELECT_TOP_K, keep_top_k=KEEP_TOP_K, mirrored=None):
    """Raw per-layer outputs -> the combined detections dict (decode, select, NMS, clip).

    predictions: per layer `[B, H, W, A, C]` probabilities; localisations: per layer
    `[B, H, W, A, 4]` offsets, decoded with `net.bboxes_decode` on `anchors` (the network
    object is an argument, so this module imports no network). mirrored: None, or
    `(predictions, localisations)` of the same images flipped left-right, averaged in
    (`average_mirrored`) before selection. Returns the dict of `detected_bboxes_combined`,
    boxes clipped to [0, 1] of the network input.
    """
    decoded = net.bboxes_decode(localisations, anchors)
    if mirrored is not None:
        predictions, decoded = average_mirrored(
            predictions, decoded, mirrored[0], net.bboxes_decode(mirrored[1], anchors))
    # top_k cannot exceed the number of anchors (small networks); the flattened anchor count
    # is not always static inside detected_bboxes_combined, so cap it here.
    num_anchors = sum(anchors_lib.num_boxes_per_layer(anchors))
    return detected_bboxes_combined(
        predictions, decoded, select_threshold=select_threshold, nms_threshold=nms_threshold,
        clipping_bbox=(0., 0., 1., 1.), top_k=min(top_k, num_anchors), keep_top_k=keep_top_k)


def detections_of(model, images, net, anchors, select_threshold=SELECT_THRESHOLD,
                  nms_threshold=NMS_THRESHOLD, top_k=SELECT_TOP_K, keep_top_k=KEEP_TOP_K,
                  test_time_flip=False):
    """`model` (a Keras SSD: images -> `{'predictions', 'localisations'}`) on images
    `[B, h, w, 3]` -> `detections_from_raw`'s dict. test_time_flip: the images' mirror images
    run in the same batch (2B images, twice the network's work) and are averaged in
    (`average_mirrored`)."""
    if not test_time_flip:
        out = model(images, training=False)
        return detections_from_raw(out['predictions'], out['localisations'], net, anchors,
                                   select_threshold, nms_threshold, top_k, keep_top_k)
    n = tf.shape(images)[0]
    out = model(tf.concat([images, tf.reverse(images, [2])], 0), training=False)
    first = {k: [t[:n] for t in out[k]] for k in ('predictions', 'localisations')}
    second = {k: [t[n:] for t in out[k]] for k in ('predictions', 'localisations')}
    return detections_from_raw(first['predictions'], first['localisations'], net, anchors,
                               select_threshold, nms_threshold, top_k, keep_top_k,
                               mirrored=(second['predictions'], second['localisations']))
