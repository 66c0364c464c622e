"""The schedule DAG and its resource arithmetic, without Ray."""

from __future__ import annotations

import pytest

from common.errors import UsageError
from common.resources import WorkerResources
from training.config import TrainConfig
from training.launch import storage_uri
from training.orchestrator import PlannedStage, absolute_data, fail_dependants, new_record, plan
from training.recipes import text_to_image_demo_debug
from training.schedule import (CurriculumPhase, Schedule, Stage, StageResources, fits_beside, never_fits,
                               phase_configs, resolve_stage_config)
from training.schedules import engine_debug


def stage(name, needs=(), kind="ldm", **kw):
    return Stage(name, kind, recipe=text_to_image_demo_debug, needs=list(needs), **kw)


def test_dependency_order_puts_every_stage_after_its_needs():
    order = Schedule([stage("c", ["a", "b"]), stage("b", ["a"]), stage("a"), stage("d")]).order()
    assert order.index("a") < order.index("b") < order.index("c") and set(order) == {"a", "b", "c", "d"}
    assert engine_debug().order() == ["a", "b", "c"]


def test_launch_order_starts_the_longest_chain_first():
    # side roots s1, s2 are declared first; r heads r -> v (two phases) -> w, the longest chain ahead
    phases = [CurriculumPhase("short", 1), CurriculumPhase("long", 2)]
    sched = Schedule([stage("s1"), stage("s2"), stage("r"), stage("v", ["r"], phases=phases), stage("w", ["v"]),
                      stage("t", ["s1"])])
    assert sched.launch_order() == ["r", "v", "s1", "s2", "t", "w"]   # ahead: r 4, v 3, s1 2, then 1s in order
    order = sched.launch_order()
    assert all(order.index(n) > order.index(m) for n in ("v", "w", "t") for m in sched.stage(n).needs)


def test_launch_order_weighs_paths_by_expected_seconds_when_every_stage_has_them():
    # the demo's shape: the image chain has more runs (ae -> ldm -> video ldm in two phases -> align), the
    # audio chain more seconds (its autoencoder and LDM are the slowest stages); a 50-s side stage declared first
    phases = [CurriculumPhase("short", 1), CurriculumPhase("long", 2)]

    def chain(**expected):
        return Schedule([stage("cascade", expected_s=expected.get("cascade")),
                         stage("image_ae", expected_s=expected.get("image_ae")),
                         stage("audio_ae", expected_s=expected.get("audio_ae")),
                         stage("image_ldm", ["image_ae"], expected_s=expected.get("image_ldm")),
                         stage("video_ldm", ["image_ldm"], phases=phases, expected_s=expected.get("video_ldm")),
                         stage("audio_ldm", ["audio_ae"], expected_s=expected.get("audio_ldm")),
                         stage("align", ["video_ldm", "audio_ldm"], expected_s=expected.get("align"))])
    seconds = dict(cascade=50, image_ae=330, audio_ae=500, image_ldm=600, video_ldm=400, audio_ldm=1400, align=60)
    # ahead (s): audio_ae 1960, audio_ldm 1460, image_ae 1390, image_ldm 1060, video_ldm 460, align 60, cascade 50
    assert chain(**seconds).launch_order() == ["audio_ae", "audio_ldm", "image_ae", "image_ldm", "video_ldm",
                                               "align", "cascade"]
    # one stage without a figure: every path counts runs (image_ae 1 + 1 + 2 + 1 = 5, image_ldm 4, audio_ae 3)
    assert chain(**{**seconds, "cascade": None}).launch_order()[:2] == ["image_ae", "image_ldm"]


@pytest.mark.parametrize("stages, message", [
    ([stage("a", ["ghost"])], "stage 'a': needs unknown stage 'ghost'"),
    ([stage("a", ["c"]), stage("b", ["a"]), stage("c", ["b"]), stage("d")], "its needs form a cycle (a -> c -> b -> a)"),
    ([stage("a", ["a"])], "stage 'a': its needs form a cycle (a -> a)"),
    ([stage("a"), stage("a")], "stage 'a': defined twice"),
    ([stage("x/y")], "stage 'x/y': a stage name must be"),
    ([stage("a", kind="finetune")], "stage 'a': unknown kind 'finetune'"),
    ([stage("v", phases=[CurriculumPhase("short", 10), CurriculumPhase("long", 10)])],
     "stage 'v': curriculum phases must end at increasing steps"),
    ([stage("a", expected_s=0)], "stage 'a': expected_s must be a number of seconds > 0, got 0"),
])
def test_bad_schedules_are_one_usage_error_naming_the_stage(stages, message):
    with pytest.raises(UsageError) as err:
        Schedule(stages)
    assert message in str(err.value) and "\n" not in str(err.value)


