"""mixed_bfloat16 vs float32 for SSD300, on this CPU with and without its bfloat16 instructions.

    python bench/bench_bfloat16.py [--runs 3] [--batch 8] [--passes forward,train_step]

Each configuration runs in a fresh process (the precision policy is global and oneDNN reads
its ISA cap at start-up): SSD300 forward pass and training step (bench_train's step, Adam) at
--batch, float32 and mixed_bfloat16, once as the machine is and once with
`ONEDNN_MAX_CPU_ISA=AVX512_CORE`, which keeps TensorFlow's oneDNN kernels off the AVX512-BF16 /
AMX instructions: a CPU without bfloat16 arithmetic, simulated on one with it. A oneDNN verbose
probe per setting prints the ISA oneDNN reports, so the cap is seen to act. Prints the machine
line (with ssd_tf.hardware's verdict), a markdown table of images/s (median of --runs after a
warm-up) and the mixed_bfloat16 / float32 ratios.
"""
import argparse
import json
import os
import subprocess
import sys

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

CAP = 'AVX512_CORE'
SETTINGS = (('as is', None), (f'ONEDNN_MAX_CPU_ISA={CAP}', CAP))
PASSES = ('forward', 'train step')
POLICIES = ('float32', 'mixed_bfloat16')


def _child_env(cap, verbose=False):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2')
    env.pop('ONEDNN_MAX_CPU_ISA', None)
    if cap:
        env['ONEDNN_MAX_CPU_ISA'] = cap
    if verbose:
        env['ONEDNN_VERBOSE'] = '1'
    return env


def measure(what, policy, batch, runs):
    """images/s of SSD300 `what` ('forward' or 'train step') under `policy`, this process."""
    import keras
    import numpy as np
    import tensorflow as tf
    from bench.bench_train import step_throughput
    from bench.machine import median_time
    from nets import nets_factory
    if what == 'train step':
        return step_throughput('ssd_300_vgg', batch, False, runs, policy)[0]
    keras.mixed_precision.set_dtype_policy(policy)
    net = nets_factory.get_network('ssd_300_vgg')()
    model = net.keras_model()
    h, w = net.params.img_shape
    x = tf.constant(np.random.default_rng(0).normal(0, 60, (batch, h, w, 3)).astype(np.float32))
    fn = tf.function(lambda t: model(t, training=False)['predictions'][0])
    return batch / median_time(lambda: fn(x).numpy(), runs=runs, warmup=2)


def onednn_isa(cap):
    """The ISA line oneDNN prints for a small bfloat16 convolution under `cap`."""
    code = ('import tensorflow as tf; x = tf.ones([1, 16, 16, 16], tf.bfloat16); '
            'k = tf.ones([3, 3, 16, 16], tf.bfloat16); '
            'tf.nn.conv2d(x, k, 1, "SAME").numpy()')
    out = subprocess.run([sys.executable, '-c', code], env=_child_env(cap, verbose=True),
                         capture_output=True, text=True, timeout=300)
    for line in (out.stdout + out.stderr).splitlines():
        if 'isa:' in line:
            return line.split('isa:', 1)[1].strip()
    return 'not reported'


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--runs', type=int, default=3)
    ap.add_argument('--batch', type=int, default=8)
    ap.add_argument('--passes', default=','.join(p.replace(' ', '_') for p in PASSES),
                    help='comma-separated: forward, train_step')
    ap.add_argument('--child', nargs=2, metavar=('PASS', 'POLICY'), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        what, policy = args.child
        print(json.dumps({'images_per_s': measure(what.replace('_', ' '), policy, args.batch,
                                                  args.runs)}))
        return
    from bench.machine import machine_info, print_table
    print(f'Machine: {machine_info()}\n')
    rows, ips = [], {}
    passes = [p for p in PASSES if p.replace(' ', '_') in args.passes.split(',')]
    for setting, cap in SETTINGS:
        print(f'{setting}: oneDNN isa: {onednn_isa(cap)}', flush=True)
        for what in passes:
            for policy in POLICIES:
                out = subprocess.run(
                    [sys.executable, os.path.abspath(__file__), '--runs', str(args.runs),
                     '--batch', str(args.batch), '--child', what.replace(' ', '_'), policy],
                    env=_child_env(cap), capture_output=True, text=True, cwd=ROOT)
                if out.returncode:
                    raise SystemExit(f'{setting} {what} {policy} failed:\n{out.stderr[-3000:]}')
                ips[setting, what, policy] = json.loads(out.stdout.strip().splitlines()[-1])[
                    'images_per_s']
                print(f'  {what} {policy}: {ips[setting, what, policy]:.2f} images/s', flush=True)
    for setting, _ in SETTINGS:
        for what in passes:
            f32, bf16 = (ips[setting, what, p] for p in POLICIES)
            rows.append([setting, f'{what}, batch {args.batch}', f'{f32:.2f}', f'{bf16:.2f}',
                         f'{bf16 / f32:.2f}'])
    print()
    print_table(['CPU', 'SSD300', 'float32 images/s', 'mixed_bfloat16 images/s',
                 'bf16 / fp32'], rows)


if __name__ == '__main__':
    main()
