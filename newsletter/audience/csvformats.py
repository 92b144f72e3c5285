"""Reading subscriber CSV files as people really have them.

`read_source(path, fmt)` yields one `SourceRow` per record (or a `Problem` for a
record it cannot use), whatever the file looks like:

* encoding: UTF-8 with or without BOM, UTF-16 with BOM (Excel's "Unicode
  text"), UTF-8 with a few cp1252 bytes, else cp1252 (Excel's "CSV"), else
  Latin-1 (never fails);
* delimiter: `,` `;` TAB or `|`, the one that splits the header into an
  email column, else whichever the header line holds most of;
* CRLF, quoted commas and newlines, blank lines, stray whitespace;
* a Mailchimp export ZIP: every CSV inside, with the status its file name
  implies (`unsubscribed_…` → unsubscribed, `cleaned_…` → bounced); a member
  whose name implies none is refused (`serviceformats.mailchimp_refusal`).

Which columns each service's export contributes is in `newsletter.audience.serviceformats`
(and docs/subscribers.md).  Line numbers are physical lines of the file (the
line a record starts on), so an editor jumps straight to it.
"""

from __future__ import annotations

import codecs
import csv
import io
import itertools
import lzma
import re
import zipfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from newsletter.audience.serviceformats import (
    EMAIL_COLUMNS,
    FORMATS,
    Mapper,
    SourceRow,
    check_forced_format,
    detect_format,
    header_key,
    mailchimp_refusal,
    mapper_for,
)
from newsletter.errors import Problem, SubscriberError

__all__ = ["FORMATS", "FileInfo", "SourceRow", "read_source", "source_size"]

_CHUNK = 1 << 20
_DELIMITERS = (",", ";", "\t", "|")

Progress = Callable[[int], None]  # bytes consumed so far, across every member


@dataclass(frozen=True)
class FileInfo:
    """What sniffing found out about one CSV (shown by --dry-run / --json)."""

    name: str
    encoding: str
    delimiter: str
    format: str
    detected: bool = True  # False: the format was forced with --format


def source_size(path: Path) -> int:
    """Bytes `read_source` will report progress against."""
    _require_regular(path)
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            return sum(i.file_size for i in _csv_members(archive))
    return path.stat().st_size


def read_source(
    path: Path,
    fmt: str = "auto",
    *,
    progress: Progress | None = None,
    infos: list[FileInfo] | None = None,
) -> Iterator[SourceRow | Problem]:
    """Every record of a CSV file or a Mailchimp ZIP, in file order."""
    if fmt != "auto" and fmt not in FORMATS:
        raise SubscriberError(f"unknown format {fmt!r}", path=path)
    _require_regular(path)
    try:
        if zipfile.is_zipfile(path):
            yield from _read_zip(path, fmt, progress, infos)
            return
        opener: Callable[[], IO[bytes]] = lambda: path.open("rb")  # noqa: E731
        yield from _read_csv(opener, path, path.name, fmt, 0, progress, infos)
    except FileNotFoundError:
        raise SubscriberError("file not found", path=path) from None
    except (OSError, zipfile.BadZipFile) as exc:
        raise SubscriberError(f"cannot read file: {exc}", path=path) from exc


def _require_regular(path: Path) -> None:
    """A pipe (`<(unzip -p …)`, /dev/stdin) is refused up front: the encoding is
    sniffed in a first pass and the rows read in a second, and a pipe's second
    read finds nothing (which read as "the file is empty")."""
    if path.exists() and not path.is_file() and not path.is_dir():
        raise SubscriberError(
            "not a regular file (a pipe or a device cannot be read twice, and an import "
            "reads its file twice); save it to a file and import that",
            path=path,
        )


def _csv_members(archive: zipfile.ZipFile) -> list[zipfile.ZipInfo]:
    return [
        info
        for info in archive.infolist()
        if info.filename.lower().endswith(".csv")
        and not info.is_dir()
        and not Path(info.filename).name.startswith(("._", "."))  # macOS resource forks
    ]


def _read_zip(
    path: Path, fmt: str, progress: Progress | None, infos: list[FileInfo] | None
) -> Iterator[SourceRow | Problem]:
    with zipfile.ZipFile(path) as archive:
        members = _csv_members(archive)
        if not members:
            raise SubscriberError(_no_csv_inside(archive), path=path)
        offset = 0
        for info in members:
            label = f"{path}:{info.filename}"

            def opener(info: zipfile.ZipInfo = info) -> IO[bytes]:
                return archive.open(info)

            try:
                yield from _read_csv(
                    opener, Path(label), info.filename, fmt, offset, progress, infos, in_zip=True
                )
            except _UNPACKING_ERRORS as exc:
                if _not_zipfiles(exc):
                    raise  # a bug, shown as one
                raise SubscriberError(_unpacking_problem(exc), path=Path(label)) from exc
            offset += info.file_size