def res(workers, cpus=1.0, gpus=0.0, **custom):
    per = WorkerResources(cpus=cpus, gpus=gpus).bundle()
    return StageResources(workers, {**per, **custom})


def test_never_fits_when_no_node_holds_one_worker_or_all_nodes_hold_too_few():
    nodes = [{"CPU": 4.0, "memory": 8e9}, {"CPU": 2.0, "GPU": 1.0, "pool": 1.0}]
    assert never_fits("ok", res(2, cpus=2), nodes) is None               # 2 + 1 workers of 2 CPUs
    assert never_fits("ok", res(3, cpus=2), nodes) is None
    too_many = never_fits("big", res(4, cpus=2), nodes)
    assert too_many == ("stage 'big' can never run: it needs 4 worker(s) x {CPU=2} but the cluster's nodes "
                        "hold at most 3 such worker(s)")
    too_wide = never_fits("wide", res(1, cpus=8), nodes)
    assert too_wide.startswith("stage 'wide' can never run: it needs 1 worker(s) x {CPU=8} but no node") and "CPU=4" in too_wide
    # a GPU worker fits only the GPU node; two of them never fit, whatever the CPU total
    assert never_fits("g", res(1, cpus=1, gpus=1), nodes) is None
    assert "at most 1 such worker" in never_fits("g2", res(2, cpus=1, gpus=1), nodes)
    assert "no node" in never_fits("custom", res(1, pool=2.0), nodes)
    # CPUs split across nodes: 3 CPUs total free per node are not one 3-CPU worker on 2-CPU nodes
    assert "no node" in never_fits("split", res(1, cpus=3), [{"CPU": 2.0}, {"CPU": 2.0}])


def test_stages_in_flight_are_capped_by_the_cluster_totals_with_a_cpu_left_for_reads():
    cluster = {"CPU": 5.0, "GPU": 1.0}
    assert fits_beside(res(2), [res(2)], cluster)                 # 2 + 2 workers, 1 CPU left for Ray Data
    assert not fits_beside(res(2), [res(2), res(1)], cluster)
    assert not fits_beside(res(2), [res(2)], {"CPU": 4.0})        # would leave no CPU for the streaming reads
    assert fits_beside(res(2), [res(2)], {"CPU": 4.0}, reserve={})
    assert fits_beside(res(1, gpus=1), [res(3)], cluster) and not fits_beside(res(1, gpus=1), [res(1, gpus=1)], cluster)


def test_stages_in_flight_are_placed_node_by_node():
    """Two nodes of 4 CPUs, a stage of one 2.5-CPU worker running on each: 3 CPUs are left in all (1 for the
    reads, 2 for a stage), but 1.5 on each node, so a 2-CPU worker fits no node and must wait; a 1.5-CPU one
    fits. Without ``nodes`` the totals alone decide (and would start the 2-CPU stage to wait on Ray)."""
    nodes = [{"CPU": 4.0, "memory": 8e9}, {"CPU": 4.0, "memory": 8e9}]
    cluster = {"CPU": 8.0}
    running = [res(1, cpus=2.5), res(1, cpus=2.5)]
    assert fits_beside(res(1, cpus=2), running, cluster)                          # the totals: 1 + 5 + 2 <= 8
    assert not fits_beside(res(1, cpus=2), running, cluster, nodes=nodes)
    assert fits_beside(res(1, cpus=1.5), running, cluster, nodes=nodes)
    # a stage's workers may spread: two 1.5-CPU workers take one node each
    assert fits_beside(res(2, cpus=1.5), running, {"CPU": 9.0}, nodes=nodes)
    assert not fits_beside(res(2, cpus=1.5), running + [res(1, cpus=1.5)], {"CPU": 20.0}, nodes=nodes)
    # a GPU stage finds the one node with a GPU taken
    gpu_nodes = [{"CPU": 8.0, "GPU": 1.0}, {"CPU": 8.0}]
    assert not fits_beside(res(1, gpus=1), [res(1, gpus=1)], {"CPU": 16.0, "GPU": 2.0}, nodes=gpu_nodes)
    assert fits_beside(res(1, gpus=1), [res(2)], {"CPU": 16.0, "GPU": 1.0}, nodes=gpu_nodes)


