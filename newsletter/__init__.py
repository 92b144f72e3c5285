"""newsletter: a Jekyll blog's Markdown posts, as email, to subscriber lists."""

__version__ = "0.1.0"

# The garbage collector's thresholds for every newsletter process (the CLI's
# and a big mailing's worker processes).  Start-up creates ~300k long-lived
# objects (SQLAlchemy, click, the posts); at the default threshold (700) the
# collector ran ~140 times over them, 13 % of a `run --once` (profiled), and
# during a mailing it kept walking them (perf: ~4 % of a send's CPU).  A
# larger first generation still collects cycles, ~140x less often; memory
# cost: at most that many young objects.  At 50,000 every command still paid
# one collection (15-25 ms of CPU, its objects scattered over memory) finding
# a few hundred cycles; the commands people run most (`run --once`, `send`,
# `render`, `posts`) hold 60-80k objects when they end, so at 100,000 they
# exit before any.
GC_THRESHOLDS = (100_000, 10, 10)
