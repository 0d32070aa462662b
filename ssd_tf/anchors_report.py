"""Anchor coverage: which ground-truth boxes a network's anchors can match.

A box is *covered* when its best anchor reaches the matching threshold (IoU >= 0.5 by default,
train_ssd.py's `--match_threshold`); an uncovered box can only be matched by the encoder's
forced best-anchor step, with a poor anchor. `anchor_coverage(gt_boxes, net)` reports the
covered share overall, by box size (sqrt of the area, as % of the image side) and by aspect
ratio (w/h), and which feature maps serve each bucket (where the best anchors come from).

The best anchor of a box on one feature map is exact and cheap: IoU falls with the distance of
the centres along each axis, so for every anchor shape the best position is the grid centre
nearest to the box centre; one IoU per box and anchor shape (`ssd_tf.boxes.iou` on the box
moved to that centre), not per anchor position. At most `MAX_BOXES` boxes are used (a seeded
sample, said in the report). The command is `ssd_tf.cli.anchors` (`ssd-anchors`;
`python -m ssd_tf.anchors_report` hands over to it).
"""
import collections
import dataclasses

import numpy as np

from ssd_tf import boxes as boxes_lib

# At most this many boxes enter a report or a fit (a seeded sample beyond): bounds time and
# memory on big data sets (one float per box and anchor shape); the share is still exact to
# about +-0.5 % at 20000 boxes.
MAX_BOXES = 20000
# Records of TFRecord data read for a report at the start of training (box features only).
MAX_SCAN_RECORDS = 50000
# Below this coverage the report warns (issue 13: a detector must say when it cannot see
# the objects).
WARN_COVERAGE = 0.9
# Box size buckets: sqrt(h * w) relative to the image side, edges in fractions.
# The first buckets (boxes under 16 % of the side) are the small objects: when they are
# uncovered, the warning also suggests the small-object network.
SMALL_BUCKETS = 4
# A box whose side sqrt(h * w) at the network input is under this many pixels is lost for
# being too small (`loss_reasons`): under one cell of the finest feature map of every network
# here (stride 8: 38 x 38 on SSD300, 16 x 16 on ssd_small's 128 px).
MIN_INPUT_PIXELS = 8
# The --class_balance of the small-object command (`recommended_command`): chosen on the real
# small-object dev set (docs/small-objects.md#class-balanced-loss); a no-op on one class.
SMALL_OBJECT_CLASS_BALANCE = 0.5
# The --max_number_of_steps of the small-object command: what a 20-minute budget buys
# ssd_small_320 at batch 32 on 2 CPU cores in bfloat16 (about 19 minutes with evaluation, since
# the matcher runs XLA-compiled; docs/small-objects.md#results-on-the-real-dev-set).
SMALL_OBJECT_STEPS = 1600
# The --max_train_secs of the small-object command: the training loop's share of the 20
# minutes (start-up and the final evaluation take the rest, about 40 s on 2 cores). Where
# SMALL_OBJECT_STEPS take longer, the run stops there, before its decay ends: as good on the
# dev set as a decay fitted to the budget (--fit_schedule_to_budget;
# docs/small-objects.md#a-budget-fitted-to-the-schedule).
SMALL_OBJECT_BUDGET_SECS = 1140
# Where boxes are lost (`loss_reasons`), in the order the reasons are tried.
LOSS_REASONS = ('input too small', 'no anchor shape', 'map too coarse')
# Aspect ratio buckets on w / h (relative units, as the network sees the warped image).
ASPECT_EDGES = (1. / 3, 1. / 2, 4. / 5, 5. / 4, 2., 3.)
ASPECT_NAMES = ('<1:3', '1:3-1:2', '1:2-4:5', '4:5-5:4', '5:4-2:1', '2:1-3:1', '>3:1')
# A feature map is named as serving a bucket when it holds the best anchor of at least this
# share of the bucket's boxes.
SERVING_SHARE = 0.1

Bucket = collections.namedtuple('Bucket', ['count', 'covered', 'feature_maps'])
Bucket.__doc__ = ("One bucket of a coverage report: `count` boxes, `covered` share in [0, 1] "
                  "(nan when empty), `feature_maps` the layers holding the best anchors, most "
                  "used first.")


