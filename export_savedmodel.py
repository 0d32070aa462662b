"""Exports a trained SSD as a TF Serving SavedModel (and optionally TFLite flatbuffers).

  python export_savedmodel.py --checkpoint_path=runs/ssd_small_synthetic \
      --output_dir=/tmp/serving/ssd --version=1 --tflite_quantization=float32,int8

Writes `output_dir/<version>/` (saved_model.pb, variables/, assets/labels.txt,
assets/labels_tflite.txt, assets/export_config.json) and, with --tflite or
--tflite_quantization, `output_dir/<version>/tflite/model_<variant>.tflite` beside the
SavedModel. The whole version (TFLite files included) is written to a staging directory in
--output_dir first and moved into place at the end, so with --overwrite a failure at any
point leaves the old version serving. Signatures, inputs and outputs: see
`ssd_tf/export/saved_model.py` and `ssd_tf/export/tflite.py`. --checkpoint_path takes what
`ssd_tf.builder.load_model` takes (a run, a checkpoint prefix, an original slim SSD
checkpoint with --model_name and --num_classes).
"""
from ssd_tf import quiet  # first: quiets TensorFlow in the programs (ssd_tf.quiet)
from absl import app
from absl import flags

from ssd_tf import postprocess
from ssd_tf.cli import flags as shared_flags

flags.DEFINE_string('checkpoint_path', None, 'Training directory or checkpoint prefix written '
                    'by train_ssd.py, or a slim TF1 checkpoint (with --model_name and '
                    '--num_classes).')
shared_flags.define_model_flags(flags)  # --model_name, --num_classes, --label_map
flags.DEFINE_string('output_dir', None, 'Model base directory (TF Serving --model_base_path).')
flags.DEFINE_integer('version', 1, 'Version subdirectory to write.')
flags.DEFINE_boolean('overwrite', False, 'Replace an existing version directory.')
shared_flags.define_detection_flags(flags)  # --select_threshold, --nms_threshold, --select_top_k
shared_flags.define_tiling_flags(flags, extra=(  # --tiles, --tile_overlap
    "Both serving signatures tile; recorded in export_config.json. The TFLite models detect "
    "the whole image: export them in a run without it."))
shared_flags.define_test_time_flip_flag(flags, extra=(
    "Both serving signatures flip; recorded in export_config.json. The TFLite models detect "
    "each image once: export them in a run without it."))
flags.DEFINE_integer('max_detections', postprocess.MAX_DETECTIONS, 'Detections per image.')
flags.DEFINE_integer('max_image_pixels', None, 'Largest image (width x height, read from its '
                     'header before decoding) a request may send; default '
                     'ssd_tf.images.DEFAULT_MAX_PIXELS, 200 MP: fits the largest camera frame '
                     '(200 MP phone sensors) and bounds one decoded image to 600 MB.')
flags.DEFINE_integer('max_batch_size', 64, 'Most images in one request.')
flags.DEFINE_enum('mixed_precision', None, ['mixed_bfloat16'],
                  'SavedModel only: run the network in bfloat16 (float32 variables, decode and '
                  'NMS in float32); about 2x faster on CPUs with AVX512_BF16/AMX, slower '
                  'elsewhere: refused on a machine without AVX512-BF16/AMX unless '
                  '--allow_slow_bfloat16.')
flags.DEFINE_boolean('allow_slow_bfloat16', False,
                     'Export --mixed_precision=mixed_bfloat16 even though this machine lacks '
                     'bfloat16 (e.g. for a serving machine that has it), with a warning.')
flags.DEFINE_boolean('tflite', False, 'Also write the float32 TFLite model.')
flags.DEFINE_list('tflite_quantization', [], 'TFLite variants to write: any of float32, '
                  'float16, dynamic, int8 (implies --tflite).')
flags.DEFINE_enum('tflite_postprocess', postprocess.TFLITE_POSTPROCESS,
                  list(postprocess.TFLITE_POSTPROCESS_OPTIONS),
                  'TFLite post-processing: builtin_nms (builtin ops, per-class NMS unrolled over '
                  'the classes) or detection_postprocess (the custom op '
                  'TFLite_Detection_PostProcess of the TF OD API mobile SSDs, in the default op '
                  'resolver); see README "Export and deployment" for the measured choice.')
flags.DEFINE_enum('tflite_metadata', 'auto', ['auto', 'on', 'off'],
                  'Embed TFLite metadata (labels, input/output descriptions: what MediaPipe '
                  'ObjectDetector / the TFLite Task Library need) with MediaPipe\'s metadata '
                  'writer: auto = when mediapipe is installed (pip install -e \'.[mobile]\'), '
                  'on = fail without it, off = never.')
flags.DEFINE_string('calibration_data', None, 'int8 calibration images: run (the run\'s '
                    'training data, from config.json), synthetic, voc:<dir>, coco:<dir>, '
                    'tfrecord:<file pattern> or tfds:<name>; default: run when its data is '
                    'there, else synthetic (the summary says which).')
flags.DEFINE_string('dataset_dir', None, 'Old spelling of --calibration_data=voc:<dir>.')
flags.DEFINE_string('dataset_split_name', 'train', 'Split of an explicit --calibration_data '
                    'or --dataset_dir (the run\'s own split for the default).')
