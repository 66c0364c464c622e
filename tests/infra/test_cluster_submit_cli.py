"""`codiray submit` / `codiray jobs` without a cluster: parsing, what a job ships, tokens, errors."""

from __future__ import annotations

import zipfile

import pytest

from cluster_helpers import REPO, free_port
from codiray.cli import main
from common.errors import CodirayError, ConfigError, UsageError
from infra import jobs_client as jc
from infra.submit import _command_from, _parse_resources, run_submit


@pytest.fixture(autouse=True)
def _no_cluster_env(monkeypatch):
    for name in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"):
        monkeypatch.delenv(name, raising=False)


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0, err
    assert err.startswith("codiray: error: ")
    return err


PREPARE = ["prepare", "laion", "--metadata", "m.parquet", "--media", "media", "--out", "out"]


def _parse(argv):
    from codiray.cli import build_parser

    args, extra = build_parser().parse_known_args(argv)
    assert extra == []  # everything after `submit` belongs to it, `key=value` overrides included
    return args


@pytest.mark.parametrize("argv, expected", [
    (["submit", "--", *PREPARE, "image.size=32"], [*PREPARE, "image.size=32"]),
    (["submit", "--follow", "--", "codiray", "train", "--recipe", "r", "optim.lr=3e-4"],
     ["train", "--recipe", "r", "optim.lr=3e-4"]),
    (["submit", "--address", "http://h:8265", *PREPARE], PREPARE),
])
def test_submit_takes_any_codiray_command(argv, expected):
    args = _parse(argv)
    assert args.func is run_submit
    assert _command_from(args) == expected
    assert jc.entrypoint_for(_command_from(args)).startswith(f"codiray {expected[0]} ")


@pytest.mark.parametrize("argv, message", [
    (["submit"], "nothing to submit"),
    (["submit", "--"], "nothing to submit"),
    (["submit", "--", "prepar", "laion"], "cannot submit 'prepar'"),
    (["submit", "--", "jobs", "list"], "cannot submit 'jobs'"),
    (["submit", "--", *PREPARE], "no Ray cluster given"),
    (["submit", "--env", "AWS_SECRET_ACCESS_KEY", "--", *PREPARE], "credentials are not shipped"),
    (["submit", "--resources", "gpu=1", "--", *PREPARE], "--resources: key 'gpu': unknown key"),
    (["jobs", "list"], "no Ray cluster given"),
])
def test_usage_errors_are_one_line(capsys, argv, message):
    assert main(argv) == 2
    assert message in one_error_line(capsys)


def test_unknown_flags_such_as_a_token_flag_are_refused(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["submit", "--token", "abc", "--", *PREPARE])
    assert exit_info.value.code == 2
    assert "unrecognized arguments: --token" in capsys.readouterr().err


def test_unreachable_cluster_is_one_line(capsys):
    address = f"http://127.0.0.1:{free_port()}"
    assert main(["jobs", "list", "--address", address]) == 2
    assert f"cannot reach the Ray Job API at {address}" in one_error_line(capsys)


def test_address_comes_from_flag_then_api_server_then_ray_address():
    env = {"RAY_ADDRESS": "http://gcs-side:8265", "RAY_API_SERVER_ADDRESS": "http://head:8265/"}
    assert jc.resolve_address("http://flag:8265", env) == "http://flag:8265"
    assert jc.resolve_address(None, env) == "http://head:8265"
    assert jc.resolve_address(None, {"RAY_ADDRESS": "http://gcs-side:8265"}) == "http://gcs-side:8265"
    with pytest.raises(UsageError, match="no Ray cluster given"):
        jc.resolve_address(None, {"RAY_ADDRESS": " "})


def test_token_only_from_the_environment(tmp_path):
    assert jc.auth_token({}) is None
    assert jc.auth_token({"RAY_AUTH_TOKEN": " tok \n"}) == "tok"
    token_file = tmp_path / "token"
    token_file.write_text("from-file\n")
    assert jc.auth_token({"RAY_AUTH_TOKEN_PATH": str(token_file)}) == "from-file"
    with pytest.raises(UsageError, match="cannot read the token file"):
        jc.auth_token({"RAY_AUTH_TOKEN_PATH": str(tmp_path / "missing")})


def test_token_never_goes_into_the_job(monkeypatch, capsys):
    token = "tok-" + "7" * 32
    monkeypatch.setenv("RAY_AUTH_TOKEN", token)
    assert main(["submit", "--address", "http://127.0.0.1:1", "--", *PREPARE, f"note={token}"]) == 2
    err = one_error_line(capsys)
    assert "auth token appears in the job's command" in err and token not in err
    assert main(["submit", "--address", "http://127.0.0.1:1", "--env", "RAY_AUTH_TOKEN", "--", *PREPARE]) == 2
    assert token not in one_error_line(capsys)


