"""Captions (and tags) written into the image files themselves, where photo tools and trainers look for them.

JPEG: EXIF ImageDescription (other EXIF tags kept) and an XMP packet with `dc:description` and `dc:subject`, as
APP1 segments; PNG: an iTXt `Description` chunk and an iTXt `XML:com.adobe.xmp` chunk. The pixel data is copied
byte for byte (nothing is re-encoded); an earlier XMP packet or Description is replaced. Copies go into a folder
(`path`), keeping each record's relative name; the original is changed only with `in_place=True`, and then
through a temporary file and an atomic rename, so a crash leaves the old file or the new one, never half.
Other formats (WebP, GIF, ...) and records without a local file or a caption are skipped and counted.
"""

from __future__ import annotations

import os
import re
import struct
import zlib
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

from capmill.data.sinks.base import Sink
from capmill.records import Record

XMP_HEADER = b"http://ns.adobe.com/xap/1.0/\x00"
EXIF_HEADER = b"Exif\x00\x00"
IMAGE_DESCRIPTION = 0x010E


# Characters XML 1.0 cannot carry (C0 controls but tab/newline/return, surrogates, U+FFFE/U+FFFF): dropped from
# the metadata, since one of them makes readers reject the whole XMP packet.
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")


def metadata_text(text: str) -> str:
    """`text` as written into image metadata: without the characters XML cannot carry."""
    return _NOT_XML.sub("", text)


def xmp_packet(caption: str | None, tags: list[str]) -> bytes:
    """An XMP packet with dc:description (x-default) and dc:subject (a bag of tags)."""
    caption = metadata_text(caption) if caption is not None else None
    tags = [metadata_text(t) for t in tags]
    parts = []
    if caption is not None:
        parts.append(
            f'<dc:description><rdf:Alt><rdf:li xml:lang="x-default">{escape(caption)}</rdf:li></rdf:Alt>'
            "</dc:description>"
        )
    if tags:
        items = "".join(f"<rdf:li>{escape(t)}</rdf:li>" for t in tags)
        parts.append(f"<dc:subject><rdf:Bag>{items}</rdf:Bag></dc:subject>")
    body = "".join(parts)
    return (
        '<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>'
        '<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
        f'<rdf:Description rdf:about="" xmlns:dc="http://purl.org/dc/elements/1.1/">{body}</rdf:Description>'
        '</rdf:RDF></x:xmpmeta><?xpacket end="w"?>'
    ).encode()


def _exif_with_description(old: bytes | None, caption: str) -> bytes:
    from PIL import Image

    exif = Image.Exif()
    if old:
        exif.load(old)
    exif[IMAGE_DESCRIPTION] = metadata_text(caption).encode(
        "utf-8"
    )  # an ASCII-typed tag holding UTF-8, as exiftool writes it
    return exif.tobytes()


def embed_jpeg(data: bytes, caption: str | None, tags: list[str]) -> bytes:
    """The JPEG with new EXIF (ImageDescription) and XMP APP1 segments; every other byte as it was."""
    if not data.startswith(b"\xff\xd8"):
        raise ValueError("not a JPEG")
    pos, kept, old_exif = 2, [], None
    while pos + 4 <= len(data) and data[pos] == 0xFF:
        marker = data[pos + 1]
        if marker == 0xDA or marker == 0xD9:  # start of scan: the rest is image data
            break
        if 0xD0 <= marker <= 0xD7 or marker == 0x01:
            kept.append(data[pos : pos + 2])
            pos += 2
            continue
        (length,) = struct.unpack(">H", data[pos + 2 : pos + 4])
        segment = data[pos : pos + 2 + length]
        payload = segment[4:]
        if marker == 0xE1 and payload.startswith(EXIF_HEADER):
            old_exif = payload
        elif not (marker == 0xE1 and payload.startswith(XMP_HEADER)):
            kept.append(segment)
        pos += 2 + length
    new = []
    if caption is not None:
        new.append(_segment(0xE1, EXIF_HEADER + _exif_with_description(old_exif, caption)[len(EXIF_HEADER) :]))
    elif old_exif is not None:
        new.append(_segment(0xE1, old_exif))
    new.append(_segment(0xE1, XMP_HEADER + xmp_packet(caption, tags)))
    # APP0 (JFIF) must stay first when present; the metadata follows it
    head = [s for s in kept if s[1:2] == b"\xe0"][:1]
    rest = [s for s in kept if s not in head]
    return b"\xff\xd8" + b"".join(head + new + rest) + data[pos:]


