"""`core` is a library: it never imports the UI (`textual`, `rich`, `textual_plotext`, `wvtui`).

Two independent checks: import-linter's contract from pyproject.toml (which follows imports
through the whole package graph), and a plain AST scan of every `core/*.py` (which needs no
tool and catches an import hidden in a function body just the same). Each is also run on a
planted violation, so a check that silently passes everything would fail here.
"""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import textwrap
from pathlib import Path


REPO = Path(__file__).resolve().parent.parent
FORBIDDEN = ("textual", "textual_plotext", "rich", "wvtui")


def forbidden_imports(source: str, filename: str = "<source>") -> list[str]:
    """Every `import X` / `from X import` of a forbidden top-level package, as "file:line module"."""
    found = []
    for node in ast.walk(ast.parse(source, filename=filename)):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        for name in names:
            if name.split(".")[0] in FORBIDDEN:
                found.append((node.lineno, f"{filename}:{node.lineno} {name}"))
    return [text for _, text in sorted(found)]


def lint_imports(cwd: Path) -> subprocess.CompletedProcess:
    exe = shutil.which("lint-imports")
    assert exe is not None, "lint-imports (import-linter) is not installed: pip install -e '.[test]'"
    env = {**os.environ, "PYTHONPATH": str(cwd)}
    return subprocess.run([exe, "--no-cache", "--no-logo"], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=120)


def test_core_sources_import_no_ui_package():
    files = sorted((REPO / "core").glob("*.py"))
    assert len(files) >= 5, "core/ not found where expected"
    violations = [v for f in files for v in forbidden_imports(f.read_text(), str(f.relative_to(REPO)))]
    assert violations == []


def test_ast_scan_catches_a_planted_import():
    source = textwrap.dedent("""
        import os
        def later():
            from textual.app import App
            import wvtui.app as ui
        from rich import print
        from .relative import textual
    """)
    assert forbidden_imports(source, "x.py") == ["x.py:4 textual.app", "x.py:5 wvtui.app", "x.py:6 rich"]


def test_import_linter_contract_is_kept():
    result = lint_imports(REPO)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "core is a library: it never imports the UI KEPT" in result.stdout


def test_import_linter_contract_breaks_on_a_planted_import(tmp_path):
    # The real pyproject.toml (same contract) over a copy of core/ with one bad module added.
    shutil.copy(REPO / "pyproject.toml", tmp_path / "pyproject.toml")
    shutil.copytree(REPO / "core", tmp_path / "core", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(REPO / "wvtui", tmp_path / "wvtui", ignore=shutil.ignore_patterns("__pycache__"))
    (tmp_path / "core" / "leak.py").write_text("from wvtui.app import TrainingApp\n")
    result = lint_imports(tmp_path)
    assert result.returncode != 0, result.stdout
    assert "BROKEN" in result.stdout and "core.leak" in result.stdout
