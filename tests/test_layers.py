"""The floors of the code: no import cycle (imports inside functions count), the library imports
no program, `import ssd_tf.boxes` stays light, the console entry points resolve and the old
`python -m` paths of the programs still run."""
import ast
import json
import importlib
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LIBRARY = ('ssd_tf', 'nets', 'preprocessing')
SCRIPTS = ('train_ssd', 'eval_ssd', 'export_savedmodel', 'detect')
ENTRY_POINTS = {
    'ssd-train': 'train_ssd:run_main', 'ssd-eval': 'eval_ssd:run_main',
    'ssd-export': 'export_savedmodel:run_main', 'ssd-detect': 'detect:run_main',
    'ssd-check-data': 'ssd_tf.cli.check_data:main', 'ssd-convert': 'ssd_tf.cli.convert:main',
    'ssd-anchors': 'ssd_tf.cli.anchors:main', 'ssd-tfds': 'ssd_tf.cli.tfds:main',
    'ssd-serving-client': 'ssd_tf.cli.serving_client:main'}


def _modules():
    """`{module name: file}` of the library packages and the top-level scripts."""
    out = {s: os.path.join(ROOT, s + '.py') for s in SCRIPTS}
    for top in LIBRARY:
        for d, _, files in os.walk(os.path.join(ROOT, top)):
            for f in files:
                if f.endswith('.py'):
                    name = os.path.relpath(os.path.join(d, f), ROOT)[:-3].replace(os.sep, '.')
                    out[name[:-len('.__init__')] if name.endswith('.__init__') else name] = \
                        os.path.join(d, f)
    return out


def import_graph(modules):
    """`{module: {imported project modules}}` from every import statement, those inside
    functions included (`from a import b` names the module a.b when it is one, else a)."""
    graph = {}
    for name, path in modules.items():
        package = name if path.endswith('__init__.py') else name.rpartition('.')[0]
        edges = set()
        for node in ast.walk(ast.parse(open(path).read())):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ''
                if node.level:
                    parts = package.split('.')[:len(package.split('.')) - node.level + 1]
                    base = '.'.join(parts + ([base] if base else []))
                targets = [f'{base}.{a.name}' if f'{base}.{a.name}' in modules else base
                           for a in node.names]
            else:
                continue
            for t in targets:
                while t and t not in modules:
                    t = t.rpartition('.')[0]
                if t and t != name:
                    edges.add(t)
        graph[name] = edges
    return graph


