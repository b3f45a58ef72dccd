"""Packed cells without Ray workers: the `pack` setting, packs in the plan, searcher and scheduler, in-pack
rungs, the memory estimate and its refusal, and the pack's MLflow runs (driven with Trial-like objects)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from mlflow import MlflowClient
from ray.tune import Checkpoint
from ray.tune.schedulers import TrialScheduler
from tracking_fakes import CLASSES, STUDY_YAML, FakeTrial, final_metrics, val_acc

from cytotune.errors import CytotuneError
from cytotune.study.grid import expand_cells, expand_trials
from cytotune.study.launch import study_callback
from cytotune.study.packs import (
    backbone_size,
    pack_members,
    pack_memory_bytes,
    pack_of,
    pack_rungs,
    ray_trial_count,
)
from cytotune.study.runner import describe_plan, plan_study, run_study
from cytotune.study.scheduler import SeedGroupedASHA
from cytotune.study.search import CellSearcher
from cytotune.study.spec import AshaSettings, load_study
from cytotune.tracking import best_configs, runs_frame, schema
from cytotune.tracking.schema import PACK_FINAL, PACK_KEY, PACK_RESULTS

SPACES = Path(__file__).resolve().parent.parent / "search_spaces"
STUDY = STUDY_YAML + "    asha: {{grace_period: 10, reduction_factor: 2, max_steps: 40}}\n    {block}\n"
LORA_CELL = "lora/tiny_clip/synthetic/shots=2/rank=2,targets=qv"
# timm's vit_base_patch16_224 has 86,567,656 parameters, 768 x 1000 + 1000 of them in its ImageNet head
VIT_B16_PARAMS = 86_567_656 - 768 * 1000 - 1000


def write(
    tmp_path: Path, block: str = "pack: true", name: str = "packs", backbone: str = "tiny_clip"
) -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(STUDY.format(name=name, block=block).replace("[tiny_clip]", f"[{backbone}]"))
    return path


def refused(tmp_path: Path, methods: str) -> str:
    """The one line a study with these method blocks is refused with."""
    path = tmp_path / "refused.yaml"
    path.write_text(
        f"name: refused\nbackbones: [tiny_clip]\ndatasets: [{{root: synthetic}}]\nmethods:\n{methods}"
    )
    with pytest.raises(CytotuneError) as err:
        load_study(path)
    message = str(err.value)
    assert "\n" not in message and message.startswith(f"{path}: methods[0]: pack: ")
    return message.split(": pack: ", 1)[1]


@pytest.mark.parametrize(
    ("methods", "says"),
    [
        (
            "  - {method: lora, shots: [2], pack: true, search: {lr: [0.1, 0.01], lora.rank: [2, 4]}}",
            "expected a grid search over lr alone, got a search over lora.rank",
        ),
        (
            "  - {method: lora, pack: true, samples: 2, search: {lr: {optuna: uniform, low: 0.1, high: 1}}}",
            "expected a grid search over lr alone, got an optuna search",
        ),
        (
            "  - {method: knn, k: 3, pack: true}",
            "knn trains nothing to pack; expected pack only with lora or",
        ),
        (
            "  - {method: linear_probe, lr: 0.1, pack: true, asha: {grace_period: 1, max_steps: 2}}",
            "a packed linear-probe sweep has no early stopping; expected no asha with pack",
        ),
    ],
)
def test_pack_is_refused_where_one_pass_cannot_train_the_cell(tmp_path, methods, says):
    assert says in refused(tmp_path, methods)


def test_a_packed_cell_is_one_ray_trial_holding_its_trials_as_they_run_alone(tmp_path):
    packed, alone = load_study(write(tmp_path)), load_study(write(tmp_path, "", name="alone"))
    cells = expand_cells(packed)
    assert ray_trial_count(cells) == 4 + 1 and ray_trial_count(expand_cells(alone)) == 8
    lora = next(cell for cell in cells if cell.cell_key == LORA_CELL)
    config = pack_of(lora).ray_config()
    assert config["trial_key"] == LORA_CELL + "/pack" and config["cell_key"] == LORA_CELL
    assert config["asha"] == {**AshaSettings(grace_period=10, max_steps=40).model_dump()}
    separate = [t.ray_config() for t in expand_trials(alone) if t.cell_key == LORA_CELL]
    assert [m["trial_key"] for m in config[PACK_KEY]] == [t["trial_key"] for t in separate]
    assert [m["trial"] for m in config[PACK_KEY]] == [t["trial"] for t in separate]

    searcher = CellSearcher(cells)
    suggested = [searcher.suggest(f"t{i}") for i in range(6)]
    assert suggested[-1] == CellSearcher.FINISHED
    assert [s["trial_key"] for s in suggested[:5]].count(LORA_CELL + "/pack") == 1

    # the pack is its cell's only trial: the cell's ASHA settings do not stop it at a rung
    scheduler = SeedGroupedASHA.for_cells(cells)
    pack = FakeTrial("t4", config)
    for step, value in ((10, 0.1), (20, 0.1), (40, 0.1)):
        result = {"step": step, "val_acc": value, "best_val_acc": value}
        assert scheduler.on_trial_result(None, pack, result) == TrialScheduler.CONTINUE


def test_in_pack_rungs_are_the_first_evaluations_at_or_after_asha_s_rungs():
    asha = AshaSettings(grace_period=10, reduction_factor=2, max_steps=40)  # rungs 10, 20, 40
    assert pack_rungs(asha, eval_every=4, total_steps=30) == [12, 20]  # 40 is past the last step
    assert pack_rungs(asha, eval_every=10, total_steps=40) == [10, 20]  # 40: the last step decides nothing
    assert pack_rungs(AshaSettings(grace_period=3, reduction_factor=3, max_steps=27), 5, 100) == [5, 10, 30]


def test_memory_estimate_of_a_vit_b16_pack_by_hand():
    size = backbone_size("vit_b16")
    assert (
        size.params == VIT_B16_PARAMS
        and size.tokens == 14 * 14 + 1
        and (size.width, size.layers) == (768, 12)
    )
    tiny = backbone_size("tiny_clip")
    assert tiny.tokens == (32 // 8) ** 2 + 1  # 32 px, patch 8 (models/zoo.py)
    cfg = expand_trials(load_study(SPACES / "exp2_lora_fewshot.yaml"))[0].config
    assert (cfg.train.batch_size, cfg.lora.rank, cfg.lora.targets) == (32, 2, ("q", "v"))
    weights = VIT_B16_PARAMS * (4 + 2)  # float32 and the bfloat16 copies of autocast
    adapters = 15 * (12 * 2 * 2 * 2 * 768) * 4 * 4  # 15 configurations: A and B of q, v in 12 blocks; Adam
    activations = 15 * 32 * 12 * 197 * 768 * 20 * 2  # 20 values per token and channel per block, bfloat16
    assert pack_memory_bytes(cfg, 15, size, on_gpu=True) == weights + adapters + activations
    assert round((weights + adapters + activations) / 1024**3, 2) == 32.96


def test_a_pack_too_big_for_its_gpu_is_refused_in_one_line_before_anything_starts(tmp_path, monkeypatch):
    block = "pack: true\n    resources: {{gpus: {gpus}, gpu_memory_gb: 80}}\n    train: {{batch_size: 32}}"
    nodes = [{"CPU": 8.0, "GPU": 1.0}]
    seeds = "seeds: [1, 2, 3, 4, 5, 6, 7, 8]\nmethods:"  # ViT-B/16: 16 x 32 images ~ 35.1 GiB at bfloat16
    path = write(tmp_path, block.format(gpus=0.5), name="big", backbone="vit_b16")
    path.write_text(path.read_text().replace("seeds: [1, 2]\nmethods:", seeds))
    spec = load_study(path)
    plan = plan_study(spec, expand_cells(spec), nodes, "a test cluster")
    assert plan.fit.ok  # half of 80 GiB holds it
    assert "pack of 16, ~35.1 GiB of 40.0 GiB" in describe_plan(plan)
    path.write_text(path.read_text().replace("gpus: 0.5", "gpus: 0.25"))
    spec = load_study(path)
    plan = plan_study(spec, expand_cells(spec), nodes, "a test cluster")
    (problem,) = plan.fit.problems
    assert problem.startswith(
        f"{tmp_path / 'big.yaml'}: methods[1].pack: the pack of lora/vit_b16/synthetic/"
    )
    assert "(16 trials x batch 32) needs about 35.1 GiB of GPU memory, more than the 20.0 GiB" in problem
    assert "does not fit" in describe_plan(plan) and "can run: no" in describe_plan(plan)
    monkeypatch.setattr("cytotune.study.runner._machine", lambda: (8, 1))
    with pytest.raises(CytotuneError) as err:
        run_study(spec, storage=tmp_path / "ray", say=lambda _: None)
    assert str(err.value) == problem and not (tmp_path / "ray").exists()


def member_plans(study_yaml: Path):
    cell = next(c for c in expand_cells(load_study(study_yaml)) if c.cell_key == LORA_CELL)
    return pack_of(cell).ray_config(), list(pack_of(cell).trials)


ENDS = ("finished", "finished", "failed", "stopped")  # lr 1e-3 seeds 1, 2; lr 1e-2 seeds 1, 2


def drive_pack(callback, config, plans, trial_id: str, workdir: Path, ends=ENDS) -> FakeTrial:
    """A pack starts, reports two evaluations of its trials (steps 10, 20) and ends with `ends`."""
    trial = FakeTrial(trial_id, config)
    callback.on_trial_start(0, [], trial)
    for step, share in ((10, 0.5), (20, 1.0)):
        evaluated = {
            str(i): {
                "step": step,
                "train_loss": 1.0 / step,
                "val_acc": val_acc(p) * share,
                "best_val_acc": val_acc(p) * share,
            }
            for i, p in enumerate(plans)
            if step == 10 or ends is None or ends[i] != "stopped"
        }
        result = {"step": step, "val_acc": 0.8, "best_val_acc": 0.8, PACK_RESULTS: evaluated}
        trial.last_result = result
        callback.on_trial_result(0, [], trial, result)
    if ends is None:
        return trial
    final = {}
    for i, (plan, end) in enumerate(zip(plans, ends, strict=True)):
        final[str(i)] = {"status": end, "error": "loss is NaN at step 12" if end == "failed" else None}
        if end == "finished":
            folder = workdir / str(i)
            folder.mkdir(parents=True)
            (folder / "trial_manifest.csv").write_text("row,split\n0,train\n")
            confusion = [[5, 1, 0], [0, 4, 2], [1, 0, 6]]
            (folder / "result.json").write_text(
                json.dumps({"classes": CLASSES, "confusion_matrix": confusion})
            )
            final[str(i)].update({**final_metrics(plan), "val_acc": val_acc(plan), "step": 30})
    trial.checkpoint = Checkpoint.from_directory(str(workdir))
    trial.last_result = {"step": 30, "val_acc": 0.8, "done_trial": 1, PACK_FINAL: final}
    callback.on_trial_result(0, [], trial, trial.last_result)
    callback.on_trial_complete(0, [], trial)
    trial.status = "TERMINATED"
    return trial


def pack_launch(tmp_path: Path, uri: str, resume: bool = False):
    """The LoRA pack of the packed fake study (its Ray config and trials) and a started launch's callback."""
    path = write(tmp_path)
    spec = load_study(path)
    callback = study_callback(spec, expand_cells(spec), uri, resume=resume)
    callback.setup()
    return (*member_plans(path), callback)


