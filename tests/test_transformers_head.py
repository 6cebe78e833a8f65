import json
import shutil

import pytest
import torch
from diffusers import DDPMScheduler, UNet2DModel
from PIL import Image

from diffusion_classifiers import (
    DiffusionClassifierConfig,
    DiffusionFeaturesForImageClassification,
    UNetFeatureClassifierPipeline,
    export_unet_feature_pipeline,
)
from diffusion_classifiers.data import load_image_classification_data
from diffusion_classifiers.models import LinearProbeHead, unet_config

CLASS_NAMES = ["zero", "one", "two"]


@pytest.fixture(scope="module")
def pipe():
    torch.manual_seed(0)
    head = LinearProbeHead(32, 3, block="down_blocks.1", timestep=50, class_names=CLASS_NAMES)
    torch.nn.init.normal_(head.linear.weight)
    head.feature_std.fill_(0.5)
    return UNetFeatureClassifierPipeline(unet=UNet2DModel(**unet_config("tiny", 16)), scheduler=DDPMScheduler(), head=head)


@pytest.fixture(scope="module")
def exported(pipe, tmp_path_factory):
    path = tmp_path_factory.mktemp("exported")
    export_unet_feature_pipeline(pipe, path)
    return path


@pytest.mark.numerics
def test_export_gives_identical_predictions(pipe, exported):
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    model = AutoModelForImageClassification.from_pretrained(exported)
    processor = AutoImageProcessor.from_pretrained(exported)
    assert isinstance(model, DiffusionFeaturesForImageClassification)
    assert model.config.id2label == dict(enumerate(CLASS_NAMES))
    images = torch.rand(6, 1, 16, 16, generator=torch.Generator().manual_seed(1)) * 2 - 1
    with torch.no_grad():
        logits = model(**processor(images)).logits
    # The same modules on the same batch in one process, so the same kernels whatever the CPU: bit-identical in practice
    # (measured 0). atol 1e-6 only tolerates last-bit differences of a few elementwise operations (2^-24 = 6e-8 each on
    # probabilities < 1); another reduction order (5.7e-5 worst case on these 32-term logits) would be a real change.
    torch.testing.assert_close(logits.softmax(-1), pipe(images).probs, atol=1e-6, rtol=0)


def test_output_has_loss_and_hidden_states(exported):
    model = DiffusionFeaturesForImageClassification.from_pretrained(exported)
    out = model(torch.zeros(2, 1, 16, 16), labels=torch.tensor([0, 2]), output_hidden_states=True)
    assert out.loss is not None and out.loss.ndim == 0
    assert out.hidden_states[0].shape == (2, 32)
    with pytest.raises(ValueError, match="labels in 0..2"):
        model(torch.zeros(2, 1, 16, 16), labels=torch.tensor([0, 3]))
    with pytest.raises(ValueError, match=r"pixel_values of shape \[N, 1, 16, 16\]"):
        model(torch.zeros(2, 3, 16, 16))


def test_trainer_fine_tunes_the_head_with_frozen_backbone(exported, tmp_path):
    from datasets import Dataset
    from transformers import Trainer, TrainingArguments

    digits = load_image_classification_data("digits", image_size=16, seed=0)["train"]
    keep = digits.labels < 3
    images, labels = digits.images[keep][:60], digits.labels[keep][:60]
    model = DiffusionFeaturesForImageClassification.from_pretrained(exported)
    # loaded frozen: only the head counts as trainable (Trainer's count), as when built
    assert not any(p.requires_grad for p in model.backbone.parameters())
    assert all(p.requires_grad for p in model.classifier.parameters())
    with torch.no_grad():  # a fresh head on standardised features, as a probe would start
        features = model.features(images)
        model.feature_mean.copy_(features.mean(0))
        model.feature_std.copy_(features.std(0))
        model.classifier.weight.zero_()
        model.classifier.bias.zero_()
    backbone_before = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    dataset = Dataset.from_dict({"pixel_values": images.numpy(), "labels": labels.numpy()}).with_format("torch")
    args = TrainingArguments(
        output_dir=str(tmp_path), per_device_train_batch_size=60, num_train_epochs=20, learning_rate=5e-2,
        report_to=[], save_strategy="no", use_cpu=True, seed=0, logging_strategy="no", disable_tqdm=True,
    )
    Trainer(model=model, args=args, train_dataset=dataset).train()
    model.eval()
    with torch.no_grad():
        accuracy = (model(images).logits.argmax(-1) == labels).float().mean()
    assert accuracy > 0.9
    for name, value in model.backbone.state_dict().items():
        assert torch.equal(value, backbone_before[name]), name