def _segment(marker: int, payload: bytes) -> bytes:
    if len(payload) + 2 > 0xFFFF:
        raise ValueError("metadata longer than one JPEG segment (64 KB)")
    return bytes([0xFF, marker]) + struct.pack(">H", len(payload) + 2) + payload


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)


def _itxt(keyword: str, text: str | bytes) -> bytes:
    value = text if isinstance(text, bytes) else text.encode("utf-8")
    return _chunk(b"iTXt", keyword.encode("latin-1") + b"\x00\x00\x00\x00\x00" + value)


def embed_png(data: bytes, caption: str | None, tags: list[str]) -> bytes:
    """The PNG with iTXt Description and XMP chunks after IHDR; earlier ones of those names dropped."""
    if not data.startswith(b"\x89PNG\r\n\x1a\n"):
        raise ValueError("not a PNG")
    pos, chunks = 8, []
    while pos + 8 <= len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind = data[pos + 4 : pos + 8]
        chunk = data[pos : pos + 12 + length]
        keyword = data[pos + 8 : pos + 8 + min(length, 80)].split(b"\x00", 1)[0]
        if not (kind in (b"tEXt", b"iTXt", b"zTXt") and keyword in (b"Description", b"XML:com.adobe.xmp")):
            chunks.append(chunk)
        pos += 12 + length
    new = [_itxt("XML:com.adobe.xmp", xmp_packet(caption, tags))]
    if caption is not None:
        new.insert(0, _itxt("Description", metadata_text(caption)))
    return data[:8] + chunks[0] + b"".join(new) + b"".join(chunks[1:])


EMBEDDERS = {"jpg": embed_jpeg, "jpeg": embed_jpeg, "png": embed_png}


def write_atomic_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.capmill-tmp")
    with open(tmp, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


class EmbeddedSink(Sink):
    """Copies of the images with their caption and tags inside (`path`: the folder), or the originals with
    `in_place=True`."""

    name = "embedded"
    extension = ""
    wants_media = True

    def __init__(self, path: str = "", in_place: bool = False, **options: Any):
        super().__init__(path, **options)
        self.in_place = in_place
        if not in_place and not path:
            raise ValueError("the embedded sink needs a folder for the copies, or in_place=True")
        self.written = 0
        self.skipped: dict[str, int] = {}

    def target(self, record: Record) -> Path:
        if self.in_place:
            return Path(record.source)
        name = Path(record.id) if Path(record.id).suffix else Path(f"{record.id}{Path(record.source).suffix}")
        parts = [p for p in name.parts if p not in ("", ".", "..", "/")]  # stays inside the folder
        return Path(self.path, *parts)

    def write(self, record: Record, media: bytes | None = None) -> None:
        reason = self._skip_reason(record)
        if reason:
            self.skipped[reason] = self.skipped.get(reason, 0) + 1
            return
        source = Path(record.source)
        data = media if media is not None else source.read_bytes()
        embed = EMBEDDERS.get(source.suffix.lower().lstrip("."))
        if embed is None:
            self.skipped["format"] = self.skipped.get("format", 0) + 1
            return
        tags = list((record.tags or {}).get("tags") or [])
        try:
            out = embed(data, record.caption, tags)
        except ValueError:
            self.skipped["unreadable"] = self.skipped.get("unreadable", 0) + 1
            return
        target = self.target(record)
        target.parent.mkdir(parents=True, exist_ok=True)
        write_atomic_bytes(target, out)
        self.written += 1

    def _skip_reason(self, record: Record) -> str | None:
        if not record.ok or record.caption is None:
            return "no caption"
        if not os.path.isfile(record.source):
            return "not a local file"
        return None

    def close(self) -> None:
        pass


def embed_run(run_dir: str, folder: str | None, in_place: bool) -> EmbeddedSink:
    """Write every captioned record of a run folder into its image (copies in `folder`, or in place)."""
    from capmill.run.runfolder import read_records

    sink = EmbeddedSink(folder or "", in_place=in_place)
    for record in read_records(run_dir):
        sink.write(record)
    sink.close()
    return sink
