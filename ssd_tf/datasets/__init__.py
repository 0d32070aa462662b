"""Data set readers: each returns `Record`s (`records.py`) with relative yxyx boxes.

voc.read_voc (Pascal VOC directories), coco.read_coco (instances JSON), synthetic (procedural
shapes, no download), tfrecord (slim or TF Object Detection API key layout: detect_layout,
parse_example, write_tfrecords), tfds (tensorflow-datasets sets by name, `TfdsSource`,
streamed like TFRecords), factory (load_records by name; tfrecord_label_map), convert
(command line to sharded TFRecords), labelmap (names <-> ids; labels.txt, .json and the OD
API's label_map.pbtxt), check (the report of bad TFRecord data, `DataProblems`, and the
command that scans a data set before training).
Bad records are skipped and counted in a `records.DataReport`, or raise `records.DataError`
with `strict=True`; TFRecords are checked in the graph by `tfrecord.check_example` as they
stream. The tf.data builder is `ssd_tf.data.build_dataset`.
"""
