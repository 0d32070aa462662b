"""The commands the pages show for the four programs use flags the programs define.

Every `python train_ssd.py --flag ...` (and eval_ssd.py, export_savedmodel.py, detect.py) in
README.md and docs/*.md is parsed as tests/test_bench_scripts.py parses the benchmark calls,
and each flag must be one that `python PROGRAM --helpfull` lists: a renamed or removed flag
would leave a documented command that fails at its first argument (absl rejects an unknown
flag). The programs define their flags without importing TensorFlow, so `--helpfull` is fast.
"""
import functools
import re
import subprocess
import sys

import pytest

from test_bench_scripts import ROOT, all_documented_calls

PROGRAMS = ('train_ssd.py', 'eval_ssd.py', 'export_savedmodel.py', 'detect.py')
_PROGRAM_CALL = re.compile(r'python3? ((?:%s))' % '|'.join(re.escape(p) for p in PROGRAMS))
_HELP_FLAG = re.compile(r'^\s+--(?:\[no\])?([a-z][a-z0-9_]*):', re.MULTILINE)


def help_flags(help_text):
    """The flag names of absl's `--helpfull` text (`--name: ...`, `--[no]name: ...`)."""
    return set(_HELP_FLAG.findall(help_text))


def test_help_flags_on_hand_written_help():
    text = ("train_ssd.py:\n"
            "  --batch_size: Images per step.\n"
            "    (default: '32')\n"
            "  --[no]reference_compat: Slim behaviour.\n"
            "    (default: 'false')\n"
            "    (see --batch_size)\n")
    assert help_flags(text) == {'batch_size', 'reference_compat'}


@functools.lru_cache(maxsize=None)
def _defined(program):
    out = subprocess.run([sys.executable, str(ROOT / program), '--helpfull'], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode in (0, 1), out.stderr[-2000:]  # absl's --helpfull exits with 1
    return frozenset(help_flags(out.stdout))


def _documented():
    return all_documented_calls(_PROGRAM_CALL)


def test_the_pages_show_commands_of_every_program():
    calls = _documented()
    assert set(calls) == set(PROGRAMS), sorted(calls)  # a broken parser finds none
    assert sum(len(f) for f in calls.values()) >= 40


@pytest.mark.parametrize('program', PROGRAMS)
def test_every_documented_flag_is_defined(program):
    defined = _defined(program)
    assert len(defined) >= 10, program  # the help text was parsed
    # a negated boolean (--noflag) is absl's spelling of --flag=false
    unknown = sorted(f for f in _documented().get(program, ())
                     if f not in defined and not (f.startswith('no') and f[2:] in defined))
    assert not unknown, f'the pages pass {program} flags it does not define: {unknown}'