def test_stage_configs_get_their_run_data_and_scoped_overrides(tmp_path):
    names = ["a", "b"]
    s = stage("a", data="laion")
    cfg = resolve_stage_config(s, "exp", str(tmp_path), {"laion": "/shards"}, ["max_steps=7", "b:optim.lr=0.5",
                                                                             "a:log_every=3"], names)
    assert (cfg.name, cfg.storage_path, cfg.data.path, cfg.max_steps, cfg.log_every) == ("a", f"{tmp_path}/exp", "/shards", 7, 3)
    assert cfg.optim.lr == text_to_image_demo_debug().optim.lr
    with pytest.raises(UsageError, match=r"stage 'a': needs --data laion=URI \(given: webvid\)"):
        resolve_stage_config(s, "exp", str(tmp_path), {"webvid": "/v"}, [], names)
    with pytest.raises(UsageError, match="override 'z:max_steps=1': no stage 'z'"):
        resolve_stage_config(s, "exp", str(tmp_path), {"laion": "/s"}, ["z:max_steps=1"], names)


def test_local_paths_reach_the_stages_absolute_and_s3_uris_as_given(tmp_path, monkeypatch):
    """A stage's task runs on whichever node Ray picks, in that node's working directory: paths relative
    to the driver's folder are made absolute on the driver."""
    monkeypatch.chdir(tmp_path)
    data = absolute_data({"laion": "shards/laion", "webvid": "s3://b/webvid"})
    assert data == {"laion": str(tmp_path / "shards" / "laion"), "webvid": "s3://b/webvid"}
    root = storage_uri(TrainConfig(storage_path="runs"))
    planned = plan(engine_debug(), "exp", root, data, [], None)
    assert {p.cfg.storage_path for p in planned.values()} == {str(tmp_path / "runs" / "exp")}
    assert {p.cfg.data.path for p in planned.values()} == {str(tmp_path / "shards" / "laion")}
    assert storage_uri(TrainConfig(storage_path="s3://b/runs")) == "s3://b/runs"


def test_curriculum_phases_are_one_resumed_run_with_their_own_steps_settings_and_data(tmp_path):
    phases = [CurriculumPhase("short", 4, ["batch_size_per_worker=2"], data="low"),
              CurriculumPhase("long", 9, ["model.image_size=32"], data="high")]
    s = stage("v", data="low", phases=phases)
    data = {"low": "/low", "high": "/high"}
    cfg = resolve_stage_config(s, "exp", str(tmp_path), data, [], ["v"])
    first, second = phase_configs(cfg, phases, data)
    assert (first.max_steps, first.batch_size_per_worker, first.data.path, first.model.image_size) == (4, 2, "/low", 16)
    assert (second.max_steps, second.batch_size_per_worker, second.data.path, second.model.image_size) == (9, 4, "/high", 32)
    assert first.name == second.name == "v" and first.storage_path == second.storage_path
    assert phase_configs(cfg, [], data) == [cfg]


def test_a_failed_stage_fails_its_dependants_down_the_chain_and_no_other():
    sched = Schedule([stage("a"), stage("b", ["a"]), stage("c", ["b"]), stage("d")])
    planned = {n: PlannedStage(sched.stage(n), text_to_image_demo_debug(), res(1)) for n in sched.order()}
    records = {n: new_record(p, None) for n, p in planned.items()}
    records["a"].update(status="failed", reason="UsageError: /nowhere: no manifest.json")
    assert fail_dependants(records, planned)
    assert records["b"]["reason"] == "needs a, which failed: UsageError: /nowhere: no manifest.json"
    assert records["c"]["reason"].startswith("needs b, which failed: needs a, which failed")
    assert records["d"]["status"] == "pending" and not fail_dependants(records, planned)


def test_done_stages_are_skipped_on_a_rerun_and_keep_their_record():
    sched = engine_debug()
    p = PlannedStage(sched.stage("a"), text_to_image_demo_debug(), res(1))
    before = {"status": "done", "checkpoint": "/runs/exp/a/checkpoint_000001", "started": "t0", "finished": "t1", "metrics": {}}
    again = new_record(p, before)
    assert (again["status"], again["checkpoint"], again["started"]) == ("skipped", before["checkpoint"], "t0")
    assert new_record(p, {**before, "status": "skipped"})["status"] == "skipped"
    for status in ("running", "failed", "pending"):  # interrupted or failed: run again (Ray Train resumes)
        assert new_record(p, {**before, "status": status})["status"] == "pending"


def test_data_flags_map_styles_to_uris_and_bad_ones_are_one_line():
    from training.orchestrator import parse_data

    assert parse_data(["laion=s3://b/laion=1", "webvid=/d/w"]) == {"laion": "s3://b/laion=1", "webvid": "/d/w"}
    with pytest.raises(UsageError, match="--data '/d/w': expected STYLE=URI"):
        parse_data(["/d/w"])
    with pytest.raises(UsageError, match="--data laion: given twice"):
        parse_data(["laion=/a", "laion=/b"])


