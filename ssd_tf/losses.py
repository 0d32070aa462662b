"""The SSD multibox loss: softmax cross-entropy with hard-negative mining plus smooth-L1.

Inputs are batched per-layer tensors: logits `[B, H, W, A, C]`, localisations
`[B, H, W, A, 4]`, gclasses `[B, H, W, A]`, glocalisations `[B, H, W, A, 4]`,
gscores `[B, H, W, A]`. The output is a dict of scalar float32 tensors `cross_entropy_pos`,
`cross_entropy_neg`, `localization` and their sum `total` (regularisation not included).

- reference (`reference_compat=True`), the slim `ssd_losses`: positives `gscores >
  match_threshold`; hard negatives mined over the whole batch: `n_neg = min(int(ratio * n_pos)
  + batch_size, #candidates)`, the n_neg-th smallest background probability is the cut and only
  negatives strictly below it count; each term divided by the batch size; label smoothing is
  ignored, as it was.
- default: positives are the anchors the encoder labelled (`gclasses > 0`; the default encoder
  has already applied the bipartite step and the threshold, so `match_threshold` is not used
  again here); for each image exactly `min(ratio * n_pos_image, #negatives_image)` negatives
  with the highest background loss (ties broken by anchor index); every term divided by the
  number of positives in the batch (or `num_positives` when given, e.g. the global count across
  replicas); zero positives give a zero loss, never NaN; label smoothing spreads `eps` over all
  classes; `class_balance` b > 0 weights each positive's cross-entropy by its class's
  `(mean count / count)^b` (see `class_balance_weights`), for rare classes.

The mining uses sorts and top-k on fixed shapes only, so the loss compiles under XLA.
"""
import tensorflow as tf


def abs_smooth(x):
    """Smooth-L1 in the slim form: `0.5 x^2` if |x| < 1 else `|x| - 0.5`."""
    absx = tf.abs(x)
    minx = tf.minimum(absx, 1.)
    return 0.5 * ((absx - 1.) * minx + absx)


def _check_layers(logits, localisations, gclasses, glocalisations, gscores):
    n = len(logits)
    if not (len(localisations) == len(gclasses) == len(glocalisations) == len(gscores) == n):
        raise ValueError("logits, localisations, gclasses, glocalisations and gscores need the "
                         f"same number of layers; got {len(logits)}, {len(localisations)}, "
                         f"{len(gclasses)}, {len(glocalisations)}, {len(gscores)}")


def ssd_losses(logits, localisations, gclasses, glocalisations, gscores, match_threshold=0.5,
               negative_ratio=3., alpha=1., label_smoothing=0., reference_compat=False,
               num_positives=None, class_balance=0., class_positives=None):
    """Multibox loss; see the module docstring for the two behaviours.

    num_positives: optional scalar normaliser for the default loss (the positives of the
    global batch under tf.distribute, so that replicas sum to the single-replica loss).
    class_balance: the power b of the class-balanced weights of the positives'
    cross-entropy (default loss only; 0: off). class_positives: optional `[C]` positive
    anchors per class they are computed from (of the global batch under tf.distribute;
    None: this batch's).
    """
    _check_layers(logits, localisations, gclasses, glocalisations, gscores)
    if reference_compat:
        if class_balance:
            raise ValueError("class_balance with reference_compat: the slim loss has no class "
                             "weights")
        return _ssd_losses_reference(logits, localisations, gclasses, glocalisations, gscores,
                                     match_threshold, negative_ratio, alpha)
    return _ssd_losses_default(logits, localisations, gclasses, glocalisations, negative_ratio,
                               alpha, label_smoothing, num_positives, class_balance,
                               class_positives)


def class_balance_weights(class_positives, power):
    """Weights of the positives' cross-entropy per class: `[C]` float32 from the positive
    anchors per class `class_positives` `[C]` (entry 0, background, is not a positive class and
    gets weight 1). Each foreground class c with n_c > 0 positives gets
    `s * (m / n_c)^power`, m the mean of n_c over the classes present, and s the one factor
    that keeps the total weight of the positives `sum_c n_c w_c` equal to `sum_c n_c`, so the
    loss keeps its scale; absent classes get 0 (they have no positives to weigh). power 0:
    all 1; 1: each present class weighs the same in total (inverse frequency); 0.5: inverse
    square root. No positives: all 1."""
    counts = tf.cast(tf.convert_to_tensor(class_positives), tf.float32)[1:]  # [C-1]
    present = counts > 0.
    n_present = tf.reduce_sum(tf.cast(present, tf.float32))
    total = tf.reduce_sum(counts)
    mean = total / tf.maximum(n_present, 1.)
    raw = tf.where(present, tf.pow(mean / tf.maximum(counts, 1e-12), float(power)), 0.)
    scale = total / tf.maximum(tf.reduce_sum(raw * counts), 1e-12)
    fg = tf.where(total > 0., raw * scale, tf.ones_like(raw))
    return tf.concat([tf.ones([1], tf.float32), fg], 0)


