"""A tiny random-weight image tagger in the WD format (`model.onnx` + `selected_tags.csv`), built offline with
the onnx package: NHWC float32 BGR input of a fixed side (0-255, no normalisation), sigmoid scores out, and tag
rows with the WD categories (9 rating, 0 general, 4 character), so it loads through exactly the code path of
SmilingWolf's wd-v1-4 / wd-v3 taggers."""

from __future__ import annotations

import csv
from pathlib import Path

RATINGS = ("general", "sensitive", "questionable", "explicit")


def build_tiny_tagger(
    path: str | Path, *, side: int = 32, n_general: int = 40, n_character: int = 8, seed: int = 0
) -> Path:
    """Save a tiny tagger into `path` (reused when there); returns the folder."""
    out = Path(path)
    if (out / "model.onnx").exists() and (out / "selected_tags.csv").exists():
        return out
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rows = [(i, name, 9) for i, name in enumerate(RATINGS)]
    general = ["1girl", "solo", "outdoors", "sky", "dog", "cat", "tree", "smile", "long_hair", ">_<", "^_^"]
    general += [f"general_tag_{i}" for i in range(n_general - len(general))]
    rows += [(len(rows) + i, name, 0) for i, name in enumerate(general)]
    rows += [(len(rows) + i, f"character_{i}_(series)", 4) for i in range(n_character)]
    n_tags = len(rows)
    rng = np.random.default_rng(seed)
    # Per-channel means and a coarse 4x4 grid of the image feed one linear layer: different photos, different tags.
    grid = 4
    features = 3 + 3 * grid * grid
    weight = rng.normal(0.0, 0.08, size=(features, n_tags)).astype(np.float32)
    bias = rng.normal(-6.0, 3.0, size=(n_tags,)).astype(np.float32)
    scale = np.array([1.0 / 64.0], dtype=np.float32)
    nodes = [
        helper.make_node("Mul", ["input", "scale"], ["scaled"]),
        helper.make_node("ReduceMean", ["scaled", "axes_hw"], ["channel_mean"], keepdims=0),
        helper.make_node("Transpose", ["scaled"], ["nchw"], perm=[0, 3, 1, 2]),
        helper.make_node(
            "AveragePool", ["nchw"], ["pooled"], kernel_shape=[side // grid] * 2, strides=[side // grid] * 2
        ),
        helper.make_node("Flatten", ["pooled"], ["grid_features"], axis=1),
        helper.make_node("Concat", ["channel_mean", "grid_features"], ["features"], axis=1),
        helper.make_node("MatMul", ["features", "weight"], ["logits_raw"]),
        helper.make_node("Add", ["logits_raw", "bias"], ["logits"]),
        helper.make_node("Sigmoid", ["logits"], ["output"]),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny_wd_tagger",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", side, side, 3])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", n_tags])],
        initializer=[
            numpy_helper.from_array(scale, "scale"),
            numpy_helper.from_array(np.array([1, 2], dtype=np.int64), "axes_hw"),
            numpy_helper.from_array(weight, "weight"),
            numpy_helper.from_array(bias, "bias"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    onnx.checker.check_model(model)
    out.mkdir(parents=True, exist_ok=True)
    onnx.save(model, out / "model.onnx")
    with open(out / "selected_tags.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["tag_id", "name", "category", "count"])
        for tag_id, name, category in rows:
            writer.writerow([tag_id, name, category, 1000 - tag_id])
    return out