def test_a_pack_s_trials_are_child_runs_laid_out_as_separate_trials(tmp_path, mlflow_sqlite_uri):
    config, plans, callback = pack_launch(tmp_path, mlflow_sqlite_uri)
    pack = drive_pack(callback, config, plans, "trial_00000", tmp_path / "ckpt")
    callback.on_experiment_end([pack] + [FakeTrial(f"p{i}", {}, status="TERMINATED") for i in range(4)])

    client = MlflowClient(mlflow_sqlite_uri)
    experiment = client.get_experiment_by_name("packs").experiment_id
    (pack_run,) = client.search_runs([experiment], f"tags.`{schema.KIND}` = '{schema.KIND_PACK}'")
    (launch,) = client.search_runs([experiment], f"tags.`{schema.KIND}` = '{schema.KIND_LAUNCH}'")
    assert launch.info.status == "FAILED"  # a trial of the pack failed (as it would alone)
    assert (
        pack_run.data.tags[schema.PARENT_RUN_ID] == launch.info.run_id and pack_run.info.status == "FINISHED"
    )
    assert pack_run.data.params["pack.trials"] == "4" and "lr" not in pack_run.data.params
    frame = runs_frame("packs", mlflow_sqlite_uri).set_index("trial_key")
    assert list(frame.loc[[p.trial_key for p in plans], "status"]) == list(ENDS)
    assert (frame["parent_run_id"] == pack_run.info.run_id).all() and (
        frame["ray_trial_id"] == "trial_00000"
    ).all()
    first = frame.loc[plans[0].trial_key]
    assert (
        first["lr"] == 0.001 and first["seed"] == 1 and first["lora.rank"] == 2 and first["searched"] == "lr"
    )
    assert first["test_acc"] == final_metrics(plans[0])["test_acc"]
    assert [m.step for m in client.get_metric_history(first["run_id"], "val_acc")] == [10, 20, 30]
    stopped = frame.loc[plans[3].trial_key]
    assert [m.step for m in client.get_metric_history(stopped["run_id"], "val_acc")] == [10]
    assert stopped["run_status"] == "KILLED" and frame.loc[plans[2].trial_key, "run_status"] == "FAILED"
    assert "loss is NaN at step 12" in frame.loc[plans[2].trial_key, "error"]
    files = {a.path for a in client.list_artifacts(first["run_id"])}
    assert {"trial_manifest.csv", "result.json", "confusion_matrix.png", "trial_config.json"} <= files
    best = best_configs("packs", mlflow_sqlite_uri).set_index("cell_key")
    assert best.loc[LORA_CELL, "lr"] == 0.001 and best.loc[LORA_CELL, "n_seeds"] == 2  # the one complete


