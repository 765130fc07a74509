"""``--device`` for torch models: the device reaches every tensor a model builds, and the run
record says which device (and GPU) a run computed on. No GPU is needed: a model fitted on
torch's ``meta`` device must hold no tensor anywhere else."""

from __future__ import annotations

import pytest

from harness.cli import main
from harness.records import load_records
from harness.registry import default_registry

TORCH_MODELS = ["jodie", "gru4rec", "lstm", "time-lstm", "rrn", "latentcross"]
torch = pytest.importorskip("torch")


def _tensors(obj, path="model", seen=None):
    """Every tensor reachable from ``obj`` through attributes, containers and modules."""
    seen = set() if seen is None else seen
    if id(obj) in seen:
        return
    seen.add(id(obj))
    if isinstance(obj, torch.Tensor):
        yield path, obj
    elif isinstance(obj, torch.nn.Module):
        for name, tensor in [*obj.named_parameters(), *obj.named_buffers()]:
            yield f"{path}.{name}", tensor
    elif isinstance(obj, torch.optim.Optimizer):
        for k, state in enumerate(obj.state.values()):
            yield from _tensors(state, f"{path}.state[{k}]", seen)
    elif isinstance(obj, dict):
        for key, value in obj.items():
            yield from _tensors(value, f"{path}[{key!r}]", seen)
    elif isinstance(obj, (list, tuple)):
        for k, value in enumerate(obj):
            yield from _tensors(value, f"{path}[{k}]", seen)
    elif hasattr(obj, "__dict__") and type(obj).__module__.startswith(("harness", "toy")):
        for key, value in vars(obj).items():
            yield from _tensors(value, f"{path}.{key}", seen)


@pytest.mark.parametrize("name", TORCH_MODELS)
def test_the_device_reaches_every_tensor_a_model_builds(name):
    from harness.testing import realistic_stream

    cls = default_registry("models").get(name)
    assert cls().device == "auto"  # a GPU when torch sees one
    model = cls(device="meta")
    model.fit(realistic_stream(n_events=3000)[:2000], seed=0)
    found = list(_tensors(model))
    assert found, f"{name} holds no tensors after fit"
    elsewhere = [f"{path} on {t.device}" for path, t in found if t.device.type != "meta"]
    assert not elsewhere, f"{name}: tensors off the model's device: {elsewhere[:5]}"


def test_auto_is_the_cpu_without_a_gpu_and_cuda_is_refused_in_one_line(capsys, tmp_path):
    from harness.api import resolve_device
    from harness.errors import UsageError

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    assert resolve_device("auto") == torch.device("cpu")
    with pytest.raises(UsageError, match="torch sees no GPU here"):
        resolve_device("cuda")
    assert main(["run", "--models", "popularity,jodie", "--device", "cuda",
                 "--results", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "harness: error: device 'cuda': torch sees no GPU" in err
    assert not list(tmp_path.rglob("*.json"))


def test_the_record_names_the_device_of_a_torch_run_only(tmp_path):
    assert main(["run", "--models", "gru4rec,popularity", "--epochs", "1", "--device", "cpu",
                 "--param", "gru4rec.hidden_size=8", "--results", str(tmp_path), "--quiet"]) == 0
    records = {r["model"]: r for r in load_records(tmp_path)}
    assert records["gru4rec"]["params"]["device"] == "cpu"
    assert records["gru4rec"]["environment"]["device"] == {"requested": "cpu", "used": "cpu",
                                                           "gpu": None}
    assert "device" not in records["popularity"]["environment"]
