"""Quiet programs: TensorFlow's start-up banners and INFO logs off, unless asked for.

Every program (train_ssd.py, eval_ssd.py, export_savedmodel.py, detect.py, the `python -m`
commands, the `ssd-*` console commands) runs `setup()` before anything imports TensorFlow
(through `import ssd_tf`, see below; a command's main may call `setup(verbose)` itself).
Without `--verbose` on the command line or `SSD_TF_VERBOSE=1` in the environment it:
- sets `TF_CPP_MIN_LOG_LEVEL=3` (unless the environment sets it already): TensorFlow's C++ log
  lines (the CUDA probe's "failed call to cuInit", the TFLite converter's "Ignored
  output_format", ...) are not printed. A real TensorFlow error still reaches the program as a
  Python exception, which the program reports;
- has TensorFlow imported (when something imports it) with the process's stderr (file
  descriptor 2) captured, and prints back every captured line except the known start-up
  banners (`NOISE`: oneDNN, CUDA driver probe, CPU feature guard, absl's "All log messages
  before absl::InitializeLog()"). TF 2.21 logs those through absl before TF_CPP_MIN_LOG_LEVEL
  applies, so no environment variable hides them (`native_output_filtered()` does the same
  around the TFLite int8 converter, whose quantizer prints a line of its own);
- lowers the `tensorflow` and `absl` Python loggers to WARNING (absl INFO lines such as the
  checkpoint saver's "Sharding callback duration" go; the project's own warnings stay) and
  ignores Python warnings in `NOISE_WARNINGS` (none of them is about what the user did).
With `--verbose` / `SSD_TF_VERBOSE=1` it changes nothing: every banner and INFO line shows.

`setup()` defines the absl flag `--verbose` (when absl's flags are in use and it is not
defined yet) so that every program accepts it. `import ssd_tf` calls `setup_if_program()`,
which runs `setup()` when the process is one of the programs (`is_program`: the scripts, the
`ssd-*` console commands, `python -m ssd_tf.<module>`), so that the quieting happens before
anything can import TensorFlow; a program calling `setup()` again changes nothing. A user's
own script importing ssd_tf is left as it is.

This module imports the standard library only (and absl's flags when present).
"""
import importlib.abc
import importlib.util
import logging
import os
import re
import sys
import tempfile
import warnings

ENV_VAR = 'SSD_TF_VERBOSE'
VERBOSE_FLAG = 'verbose'
# Start-up lines of `import tensorflow` (C++ through absl, before InitializeLog).
NOISE = (
    'All log messages before absl::InitializeLog() is called are written to STDERR',
    'oneDNN custom operations are on',
    'Could not find cuda drivers on your machine',
    'cpu_feature_guard.cc',
    'This TensorFlow binary is optimized to use available CPU instructions',
    'To enable the following instructions:',
    'Unable to register cuDNN factory', 'Unable to register cuFFT factory',
    'Unable to register cuBLAS factory', 'computation placer already registered',
    'failed call to cuInit',
    'TF-TRT Warning: Could not find TensorRT',
    # the TFLite quantizer's own print at each int8 conversion; LiteRT's first run
    'fully_quantize: 0, inference_type:',
    'INFO: Created TensorFlow Lite XNNPACK delegate for CPU',
)
# Python warnings that are TensorFlow/Keras internals, not about the user's input.
NOISE_WARNINGS = (
    r'.*tf\.lite\.Interpreter is deprecated',
    r'.*Protobuf gencode version',
    r'.*np\.find_common_type is deprecated',
)
_NOISE_RE = re.compile('|'.join(re.escape(n) for n in NOISE))


PROGRAM_FILES = ('train_ssd.py', 'eval_ssd.py', 'export_savedmodel.py', 'detect.py')
PROGRAM_PREFIX = 'ssd-'  # console entry points: ssd-train, ssd-detect, ...
_DONE = []


def is_program(argv0=None):
    """True when the process runs one of the programs: argv[0] is a script of PROGRAM_FILES,
    an `ssd-*` console command, or '-m' (Python sets it while it imports the packages of a
    `python -m ssd_tf.<module>` target, before running it)."""
    argv0 = (sys.argv[0] if sys.argv else '') if argv0 is None else argv0
    base = os.path.basename(argv0)
    return argv0 == '-m' or base in PROGRAM_FILES or base.startswith(PROGRAM_PREFIX)


def setup_if_program():
    """`setup()` when `is_program()`; nothing otherwise."""
    if is_program():
        setup()


