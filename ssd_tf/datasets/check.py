"""The report of bad input data (`DataProblems`): what the input pipeline skipped or dropped.

The command that scans a data set before training and prints it is `ssd_tf.cli.check_data`
(`ssd-check-data`; `python -m ssd_tf.datasets.check` hands over to it).
"""
import collections
import logging
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


if __name__ == '__main__':
    # The command is ssd_tf.cli.check_data,
    # run without importing it (the library imports no program).
    import runpy
    runpy.run_module('ssd_tf.cli.check_data', run_name='__main__', alter_sys=True)
