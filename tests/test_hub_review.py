"""Review of publishing: what a model upload sends, the repo's visibility, and what a card claims (offline)."""

import json
import shutil
from types import SimpleNamespace

import pytest
import yaml
from huggingface_hub import HfApi, constants
from huggingface_hub.errors import HfHubHTTPError

from diffusion_classifiers import hub

from .test_hub import tiny_unet_feature_pipeline

COMMON = dict(model_name="m", dataset_name="d", dataset_license="l", metrics={"accuracy": 0.9},
              training_command="t", evaluation_command="e")  # fmt: skip
# What a training or evaluation run may leave beside a model: none of it is what the model loads from.
STRAY_FILES = [
    "eval/predictions.csv", "features/mid_block_10.npy", "logs/unet/events.out.tfevents.1", "loss_curve.png",
    "samples/step_100.png", "scans/CT000001.dcm", "scans/IM0002",
]  # fmt: skip


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory):
    folder = tmp_path_factory.mktemp("saved") / "pipe"
    tiny_unet_feature_pipeline().save_pretrained(folder)
    return folder


def files_of(folder) -> set:
    return {path.relative_to(folder).as_posix() for path in folder.rglob("*") if path.is_file()}


def test_a_model_upload_leaves_out_the_data_predictions_and_logs_beside_it(saved_model, monkeypatch, tmp_path):
    """Everything in the folder but pickles and checkpoints was uploaded: a CT model's predictions (patients' file
    paths), its scans (a DICOM without a suffix too), feature caches, TensorBoard logs and samples."""
    folder = tmp_path / "model"
    shutil.copytree(saved_model, folder)
    for name in STRAY_FILES:
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(b"patient data")
    expected = files_of(saved_model) | {"README.md"}
    card = hub.render_model_card("unet_features", **COMMON)
    with pytest.warns(UserWarning, match=r"not uploading 7 file\(s\) the model does not load from: eval/predictions"):
        hub.write_dry_run(folder, tmp_path / "dry", card=card)
    assert files_of(tmp_path / "dry") == expected

    sent = []
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(HfApi, "create_repo", lambda self, *args, **kwargs: None)
    monkeypatch.setattr(HfApi, "create_commit", lambda self, repo_id, operations, **kwargs: sent.extend(operations))
    with pytest.warns(UserWarning, match="scans/CT000001.dcm, scans/IM0002"):
        hub.push_to_hub(folder, "org/tiny", card=card, token="hf_x")
    assert {operation.path_in_repo for operation in sent} == expected
    sent.clear()
    hub.push_to_hub(folder / "samples", "org/data", repo_type="dataset", token="hf_x")  # its files are its data
    assert [operation.path_in_repo for operation in sent] == ["step_100.png"]


def test_a_model_upload_leaves_out_notes_beside_the_model_linked_or_not(saved_model, tmp_path):
    """QA (a security review): any *.json or *.md of the folder went up (a case list with record numbers, predict's
    `<output>.json` with local paths, a link to such a file outside the folder). A model file linked elsewhere (a Hub
    cache snapshot's blobs) still goes up, and a sharded weights' index of a variant."""
    folder = tmp_path / "model"
    shutil.copytree(saved_model, folder)
    (folder / "notes").mkdir()
    (folder / "notes" / "cases.json").write_text('{"patient": "MRN1000"}')
    (folder / "predictions.csv.json").write_text('{"input": "/data/patients"}')
    (folder / "NOTES.md").write_text("MRN1000")
    (tmp_path / "outside.json").write_text('{"patient": "MRN1001"}')
    (folder / "config_extra.json").symlink_to(tmp_path / "outside.json")
    (tmp_path / "blobs").mkdir()
    (folder / "scheduler" / "scheduler_config.json").rename(tmp_path / "blobs" / "scheduler")
    (folder / "scheduler" / "scheduler_config.json").symlink_to(tmp_path / "blobs" / "scheduler")
    with pytest.warns(UserWarning) as warned:
        hub.write_dry_run(folder, tmp_path / "dry", card=hub.render_model_card("unet_features", **COMMON))
    assert files_of(tmp_path / "dry") == files_of(saved_model) | {"README.md"}
    assert "NOTES.md, config_extra.json, notes/cases.json, predictions.csv.json" in str(warned[-1].message)
    assert hub._model_loads_from("unet/diffusion_pytorch_model.safetensors.index.fp16.json")


