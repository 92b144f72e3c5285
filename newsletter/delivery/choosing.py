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
    "auto": the streams when the server offers PIPELINING, a thread per
    connection when it does not.  Measured side by side (bench/send.py,
    smtp-sink): without PIPELINING the threads sent more than one event
    loop at every C (1 December, load ~8: 1.6x at C = 1, 1.2-1.3x at
    C = 4 and 8; four round trips a message, and on a busy machine four
    threads also get four shares of the CPU), with it the streams were
    level with the lockstep rounds or ahead, and never held up by a
    stalled connection.  bench/send.py measures this choice ("ours").
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
