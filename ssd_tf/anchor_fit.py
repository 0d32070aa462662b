"""Anchors fitted to a data set's boxes (train_ssd.py `--anchors=auto`).

`fit_anchors(gt_boxes, net)` keeps the network's feature maps and its number of anchors per
location `A_l` of each map (so the heads keep their size and cost, and a fitted run differs
from a default one only in its anchor shapes), and chooses the `A_l` shapes `(h, w)` of each map
from the training boxes:

1. each box goes to the feature map whose default anchors are nearest in scale (log of
   sqrt(area)), so every map gets the sizes its stride was designed to serve;
2. the box shapes of each map are clustered into `A_l` shapes with k-means on the IoU distance
   `1 - IoU` of centred boxes (k-means++ seeding from `seed`, medians as centres: seeded and
   deterministic); a map with no box keeps its default shapes;
3. boxes are re-assigned to the map whose fitted anchors (at their real positions) match them
   best and the clustering is repeated (`REFINE_ROUNDS`);
4. a map takes its fitted shapes only when that does not lower the coverage (boxes with an
   anchor at IoU >= the matching threshold, then their mean best IoU) of the boxes it was fitted
   to, so the fitted anchors never cover those boxes worse than the defaults.

The shapes are stored as explicit `(h, w)` pixel pairs in the SSDParams (`ssd_tf.anchors`),
which the run config saves (`run_config.RunConfig.anchor_shapes`).
"""
import numpy as np

from ssd_tf import anchors as anchors_lib
from ssd_tf import anchors_report
from ssd_tf import boxes as boxes_lib

# k-means stops when no assignment changes, or after this many iterations.
MAX_ITERATIONS = 100
# Rounds of (re-assign boxes to the map that matches them best, re-cluster) after the first fit.
REFINE_ROUNDS = 2


def centred_iou(shapes, centres):
    """IoU of centred boxes: `shapes` `[N, 2]` and `centres` `[K, 2]` as `(h, w)` -> `[N, K]`."""
    def boxes(s):
        s = np.asarray(s, np.float64).reshape(-1, 2)
        return np.concatenate([-s / 2., s / 2.], axis=-1)  # [ymin, xmin, ymax, xmax]
    return boxes_lib.iou(boxes(shapes), boxes(centres)).numpy()


def iou_kmeans(shapes, k, seed=0, max_iterations=MAX_ITERATIONS):
    """`k` anchor shapes for box shapes `[N, 2]` (`(h, w)`, positive): k-means with the
    distance `1 - IoU` of centred boxes, k-means++ seeding from `seed`, each centre the
    per-coordinate median of its boxes. Fewer than `k` distinct shapes give those shapes.
    Returns `[min(k, distinct), 2]` sorted by area, then by h."""
    shapes = np.asarray(shapes, np.float64).reshape(-1, 2)
    distinct = np.unique(shapes, axis=0)
    if len(distinct) <= k:
        centres = distinct
    else:
        rng = np.random.default_rng(seed)
        centres = [shapes[rng.integers(len(shapes))]]
        while len(centres) < k:  # k-means++: next centre drawn with probability ~ d^2
            d = 1. - centred_iou(shapes, np.array(centres)).max(axis=1)
            p = d ** 2
            centres.append(shapes[rng.choice(len(shapes), p=p / p.sum())] if p.sum() > 0
                           else distinct[len(centres)])
        centres = np.array(centres)
        assign = None
        for _ in range(max_iterations):
            iou = centred_iou(shapes, centres)
            new = iou.argmax(axis=1)
            if assign is not None and np.array_equal(new, assign):
                break
            assign = new
            for j in range(k):
                members = shapes[assign == j]
                if len(members):
                    centres[j] = np.median(members, axis=0)
                else:  # an empty cluster restarts at the worst-served box
                    worst = int(np.argmin(iou.max(axis=1)))
                    centres[j] = shapes[worst]
    order = np.lexsort((centres[:, 0], centres[:, 0] * centres[:, 1]))
    return centres[order]


def _layer_scale(shapes):
    """Geometric mean of sqrt(h * w) of a layer's anchor shapes `[A, 2]`."""
    return float(np.exp(np.mean(np.log(np.sqrt(shapes[:, 0] * shapes[:, 1])))))


