"""Machine description and timing helpers shared by the benchmark scripts."""
import os
import platform
import statistics
import time


def machine_info():
    """One line: CPU model, cores, bfloat16 support (ssd_tf.hardware), Python and TensorFlow
    versions."""
    import tensorflow as tf
    from ssd_tf import hardware
    cpu = platform.processor() or 'unknown CPU'
    try:
        with open('/proc/cpuinfo') as f:
            for line in f:
                if line.startswith('model name'):
                    cpu = line.split(':', 1)[1].strip()
                    break
    except OSError:
        pass
    return (f"{cpu}, {os.cpu_count()} cores, CPU bfloat16: {hardware.cpu_bfloat16().status}, "
            f"Python {platform.python_version()}, "
            f"TensorFlow {tf.__version__}")


def median_time(fn, runs=5, warmup=1):
    """Median wall time in seconds of `fn()` over `runs` calls after `warmup` calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def print_table(header, rows):
    """Prints a markdown table."""
    print('| ' + ' | '.join(header) + ' |')
    print('|' + '|'.join('---' for _ in header) + '|')
    for r in rows:
        print('| ' + ' | '.join(str(x) for x in r) + ' |')
