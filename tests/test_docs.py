"""The documentation's links: every relative link in README.md and docs/*.md reaches a file.

A link `page.md#anchor` must also name a heading of that page, under the anchor rules of both
places the pages are read: GitHub (README and docs/ rendered in the repository) and MkDocs
(Python-Markdown's `toc` extension; `mkdocs build --strict` in .ci/run). The two disagree on
headings with punctuation between spaces ("a (`b --c`)"), so an anchor counts only when both
produce it. Pages of docs/ link only inside docs/ (MkDocs refuses links out of its site), every
page is in mkdocs.yml's nav, and every `--8<--` include names an existing file.

Plain file reads and regular expressions: no TensorFlow, no mkdocs needed, fast.
"""
import pathlib
import re
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
DOCS = ROOT / 'docs'

_FENCE = re.compile(r'^(```|~~~).*?^\1[ \t]*$', re.M | re.S)
_CODE_SPAN = re.compile(r'(`+)(?:(?!\1).)+?\1', re.S)
_LINK = re.compile(r'!?\[[^\]\n]*\]\(([^()\s]+)(?:\s+"[^"]*")?\)')
_HEADING = re.compile(r'^(#{1,6})[ \t]+(.+?)[ \t]*#*[ \t]*$', re.M)
_SNIPPET = re.compile(r'^[ \t]*--8<--[ \t]+"([^"]+)"', re.M)


def _pages():
    """README.md and every docs/*.md (docs/_incoming/ holds drafts, not pages)."""
    return [ROOT / 'README.md'] + sorted(DOCS.glob('*.md'))


def _prose(text):
    """`text` without fenced code blocks and code spans (links there are not links)."""
    return _CODE_SPAN.sub('', _FENCE.sub('', text))


def slug_github(heading):
    """GitHub's heading anchor: lower case, punctuation dropped, each space a hyphen.

    Keeps `_` and `-`, and does not merge runs of hyphens.
    """
    text = re.sub(r'[^\w\- ]', '', heading.lower())
    return text.replace(' ', '-')


def slug_mkdocs(heading):
    """Python-Markdown's `toc` anchor (MkDocs): punctuation dropped, runs of spaces and
    hyphens merged into one hyphen, ends stripped."""
    text = re.sub(r'[^\w\s-]', '', heading).strip().lower()
    return re.sub(r'[-\s]+', '-', text)


def _heading_texts(text):
    """The text of each heading outside code blocks, code spans kept as their text."""
    out = []
    for m in _HEADING.finditer(_FENCE.sub('', text)):
        out.append(re.sub(r'`+', '', m.group(2)))
    return out


def anchors(text):
    """Anchors that both GitHub and MkDocs give the headings of a page."""
    gh, mk = set(), set()
    for h in _heading_texts(text):
        gh.add(slug_github(h))
        mk.add(slug_mkdocs(h))
    return gh & mk


def link_problems(page):
    """A list of 'page: link: reason' for each relative link of `page` that does not resolve."""
    problems = []
    text = page.read_text(encoding='utf-8')
    for target in _LINK.findall(_prose(text)):
        if re.match(r'^[a-z][a-z0-9+.-]*:', target, re.I):  # http:, https:, mailto:
            continue
        path, _, anchor = target.partition('#')
        dest = (page.parent / path).resolve() if path else page
        where = f'{page.relative_to(ROOT)}: ({target})'
        if not dest.exists():
            problems.append(f'{where}: no file {dest}')
            continue
        if page.parent == DOCS and DOCS not in dest.parents:
            problems.append(f'{where}: leaves docs/ (MkDocs cannot resolve it)')
            continue
        if anchor:
            if dest.suffix != '.md':
                problems.append(f'{where}: an anchor into a file that is not Markdown')
            elif anchor not in anchors(dest.read_text(encoding='utf-8')):
                problems.append(f'{where}: no heading with anchor #{anchor} in {dest.name}')
    return problems


