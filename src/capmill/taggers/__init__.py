"""Image taggers that run beside the captioner: WD-format ONNX taggers (`capmill.taggers.wd`)."""