def test_config_rejects_unknown_backbone():
    with pytest.raises(ValueError, match="backbone_type"):
        DiffusionClassifierConfig(backbone_type="resnet")


def test_export_needs_a_head():
    bare = UNetFeatureClassifierPipeline(unet=UNet2DModel(**unet_config("tiny", 16)), scheduler=DDPMScheduler())
    with pytest.raises(ValueError, match="no fitted `head`"):
        export_unet_feature_pipeline(bare)


def test_unfrozen_backbone_receives_gradients(exported):
    """Unfrozen by the config, or, QA, the transformers way on a model loaded frozen (the config's flag overrode the
    parameters' `requires_grad`: the backbone got no gradient and stayed as it was, counted as trainable)."""
    config = DiffusionClassifierConfig.from_pretrained(exported, freeze_backbone=False)
    unfrozen = DiffusionFeaturesForImageClassification.from_pretrained(exported, config=config)
    frozen = DiffusionFeaturesForImageClassification.from_pretrained(exported)
    unfrozen_by_hand = DiffusionFeaturesForImageClassification.from_pretrained(exported)
    unfrozen_by_hand.backbone.requires_grad_(True)
    for model, trains in ((unfrozen, True), (frozen, False), (unfrozen_by_hand, True)):
        model(torch.zeros(2, 1, 16, 16), labels=torch.tensor([0, 1])).loss.backward()
        gradient = model.backbone.conv_in.weight.grad
        assert (gradient is not None and bool(gradient.abs().sum() > 0)) is trains
        assert model.classifier.weight.grad is not None


def _copy_with_config(source, target, **changes):
    import shutil

    shutil.copytree(source, target)
    config = json.loads((target / "config.json").read_text())
    (target / "config.json").write_text(json.dumps({**config, **changes}))
    return target


def test_mismatched_id2label_fails_before_loading(exported, tmp_path):
    from transformers import AutoModelForImageClassification

    bad = _copy_with_config(exported, tmp_path / "bad", id2label={"0": "zero", "1": "one"}, label2id={"zero": 0, "one": 1})
    with pytest.raises(ValueError, match=r"2 labels \['zero', 'one'\] but the saved classifier has 3 outputs"):
        AutoModelForImageClassification.from_pretrained(bad)


def test_unknown_model_type_is_named(exported, tmp_path):
    from diffusion_classifiers.evaluation import load_classifier

    bad = _copy_with_config(exported, tmp_path / "bad", model_type="not-a-model")
    with pytest.raises(ValueError, match="unknown model_type 'not-a-model'"):
        load_classifier(str(bad))


