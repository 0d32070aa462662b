"""How often the SSD paper chain's patch sampling crops, and how far it zooms in, on a data
set's boxes: `--patch_overlap=iou` (the paper's) against `coverage`, on the same random draws.

    python bench/patch_sampling.py --dataset_dir /tmp/small_devset [--split train] \
        [--images 100] [--draws 10]

For each of the first `--images` images of the split and `--draws` seeds it samples one patch
as `preprocess_for_train` does without zoom-out (`--expand_max_ratio=1`, the choice for small
objects) and reports the share of samples that are the whole image and the zoom of the patch
(image side / patch side, sqrt of the areas): 1 for the whole image. No image is read: the
sampling depends on the boxes only. Not a timing; the machine line is printed for the record.
"""
import argparse
import os
import statistics
import sys

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from bench.machine import machine_info, print_table  # noqa: E402


def zooms(records, overlap, draws):
    """Zoom of every sampled patch `[len(records) * draws]` (1: the whole image)."""
    import numpy as np
    import tensorflow as tf
    from preprocessing import ssd_vgg_preprocessing as prep
    out = []
    for i, record in enumerate(records):
        boxes = np.asarray(record.boxes, np.float32).reshape(-1, 4)
        for d in range(draws):
            seeds = [tf.constant([i, 4 * d + j], tf.int64) for j in range(4)]
            patch = prep._sample_patch(boxes, tf.constant([0., 0., 1., 1.]), seeds,
                                       overlap).numpy()
            out.append(1. / float(np.sqrt((patch[2] - patch[0]) * (patch[3] - patch[1]))))
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--dataset_dir', required=True, help='a VOC root')
    parser.add_argument('--split', default='train')
    parser.add_argument('--images', type=int, default=100)
    parser.add_argument('--draws', type=int, default=10, help='patches sampled per image')
    args = parser.parse_args()
    import numpy as np
    from preprocessing import ssd_vgg_preprocessing as prep
    from ssd_tf import anchors_report
    from ssd_tf.datasets import small_devset
    from ssd_tf.datasets import voc
    records, _ = voc.read_voc(args.dataset_dir, split=args.split, check_images=False)
    records = records[:args.images]
    side = float(np.median(small_devset.box_sides(anchors_report.boxes_of_records(records))))
    print(machine_info())
    print(f"{args.dataset_dir} ({args.split}): {len(records)} images x {args.draws} draws, "
          f"no zoom-out; median box side {100 * side:.1f}% of the image side")
    rows = []
    for overlap in prep.PATCH_OVERLAPS:
        z = zooms(records, overlap, args.draws)
        rows.append([overlap, f"{sum(v < 1. + 1e-6 for v in z) / len(z):.3f}",
                     f"{statistics.median(z):.2f}", f"{statistics.mean(z):.2f}",
                     f"{max(z):.2f}"])
    print_table(['--patch_overlap', 'whole image', 'median zoom', 'mean zoom', 'max zoom'],
                rows)


if __name__ == '__main__':
    main()
