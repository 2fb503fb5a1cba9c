"""`capmill serve` from the command line: options into ServeConfig, config errors, and a real process."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import httpx
import pytest

from capmill.cli.main import build_parser, main


def test_options_become_the_config(tmp_path):  # noqa: ANN001
    from capmill.cli.serve import config_from_args

    args = build_parser().parse_args(
        ["serve", "--model", "some/model", "--profile", "caprl-3b", "--served-model-name", "caprl", "--port", "9001",
         "--api-key", "k", "--max-batch", "16", "--max-wait-ms", "25", "--max-queue", "4", "--timeout", "9",
         "--max-body-mb", "1", "--max-image-mb", "0.5", "--allow-url-images", "--max-new-tokens", "40",
         "--constrained", "--device", "cpu", "--browse", str(tmp_path)]
    )  # fmt: skip
    config = config_from_args(args)
    assert (config.model, config.profile, config.served_model_names) == ("some/model", "caprl-3b", ["caprl"])
    assert (config.port, config.api_key, config.max_batch, config.max_wait_ms, config.max_queue) == (
        9001,
        "k",
        16,
        25,
        4,
    )
    assert config.request_timeout_s == 9 and config.max_body_bytes == 1024 * 1024 and config.max_image_bytes == 524288
    assert config.allow_url_images and not config.allow_private_urls and config.constrained
    assert config.captioner_options == {"engine_options": {"device": "cpu"}, "decoding": {"max_new_tokens": 40}}
    assert config.browse_dir == tmp_path and config.host == "127.0.0.1"


def test_nothing_to_serve_is_a_config_error(capsys):  # noqa: ANN001
    assert main(["serve"]) == 2
    assert "needs --model" in capsys.readouterr().err
    assert main(["serve", "--browse", "/no/such/folder"]) == 2
    assert "not a folder" in capsys.readouterr().err


def test_a_real_process_serves_a_run_folder(run_dir):  # noqa: ANN001
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "capmill", "serve", "--browse", str(run_dir), "--port", str(port), "--api-key", "k"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{base}/healthz", timeout=1).json()["status"] == "browse-only":
                    break
            except httpx.HTTPError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"capmill serve did not start: {proc.stdout.read().decode()[-2000:]}")
                time.sleep(0.2)
        assert httpx.get(f"{base}/browse/records").status_code == 401
        records = httpx.get(f"{base}/browse/records", headers={"Authorization": "Bearer k"}).json()
        assert records["total"] == 8
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_exposed_host_without_a_key_refuses_to_start(run_dir, capsys):  # noqa: ANN001
    env_key = os.environ.pop("CAPMILL_API_KEY", None)
    try:
        assert main(["serve", "--browse", str(run_dir), "--host", "0.0.0.0"]) == 2
        err = capsys.readouterr().err
        assert "--api-key" in err and "--insecure" in err
    finally:
        if env_key is not None:
            os.environ["CAPMILL_API_KEY"] = env_key


def test_insecure_starts_with_a_warning(run_dir):  # noqa: ANN001
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "capmill", "serve", "--browse", str(run_dir), "--host", "0.0.0.0", "--insecure",
           "--port", str(port)]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k != "CAPMILL_API_KEY"}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"capmill serve did not start: {proc.stdout.read().decode()[-2000:]}")
                time.sleep(0.2)
    finally:
        proc.terminate()
        out = proc.communicate(timeout=30)[0].decode()
    assert "WITHOUT an API key" in out


def test_limit_option_sets_a_named_limit():
    from capmill.cli.serve import config_from_args
    from capmill.errors import ConfigError

    args = build_parser().parse_args(["serve", "--model", "m", "--limit", "max_stop_sequences=2",
                                      "--allow-url-host", "img.example.com", "--browse-root", "/data"])  # fmt: skip
    config = config_from_args(args)
    assert config.max_stop_sequences == 2 and config.url_allow_hosts == ["img.example.com"]
    with pytest.raises(ConfigError, match="NAME=VALUE"):
        config_from_args(build_parser().parse_args(["serve", "--model", "m", "--limit", "api_key=x"]))