def _ssd_losses_reference(logits, localisations, gclasses, glocalisations, gscores,
                          match_threshold, negative_ratio, alpha):
    logits = [tf.convert_to_tensor(x) for x in logits]
    num_classes = logits[0].shape[-1]
    batch_size = tf.shape(logits[0])[0]
    # Flatten layer by layer, batch inside the layer, then concatenate (the slim order).
    flogits = tf.concat([tf.reshape(x, [-1, num_classes]) for x in logits], 0)  # [M, C]
    fgclasses = tf.concat([tf.reshape(x, [-1]) for x in gclasses], 0)  # [M]
    fgscores = tf.concat([tf.reshape(x, [-1]) for x in gscores], 0)  # [M]
    flocs = tf.concat([tf.reshape(x, [-1, 4]) for x in localisations], 0)  # [M, 4]
    fglocs = tf.concat([tf.reshape(x, [-1, 4]) for x in glocalisations], 0)  # [M, 4]
    dtype = flogits.dtype
    fgscores = tf.cast(fgscores, dtype)
    fgclasses = tf.cast(fgclasses, tf.int64)

    pmask = fgscores > match_threshold
    fpmask = tf.cast(pmask, dtype)
    n_positives = tf.reduce_sum(fpmask)

    no_classes = tf.cast(pmask, tf.int32)
    predictions = tf.nn.softmax(flogits)
    nmask = tf.logical_and(tf.logical_not(pmask), fgscores > -0.5)
    fnmask = tf.cast(nmask, dtype)
    nvalues = tf.where(nmask, predictions[:, 0], 1. - fnmask)
    max_neg_entries = tf.cast(tf.reduce_sum(fnmask), tf.int32)
    n_neg = tf.cast(negative_ratio * n_positives, tf.int32) + batch_size
    n_neg = tf.minimum(n_neg, max_neg_entries)
    # top_k with a dynamic k is not XLA friendly: sort once (static shape) and pick the
    # n_neg-th value, which is what `top_k(-nvalues, n_neg)[-1]` gives.
    sorted_vals = tf.sort(nvalues, direction='ASCENDING')
    max_hard_pred = tf.gather(sorted_vals, tf.maximum(n_neg - 1, 0))
    max_hard_pred = tf.where(n_neg > 0, max_hard_pred, tf.cast(-1., dtype))
    nmask = tf.logical_and(nmask, nvalues < max_hard_pred)
    fnmask = tf.cast(nmask, dtype)

    bsize = tf.cast(batch_size, dtype)
    ce_pos = tf.nn.sparse_softmax_cross_entropy_with_logits(logits=flogits, labels=fgclasses)
    ce_pos = tf.math.divide(tf.reduce_sum(ce_pos * fpmask), bsize)
    ce_neg = tf.nn.sparse_softmax_cross_entropy_with_logits(logits=flogits, labels=no_classes)
    ce_neg = tf.math.divide(tf.reduce_sum(ce_neg * fnmask), bsize)
    weights = tf.expand_dims(alpha * fpmask, axis=-1)
    loc = abs_smooth(flocs - tf.cast(fglocs, dtype))
    loc = tf.math.divide(tf.reduce_sum(loc * weights), bsize)
    return _as_dict(ce_pos, ce_neg, loc)


def _flatten_per_image(tensors, last):
    """Per-layer `[B, H, W, A, (last)]` -> `[B, K, (last)]`, layers concatenated per image."""
    b = tf.shape(tensors[0])[0]
    shape = [b, -1] + ([last] if last else [])
    return tf.concat([tf.reshape(t, shape) for t in tensors], axis=1)


# Rows whose count of hard negatives stays within this take the threshold from a partial
# `top_k` (about 2x cheaper than a full sort on CPU at 34k anchors); larger counts sort the row.
TOP_N_PARTIAL = 2048


