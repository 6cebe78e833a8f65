"""A mammography group's review of the Score-SDE classifier: a resume must keep the trainers' own objective flags
(label dropout, class-balanced sampling, diffusion steps; the U-Net's and RC-DiT's too), predict and evaluate check
the call's values before writing anything, and priors may be given by class name."""

import json

import pytest
import torch
from diffusers import DDPMScheduler
from torch.utils.data import TensorDataset

from diffusion_classifiers import ScoreSDEClassifierPipeline
from diffusion_classifiers.evaluation import pipeline_call_settings
from diffusion_classifiers.prediction import list_inputs, predict_files
from diffusion_classifiers.training import TrainingArguments, check_run_can_start, train, train_score_sde_unet
from diffusion_classifiers.training.checkpoints import RUN_RECORD_NAME
from diffusion_classifiers.training.denoising import DenoisingLoss
from diffusion_classifiers.training.rc_dit import rc_dit_objective
from diffusion_classifiers.training.score_sde import score_sde_objective
from diffusion_classifiers.training.unet import train_ddpm_unet

from .test_predict import write_images
from .test_readme import small_unet

CLASSES = ["cancer", "normal"]


def tiny_args(output_dir, **overrides):
    settings = dict(train_batch_size=4, max_train_steps=2, learning_rate=1e-3, lr_warmup_steps=1)
    settings.update(checkpointing_steps=2)
    return TrainingArguments(output_dir=str(output_dir), num_sample_images=0, **{**settings, **overrides})


def tiny_labeled():
    images = torch.rand(12, 1, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1
    return images, torch.tensor([0, 1, 1, 1] * 3)


def score_sde_run(output_dir, **kwargs):
    images, labels = tiny_labeled()
    settings = dict(label_dropout=0.1, class_balanced=True, num_train_timesteps=100)
    return train_score_sde_unet(tiny_args(output_dir, **kwargs.pop("args", {})), images, labels, num_classes=2,
                                preset="tiny", **{**settings, **kwargs})  # fmt: skip


# ---------------------------------------------------------------------------------------------------- resuming


def test_a_score_sde_resume_with_another_label_dropout_or_sampling_is_refused_naming_the_flags(tmp_path):
    score_sde_run(tmp_path)
    record = json.loads((tmp_path / "checkpoint-2" / RUN_RECORD_NAME).read_text())
    assert record["objective"] == {"label_dropout": 0.1, "class_balanced": True, "num_train_timesteps": 100}
    resume = dict(max_train_steps=3, resume_from_checkpoint="latest")
    changed = r"--label_dropout 0.1 -> 0.5; --class_balanced True -> False \(checkpoint -> now\)"
    # before the data is read, as the script checks it
    with pytest.raises(ValueError, match=rf"differs from the one that wrote it in {changed}"):
        check_run_can_start(tiny_args(tmp_path, **resume), score_sde_objective(0.5, False, 100))
    with pytest.raises(ValueError, match=rf"differs from the one that wrote it in {changed}"):
        score_sde_run(tmp_path, label_dropout=0.5, class_balanced=False, args=resume)
    with pytest.raises(ValueError, match=r"in --num_train_timesteps 100 -> 50 \(checkpoint -> now\)"):
        score_sde_run(tmp_path, num_train_timesteps=50, args=resume)
    assert sorted(p.name for p in tmp_path.glob("checkpoint-*")) == ["checkpoint-2"]  # nothing trained
    _, _, summary = score_sde_run(tmp_path, args=resume)  # the same flags resume
    assert summary.resumed_from_step == 2 and summary.global_step == 3


def test_a_checkpoint_written_before_the_objective_was_recorded_still_resumes(tmp_path):
    score_sde_run(tmp_path)
    path = tmp_path / "checkpoint-2" / RUN_RECORD_NAME
    record = json.loads(path.read_text())
    path.write_text(json.dumps({key: value for key, value in record.items() if key != "objective"}))
    resume = dict(max_train_steps=3, resume_from_checkpoint="latest")
    check_run_can_start(tiny_args(tmp_path, **resume), score_sde_objective(0.5, True, 100))  # nothing to compare
    _, _, summary = score_sde_run(tmp_path, label_dropout=0.5, args=resume)
    assert summary.resumed_from_step == 2 and summary.global_step == 3


def test_the_unet_and_rc_dit_objectives_are_kept_by_a_resume(tmp_path):
    images, _ = tiny_labeled()
    train_ddpm_unet(tiny_args(tmp_path / "unet"), images, preset="tiny", num_train_timesteps=100)
    with pytest.raises(ValueError, match=r"in --num_train_timesteps 100 -> 1000 \(checkpoint -> now\)"):
        resume = tiny_args(tmp_path / "unet", max_train_steps=3, resume_from_checkpoint="latest")
        train_ddpm_unet(resume, images, "tiny")
    # the RC-DiT trainer's record, through the loop (what `train_rc_dit` passes)
    objective = rc_dit_objective(100, loss_weighting="epsilon", masked_target="normalized_patches")
    loss = DenoisingLoss(DDPMScheduler(num_train_timesteps=100))
    train(tiny_args(tmp_path / "dit"), small_unet(8), TensorDataset(images), loss, objective=objective)
    other = rc_dit_objective(100, freeze_encoder=True, masked_target="pixels")
    changed = r"--freeze_encoder False -> True; --masked_target normalized_patches -> pixels"
    with pytest.raises(ValueError, match=rf"differs from the one that wrote it in {changed} \(checkpoint -> now\)"):
        check_run_can_start(tiny_args(tmp_path / "dit", max_train_steps=3, resume_from_checkpoint="latest"), other)


# ---------------------------------------------------------------------------------------------------- priors


@pytest.fixture(scope="module")
def pipe():
    pipe = ScoreSDEClassifierPipeline(small_unet(8, num_class_embeds=2), DDPMScheduler(), class_names=CLASSES)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_priors_by_class_name_equal_the_list_in_class_order_and_are_recorded_as_it(pipe):
    images = torch.rand(3, 1, 8, 8, generator=torch.Generator().manual_seed(1)) * 2 - 1
    by_name = pipe(images, priors={"normal": 0.99, "cancer": 0.01}, num_timesteps=4).probs
    in_order = pipe(images, priors=[0.01, 0.99], num_timesteps=4).probs
    assert torch.equal(torch.as_tensor(by_name), torch.as_tensor(in_order))
    recorded = pipeline_call_settings(pipe, {"priors": {"normal": 0.99, "cancer": 0.01}})
    assert recorded == pipeline_call_settings(pipe, {"priors": (0.01, 0.99)})
    assert recorded["priors"] == [0.01, 0.99]


@pytest.mark.parametrize(
    "priors, message",
    [
        ({"cancer": 0.01, "benign": 0.99}, r"priors: expected a prior for each class name \['cancer', 'normal'\], got "
         r"\['benign', 'cancer'\] \(unknown: \['benign'\], missing: \['normal'\]\)"),
        ({"cancer": 1.0}, r"missing: \['normal'\]"),
        ({"cancer": "low", "normal": 0.99}, r"priors: expected 2 numbers \(one per class \['cancer', 'normal'\], in"),
        ("0.5,0.5", r"priors: expected 2 numbers .* or a mapping \{class name: prior\}, got '0.5,0.5'"),
        ([0.5, 0.6], r"expected priors summing to 1, got sum 1.1"),
    ],
)
def test_bad_priors_are_one_line_errors_naming_what_was_expected(pipe, priors, message):
    with pytest.raises(ValueError, match=message) as error:
        pipeline_call_settings(pipe, {"priors": priors})
    assert "\n" not in str(error.value)


# ---------------------------------------------------------------------------------------------------- predict


def inputs_of(tmp_path):
    folder = tmp_path / "images"
    write_images(folder, ["1.png", "2.png"])
    return list_inputs(folder)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"num_timesteps": 4, "method": "exact"}, r"expected method in \('elbo', 'likelihood'\), got 'exact'"),
        ({"priors": {"cancer": 0.5}}, r"missing: \['normal'\]"),
        ({"num_probes": 2}, r"num_probes=2: argument\(s\) of method='likelihood'"),
        ({"seed_by": "position"}, r"seed_by not taken"),
    ],
)
def test_predict_refuses_bad_call_values_before_writing_anything(pipe, tmp_path, kwargs, message):
    inputs, output = inputs_of(tmp_path), tmp_path / "out" / "p.csv"
    with pytest.raises(ValueError, match=message):
        predict_files(pipe, inputs, output, pipeline_kwargs=kwargs, progress_bar=False)
    assert not (tmp_path / "out").exists()  # no sidecar, no parts
    summary = predict_files(pipe, inputs, output, pipeline_kwargs={"num_timesteps": 4}, progress_bar=False)
    assert summary.rows == 2