@pytest.mark.numerics
@pytest.mark.parametrize("views", [None, "dihedral"])
def test_a_hypercolumn_head_saves_loads_and_exports_with_the_same_predictions(tmp_path, views):
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    from diffusion_classifiers.features import hypercolumn
    from diffusion_classifiers.probing import fit_probe_grid

    torch.manual_seed(0)
    splits = load_image_classification_data("digits", image_size=16, seed=0)
    pipe = UNetFeatureClassifierPipeline(unet=UNet2DModel(**unet_config("tiny", 16)), scheduler=DDPMScheduler())
    blocks = ("down_blocks.1", "mid_block", "up_blocks.0")
    columns = {}
    for split in ("train", "val"):
        features = pipe.extract_features(splits[split].images[:300], list(blocks), [50], pool="2x2", views=views)
        columns[split] = {(blocks, 50): hypercolumn(features, blocks, 50)}
    fit = fit_probe_grid(
        columns["train"], splits["train"].labels[:300], columns["val"], splits["val"].labels[:300], pool="2x2",
        class_names=splits["train"].class_names, progress_bar={"disable": True}, views=views,
    )  # fmt: skip
    assert fit.head.config.block == list(blocks) and fit.head.config.in_features == 3 * 4 * 32
    assert fit.head.config.views == views
    pipe.register_modules(head=fit.head)
    pipe.save_pretrained(tmp_path / "pipeline")
    export_unet_feature_pipeline(pipe, tmp_path / "transformers")

    images = splits["test"].images[:8]
    reloaded = UNetFeatureClassifierPipeline.from_pretrained(tmp_path / "pipeline")
    model = AutoModelForImageClassification.from_pretrained(tmp_path / "transformers")
    processor = AutoImageProcessor.from_pretrained(tmp_path / "transformers")
    assert reloaded.head.config.block == list(blocks) and model.config.feature_block == list(blocks)
    assert reloaded.head.config.views == views and model.config.feature_views == views
    features = pipe.extract_features(images, list(blocks), [50], pool="2x2", views=views)
    expected = pipe.head(hypercolumn(features, blocks, 50))
    with torch.no_grad():
        logits = model(**processor(images)).logits
    # Same modules, same batch, one process: as in test_export_gives_identical_predictions (atol 1e-6 on probabilities).
    torch.testing.assert_close(reloaded(images).probs, expected.softmax(-1), atol=1e-6, rtol=0)
    torch.testing.assert_close(logits.softmax(-1), expected.softmax(-1), atol=1e-6, rtol=0)


def test_exported_config_carries_no_local_path(pipe, tmp_path):
    """A backbone loaded from a folder has that folder in its config's `_name_or_path`; the export, which is
    published, leaves it out, as the pipelines' own save does."""
    from transformers import AutoModelForImageClassification

    from diffusion_classifiers import RepresentationConditionedDiTPipeline, export_rc_dit_pipeline
    from diffusion_classifiers.models import RepresentationConditionedDiTModel, build_vit_encoder, rc_dit_config

    torch.manual_seed(0)
    head = LinearProbeHead(24, 3, block="encoder", timestep=0, pool=None, class_names=CLASS_NAMES)
    transformer = RepresentationConditionedDiTModel(**rc_dit_config("tiny", 16, 1, 24, hidden_size=16, num_layers=1))
    encoder = build_vit_encoder(16, 1, 24, num_layers=1, num_heads=2, patch_size=4)
    rc_dit = RepresentationConditionedDiTPipeline(encoder.eval(), transformer.eval(), DDPMScheduler(), head=head)
    for name, source, export in (
        ("unet", pipe, export_unet_feature_pipeline), ("encoder", rc_dit, export_rc_dit_pipeline)
    ):  # fmt: skip
        source.save_pretrained(tmp_path / name / "pipeline")
        loaded = type(source).from_pretrained(tmp_path / name / "pipeline")
        loaded_config = dict(loaded.unet.config) if name == "unet" else loaded.encoder.config.to_dict()
        assert str(tmp_path) in loaded_config["_name_or_path"]  # what the export must leave out
        export(loaded, tmp_path / name / "exported")
        config_text = (tmp_path / name / "exported" / "config.json").read_text()
        assert "_name_or_path" not in config_text and str(tmp_path) not in config_text, name
        assert json.loads(config_text)["backbone_type"] == name
        AutoModelForImageClassification.from_pretrained(tmp_path / name / "exported")


def test_a_new_label_set_is_put_on_with_ignore_mismatched_sizes(exported):
    """QA: `num_labels=2, ignore_mismatched_sizes=True` (transformers' way to put a new label set on a model) was
    refused, the check reading the overridden config as if it were the saved one."""
    from safetensors.torch import load_file
    from transformers import AutoModelForImageClassification

    saved = load_file(exported / "model.safetensors")
    model = AutoModelForImageClassification.from_pretrained(exported, num_labels=2, ignore_mismatched_sizes=True)
    assert model.config.id2label == {0: "LABEL_0", 1: "LABEL_1"} and model.classifier.weight.shape == (2, 32)
    # review: the new classifier alone was left as uninitialised memory (logits near 1e29): it starts at zero
    assert not model.classifier.weight.any() and not model.classifier.bias.any()
    for name in ("feature_mean", "feature_std"):  # the standardisation is kept, only the head is new
        assert torch.equal(getattr(model, name), saved[name]), name
    assert torch.equal(model.backbone.conv_in.weight, saved["backbone.conv_in.weight"])
    renamed = AutoModelForImageClassification.from_pretrained(
        exported, id2label={0: "even", 1: "odd"}, ignore_mismatched_sizes=True
    )
    assert renamed.config.id2label == {0: "even", 1: "odd"} and renamed.config.label2id == {"even": 0, "odd": 1}
    assert renamed(torch.zeros(1, 1, 16, 16)).logits.shape == (1, 2)


