import pytest

from core import models
from core.errors import ModelError


def test_tiny_model_is_built_locally_and_reloaded():
    a = models.load_model("tiny", "cpu")
    b = models.load_model("tiny", "cpu")
    assert a.info["parameters"] == b.info["parameters"] < 1_000_000
    sd_a, sd_b = a.model.state_dict(), b.model.state_dict()
    assert all((sd_a[k] == sd_b[k]).all() for k in sd_a)


def test_local_directory_loads(tmp_path):
    lm = models.load_model("tiny", "cpu")
    lm.model.save_pretrained(tmp_path / "m")
    lm.tokenizer.save_pretrained(tmp_path / "m")
    again = models.load_model(str(tmp_path / "m"), "cpu")
    assert again.source.startswith("local directory")


def test_paths_outside_allowed_folders_are_refused(tmp_path, monkeypatch):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text("{}")
    monkeypatch.setenv("FORGETTING_LAB_MODEL_DIRS", str(tmp_path / "allowed"))
    with pytest.raises(ModelError, match="outside the allowed model folders"):
        models.describe_source(str(tmp_path / "m"))


def test_not_a_model_directory(tmp_path):
    with pytest.raises(ModelError, match="not a model directory"):
        models.describe_source(str(tmp_path))


def test_uncached_hub_id_never_downloads(monkeypatch):
    import huggingface_hub

    def boom(*a, **k):
        raise AssertionError("a download was attempted")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", boom)
    with pytest.raises(ModelError, match="not available offline"):
        models.load_model("someorg/surely-not-cached-model", "cpu")


def test_pickle_weights_are_not_loaded(tmp_path):
    """A directory with only a pickle checkpoint is refused (safetensors only)."""
    import torch

    lm = models.load_model("tiny", "cpu")
    d = tmp_path / "pkl"
    lm.model.save_pretrained(d, safe_serialization=False)
    lm.tokenizer.save_pretrained(d)
    if (d / "model.safetensors").exists():
        (d / "model.safetensors").unlink()
    torch.save(lm.model.state_dict(), d / "pytorch_model.bin")
    with pytest.raises(ModelError):
        models.load_model(str(d), "cpu")


@pytest.mark.slow
def test_embedded_model_loads_and_generates():
    from core.evaluate import generate

    lm = models.load_model(models.EMBEDDED, "cpu")
    assert lm.info["architecture"] == "LlamaForCausalLM"
    assert 134_000_000 < lm.info["parameters"] < 135_000_000
    assert models.target_modules(lm.model, "all-linear") == [
        "q_proj",
        "k_proj",
        "v_proj",
        "o_proj",
        "gate_proj",
        "up_proj",
        "down_proj",
    ]
    g = generate(lm.model, lm.tokenizer, ["The capital of France is"], max_new_tokens=8)[0]
    assert "Paris" in g.output and g.ok
