"""Detection post-processing: score selection and non-maximum suppression.

Inputs are per-layer class probabilities `[B, H, W, A, C]` and decoded boxes
`[B, H, W, A, 4]` (yxyx, relative; see `encoding.bboxes_decode`). It is not the job of this
module to decode offsets.

- `detected_bboxes_reference`: the slim chain (select, sort, per-class NMS), per-class dicts,
  zero-padded, boxes unclipped unless `clipping_bbox` is given.
- `detected_bboxes_combined` (default): per-class top-k candidates, then
  `tf.image.combined_non_max_suppression` keeping `keep_top_k` detections over all classes,
  boxes clipped, and a count of valid detections (padding rows are not detections).
"""
import numpy as np
import tensorflow as tf


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
    """Clips boxes `[..., 4]` to the window `bbox_ref` `[4]` (all yxyx), as the slim code."""
    bbox_ref = tf.cast(tf.convert_to_tensor(bbox_ref), bboxes.dtype)
    ymin = tf.maximum(bboxes[..., 0], bbox_ref[0])
    xmin = tf.maximum(bboxes[..., 1], bbox_ref[1])
    ymax = tf.minimum(bboxes[..., 2], bbox_ref[2])
    xmax = tf.minimum(bboxes[..., 3], bbox_ref[3])
    return tf.stack([ymin, xmin, ymax, xmax], axis=-1)


def detected_bboxes_reference(predictions, localisations, num_classes, select_threshold=None,
                              nms_threshold=0.5, clipping_bbox=None, top_k=400, keep_top_k=200):
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


def detected_bboxes_combined(predictions, localisations, select_threshold=0.01,
                             nms_threshold=0.45, clipping_bbox=(0., 0., 1., 1.), top_k=400,
                             keep_top_k=200):
    """Batched detection over all classes with combined NMS.

    predictions: per layer `[B, H, W, A, C]` probabilities (class 0 = background).
    localisations: per layer `[B, H, W, A, 4]` decoded yxyx boxes.
    Per class, the `top_k` highest-scoring anchors are candidates; scores below
    `select_threshold` are dropped; NMS per class (IoU > `nms_threshold` suppressed);
    the best `keep_top_k` over all classes are kept; boxes clipped to `clipping_bbox`
    (pass None to leave them unclipped).
    Returns a dict: `scores [B, K]`, `bboxes [B, K, 4]` yxyx, `classes [B, K]` int32 in
    1..C-1, `num_detections [B]` int32 (rows past it are zero padding), `K = keep_top_k`.
    """
    select_threshold = 0.0 if select_threshold is None else select_threshold
    scores_all, boxes_all = _flatten_layers(predictions, localisations)  # [B,K,C], [B,K,4]
    scores_all = tf.cast(scores_all, tf.float32)
    boxes_all = tf.cast(boxes_all, tf.float32)
    if clipping_bbox is not None:
        boxes_all = bboxes_clip(clipping_bbox, boxes_all)
    cls_scores = tf.transpose(scores_all[:, :, 1:], [0, 2, 1])  # [B, C-1, K]
    num_anchors = scores_all.shape[1]
    k = top_k if num_anchors is None else min(top_k, int(num_anchors))
    cand_scores, cand_idx = tf.nn.top_k(cls_scores, k=k, sorted=True)  # [B, C-1, k]
    cand_boxes = tf.gather(boxes_all, cand_idx, batch_dims=1)  # [B, C-1, k, 4]
    # combined NMS wants class-specific boxes [B, N, q, 4] and scores [B, N, q].
    boxes_q = tf.transpose(cand_boxes, [0, 2, 1, 3])  # [B, k, C-1, 4]
    scores_q = tf.transpose(cand_scores, [0, 2, 1])  # [B, k, C-1]
    nmsed_boxes, nmsed_scores, nmsed_classes, valid = tf.image.combined_non_max_suppression(
        boxes_q, scores_q, max_output_size_per_class=k, max_total_size=keep_top_k,
        iou_threshold=nms_threshold, score_threshold=select_threshold,
        pad_per_class=False, clip_boxes=False)
    valid = tf.cast(valid, tf.int32)
    row = tf.range(keep_top_k)[None, :]
    live = row < valid[:, None]  # [B, K]
    classes = tf.where(live, tf.cast(nmsed_classes, tf.int32) + 1, 0)
    return {'scores': tf.where(live, nmsed_scores, 0.),
            'bboxes': tf.where(live[..., None], nmsed_boxes, 0.),
            'classes': classes,
            'num_detections': valid}