def verbose_requested(argv=None, environ=None):
    """True when `--verbose` (or `--verbose=true|1`) is in argv (default sys.argv) or the
    environment sets SSD_TF_VERBOSE to anything but '', '0' or 'false'."""
    argv = sys.argv[1:] if argv is None else argv
    environ = os.environ if environ is None else environ
    if environ.get(ENV_VAR, '').strip().lower() not in ('', '0', 'false', 'no'):
        return True
    verbose = False
    for arg in argv:
        if arg == '--':
            break
        if arg in ('--verbose', '-verbose'):
            verbose = True
        elif arg in ('--noverbose', '-noverbose'):
            verbose = False
        elif arg.startswith(('--verbose=', '-verbose=')):
            verbose = arg.split('=', 1)[1].strip().lower() in ('1', 'true', 'yes', 't', 'y')
    return verbose


def is_noise(line):
    """True for a start-up banner line of TensorFlow (`NOISE`)."""
    return bool(_NOISE_RE.search(line))


def _define_verbose_flag():
    try:
        from absl import flags
    except ImportError:
        return
    if VERBOSE_FLAG not in flags.FLAGS:
        flags.DEFINE_boolean(VERBOSE_FLAG, False, f'Show TensorFlow\'s start-up banners and '
                             f'INFO logs (also: {ENV_VAR}=1 in the environment).')


class _FilteredStderr:
    """Context: file descriptor `fd` (2: stderr, 1: stdout) captured; on exit the captured
    lines go back to it without the NOISE lines (all of them when the block raised)."""

    def __init__(self, fd=2):
        self._fd = fd
        self._stream = sys.stderr if fd == 2 else sys.stdout

    def __enter__(self):
        self._stream.flush()
        self._saved = os.dup(self._fd)
        self._capture = tempfile.TemporaryFile(mode='w+b')
        os.dup2(self._capture.fileno(), self._fd)
        return self

    def __exit__(self, exc_type, exc, tb):
        self._stream.flush()
        os.dup2(self._saved, self._fd)
        os.close(self._saved)
        self._capture.seek(0)
        text = self._capture.read().decode('utf-8', 'replace')
        self._capture.close()
        kept = [line for line in text.splitlines(keepends=True)
                if exc_type is not None or not is_noise(line)]
        if kept:
            self._stream.write(''.join(kept))
            self._stream.flush()
        return False


class native_output_filtered:  # pylint: disable=invalid-name  (used as a function)
    """Context for a block whose native code prints noise (the TFLite converter's int8
    quantizer): stdout and stderr lines of `NOISE` dropped, once `setup()` made the process
    quiet; nothing changes in a verbose process or a user's own."""

    def __enter__(self):
        self._contexts = [_FilteredStderr(1), _FilteredStderr(2)] if _DONE else []
        for c in self._contexts:
            c.__enter__()
        return self

    def __exit__(self, *exc):
        for c in reversed(self._contexts):
            c.__exit__(*exc)
        return False


class _FilteredLoader(importlib.abc.Loader):
    """The loader of `tensorflow`, executing the package with stderr filtered."""

    def __init__(self, loader):
        self._loader = loader

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module):
        with _FilteredStderr():
            self._loader.exec_module(module)


class _TensorflowImportFilter(importlib.abc.MetaPathFinder):
    """Finds `tensorflow` as the other finders do, with `_FilteredLoader` around its loader:
    TensorFlow's start-up banners are filtered whenever (and if ever) it is imported."""

    def find_spec(self, fullname, path, target=None):
        if fullname != 'tensorflow':
            return None
        sys.meta_path.remove(self)  # one import; and find the real spec without us
        spec = importlib.util.find_spec(fullname)
        if spec is not None and spec.loader is not None:
            spec.loader = _FilteredLoader(spec.loader)
        return spec


def setup(verbose=None):
    """Makes this process quiet unless `verbose` (None: `verbose_requested()`); returns the
    verbose decision. Call it before anything imports TensorFlow (TensorFlow itself is not
    imported here: its start-up lines are filtered when something imports it)."""
    _define_verbose_flag()
    if verbose is None:
        verbose = verbose_requested()
    if verbose or _DONE:
        return bool(verbose)
    _DONE.append(True)
    os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')
    for pattern in NOISE_WARNINGS:
        warnings.filterwarnings('ignore', message=pattern)
    if 'tensorflow' not in sys.modules and not any(
            isinstance(f, _TensorflowImportFilter) for f in sys.meta_path):
        sys.meta_path.insert(0, _TensorflowImportFilter())
    for name in ('tensorflow', 'absl'):
        logging.getLogger(name).setLevel(logging.WARNING)
    try:
        from absl import logging as absl_logging
        absl_logging.set_verbosity(absl_logging.WARNING)
    except ImportError:
        pass
    return False