flags.DEFINE_integer('num_calibration_images', 100, 'Images for int8 calibration.')
flags.mark_flags_as_required(['checkpoint_path', 'output_dir'])
FLAGS = flags.FLAGS


def calibration_images(img_shape):
    """uint8 [1, h, w, 3] images for int8 calibration and the line that says what they are
    (--calibration_data, the old --dataset_dir, else the run's data: ssd_tf.calibration)."""
    from ssd_tf import calibration
    from ssd_tf import run_config
    config = run_config.read_run_config(FLAGS.checkpoint_path)
    source = calibration.parse_spec(FLAGS.calibration_data, config, FLAGS.dataset_split_name,
                                    legacy_voc_dir=FLAGS.dataset_dir)
    reps = calibration.calibration_images(source, img_shape, FLAGS.num_calibration_images)
    return reps, source.describe(len(reps))


def main(argv):
    del argv
    import os
    from preprocessing import ssd_vgg_preprocessing as prep
    from ssd_tf import builder
    from ssd_tf import images
    from ssd_tf.export import saved_model as export
    from ssd_tf.export import tflite as export_tflite

    variants = list(FLAGS.tflite_quantization) or (['float32'] if FLAGS.tflite else [])
    tiles = shared_flags.tiles_from_flags(FLAGS.tiles, FLAGS.tile_overlap,
                                          FLAGS.tile_max_box)
    if tiles is not None and variants:
        raise ValueError(f"--tiles={FLAGS.tiles} applies to the SavedModel only (the TFLite "
                         f"models detect the whole image); export the TFLite models in a run "
                         f"without it")
    if FLAGS.test_time_flip and variants:
        raise ValueError("--test_time_flip applies to the SavedModel only (the TFLite models "
                         "detect each image once); export the TFLite models in a run without "
                         "it")
    if FLAGS.allow_slow_bfloat16 and FLAGS.mixed_precision != 'mixed_bfloat16':
        raise ValueError("--allow_slow_bfloat16 applies to --mixed_precision=mixed_bfloat16")
    if FLAGS.mixed_precision:
        if variants:
            raise ValueError("--mixed_precision applies to the SavedModel only; export the "
                             "TFLite models in a run without it")
        import sys
        import keras
        from ssd_tf import hardware
        note = hardware.check_bfloat16(f'--mixed_precision={FLAGS.mixed_precision}',
                                       FLAGS.allow_slow_bfloat16, what='the exported model')
        if note:
            print(note, file=sys.stderr)
        keras.mixed_precision.set_dtype_policy(FLAGS.mixed_precision)
    if variants:  # a missing mediapipe with --tflite_metadata=on fails before any work
        from ssd_tf import tflite_metadata
        tflite_metadata.resolve_mode(FLAGS.tflite_metadata)
    built = builder.load_model(FLAGS.checkpoint_path, FLAGS.model_name, FLAGS.num_classes,
                               label_map=FLAGS.label_map)
    net, model, label_names, path = built.net, built.model, built.label_names, built.path
    flip = builder.run_test_time_flip(FLAGS.test_time_flip, built.config)
    if flip and FLAGS.test_time_flip is None:
        import sys
        print("test-time flip: on, as the run was trained (train_ssd.py --test_time_flip); "
              "--notest_time_flip turns it off" +
              ("; the TFLite models detect each image once" if variants else ""),
              file=sys.stderr)
    shape = tuple(net.params.img_shape)
    preprocess = prep.image_preprocess_fn(shape)

    nms = dict(select_threshold=FLAGS.select_threshold, nms_threshold=FLAGS.nms_threshold,
               max_detections=FLAGS.max_detections, top_k=FLAGS.select_top_k)
    reps, calibration_line = calibration_images(shape) if 'int8' in variants else (None, None)
    tflite_paths = {}

    def add_tflite(version_dir):
        if variants:
            with quiet.native_output_filtered():
                tflite_paths.update(export_tflite.export_tflite(
                    net, model, lambda im: preprocess(im)[0],
                    os.path.join(version_dir, 'tflite'), variants, reps, label_names=label_names,
                    postprocess_op=FLAGS.tflite_postprocess, metadata=FLAGS.tflite_metadata,
                    **nms))

    target = export.export_saved_model(
        net, model, preprocess, FLAGS.output_dir, FLAGS.version, FLAGS.overwrite,
        label_names=label_names,
        metadata=dict(checkpoint_path=path, mixed_precision=FLAGS.mixed_precision,
                      label_ids=built.label_map.label_ids if built.label_map else None),
        max_image_pixels=FLAGS.max_image_pixels or images.DEFAULT_MAX_PIXELS,
        max_batch_size=FLAGS.max_batch_size,
        before_publish=add_tflite, tiles=tiles, test_time_flip=flip, **nms)
    print(f"SavedModel: {target}")
    for q in tflite_paths:
        print(f"TFLite {q}: {os.path.join(target, 'tflite', f'model_{q}.tflite')}")
    from ssd_tf import tflite_metadata
    for line in filter(None, [calibration_line, tflite_paths and
                              tflite_metadata.summary(FLAGS.tflite_metadata, label_names)]):
        print(line)


def run_main():
    def guarded(argv):
        try:
            main(argv)
        except (ValueError, FileExistsError, FileNotFoundError) as err:
            raise SystemExit(f"export_savedmodel.py: error: {err}")
    app.run(guarded)


if __name__ == '__main__':
    run_main()