def _cluster_layers(box_shapes, layer, defaults, seed):
    """Per layer, its `A_l` shapes fitted to the boxes assigned to it (defaults where none)."""
    out = []
    for i, default in enumerate(defaults):
        members = box_shapes[layer == i]
        if not len(members):
            out.append(default)
            continue
        fitted = iou_kmeans(members, len(default), seed=seed + i)
        if len(fitted) < len(default):  # too few distinct boxes: complete with defaults
            fitted = np.concatenate([fitted, default[:len(default) - len(fitted)]])
        out.append(fitted)
    return out


def _score(best, threshold):
    """(boxes covered, mean best IoU) of a `[N, L]` best-IoU matrix: what a fit maximises."""
    top = best.max(axis=1)
    return int((top >= threshold).sum()), float(top.mean())


def _layer_anchors(net, shapes):
    params = anchors_lib.with_anchor_shapes(net.params, shapes)
    return anchors_lib.ssd_anchors_all_layers(
        params.img_shape, params.feat_shapes, params.anchor_sizes, params.anchor_ratios,
        params.anchor_steps, offset=params.anchor_offset)


def fitted_shapes(gt_boxes, net, matching_threshold=0.5, seed=0,
                  max_boxes=anchors_report.MAX_BOXES):
    """The fitted anchor shapes of every feature map of `net` (module docstring): a list per
    layer of `[A_l, 2]` `(h, w)` relative to the image. `gt_boxes` `[N, 4]` yxyx relative;
    boxes of zero size are left out, beyond `max_boxes` a sample drawn with `seed` is used."""
    b, _ = anchors_report.sample_boxes(gt_boxes, max_boxes, seed)
    if not len(b):
        raise ValueError("no ground-truth box of positive size to fit anchors to")
    defaults = anchors_lib.anchor_shapes(net.params)
    box_shapes = np.stack([b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]], axis=-1)  # [N, 2] (h, w)
    scales = np.log([_layer_scale(d) for d in defaults])
    layer = np.abs(np.log(np.sqrt(box_shapes.prod(axis=1)))[:, None] - scales).argmin(axis=1)
    shapes = _cluster_layers(box_shapes, layer, defaults, seed)
    for _ in range(REFINE_ROUNDS):
        best = anchors_report.best_iou_per_layer(b, _layer_anchors(net, shapes))
        shapes = _cluster_layers(box_shapes, best.argmax(axis=1), defaults, seed)
    # A map keeps its fitted shapes only when they do not lower the score (so the result
    # covers the boxes at least as well as the defaults).
    fit = anchors_report.best_iou_per_layer(b, _layer_anchors(net, shapes))
    chosen = anchors_report.best_iou_per_layer(b, net.anchors())
    final = list(defaults)
    for i in range(len(defaults)):
        trial = chosen.copy()
        trial[:, i] = fit[:, i]
        if _score(trial, matching_threshold) >= _score(chosen, matching_threshold):
            chosen, final[i] = trial, shapes[i]
    return final


def fit_anchors(gt_boxes, net, matching_threshold=0.5, seed=0,
                max_boxes=anchors_report.MAX_BOXES):
    """A new network of `net`'s class with anchors fitted to `gt_boxes` (`[N, 4]` yxyx
    relative, numpy): same feature maps and anchors per location, the shapes of
    `fitted_shapes` stored as explicit `(h, w)` in its params (`anchors.anchor_shapes(
    net.params)` reads them back; the run config saves them). Seeded and deterministic.
    ValueError with `reference_compat` (the slim anchors are part of what it reproduces) or
    without a usable box."""
    if net.reference_compat:
        raise ValueError("fitted anchors (--anchors=auto) change the slim SSD's anchors; "
                         "they cannot be used with --reference_compat")
    shapes = fitted_shapes(gt_boxes, net, matching_threshold, seed, max_boxes)
    params = anchors_lib.with_anchor_shapes(net.params, shapes)
    return type(net)(params, reference_compat=net.reference_compat)


def format_shapes(net):
    """One line per feature map: its grid, stride and anchor shapes `h x w` in pixels."""
    p = net.params
    lines = [f"anchors of {net.model_name} (h x w pixels at {p.img_shape[0]}x{p.img_shape[1]}):"]
    for name, fs, step, shapes in zip(p.feat_layers, p.feat_shapes, p.anchor_steps,
                                      anchors_lib.anchor_shapes(p)):
        px = ', '.join(f"{h * p.img_shape[0]:.1f}x{w * p.img_shape[1]:.1f}" for h, w in shapes)
        lines.append(f"  {name} ({fs[0]}x{fs[1]}, stride {step:g}): {px}")
    return '\n'.join(lines)
