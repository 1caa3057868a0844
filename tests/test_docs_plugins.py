"""docs/plugins.md keeps up with the code: it names every public name and hook, its quoted
code is in the files it is quoted from, its Python compiles, and its self-contained
examples run. The README's plugin example runs too."""

from __future__ import annotations

import ast
import dataclasses
import inspect
import re
from pathlib import Path

import pytest

import harness
from harness import hookspecs
from harness import testing as harness_testing

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "plugins.md"
README = ROOT / "README.md"

#: a fenced block, with the HTML comment just before it (if any): ``<!-- from: PATH -->``
#: (every line of the block is a line of PATH) or ``<!-- test: run -->`` (it runs as it is)
BLOCK = re.compile(r"(?:<!-- (?P<mark>[a-z]+): (?P<arg>[^>]*?) -->\n[ \t]*)?"
                   r"```(?P<lang>[a-z]*)\n(?P<body>.*?)^[ \t]*```", re.S | re.M)


def blocks(path: Path) -> list[dict[str, str]]:
    text = path.read_text()
    out = []
    for m in BLOCK.finditer(text):
        body = m.group("body")
        indent = min((len(line) - len(line.lstrip()) for line in body.splitlines()
                      if line.strip()), default=0)
        body = "\n".join(line[indent:] for line in body.splitlines()) + "\n"
        line = text.count("\n", 0, m.start("body")) + 1
        out.append({"mark": m.group("mark") or "", "arg": (m.group("arg") or "").strip(),
                    "lang": m.group("lang"), "body": body, "line": str(line),
                    "start": m.start()})
    return out


def words(path: Path) -> set[str]:
    return set(re.findall(r"[A-Za-z_][A-Za-z0-9_]*", path.read_text()))


DOC_BLOCKS = blocks(DOC)


def test_every_public_name_is_documented():
    missing = [name for name in harness.__all__ if name not in words(DOC)]
    assert not missing, f"docs/plugins.md does not mention {missing}"
    assert f'"{harness.__api_version__}"' in DOC.read_text()


def test_every_hook_is_documented():
    hooks = [n for n, f in vars(hookspecs).items()
             if n.startswith(("register_", "harness_")) and callable(f)]
    assert len(hooks) >= 9
    missing = [h for h in hooks if h not in words(DOC)]
    assert not missing, f"docs/plugins.md does not mention the hooks {missing}"


def test_the_testing_helpers_and_the_context_are_documented():
    names = ["make_registry", "tiny_data", "tiny_model", "strict_device", "check_attack",
             "check_metric", "check_analysis", "run_suite_text", "AttackCheck",
             "harness_registry", "run_suite"]
    assert all(hasattr(harness_testing, n) for n in names)
    names += [f.name for f in dataclasses.fields(harness.Context) if not f.name.startswith("_")]
    names += [n for n, _ in inspect.getmembers(harness.Context, inspect.isfunction)
              if not n.startswith("_")]
    names += [f.name for f in dataclasses.fields(harness.AttackResult)]
    from harness.plugins import BLOCK_ENV, GROUP, ONLY_ENV

    names += [BLOCK_ENV, ONLY_ENV]
    missing = [n for n in names if n not in words(DOC)]
    assert not missing, f"docs/plugins.md does not mention {missing}"
    assert f"group `{GROUP}`" in DOC.read_text()


def _reference_stubs() -> list[tuple[str, str, ast.FunctionDef]]:
    """(class name or "", function name, node) of every ``def`` in the Reference's blocks."""
    text = DOC.read_text()
    ref = text.index("## Reference")
    out = []
    for block in DOC_BLOCKS:
        if block["lang"] != "python" or block["start"] < ref:
            continue
        for node in ast.parse(block["body"]).body:
            if isinstance(node, ast.FunctionDef):
                out.append(("", node.name, node))
            elif isinstance(node, ast.ClassDef):
                out += [(node.name, f.name, f) for f in node.body
                        if isinstance(f, ast.FunctionDef)]
    return out


def _real(cls_name: str, name: str):
    import harness.base
    import harness.context
    import harness.errors

    modules = [harness, harness_testing, harness.context, harness.errors, harness.base,
               hookspecs]
    owner = None
    if cls_name:
        owner = next((getattr(m, cls_name) for m in modules if hasattr(m, cls_name)), None)
        return None if owner is None else inspect.getattr_static(owner, name, None)
    return next((getattr(m, name) for m in modules if hasattr(m, name)), None)


