"""The report of bad TFRecord data (`DataProblems`) and the command that scans a data set
before training and prints it.

    python -m ssd_tf.datasets.check --dataset_name tfrecord --dataset_dir 'x_*.tfrecord' \
        [--num_classes C] [--label_map labels.txt] [--strict_data]
    python -m ssd_tf.datasets.check --dataset_name voc --dataset_dir VOC2007 --split test \
        [--model_name ssd_small]

TFRecords are checked with the training pipeline's own graph checks
(`tfrecord.check_example`, then a decode of every image); voc/coco/synthetic with their
readers' `DataReport`. With `--model_name` the report ends with the anchor coverage of the
boxes by that network (`ssd_tf.anchors_report`). Exit code 0, or 1 with `--strict_data` when a problem was found
(2 for unusable flags or files).
"""
import argparse
import collections
import logging
import sys
import threading

import tensorflow as tf

from ssd_tf.datasets import records as records_lib
from ssd_tf.datasets import tfrecord as tfrecord_lib

logger = logging.getLogger(__name__)

# Locations kept per kind of problem (the counts are complete).
_EXAMPLES_PER_KIND = 5


class DataProblems:
    """Counts of the records skipped and boxes dropped by the input pipeline, per kind of
    problem, with the first few locations ('<shard> record <index>') of each.

    Thread-safe; `build_dataset(..., report=problems)` fills it while the data is read. In
    strict mode the first problem raises `records.DataError` (inside tf.data it surfaces as
    an OpError; `strict_error` keeps the clear message).
    """

    def __init__(self, strict=False, examples_per_kind=_EXAMPLES_PER_KIND):
        self.strict = bool(strict)
        self.examples_per_kind = int(examples_per_kind)
        self.skipped = collections.Counter()        # record-level kind -> count
        self.dropped_boxes = collections.Counter()  # box-level kind -> count
        self.examples = collections.defaultdict(list)  # kind -> ['location: detail', ...]
        self.strict_error = None
        self._lock = threading.Lock()

    def add(self, location, kind, detail, whole_record=True):
        """Counts one skipped record (or, with `whole_record=False`, one dropped box) and
        warns naming `location`; raises DataError in strict mode."""
        what = 'skipped record' if whole_record else 'dropped box'
        msg = f"{location}: {detail}"
        with self._lock:
            (self.skipped if whole_record else self.dropped_boxes)[kind] += 1
            if len(self.examples[kind]) < self.examples_per_kind:
                self.examples[kind].append(msg)
            if self.strict and self.strict_error is None:
                self.strict_error = (f"bad input data: {msg} ({what}; --strict_data stops at "
                                     f"the first problem: fix or drop the record, or run "
                                     f"without --strict_data to skip and count bad records)")
        if self.strict:
            raise records_lib.DataError(self.strict_error)
        logger.warning("%s %s", what, msg)

    @property
    def num_skipped(self):
        return sum(self.skipped.values())

    @property
    def num_dropped_boxes(self):
        return sum(self.dropped_boxes.values())

    def __bool__(self):
        return bool(self.num_skipped or self.num_dropped_boxes)

    def summary(self):
        """Human-readable table: totals, then per kind its count and first locations."""
        lines = [f"data problems: {self.num_skipped} records skipped, "
                 f"{self.num_dropped_boxes} boxes dropped"]
        for counter, what in ((self.skipped, 'records skipped'),
                              (self.dropped_boxes, 'boxes dropped')):
            for kind, n in sorted(counter.items()):
                lines.append(f"  {kind}: {n} {what}")
                lines += [f"    {e}" for e in self.examples[kind]]
        if self.skipped[tfrecord_lib.BOX_OUTSIDE] and any(
                'pixel coordinates' in e for e in self.examples[tfrecord_lib.BOX_OUTSIDE]):
            lines.append("  the data looks written in pixel coordinates: TFRecord boxes must be "
                         "relative [ymin, xmin, ymax, xmax] in [0, 1]; re-convert the shards "
                         "with python -m ssd_tf.datasets.convert")
        return '\n'.join(lines)

    def write_summary(self, step, writer=None):
        """Writes the counts (scalars `data/records_skipped`, `data/boxes_dropped`, one per
        kind) and the summary text (`data/problems`) to TensorBoard at `step`, into `writer`
        or the default summary writer."""
        def write():
            tf.summary.scalar('data/records_skipped', self.num_skipped, step=step)
            tf.summary.scalar('data/boxes_dropped', self.num_dropped_boxes, step=step)
            for counter in (self.skipped, self.dropped_boxes):
                for kind, n in counter.items():
                    tf.summary.scalar('data/' + kind.replace(' ', '_').replace('/', '_'), n,
                                      step=step)
            tf.summary.text('data/problems', self.summary(), step=step)

        if writer is None:
            write()
        else:
            with writer.as_default():
                write()

    def __repr__(self):
        return self.summary().splitlines()[0]


