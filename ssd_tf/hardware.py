"""The one home of hardware feature detection: does this machine run bfloat16 fast?

`--mixed_precision=mixed_bfloat16` pays off only where the hardware has bfloat16 arithmetic:
on a CPU without AVX512-BF16 or AMX, TensorFlow emulates it and SSD300 runs about 5x SLOWER
than float32 (measured: forward 0.99 vs 5.02 images/s at batch 8, train step 0.32 vs 1.47
images/s); with them it is about 1.6-2x faster. `train_ssd.py` and `export_savedmodel.py` call
`check_bfloat16` before they build anything; `bench/machine.py` prints `cpu_bfloat16` in its
machine line.

Detection, honest rather than guessed:
- CPU (Linux x86): the `flags` line of /proc/cpuinfo holds `avx512_bf16`, or `amx_bf16`
  with `amx_tile` -> 'yes'; neither -> 'no'. An `ONEDNN_MAX_CPU_ISA` cap below
  AVX512_CORE_BF16 (e.g. `AVX512_CORE`) keeps TensorFlow's oneDNN kernels off those
  instructions -> 'no' as well. Another OS, a CPU without an x86 `flags` line (ARM) or an
  unreadable file -> 'unknown' (with the reason).
- TPU (`--strategy=tpu`): 'yes' (bfloat16 is the TPU's native format).
- GPU: compute capability 8.0 (Ampere) or later -> 'yes'; earlier -> 'no' (no bfloat16
  tensor cores); not reported -> 'unknown'.
"""
import dataclasses
import os
import platform

CPUINFO_PATH = '/proc/cpuinfo'
ALLOW_FLAG = '--allow_slow_bfloat16'
# The figures behind the refusal (SSD300, batch 8, float32 vs mixed_bfloat16, on a CPU
# without AVX512-BF16/AMX; README "Mixed precision and the CPU").
MEASURED_SLOWDOWN = ('SSD300 measured about 5x slower than float32 on such a CPU (forward '
                     '0.99 vs 5.02 images/s at batch 8, train step 0.32 vs 1.47 images/s)')
# oneDNN ISA names (ONEDNN_MAX_CPU_ISA) that keep the bfloat16 instructions out of reach.
_ONEDNN_CAPS_WITHOUT_BF16 = ('SSE41', 'AVX', 'AVX2', 'AVX2_VNNI', 'AVX2_VNNI_2', 'AVX512_CORE',
                             'AVX512_CORE_VNNI')


@dataclasses.dataclass(frozen=True)
class Support:
    """Whether bfloat16 is fast on a device: status 'yes' | 'no' | 'unknown', the device
    ('CPU', 'GPU', 'TPU') and a one-line reason."""
    status: str
    device: str
    reason: str

    def __str__(self):
        return f"{self.status} ({self.reason})"


def parse_cpu_flags(text):
    """The x86 feature flags of /proc/cpuinfo text (its first `flags` line) as a frozenset,
    or None when there is no such line (not an x86 CPU, or not cpuinfo)."""
    for line in text.splitlines():
        key, sep, value = line.partition(':')
        if sep and key.strip() == 'flags':
            return frozenset(value.split())
    return None


def cpu_flags(path=None, system=None):
    """`(flags or None, reason)`: the CPU's feature flags read from `path` (default
    CPUINFO_PATH) on Linux; None with the reason elsewhere, when unreadable or without an
    x86 flags line. system: the OS name (default platform.system())."""
    system = platform.system() if system is None else system
    path = CPUINFO_PATH if path is None else path
    if system != 'Linux':
        return None, f"the CPU features are not read on {system or 'this OS'}"
    try:
        with open(path, encoding='utf-8', errors='replace') as f:
            text = f.read(1 << 20)  # the flags line comes first; 1 MB bounds a strange file
    except OSError as e:
        return None, f"cannot read {path}: {e.strerror or e}"
    flags = parse_cpu_flags(text)
    if flags is None:
        return None, f"{path} has no x86 'flags' line (not an x86 CPU?)"
    return flags, path


def cpu_bfloat16(path=None, system=None, environ=None):
    """`Support` of bfloat16 on the CPU (see the module docstring)."""
    environ = os.environ if environ is None else environ
    flags, where = cpu_flags(path, system)
    if flags is None:
        return Support('unknown', 'CPU', where)
    has = [f for f in ('avx512_bf16', 'amx_bf16') if f in flags]
    if 'amx_bf16' in has and 'amx_tile' not in flags:
        has.remove('amx_bf16')
    if not has:
        return Support('no', 'CPU', f"no avx512_bf16 or amx_bf16 in the flags of {where}")
    cap = environ.get('ONEDNN_MAX_CPU_ISA', '').strip().upper()
    if cap in _ONEDNN_CAPS_WITHOUT_BF16:
        return Support('no', 'CPU', f"the CPU has {'/'.join(has)} but ONEDNN_MAX_CPU_ISA={cap} "
                                    f"keeps TensorFlow off it")
    return Support('yes', 'CPU', f"{'/'.join(has)} in the flags of {where}")


