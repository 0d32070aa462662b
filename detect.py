"""Runs an exported or trained SSD on image files: annotated PNGs and detections.json.

  python detect.py --model=/tmp/serving/ssd/1 --images=photos/ --output_dir=/tmp/det
  python detect.py --model=/tmp/serving/ssd/1/tflite/model_int8.tflite --images=a.jpg
  python detect.py --model=runs/ssd_small_synthetic --images=a.jpg,b.png

--model: a SavedModel directory, a `.tflite` file, a training directory / checkpoint prefix,
or an original slim SSD checkpoint with --model_name and --num_classes (`ssd_tf.builder`).
Output names, skipped images and the JSON format: see `ssd_tf/detect.py`
(`python -m ssd_tf.detect` and the console command `ssd-detect` run this script).
"""
from ssd_tf import quiet  # noqa: F401  first: quiets TensorFlow in the programs (ssd_tf.quiet)
from absl import app
from absl import flags

from ssd_tf.cli import flags as shared_flags

flags.DEFINE_string('model', None, 'SavedModel dir, .tflite file, or training dir / '
                    'checkpoint prefix.')
flags.DEFINE_list('images', None, 'Image files and/or folders.')
flags.DEFINE_string('output_dir', 'detections', 'Where PNGs and detections.json go (may be an '
                    'input folder: inputs are never overwritten).')
flags.DEFINE_float('score_threshold', 0.3, 'Minimum score of a reported detection.')
shared_flags.define_model_flags(flags, extra={  # --model_name, --num_classes, --label_map
    'label_map': "For a .tflite file: else the names embedded in it."})
shared_flags.define_tiling_flags(flags, extra="For a checkpoint (training directory).")
shared_flags.define_test_time_flip_flag(flags, extra=(
    "For a checkpoint (training directory); a SavedModel flips as it was exported."))
flags.DEFINE_integer('max_image_pixels', None, 'Images larger than this (width x height, read '
                     'from the header before decoding) are skipped; default '
                     'ssd_tf.images.DEFAULT_MAX_PIXELS (200 MP); 0: no limit.')
flags.mark_flags_as_required(['model', 'images'])
FLAGS = flags.FLAGS


def main(argv):
    del argv
    from ssd_tf import detect
    from ssd_tf import images
    max_pixels = images.DEFAULT_MAX_PIXELS if FLAGS.max_image_pixels is None else \
        FLAGS.max_image_pixels or None
    try:
        detect.check_output_dir(FLAGS.output_dir)  # before the model loads
        fn, labels = detect.make_detector(
            FLAGS.model, FLAGS.model_name, FLAGS.num_classes, FLAGS.label_map,
            tiles=shared_flags.tiles_from_flags(FLAGS.tiles, FLAGS.tile_overlap,
                                                FLAGS.tile_max_box),
            test_time_flip=FLAGS.test_time_flip)
        results = detect.run(fn, detect.list_images(FLAGS.images), FLAGS.output_dir, labels,
                             FLAGS.score_threshold, max_pixels)
    except (ValueError, FileNotFoundError) as err:
        raise SystemExit(f"detect.py: error: {err}")
    print(detect.summary(results, FLAGS.output_dir, FLAGS.score_threshold))


def run_main():
    app.run(main)


if __name__ == '__main__':
    run_main()
