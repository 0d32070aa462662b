"""Literal NumPy transcriptions of the slim SSD algorithms as SPEC.md states them.

They follow the original step by step (a loop over ground-truth boxes with a strict running
maximum, a batch-global top-k cut, per-class NMS by a plain greedy loop) so that the
vectorised `reference_compat=True` code can be checked against them. Test helpers only.
"""
import numpy as np


def encode_layer(labels, bboxes, anchor_layer, num_classes, prior_scaling=(.1, .1, .2, .2)):
    yref, xref, href, wref = anchor_layer
    ymin, xmin = yref - href / 2., xref - wref / 2.
    ymax, xmax = yref + href / 2., xref + wref / 2.
    vol_anchors = (xmax - xmin) * (ymax - ymin)
    shape = (yref.shape[0], yref.shape[1], href.size)
    f32 = np.float32
    feat_labels = np.zeros(shape, np.int64)
    feat_scores = np.zeros(shape, f32)
    fymin, fxmin = np.zeros(shape, f32), np.zeros(shape, f32)
    fymax, fxmax = np.ones(shape, f32), np.ones(shape, f32)
    for label, bbox in zip(labels, np.asarray(bboxes, f32)):
        iy0 = np.maximum(ymin, bbox[0]); ix0 = np.maximum(xmin, bbox[1])
        iy1 = np.minimum(ymax, bbox[2]); ix1 = np.minimum(xmax, bbox[3])
        h = np.maximum(iy1 - iy0, f32(0)); w = np.maximum(ix1 - ix0, f32(0))
        inter = h * w
        union = vol_anchors - inter + (bbox[2] - bbox[0]) * (bbox[3] - bbox[1])
        jaccard = inter / union
        mask = (jaccard > feat_scores) & (feat_scores > -0.5) & (label < num_classes)
        feat_labels = np.where(mask, label, feat_labels)
        feat_scores = np.where(mask, jaccard, feat_scores)
        fymin = np.where(mask, bbox[0], fymin); fxmin = np.where(mask, bbox[1], fxmin)
        fymax = np.where(mask, bbox[2], fymax); fxmax = np.where(mask, bbox[3], fxmax)
    cy = (fymax + fymin) / f32(2); cx = (fxmax + fxmin) / f32(2)
    fh = fymax - fymin; fw = fxmax - fxmin
    cy = (cy - yref) / href / f32(prior_scaling[0])
    cx = (cx - xref) / wref / f32(prior_scaling[1])
    fh = np.log(fh / href) / f32(prior_scaling[2])
    fw = np.log(fw / wref) / f32(prior_scaling[3])
    return feat_labels, np.stack([cx, cy, fw, fh], -1).astype(f32), feat_scores


def _top_k(values, k):
    """`tf.nn.top_k(values, k)` of a 1-D array: the k largest values, largest first, ties
    to the lower index; returns `(values [k], indices [k])`."""
    order = np.argsort(-values, kind='stable')[:k]
    return values[order], order


def _sparse_softmax_cross_entropy(logits, labels):
    """`tf.nn.sparse_softmax_cross_entropy_with_logits`: logsumexp(logits) - logits[label]."""
    m = logits.max(-1, keepdims=True)
    lse = np.log(np.exp(logits - m).sum(-1)) + m[:, 0]
    return lse - logits[np.arange(len(labels)), labels]


