"""The command-line programs that are not top-level scripts (the data check, converter, anchors
report, tfds preparation, serving client): thin argparse front ends over the library. Each
module has `main(argv=None) -> exit code` (the console entry points of pyproject.toml) and
runs as `python -m ssd_tf.cli.<name>`; the old `python -m ssd_tf.<module>` forms hand over to
them.
"""
