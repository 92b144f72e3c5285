"""A real IMAP server for tests: Debian's dovecot on 127.0.0.1, IMAPS only.

    server = DovecotServer(tmp_path).start()      # TLS with a trustme CA
    server.append(b"From: ...")                    # into INBOX (IMAP APPEND)
    server.mailbox("newsletter-processed")         # [bytes of each message]
    server.stop()

Its whole configuration lives in the temporary folder (no system files are
read); one user, "bounces", whose password is `PASSWORD`.  Messages go in
and come out over IMAP itself, so the test never depends on who owns the
Maildir on disk.
"""

from __future__ import annotations

import imaplib
import os
import pwd
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from smtpserver import free_port

DOVECOT = "/usr/sbin/dovecot"
USER = "bounces"
PASSWORD = "imap-test-password"


def available() -> bool:
    return Path(DOVECOT).exists()


@dataclass
class DovecotServer:
    root: Path
    port: int = field(default_factory=free_port)
    capabilities_off: tuple[str, ...] = ()  # e.g. ("MOVE",) to test the COPY path
    password: str = PASSWORD  # UTF-8 in dovecot's passwd file

    def __post_init__(self) -> None:
        self.proc: subprocess.Popen[bytes] | None = None
        self.own_root = os.getuid() == 0
        if self.own_root:
            # Mail processes run as the `dovecot` user, which must reach the
            # home folder: pytest's tmp_path sits under a 0700 folder of root's.
            self.root = Path(tempfile.mkdtemp(prefix="newsletter-dovecot-"))
            os.chmod(self.root, 0o755)
        self.root.mkdir(parents=True, exist_ok=True)
        self.ca_file = self.root / "imap-ca.pem"

    # ------------------------------------------------------------------ start / stop

    def _config(self) -> Path:
        import trustme

        ca = trustme.CA()
        cert = ca.issue_cert("127.0.0.1", "localhost")
        ca.cert_pem.write_to_path(str(self.ca_file))
        cert.private_key_and_cert_chain_pem.write_to_path(str(self.root / "imap-cert.pem"))
        cert.private_key_pem.write_to_path(str(self.root / "imap-key.pem"))
        for sub in ("run", "state", "home"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        me = pwd.getpwuid(os.getuid())
        if os.getuid() == 0:
            # dovecot never runs mail processes as root: use its own users.
            login, internal = "dovenull", "dovecot"
            mail = pwd.getpwnam("dovecot")
            os.chown(self.root / "home", mail.pw_uid, mail.pw_gid)
        else:
            login = internal = me.pw_name
            mail = me
        (self.root / "passwd").write_text(f"{USER}:{{PLAIN}}{self.password}\n", encoding="utf-8")
        capability = ""
        if self.capabilities_off:
            # The capability string dovecot announces, minus the ones switched off.
            base = (
                "IMAP4rev1 SASL-IR LOGIN-REFERRALS ID ENABLE IDLE SORT SORT=DISPLAY THREAD=REFERENCES "
                "THREAD=REFS THREAD=ORDEREDSUBJECT MULTIAPPEND URL-PARTIAL CATENATE UNSELECT CHILDREN "
                "NAMESPACE UIDPLUS LIST-EXTENDED I18NLEVEL=1 CONDSTORE QRESYNC ESEARCH ESORT "
                "SEARCHRES WITHIN CONTEXT=SEARCH LIST-STATUS BINARY MOVE SNIPPET=FUZZY PREVIEW=FUZZY "
                "STATUS=SIZE SAVEDATE LITERAL+ NOTIFY SPECIAL-USE"
            )
            kept = [c for c in base.split() if c not in self.capabilities_off]
            capability = f"imap_capability = {' '.join(kept)}\n"
        config = self.root / "dovecot.conf"
        config.write_text(
            f"""\
instance_name = newsletter-test-{self.port}
base_dir = {self.root}/run
state_dir = {self.root}/state
log_path = {self.root}/dovecot.log
protocols = imap
listen = 127.0.0.1
ssl = required
ssl_cert = <{self.root}/imap-cert.pem
ssl_key = <{self.root}/imap-key.pem
disable_plaintext_auth = yes
auth_mechanisms = plain
default_login_user = {login}
default_internal_user = {internal}
first_valid_uid = 1
{capability}passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {self.root}/passwd
}}
userdb {{
  driver = static
  args = uid={mail.pw_uid} gid={mail.pw_gid} home={self.root}/home/%u
}}
mail_location = maildir:~/Maildir
service imap-login {{
  inet_listener imap {{
    port = 0
  }}
  inet_listener imaps {{
    port = {self.port}
    ssl = yes
  }}
}}
service anvil {{
  chroot =
}}
service imap-login {{
  chroot =
}}
"""
        )
        return config

    def start(self) -> DovecotServer:
        config = self._config()
        self.proc = subprocess.Popen(
            [DOVECOT, "-F", "-c", str(config)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                output = self.proc.stdout.read().decode() if self.proc.stdout else ""
                raise RuntimeError(f"dovecot exited: {output}{self.log()}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return self
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"dovecot did not listen on {self.port}: {self.log()}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc is not None and self.proc.stdout is not None:
            self.proc.stdout.close()
        if self.own_root:
            shutil.rmtree(self.root, ignore_errors=True)

    def log(self) -> str:
        path = self.root / "dovecot.log"
        return path.read_text() if path.exists() else ""

    # ------------------------------------------------------------------ as a client

    def client(self) -> imaplib.IMAP4_SSL:
        context = ssl.create_default_context(cafile=str(self.ca_file))
        imap = imaplib.IMAP4_SSL("127.0.0.1", self.port, ssl_context=context, timeout=10)
        from newsletter.delivery.bouncebox import login

        login(imap, USER, self.password)
        return imap

    def append(self, data: bytes, mailbox: str = "INBOX") -> None:
        imap = self.client()
        try:
            crlf = data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
            status, reply = imap.append(mailbox, "", None, crlf)
            assert status == "OK", reply
        finally:
            imap.logout()

    def mailbox(self, name: str) -> list[tuple[bytes, bytes]]:
        """(flags, bytes) of every message in a mailbox; [] when it does not exist."""
        imap = self.client()
        try:
            from newsletter.delivery.bouncebox import mailbox_name

            status, _ = imap.select(mailbox_name(name), readonly=True)
            if status != "OK":
                return []
            _, data = imap.uid("SEARCH", "ALL")
            found = []
            for uid in data[0].split():
                _, parts = imap.uid("FETCH", uid, "(FLAGS BODY.PEEK[])")
                for part in parts:
                    if isinstance(part, tuple):
                        found.append((part[0], part[1]))
            return found
        finally:
            imap.logout()

    def settings_overrides(self) -> dict[str, object]:
        return {
            "bounces.imap_host": "127.0.0.1",
            "bounces.port": self.port,
            "bounces.username": USER,
            "bounces.password_env": "NEWSLETTER_IMAP_PASSWORD",
            "bounces.ca_file": str(self.ca_file),
        }
