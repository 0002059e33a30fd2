"""The tests' own report: the lines at the end of a pytest run that count the skipped tests by
reason (tests/conftest.py), as a person running the tests sees them."""

from __future__ import annotations

import os
from types import SimpleNamespace

from conftest import FACADES_SKIP, ROOT, run_script, skip_summary

SKIPPING_TESTS = """
import pytest
from conftest import require


@pytest.mark.skipif(True, reason="needs a CUDA GPU")
@pytest.mark.parametrize("i", range(2))
def test_on_cuda(i):
    pass


@pytest.mark.parametrize("i", range(3))
def test_on_the_real_data(facades, i):  # a session fixture: it skips every test that asks for it
    pass


def test_with_a_missing_package():
    require("no_such_package_anywhere")


def test_that_runs():
    pass
"""


def test_every_skipped_test_is_counted_under_its_reason(tmp_path):
    """A session-scoped fixture that skips (the real data) skips each of its tests: all count."""
    (tmp_path / "test_skips.py").write_text(SKIPPING_TESTS)
    env = {k: v for k, v in os.environ.items() if k != "CI"}  # CI fails where others skip
    env["PIX2PIX_FACADES"] = str(tmp_path / "nowhere")
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "tests"), str(ROOT)])
    pytest_args = ["-q", "-p", "no:cacheprovider", "-p", "conftest", "--rootdir", tmp_path]
    result = run_script(
        "-m", "pytest", *pytest_args, tmp_path / "test_skips.py", cwd=ROOT, env=env, timeout=300
    )
    assert result.returncode == 0 and "1 passed, 6 skipped" in result.stdout, result.stdout[-3000:]
    notes = [line for line in result.stdout.splitlines() if line.startswith("note:")]
    assert len(notes) == 3, notes
    assert notes[0].startswith(f"note: 3 skipped: {FACADES_SKIP} ") and "PIX2PIX_FACADES=<folder>" in notes[0]
    assert notes[1:] == [
        "note: 2 skipped: needs a CUDA GPU",
        "note: 1 skipped: no_such_package_anywhere not installed",
    ]


def test_reasons_are_read_from_the_reports_as_pytest_writes_them():
    reports = [
        SimpleNamespace(longrepr=("t.py", 3, "Skipped: needs a CUDA GPU")),
        SimpleNamespace(longrepr=("t.py", 9, "Skipped: selenium not installed")),
        SimpleNamespace(longrepr=("u.py", 4, "Skipped: needs a CUDA GPU")),
        SimpleNamespace(longrepr="Skipped: an odd report"),  # not the usual triple
    ]
    assert skip_summary(reports) == [
        "note: 2 skipped: needs a CUDA GPU",
        "note: 1 skipped: selenium not installed",
        "note: 1 skipped: an odd report",
    ]
    assert skip_summary([]) == []