def valid_boxes(gt_boxes):
    """`gt_boxes` `[N, 4]` yxyx relative as float64, keeping boxes of positive finite size;
    ValueError when the last dimension is not 4."""
    b = np.asarray(gt_boxes, dtype=np.float64)
    if b.size == 0:
        return b.reshape(0, 4)
    if b.ndim != 2 or b.shape[1] != 4:
        raise ValueError(f"gt_boxes must be [N, 4] ([ymin, xmin, ymax, xmax]), got shape "
                         f"{b.shape}")
    ok = np.all(np.isfinite(b), axis=1) & (b[:, 2] > b[:, 0]) & (b[:, 3] > b[:, 1])
    return b[ok]


def sample_boxes(gt_boxes, max_boxes=MAX_BOXES, seed=0):
    """`(boxes, total)`: the valid boxes of `gt_boxes` (`valid_boxes`), at most `max_boxes`
    of them drawn without replacement with `seed` (the order kept), and how many there were."""
    b = valid_boxes(gt_boxes)
    total = b.shape[0]
    if total > max_boxes:
        keep = np.sort(np.random.default_rng(seed).choice(total, max_boxes, replace=False))
        b = b[keep]
    return b, total


def _grid(values):
    return np.asarray(values, dtype=np.float64).reshape(-1)


def best_iou_per_layer(gt_boxes, anchors):
    """The best anchor IoU of each box on each layer: `gt_boxes` `[N, 4]` yxyx relative
    (valid boxes), `anchors` the layers `(y [H, W, 1], x [H, W, 1], h [A], w [A])` (a
    separable grid, as `ssd_tf.anchors` makes). Returns `[N, L]` float64."""
    b = np.asarray(gt_boxes, dtype=np.float64)
    cy, cx = (b[:, 0] + b[:, 2]) / 2., (b[:, 1] + b[:, 3]) / 2.
    out = np.zeros((b.shape[0], len(anchors)), np.float64)
    if b.shape[0] == 0:
        return out
    for i, (y, x, h, w) in enumerate(anchors):
        ys, xs = _grid(np.asarray(y)[:, 0, 0]), _grid(np.asarray(x)[0, :, 0])
        ny = ys[_nearest(ys, cy)]
        nx = xs[_nearest(xs, cx)]
        # The box in the frame of its nearest centre, against the shapes centred at 0.
        moved = b - np.stack([ny, nx, ny, nx], axis=-1)
        h, w = _grid(h), _grid(w)
        shapes = np.stack([-h / 2., -w / 2., h / 2., w / 2.], axis=-1)  # [A, 4]
        out[:, i] = boxes_lib.iou(moved, shapes).numpy().max(axis=1)
    return out


def _nearest(grid, values):
    """Index of the element of the sorted 1-D `grid` nearest to each of `values`."""
    i = np.clip(np.searchsorted(grid, values), 1, max(len(grid) - 1, 1))
    if len(grid) == 1:
        return np.zeros(values.shape, np.int64)
    left_closer = np.abs(values - grid[i - 1]) <= np.abs(grid[i] - values)
    return np.where(left_closer, i - 1, i)


def aspect_bucket(gt_boxes):
    """Aspect bucket index (into `ASPECT_NAMES`) of each box `[N, 4]`: w / h vs
    `ASPECT_EDGES`."""
    b = np.asarray(gt_boxes, dtype=np.float64).reshape(-1, 4)
    return np.searchsorted(ASPECT_EDGES, (b[:, 3] - b[:, 1]) / (b[:, 2] - b[:, 0]),
                           side='right')


