"""Per-message cost of DKIM signing and VERP senders.

    python bench/signing.py [--messages N] [--rounds R]

Each round builds N personalised messages of a rendered seed-shaped post
five ways, interleaved so the machine's state is shared: personalise only
(the baseline), + a VERP envelope sender, + RSA-2048 signing as dkimpy does
it alone (Python's pow), + RSA-2048 signing with OpenSSL's RSA, + RSA and
Ed25519 dual signing.  Prints messages/s as min / median / max over rounds.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from newsletter.config import DkimSettings, EmailSettings, ListSettings, Settings, SiteSettings
from newsletter.delivery.bounces import verp_address
from newsletter.email.dkim import Signer
from newsletter.email.message import MessageTemplate, Recipient
from newsletter.email.render import render_email
from newsletter.posts.collection import Post


def keys(folder: Path) -> tuple[Path, Path]:
    pem, none = serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    rsa_path, ed_path = folder / "rsa.pem", folder / "ed.pem"
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    rsa_path.write_bytes(rsa_key.private_bytes(serialization.Encoding.PEM, pem, none))
    ed_key = ed25519.Ed25519PrivateKey.generate()
    ed_path.write_bytes(ed_key.private_bytes(serialization.Encoding.PEM, pem, none))
    return rsa_path, ed_path


def template() -> MessageTemplate:
    from datetime import UTC, datetime

    body = "<p>" + " ".join(["tide"] * 800) + "</p>"
    post = Post(
        path=Path("x.md"), post_id="p", slug="p", title="Tides", title_html="Tides",
        date=datetime(2026, 1, 1, tzinfo=UTC), url="https://example.com/p", description=None,
        image=None, image_alt="", tags=(), categories=(), authors=(), excerpt_html=body,
        excerpt_text="tide " * 800, body_html=body,
    )  # fmt: skip
    settings = Settings(
        site=SiteSettings(title="Bench", url="https://example.com"),
        email=EmailSettings(from_="Bench <news@example.com>"),
        lists={"all": ListSettings(name="all", title="All")},
    )
    return MessageTemplate.build(render_email(post, settings, settings.lists["all"]), settings)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--messages", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        rsa_path, ed_path = keys(Path(tmp))
        base = DkimSettings(domain="example.com", selector="news", private_key_path=rsa_path)
        rsa_only = Signer.from_settings(base)
        dual = Signer.from_settings(
            DkimSettings(
                domain="example.com", selector="news", private_key_path=rsa_path,
                second_selector="ed", second_private_key_path=ed_path,
            )
        )  # fmt: skip
    tpl = template()
    recipients = [
        Recipient(f"r{i}@example.org", f"Reader {i}", f"https://n.example.com/unsubscribe/t{i}")
        for i in range(args.messages)
    ]
    secret = b"bench-secret"

    def personalise(r: Recipient) -> bytes:
        return tpl.personalise(r, mailing_key="m")

    import dkim as dkimpy

    from newsletter.email import dkim as ours

    def pure_python_rsa(i: int, r: Recipient) -> object:
        """Before: dkimpy computing the RSA signature with Python's pow."""
        dkimpy.RSASSA_PKCS1_v1_5_sign = ours._PURE_PYTHON_RSA_SIGN
        try:
            return rsa_only.sign(personalise(r))
        finally:
            dkimpy.RSASSA_PKCS1_v1_5_sign = ours.openssl_rsa_sign

    ways: dict[str, Callable[[int, Recipient], object]] = {
        "personalise (baseline)": lambda i, r: personalise(r),
        "+ VERP sender": lambda i, r: (
            verp_address("bounces@example.com", secret, i),
            personalise(r),
        ),
        "+ RSA-2048, pure-Python RSA": pure_python_rsa,
        "+ RSA-2048 signature": lambda i, r: rsa_only.sign(personalise(r)),
        "+ RSA + Ed25519 signatures": lambda i, r: dual.sign(personalise(r)),
    }
    rates: dict[str, list[float]] = {name: [] for name in ways}
    for _ in range(args.rounds):
        for name, way in ways.items():
            start = time.perf_counter()
            for i, r in enumerate(recipients):
                way(i, r)
            rates[name].append(len(recipients) / (time.perf_counter() - start))
    print(f"{args.messages} messages x {args.rounds} rounds, messages/s (min / median / max):")
    for name, values in rates.items():
        print(
            f"  {name:<28} {min(values):>8.0f} / {statistics.median(values):>8.0f} / {max(values):>8.0f}"
        )


if __name__ == "__main__":
    main()
