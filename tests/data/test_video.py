"""Frame sampling with PyAV: by count or rate, even counts, clear errors."""

from __future__ import annotations

import pytest

from capmill.data.video import frame_indices, is_video_path, sample_frames
from capmill.errors import InputError


def _clip(path, frames=20, fps=10):
    import av
    import numpy as np

    with av.open(str(path), "w") as out:
        stream = out.add_stream("mpeg4", rate=fps)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for i in range(frames):
            arr = np.full((48, 64, 3), 12 * i, dtype=np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(arr, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


def test_frame_indices():
    assert frame_indices(20, 2.0, fps=None, count=4, max_frames=64) == [0, 6, 13, 19]
    assert len(frame_indices(20, 2.0, fps=2.0, count=None, max_frames=64)) == 4  # at least 4
    assert len(frame_indices(100, 10.0, fps=1.0, count=None, max_frames=64)) == 10
    assert len(frame_indices(100, 10.0, fps=5.0, count=None, max_frames=16)) == 16
    assert len(frame_indices(9, 1.0, fps=None, count=5, max_frames=64)) == 4  # even for Qwen's frame pairs
    assert frame_indices(1, 0.1, fps=None, count=4, max_frames=64) == [0]
    assert frame_indices(0, 0.0, fps=1.0, count=None, max_frames=8) == []


def test_sample_frames_by_count_and_rate(tmp_path):
    clip = _clip(tmp_path / "c.mp4")
    frames = sample_frames(clip, count=4)
    assert len(frames) == 4 and frames[0].size == (64, 48) and frames[0].mode == "RGB"
    brightness = [f.getpixel((32, 24))[0] for f in frames]
    assert brightness == sorted(brightness) and brightness[0] < brightness[-1]  # spread over the clip, in order
    by_rate = sample_frames(clip.read_bytes(), "c.mp4", fps=4.0)
    assert len(by_rate) == 8 and by_rate[0].info["capmill_fps"] == pytest.approx(4.0, rel=0.2)


def test_sample_frames_errors(tmp_path):
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"not a video at all")
    with pytest.raises(InputError, match="bad.mp4"):
        sample_frames(bad)
    assert is_video_path("x.MP4") and not is_video_path("x.jpg")