def test_schedule_records_round_trip_through_s3_and_mark_done_stages_skipped(s3_endpoint, bucket):
    from common.storage import S3Config
    from training.orchestrator import read_records, write_records

    s3 = S3Config(endpoint_url=s3_endpoint)
    uri = f"{bucket}/runs/exp/schedule.json"
    assert read_records(uri, s3) == {}
    sched = engine_debug()
    planned = {n: PlannedStage(sched.stage(n), text_to_image_demo_debug(), res(1)) for n in sched.order()}
    records = {n: new_record(p, None) for n, p in planned.items()}
    records["a"].update(status="done", checkpoint=f"{bucket}/runs/exp/a/checkpoint_x", started="t0", finished="t1")
    records["b"].update(status="running", started="t0")
    write_records(uri, "engine_debug", "exp", records, s3)
    back = read_records(uri, s3)
    assert back == records
    rerun = {n: new_record(p, back.get(n))["status"] for n, p in planned.items()}
    assert rerun == {"a": "skipped", "b": "pending", "c": "pending"}


def test_a_corrupt_schedule_record_is_one_line(tmp_path):
    from training.orchestrator import read_records

    (tmp_path / "schedule.json").write_text("{not json")
    with pytest.raises(UsageError, match=r"schedule.json: not a schedule record .*move it away"):
        read_records(str(tmp_path / "schedule.json"), None)


def test_the_demo_schedule_starts_its_slowest_chain_first():
    """codi_demo's stages carry their measured seconds: the audio chain (autoencoder, then the LDM, the
    longest stage) leads, though the image chain has more runs; the cascade side stages come last."""
    from training.schedules import codi_demo, codi_debug

    demo = codi_demo()
    assert all(s.expected_s for s in demo.stages)
    order = demo.launch_order()
    assert order[0] == "audio_autoencoder" and order.index("audio_ldm") < order.index("image_ldm")
    assert set(order[-3:]) <= {"cascade_base", "cascade_ssr", "cascade_tsr", "base_distillation",
                               "video_audio_alignment"}
    debug = codi_debug()            # no figures: ordered by runs, the image chain first
    assert not any(s.expected_s for s in debug.stages) and debug.launch_order()[0] == "clip_pretraining"


def test_the_demo_alignment_phases_take_both_cores_and_never_run_beside_another_stage():
    """The latent-alignment phases close the demo alone: they reserve 2 logical CPUs (torch on 2 threads),
    which on the demo's 4-CPU Ray never fits beside another stage's 1.5 with Ray Data's CPU kept free,
    so two cores never carry three threads; every other stage keeps 1.5 (1 thread) and two run at once."""
    from training.schedules import codi_demo

    cluster = {"CPU": 4.0}
    resources = {s.name: StageResources.of(s.recipe()) for s in codi_demo().stages}
    alone = {n for n, r in resources.items() if r.per_worker["CPU"] == 2.0}
    assert alone == {"text_image_alignment", "audio_text_alignment", "video_audio_alignment"}
    for name in alone:
        cfg = next(s for s in codi_demo().stages if s.name == name).recipe()
        assert cfg.scaling.worker.threads == 2 and cfg.scaling.num_workers == 1
        assert fits_beside(resources[name], [], cluster)
        assert not fits_beside(resources[name], [resources["cascade_ssr"]], cluster)
        assert not fits_beside(resources["cascade_ssr"], [resources[name]], cluster)
    others = [r for n, r in resources.items() if n not in alone]
    assert all(r.per_worker["CPU"] == 1.5 and r.num_workers == 1 for r in others)
    assert fits_beside(resources["audio_ldm"], [resources["image_ldm"]], cluster)


def test_the_demo_video_ldm_takes_a_tenth_of_its_batches_from_images():
    """DEMO_VIDEO_IMAGE_FRACTION (session 19's measurement, training/schedules.py) reaches the demo's video
    LDM stage, whose second shard set is the laion images; the debug twin keeps half."""
    from training.recipes_codi import SET_BY_SCHEDULE
    from training.schedules import DEMO_VIDEO_IMAGE_FRACTION, codi_debug, codi_demo

    for schedule, fraction in ((codi_demo(), DEMO_VIDEO_IMAGE_FRACTION), (codi_debug(), 0.5)):
        stage = next(s for s in schedule.stages if s.name == "video_ldm")
        cfg = stage.recipe()
        assert (stage.images, cfg.data.images, cfg.data.image_fraction) == ("laion", SET_BY_SCHEDULE, fraction)
    assert DEMO_VIDEO_IMAGE_FRACTION == 0.1