@dataclasses.dataclass
class AnchorCoverage:
    """A coverage report (`anchor_coverage`). `fraction`: share of the boxes whose best anchor
    IoU >= `matching_threshold` (nan without boxes); `by_size` / `by_aspect`: bucket name ->
    `Bucket(count, covered, feature_maps)`; `by_feature_map`: layer -> share of the boxes
    whose best anchor is there. `num_boxes` boxes were measured out of `total_boxes`."""
    fraction: float
    matching_threshold: float
    by_size: dict
    by_aspect: dict
    by_feature_map: dict
    num_boxes: int
    total_boxes: int
    model_name: str = None
    anchors: str = 'default'
    small_object_network: str = None
    # size bucket -> {reason: boxes lost for it} (`loss_reasons`), when measured
    lost_by_size: dict = None
    # (H, W) input of `small_object_network`, and how many of the boxes would still be under
    # MIN_INPUT_PIXELS at that input (for `recommended_command`), when known
    small_object_input: tuple = None
    too_small_for_small_network: int = None

    @property
    def sampled(self):
        return self.num_boxes < self.total_boxes

    def uncovered_sizes(self, below=WARN_COVERAGE):
        """Size buckets (names) holding boxes whose covered share is under `below`."""
        return [k for k, v in self.by_size.items() if v.count and v.covered < below]

    @property
    def small_share(self):
        """Share of the boxes in the small-object buckets (the first `SMALL_BUCKETS`, under
        16 % of the side); nan without boxes."""
        if not self.num_boxes:
            return float('nan')
        names = boxes_lib.SIZE_NAMES[:SMALL_BUCKETS]
        return sum(self.by_size[n].count for n in names if n in self.by_size) / self.num_boxes

    def recommended_command(self):
        """When most boxes are small (`small_share` >= 0.5) and a small-object network is
        known: the one `train_ssd.py` command for such data (that network, whose input size
        comes with it, anchors fitted to the boxes, class-balanced loss weights, the steps of
        a 20-minute budget and that budget, and the test-time flip, which its report and every
        later command use), else ''.
        The data flags are the user's own (written as a placeholder)."""
        if not self.small_object_network or not self.num_boxes or self.small_share < 0.5:
            return ''
        text = (f"python train_ssd.py --model_name={self.small_object_network} --anchors=auto "
                f"--class_balance={SMALL_OBJECT_CLASS_BALANCE:g} "
                f"--max_number_of_steps={SMALL_OBJECT_STEPS} "
                f"--max_train_secs={SMALL_OBJECT_BUDGET_SECS} --test_time_flip "
                f"<your --dataset_name/--dataset_dir flags>")
        if self.small_object_input:
            h, w = self.small_object_input
            text += f" (input {h}x{w}, fixed by {self.small_object_network})"
            if self.too_small_for_small_network:
                text += (f"; {self.too_small_for_small_network} boxes stay under "
                         f"{MIN_INPUT_PIXELS} px even at that input")
        return text

    def warning(self):
        """The warning text when coverage is under `WARN_COVERAGE`, else ''."""
        if not self.num_boxes or self.fraction >= WARN_COVERAGE:
            return ''
        parts = [f"{k} of the side ({self.by_size[k].count} boxes, "
                 f"{100 * self.by_size[k].covered:.0f}% covered)"
                 for k in self.uncovered_sizes()]
        remedies = []
        if self.anchors != 'auto':
            remedies.append("--anchors=auto (anchors fitted to these boxes)")
        small = [k for k in self.uncovered_sizes() if boxes_lib.SIZE_NAMES.index(k) < SMALL_BUCKETS]
        if small and self.small_object_network and \
                self.small_object_network != self.model_name:
            remedies.append(f"--model_name={self.small_object_network} (a finer first "
                            f"feature map for small objects)")
        text = (f"WARNING: only {100 * self.fraction:.1f}% of the ground-truth boxes have an "
                f"anchor with IoU >= {self.matching_threshold:g} (under "
                f"{100 * WARN_COVERAGE:.0f}%); uncovered sizes: {', '.join(parts) or 'none'}. "
                f"Those boxes are only matched by the forced best-anchor step, with a poor "
                f"anchor, and are detected badly.")
        if not remedies:  # fitted already, no small-object network to suggest
            remedies.append("a network with a finer first feature map or a larger input "
                            "(--model_name)")
        text += " Remedy: " + ' or '.join(remedies) + '.'
        command = self.recommended_command()
        if command and not (self.model_name == self.small_object_network and
                            self.anchors == 'auto'):
            text += (f" {100 * self.small_share:.0f}% of the boxes are under 16% of the image "
                     f"side; the small-object command: {command}")
        return text

    def format(self):
        """A readable table (overall, by size, by aspect) followed by the warning, if any."""
        lines = [f"anchor coverage of {self.model_name or 'the network'} ({self.anchors} "
                 f"anchors): {100 * self.fraction:.1f}% of {self.num_boxes} ground-truth "
                 f"boxes have an anchor with IoU >= {self.matching_threshold:g}"]
        if self.sampled:
            lines[0] += f" (a seeded sample of {self.num_boxes} of {self.total_boxes} boxes)"
        for title, table in (('box side (% of image side)', self.by_size),
                             ('aspect w/h', self.by_aspect)):
            lines.append(f"  {title:<27} {'boxes':>7} {'covered':>8}  feature maps")
            for name, v in table.items():
                if v.count:
                    lines.append(f"  {name:<27} {v.count:>7} {100 * v.covered:>7.1f}%  "
                                 f"{', '.join(v.feature_maps)}")
        lines += self.format_losses()
        warning = self.warning()
        if warning:
            lines.append(warning)
        return '\n'.join(lines)

    def format_losses(self):
        """Lines of the table of where boxes are lost, per size bucket (none when no box is
        lost or the reasons were not measured)."""
        if not self.lost_by_size or not any(sum(v.values()) for v in self.lost_by_size.values()):
            return []
        lines = [f"  boxes lost, by size          {'input too small':>15} {'no anchor shape':>15} "
                 f"{'map too coarse':>15}"]
        for name, v in self.lost_by_size.items():
            if sum(v.values()):
                lines.append(f"  {name:<27} " + ' '.join(f'{v[r]:>15}' for r in LOSS_REASONS))
        return lines

    def to_dict(self):
        """JSON-able dict (buckets as `{count, covered, feature_maps}`; nan as None)."""
        def num(x):
            return None if x is None or not np.isfinite(x) else round(float(x), 4)

        def table(t):
            return {k: {'count': int(v.count), 'covered': num(v.covered),
                        'feature_maps': list(v.feature_maps)} for k, v in t.items()}
        return {'fraction': num(self.fraction), 'matching_threshold': self.matching_threshold,
                'by_size': table(self.by_size), 'by_aspect': table(self.by_aspect),
                'by_feature_map': {k: num(v) for k, v in self.by_feature_map.items()},
                'num_boxes': int(self.num_boxes), 'total_boxes': int(self.total_boxes),
                'model_name': self.model_name, 'anchors': self.anchors,
                'uncovered_sizes': self.uncovered_sizes(),
                'lost_by_size': self.lost_by_size}


