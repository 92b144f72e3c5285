"""What an import did: its counts and the problems it met.

Its own module, free of SQLAlchemy, because the process that reads a big
file for an import (`stagereader`) fills one and sends it back: starting
that process with SQLAlchemy imported cost a third of a second in which the
importing process waited for its first rows.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from newsletter.audience.csvformats import FileInfo
from newsletter.errors import Problem

MAX_PROBLEMS = 1000  # kept for the report; every one is still counted


@dataclass
class ImportCounts:
    """What an import did (or, with --dry-run, would do), counted per address."""

    rows: int = 0
    new: int = 0  # joined the list
    updated: int = 0  # already on the list; name, attributes or status changed
    unchanged: int = 0
    kept_suppressed: int = 0  # the file said active; the store's suppression stayed
    invalid: int = 0  # rows skipped (bad address or no address)
    duplicates: int = 0  # rows merged into an earlier row of the same address
    warnings: int = 0
    removed: int = 0  # sync only: left the list because the file no longer has them
    write_lock_seconds: float | None = None  # a staged import's merge (bench/import.py)
    write_lock_cpu_seconds: float | None = None
    problems: list[Problem] = field(default_factory=list)
    files: list[FileInfo] = field(default_factory=list)

    def report(self, problem: Problem) -> None:
        if problem.severity == "error":
            self.invalid += 1
        else:
            self.warnings += 1
        if len(self.problems) < MAX_PROBLEMS:
            self.problems.append(problem)

    def as_dict(self) -> dict[str, int]:
        keys = ("rows", "new", "updated", "unchanged", "kept_suppressed", "invalid")
        more = ("duplicates", "warnings", "removed")
        return {k: getattr(self, k) for k in keys + more}
