"""The serving client command (`ssd-serving-client`, `python -m ssd_tf.serving_client`): sends
image files to a TF Serving server and writes the PNGs and detections.json of `detect.py`
(`ssd_tf.serving_client`). Class names: `--labels`, else those of `--export_dir`
(`datasets.labelmap.resolve_label_map`).
"""
import argparse
import sys

from ssd_tf import detect as detect_lib
from ssd_tf import images
from ssd_tf import run_config
from ssd_tf import serving_client as sc
from ssd_tf.datasets import labelmap as labelmap_lib
from ssd_tf.export import saved_model as export


def main(argv=None):
    """The command line (see the module docstring); returns the exit code."""
    ap = argparse.ArgumentParser(prog='python -m ssd_tf.serving_client',
                                 description=sc.__doc__.split('\n')[0])
    ap.add_argument('--server', required=True, help="REST: http://host:8501; gRPC: host:8500")
    ap.add_argument('--images', required=True,
                    help='image files and/or folders, comma-separated')
    ap.add_argument('--model_name', default='ssd', help="the server's MODEL_NAME")
    ap.add_argument('--model_version', type=int, default=None,
                    help='a version to ask for (default: the latest the server has)')
    ap.add_argument('--signature', default=export.BYTES_SIGNATURE)
    ap.add_argument('--output_dir', default='detections')
    ap.add_argument('--protocol', choices=('rest', 'grpc'), default='rest')
    ap.add_argument('--columnar', action='store_true',
                    help='REST: send {"inputs": ...} (columnar) instead of {"instances": ...}')
    ap.add_argument('--export_dir', default=None,
                    help='the served version directory: class names and request limits '
                         'from its assets/export_config.json')
    ap.add_argument('--labels', default=None, help='labels.txt (overrides --export_dir)')
    ap.add_argument('--max_batch_size', type=int, default=None,
                    help='images per request (default: the export\'s max_batch_size, else 64)')
    ap.add_argument('--max_image_pixels', type=int, default=None,
                    help='images over this (from the header) are not sent (default: the '
                         'export\'s max_image_pixels, else 200 MP)')
    ap.add_argument('--max_file_bytes', type=int, default=sc.DEFAULT_MAX_FILE_BYTES)
    ap.add_argument('--max_request_bytes', type=int, default=sc.DEFAULT_MAX_REQUEST_BYTES)
    ap.add_argument('--score_threshold', type=float, default=0.3)
    ap.add_argument('--timeout', type=float, default=60., help='seconds per request')
    args = ap.parse_args(argv)
    try:
        names, config = sc.read_export_info(args.export_dir) if args.export_dir else \
            (None, run_config.RunConfig())
        labels = labelmap_lib.resolve_label_map(args.labels, recorded_names=names,
                                                recorded_ids=config.get('label_ids'),
                                                flag='--labels')
        labels = None if labels is None else list(labels.names)
        for flag in ('max_batch_size', 'max_file_bytes', 'max_request_bytes', 'max_image_pixels'):
            value = getattr(args, flag)
            if value is not None and value <= 0:
                raise ValueError(f"--{flag}={value} must be positive")
        if args.columnar and args.protocol != 'rest':
            raise ValueError("--columnar applies to --protocol=rest")
        detect_lib.check_output_dir(args.output_dir)  # before talking to the server
        kind = sc.RestClient if args.protocol == 'rest' else sc.GrpcClient
        extra = {'columnar': args.columnar} if args.protocol == 'rest' else {}
        client = kind(args.server, args.model_name, args.model_version, args.signature,
                      args.timeout, **extra)
        sc.check_signature(client.signatures(), args.signature,
                           f"--server={args.server} model {args.model_name!r}")
        paths = detect_lib.list_images([p for p in args.images.split(',') if p])
        results = sc.run(client, paths, args.output_dir, labels, args.score_threshold,
                         args.max_batch_size or config.get('max_batch_size') or
                         export.MAX_BATCH_SIZE,
                         args.max_image_pixels or config.get('max_image_pixels') or
                         images.DEFAULT_MAX_PIXELS,
                         args.max_file_bytes, args.max_request_bytes)
    except (ValueError, sc.ServingError) as err:
        print(f"serving_client: error: {err}", file=sys.stderr)
        return 2
    print(detect_lib.summary(results, args.output_dir))
    return 0


if __name__ == '__main__':
    sys.exit(main())