def test_a_failed_pack_fails_its_open_trials_and_resume_continues_every_run(tmp_path, mlflow_sqlite_uri):
    config, plans, first = pack_launch(tmp_path, mlflow_sqlite_uri)
    drive_pack(first, config, plans, "trial_00000", tmp_path / "ckpt", ends=None)
    first.get_state()  # Tune saved its experiment state (the callback wrote its buffer); the driver dies here
    _, _, second = pack_launch(tmp_path, mlflow_sqlite_uri, resume=True)
    trial = FakeTrial("trial_00000", config, error="RuntimeError: CUDA out of memory")
    second.on_trial_start(0, [], trial)
    second.on_trial_error(0, [], trial)
    second.close()

    client = MlflowClient(mlflow_sqlite_uri)
    experiment = client.get_experiment_by_name("packs").experiment_id
    packs = client.search_runs([experiment], f"tags.`{schema.KIND}` = '{schema.KIND_PACK}'")
    assert len(packs) == 1 and packs[0].info.status == "FAILED"
    frame = runs_frame("packs", mlflow_sqlite_uri)
    assert len(frame) == 4 and (frame["status"] == "failed").all()
    assert frame["error"].str.contains("CUDA out of memory").all()
    runs = client.search_runs([experiment], f"tags.`{schema.KIND}` = '{schema.KIND_TRIAL}'")
    assert len(runs) == 4 and all(len(r.data.tags[schema.LAUNCHES].split(",")) == 2 for r in runs)
    for run in runs:  # the evaluations of the first launch stay in the continued run
        assert [m.step for m in client.get_metric_history(run.info.run_id, "val_acc")] == [10, 20]


