"""Sample frames from a video with PyAV: by rate (frames per second) or by count, evenly spaced.

The Qwen families caption video as a list of frames; sampling follows qwen_vl_utils (2 fps by default, at
least 4 frames, an even count, indices spread with linspace over the whole clip).
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from capmill.errors import InputError

VIDEO_SUFFIXES = frozenset({".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi", ".mpg", ".mpeg", ".wmv", ".flv", ".ts"})
DEFAULT_FPS = 2.0
MIN_FRAMES = 4
DEFAULT_MAX_FRAMES = 64  # a CPU-friendly cap; raise it for long clips on a GPU


def is_video_path(path: str | Path) -> bool:
    return Path(str(path)).suffix.lower() in VIDEO_SUFFIXES


def frame_indices(total: int, duration: float, *, fps: float | None, count: int | None, max_frames: int) -> list[int]:
    """Which of `total` decoded frames to keep: `count` of them, or `fps` per second, even and within bounds."""
    if total <= 0:
        return []
    if count is not None:
        n = count
    else:
        rate = fps if fps is not None else DEFAULT_FPS
        n = int(duration * rate) if duration > 0 else total
        n = max(n, MIN_FRAMES)
    n = max(1, min(n, max_frames, total))
    if n > 1 and n % 2:
        n -= 1 if n > 2 else 0  # Qwen's temporal patches take frames in pairs
    if n == 1:
        return [0]
    step = (total - 1) / (n - 1)
    return [round(i * step) for i in range(n)]


def sample_frames(
    data: bytes | str | Path,
    source: str | None = None,
    *,
    fps: float | None = None,
    count: int | None = None,
    max_frames: int = DEFAULT_MAX_FRAMES,
) -> list[Any]:
    """RGB PIL frames of a video (bytes or path); InputError names the input when it cannot be read."""
    import av

    name = source or (str(data) if not isinstance(data, bytes) else "<video bytes>")
    if fps is not None and count is not None:
        raise ValueError("give fps or count, not both")
    stream_src: Any = io.BytesIO(data) if isinstance(data, bytes) else str(data)
    try:
        with av.open(stream_src) as container:
            if not container.streams.video:
                raise InputError(name, "no video stream")
            stream = container.streams.video[0]
            frames = [frame.to_image() for frame in container.decode(stream)]
            duration = 0.0
            if stream.duration is not None and stream.time_base is not None:
                duration = float(stream.duration * stream.time_base)
            elif container.duration:
                duration = container.duration / 1_000_000
            native_fps = float(stream.average_rate) if stream.average_rate else 0.0
    except InputError:
        raise
    except (av.error.FFmpegError, OSError, ValueError) as exc:  # type: ignore[attr-defined]
        raise InputError(name, "corrupt or unsupported video", str(exc)) from exc
    if not frames:
        raise InputError(name, "video has no frames")
    if duration <= 0 and native_fps:
        duration = len(frames) / native_fps
    keep = frame_indices(len(frames), duration, fps=fps, count=count, max_frames=max_frames)
    picked = [frames[i].convert("RGB") for i in keep]
    sample_fps = len(picked) / duration if duration > 0 else (fps or DEFAULT_FPS)
    for frame in picked:
        frame.info["capmill_fps"] = sample_fps
        frame.info["capmill_native_fps"] = native_fps
    return picked