def _buckets(index, names, covered, layer, layer_names):
    out = {}
    for i, name in enumerate(names):
        sel = index == i
        n = int(sel.sum())
        counts = np.bincount(layer[sel], minlength=len(layer_names))
        order = [j for j in np.argsort(-counts, kind='stable')
                 if n and counts[j] >= SERVING_SHARE * n]
        out[name] = Bucket(n, float(covered[sel].mean()) if n else float('nan'),
                           tuple(layer_names[j] for j in order))
    return out


def coverage_from_best(best, gt_boxes, layer_names, matching_threshold=0.5, total_boxes=None,
                       **info):
    """The report from `best_iou_per_layer`'s `[N, L]` matrix of the boxes `[N, 4]`;
    `info`: `model_name`, `anchors`, `small_object_network` (see `AnchorCoverage`)."""
    best = np.asarray(best, np.float64).reshape(-1, len(layer_names))
    n = best.shape[0]
    top = best.max(axis=1) if n else np.zeros([0])
    layer = best.argmax(axis=1) if n else np.zeros([0], np.int64)
    covered = top >= matching_threshold
    return AnchorCoverage(
        fraction=float(covered.mean()) if n else float('nan'),
        matching_threshold=float(matching_threshold),
        by_size=_buckets(boxes_lib.size_bucket(gt_boxes), boxes_lib.SIZE_NAMES, covered, layer, layer_names),
        by_aspect=_buckets(aspect_bucket(gt_boxes), ASPECT_NAMES, covered, layer, layer_names),
        by_feature_map={name: float((layer == j).mean()) if n else float('nan')
                        for j, name in enumerate(layer_names)},
        num_boxes=n, total_boxes=n if total_boxes is None else int(total_boxes), **info)