# ---------------------------------------------------------------------------- the command
def check_tfrecords(pattern, num_classes=None, strict=False, max_pixels=None, label_ids=None,
                    label_texts=None):
    """Scans every record of the TFRecord files matching `pattern` (a pattern or a list) with
    the training pipeline's checks and a decode of each image (`label_ids`: the dataset ids of
    a label map with gaps, see `data.build_dataset`); returns
    `(num_records, DataProblems)`. In strict mode the first problem raises DataError."""
    from ssd_tf import data as data_lib  # the pipeline's own check/load steps
    problems = DataProblems(strict=strict)
    ds = data_lib.checked_tfrecords(pattern, problems, num_classes=num_classes,
                                    max_pixels=max_pixels, label_ids=label_ids,
                                    label_texts=label_texts)
    n = 0
    try:
        for position, _ in ds:  # the last element is the end marker, at position = count
            n = int(position)
    except tf.errors.OpError:
        if problems.strict_error:
            raise records_lib.DataError(problems.strict_error) from None
        raise
    return n, problems


def _coverage_text(args, records):
    """The anchor coverage report of the checked boxes (`records`, or the TFRecord files of
    `args.dataset_dir` streamed, at most `anchors_report.MAX_SCAN_RECORDS`) by
    `--model_name`."""
    from nets import nets_factory  # the command wires the core to the networks
    from ssd_tf import anchors_report
    net = nets_factory.get_network(args.model_name)()
    if records is None:
        boxes, _ = anchors_report.boxes_of_tfrecords(
            args.dataset_dir, max_records=anchors_report.MAX_SCAN_RECORDS)
    else:
        boxes = anchors_report.boxes_of_records(records)
    if not len(anchors_report.valid_boxes(boxes)):
        return "anchor coverage: no ground-truth box"
    return anchors_report.anchor_coverage(
        boxes, net, args.matching_threshold,
        small_object_network=anchors_report.small_object_network_name(
            nets_factory.networks_map)).format()


def main(argv=None):
    from ssd_tf.datasets import factory
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--dataset_name', required=True, choices=factory.DATASET_NAMES + ('tfrecord',))
    p.add_argument('--dataset_dir', default='',
                   help="tfrecord: a file pattern (quote it); voc: root(s), comma-separated; "
                        "coco: folder with annotations/")
    p.add_argument('--split', default='train', help='voc/coco/synthetic: the split to check')
    p.add_argument('--num_classes', type=int, default=None,
                   help='classes including the background: labels must be in [1, C)')
    p.add_argument('--label_map', default=None,
                   help='labels.txt/json; for tfrecord default: labels.txt beside the shards, '
                        'else the records\' label_text')
    p.add_argument('--strict_data', action='store_true',
                   help='exit with code 1 when any problem is found')
    p.add_argument('--num_images', type=int, default=1000, help='synthetic: images to make')
    p.add_argument('--model_name', default=None,
                   help='also report the anchor coverage of the boxes by this network '
                        '(python -m ssd_tf.anchors_report for the details and --anchors auto)')
    p.add_argument('--matching_threshold', type=float, default=0.5,
                   help='with --model_name: the IoU an anchor needs to cover a box')
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format='%(levelname)s %(message)s')
    try:
        if args.dataset_name == 'tfrecord':
            label_problem = None
            try:
                label_map = factory.tfrecord_label_map(args.dataset_dir, args.label_map,
                                                       num_classes=args.num_classes)
            except ValueError as e:  # label texts that disagree: a problem of the data
                if args.label_map:
                    raise
                label_map, label_problem = None, f"label map: {e}"
            num_classes = args.num_classes
            if num_classes is None and label_map is not None:
                num_classes = label_map.num_classes
            if label_map is not None and label_map.mapping_description():
                print(label_map.mapping_description())
            n, problems = check_tfrecords(args.dataset_dir, num_classes=num_classes,
                                          label_ids=label_map.label_ids if label_map else None,
                                          label_texts=getattr(label_map, 'record_texts', None))
            print(f"{args.dataset_dir}: {n} records read, label map: "
                  f"{list(label_map.names) if label_map else 'none found'}, classes: "
                  f"{num_classes if num_classes is not None else 'not given (labels >= 1 only)'}")
            print(problems.summary())
            if label_problem:
                print(label_problem)
            found = bool(problems) or bool(label_problem)
            records = None
        else:
            records, _, report = factory.load_records_and_report(
                args.dataset_name, args.dataset_dir, args.split, label_map=args.label_map,
                num_images=args.num_images)
            print(report.summary() if hasattr(report, 'summary') else report)
            found = bool(getattr(report, 'skipped', None) or
                         getattr(report, 'dropped_boxes', None))
        if args.model_name:
            print(_coverage_text(args, records))
    except (OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 1 if found and args.strict_data else 0


if __name__ == '__main__':
    sys.exit(main())