def cycles(graph):
    """The strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))
    for v in graph:
        if v not in index:
            visit(v)
    return out


def test_cycle_finder_sees_imports_inside_functions():
    # a -> b at module level, b -> a inside a function: one cycle {a, b}
    graph = {'a': {'b'}, 'b': {'a'}, 'c': {'a'}}
    assert cycles(graph) == [['a', 'b']]
    assert cycles({'a': {'b'}, 'b': set()}) == []


def test_no_import_cycle_and_the_library_imports_no_program():
    graph = import_graph(_modules())
    assert 'ssd_tf.builder' in graph and 'ssd_tf.run_config' in graph['ssd_tf.checkpoints']
    assert cycles(graph) == []
    for name, edges in graph.items():
        if name.split('.')[0] in LIBRARY:
            assert not edges & set(SCRIPTS), (name, edges & set(SCRIPTS))
            if not name.startswith('ssd_tf.cli'):
                assert not any(e.startswith('ssd_tf.cli') for e in edges), name


MAX_FUNCTION_LINES = 80  # the house limit: a longer function is split into named helpers


def test_no_function_over_80_lines():
    long = []
    for name, path in _modules().items():
        for node in ast.walk(ast.parse(open(path).read())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    long.append(f'{name}.{node.name}: {lines} lines')
    assert long == []


def _run(code):
    return subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                          cwd=ROOT, env=dict(os.environ, PYTHONPATH=ROOT,
                                             TF_CPP_MIN_LOG_LEVEL='3'), timeout=300)


@pytest.mark.slow
def test_import_of_box_maths_does_not_load_the_training_and_export_stack():
    r = _run("import sys, ssd_tf.boxes; print(sorted(m for m in sys.modules "
             "if m.startswith(('ssd_tf', 'nets', 'preprocessing'))))")
    assert r.returncode == 0, r.stderr[-2000:]
    # ssd_tf.quiet: the package's start-up (standard library only, tests/test_quiet.py).
    assert r.stdout.strip().splitlines()[-1] == "['ssd_tf', 'ssd_tf.boxes', 'ssd_tf.quiet']"


@pytest.mark.slow
def test_load_model_of_a_keras_file_after_import_ssd_tf(tmp_path):
    path = str(tmp_path / 'det.keras')
    r = _run(f"import ssd_tf; d = ssd_tf.SSDDetector.from_network('ssd_small', "
             f"label_names=['a', 'b']); d.save({path!r})")
    assert r.returncode == 0, r.stderr[-2000:]
    # a fresh process: only `import ssd_tf`, then Keras finds the class by its registered name
    r = _run(f"import sys, keras, ssd_tf; assert 'ssd_tf.keras_detector' not in sys.modules; "
             f"m = keras.saving.load_model({path!r}); "
             f"print(type(m).__module__, type(m).__name__, list(m.label_names))")
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip().splitlines()[-1] == "ssd_tf.keras_detector SSDDetector ['a', 'b']"


def test_console_entry_points_are_declared_and_resolve():
    text = open(os.path.join(ROOT, 'pyproject.toml')).read()
    for name, target in ENTRY_POINTS.items():
        assert f'{name} = "{target}"' in text, name
        module, func = target.split(':')
        if module in SCRIPTS:
            # each script defines its absl flags on import (two in one process clash): its
            # entry function is read from its source
            tree = ast.parse(open(os.path.join(ROOT, module + '.py')).read())
            assert func in {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}, target
        else:
            assert callable(getattr(importlib.import_module(module), func)), target


@pytest.mark.slow
def test_an_entry_point_and_an_old_module_path_run(tmp_path):
    # the entry point's function, called as the console script would
    r = _run("import sys; sys.argv = ['ssd-anchors', '--dataset_name', 'synthetic', "
             "'--num_images', '4', '--model_name', 'ssd_small']; "
             "from ssd_tf.cli.anchors import main; sys.exit(main())")
    assert r.returncode == 0, r.stderr[-2000:]
    assert '4 images' in r.stdout
    # the documented `python -m ssd_tf.datasets.check` hands over to ssd_tf.cli.check_data
    # (its help text is the one of the program module)
    r = subprocess.run([sys.executable, '-m', 'ssd_tf.datasets.check', '--help'],
                       capture_output=True, text=True, cwd=ROOT,
                       env=dict(os.environ, PYTHONPATH=ROOT), timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert 'ssd-check-data' in r.stdout and '--strict_data' in r.stdout, r.stdout


@pytest.mark.slow
def test_the_shared_flags_are_defined_once_with_one_help_text():
    from nets import nets_factory
    from ssd_tf.cli import flags as shared_flags
    helps = {}
    for script in ('eval_ssd', 'export_savedmodel', 'detect'):
        r = _run(f"import json, {script}; f = {script}.flags.FLAGS; print(json.dumps("
                 f"[f[n].help for n in ('model_name', 'num_classes', 'label_map')] + "
                 f"([f['select_threshold'].help, f['select_top_k'].default] "
                 f"if 'select_top_k' in f else [None, None])))")
        assert r.returncode == 0, r.stderr[-2000:]
        helps[script] = json.loads(r.stdout.strip().splitlines()[-1])
    model_help = helps['detect'][0]
    for script, (model, classes, labels, select, top_k) in helps.items():
        assert model == model_help and classes.startswith(helps['detect'][1]), script
        assert labels.startswith("Label map file (labels.txt, .json or an OD API"), script
        if script != 'detect':
            assert select == 'Score threshold: class scores below it are not detections.'
            assert top_k == 400  # postprocess.SELECT_TOP_K, slim's default
    for name in nets_factory.networks_map:  # every registered network is named
        assert f"'{name}'" in shared_flags.NETWORK_NAMES
