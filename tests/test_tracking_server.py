"""Against real `mlflow server` processes (SQLite backend; PostgreSQL backend): the run layout,
`cytotune best` equal to select_best, `--config-out` rerunning the choice, `cytotune report`, a real study
interrupted and resumed into one run per trial, and an unreachable server refused before anything starts."""

from __future__ import annotations

import json
import shutil
import sys

import pytest
from mlflow import MlflowClient
from mlflow_servers import create_database, drop_database, postgres_uri
from ray_nodes import InterruptAfter
from tracking_fakes import (
    check_layout,
    complete_lora_outcome,
    launch_callback,
    plans,
    run_fake_study,
    write_study,
)
from typer.testing import CliRunner

from cytotune.bench.servers import MlflowServer, free_port
from cytotune.cli import app
from cytotune.study.grid import expand_trials
from cytotune.study.spec import load_study
from cytotune.tracking import runs_frame, schema, select_best

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def servers(tmp_path_factory, mlflow_sqlite_template):
    """Both servers, started side by side and shared by the module; the PostgreSQL database is dropped."""
    folder = tmp_path_factory.mktemp("mlflow-servers")
    (folder / "sqlite").mkdir()
    (folder / "postgres").mkdir()
    shutil.copy(mlflow_sqlite_template, folder / "sqlite" / "server.db")
    database = create_database()
    started = [
        MlflowServer(f"sqlite:///{folder / 'sqlite' / 'server.db'}", folder / "sqlite", workers=1),
        MlflowServer(postgres_uri(database), folder / "postgres", workers=1),
    ]
    try:
        for server in started:
            server.launch()
        yield {"sqlite": started[0].wait(), "postgres": started[1].wait()}
    finally:
        for server in started:
            server.stop()
        drop_database(database)


