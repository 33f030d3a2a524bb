"""The README's command blocks and ``benchmarks/readme_commands.py``'s plan agree: every command a user can copy has
an entry saying how the fresh-clone check runs it, and no entry is left for a command the README no longer has."""

from __future__ import annotations

from pathlib import Path

from benchmarks import readme_commands as rc

ROOT = Path(__file__).resolve().parents[2]


def test_parsing_joins_continuations_and_drops_comments():
    text = ("## S\n\n```bash\n# a whole-line comment\nfoo --a 1 \\\n    --b 2    # why\n\nbar s3://x?y#z\n```\n"
            "```python\nimport os   # c\nprint(os.sep)\n```\n```\nnot a command\n```\n")
    assert rc.readme_commands(text) == [("S", "bash", "foo --a 1 --b 2"), ("S", "bash", "bar s3://x?y#z"),
                                        ("S", "python", "import os\nprint(os.sep)")]


def test_every_readme_command_has_a_plan_and_every_plan_a_command():
    commands = [c for _, _, c in rc.doc_commands(ROOT)]
    assert len(commands) > 30  # the parser found the blocks
    missing = [c for c in commands if c not in rc.PLAN]
    stale = [c for c in rc.PLAN if c not in commands]
    assert not missing, f"README commands with no entry in benchmarks/readme_plan.py PLAN: {missing}"
    assert not stale, f"PLAN entries for commands the README no longer has: {stale}"
    for c, step in rc.PLAN.items():
        assert step.kind in {"run", "cap", "serve", "background", "skip"}, (c, step.kind)
        assert step.kind != "skip" or step.reason, f"a skipped command must say why: {c}"
        assert step.kind != "cap" or step.cap_s > 0, c
        assert all(a in c for a in step.subs), f"a substitution names text the command lacks: {c}"
        assert not step.setup or step.setup in rc.SETUPS, step.setup
    for i, c in enumerate(commands):  # a server left running for later commands is stopped by one of them
        if rc.PLAN[c].kind == "background":
            assert rc.PLAN[c].url and any(rc.PLAN[d].stop_servers for d in commands[i + 1:]), c


def test_every_docs_page_is_in_the_checked_order():
    """A page left out of readme_commands.DOCS would have commands nobody runs."""
    assert sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "docs").glob("*.md")) == sorted(
        p for p in rc.DOCS if p.startswith("docs/"))
