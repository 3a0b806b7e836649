"""The package's layout rules, checked over every module found on disk (a new module is covered without
being listed here): what imports without torch, and how long a module or a function may grow.
"""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

from .helpers import REPO, run_without_torch

PACKAGE = REPO / "rnnexport"

# The torch side: everything under builder/ (the export pipeline), and the family modules of archs/
# that define the PyTorch classes. A target machine installs no torch, so every other module (archs'
# catalog included: the registry imports it to list the architectures) must import without it.
TORCH_SIDE_PACKAGES = ("rnnexport.builder",)
TORCH_SIDE_MODULES = {"rnnexport.archs._common", "rnnexport.archs.parallel", "rnnexport.archs.sequence"}

MAX_MODULE_LINES = 600
MAX_FUNCTION_LINES = 80
# The reason a module or function may stay longer: a comment that starts the line, with words after it.
# A comment line, or a comment after code on the line (``def build(  # long: ...``).
LONG = re.compile(r"^\s*# long: *\S|\S\s+# long: *\S")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def _torch_side(name: str) -> bool:
    return name in TORCH_SIDE_MODULES or any(
        name == package or name.startswith(package + ".") for package in TORCH_SIDE_PACKAGES
    )


def test_the_walk_finds_the_package_and_the_torch_side_list_names_real_modules() -> None:
    found = _modules()
    assert {"rnnexport", "rnnexport.safeio", "rnnexport.cli", "rnnexport.builder.pipeline"} <= set(found)
    assert set(found) >= TORCH_SIDE_MODULES, "a torch-side module listed here no longer exists"


def test_every_module_off_the_torch_side_imports_without_torch() -> None:
    names = [name for name in _modules() if not _torch_side(name)]
    # One child for all of them (each in a fresh child would take a second apiece); every failure is
    # collected, so one broken import cannot hide another.
    code = (
        "import importlib, json\n"
        "failed = {}\n"
        f"for name in {names!r}:\n"
        "    try:\n"
        "        importlib.import_module(name)\n"
        "    except BaseException as exc:\n"
        "        failed[name] = f'{type(exc).__name__}: {exc}'\n"
        "print(json.dumps(failed))\n"
    )
    result = run_without_torch(code)
    assert result.returncode == 0, result.stderr
    failed = json.loads(result.stdout.splitlines()[-1])
    assert failed == {}, "these modules need torch at import:\n" + "\n".join(
        f"  {name}: {error}" for name, error in failed.items()
    )


def _start(lines: list[str], node: ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef) -> int:
    """The index of the first line that belongs to ``node``: its decorators, and the comment lines
    right above them (where a function's ``# long:`` reason may stand)."""
    first = min([node.lineno, *(decorator.lineno for decorator in node.decorator_list)]) - 1
    while first > 0 and lines[first - 1].lstrip().startswith("#"):
        first -= 1
    return first


def _module_is_marked_long(lines: list[str], tree: ast.Module) -> bool:
    """A ``# long:`` comment in the module's header: before its first def or class (and before the
    comments that belong to that one)."""
    definitions = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)
    first = next((_start(lines, node) for node in tree.body if isinstance(node, definitions)), len(lines))
    return any(LONG.search(line) for line in lines[:first])


def _function_is_marked_long(lines: list[str], node: ast.FunctionDef | ast.AsyncFunctionDef) -> bool:
    """A ``# long:`` comment at the top of the function: in the comment lines right above it, or from
    its ``def`` to its first statement after the docstring."""
    body = node.body
    has_docstring = (
        isinstance(body[0], ast.Expr)
        and isinstance(body[0].value, ast.Constant)
        and isinstance(body[0].value.value, str)
    )
    statements = body[1:] if has_docstring else body
    last = statements[0].lineno if statements else (node.end_lineno or node.lineno)
    return any(LONG.search(line) for line in lines[_start(lines, node) : last])


def _size_problems(path: Path, where: str) -> list[str]:
    """Each way the file at ``path`` breaks the size limits without saying why, one line each."""
    text = path.read_text(encoding="utf-8")
    lines = text.splitlines()
    tree = ast.parse(text, filename=str(path))
    problems: list[str] = []
    if len(lines) > MAX_MODULE_LINES and not _module_is_marked_long(lines, tree):
        problems.append(f"{where}: module has {len(lines)} lines (limit {MAX_MODULE_LINES})")
    for node in ast.walk(tree):
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        length = (node.end_lineno or node.lineno) - node.lineno + 1
        if length > MAX_FUNCTION_LINES and not _function_is_marked_long(lines, node):
            problems.append(
                f"{where}:{node.lineno}: function {node.name} has {length} lines (limit {MAX_FUNCTION_LINES})"
            )
    return problems


def _function(name: str, lines: int, *, marker: str = "", docstring: bool = True) -> str:
    """Source of a top-level function ``lines`` long, ``def`` and docstring included."""
    head = [f"def {name}() -> int:"]
    if docstring:
        head.append('    """A docstring."""')
    if marker:
        head.append(f"    {marker}")
    body = [f"    x{i} = {i}" for i in range(lines - len(head) - 1)]
    return "\n".join([*head, *body, "    return 0"]) + "\n"


def test_the_size_rule_counts_lines_and_honours_the_reason(tmp_path: Path) -> None:
    cases = {
        # 600 assignments and a function at the limit: the module is over, the function is not.
        "unmarked.py": ("x = 1\n" * 600 + _function("f", 80), ["module"]),
        "marked.py": ("# long: one table\n" + "x = 1\n" * 700, []),
        "late_marker.py": ("x = 1\n" * 700 + _function("g", 3) + "# long: too late\n", ["module"]),
        # A reason right above the first function is that function's, not the module's.
        "first_function_marked.py": ("x = 1\n" * 700 + "# long: why g\n" + _function("g", 90), ["module"]),
        # The module's own reason (it is over 600 lines) excuses none of its functions.
        "functions.py": (
            "# long: many functions\n\n"
            + _function("at_limit", 80)
            + _function("over", 81)
            + _function("over_marked", 90, marker="# long: one branch per opcode")
            + _function("bare_marker", 90, marker="# long:")
            + _function("no_docstring_marked", 90, marker="# long: a reason", docstring=False)
            + "def on_the_def_line(  # long: one parameter per option\n) -> int:\n"
            + "    x = 0\n" * 85
            + "    return x\n"
            + "# long: a reason above it\n@staticmethod\n"
            + _function("marked_above", 90)
            + "# long: above, but not right above\n\n"
            + _function("gap_above", 90)
            + "def body_marker() -> None:\n"
            + "    pass\n" * 85
            + "    # long: not at the top\n",
            ["over", "bare_marker", "gap_above", "body_marker"],
        ),
    }
    for name, (source, expected) in cases.items():
        (tmp_path / name).write_text(source)
        problems = _size_problems(tmp_path / name, name)
        found = ["module" if " module has " in p else p.split(" function ")[1].split()[0] for p in problems]
        assert found == expected, (name, problems)
    assert _size_problems(tmp_path / "functions.py", "functions.py")[0] == (
        "functions.py:83: function over has 81 lines (limit 80)"
    )


def _too_long() -> list[str]:
    offenders: list[str] = []
    for path in _modules().values():
        offenders += _size_problems(path, path.relative_to(REPO).as_posix())
    return offenders


def test_modules_and_functions_stay_short_or_say_why_not() -> None:
    offenders = _too_long()
    assert not offenders, (
        f"{len(offenders)} over the size limits; split them, or give the reason in a comment starting "
        "'# long:' at the top of the module or function:\n" + "\n".join(offenders)
    )