def test_a_warning_names_at_most_ten_files_left_out(saved_model, tmp_path):
    folder = tmp_path / "model"
    shutil.copytree(saved_model, folder)
    (folder / "scans").mkdir()
    for i in range(25):
        (folder / "scans" / f"{i:03d}.dcm").write_bytes(b"DICM")
    with pytest.warns(UserWarning) as warned:
        hub.write_dry_run(folder, tmp_path / "dry")
    (message,) = [str(warning.message) for warning in warned if "does not load from" in str(warning.message)]
    assert "scans/009.dcm and 15 more (" in message and "scans/010.dcm" not in message


def create_repo_conflict(self, repo_id, **kwargs):
    """The Hub's answer to creating a repo that exists: 409."""
    response = SimpleNamespace(status_code=409, headers={}, request=None)  # what HfHubHTTPError reads of it
    raise HfHubHTTPError("409 Conflict: You already created this model repo", response=response)


def test_a_private_push_refuses_an_existing_public_repo_and_a_plain_one_never_forces_public(
    saved_model, monkeypatch
):
    """The Hub ignores `private` for a repo that exists: `--private` uploaded into an existing public repo. And
    `private=False` was sent as "public", overriding an organisation that makes new repos private."""
    calls = []
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(HfApi, "create_commit", lambda self, repo_id, operations, **kwargs: calls.append("commit"))
    monkeypatch.setattr(HfApi, "create_repo", lambda self, repo_id, **kwargs: calls.append(kwargs))
    hub.push_to_hub(saved_model, "org/tiny", token="hf_x")
    assert calls == [{"private": None, "repo_type": "model"}, "commit"]

    calls.clear()
    monkeypatch.setattr(HfApi, "create_repo", create_repo_conflict)
    monkeypatch.setattr(HfApi, "repo_info", lambda self, repo_id, **kwargs: SimpleNamespace(private=False))
    with pytest.raises(hub.HubUploadError, match="org/tiny exists and is public, and a private upload was asked"):
        hub.push_to_hub(saved_model, "org/tiny", private=True, token="hf_x")
    assert calls == []
    hub.push_to_hub(saved_model, "org/tiny", token="hf_x")  # public asked of nothing: the existing repo is used
    monkeypatch.setattr(HfApi, "repo_info", lambda self, repo_id, **kwargs: SimpleNamespace(private=True))
    hub.push_to_hub(saved_model, "org/tiny", private=True, token="hf_x")
    assert calls == ["commit", "commit"]


def limitations(card) -> str:
    return " ".join(str(card).split("## Limitations")[1].split("## Training data")[0].split())


def test_unet_feature_results_on_the_validation_split_say_they_are_optimistic():
    """The probe picks the (block, timestep) pair on val: a card of `evaluate --split val` presented the figures of
    that choice as held-out ones."""
    for split in ("val", "validation"):
        assert "was chosen on the `%s` split, the one the results below" % split in limitations(
            hub.render_model_card("unet_features", dataset_split=split, **COMMON)
        )
    assert "optimistic" not in limitations(hub.render_model_card("unet_features", **COMMON))
    assert "optimistic" not in limitations(hub.render_model_card("score_sde", dataset_split="val", **COMMON))


def test_seed_sensitivity_of_an_external_set_names_the_set_not_an_all_split():
    sensitivity = {"num_stderr": 2.0, "decisions_within": 3, "fraction_within": 0.3, "accuracy_beyond": 0.875}
    card = hub.render_model_card("score_sde", dataset_split="all", eval_dataset_name="flowcam", num_images=10,
                                 seed_sensitivity=sensitivity, class_names=["n", "m"], **COMMON)  # fmt: skip
    assert "On flowcam, 3 of 10 decisions (30.0%) were within" in limitations(card)
    assert "`all` split" not in str(card)