def cli(*args: str) -> str:
    result = CliRunner().invoke(app, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.stdout


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_layout_and_best_on_a_server(servers, backend, tmp_path, capfd):
    uri, name = servers[backend], f"layout-{backend}"
    yaml_path = write_study(tmp_path, name)
    study_plans = plans(yaml_path)
    callback = launch_callback(yaml_path, uri, address="local")
    run_fake_study(callback, study_plans, tmp_path / "ckpt")
    assert capfd.readouterr().out == ""  # none of MLflow's "View run" lines at each run's end
    check_layout(MlflowClient(uri), name, yaml_path, study_plans)

    expected = select_best(runs_frame(name, uri), ("lr",), expected_seeds=2)
    printed = json.loads(cli("best", "--experiment", name, "--tracking-uri", uri, "--format", "json"))
    selected = [{k: v for k, v in row.items() if k in expected.columns} for row in printed]
    assert selected == json.loads(expected.to_json(orient="records"))
    chosen = [row for row in printed if row["test_acc_mean"] is not None]  # LoRA: no complete configuration
    assert len(chosen) == 1 and chosen[0]["cell_key"].startswith("linear_probe/")
    assert all(row["test_acc_ci_low"] <= row["test_acc_mean"] <= row["test_acc_ci_high"] for row in chosen)
    lora = json.loads(
        cli("best", "--experiment", name, "--tracking-uri", uri, "--where", "method=lora", "--format", "json")
    )
    assert [row["cell_key"] for row in lora] == ["lora/tiny_clip/synthetic/shots=2/rank=2,targets=qv"]
    table = cli("best", "--experiment", name, "--tracking-uri", uri)
    assert "no configuration finished on every seed (2 tried)" in table and " 2/2 " in table

    rerun = tmp_path / "rerun.yaml"
    cli("best", "--experiment", name, "--tracking-uri", uri, "--config-out", str(rerun))
    again = load_study(rerun)
    assert again.name == f"{name}-best"
    chosen = {(row["cell_key"], row["lr"]) for row in expected.to_dict("records")}
    wanted = [p.config for p in study_plans if (p.cell_key, p.config.lr) in chosen]
    assert sorted(map(repr, (p.config for p in expand_trials(again)))) == sorted(map(repr, wanted))


def test_report_writes_and_logs_its_files(servers, tmp_path):
    uri, name = servers["postgres"], "report-postgres"
    yaml_path = write_study(tmp_path, name)
    run_fake_study(
        launch_callback(yaml_path, uri), plans(yaml_path), tmp_path / "ckpt", outcome=complete_lora_outcome
    )
    out = tmp_path / "report"
    printed = cli("report", "--experiment", name, "--tracking-uri", uri, "--out", str(out))
    names = {
        "best_configs.csv", "best_configs.md", "table1_linear_probe.csv", "table1_linear_probe.md",
        "table1_linear_probe.tex", "figure1_shots.png", "params_vs_accuracy.png", "report.md",
        "uncertainty.csv", "comparisons.csv", "forest_comparisons.png", "reliability_synthetic.png",
    }  # fmt: skip
    assert {p.name for p in out.iterdir()} == names
    assert f"report: {out / 'report.md'}" in printed
    assert "tiny_clip" in (out / "table1_linear_probe.md").read_text()
    client = MlflowClient(uri)
    launch = client.search_runs(
        [client.get_experiment_by_name(name).experiment_id], f"tags.`{schema.KIND}` = '{schema.KIND_LAUNCH}'"
    )[0]
    assert {
        a.path.removeprefix("report/") for a in client.list_artifacts(launch.info.run_id, "report")
    } == names


def test_unreachable_server_is_one_line_and_nothing_starts(tmp_path, monkeypatch, capsys):
    import ray
    from tracking_fakes import STUDY_YAML

    from cytotune.cli import main

    study = tmp_path / "down.yaml"
    study.write_text(STUDY_YAML.format(name="down") + f"storage: {tmp_path / 'ray'}\n")
    uri = f"http://127.0.0.1:{free_port()}"
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["cytotune", "run", str(study), "--tracking-uri", uri])
    with pytest.raises(SystemExit) as exit_status:
        main()
    assert exit_status.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith(f"cytotune: error: MLflow tracking server {uri} is unreachable")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["down.yaml"]
    assert not ray.is_initialized()