def _no_csv_inside(archive: zipfile.ZipFile) -> str:
    """Why a ZIP without a CSV cannot be imported: a spreadsheet workbook
    (.xlsx and .ods are ZIPs) is told to be saved as CSV."""
    names = set(archive.namelist())
    kind = None
    if "[Content_Types].xml" in names and any(n.startswith("xl/") for n in names):
        kind = "an Excel workbook"
    elif "content.xml" in names and "META-INF/manifest.xml" in names:
        kind = "an OpenDocument spreadsheet"
    elif any(n.startswith("Index/") and n.endswith(".iwa") for n in names):
        kind = "a Numbers document"
    if kind is None:
        return "the ZIP file holds no .csv file"
    return (
        f"this is {kind}, not a CSV file: save it as CSV (UTF-8) from your spreadsheet "
        "program and import that"
    )


# What zipfile raises for a member it cannot unpack: a password (RuntimeError),
# a compression method it lacks such as Deflate64 (NotImplementedError), or a
# damaged stream (zlib's, bz2's and lzma's errors, a CRC or a cut-short end).
_UNPACKING_ERRORS = (
    RuntimeError, NotImplementedError, zlib.error, EOFError, zipfile.BadZipFile, lzma.LZMAError,
)  # fmt: skip


def _not_zipfiles(exc: BaseException) -> bool:
    """A RuntimeError other than zipfile's "is encrypted" (NotImplementedError is one too)."""
    plain_runtime = type(exc) is RuntimeError
    return plain_runtime and "encrypted" not in str(exc)


def _unpacking_problem(exc: BaseException) -> str:
    if isinstance(exc, NotImplementedError):
        return (
            "is packed with a compression method Python cannot unpack: unzip it and "
            "import the CSV file"
        )
    if isinstance(exc, RuntimeError):
        return "is password-protected: unzip it and import the CSV file"
    return f"is damaged ({exc}): download the export again"


class _CountingReader(io.RawIOBase):
    """Counts bytes as the text layer pulls them, for the progress bar."""

    def __init__(self, raw: IO[bytes], offset: int, progress: Progress | None) -> None:
        self._raw = raw
        self._offset = offset
        self._done = 0
        self._progress = progress

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        data = self._raw.read(len(buffer))
        n = len(data)
        buffer[:n] = data
        self._done += n
        if self._progress is not None and n:
            self._progress(self._offset + self._done)
        return n


def _read_csv(
    opener: Callable[[], IO[bytes]],
    label: Path,
    name: str,
    fmt: str,
    offset: int,
    progress: Progress | None,
    infos: list[FileInfo] | None,
    *,
    in_zip: bool = False,
) -> Iterator[SourceRow | Problem]:
    with opener() as raw:
        _refuse_binary(raw.read(8), label)
    with opener() as raw:
        encoding = sniff_encoding(raw)
    with opener() as raw:
        counted = io.BufferedReader(_CountingReader(raw, offset, progress), _CHUNK)
        codec, errors = (
            ("utf-8", "newsletter-cp1252") if encoding == MIXED_UTF8 else (encoding, None)
        )
        text = io.TextIOWrapper(counted, encoding=codec, errors=errors, newline="")
        try:
            first = text.readline()
        except UnicodeError as exc:  # a BOM that promised more than the bytes hold
            raise SubscriberError(
                f"cannot decode the header as {encoding}: {exc}", path=label, line=1
            ) from exc
        delimiter = sniff_delimiter(first)
        lines = itertools.chain((first,), text)
        reader = csv.reader(lines, delimiter=delimiter, skipinitialspace=True)
        yield from _records(reader, label, name, fmt, encoding, delimiter, infos, in_zip)


# Files people take for their list that are not CSV (read as Latin-1, they
# gave "no email column" and a header of escaped binary).
_BINARY_KINDS = (
    (bytes.fromhex("d0cf11e0a1b11ae1"), "an Excel 97-2003 workbook (.xls)", "save it as CSV (UTF-8) "
     "from your spreadsheet program and import that"),
    (b"\x1f\x8b", "a gzip file", "unpack it (gunzip) and import the CSV file"),
)  # fmt: skip


def _refuse_binary(head: bytes, label: Path) -> None:
    for magic, kind, what_to_do in _BINARY_KINDS:
        if head.startswith(magic):
            raise SubscriberError(f"this is {kind}, not a CSV file: {what_to_do}", path=label)