def test_card_metadata_round_trips_through_huggingface_hubs_parser(tmp_path):
    from huggingface_hub import ModelCard, metadata_load

    metrics = {"accuracy": 0.8125, "macro_f1": 0.75, "sensitivity": 0.5, "ece": 0.0625}
    card = hub.render_model_card("unet_features", **{**COMMON, "metrics": metrics, "model_name": 'ct: "bleed" #1',
                                                     "dataset_name": "CQ500: head CT 'x'", "dataset_split": "test"})
    (tmp_path / "README.md").write_text(str(card))
    assert metadata_load(tmp_path / "README.md") == yaml.safe_load(str(card).split("---\n")[1])
    loaded = ModelCard.load(tmp_path / "README.md")
    assert loaded.data.eval_results == card.data.eval_results and loaded.data.model_name == 'ct: "bleed" #1'
    assert {result.metric_type: result.metric_value for result in loaded.data.eval_results} == {
        "accuracy": 0.8125, "f1": 0.75, "recall": 0.5, "ece": 0.0625
    }  # fmt: skip
    assert {(r.dataset_name, r.dataset_split, r.task_type) for r in loaded.data.eval_results} == {
        ("CQ500: head CT 'x'", "test", "image-classification")
    }
    assert json.dumps(loaded.data.to_dict())  # plain types only
    # reviewed: the macro F1 was an `f1` without arguments, which the Hub compares with a binary one
    assert {r.metric_type: r.metric_args for r in loaded.data.eval_results}["f1"] == {"average": "macro"}


def test_a_class_name_with_a_pipe_keeps_its_per_class_row_in_five_cells():
    row = {"precision": 0.5, "recall": 0.5, "f1": 0.5, "support": 2}
    card = str(hub.render_model_card("unet_features", per_class={"bleed|yes": row, "no": row}, **COMMON))
    (line,) = [line for line in card.splitlines() if line.startswith("| bleed")]
    assert line == r"| bleed\|yes | 50.00% | 50.00% | 50.00% | 2 |"


def test_a_dry_run_stopped_halfway_leaves_no_folder_and_the_rerun_writes_it(saved_model, tmp_path, monkeypatch):
    """QA: a dry run killed while copying left 7 of its files in --output_dir, which looked like the upload, and the
    rerun refused the folder as not empty; the files now go into a hidden folder renamed once complete."""
    copies, copy = [], shutil.copyfile

    def stopped_after_two(source, target):
        if len(copies) == 2:
            raise KeyboardInterrupt
        copies.append(target)
        return copy(source, target)

    monkeypatch.setattr(hub.shutil, "copyfile", stopped_after_two)
    with pytest.raises(KeyboardInterrupt):
        hub.write_dry_run(saved_model, tmp_path / "dry")
    assert list(tmp_path.iterdir()) == []  # neither the folder nor the hidden one
    monkeypatch.setattr(hub.shutil, "copyfile", copy)
    hub.write_dry_run(saved_model, tmp_path / "dry")
    assert files_of(tmp_path / "dry") == files_of(saved_model)


def test_a_dry_run_into_the_working_folder_works_and_a_killed_ones_folder_goes(saved_model, tmp_path, monkeypatch):
    """A second read: `--output_dir .` failed on the hidden folder's name; a killed dry run's hidden folder stayed."""
    import os
    import subprocess
    import sys
    import time

    from diffusion_classifiers.atomic_files import STALE_TEMPORARY_SECONDS

    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    (tmp_path / "here").mkdir()
    killed = tmp_path / f".here.partial-{process.pid}"  # a killed dry run's
    killed.mkdir()
    old = time.time() - 2 * STALE_TEMPORARY_SECONDS
    os.utime(killed, (old, old))
    monkeypatch.chdir(tmp_path / "here")
    hub.write_dry_run(saved_model, ".")
    assert files_of(tmp_path / "here") == files_of(saved_model) and not killed.exists()
