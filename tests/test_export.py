"""orchestrator.training.export: every variant exports to ONNX with the PyTorch model's logits at any batch size, the int8
model runs in ONNX Runtime, export_model returns every metric, and the calibration set is fixed by the seed."""
import json

import numpy as np
import onnx
import pytest
import torch

import data
import models
from orchestrator.training import export


def with_batchnorm_stats(name: str) -> torch.nn.Module:
    """A fresh model whose BatchNorms are not the identity, so the export's BN folding is really checked:
    random affine parameters, and running stats from a few train-mode passes."""
    torch.manual_seed(0)
    model = models.create_model(name)
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            torch.nn.init.uniform_(m.weight, 0.5, 1.5)
            torch.nn.init.uniform_(m.bias, -0.3, 0.3)
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(16, 3, 32, 32) * 0.6 + 0.1)
    return model.eval()


@pytest.fixture(scope="module")
def tiny(tiny_cifar):
    train_x, _ = data.load_cifar10(tiny_cifar, "train")
    val_x, val_y = data.load_cifar10(tiny_cifar, "test")
    return train_x, val_x, val_y


@pytest.mark.parametrize("name", models.list_models())
def test_onnx_matches_pytorch_at_any_batch_size(name, tiny, tmp_path):
    _, val_x, _ = tiny
    bare = with_batchnorm_stats(name)
    model = export.deployable(bare)
    path = export.export_onnx(model, tmp_path / "m.onnx", (3, 32, 32))
    assert not list(tmp_path.glob("*.data")), "weights must live inside the one .onnx file"
    proto = onnx.load(path)
    batch_dim = proto.graph.input[0].type.tensor_type.shape.dim[0]
    assert batch_dim.dim_param and not batch_dim.HasField("dim_value")
    # It takes images as people have them, and says which classes its logits are.
    assert proto.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.UINT8
    assert json.loads({p.key: p.value for p in proto.metadata_props}["classes"]) == list(data.CLASSES)
    session = export.ort_session(path)
    assert export.check_parity(model, session, val_x) <= export.PARITY_MAX_ABS_DIFF
    for batch in (1, 4, 7):
        got = session.run(None, {export.INPUT_NAME: val_x[:batch].numpy()})[0]  # raw uint8 pixels
        with torch.no_grad():
            expected = bare(data.normalize(val_x[:batch])).numpy()  # what training computed
        assert got.shape == (batch, 10)
        assert np.abs(got - expected).max() <= export.PARITY_MAX_ABS_DIFF


def test_parity_failure_is_a_clear_error(tiny, tmp_path):
    _, val_x, _ = tiny
    deployable = export.deployable(with_batchnorm_stats("base"))
    session = export.ort_session(export.export_onnx(deployable, tmp_path / "m.onnx", (3, 32, 32)))
    other = export.deployable(models.create_model("base"))  # other weights: the export is not of this model
    with pytest.raises(export.ExportError, match="max \\|logit difference\\|"):
        export.check_parity(other, session, val_x)


@pytest.fixture(scope="module")
def exported(tiny, tmp_path_factory):
    train_x, val_x, val_y = tiny
    # As the trainer hands it over: channels_last, in train mode; export works on a copy and leaves it so.
    model = with_batchnorm_stats("base").to(memory_format=torch.channels_last).train()
    out_dir = tmp_path_factory.mktemp("export")
    metrics, paths = export.export_model(model, train_images=train_x, val_images=val_x, val_labels=val_y, seed=0,
                                         out_dir=out_dir, calibration_images=64, batch1_calls=5, repeats=1)
    assert model.training
    assert model.blocks[0].conv1[0].weight.is_contiguous(memory_format=torch.channels_last)
    return metrics, paths, out_dir


def test_export_model_writes_both_models(exported):
    _, paths, out_dir = exported
    assert paths == {"onnx": out_dir / export.ONNX_FILE, "int8": out_dir / export.INT8_FILE}
    assert sorted(p.name for p in out_dir.iterdir()) == sorted([export.ONNX_FILE, export.INT8_FILE])


