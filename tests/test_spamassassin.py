"""SpamAssassin (Debian's `spamassassin`, local tests only: no DNS, no network)
scores every email type at most 0.5, DKIM-signed as it is sent."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa
from email_lint_support import messages

from newsletter.config import DkimSettings
from newsletter.email.dkim import Signer

MAX_SCORE = 0.5
SPAMASSASSIN = shutil.which("spamassassin")

pytestmark = pytest.mark.skipif(SPAMASSASSIN is None, reason="spamassassin not installed")


@pytest.fixture(scope="module")
def signer(tmp_path_factory: pytest.TempPathFactory) -> Signer:
    folder = tmp_path_factory.mktemp("dkim")
    pem = serialization.PrivateFormat.PKCS8
    none = serialization.NoEncryption()
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    (folder / "rsa.pem").write_bytes(rsa_key.private_bytes(serialization.Encoding.PEM, pem, none))
    ed_key = ed25519.Ed25519PrivateKey.generate()
    (folder / "ed.pem").write_bytes(ed_key.private_bytes(serialization.Encoding.PEM, pem, none))
    return Signer.from_settings(
        DkimSettings(
            domain="tides.example.com", selector="news", private_key_path=folder / "rsa.pem",
            second_selector="ed", second_private_key_path=folder / "ed.pem",
        )
    )  # fmt: skip


def score(message: bytes, home: Path) -> tuple[float, str]:
    """SpamAssassin's score and its report (-L: local tests only, -t: test mode)."""
    result = subprocess.run(
        [str(SPAMASSASSIN), "-L", "-t", "-p", str(home / "user_prefs")],
        input=message, capture_output=True, timeout=180, check=False,
    )  # fmt: skip
    output = result.stdout.decode("utf-8", "replace")
    match = re.search(r"^X-Spam-Status: \w+, score=(-?[\d.]+)", output, re.M)
    assert match is not None, result.stderr.decode()[-2000:]
    return float(match.group(1)), output[output.find("Content analysis details") :][:3000]


@pytest.fixture(scope="module")
def sa_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """No user's preferences leak into the score (Debian's rules and
    /etc/spamassassin apply, as on a receiving server)."""
    home = tmp_path_factory.mktemp("sa")
    (home / "user_prefs").write_text("")
    return home


@pytest.mark.parametrize("kind", ["post", "full", "digest", "test-send"])
def test_every_email_type_scores_at_most_half_a_point(
    kind: str, signer: Signer, sa_home: Path
) -> None:
    message = signer.sign(messages()[kind])
    value, report = score(message, sa_home)
    assert value <= MAX_SCORE, report


def test_the_scorer_does_score(sa_home: Path) -> None:
    """The same run on spammy text does add points: the check is alive."""
    spam = (
        b"From: WINNER <winner@example.net>\r\nTo: reader@example.org\r\n"
        b"Subject: FREE MONEY!!! ACT NOW!!! 100% GUARANTEED\r\n"
        b"MIME-Version: 1.0\r\nContent-Type: text/html; charset=utf-8\r\n\r\n"
        b"<html><body><font size=7 color=red>CLICK HERE to claim your FREE prize!!! "
        b"Viagra, cash, no credit check, risk free, 100% satisfied, "
        b"<a href='http://192.0.2.1/claim'>http://www.example.net/claim</a></font></body></html>\r\n"
    )
    value, _ = score(spam, sa_home)
    assert value > 3.0