@pytest.fixture(scope="module")
def binary_export(tmp_path_factory):
    torch.manual_seed(0)
    head = LinearProbeHead(32, 2, block="down_blocks.1", timestep=50, class_names=["normal", "pneumonia"])
    unet = UNet2DModel(**unet_config("tiny", 16))
    pipe = UNetFeatureClassifierPipeline(unet=unet, scheduler=DDPMScheduler(), head=head)
    pipe.set_positive_class("pneumonia")
    path = tmp_path_factory.mktemp("binary")
    export_unet_feature_pipeline(pipe, path)
    return path


def test_a_positive_class_renamed_away_is_dropped_with_a_warning_not_saved_stale(binary_export, tmp_path):
    """QA: renaming a binary model's labels kept positive_class "pneumonia", which save_pretrained wrote and reloading
    refused; `AutoConfig.from_pretrained(folder, num_labels=3)` was refused."""
    from transformers import AutoConfig, AutoModelForImageClassification

    names = {"id2label": {0: "healthy", 1: "sick"}, "label2id": {"healthy": 0, "sick": 1}}
    with pytest.warns(UserWarning, match=r"positive_class 'pneumonia' is not one of the labels \['healthy', 'sick'\]"):
        model = AutoModelForImageClassification.from_pretrained(binary_export, **names)
    assert model.config.positive_class is None
    model.save_pretrained(tmp_path / "renamed")
    assert json.loads((tmp_path / "renamed" / "config.json").read_text()).get("positive_class") is None
    reloaded = AutoModelForImageClassification.from_pretrained(tmp_path / "renamed")
    assert reloaded.config.id2label == {0: "healthy", 1: "sick"}
    with pytest.warns(UserWarning, match="positive_class 'pneumonia'"):
        assert AutoConfig.from_pretrained(binary_export, num_labels=3).positive_class is None
    assert AutoConfig.from_pretrained(binary_export).positive_class == "pneumonia"
    assert AutoConfig.from_pretrained(binary_export, positive_class="sick", **names).positive_class == "sick"
    not_a_label = r"positive_class: expected one of the labels \['normal', 'pneumonia'\], got 'x'"
    with pytest.raises(ValueError, match=not_a_label):
        AutoConfig.from_pretrained(binary_export, positive_class="x")
    config = AutoConfig.from_pretrained(binary_export)
    config.id2label = {0: "a", 1: "b"}  # renamed after loading: not written stale either
    with pytest.warns(UserWarning, match="positive_class 'pneumonia'"):
        config.save_pretrained(tmp_path / "config")
    assert json.loads((tmp_path / "config" / "config.json").read_text()).get("positive_class") is None


def test_pickled_weights_are_refused_before_loading(exported, tmp_path):
    """QA: a folder whose model.safetensors was replaced by a pytorch_model.bin loaded it (unpickled)."""
    import shutil

    from safetensors.torch import load_file
    from transformers import AutoModelForImageClassification, pipeline

    pickled = tmp_path / "pickled"
    shutil.copytree(exported, pickled)
    torch.save(load_file(pickled / "model.safetensors"), pickled / "pytorch_model.bin")
    (pickled / "model.safetensors").unlink()
    refused = r"pytorch_model.bin: pickled weights are refused .* expected model.safetensors"
    with pytest.raises(ValueError, match=refused):
        AutoModelForImageClassification.from_pretrained(pickled)
    with pytest.raises(ValueError, match=refused):
        pipeline("image-classification", model=str(pickled))
    with pytest.raises(ValueError, match="use_safetensors: expected True, got False"):
        DiffusionFeaturesForImageClassification.from_pretrained(exported, use_safetensors=False)


