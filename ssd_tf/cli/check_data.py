"""The data check command (`ssd-check-data`, `python -m ssd_tf.datasets.check`): scans a data
set before training and prints what the input pipeline would skip or drop.

    python -m ssd_tf.datasets.check --dataset_name tfrecord --dataset_dir 'x_*.tfrecord' \
        [--num_classes C] [--label_map labels.txt] [--strict_data]
    python -m ssd_tf.datasets.check --dataset_name voc --dataset_dir VOC2007 --split test \
        [--model_name ssd_small]

TFRecords are checked with the training pipeline's own graph checks
(`ssd_tf.data.check_tfrecords`: `tfrecord.check_example`, then a decode of every image);
voc/coco/synthetic with their readers' `DataReport`. With `--model_name` the report ends with
the anchor coverage of the boxes by that network (`ssd_tf.anchors_report`). Exit code 0, or 1
with `--strict_data` when a problem was found (2 for unusable flags or files).
"""
import argparse
import logging
import sys

from nets import nets_factory
from ssd_tf import anchors_report
from ssd_tf.data import check_tfrecords
from ssd_tf.datasets import factory


def _coverage_text(args, records):
    """The anchor coverage report of the checked boxes (`records`, or the TFRecord files of
    `args.dataset_dir` streamed, at most `anchors_report.MAX_SCAN_RECORDS`) by
    `--model_name`."""
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
        **anchors_report.small_object_setup(nets_factory.networks_map)).format()


def main(argv=None):
    """The command line (see the module docstring); returns the exit code."""
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
