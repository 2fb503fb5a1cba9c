"""A small capmill plugin: what docs/plugins.md describes, installed by tests/plugins/test_plugins.py.

- engine `echo`: answers each request with what it was given (image size, mean colour, the prompt): no model;
- profile `echo-short`: a prompt and decoding, for the `generic` family;
- source `swatches:N`: N solid-colour PNG images made in memory (`capmill caption swatches:5 ...`);
- sink `tsv`: one `id<TAB>status<TAB>caption` line per record.
"""

from __future__ import annotations

import io
from collections.abc import Iterator, Sequence

from capmill import Engine, Profile, Sink, Source
from capmill.records import Decoding, Generation, Item, Record, Request


class EchoEngine(Engine):
    name = "echo"

    def generate(self, requests: Sequence[Request]) -> list[Generation]:
        out = []
        for request in requests:
            prompt = request.messages[-1]["content"]
            if isinstance(prompt, list):
                prompt = " ".join(part.get("text", "") for part in prompt if part.get("type") == "text")
            sizes = [f"{im.width}x{im.height} rgb{im.resize((1, 1)).getpixel((0, 0))[:3]}" for im in request.images]
            text = f"echo of {len(request.images)} image(s) {' '.join(sizes)}; prompt: {prompt.strip()}"
            out.append(Generation(text=text[: request.decoding.max_new_tokens * 8], completion_tokens=1))
        return out


ECHO_SHORT = Profile(
    name="echo-short",
    family="generic",
    description="echo plugin: a short prompt for the echo engine",
    prompt="Say what you see, briefly.",
    decoding=Decoding(max_new_tokens=16, do_sample=False),
    source="capmill-echo plugin",
)


class SwatchSource(Source):
    name = "swatches"

    def __iter__(self) -> Iterator[Item]:
        from PIL import Image

        for i in range(int(self.spec)):
            buf = io.BytesIO()
            Image.new("RGB", (32 + 8 * i, 24), (40 * i % 256, 100, 200)).save(buf, format="PNG")
            yield Item(id=f"swatch-{i:03d}", source=f"swatches:{i}", data=buf.getvalue())

    def count(self) -> int:
        return int(self.spec)


class TsvSink(Sink):
    name = "tsv"
    extension = ".tsv"

    def __init__(self, path: str, **options):
        super().__init__(path, **options)
        self._handle = open(path, "w", encoding="utf-8")  # noqa: SIM115 - closed in close()

    def write(self, record: Record, media: bytes | None = None) -> None:
        caption = (record.caption or "").replace("\t", " ").replace("\n", " ")
        self._handle.write(f"{record.id}\t{record.status}\t{caption}\n")

    def close(self) -> None:
        if not self._handle.closed:
            self._handle.close()