def ssd_losses(logits, localisations, gclasses, glocalisations, gscores, match_threshold=.5,
               negative_ratio=3., alpha=1.):
    """The original `ssd_losses`, step by step (float32 as the original): everything flattened
    layer-major, positives `gscores > match_threshold`; hard negatives by
    `tf.nn.top_k(-nvalues_flat, k=n_neg)` with `n_neg = int(negative_ratio * n_positives) +
    batch_size` capped at `max_neg_entries`, and the mask `nvalues < max_hard_pred` (strict);
    each term divided by batch_size."""
    f32 = np.float32
    num_classes = logits[0].shape[-1]
    batch_size = logits[0].shape[0]
    # Flatten out all vectors!
    logits = np.concatenate([np.reshape(x, [-1, num_classes]) for x in logits]).astype(f32)
    gclasses = np.concatenate([np.reshape(x, [-1]) for x in gclasses])
    gscores = np.concatenate([np.reshape(x, [-1]) for x in gscores]).astype(f32)
    localisations = np.concatenate([np.reshape(x, [-1, 4]) for x in localisations]).astype(f32)
    glocalisations = np.concatenate([np.reshape(x, [-1, 4])
                                     for x in glocalisations]).astype(f32)
    # Compute positive matching mask...
    pmask = gscores > match_threshold
    fpmask = pmask.astype(f32)
    n_positives = fpmask.sum()
    # Hard negative mining...
    no_classes = pmask.astype(np.int32)
    e = np.exp(logits - logits.max(-1, keepdims=True))
    predictions = e / e.sum(-1, keepdims=True)  # slim.softmax
    nmask = np.logical_and(np.logical_not(pmask), gscores > -0.5)
    fnmask = nmask.astype(f32)
    nvalues = np.where(nmask, predictions[:, 0], f32(1.) - fnmask)
    nvalues_flat = np.reshape(nvalues, [-1])
    # Number of negative entries to select.
    max_neg_entries = int(fnmask.sum())
    n_neg = int(f32(negative_ratio) * n_positives) + batch_size  # tf.cast(..., tf.int32)
    n_neg = min(n_neg, max_neg_entries)
    val, _ = _top_k(-nvalues_flat, n_neg)
    max_hard_pred = -val[-1]
    # Final negative mask.
    nmask = np.logical_and(nmask, nvalues < max_hard_pred)
    fnmask = nmask.astype(f32)
    ce_pos = (_sparse_softmax_cross_entropy(logits, gclasses) * fpmask).sum() / batch_size
    ce_neg = (_sparse_softmax_cross_entropy(logits, no_classes) * fnmask).sum() / batch_size
    # Localization: abs_smooth(x) = 0.5 * ((|x| - 1) * min(|x|, 1) + |x|), weights alpha * pmask.
    weights = np.expand_dims(alpha * fpmask, axis=-1)
    absx = np.abs(localisations - glocalisations)
    sl1 = 0.5 * ((absx - 1) * np.minimum(absx, 1) + absx)
    loc_loss = (sl1 * weights).sum() / batch_size
    return {'cross_entropy_pos': float(ce_pos), 'cross_entropy_neg': float(ce_neg),
            'localization': float(loc_loss)}


def _iou(a, b):
    ih = max(min(a[2], b[2]) - max(a[0], b[0]), 0.)
    iw = max(min(a[3], b[3]) - max(a[1], b[1]), 0.)
    inter = ih * iw
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.


def detected_bboxes(predictions, boxes, num_classes, select_threshold, nms_threshold, top_k,
                    keep_top_k):
    """predictions [B, K, C], boxes [B, K, 4] (already flattened layer-major)."""
    bsz = predictions.shape[0]
    rscores, rbboxes = {}, {}
    for c in range(1, num_classes):
        rs = np.zeros([bsz, keep_top_k], np.float32)
        rb = np.zeros([bsz, keep_top_k, 4], np.float32)
        for b in range(bsz):
            s = predictions[b, :, c] * (predictions[b, :, c] >= select_threshold)
            bb = boxes[b] * (predictions[b, :, c] >= select_threshold)[:, None]
            order = np.argsort(-s, kind='stable')[:top_k]
            s, bb = s[order], bb[order]
            kept = []
            for i in range(len(s)):
                if len(kept) == keep_top_k:
                    break
                if all(_iou(bb[i], bb[j]) <= nms_threshold for j in kept):
                    kept.append(i)
            rs[b, :len(kept)] = s[kept]
            rb[b, :len(kept)] = bb[kept]
        rscores[c], rbboxes[c] = rs, rb
    return rscores, rbboxes