def test_reference_signatures_match_the_code():
    """Every ``def`` of the Reference has the real function's parameters, in order, with its
    defaults."""
    checked = 0
    for cls_name, name, node in _reference_stubs():
        real = _real(cls_name, name)
        if isinstance(real, (classmethod, staticmethod)):
            real = real.__func__
        if isinstance(real, property):
            real = real.fget
        assert callable(real), f"docs/plugins.md documents {cls_name}.{name}, which is not in the code"
        params = [p for p in inspect.signature(inspect.unwrap(real)).parameters.values()
                  if p.name not in ("self", "cls")]
        args = node.args
        shown = [a.arg for a in args.posonlyargs + args.args + args.kwonlyargs
                 if a.arg not in ("self", "cls")]
        if args.vararg:
            shown.insert(len(args.posonlyargs + args.args), args.vararg.arg)
        if args.kwarg:
            shown.append(args.kwarg.arg)
        where = f"{cls_name + '.' if cls_name else ''}{name}"
        assert sorted(shown) == sorted(p.name for p in params), \
            f"{where}: the docs show {shown}, the code has {[p.name for p in params]}"
        defaults = dict(zip([a.arg for a in args.posonlyargs + args.args][-len(args.defaults):]
                            if args.defaults else [], args.defaults))
        defaults.update({a.arg: d for a, d in zip(args.kwonlyargs, args.kw_defaults) if d})
        for p in params:
            node_default = defaults.get(p.name)
            if p.default is inspect.Parameter.empty:
                assert node_default is None, f"{where}: {p.name} has no default in the code"
                continue
            assert node_default is not None, f"{where}: the docs give {p.name} no default"
            try:
                value = ast.literal_eval(node_default)
            except ValueError:
                continue
            assert value == p.default, \
                f"{where}: the docs give {p.name}={value!r}, the code {p.default!r}"
        checked += 1
    assert checked >= 40


@pytest.mark.parametrize("block", [b for b in DOC_BLOCKS if b["lang"] == "python"],
                         ids=lambda b: f"line{b['line']}")
def test_python_blocks_compile(block):
    compile(block["body"], f"docs/plugins.md:{block['line']}", "exec")


@pytest.mark.parametrize("block", [b for b in DOC_BLOCKS if b["mark"] == "from"],
                         ids=lambda b: f"line{b['line']}")
def test_quoted_code_is_in_its_file(block):
    source = {line.strip() for line in (ROOT / block["arg"]).read_text().splitlines()}
    missing = [line for line in block["body"].splitlines()
               if line.strip() and line.strip() != "..." and line.strip() not in source]
    assert not missing, (f"docs/plugins.md:{block['line']} quotes lines that "
                         f"{block['arg']} does not have: {missing}")


RUNNABLE = [b for b in DOC_BLOCKS if b["mark"] == "test"]


def test_there_are_runnable_examples():
    assert len(RUNNABLE) >= 3 and all(b["lang"] == "python" for b in RUNNABLE)


@pytest.mark.parametrize("block", RUNNABLE, ids=lambda b: f"line{b['line']}")
def test_self_contained_examples_run(block):
    namespace = {"__name__": "docs_example"}
    exec(compile(block["body"], f"docs/plugins.md:{block['line']}", "exec"), namespace)


def test_builtin_parameters_in_the_docs_are_real():
    """The built-in plugins the docs quote with a parameter have that parameter."""
    from harness.testing import make_registry

    reg = make_registry()
    noise = reg.get("attack", "gaussian-noise").cls
    assert {"stddev", "clip"} <= set(noise.parameters())
    torch_model = reg.get("model", "torch").cls
    assert torch_model.code_params == ("factory",)
    assert "class" in reg.get("dataset", "torchvision").cls.parameters()


def test_the_readme_plugin_example_uses_params_and_runs():
    text = README.read_text()
    start = text.index("## Writing a plugin")
    end = text.index("\n## ", start + 1)
    assert "docs/plugins.md" in text[start:end]
    code = [b for b in blocks(README) if b["lang"] == "python" and start < b["start"] < end]
    assert code, "the README's 'Writing a plugin' section has no Python example"
    body = code[0]["body"]
    assert "class Params(Params)" in body and "def __init__(self, *" not in body
    namespace = {"__name__": "readme_example"}
    exec(compile(body, "README.md", "exec"), namespace)
    attack = next(v for v in namespace.values() if isinstance(v, type)
                  and issubclass(v, harness.Attack) and v is not harness.Attack)
    harness_testing.check_attack(attack())