def _top_n_mask(values, n, partial=TOP_N_PARTIAL):
    """The `n[b]` largest entries of each row of `values` `[B, K]` (float), `n` `[B]` int32 with
    0 <= n <= K: `[B, K]` bool. Ties at the cut go to the lower index, as with a stable
    descending sort; exactly `n[b]` entries are True in row b.

    One value sort (or a `top_k` of `partial` when every n is within it) gives each row's cut,
    the n-th largest value; entries above it are in, and of those equal to it the first
    `n - #above` by index. Static shapes only (XLA-compilable); no gradient.
    """
    values = tf.stop_gradient(values)
    k = values.shape[-1]

    def cut_of(sorted_desc):  # [B, M] -> [B, 1], the n-th largest value (the largest for n 0)
        return tf.gather(sorted_desc, tf.maximum(n - 1, 0), batch_dims=1)[:, None]

    def full_sort():
        return cut_of(tf.sort(values, axis=-1, direction='DESCENDING'))

    if k is not None and partial and k > partial:
        cut = tf.cond(tf.reduce_max(n) <= partial,
                      lambda: cut_of(tf.math.top_k(values, k=partial, sorted=True).values),
                      full_sort)
    else:
        cut = full_sort()
    above = values > cut
    at_cut = values == cut
    room = n - tf.reduce_sum(tf.cast(above, tf.int32), axis=-1)  # [B], places left at the cut
    at_cut_before = tf.cumsum(tf.cast(at_cut, tf.int32), axis=-1, exclusive=True)
    return above | (at_cut & (at_cut_before < room[:, None]))


def _ssd_losses_default(logits, localisations, gclasses, glocalisations, negative_ratio, alpha,
                        label_smoothing, num_positives, class_balance=0., class_positives=None):
    # The loss is computed in float32 even when the network runs in float16/bfloat16.
    num_classes = logits[0].shape[-1]
    flogits = tf.cast(_flatten_per_image(logits, num_classes), tf.float32)  # [B, K, C]
    flocs = tf.cast(_flatten_per_image(localisations, 4), tf.float32)  # [B, K, 4]
    fgclasses = tf.cast(_flatten_per_image(gclasses, None), tf.int32)  # [B, K]
    fglocs = tf.cast(_flatten_per_image(glocalisations, 4), tf.float32)  # [B, K, 4]

    # Labels outside [0, C) would silently index out of range: they are treated as background.
    valid_label = (fgclasses >= 0) & (fgclasses < num_classes)
    fgclasses = tf.where(valid_label, fgclasses, 0)
    pmask = fgclasses > 0  # [B, K]
    fpmask = tf.cast(pmask, tf.float32)
    n_pos_image = tf.reduce_sum(tf.cast(pmask, tf.int32), axis=1)  # [B]

    log_probs = tf.nn.log_softmax(flogits, axis=-1)  # [B, K, C], stable for large logits
    # Hard-negative mining on the background loss -log p0 (same order as low p0).
    bg_loss = -log_probs[..., 0]  # [B, K]
    neg_candidates = tf.logical_not(pmask)
    mining_score = tf.where(neg_candidates, bg_loss, -tf.ones_like(bg_loss))
    n_neg_cand = tf.reduce_sum(tf.cast(neg_candidates, tf.int32), axis=1)  # [B]
    n_neg = tf.minimum(tf.cast(tf.cast(n_pos_image, tf.float32) * negative_ratio, tf.int32),
                       n_neg_cand)  # [B]
    nmask = neg_candidates & _top_n_mask(mining_score, n_neg)
    fnmask = tf.cast(nmask, tf.float32)

    onehot = tf.one_hot(fgclasses, num_classes, dtype=tf.float32)  # [B, K, C]
    pos_weight = fpmask  # [B, K]
    if class_balance:
        if class_positives is None:
            class_positives = tf.reduce_sum(onehot * fpmask[..., None], axis=[0, 1])  # [C]
        weights = class_balance_weights(class_positives, class_balance)  # [C]
        pos_weight = fpmask * tf.gather(weights, fgclasses)
    if label_smoothing:
        onehot = onehot * (1. - label_smoothing) + label_smoothing / num_classes
    ce = -tf.reduce_sum(onehot * log_probs, axis=-1)  # [B, K]

    if num_positives is None:
        num_positives = tf.reduce_sum(fpmask)
    normaliser = tf.maximum(tf.cast(num_positives, tf.float32), 1.)
    ce_pos = tf.reduce_sum(ce * pos_weight) / normaliser
    ce_neg = tf.reduce_sum(ce * fnmask) / normaliser
    loc = tf.reduce_sum(abs_smooth(flocs - fglocs) * fpmask[..., None]) * alpha / normaliser
    return _as_dict(ce_pos, ce_neg, loc)


def _as_dict(ce_pos, ce_neg, loc):
    return {'cross_entropy_pos': ce_pos, 'cross_entropy_neg': ce_neg, 'localization': loc,
            'total': ce_pos + ce_neg + loc}