def _records(
    reader: Iterator[list[str]],
    label: Path,
    name: str,
    fmt: str,
    encoding: str,
    delimiter: str,
    infos: list[FileInfo] | None,
    in_zip: bool,
) -> Iterator[SourceRow | Problem]:
    """The header is read (and the format found) now; the records as they are
    iterated.  Not a generator itself: one generator less for each of a
    million rows to pass through."""
    line_num = 0

    def next_record() -> tuple[int, list[str] | csv.Error] | None:
        # A csv.Error (a field over the size limit, a NUL in old Pythons) is
        # returned, not raised: the reader resumes on the next line, so one
        # broken row is reported and the rest still imports (invariant 5).
        nonlocal line_num
        start = line_num + 1
        try:
            record: list[str] | csv.Error = next(reader)
        except StopIteration:
            return None
        except csv.Error as exc:
            record = exc
        except UnicodeError as exc:  # the decoder cannot resume after this: stop here
            raise SubscriberError(f"cannot decode the file: {exc}", path=label, line=start) from exc
        line_num = getattr(reader, "line_num", start)
        return start, record

    header: list[str] | None = None
    while header is None:
        got = next_record()
        if got is None:
            raise SubscriberError("the file is empty (no header line)", path=label)
        start, record = got
        if isinstance(record, csv.Error):
            raise SubscriberError(f"unreadable header: {record}", path=label, line=start)
        if any(cell.strip() for cell in record):
            header = [cell.strip().strip("\ufeff").strip() for cell in record]
            first = (start, record)
    headerless = _is_headerless(header)
    if headerless:
        # A bare list of addresses (pasted from somewhere): no header line.
        header = ["email", "name"][: len(header)] + [
            f"column {i + 1}" for i in range(2, len(header))
        ]
    if fmt != "auto":
        check_forced_format(fmt, header, name, label)
    chosen = detect_format(header, name) if fmt == "auto" else fmt
    # Whatever the format: a file named as Mailchimp's nonsubscribed_… must
    # not be imported active because its header no longer looks like Mailchimp's.
    refusal = mailchimp_refusal(header, name, in_zip=in_zip and chosen == "mailchimp")
    if refusal is not None:
        raise SubscriberError(refusal, path=label)
    mapper = mapper_for(chosen, header, name, label)
    if infos is not None:
        infos.append(FileInfo(str(label), encoding, delimiter, chosen, fmt == "auto"))
    records = _data_records(reader, mapper, label, line_num)
    if headerless:
        return itertools.chain((_mapped(mapper, label, *first),), records)
    return records


def _data_records(
    reader: Iterator[list[str]], mapper: Mapper, label: Path, line_num: int
) -> Iterator[SourceRow | Problem]:
    """The records after the header: a plain for loop over the C reader per row
    (a million rows), re-entered after a `csv.Error` (the reader resumes on the
    next line, so one broken row is reported and the rest still imports)."""
    while True:
        try:
            for record in reader:
                start, line_num = line_num + 1, reader.line_num  # type: ignore[attr-defined]
                if not "".join(record).strip():  # blank lines (and bare delimiters)
                    continue
                if line_num > start and _swallows_rows(record):  # a quoted newline: rare
                    yield Problem(
                        f"a quote opened on line {start} runs on to line {line_num}, so lines "
                        f"{start + 1}-{line_num}, which look like rows of their own, were read "
                        "as one cell: fix the quote and import again",
                        label,
                        start,
                    )
                    continue
                try:
                    row: SourceRow | Problem = mapper(start, record)
                except (ValueError, TypeError, OverflowError, RecursionError) as exc:
                    row = Problem(f"unreadable row: {exc}", label, start)  # as in `_mapped`
                yield row
            return
        except csv.Error as exc:
            start, line_num = line_num + 1, reader.line_num  # type: ignore[attr-defined]
            yield Problem(f"unreadable row: {exc}", label, start)
        except UnicodeError as exc:  # the decoder cannot resume after this: stop here
            raise SubscriberError(
                f"cannot decode the file: {exc}", path=label, line=line_num + 1
            ) from exc


# A line that is a row of its own: cells, one of them a bare address.
_ADDRESS_CELL = re.compile(r"""\s*"?[^\s@",;|]+@[^\s@",;|]+\.[^\s@",;|]+"?\s*""")


def _swallows_rows(record: list[str]) -> bool:
    """Whether a cell spanning lines holds lines that look like rows (a quote
    opened and not closed on its line reads on to the next quote in the
    file): a line of several cells, one of them an address.  A multi-line
    note that mentions an address in passing is not one."""
    for cell in record:
        for line in cell.splitlines()[1:]:
            cells = re.split(r"[,;\t|]", line)
            if len(cells) > 1 and any(_ADDRESS_CELL.fullmatch(c) for c in cells):
                return True
    return False


