"""The MLflow model a trial logs takes uint8 images as people have them (the training normalisation inside) and
names its classes; it serves any batch size, with the trained BatchNorm statistics, after a round trip through a
real SQLite tracking store (an export traced at batch 1 once served batch 1 only), and refuses float input."""
import mlflow
import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient

import data
from models import create_model
from orchestrator.sweep.seed_run import log_model

BATCH_SIZES = (1, 4, 7)


def _with_trained_batchnorm(variant: str) -> torch.nn.Module:
    """A fresh model whose BatchNorm running statistics are no longer the defaults (mean 0, var 1)."""
    torch.manual_seed(0)
    model = create_model(variant).train()
    with torch.no_grad():
        for _ in range(3):
            model(3.0 * torch.randn(8, 3, 32, 32) + 0.5)
    return model.eval()


def _logged_model_uri(client: MlflowClient, experiment_id: str, run_id: str) -> str:
    found = client.search_logged_models([experiment_id], filter_string=f"source_run_id = '{run_id}'")
    assert [m.status.value for m in found] == ["READY"], found
    return f"models:/{found[0].model_id}"


@pytest.mark.parametrize("variant", ["base", "v6"])
def test_logged_model_predicts_every_batch_size_like_the_model(variant, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the default artifact root (./mlruns) lands in tmp_path
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    mlflow.set_tracking_uri(uri)
    client = MlflowClient(uri)
    experiment_id = client.create_experiment("logged-model", artifact_location=str(tmp_path / "artifacts"))
    run_id = client.create_run(experiment_id).info.run_id
    model = _with_trained_batchnorm(variant)

    log_model(run_id, experiment_id, model)
    loaded = mlflow.pyfunc.load_model(_logged_model_uri(client, experiment_id, run_id))

    schema = loaded.metadata.signature
    assert schema.inputs.inputs[0].shape == (-1, 3, 32, 32) and schema.outputs.inputs[0].shape == (-1, 10)
    assert schema.inputs.inputs[0].type == np.dtype(np.uint8)
    assert loaded.metadata.metadata["classes"] == list(data.CLASSES)
    generator = torch.Generator().manual_seed(1)
    for batch in BATCH_SIZES:
        x = torch.randint(0, 256, (batch, 3, 32, 32), dtype=torch.uint8, generator=generator)
        with torch.no_grad():
            expected = model(data.normalize(x))  # what training and validation computed
        got = torch.from_numpy(np.asarray(loaded.predict(x.numpy())))
        assert got.shape == (batch, 10)
        assert torch.allclose(got, expected, atol=1e-5), (batch, (got - expected).abs().max())
    with pytest.raises(Exception, match="(?i)type|dtype|schema"):  # normalised floats: refused, not misread
        loaded.predict(data.normalize(x).numpy())