def gpu_bfloat16(compute_capability):
    """`Support` of a GPU of `compute_capability` ((major, minor) or None)."""
    if not compute_capability:
        return Support('unknown', 'GPU', 'the GPU does not report its compute capability')
    cc = tuple(int(v) for v in compute_capability)
    name = '.'.join(str(v) for v in cc)
    if cc >= (8, 0):
        return Support('yes', 'GPU', f"compute capability {name} (Ampere or later)")
    return Support('no', 'GPU', f"compute capability {name} is before Ampere (8.0): no "
                                f"bfloat16 tensor cores")


def bfloat16_support(strategy=None):
    """`Support` of bfloat16 where the model will run: a TPU (strategy 'tpu'), the first
    visible GPU, else the CPU."""
    if strategy == 'tpu':
        return Support('yes', 'TPU', 'bfloat16 is the native format of TPUs')
    import tensorflow as tf
    gpus = tf.config.list_physical_devices('GPU')
    if gpus:
        try:
            details = tf.config.experimental.get_device_details(gpus[0])
        except (ValueError, RuntimeError):
            details = {}
        return gpu_bfloat16(details.get('compute_capability'))
    return cpu_bfloat16()


# --mixed_precision values of train_ssd.py; 'auto' is resolved by `choose_precision`.
PRECISIONS = ('auto', 'float32', 'mixed_float16', 'mixed_bfloat16')


def choose_precision(flag_value, support):
    """`(policy, reason)`: the Keras dtype policy a `--mixed_precision=flag_value` run uses.

    'auto' takes 'mixed_bfloat16' where `support` (a `Support`) says the device computes in
    bfloat16 ('yes'), else 'float32' ('no' and 'unknown': an unknown device is not gambled
    on, since bfloat16 without the hardware is about 5x slower). Any other value (None =
    float32, as older runs recorded it) is returned as asked. reason: one line for the run's
    first screen.
    """
    if flag_value in (None, 'float32'):
        return 'float32', 'asked for'
    if flag_value != 'auto':
        if flag_value not in PRECISIONS:
            raise ValueError(f"--mixed_precision={flag_value}: not one of {', '.join(PRECISIONS)}")
        return flag_value, 'asked for'
    if support.status == 'yes':
        return 'mixed_bfloat16', (f"--mixed_precision=auto: this {support.device} computes in "
                                  f"bfloat16 ({support.reason})")
    return 'float32', (f"--mixed_precision=auto: bfloat16 arithmetic is {support.status} on "
                       f"this {support.device} ({support.reason})")


class SlowPrecisionError(ValueError):
    """mixed_bfloat16 asked for where the hardware lacks bfloat16 (see `check_bfloat16`)."""


def check_bfloat16(flag, allow=False, strategy=None, support=None, what='training'):
    """Decides whether `flag` (e.g. '--mixed_precision=mixed_bfloat16') may run here.

    Returns a warning text (None when there is nothing to say) or raises SlowPrecisionError
    when the device lacks bfloat16 and `allow` (the ALLOW_FLAG) is not set. An 'unknown'
    device only warns: refusing a machine that may well be fast would be a guess.
    support: a `Support` (default: `bfloat16_support(strategy)`); what: the job named in
    the message ('training', 'the exported model').
    """
    support = bfloat16_support(strategy) if support is None else support
    if support.status == 'yes':
        return None
    if support.status == 'unknown':
        return (f"warning: {flag}: whether this {support.device} has bfloat16 arithmetic is "
                f"unknown ({support.reason}); without AVX512-BF16/AMX {MEASURED_SLOWDOWN}")
    if allow:
        return (f"warning: {flag} with {ALLOW_FLAG}: {what} will be slow: this "
                f"{support.device} lacks bfloat16 ({support.reason}); {MEASURED_SLOWDOWN}")
    slow = MEASURED_SLOWDOWN if support.device == 'CPU' else 'bfloat16 is emulated there'
    use = 'e.g. to test it' if what == 'training' else \
        'e.g. for a serving machine with AVX512-BF16/AMX'
    raise SlowPrecisionError(
        f"{flag}: this {support.device} has no bfloat16 arithmetic ({support.reason}), so "
        f"{what} would run SLOWER than in float32: {slow}. Drop {flag.split('=')[0]} "
        f"(float32 is the fast choice here), or pass {ALLOW_FLAG} to run it anyway "
        f"({use})")