def _mapped(mapper: Mapper, label: Path, line: int, record: list[str]) -> SourceRow | Problem:
    """One record through its format's mapper; whatever a hostile cell makes it
    raise is that row's problem (file, line, reason), never a traceback."""
    try:
        return mapper(line, record)
    except (ValueError, TypeError, OverflowError, RecursionError) as exc:
        return Problem(f"unreadable row: {exc}", label, line)


def _is_headerless(header: list[str]) -> bool:
    """True when the "header" is really a first row: its first cell is an address."""
    first = header_key(header[0]) if header else ""
    return "@" in first and first not in EMAIL_COLUMNS


def sniff_encoding(raw: IO[bytes]) -> str:
    """The file's encoding, from its BOM, else whether all of it is UTF-8."""
    head = raw.read(4)
    if head.startswith(codecs.BOM_UTF8):
        return "utf-8-sig"
    if head.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return "utf-16"
    # UTF-16 without a BOM: ASCII text with every other byte NUL.
    if len(head) >= 4 and head[1] == 0 and head[3] == 0 and head[0] and head[2]:
        return "utf-16-le"
    if len(head) >= 4 and head[0] == 0 and head[2] == 0 and head[1] and head[3]:
        return "utf-16-be"
    # One pass over the bytes decides UTF-8: decoding is cheap next to parsing,
    # and guessing from a prefix fails on a file whose first é is on line 90 000.
    decoder: codecs.IncrementalDecoder = codecs.getincrementaldecoder("utf-8")()
    chunk = head
    try:
        while chunk:
            decoder.decode(chunk)
            chunk = raw.read(_CHUNK)
        decoder.decode(b"", final=True)
        return "utf-8"
    except UnicodeDecodeError:
        pass
    raw.seek(0)
    decoder = codecs.getincrementaldecoder("cp1252")()
    utf8_seen, cp1252_ok = False, True
    while chunk := raw.read(_CHUNK):
        # UTF-8 text with a few bytes from elsewhere (two exports pasted
        # together): read as cp1252, every UTF-8 name would turn to mojibake.
        utf8_seen = utf8_seen or _UTF8_MULTIBYTE.search(chunk) is not None
        if cp1252_ok:
            try:
                decoder.decode(chunk)
            except UnicodeDecodeError:
                cp1252_ok = False
    if utf8_seen:
        return MIXED_UTF8
    # latin-1: every byte decodes; names may look odd, addresses survive
    return "cp1252" if cp1252_ok else "latin-1"


# UTF-8 read with each byte that is not UTF-8 taken as cp1252 (`_cp1252_byte`).
MIXED_UTF8 = "utf-8 (a few bytes cp1252)"
_UTF8_MULTIBYTE = re.compile(
    rb"[\xc2-\xdf][\x80-\xbf]|[\xe0-\xef][\x80-\xbf]{2}|[\xf0-\xf4][\x80-\xbf]{3}"
)
_CP1252 = [bytes([b]).decode("cp1252", errors="ignore") or chr(b) for b in range(256)]


def _cp1252_byte(exc: UnicodeError) -> tuple[str, int]:
    """The decode error handler of `MIXED_UTF8`: a byte that is not UTF-8 is
    cp1252 (Latin-1 where cp1252 leaves it undefined); never fails."""
    if not isinstance(exc, UnicodeDecodeError):
        raise exc
    return "".join(_CP1252[b] for b in exc.object[exc.start : exc.end]), exc.end


codecs.register_error("newsletter-cp1252", _cp1252_byte)


def sniff_delimiter(header_line: str) -> str:
    """The delimiter that splits the header into an email column (or, in a
    bare list of addresses, a cell that is one), else the one it uses most,
    outside quotes (`,` on a tie).  A semicolon file may have as many commas
    in a column name (`notes (a, b)`) or, headerless, in a name (`Alice, A`)."""
    counts = dict.fromkeys(_DELIMITERS, 0)
    quoted = False
    for char in header_line:
        if char == '"':
            quoted = not quoted
        elif not quoted and char in counts:
            counts[char] += 1
    ranked = sorted((d for d in _DELIMITERS if counts[d]), key=lambda d: -counts[d])
    for delimiter in ranked:
        try:
            cells = next(csv.reader([header_line], delimiter=delimiter, skipinitialspace=True), [])
        except csv.Error:  # a cell over the field limit: not this delimiter's header
            continue
        if any(header_key(c) in EMAIL_COLUMNS or _ADDRESS_CELL.fullmatch(c) for c in cells):
            return delimiter
    return ranked[0] if ranked else ","