def test_the_image_processor_refuses_arguments_it_would_ignore(exported):
    """QA: `size=`, `do_resize=False` and unknown keywords were silently ignored (the model's size came back)."""
    from transformers import AutoImageProcessor, pipeline

    processor = AutoImageProcessor.from_pretrained(exported)
    image = torch.rand(1, 16, 16)
    for kwargs in ({"size": {"height": 64, "width": 64}}, {"do_resize": False}, {"bogus": 1}):
        refused = rf"unsupported keyword arguments \['{next(iter(kwargs))}'\].* fixes size \(16\)"
        with pytest.raises(ValueError, match=refused):
            processor(image, **kwargs)
    inputs = processor(image, return_tensors="pt", input_data_format="channels_first")
    assert inputs["pixel_values"].shape == (1, 1, 16, 16)
    assert len(pipeline("image-classification", model=str(exported))(Image.new("L", (20, 20)), top_k=3)) == 3
    # QA: given to from_pretrained they were set on the processor (which read at 16 px still), and its saved folder
    # then no longer loaded
    for kwargs in ({"size": {"height": 64, "width": 64}}, {"image_size": 64}, {"do_resize": False}):
        with pytest.raises(ValueError, match=rf"keyword arguments \['{next(iter(kwargs))}'\] not taken; the saved"):
            AutoImageProcessor.from_pretrained(exported, **kwargs)


def test_the_pipeline_class_given_an_export_says_it_is_a_transformers_model(exported):
    """QA: `DiffusionClassifierPipeline.from_pretrained` on an export said only that model_index.json was missing."""
    from diffusion_classifiers import DiffusionClassifierPipeline

    with pytest.raises(FileNotFoundError, match=r"model_index.json not found; .* holds a transformers model, config.json: "
                                                r"load it with transformers' AutoModelForImageClassification"):  # fmt: skip
        DiffusionClassifierPipeline.from_pretrained(str(exported))


def test_the_export_of_a_saved_pipeline_carries_its_split_record(pipe, tmp_path, capsys):
    """QA: the export held no data_splits.json, so `evaluate` on it carved the data by the default seed, not the
    probe's: its "test" split held images the head was fitted on (76% accuracy for the pipeline's 44%)."""
    from diffusion_classifiers.cli import _note_unchecked
    from diffusion_classifiers.data.split_record import read_split_record, save_split_record

    pipe.save_pretrained(tmp_path / "pipeline")
    save_split_record(tmp_path / "pipeline", 0.1, 0.2, seed=5, train_fingerprints=["0123456789abcdef"])
    export_unet_feature_pipeline(UNetFeatureClassifierPipeline.from_pretrained(tmp_path / "pipeline"), tmp_path / "hf")
    record = read_split_record(tmp_path / "hf")
    assert record == read_split_record(tmp_path / "pipeline") and record["seed"] == 5
    export_unet_feature_pipeline(pipe, tmp_path / "built_in_python")  # no folder, no record to carry
    assert read_split_record(tmp_path / "built_in_python") is None
    _note_unchecked(str(tmp_path / "built_in_python"), "evaluate", ["test"], no_record=True)
    assert "has no data_splits.json" in capsys.readouterr().err


def test_a_new_label_set_of_the_saved_size_keeps_the_head_with_a_warning_and_reset_classifier_zeroes_it(binary_export):
    """QA: `id2label={0: "pneumonia", 1: "normal"}` (a new label set of the saved size) kept the trained head under
    the new names without a word, so fine-tuning started from it (first loss 0.013, not ln 2); the README said it
    started at zero. transformers keeps it (renaming is its rule): a warning says so, `reset_classifier` zeroes it."""
    import warnings

    from safetensors.torch import load_file
    from transformers import AutoModelForImageClassification

    saved = load_file(binary_export / "model.safetensors")
    with pytest.warns(UserWarning, match=r"trained as \['normal', 'pneumonia'\], are kept under these names"):
        model = AutoModelForImageClassification.from_pretrained(binary_export, id2label={0: "healthy", 1: "sick"})
    assert torch.equal(model.classifier.weight, saved["classifier.weight"])
    model.reset_classifier()
    assert not model.classifier.weight.any() and not model.classifier.bias.any()
    assert torch.equal(model.feature_mean, saved["feature_mean"])  # the standardisation stays
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the saved names again: nothing to say
        AutoModelForImageClassification.from_pretrained(binary_export, id2label={0: "normal", 1: "pneumonia"})


