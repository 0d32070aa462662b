"""The benchmark scripts the documentation names exist.

Every `python bench/X.py --flag ...` in README.md and docs/*.md must name a file of bench/. A
benchmark is run by hand, rarely; this keeps a renamed or removed script from leaving its
commands in the pages unnoticed, and the flags the pages pass them are flags they define (read
from the scripts' sources: argparse `add_argument('--x'` or absl `DEFINE_*('x'`).
"""
import collections
import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parent.parent
_CALL = re.compile(r'python3? (bench/[A-Za-z0-9_]+\.py)')
_QUOTED = re.compile(r'"[^"]*"|\'[^\']*\'')
_FLAG = re.compile(r'(?<![\w-])--([a-z][a-z0-9_]*)')


def _pages():
    return [ROOT / 'README.md'] + sorted((ROOT / 'docs').glob('*.md'))


def documented_calls(text, call=_CALL):
    """`{script: set of flags}` of the `python bench/X.py ...` calls in `text`. A call inside
    an inline code span (an odd number of backticks before it on its line) runs to the closing
    backtick, over line breaks; elsewhere (a fenced block) to the end of its line, and on over
    lines that end with a backslash. Quoted arguments (--extra="--flag=...", the flags of
    another program) are not its own."""
    calls = collections.defaultdict(set)
    # prose wraps lines anywhere: `python` at the end of a line, its script on the next
    text = re.sub(r'\b(python3?)[ \t]*\n[ \t]*([\w/]+\.py)', r'\1 \2', text)
    lines = text.splitlines()
    for i, line in enumerate(lines):
        for m in call.finditer(line):
            inline = line[:m.start()].count('`') % 2 == 1
            rest, j = line[m.end():], i
            while True:
                cut = rest.split('`', 1)
                part = cut[0]
                if len(cut) == 1 and j + 1 < len(lines):
                    if inline and lines[j + 1].strip():
                        j += 1
                        rest = part + ' ' + lines[j]
                        continue
                    if not inline and part.rstrip().endswith('\\'):
                        j += 1
                        rest = part.rstrip()[:-1] + ' ' + lines[j]
                        continue
                break
            calls[m.group(1)].update(_FLAG.findall(_QUOTED.sub('', part)))
    return calls


def all_documented_calls(call=_CALL):
    """`documented_calls` over README.md and docs/*.md, merged per script."""
    calls = collections.defaultdict(set)
    for page in _pages():
        for script, flags in documented_calls(page.read_text(encoding='utf-8'), call).items():
            calls[script] |= flags
    return calls


def test_documented_calls_parser_on_a_hand_written_page():
    text = ("Run `python bench/a.py --runs 5`, then:\n"
            "```bash\n"
            "python bench/b.py --devset /tmp/d --rows default,small \\\n"
            "  --seed 1 [--extra=\"--learning_rate=0.006\"]\n"
            "python bench/c.py\n"
            "```\n")
    assert documented_calls(text) == {'bench/a.py': {'runs'},
                                      'bench/b.py': {'devset', 'rows', 'seed', 'extra'},
                                      'bench/c.py': set()}
    # an inline span over line breaks (one between `python` and its script); a fenced line
    # without a backslash ends the call
    text = ("see `python\nbench/d.py --model_name M\n"
            "--rounds 3` and --not_d, then\n"
            "```bash\n"
            "python bench/e.py --seed 1\n"
            "--not_e 2\n"
            "```\n")
    assert documented_calls(text) == {'bench/d.py': {'model_name', 'rounds'},
                                      'bench/e.py': {'seed'}}


def _defines_flag(source, flag):
    """Whether a script's source defines `--flag`: argparse's `add_argument('--flag'` (or
    with double quotes) or absl's `DEFINE_x('flag'`."""
    return (f"'--{flag}'" in source or f'"--{flag}"' in source
            or re.search(rf"DEFINE_\w+\(\s*['\"]{flag}['\"]", source) is not None)


def test_defines_flag_on_hand_written_sources():
    assert _defines_flag("ap.add_argument('--runs', type=int)", 'runs')
    assert _defines_flag('ap.add_argument("--runs")', 'runs')
    assert _defines_flag("flags.DEFINE_integer('runs', 3, 'n')", 'runs')
    assert not _defines_flag("ap.add_argument('--runs_per_round')", 'runs')
    assert not _defines_flag("# --runs is gone", 'runs')


def test_every_documented_benchmark_flag_is_defined():
    """The flags the pages pass to a benchmark script are flags it defines: a renamed or
    removed flag would leave a documented command that fails at its first argument."""
    calls = all_documented_calls()
    assert sum(len(f) for f in calls.values()) >= 30  # a broken parser finds few
    unknown = sorted(f'{s} --{f}' for s, flags in calls.items() if (ROOT / s).is_file()
                     for f in flags if not _defines_flag((ROOT / s).read_text('utf-8'), f))
    assert not unknown, f'the documentation passes flags the scripts do not define: {unknown}'


def test_every_documented_benchmark_script_exists():
    calls = all_documented_calls()
    assert len(calls) >= 10  # the pages name most of bench/: a broken parser finds none
    missing = sorted(s for s in calls if not (ROOT / s).is_file())
    assert not missing, f'the documentation names benchmark scripts that do not exist: {missing}'
