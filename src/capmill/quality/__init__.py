"""Caption quality inside the run: image-text scores, degenerate-output checks and the gate that retries."""
