from __future__ import annotations

import base64
from pathlib import Path

import pytest

from newsletter.config import load_settings
from newsletter.email.tokens import load_secret, make_token, unsubscribe_url, verify_token

SECRET = b"test-secret"
UID = "0f" * 16


def test_round_trip() -> None:
    claim = verify_token(SECRET, make_token(SECRET, UID, "weekly"))
    assert claim is not None
    assert (claim.subscriber_uid, claim.list_name) == (UID, "weekly")


def test_token_is_url_safe_and_carries_no_row_id() -> None:
    token = make_token(SECRET, UID, "weekly")
    assert set(token) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")


@pytest.mark.parametrize(
    "mangle",
    [
        lambda t: t[:-1],  # truncated
        lambda t: t[:10],
        lambda t: t + "A",
        lambda t: "",
        lambda t: "!!!not-base64!!!",
        lambda t: t[:-2] + ("A" if t[-2] != "A" else "B") + t[-1],  # one MAC byte flipped
    ],
)
def test_damaged_tokens_are_refused(mangle) -> None:  # type: ignore[no-untyped-def]
    assert verify_token(SECRET, mangle(make_token(SECRET, UID, "weekly"))) is None


def test_foreign_secret_and_swapped_list_are_refused() -> None:
    token = make_token(SECRET, UID, "weekly")
    assert verify_token(b"other-secret", token) is None
    raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
    forged = raw.replace(b"weekly", b"daily!")
    forged_token = base64.urlsafe_b64encode(forged).rstrip(b"=").decode()
    assert verify_token(SECRET, forged_token) is None


@pytest.mark.usefixtures("database_env")
def test_secret_from_environment_else_generated_once_per_deployment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = tmp_path / "newsletter.toml"
    cfg.write_text('[unsubscribe]\nsecret_env = "NL_TEST_SECRET"\n')
    settings = load_settings(cfg)
    monkeypatch.setenv("NL_TEST_SECRET", "from-env")
    assert load_secret(settings) == b"from-env"
    monkeypatch.delenv("NL_TEST_SECRET")
    first = load_secret(settings)
    assert first and first == load_secret(settings)  # kept, not regenerated
    assert not (tmp_path / ".newsletter" / "secret").exists()  # in the database, not a file
    # Another host: its own folder, the same database, the same secret.
    other = tmp_path / "host-b"
    other.mkdir()
    (other / "newsletter.toml").write_text(cfg.read_text())
    assert load_secret(load_settings(other / "newsletter.toml")) == first


@pytest.mark.usefixtures("database_env")
def test_a_secret_file_of_an_older_version_moves_into_the_database(tmp_path: Path) -> None:
    cfg = tmp_path / "newsletter.toml"
    cfg.write_text('[unsubscribe]\nsecret_env = "NL_TEST_SECRET"\n')
    (tmp_path / ".newsletter").mkdir()
    (tmp_path / ".newsletter" / "secret").write_bytes(b"old-file-secret\n")
    assert load_secret(load_settings(cfg)) == b"old-file-secret"  # old links keep working
    other = tmp_path / "host-b"
    other.mkdir()
    (other / "newsletter.toml").write_text(cfg.read_text())
    assert load_secret(load_settings(other / "newsletter.toml")) == b"old-file-secret"


def test_unsubscribe_url_uses_public_url(tmp_path: Path) -> None:
    cfg = tmp_path / "newsletter.toml"
    cfg.write_text('[web]\npublic_url = "https://news.example.com/"\n')
    url = unsubscribe_url(load_settings(cfg), "abc")
    assert url == "https://news.example.com/unsubscribe/abc"


def _respell(token: str) -> dict[str, str]:
    """Other spellings of the same bytes that a lenient base64 decoder accepts."""
    middle = len(token) // 2
    variants = {
        "padding ==": token + "==",
        "padding =": token + "=",
        "padding =====": token + "=====",
        "trailing !": token + "!",
        "dot inside": token[:middle] + "." + token[middle:],
        "space inside": token[:middle] + " " + token[middle:],
        "newline at end": token + "\n",
        "percent inside": token[:middle] + "%" + token[middle:],
        "standard alphabet": token.replace("-", "+").replace("_", "/"),
    }
    if len(token) % 4:
        # The last character of an unpadded token carries unused low bits:
        # flipping one decodes to the same bytes.
        alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
        low_bit = alphabet[alphabet.index(token[-1]) ^ 1]
        variants["unused low bits"] = token[:-1] + low_bit
    return variants


# Three list names whose tokens end in each of base64's three lengths
# (len % 4 == 3, 0, 2): a lenient decoder accepts different junk for each.
@pytest.mark.parametrize("list_name", ["weekly", "weekly1", "weekly12"])
def test_one_token_has_exactly_one_spelling(list_name: str) -> None:
    # A uid whose token has '-' or '_', so the standard-alphabet variant differs.
    token = next(
        t
        for t in (make_token(SECRET, f"{n:032x}", list_name) for n in range(500))
        if "-" in t or "_" in t
    )
    assert verify_token(SECRET, token) is not None
    for name, variant in _respell(token).items():
        assert variant != token, name
        assert verify_token(SECRET, variant) is None, name


def test_non_ascii_and_huge_tokens_are_refused() -> None:
    token = make_token(SECRET, UID, "weekly")
    assert verify_token(SECRET, token[:5] + "é" + token[5:]) is None
    assert verify_token(SECRET, token * 40) is None