def test_a_record_of_a_run_that_predicted_nothing_does_not_block_a_corrected_rerun(pipe, tmp_path, monkeypatch):
    inputs, output = inputs_of(tmp_path), tmp_path / "p.csv"

    def killed(*args, **kwargs):  # the first batch fails, after the sidecar is written
        raise RuntimeError("killed")

    with monkeypatch.context() as patch:
        patch.setattr(ScoreSDEClassifierPipeline, "posterior", killed)
        with pytest.raises(RuntimeError, match="killed"):
            predict_files(pipe, inputs, output, pipeline_kwargs={"num_timesteps": 3}, progress_bar=False)
    assert (tmp_path / "p.csv.json").is_file() and not output.exists()
    summary = predict_files(pipe, inputs, output, pipeline_kwargs={"num_timesteps": 4}, progress_bar=False)
    assert summary.rows == 2
    assert json.loads((tmp_path / "p.csv.json").read_text())["run"]["pipeline_call"]["num_timesteps"] == 4
    # rows written: another setting is still refused, and priors given by name match the same list
    predict_files(pipe, inputs, output, pipeline_kwargs={"num_timesteps": 4, "priors": None}, progress_bar=False)
    with pytest.raises(ValueError, match=r"pipeline_call.num_timesteps: 4 then, 5 now"):
        predict_files(pipe, inputs, output, pipeline_kwargs={"num_timesteps": 5}, progress_bar=False)


def test_a_rerun_giving_priors_in_the_other_form_resumes(pipe, tmp_path):
    inputs, output = inputs_of(tmp_path), tmp_path / "p.csv"
    predict_files(pipe, inputs[:1], output, pipeline_kwargs={"num_timesteps": 4, "priors": [0.01, 0.99]},
                  progress_bar=False)  # fmt: skip
    by_name = {"num_timesteps": 4, "priors": {"normal": 0.99, "cancer": 0.01}}
    summary = predict_files(pipe, inputs, output, pipeline_kwargs=by_name, progress_bar=False)
    assert (summary.rows, summary.skipped) == (2, 1)
