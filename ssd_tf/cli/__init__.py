"""The command-line programs that are not top-level scripts: thin front ends over the library.

`check_data`, `convert`, `anchors`, `tfds`, `serving_client` (argparse; `main(argv=None) -> exit
code`, the console entry points of pyproject.toml) and `show_augmentation` (absl); `flags`
defines the absl flags the top-level scripts share. Each runs as `python -m ssd_tf.cli.<name>`;
the documented `python -m ssd_tf.<module>` forms hand over to them.
"""