def test_the_dry_run_shows_each_pack_in_text_and_json():
    from cytotune.study.runner import dry_run
    from cytotune.study.summary import plan_dict

    plan = dry_run(load_study(SPACES / "demo_packed.yaml"))
    text, data = describe_plan(plan), plan_dict(plan)
    assert (data["n_trials"], data["n_ray_trials"]) == (24, 6)
    assert "packs: 6 cells of 24 trials run as one Ray trial each; 6 Ray trials in all" in text
    for cell in data["cells"]:
        assert cell["pack"]["trials"] == 4 and cell["pack"]["fits"] and cell["pack"]["gpu_memory_gib"] is None
        row = next(line for line in text.splitlines() if line.startswith(cell["cell_key"] + " "))
        assert row.endswith(f"pack of 4, ~{cell['pack']['memory_gib'] * 1024:.0f} MiB")


def test_a_pack_that_ended_before_the_driver_died_replays_its_trials_ends_on_resume(
    tmp_path, mlflow_sqlite_uri
):
    config, plans, first = pack_launch(tmp_path, mlflow_sqlite_uri)
    drive_pack(first, config, plans, "trial_00000", tmp_path / "ckpt")
    first.wait()  # the pack's end is in MLflow; the driver dies before Tune's next snapshot
    client = MlflowClient(mlflow_sqlite_uri)
    experiment = client.get_experiment_by_name("packs").experiment_id
    before = {r.info.run_id: r for r in client.search_runs([experiment], "tags.`cytotune.kind` != 'launch'")}

    spec = load_study(tmp_path / "packs.yaml")
    second = study_callback(spec, expand_cells(spec), mlflow_sqlite_uri, resume=True)
    replays = second.replays({config["trial_key"]: config})
    assert list(replays) == [config["trial_key"]]  # the pack only: its trials run inside it
    replay = replays[config["trial_key"]]
    assert replay["done_trial"] == 1 and replay["best_val_acc"] == max(val_acc(p) for p in plans[:2])
    outcomes = pack_members(config, "finished", replay, None)
    assert [o["status"] for o in outcomes] == list(ENDS)
    assert [o["metrics"].get("test_acc") for o in outcomes] == [
        final_metrics(plans[0])["test_acc"],
        final_metrics(plans[1])["test_acc"],
        None,
        None,
    ]
    assert "loss is NaN at step 12" in outcomes[2]["metrics"]["error"]

    second.setup()
    trial = FakeTrial("trial_00000", config)
    second.on_trial_start(0, [], trial)
    trial.last_result = replay
    second.on_trial_result(0, [], trial, replay)
    trial.status = "TERMINATED"
    second.on_trial_complete(0, [], trial)
    second.on_experiment_end([trial] + [FakeTrial(f"p{i}", {}, status="TERMINATED") for i in range(4)])
    after = {r.info.run_id: r for r in client.search_runs([experiment], "tags.`cytotune.kind` != 'launch'")}
    assert sorted(after) == sorted(before)  # no new run
    for run_id, run in before.items():  # the pack's run and its trials' runs left as they ended
        assert after[run_id].data.tags == run.data.tags and after[run_id].data.metrics == run.data.metrics
        assert (after[run_id].info.status, after[run_id].info.end_time) == (
            run.info.status,
            run.info.end_time,
        )
