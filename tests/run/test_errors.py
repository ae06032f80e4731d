"""User errors: one base class; commands print its message and exit 1, while a bug keeps its traceback."""
import ast
import pathlib
import subprocess
import sys

import pytest

import diffens_auto
from diffens_auto.errors import DiffensError, MissingFileError
from diffens_auto.run.errors import run_command

PACKAGE = pathlib.Path(diffens_auto.__file__).parent


def _error_classes() -> list[tuple[str, str]]:
    """(module path, class name) of every class named *Error (or CaseFailed) defined in the package."""
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.parse(path.read_text(encoding="utf-8")).body:
            if isinstance(node, ast.ClassDef) and (node.name.endswith("Error") or node.name == "CaseFailed"):
                found.append((str(path.relative_to(PACKAGE.parent)), node.name))
    return found


def test_every_error_class_of_the_package_is_a_user_error():
    import importlib
    classes = _error_classes()
    assert len(classes) > 15
    for path, name in classes:
        module = importlib.import_module(path[:-3].replace("/", "."))
        assert issubclass(getattr(module, name), DiffensError), f"{path}: {name} does not subclass DiffensError"


def test_a_user_error_is_a_message_and_exit_status_1(capsys):
    def work():
        raise MissingFileError("/data/x.json not found. Fix: run diffens_plan_and_preprocess first.")
    with pytest.raises(SystemExit) as exit_info:
        run_command(work)
    assert exit_info.value.code == 1
    assert capsys.readouterr().err == "ERROR: /data/x.json not found. Fix: run diffens_plan_and_preprocess first.\n"


def test_a_user_error_keeps_its_builtin_base():
    assert issubclass(MissingFileError, FileNotFoundError)
    with pytest.raises(FileNotFoundError):
        raise MissingFileError("missing")


@pytest.mark.parametrize("error", [FileNotFoundError("no such file"), KeyError("plans"), ZeroDivisionError()])
def test_an_unexpected_exception_is_not_swallowed(error):
    def work():
        raise error
    with pytest.raises(type(error)):
        run_command(work)


def test_a_command_shows_the_traceback_of_a_bug(tmp_path):
    script = ("from diffens_auto.run.errors import run_command\n"
              "def work():\n    raise KeyError('a bug')\n"
              "run_command(work)\n")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert result.returncode == 1
    assert "Traceback" in result.stderr and "KeyError: 'a bug'" in result.stderr