def test_int8_model_runs_in_onnx_runtime(exported, tiny):
    _, paths, _ = exported
    _, val_x, _ = tiny
    ops = {n.op_type for n in onnx.load(paths["int8"]).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops  # QDQ format
    session = export.ort_session(paths["int8"])
    for batch in (1, 4):
        out = session.run(None, {export.INPUT_NAME: val_x[:batch].numpy()})[0]  # raw uint8 pixels, like fp32's
        assert out.shape == (batch, 10) and np.isfinite(out).all()


def test_metrics_have_every_key_and_sane_values(exported):
    metrics, paths, _ = exported
    assert tuple(metrics) == export.EXPORT_METRICS
    assert metrics["onnx_bytes"] == paths["onnx"].stat().st_size > 0
    assert 0 < metrics["int8_bytes"] < metrics["onnx_bytes"] / 2  # int8 weights: a quarter of fp32, plus scales
    for key in ("onnx_val_accuracy", "int8_val_accuracy"):
        assert 0.0 <= metrics[key] <= 1.0
    assert 0.0 <= metrics["onnx_parity_max_abs_diff"] <= export.PARITY_MAX_ABS_DIFF
    for kind in ("fp32", "int8"):
        assert metrics[f"ort_latency_ms_batch1_{kind}"] > 0 and metrics[f"ort_latency_ms_per_image_{kind}"] > 0
    assert metrics["export_seconds"] > 0


def test_calibration_set_is_fixed_by_the_seed(tiny):
    train_x, _, _ = tiny
    first = export.calibration_set(train_x, 32, seed=3)
    assert first.shape == (32, 3, 32, 32) and first.dtype == torch.uint8
    assert torch.equal(first, export.calibration_set(train_x, 32, seed=3))
    assert not torch.equal(first, export.calibration_set(train_x, 32, seed=4))
    assert len(export.calibration_set(train_x, 10_000, seed=3)) == len(train_x)  # capped at what there is
    with pytest.raises(ValueError):
        export.calibration_set(train_x, 0, seed=3)


def test_a_sweep_logs_the_deployment_figures_and_both_onnx_files_per_trial(tiny_cifar, tmp_path, local_ray):
    from mlflow import MlflowClient

    from orchestrator.sweep import driver as orun
    from orchestrator.sweep.config import SweepConfig
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    cfg = SweepConfig.from_flags(dict(variants=("base", "v6"), seeds=1, epochs=1, data_dir=str(tiny_cifar),
                                      compile=False, tracking_uri=uri, storage_path=str(tmp_path / "ray"),
                                      latency_batch1_calls=5, report=False, export_calibration_images=16))
    out = orun.run_sweep(cfg)
    client = MlflowClient(uri)
    runs = client.search_runs([out["experiment_id"]], f"tags.`mlflow.parentRunId` = '{out['parent_run_id']}'")
    assert len(runs) == 2
    for run in runs:
        assert set(export.EXPORT_METRICS) <= set(run.data.metrics), run.info.run_name
        assert run.data.metrics["onnx_parity_max_abs_diff"] <= 1e-4
        assert 0 < run.data.metrics["int8_bytes"] < run.data.metrics["onnx_bytes"]
        assert run.data.params["export"] == "onnx" and run.data.params["export_calibration_images"] == "16"
        files = {a.path for a in client.list_artifacts(run.info.run_id, "onnx")}
        assert files == {"onnx/model.onnx", "onnx/model.int8.onnx"}


def test_deployed_models_fed_raw_uint8_test_images_give_the_accuracy_recorded_for_them(tiny_cifar, tmp_path,
                                                                                      local_ray):
    """What a user gets from a finished trial, fed the test images as data.load_cifar10 gives them (uint8, not
    normalised): the logged MLflow model reproduces the run's final_val_accuracy, and the two ONNX files their
    onnx_val_accuracy and int8_val_accuracy, each within 0.1 point."""
    import mlflow
    from mlflow import MlflowClient

    from orchestrator.sweep import driver as orun
    from orchestrator.sweep.config import SweepConfig
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    cfg = SweepConfig.from_flags(dict(variants=("base",), seeds=1, epochs=2, data_dir=str(tiny_cifar),
                                      compile=False, tracking_uri=uri, storage_path=str(tmp_path / "ray"),
                                      latency_batch1_calls=5, report=False, export_calibration_images=16))
    out = orun.run_sweep(cfg)
    client = MlflowClient(uri)
    mlflow.set_tracking_uri(uri)
    run = client.search_runs([out["experiment_id"]], f"tags.`mlflow.parentRunId` = '{out['parent_run_id']}'")[0]
    images, labels = data.load_cifar10(tiny_cifar, "test")  # uint8 [N, 3, 32, 32]

    def accuracy(logits) -> float:
        return float((np.asarray(logits).argmax(1) == labels.numpy()).mean())
    logged = mlflow.pyfunc.load_model(f"runs:/{run.info.run_id}/mlflow_model")
    got = {"final_val_accuracy": accuracy(logged.predict(images.numpy()))}
    for key, name in (("onnx_val_accuracy", "model.onnx"), ("int8_val_accuracy", "model.int8.onnx")):
        path = client.download_artifacts(run.info.run_id, f"onnx/{name}", str(tmp_path))
        session = export.ort_session(path)
        got[key] = accuracy(session.run(None, {export.INPUT_NAME: images.numpy()})[0])
    for key, value in got.items():
        assert abs(value - run.data.metrics[key]) <= 0.001, (key, value, run.data.metrics[key])
