"""The mutation check of benchmarks/mutation.py: every guard it switches off is found in the code exactly once (so
the check cannot drift into switching off nothing), and one guard run end to end fails without it."""

from __future__ import annotations

import json
from pathlib import Path

from benchmarks import mutation

ROOT = Path(__file__).resolve().parents[2]


def test_every_guard_text_is_in_its_file_once_and_its_test_exists():
    for g in mutation.GUARDS:
        text = g.source.read_text()
        assert all(text.count(old) == 1 for old in (g.old, *(a for a, _ in g.also))), (g.name, g.file)
        path, _, sel = g.test.partition("::")
        text = (ROOT / path).read_text()
        assert not sel or sel.startswith("-k ") or f"def {sel}(" in text, (g.name, g.test)


def test_a_guard_switched_off_in_a_copy_makes_its_test_fail():
    guard = next(g for g in mutation.GUARDS if g.name == "the SHA-256 check")
    control = mutation.check(guard, timeout_s=300, mutate=False)  # the copy itself is sound: the test passes there
    assert control["pytest_exit"] == 0, control
    row = mutation.check(guard, timeout_s=300)
    assert row["fails_without_its_guard"] is True and row["pytest_exit"] == 1, row


def test_every_row_of_the_reliability_table_names_guards_the_last_mutation_run_proved():
    """docs/reliability.md's column "fails without its guard" against benchmarks/results/mutation.json: every row
    says yes, names guards of benchmarks/mutation.py, and the last run found each of them failing its test."""
    text = (ROOT / "docs" / "reliability.md").read_text()
    start = text.index("| fault or attack | what holds | test | fails without its guard |")
    rows = text[start:text.index("\n\n", start)].splitlines()[2:]
    proved = {r["guard"]: r.get("fails_without_its_guard") is True
              for r in json.loads((ROOT / "benchmarks" / "results" / "mutation.json").read_text())["rows"]}
    names = {g.name for g in mutation.GUARDS}
    assert len(rows) >= 20
    for row in rows:
        cell = row.rstrip(" |").rsplit(" | ", 1)[1]
        assert cell.startswith("yes: "), row[:120]
        for guard in cell[len("yes: "):].split("; "):
            assert guard in names, (guard, row[:120])
            assert proved.get(guard), f"{guard}: not proved by benchmarks/results/mutation.json"
    assert all(proved.get(g) for g in names), [g for g in names if not proved.get(g)]
