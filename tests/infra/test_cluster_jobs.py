"""`codiray submit` and `codiray jobs` against a real Ray head (token auth on, loopback only)."""

from __future__ import annotations

import json

import pytest

from cluster_helpers import wait_for

pytestmark = [pytest.mark.ray, pytest.mark.slow]
# Sized for the test that happens to pay the module's fixtures: the Ray head (<= 90 s) and, for
# tests using prepare_run, the `submit --follow` prepare job (CLI budget 300 s).
WITH_HEAD_S, WITH_PREPARE_S = 360, 480


@pytest.fixture(scope="module")
def prepare_run(ray_head, toy_laion, tmp_path_factory):
    """One followed `codiray prepare laion` job (shared by the tests that inspect it)."""
    out = tmp_path_factory.mktemp("shards")
    result = ray_head.cli(
        "submit", "--follow", "--env", "CODIRAY_TEST_MARK=job-env-ok", "--",
        "prepare", "laion", "--metadata", str(toy_laion["metadata"]), "--media", str(toy_laion["media"]),
        "--out", str(out), "image.size=16", "shards.samples_per_shard=4", "concurrency=1",
        timeout_s=300,
    )
    job_id = result.stdout.splitlines()[0].strip() if result.stdout else ""
    return result, job_id, out


@pytest.mark.timeout(WITH_PREPARE_S)
def test_submit_follow_runs_prepare_and_exits_zero(prepare_run, ray_head):
    result, job_id, out = prepare_run
    assert result.returncode == 0, result.output
    assert job_id.startswith("codiray-prepare-"), result.stdout[:200]
    assert "prepared " in result.stdout  # the job's own summary line, streamed by --follow
    assert f"job {job_id} SUCCEEDED" in result.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["written"] > 0 and sorted(out.glob("shard-*.tar"))
    # The token reaches the cluster only as a header: not in our output, not in the job's record.
    assert ray_head.token not in result.output
    info = ray_head.client().get_job_info(job_id)
    record = json.dumps({"entrypoint": info.entrypoint, "runtime_env": info.runtime_env, "metadata": info.metadata})
    assert ray_head.token not in record
    assert info.runtime_env["env_vars"]["CODIRAY_TEST_MARK"] == "job-env-ok"
    assert info.entrypoint.startswith("codiray prepare laion ")
    assert info.metadata["codiray_command"] == "prepare"


@pytest.mark.timeout(WITH_HEAD_S)
def test_failing_job_exits_nonzero_with_its_error(ray_head, tmp_path):
    missing = tmp_path / "no-such-metadata.parquet"
    result = ray_head.cli("submit", "--wait", "--", "prepare", "laion", "--metadata", str(missing),
                          "--media", str(tmp_path), "--out", str(tmp_path / "out"))
    assert result.returncode == 1, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines[-1].startswith("codiray: error: job codiray-prepare-") and " FAILED: " in lines[-1]
    # The job's own last error line (from `codiray prepare` on the cluster) is shown.
    assert any(line.startswith("  | codiray: error:") for line in lines), result.stderr
    assert ray_head.token not in result.output


@pytest.mark.timeout(WITH_PREPARE_S)
def test_jobs_list_status_and_logs(prepare_run, ray_head):
    _, job_id, _ = prepare_run
    listed = ray_head.cli("jobs", "list")
    assert listed.returncode == 0, listed.output
    row = next(line for line in listed.stdout.splitlines() if line.startswith(job_id))
    assert "SUCCEEDED" in row and "codiray prepare laion" in row

    status = ray_head.cli("jobs", "status", job_id, "--address", ray_head.address)
    assert status.returncode == 0 and status.stdout.startswith(f"{job_id} SUCCEEDED"), status.output

    logs = ray_head.cli("jobs", "logs", job_id)
    assert logs.returncode == 0 and "prepared " in logs.stdout
    followed = ray_head.cli("jobs", "logs", job_id, "--follow")
    assert followed.returncode == 0 and "prepared " in followed.stdout


@pytest.mark.timeout(WITH_HEAD_S)
def test_jobs_stop(ray_head):
    client = ray_head.client()
    job_id = client.submit_job(entrypoint="python -c 'import time; time.sleep(120)'")
    wait_for(lambda: str(client.get_job_status(job_id)) == "RUNNING", 60, "the sleeping job to run")
    result = ray_head.cli("jobs", "stop", job_id, "--wait")
    assert result.returncode == 0, result.output
    assert result.stdout.splitlines() == [f"{job_id} stop requested", f"{job_id} STOPPED"]
    again = ray_head.cli("jobs", "stop", job_id)
    assert again.stdout.strip() == f"{job_id} already STOPPED"
    followed = ray_head.cli("jobs", "logs", job_id, "--follow")
    assert followed.returncode == 1 and f"job {job_id} STOPPED" in followed.stderr


@pytest.mark.timeout(WITH_HEAD_S)
def test_missing_or_wrong_token_is_one_clear_line(ray_head):
    missing = ray_head.cli("jobs", "list", with_token=False)
    assert missing.returncode == 2
    assert missing.stderr.strip().count("\n") == 0
    assert "requires token auth" in missing.stderr and "RAY_AUTH_TOKEN" in missing.stderr

    wrong = ray_head.cli("jobs", "list", with_token=False, RAY_AUTH_TOKEN="not-the-token")
    assert wrong.returncode == 2 and "rejected the auth token" in wrong.stderr
    assert "not-the-token" not in wrong.output


@pytest.mark.timeout(WITH_HEAD_S)
def test_unknown_job_is_one_clear_line(ray_head):
    result = ray_head.cli("jobs", "status", "codiray-nope-123")
    assert result.returncode == 2
    assert result.stderr.strip() == f"codiray: error: no job 'codiray-nope-123' on the Ray cluster at {ray_head.address}"


@pytest.mark.timeout(WITH_HEAD_S)
def test_submit_without_wait_prints_the_id_and_returns(ray_head, tmp_path):
    result = ray_head.cli("submit", "--job-id", "codiray-nowait-1", "--", "prepare", "laion",
                          "--metadata", str(tmp_path / "none.parquet"), "--media", str(tmp_path),
                          "--out", str(tmp_path / "o"))
    assert result.returncode == 0, result.output
    assert result.stdout.strip() == "codiray-nowait-1"
    assert "codiray jobs logs codiray-nowait-1 --follow" in result.stderr
    client = ray_head.client()
    wait_for(lambda: str(client.get_job_status("codiray-nowait-1")) in ("SUCCEEDED", "FAILED", "STOPPED"),
             120, "the unwaited job to end")