def test_a_loaded_export_saved_elsewhere_keeps_how_its_data_was_carved_but_no_fingerprint(pipe, tmp_path):
    """QA: `Trainer.save_model` of a fine-tuned export (any `save_pretrained` of a loaded one) dropped data_splits.json:
    `evaluate` then carved by the default seed. The carving is kept; the fingerprints are not (the model may have
    trained on other images since, and an upload of the folder must not carry them: review)."""
    from unittest import mock

    import transformers.utils.hub as transformers_hub
    from transformers import AutoModelForImageClassification

    from diffusion_classifiers.data.split_record import read_split_record, save_split_record

    pipe.save_pretrained(tmp_path / "pipeline")
    save_split_record(tmp_path / "pipeline", 0.1, 0.2, seed=5, train_fingerprints=["0123456789abcdef"])
    export_unet_feature_pipeline(UNetFeatureClassifierPipeline.from_pretrained(tmp_path / "pipeline"), tmp_path / "hf")
    exported = read_split_record(tmp_path / "hf")
    assert exported["train_fingerprints"] == "0123456789abcdef"  # the export is the pipeline itself
    model = AutoModelForImageClassification.from_pretrained(tmp_path / "hf", trust_remote_code=True)
    model.save_pretrained(tmp_path / "fine_tuned")
    record = read_split_record(tmp_path / "fine_tuned")
    assert record["seed"] == 5 and "train_fingerprints" not in record
    uploaded = {}  # transformers' push_to_hub uploads what save_pretrained wrote (review: the fingerprints too)

    def upload(self, working_dir, repo_id, **kwargs):
        uploaded.update(read_split_record(working_dir))

    api = mock.MagicMock()
    api.create_repo.return_value.repo_id = "me/model"
    with mock.patch.object(transformers_hub, "hf_api", return_value=api), \
            mock.patch.object(transformers_hub, "create_and_tag_model_card"), \
            mock.patch.object(type(model), "_upload_modified_files", upload):  # fmt: skip
        model.push_to_hub("me/model")
    assert uploaded["seed"] == 5 and "train_fingerprints" not in uploaded
    model.save_pretrained(tmp_path / "hf")  # saved over its own folder: its record stays as it was
    assert read_split_record(tmp_path / "hf") == exported
    shutil.copytree(tmp_path / "hf", tmp_path / "repo" / "model")  # loaded from a subfolder: that folder's record
    save_split_record(tmp_path / "repo", 0.1, 0.2, seed=9)
    nested = AutoModelForImageClassification.from_pretrained(
        tmp_path / "repo", subfolder="model", trust_remote_code=True
    )
    nested.save_pretrained(tmp_path / "from_subfolder")
    assert read_split_record(tmp_path / "from_subfolder")["seed"] == 5


def test_the_export_writes_the_pipelines_split_record_as_its_head_left_it(pipe, tmp_path):
    """Review: the export copied the record on disk, fingerprints included, after `register_modules(head=...)` had
    dropped them from the pipeline's (a head fitted on images unknown)."""
    from diffusion_classifiers.data.split_record import read_split_record, save_split_record

    pipe.save_pretrained(tmp_path / "pipeline")
    save_split_record(tmp_path / "pipeline", 0.1, 0.2, seed=5, train_fingerprints=["0123456789abcdef"])
    loaded = UNetFeatureClassifierPipeline.from_pretrained(tmp_path / "pipeline")
    loaded.register_modules(head=loaded.head)
    export_unet_feature_pipeline(loaded, tmp_path / "hf")
    record = read_split_record(tmp_path / "hf")
    assert record["seed"] == 5 and "train_fingerprints" not in record