def anchor_coverage(gt_boxes, net, matching_threshold=0.5, max_boxes=MAX_BOXES, seed=0,
                    anchors=None, small_object_network=None, small_object_input=None):
    """Coverage of the ground-truth boxes `gt_boxes` (`[N, 4]` yxyx relative, numpy) by the
    anchors of `net` (an `SSDNet`). Boxes of zero or negative size are left out; beyond
    `max_boxes` a sample drawn with `seed` is measured. `anchors`: 'default' or 'auto'
    (default: 'auto' when `net`'s anchors are explicit, fitted ones), for the report's text;
    `small_object_network`: a model name the warning suggests (`small_object_network_name`);
    `small_object_input`: its input `(H, W)`, for `AnchorCoverage.recommended_command`.
    Returns an `AnchorCoverage`."""
    from ssd_tf import anchors as anchors_lib
    b, total = sample_boxes(gt_boxes, max_boxes, seed)
    if anchors is None:
        anchors = 'auto' if any(anchors_lib.is_explicit(s)
                                for s in net.params.anchor_sizes) else 'default'
    layers = net.anchors()
    best = best_iou_per_layer(b, layers)
    report = coverage_from_best(best, b, list(net.params.feat_layers), matching_threshold,
                                total_boxes=total, model_name=net.model_name, anchors=anchors,
                                small_object_network=small_object_network)
    report.lost_by_size = losses_by_size(
        loss_reasons(b, layers, net.params.img_shape, matching_threshold, best), b)
    if small_object_input is not None:
        h, w = (int(v) for v in small_object_input[:2])
        report.small_object_input = (h, w)
        side_px = np.sqrt((b[:, 2] - b[:, 0]) * h * (b[:, 3] - b[:, 1]) * w)
        report.too_small_for_small_network = int((side_px < MIN_INPUT_PIXELS).sum())
    return report


def best_shape_iou(gt_boxes, anchors):
    """The best IoU of each box `[N, 4]` with any anchor shape of any layer centred exactly on
    it (no grid): what the anchor shapes could reach with an infinitely fine grid. `[N]`."""
    b = np.asarray(gt_boxes, dtype=np.float64).reshape(-1, 4)
    out = np.zeros(b.shape[0], np.float64)
    if b.shape[0] == 0:
        return out
    cy, cx = (b[:, 0] + b[:, 2]) / 2., (b[:, 1] + b[:, 3]) / 2.
    centred = b - np.stack([cy, cx, cy, cx], axis=-1)
    for _, _, h, w in anchors:
        h, w = _grid(h), _grid(w)
        shapes = np.stack([-h / 2., -w / 2., h / 2., w / 2.], axis=-1)
        out = np.maximum(out, boxes_lib.iou(centred, shapes).numpy().max(axis=1))
    return out


def loss_reasons(gt_boxes, anchors, img_shape, matching_threshold=0.5, best=None,
                 min_input_pixels=MIN_INPUT_PIXELS):
    """Why each box `[N, 4]` (yxyx relative) is lost, or '' when it is not: the first of
    `LOSS_REASONS` that holds.

    - 'input too small': its side at the network input (`img_shape` (H, W) pixels),
      sqrt(h H * w W), is under `min_input_pixels`: too few pixels for any feature, whatever
      the anchors (a larger input, or tiles of the image, would help);
    - 'no anchor shape': not covered (best anchor IoU < `matching_threshold`), and no anchor
      shape of any layer reaches the threshold even centred exactly on the box
      (`best_shape_iou`): the sizes / aspect ratios do not fit (`--anchors=auto` fits them);
    - 'map too coarse': not covered, although a shape centred on the box would reach the
      threshold: the grid step of the layers is too large, the nearest anchor centre too far
      from the box centre (a finer feature map helps).
    A covered box of at least `min_input_pixels` is not lost. `anchors`: the layers as
    `best_iou_per_layer` takes them; `best`: its `[N, L]` result, if already computed.
    Returns a list of N strings.
    """
    b = np.asarray(gt_boxes, dtype=np.float64).reshape(-1, 4)
    if best is None:
        best = best_iou_per_layer(b, anchors)
    covered = np.asarray(best).reshape(b.shape[0], -1).max(axis=1, initial=0.) >= \
        matching_threshold
    height, width = (float(v) for v in img_shape[:2])
    side_px = np.sqrt((b[:, 2] - b[:, 0]) * height * (b[:, 3] - b[:, 1]) * width)
    shape_fits = best_shape_iou(b, anchors) >= matching_threshold
    out = []
    for i in range(b.shape[0]):
        if side_px[i] < min_input_pixels:
            out.append(LOSS_REASONS[0])
        elif covered[i]:
            out.append('')
        else:
            out.append(LOSS_REASONS[2] if shape_fits[i] else LOSS_REASONS[1])
    return out


def losses_by_size(reasons, gt_boxes):
    """{size bucket name: {reason: boxes lost for it}} from `loss_reasons(gt_boxes, ..)`."""
    idx = boxes_lib.size_bucket(gt_boxes)
    out = {name: dict.fromkeys(LOSS_REASONS, 0) for name in boxes_lib.SIZE_NAMES}
    for i, reason in zip(idx, reasons):
        if reason:
            out[boxes_lib.SIZE_NAMES[i]][reason] += 1
    return out