def test_slugs_follow_github_and_python_markdown():
    # Hand-derived: "What happens when..." drops the dots -> "what happens when" -> hyphens.
    assert slug_github('What happens when...') == 'what-happens-when'
    assert slug_mkdocs('What happens when...') == 'what-happens-when'
    # "Export (python bench/bench_export.py --runs 5)": GitHub drops ( ) / . and keeps the
    # three hyphens between "exportpy" and "runs" (space, "--", space); Python-Markdown merges
    # them into one. The old README linked the GitHub form.
    heading = 'Export (python bench/bench_export.py --runs 5)'
    assert slug_github(heading) == 'export-python-benchbench_exportpy---runs-5'
    assert slug_mkdocs(heading) == 'export-python-benchbench_exportpy-runs-5'
    assert anchors('# ' + heading) == set()  # so no link may use it
    assert anchors('## reference_compat vs the default\n') == {'reference_compat-vs-the-default'}


def test_checker_finds_a_broken_link_and_anchor(tmp_path, monkeypatch):
    monkeypatch.setattr(sys.modules[__name__], 'ROOT', tmp_path)
    (tmp_path / 'a.md').write_text('# Title\n\n## Two words\n', encoding='utf-8')
    page = tmp_path / 'b.md'
    page.write_text('[ok](a.md#two-words) [gone](missing.md) [bad](a.md#three)\n'
                    '`[code](missing2.md)`\n```\n[fenced](missing3.md)\n```\n',
                    encoding='utf-8')
    problems = link_problems(page)
    assert len(problems) == 2, problems
    assert 'missing.md' in problems[0] and '#three' in problems[1]


@pytest.mark.parametrize('page', _pages(), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves(page):
    assert link_problems(page) == []


@pytest.mark.parametrize('page', _pages(), ids=lambda p: str(p.relative_to(ROOT)))
def test_no_two_headings_of_a_page_share_an_anchor(page):
    # GitHub numbers a repeated anchor -1, MkDocs _1: a link to the second would break.
    slugs = [slug_mkdocs(h) for h in _heading_texts(page.read_text(encoding='utf-8'))]
    assert sorted({s for s in slugs if slugs.count(s) > 1}) == []


def test_every_docs_page_is_in_the_mkdocs_nav():
    config = (ROOT / 'mkdocs.yml').read_text(encoding='utf-8')
    nav = set(re.findall(r'^\s*-\s*(?:[^:\n]+:\s*)?([\w./-]+\.md)\s*$', config, re.M))
    pages = {p.name for p in DOCS.glob('*.md')}
    assert pages == nav


def test_every_snippet_include_exists():
    for page in sorted(DOCS.glob('*.md')):
        for path in _SNIPPET.findall(page.read_text(encoding='utf-8')):
            assert (ROOT / path).is_file(), f'{page.name}: --8<-- "{path}": no such file'
            # The include sits inside a ``` block of the page: a fence in the file ends it early.
            fences = [n for n, line in enumerate((ROOT / path).read_text(encoding='utf-8')
                                                 .splitlines(), 1) if line.startswith('```')]
            assert fences == [], f'{path}: a ``` fence on line(s) {fences} breaks {page.name}'


def test_readme_keeps_the_two_commands():
    """CI and users rely on these lines (see docs/testing.md)."""
    readme = (ROOT / 'README.md').read_text(encoding='utf-8')
    assert "pip install -e '.[dev]' && python train_ssd.py" in readme
    assert '\npython -m pytest -n 2 tests\n' in readme
    assert len(readme.splitlines()) <= 220


def test_ci_runs_the_readme_test_command():
    """`.ci/run` runs the README's test command (plus coverage options), not another one."""
    readme = (ROOT / 'README.md').read_text(encoding='utf-8')
    command = re.search(r'Run the tests:\n\n```bash\n(python -m pytest[^\n]*)\n```', readme)
    assert command, 'README.md: no "Run the tests:" block'
    ci = (ROOT / '.ci' / 'run').read_text(encoding='utf-8').replace('\\\n', ' ')
    want = command.group(1).replace('python -m', 'python3 -m')
    assert any(line.strip().startswith(want + ' ') or line.strip() == want
               for line in ci.splitlines()), f'.ci/run does not run {want!r}'