def test_env_declarations(monkeypatch):
    env = {"CODIRAY_MODE": "fast", "AWS_REGION": "us-west-2"}
    assert jc.parse_env(["CODIRAY_MODE", "AWS_REGION", "X=1=2"], env) == {
        "CODIRAY_MODE": "fast", "AWS_REGION": "us-west-2", "X": "1=2"}
    with pytest.raises(UsageError, match="not set in this environment"):
        jc.parse_env(["MISSING"], env)
    with pytest.raises(UsageError, match="expected NAME or NAME=VALUE"):
        jc.parse_env(["1BAD=x"], env)
    for secret in ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_ACCESS_KEY_ID", "RAY_AUTH_TOKEN",
                   "HF_TOKEN", "DB_PASSWORD", "OPENAI_API_KEY", "aws_secret_access_key"):
        with pytest.raises(UsageError, match="credentials are not shipped"):
            jc.parse_env([f"{secret}=x"], env)


def test_resources_become_entrypoint_requests():
    assert _parse_resources([]) is None
    res = _parse_resources(["gpus=1,accelerator_type=L40S", "memory_gb=8"])
    assert res.entrypoint_resources() == {
        "entrypoint_num_cpus": 1.0, "entrypoint_num_gpus": 1, "entrypoint_memory": 8 * 1024**3,
        "entrypoint_resources": {"accelerator_type:L40S": 0.001}}
    with pytest.raises(UsageError, match="expected KEY=VALUE"):
        _parse_resources(["gpus"])
    with pytest.raises(ConfigError, match="must be >= 0"):
        _parse_resources(["gpus=-1"])


def test_project_root_is_found_from_inside_the_checkout(tmp_path):
    assert jc.find_project_root(REPO / "tests" / "infra") == REPO
    # Outside any checkout it falls back to the checkout this module lives in.
    assert jc.find_project_root(tmp_path) == REPO


def test_shipped_working_dir_leaves_out_data_venvs_outputs_and_secrets(tmp_path):
    from ray._private.runtime_env.packaging import create_package

    project = tmp_path / "proj"
    files = ["pyproject.toml", "codiray/cli.py", "models/unet.py", "configs/recipe.yaml",
             "data/laion/metadata.parquet", "outputs/runs/t2i/checkpoint.pt", ".venv/lib/site.py",
             "venv/bin/python", "pipelines/__pycache__/x.pyc", ".env", "prod.env", "shards/shard-000.tar",
             "codiray.egg-info/PKG-INFO", "model.safetensors", ".git/HEAD", "scratch/notes.txt"]
    for name in files:
        (project / name).parent.mkdir(parents=True, exist_ok=True)
        (project / name).write_text("x")
    runtime_env = jc.build_runtime_env(project, {"AWS_REGION": "us-west-2"}, ["scratch/"])
    assert runtime_env["working_dir"] == str(project)
    assert runtime_env["env_vars"] == {"PYTHONUNBUFFERED": "1", "AWS_REGION": "us-west-2"}

    # Package it the way Ray's Job SDK does and look inside.
    zip_path = tmp_path / "pkg.zip"
    create_package(str(project), zip_path, include_gitignore=True, excludes=runtime_env["excludes"])
    shipped = sorted(zipfile.ZipFile(zip_path).namelist())
    assert shipped == ["codiray/cli.py", "configs/recipe.yaml", "models/unet.py", "pyproject.toml"]


def test_error_lines_skip_rays_own_chatter():
    logs = "\n".join([
        "2026-11-20 22:42:10,402\tINFO job_manager.py:581 -- Runtime env is setting up.",
        "Running entrypoint for job j: codiray prepare laion",
        "[2026-11-20 22:42:12,782 W 734 734] network_util.cc:330: Failed to determine local IP",
        "Traceback (most recent call last):",
        "ValueError: boom",
        "2026-11-20 22:42:12,790\tERROR worker.py:1 -- task failed",
        "codiray: error: /data/meta.parquet: metadata not found",
    ])
    assert jc.error_lines(logs, 3) == ["ValueError: boom", "2026-11-20 22:42:12,790\tERROR worker.py:1 -- task failed",
                                       "codiray: error: /data/meta.parquet: metadata not found"]
    only_chatter = "2026-11-20 22:42:10,402\tINFO job_manager.py:581 -- Runtime env is setting up."
    assert jc.error_lines(only_chatter) == [only_chatter]


def test_working_dir_must_exist(tmp_path):
    with pytest.raises(UsageError, match="not a folder"):
        jc.build_runtime_env(tmp_path / "nope", {})


def test_cluster_errors_name_the_job():
    with pytest.raises(CodirayError, match="no job 'j1' on the Ray cluster at http://h:8265"):
        with jc.cluster_errors("http://h:8265", "j1"):
            raise RuntimeError("Request failed with status code 404: Job j1 does not exist.")
    with pytest.raises(CodirayError, match=r"^Ray Job API at http://h:8265: boom$"):
        with jc.cluster_errors("http://h:8265"):
            raise RuntimeError("boom\ntraceback lines")


def test_help_names_the_token_variables(capsys):
    with pytest.raises(SystemExit):
        main(["submit", "--help"])
    text = capsys.readouterr().out
    assert "RAY_AUTH_TOKEN" in text and "--follow" in text and "--resources" in text
    with pytest.raises(SystemExit):
        main(["jobs", "--help"])
    text = capsys.readouterr().out
    assert all(action in text for action in ("list", "status", "logs", "stop"))
