"""The benchmark scripts the documentation names exist.

Every `python bench/X.py --flag ...` in README.md and docs/*.md must name a file of bench/. A
benchmark is run by hand, rarely; this keeps a renamed or removed script from leaving its
commands in the pages unnoticed. (A `--help` check of the documented flags is not here yet.)
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


def documented_calls(text):
    """`{script: set of flags}` of the `python bench/X.py ...` calls in `text`: each call runs
    to the next backtick or the end of its line, and on over lines that end with a backslash;
    quoted arguments (--extra="--flag=...", the flags of another program) are not its own."""
    calls = collections.defaultdict(set)
    lines = text.splitlines()
    for i, line in enumerate(lines):
        for m in _CALL.finditer(line):
            rest, j = line[m.end():], i
            while True:
                cut = rest.split('`', 1)
                part = cut[0]
                if len(cut) == 1 and part.rstrip().endswith('\\') and j + 1 < len(lines):
                    j += 1
                    rest = part.rstrip()[:-1] + ' ' + lines[j]
                    continue
                break
            calls[m.group(1)].update(_FLAG.findall(_QUOTED.sub('', part)))
    return calls


def _all_calls():
    calls = collections.defaultdict(set)
    for page in _pages():
        for script, flags in documented_calls(page.read_text(encoding='utf-8')).items():
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


def test_every_documented_benchmark_script_exists():
    calls = _all_calls()
    assert len(calls) >= 10  # the pages name most of bench/: a broken parser finds none
    missing = sorted(s for s in calls if not (ROOT / s).is_file())
    assert not missing, f'the documentation names benchmark scripts that do not exist: {missing}'
