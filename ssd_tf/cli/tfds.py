"""The tfds preparation command (`ssd-tfds`, `python -m ssd_tf.datasets.tfds`): downloads and
prepares a tensorflow-datasets data set for `--dataset_name=tfds`, on the user's explicit
request (`ssd_tf.datasets.tfds` itself never downloads).

    python -m ssd_tf.datasets.tfds voc/2007 --data_dir /data/tfds
"""
import argparse
import sys

from ssd_tf.datasets import tfds as tfds_lib


def main(argv=None):
    """Downloads and prepares a tfds data set (the user's explicit request)."""
    p = argparse.ArgumentParser(description="Download and prepare a tensorflow-datasets data "
                                            "set for --dataset_name=tfds.")
    p.add_argument('name', help='tfds name, e.g. voc/2007, coco/2017 (optionally :version)')
    p.add_argument('--data_dir', default=None,
                   help='where to keep it (default: $TFDS_DATA_DIR, else ~/tensorflow_datasets)')
    args = p.parse_args(argv)
    try:
        builder = tfds_lib.prepare_builder(args.name, args.data_dir)
    except (ValueError, ImportError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    builder.download_and_prepare()
    splits = {k: v.num_examples for k, v in builder.info.splits.items()}
    print(f"{args.name} prepared in {tfds_lib.data_dir_in_use(args.data_dir)}: splits "
          f"{splits}")
    return 0


if __name__ == '__main__':
    sys.exit(main())
