"""Real servers on 127.0.0.1 (uvicorn in a thread) around the real tiny Qwen2-VL model and the real Captioner."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from serve_helpers import SERVE_PROFILE, Server, SharedCaptioner, serve


@pytest.fixture(scope="session")
def tiny_qwen2_vl(tiny_model) -> Path:  # noqa: ANN001
    return tiny_model("qwen2_vl")


@pytest.fixture(scope="session")
def captioner(tiny_qwen2_vl):  # noqa: ANN001
    """The real Captioner on the real tiny Qwen2-VL checkpoint, loaded once and shared by every test server."""
    import torch

    from capmill.captioner import Captioner

    torch.set_num_threads(1)
    # 16 new tokens instead of the card's 128 keeps every request short; the path is the same.
    cap = Captioner(model=str(tiny_qwen2_vl), profile=SERVE_PROFILE, decoding={"max_new_tokens": 16})
    _ = cap.engine  # load the weights now, once
    yield cap
    cap.close()


@pytest.fixture(scope="session")
def server(captioner) -> Iterator[Server]:  # noqa: ANN001
    """The main server: small caps so limit tests stay fast, URL images on, private addresses refused."""
    with serve(
        captioner,
        served_model_names=[SERVE_PROFILE, "caprl"],
        max_batch=8,
        max_wait_ms=20,
        max_body_bytes=2 * 1024 * 1024,
        max_image_bytes=1024 * 1024,
        max_image_pixels=4_000_000,
        max_tokens_limit=64,
        allow_url_images=True,
        url_timeout_s=5,
    ) as s:
        yield s


@pytest.fixture(scope="session")
def photos() -> list[Path]:
    return sorted((Path(__file__).parents[1] / "data" / "coco").glob("*.jpg"))


@pytest.fixture(scope="session")
def photo_bytes(photos) -> bytes:  # noqa: ANN001
    return photos[0].read_bytes()


@pytest.fixture(scope="session")
def run_dir(captioner, photos, tmp_path_factory) -> Path:  # noqa: ANN001
    """A run folder written by the real pipeline (LocalRunner) with the real tiny model: six photos, two bad files."""
    from capmill.run.local import CaptionJob, LocalRunner
    from capmill.run.pipeline import PipelineOptions

    inputs = tmp_path_factory.mktemp("browse-inputs")
    for photo in photos[:6]:
        (inputs / photo.name).write_bytes(photo.read_bytes())
    (inputs / "broken.jpg").write_bytes(b"this is not a JPEG")
    (inputs / "truncated.jpg").write_bytes(photos[6].read_bytes()[:4000])
    run = tmp_path_factory.mktemp("browse-run")
    job = CaptionJob(
        inputs=[str(inputs)],
        make_captioner=lambda: SharedCaptioner(captioner),
        run_dir=str(run),
        pipeline=PipelineOptions(workers=0, batch_size=8),
        progress=False,
    )
    LocalRunner(job).run()
    return run


@pytest.fixture(scope="session")
def browse_server(captioner, run_dir) -> Iterator[Server]:  # noqa: ANN001
    with serve(captioner, browse_dir=run_dir) as s:
        yield s


@pytest.fixture(scope="module")
def browser():
    """Debian's headless Chromium driven by Playwright (never a downloaded browser build)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        chromium = p.chromium.launch(
            executable_path="/usr/bin/chromium",
            args=[
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
            ],
        )
        yield chromium
        chromium.close()