def small_object_network_name(networks_map):
    """The registered model name whose class has `small_objects = True` (the configuration
    for small objects), or None; `networks_map` is `nets.nets_factory.networks_map`."""
    names = [k for k, v in networks_map.items() if getattr(v, 'small_objects', False)]
    return sorted(names)[0] if names else None


def small_object_setup(networks_map):
    """The `anchor_coverage` keywords that let its warning name the small-object command:
    `{'small_object_network': name or None, 'small_object_input': (H, W) or None}`, the
    network found by `small_object_network_name` and its fixed input (its class's
    `default_params.img_shape`). The one place the programs (train_ssd.py, ssd-anchors,
    ssd-check-data) take them from, so that their warnings agree."""
    name = small_object_network_name(networks_map)
    params = getattr(networks_map[name], 'default_params', None) if name else None
    shape = getattr(params, 'img_shape', None)
    return {'small_object_network': name,
            'small_object_input': tuple(int(v) for v in shape) if shape else None}


# ---------------------------------------------------------------------------- boxes of data
def boxes_of_records(records):
    """All ground-truth boxes `[N, 4]` (yxyx relative, float32) of reader `Record`s."""
    parts = [np.asarray(r.boxes, np.float32).reshape(-1, 4) for r in records]
    return np.concatenate(parts) if parts else np.zeros([0, 4], np.float32)


def boxes_of_tfrecords(pattern, max_records=None):
    """The boxes `[N, 4]` of TFRecord files (`pattern` a file pattern or list), streamed:
    only the box features are parsed, images are never decoded; records that do not parse or
    whose four coordinate lists differ in length are left out (the data check reports them).
    At most `max_records` records are read (None: all). Returns `(boxes, records_read)`."""
    import tensorflow as tf
    from ssd_tf import tfdata_options
    from ssd_tf.datasets import tfrecord as tfrecord_lib
    keys = ['image/object/bbox/' + k for k in ('ymin', 'xmin', 'ymax', 'xmax')]
    features = {k: tf.io.VarLenFeature(tf.float32) for k in keys}

    def parse(serialized):
        f = tf.io.parse_single_example(serialized, features)
        cols = [f[k].values for k in keys]
        n = tf.size(cols[0])
        same = tf.reduce_all([tf.equal(tf.size(c), n) for c in cols])
        n = tf.where(same, n, 0)
        return tf.stack([c[:n] for c in cols], axis=-1)

    ds = tf.data.TFRecordDataset(tfrecord_lib.match_files(pattern))
    if max_records is not None:
        ds = ds.take(int(max_records))
    ds = ds.map(parse).ignore_errors()
    parts, n = [], 0
    for b in tfdata_options.configure(ds.prefetch(64)).as_numpy_iterator():
        parts.append(b)
        n += 1
    return (np.concatenate(parts) if parts else np.zeros([0, 4], np.float32)), n


def training_boxes(dataset_name, dataset_dir, split, label_map=None, num_images=1000, seed=0,
                   max_records=None, tfds_data_dir=None):
    """The ground-truth boxes of a data set split (factory names; TFRecord and tfds streamed,
    at most `max_records` examples) for a coverage report: `(boxes [N, 4], number of images
    read)`. The slim names (pascalvoc_2007, ...) mean what `factory.resolve_slim_name` says."""
    from ssd_tf.datasets import factory
    dataset_name, dataset_dir = factory.resolve_slim_name(dataset_name, dataset_dir, split) \
        if dataset_name in factory.SLIM_VOC_NAMES else (dataset_name, dataset_dir)
    if dataset_name == 'tfrecord':
        return boxes_of_tfrecords(dataset_dir, max_records=max_records)
    if dataset_name == 'tfds':  # dataset_dir: the tfds name, e.g. voc/2007
        from ssd_tf.datasets import tfds as tfds_lib
        return tfds_lib.TfdsSource(dataset_dir, split, tfds_data_dir).boxes(max_records)
    records, _, _ = factory.load_records(dataset_name, dataset_dir, split, label_map=label_map,
                                         num_images=num_images, seed=seed, check_images=False)
    return boxes_of_records(records), len(records)


if __name__ == '__main__':
    # The command is ssd_tf.cli.anchors,
    # run without importing it (the library imports no program).
    import runpy
    runpy.run_module('ssd_tf.cli.anchors', run_name='__main__', alter_sys=True)
