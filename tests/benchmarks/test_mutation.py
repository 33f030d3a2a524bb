"""The mutation check of benchmarks/mutation.py: every guard it switches off is found in the code exactly once (so
the check cannot drift into switching off nothing), and one guard run end to end fails without it."""

from __future__ import annotations

from pathlib import Path

from benchmarks import mutation

ROOT = Path(__file__).resolve().parents[2]


def test_every_guard_text_is_in_its_file_once_and_its_test_exists():
    for g in mutation.GUARDS:
        assert (ROOT / g.file).read_text().count(g.old) == 1, (g.name, g.file)
        path, _, sel = g.test.partition("::")
        text = (ROOT / path).read_text()
        assert not sel or sel.startswith("-k ") or f"def {sel}(" in text, (g.name, g.test)


def test_a_guard_switched_off_in_a_copy_makes_its_test_fail():
    guard = next(g for g in mutation.GUARDS if g.name == "the SHA-256 check")
    control = mutation.check(guard, timeout_s=300, mutate=False)  # the copy itself is sound: the test passes there
    assert control["pytest_exit"] == 0, control
    row = mutation.check(guard, timeout_s=300)
    assert row["fails_without_its_guard"] is True and row["pytest_exit"] == 1, row