def test_real_study_interrupted_then_resumed_has_one_run_per_trial(servers, tmp_path, monkeypatch):
    import ray

    from cytotune.cli import main
    from cytotune.data.synthetic import generate_synthetic
    from cytotune.study.grid import expand_cells
    from cytotune.study.launch import study_callback
    from cytotune.study.runner import run_study

    uri, name = servers["sqlite"], "resume-real"
    data = generate_synthetic(tmp_path / "synthetic", classes=3, per_class=12, size=32)
    study = tmp_path / f"{name}.yaml"
    study.write_text(
        f"name: {name}\nbackbones: [tiny_clip]\ndatasets: [{{name: synthetic, root: {data}}}]\n"
        f"seeds: [1, 2]\nstorage: {tmp_path / 'ray'}\n"
        "train: {device: cpu, image_cache_size: 32, batch_size: 16, eval_batch_size: 64, warmup_steps: 5}\n"
        "methods:\n  - method: linear_probe\n    search: {lr: [1.0e-2, 3.0e-3, 1.0e-3]}\n"
        "    train: {probe_epochs: 20}\n"
    )
    monkeypatch.setenv("CYTOTUNE_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    ray.init(address="local", num_cpus=2, include_dashboard=False, object_store_memory=100 * 1024**2)
    try:
        spec = load_study(study)
        tracking = study_callback(spec, expand_cells(spec), uri)
        first = run_study(spec, max_concurrent=1, callbacks=[tracking, InterruptAfter(2)], say=lambda _: None)
        assert first.interrupted
        monkeypatch.setattr(sys, "argv", ["cytotune", "run", str(study), "--tracking-uri", uri, "--resume"])
        with pytest.raises(SystemExit) as done:
            main()
        assert done.value.code == 0
    finally:
        ray.shutdown()

    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name(name).experiment_id], max_results=100)
    trials = [r for r in runs if r.data.tags[schema.KIND] == schema.KIND_TRIAL]
    launches = {r.info.run_id: r for r in runs if r.data.tags[schema.KIND] == schema.KIND_LAUNCH}
    keys = sorted(r.data.tags[schema.TRIAL_KEY] for r in trials)
    assert len(keys) == 6 and len(set(keys)) == 6
    assert {r.data.tags[schema.STATUS] for r in trials} == {"finished"}
    assert {r.info.status for r in trials} == {"FINISHED"}
    assert launches[tracking.parent_run_id].info.status == "KILLED"
    [second] = [r for r in launches.values() if r.info.run_id != tracking.parent_run_id]
    assert second.data.tags[schema.RESUME] == "true" and second.info.status == "FINISHED"
    assert all(r.data.tags[schema.PARENT_RUN_ID] in launches for r in trials)
    assert sum(r.data.tags[schema.PARENT_RUN_ID] == tracking.parent_run_id for r in trials) >= 2
    assert all(client.get_metric_history(r.info.run_id, "val_acc") for r in trials)
    assert {"trial_manifest.csv", "result.json", "confusion_matrix.png"} <= {
        a.path for a in client.list_artifacts(trials[0].info.run_id)
    }
    expected = select_best(runs_frame(name, uri), ("lr",), expected_seeds=2)
    best = json.loads(cli("best", "--experiment", name, "--tracking-uri", uri, "--format", "json"))
    selected = [{k: v for k, v in row.items() if k in expected.columns} for row in best]  # + intervals
    assert selected == json.loads(expected.to_json(orient="records"))
    assert best[0]["n_seeds"] == 2 and not best[0]["missing_seeds"]
    assert not (tmp_path / "mlflow.db").exists()


def test_trials_ending_side_by_side_each_get_their_dataset_input_on_postgres(servers):
    """MLflow's SQL store looks a dataset up, then inserts it: eight runs logging one new dataset at once
    make all but one insert fail on PostgreSQL (a unique-key error); the callback's call logs it again."""
    import threading

    from mlflow.entities import Dataset, DatasetInput, InputTag

    from cytotune.tracking.callback import log_dataset_input

    client = MlflowClient(servers["postgres"])
    experiment = client.create_experiment("dataset-race")
    failures: list[Exception] = []
    runs = []
    for round_ in range(4):
        ids = [client.create_run(experiment).info.run_id for _ in range(8)]
        runs += [(run_id, f"set{round_}") for run_id in ids]
        dataset = Dataset(f"set{round_}", f"digest{round_}", "local", '{"uri": "file:///data"}')
        given = DatasetInput(dataset, tags=[InputTag("mlflow.data.context", "trial")])
        start = threading.Barrier(len(ids))

        def log(run_id: str, given: DatasetInput = given, start: threading.Barrier = start) -> None:
            start.wait()
            try:
                log_dataset_input(client, run_id, given)
            except Exception as err:  # noqa: BLE001  (collected and asserted below)
                failures.append(err)

        threads = [threading.Thread(target=log, args=(run_id,)) for run_id in ids]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert failures == []
    for run_id, name in runs:
        inputs = client.get_run(run_id).inputs.dataset_inputs
        assert [i.dataset.name for i in inputs] == [name]


def test_an_input_error_other_than_a_conflict_is_not_retried():
    from mlflow.exceptions import MlflowException

    from cytotune.tracking.callback import log_dataset_input

    class Refusing:
        calls = 0

        def log_inputs(self, run_id, datasets):
            self.calls += 1
            raise MlflowException("RESOURCE_DOES_NOT_EXIST: run 'x' not found")

    client = Refusing()
    with pytest.raises(MlflowException, match="not found"):
        log_dataset_input(client, "x", object())
    assert client.calls == 1
