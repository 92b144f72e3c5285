"""Which strategy drives a pass's connections (`[delivery] strategy`).

Split from `mailing_pass`: the choice needs only the settings, whether the
pass shares one transport, and (for "auto") one probe of the SMTP server.
"""

from __future__ import annotations

from newsletter.config import Settings
from newsletter.delivery.strategy import PassCore, Strategy
from newsletter.delivery.threaded import ThreadedStrategy
from newsletter.delivery.transports import make_transport
from newsletter.errors import NewsletterError

__all__ = ["choose_strategy", "server_pipelines"]


def choose_strategy(core: PassCore, settings: Settings, *, shared: bool) -> Strategy:
    """How SMTP connections are driven (`[delivery] strategy`); threads otherwise.

    `shared`: the pass sends through one transport its caller gave (threads).
    "auto": the streams (one event loop) for two connections or more,
    whether the server offers PIPELINING or not; for one connection the
    streams with PIPELINING, a thread without it (one probe connection
    asks).  Measured without PIPELINING (bench/send.py --pipelining off
    --only threaded,streams, smtp-sink -p, N = 20,000, 3 runs interleaved,
    2 December, evening), streams / threads run by run, medians at C = 1 /
    2 / 4 / 8: quiet (load 0.7-3.1) rate 0.71 / 1.12 / 1.51 / 1.80, CPU
    per message 1.52 / 0.73 / 0.61 / 0.54; with two `nice` CPU hogs (load
    2.3-6.3) rate 0.97 / 1.27 / 1.21 / 1.53, CPU 1.32 / 0.86 / 0.81 /
    0.70.  At one connection the loop's per-callback cost over four round
    trips a message is not shared with other connections, and the thread
    is ahead; with several, one loop's grouped commits beat a thread per
    connection's GIL hand-offs.  (The
    threads were chosen without PIPELINING on 1 December at load ~8,
    before the streams ran on uvloop; "threads win under load" no longer
    held with the hogs.)  bench/send.py measures this choice ("ours").
    """
    choice = settings.delivery.strategy
    if shared or settings.delivery.transport != "smtp":
        return ThreadedStrategy(core)
    from newsletter.delivery.rounds import RoundsStrategy
    from newsletter.delivery.streams import StreamsStrategy

    if choice == "streams":
        return StreamsStrategy(core)
    if choice == "threaded":
        return ThreadedStrategy(core)
    if choice == "auto" and core.workers > 1:
        return StreamsStrategy(core)  # no probe: the streams either way
    if not server_pipelines(settings):
        return ThreadedStrategy(core)
    return RoundsStrategy(core) if choice == "rounds" else StreamsStrategy(core)


def server_pipelines(settings: Settings) -> bool:
    """Whether the SMTP server offers PIPELINING (one-thread rounds need it).

    Without it each message costs three more round trips, which a thread
    per connection overlaps.  Any trouble connecting is left to the
    threaded path, which reports it as it always has.
    """
    if settings.delivery.transport != "smtp":
        return False
    from newsletter.delivery.transports.smtp import SmtpTransport

    probe = make_transport(settings)
    try:
        return isinstance(probe, SmtpTransport) and probe.pipelines("probe@example.org")
    except NewsletterError:
        return False
    finally:
        probe.close()
