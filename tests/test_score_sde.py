import inspect
import json
import math
import runpy
import warnings

import numpy as np
import pytest
import torch
from diffusers import DDPMScheduler, UNet2DModel
from PIL import Image

from diffusion_classifiers import DiffusionClassifierPipeline, ScoreSDEClassifierPipeline
from diffusion_classifiers.pipelines.pipeline_score_sde import ScoreSDEClassifierOutput
from diffusion_classifiers.data import load_image_classification_data, preprocess_images
from diffusion_classifiers.evaluation import pipeline_call_settings
from diffusion_classifiers.likelihood import content_seeds, denoising_error_scores, probability_flow_log_likelihood
from diffusion_classifiers.models import unet_config
from diffusion_classifiers.training import TrainingArguments, train_score_sde_unet

from .conftest import REPO_ROOT, run_loading_script

TRAIN_SCRIPT = runpy.run_path(str(REPO_ROOT / "examples" / "score_sde_train.py"), run_name="train_score_sde")
FAST_ODE = dict(method="likelihood", solver="rk4", num_steps=8)  # the default log-SNR grid, 4x fewer steps


def write_bright_and_dark_images(root, per_class=40):
    """An image folder `root/{bright,dark}/*.png` of 8x8 grayscale noise around levels 200 and 55."""
    rng = np.random.default_rng(0)
    for name, level in (("bright", 200), ("dark", 55)):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            pixels = np.clip(level + rng.normal(0, 25, (8, 8)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels, mode="L").save(root / name / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """The training script run on bright vs dark images (label dropout 0.1: a null class), loaded back."""
    root = tmp_path_factory.mktemp("score_sde")
    data = write_bright_and_dark_images(root / "data")
    TRAIN_SCRIPT["main"]([
        "--dataset", str(data), "--image_size", "8", "--unet_preset", "tiny", "--output_dir", str(root / "model"),
        "--max_train_steps", "200", "--train_batch_size", "32", "--learning_rate", "1e-2", "--lr_warmup_steps", "5",
        "--checkpointing_steps", "1000", "--num_sample_images", "0", "--positive_class", "dark",
    ])  # fmt: skip
    test = load_image_classification_data(str(data), image_size=8)["test"]
    return DiffusionClassifierPipeline.from_pretrained(str(root / "model")), test, root


def random_pipeline(num_class_embeds=3, class_names=None):
    torch.manual_seed(0)
    unet = UNet2DModel(**unet_config("tiny", 8, num_class_embeds=num_class_embeds))
    return ScoreSDEClassifierPipeline(unet, DDPMScheduler(), class_names=class_names)


# -------------------------------------------------------------------------------------------- training, loading


def test_training_script_saves_class_names_with_the_weights(trained):
    pipe, _, root = trained
    assert isinstance(pipe, ScoreSDEClassifierPipeline)
    assert json.loads((root / "model" / "model_index.json").read_text())["class_names"] == ["bright", "dark"]
    assert pipe.class_names == ["bright", "dark"] and pipe.unet.config.num_class_embeds == 3  # + the null class
    assert pipe.positive_class == "dark"  # --positive_class: the log-likelihood ratio's numerator, saved


def test_training_script_refuses_labels_outside_the_classes_before_writing(tmp_path):
    path = tmp_path / "bad.npz"
    np.savez(path, train_images=np.zeros((4, 8, 8), np.uint8), train_labels=np.array([0, 1, -1, 1]))
    with pytest.raises(ValueError, match=r"label -1 is outside 0\.\.K-1 for K=2"):
        TRAIN_SCRIPT["main"](["--dataset", str(path), "--output_dir", str(tmp_path / "out"), "--max_train_steps", "2"])
    assert not (tmp_path / "out").exists()
    data = write_bright_and_dark_images(tmp_path / "data")
    with pytest.raises(ValueError, match=r"positive_class: expected one of .*'bright', 'dark'.*, got 'grey'"):
        TRAIN_SCRIPT["main"](["--dataset", str(data), "--output_dir", str(tmp_path / "out"), "--max_train_steps", "2",
                              "--positive_class", "grey"])  # fmt: skip
    assert not (tmp_path / "out").exists()


def test_training_script_notes_a_defaulted_positive_class_and_titles_its_samples(tmp_path, capsys):
    """QA: a binary model trained without --positive_class took class 1 ('normal' of cancer/normal) without a word,
    and its sample grid did not say which column is which class."""
    data = write_bright_and_dark_images(tmp_path / "data", per_class=10)
    TRAIN_SCRIPT["main"](["--dataset", str(data), "--image_size", "8", "--unet_preset", "tiny", "--output_dir",
                          str(tmp_path / "out"), "--max_train_steps", "1", "--lr_warmup_steps", "0",
                          "--num_sample_images", "2", "--sample_inference_steps", "1"])  # fmt: skip
    noted = "the positive class (of sensitivity, the ROC, the log-likelihood ratio) is class 1, 'dark', of ['bright', "
    noted += "'dark'] (the data's class order, alphabetical for class folders); pass --positive_class bright"
    assert noted in capsys.readouterr().err
    grid = np.asarray(Image.open(tmp_path / "out" / "samples" / "step_1.png").convert("L"))
    assert grid.shape[0] > 64 and grid.shape[1] == 2 * 64  # a band of titles above one row of two 64 px tiles
    band = grid[: grid.shape[0] - 64]
    assert (band[:, :64] < 128).any() and (band[:, 64:] < 128).any()  # a title over each column


def test_training_refuses_the_null_class_id_as_a_label(tmp_path):
    """With label dropout, id K is the null class: a training label K is outside 0..K-1, refused before training."""
    images, labels = torch.zeros(4, 1, 8, 8), torch.tensor([0, 1, 2, 1])
    args = TrainingArguments(output_dir=str(tmp_path / "out"), max_train_steps=2, checkpointing_steps=1)
    with pytest.raises(ValueError, match=r"labels\[2\] = 2 is outside the expected range \[0, 1\]"):
        train_score_sde_unet(args, images, labels, num_classes=2, preset="tiny", label_dropout=0.1)
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------------------------------------ classifying


def test_both_methods_classify_separable_classes(trained):
    pipe, test, _ = trained
    elbo = pipe(test.images, num_timesteps=20)
    exact = pipe(test.images, **FAST_ODE)
    for out in (elbo, exact):
        assert torch.equal(out.label_ids, test.labels)
        assert out.labels == [pipe.class_names[i] for i in test.labels]
        torch.testing.assert_close(out.probs.sum(1), torch.ones(len(test)))
        torch.testing.assert_close(out.log_likelihood_ratio, out.log_likelihoods[:, 1] - out.log_likelihoods[:, 0])
    assert elbo.nfe_per_image.tolist() == [2 * 20] * len(test)  # K classes x T timesteps, the null class never
    assert exact.nfe_per_image.tolist() == [2 * 4 * 8] * len(test)  # K x 4 RK4 stages x 8 steps
    assert elbo.bits_per_dim is None and exact.bits_per_dim.shape == (len(test), 2)
    # the fast fixed-step ODE agrees with the adaptive solver on the decisions and, roughly, on the ratios
    faithful = pipe(test.images[:4], method="likelihood", solver="dopri5", rtol=1e-3, atol=1e-3)
    assert torch.equal(faithful.label_ids, test.labels[:4])
    assert (faithful.log_likelihood_ratio - exact.log_likelihood_ratio[:4]).abs().max() < 5


def test_likelihood_defaults_are_the_scorers():
    """The pipeline's ODE defaults are probability_flow_log_likelihood's (RK4, 32 log-SNR steps: accurate, see
    tests/test_likelihood.py), so `pipe(images, method="likelihood")` gets the measured setting."""
    def defaults(function):
        return {name: p.default for name, p in inspect.signature(function).parameters.items()}

    pipeline, scorer = defaults(ScoreSDEClassifierPipeline.__call__), defaults(probability_flow_log_likelihood)
    names = ("solver", "num_steps", "step_spacing", "rtol", "atol", "num_probes", "seed")
    assert {name: pipeline[name] for name in names} == {name: scorer[name] for name in names}
    assert (scorer["solver"], scorer["num_steps"], scorer["step_spacing"]) == ("rk4", 32, "log_snr")


def test_early_stop_and_pruning_save_evaluations(trained):
    pipe, test, _ = trained
    # uniform weighting: the ELBO weight's 1 / sigma^2 peak makes the error differences too noisy to stop early here
    early = [pipe(test.images, num_timesteps=40, weighting="uniform", early_stop_confidence=confidence,
                  timesteps_per_check=5) for confidence in (0.9, 0.99)]  # 0.9: every image stops at the first check
    pruned = pipe(test.images, num_timesteps=20, pruning=[(10, 1), (10, 1)])
    for out in (*early, pruned):
        assert torch.equal(out.label_ids, test.labels)
    assert early[0].nfe_per_image.tolist() == [2 * 5] * len(test)
    assert (early[1].nfe_per_image < 2 * 40).all() and (early[1].nfe_per_image % 10 == 0).all()
    # QA: an early stop that stopped nothing says so (here one look, at 2 timesteps: too few to settle at 0.999999)
    with pytest.warns(UserWarning, match=r"early_stop_confidence=0.999999: no image of this call stopped before its"):
        unstopped = pipe(test.images, num_timesteps=4, early_stop_confidence=0.999999, timesteps_per_check=2)
    assert unstopped.nfe_per_image.tolist() == [2 * 4] * len(test)
    # and one whose first look would come after the last timestep is refused before any network call, by evaluate
    # and predict before any image is read (a look needs 2 timesteps: 1 per look over 2 timesteps cannot stop either)
    too_late = r"the first look comes after max\(2, timesteps_per_check={}\) timesteps, and {} are scored"
    with pytest.raises(ValueError, match=too_late.format(10, 4)):
        pipe(test.images, num_timesteps=4, early_stop_confidence=0.9)
    with pytest.raises(ValueError, match=too_late.format(1, 2)):
        pipe(test.images, num_timesteps=2, early_stop_confidence=0.9, timesteps_per_check=1)
    with pytest.raises(ValueError, match=too_late.format(10, 4)):
        pipeline_call_settings(pipe, {"num_timesteps": 4, "early_stop_confidence": 0.9})
    # QA: a bad stopping rule was refused by predict at its first batch (its output begun), or not in words
    for settings, refusal in [
        ({"early_stop_confidence": 0.9, "timesteps_per_check": 0}, r"expected timesteps_per_check >= 1, got 0"),
        ({"pruning": [50, 3]}, r"expected pruning as \(timesteps, classes kept\) pairs, .*got stage 0: 50"),
        ({"pruning": [[50, 3], [50, 1]]}, r"expected pruning stage 0 to keep 1\.\.2 classes"),
        ({"early_stop_confidence": "0.9"}, r"expected 0\.5 < early_stop_confidence < 1, got '0\.9'"),
    ]:  # fmt: skip
        with pytest.raises(ValueError, match=refusal):
            pipeline_call_settings(pipe, settings)
    # review: the refusal came after a warning in its words (an error under -W error); a 0-d confidence is its number
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(ValueError, match=too_late.format(10, 4)):
            pipeline_call_settings(pipe, {"num_timesteps": 4, "early_stop_confidence": 0.9})
    pipeline_call_settings(pipe, {"num_timesteps": 20, "early_stop_confidence": np.array(0.9)})
    pipeline_call_settings(pipe, {"num_timesteps": 20, "early_stop_confidence": torch.tensor(0.9)})
    assert pruned.nfe_per_image.tolist() == [2 * 10 + 10] * len(test)
    assert torch.isfinite(pruned.log_likelihood_ratio).all()  # from both classes' scores before pruning
    assert (torch.isinf(pruned.log_likelihoods).sum(1) == 1).all()
    # the timesteps to evaluate, in the order given (e.g. ranked on val by rank_timestep_strata)
    strata = pipe(test.images, num_timesteps=20, timestep_strata=[4, 9, 2])
    assert strata.nfe_per_image.tolist() == [2 * 3] * len(test) and torch.equal(strata.label_ids, test.labels)


def test_priors_enter_by_bayes_rule(trained):
    pipe, test, _ = trained
    flat = pipe(test.images, num_timesteps=20)
    # the image of class "bright" (0) closest to the boundary; a prior for "dark" just strong enough to flip it
    margin = (-flat.log_likelihood_ratio).masked_fill(test.labels == 1, math.inf)
    i = int(margin.argmin())
    assert 0 < margin[i] < 300  # a finite margin for a bright image, a prior exp(-300) still representable
    log_odds = float(margin[i]) + 1.0  # log prior(dark) / prior(bright)
    priors = [1 / (1 + math.exp(log_odds)), 1 / (1 + math.exp(-log_odds))]
    tilted = pipe(test.images, num_timesteps=20, priors=priors)
    assert torch.equal(tilted.log_likelihoods, flat.log_likelihoods)  # the prior does not touch the likelihoods
    expected = (flat.log_likelihoods + torch.tensor(priors, dtype=torch.float64).log()).softmax(1)
    torch.testing.assert_close(tilted.probs.double(), expected, atol=1e-6, rtol=1e-5)
    ratio = tilted.probs[i, 1] / tilted.probs[i, 0]
    assert float(ratio) == pytest.approx(math.exp(float(flat.log_likelihood_ratio[i]) + log_odds), rel=1e-4)
    assert tilted.labels[i] == "dark" and flat.labels[i] == "bright"


def test_seeds_and_generators_are_repeatable(trained):
    pipe, test, _ = trained
    images = test.images[:3]
    reference = pipe(images, num_timesteps=4).log_likelihoods
    assert torch.equal(pipe(images, num_timesteps=4).log_likelihoods, reference)
    with_generator = [pipe(images, num_timesteps=4, generator=torch.Generator().manual_seed(5)) for _ in range(2)]
    assert torch.equal(with_generator[0].log_likelihoods, with_generator[1].log_likelihoods)
    assert not torch.equal(with_generator[0].log_likelihoods, reference)
    with pytest.raises(ValueError, match="one generator per image"):
        pipe(images, generator=[torch.Generator()] * 2)


def test_save_and_load_gives_identical_outputs(trained, tmp_path):
    pipe, test, root = trained
    images = test.images[:6]
    np.save(tmp_path / "images.npy", images.numpy())
    expected = {"elbo": pipe(images, num_timesteps=8), "likelihood": pipe(images, **(FAST_ODE | dict(num_steps=2)))}
    script = f"""
import numpy, torch
from diffusion_classifiers import DiffusionClassifierPipeline
pipe = DiffusionClassifierPipeline.from_pretrained({str(root / 'model')!r})
assert type(pipe).__name__ == "ScoreSDEClassifierPipeline", type(pipe)
images = torch.from_numpy(numpy.load({str(tmp_path / 'images.npy')!r}))
elbo = pipe(images, num_timesteps=8)
exact = pipe(images, **{FAST_ODE | dict(num_steps=2)!r})
numpy.savez({str(tmp_path / 'out.npz')!r}, elbo=elbo.log_likelihoods.numpy(), elbo_probs=elbo.probs.numpy(),
            likelihood=exact.log_likelihoods.numpy(), likelihood_probs=exact.probs.numpy())
"""
    run_loading_script(script)
    loaded = np.load(tmp_path / "out.npz")
    for method, out in expected.items():
        assert torch.equal(torch.from_numpy(loaded[method]), out.log_likelihoods)
        assert torch.equal(torch.from_numpy(loaded[f"{method}_probs"]), out.probs)


# -------------------------------------------------------------------------------------------------- bad input


def test_model_without_class_embeddings_is_refused_at_construction():
    with pytest.raises(ValueError, match="class-conditional UNet2DModel"):
        random_pipeline(num_class_embeds=None)
    with pytest.raises(ValueError, match="expected 3 class names"):
        random_pipeline(3, class_names=["a"])


@pytest.mark.parametrize(
    "priors, message",
    [
        ([0.2, 0.3, 0.5], "expected 2 priors"),
        ([1.5, -0.5], "non-negative"),
        ([0.3, 0.3], "summing to 1"),
    ],
)
def test_bad_priors_are_refused(trained, priors, message):
    pipe, test, _ = trained
    with pytest.raises(ValueError, match=message):
        pipe(test.images, priors=priors)


def test_images_are_resized_to_the_model_and_bad_channels_refused(trained):
    pipe, test, _ = trained
    images = test.images[[0, 1, -2, -1]]  # bright and dark: values below 0, so read as [-1, 1] (not [0, 1])
    large = torch.nn.functional.interpolate(images, size=16, mode="nearest")  # 16 px, same content
    resized = preprocess_images(large, image_size=8)
    assert not torch.equal(resized, large[..., ::2, ::2])  # a real (antialiased) resize
    torch.testing.assert_close(pipe(large, num_timesteps=4).log_likelihoods, pipe(resized, num_timesteps=4).log_likelihoods)
    with pytest.raises(ValueError, match="expected 1 or 3 channels, got 4"):
        pipe(torch.zeros(2, 4, 8, 8))


def test_bad_method_and_solver_tolerance_are_refused(trained):
    pipe, test, _ = trained
    with pytest.raises(ValueError, match="tolerances"):
        pipe(test.images, method="likelihood", solver="dopri5", rtol=0.0)
    with pytest.raises(ValueError, match="tolerances"):
        pipe(test.images, method="likelihood", solver="dopri5", atol=-1e-5)
    with pytest.raises(ValueError, match="method in"):
        pipe(test.images, method="exact")
    # the other method's arguments were ignored without a word: an early stop that stopped nothing
    with pytest.raises(ValueError, match=r"early_stop_confidence=0.99: argument\(s\) of method='elbo', which method='likelihood'"):
        pipe(test.images, method="likelihood", early_stop_confidence=0.99)
    with pytest.raises(ValueError, match=r"num_steps=8, num_probes=2: argument\(s\) of method='likelihood'"):
        pipe(test.images, num_steps=8, num_probes=2)
    pipe(test.images[:1], method="likelihood", num_timesteps=100, **{k: v for k, v in FAST_ODE.items() if k != "method"})
    with pytest.raises(ValueError, match=r"images: image 0 has values in \[\d+, 255\]; expected images scaled to \[-1, 1\]"):
        denoising_error_scores(pipe.unet, (test.images[:2] + 1) * 127.5, 2, num_timesteps=2)  # the scorers as the pipeline


def test_log_likelihood_ratio_is_positive_versus_negative_class():
    pipe = random_pipeline(num_class_embeds=2, class_names=["benign", "malignant"])
    pipe.set_progress_bar_config(disable=True)
    images = torch.rand(3, 1, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1
    out = pipe(images, num_timesteps=4)
    torch.testing.assert_close(out.log_likelihood_ratio, out.log_likelihoods[:, 1] - out.log_likelihoods[:, 0])
    pipe.set_positive_class("benign")
    flipped = pipe(images, num_timesteps=4)
    torch.testing.assert_close(flipped.log_likelihood_ratio, out.log_likelihoods[:, 0] - out.log_likelihoods[:, 1])
    assert torch.equal(flipped.probs, out.probs)  # the posterior does not depend on which class is positive


def test_the_ratio_comes_with_its_monte_carlo_standard_error_for_the_positive_class():
    pipe = random_pipeline(num_class_embeds=2, class_names=["benign", "malignant"])
    pipe.set_progress_bar_config(disable=True)
    images = torch.rand(3, 1, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1
    pixels = pipe.preprocess(images)
    result = denoising_error_scores(pipe.unet, pixels, 2, num_timesteps=6, weighting="elbo",
                                    seed=content_seeds(pixels, 0), sde=pipe.sde, progress_bar={"disable": True})  # fmt: skip
    out = pipe(images, num_timesteps=6)
    torch.testing.assert_close(out.log_likelihood_ratio_stderr, result.difference_standard_error(1, 0))
    pipe.set_positive_class("benign")  # the same spread: the ratio only changes sign
    assert pipe.positive_index() == 0
    torch.testing.assert_close(pipe(images, num_timesteps=6).log_likelihood_ratio_stderr, out.log_likelihood_ratio_stderr)
    assert pipe(images, **FAST_ODE).log_likelihood_ratio_stderr is None  # the exact likelihood has no such estimate
    three = random_pipeline(num_class_embeds=3, class_names=["a", "b", "c"])
    three.set_progress_bar_config(disable=True)
    assert three(images, num_timesteps=2).log_likelihood_ratio_stderr is None


def test_log_odds_rank_images_whose_probabilities_saturate_and_evaluate_ranks_by_them(tmp_path, monkeypatch):
    """Density models' classes differ by hundreds of nats: the float32 probabilities round to 0 and 1 and tie, so an
    AUC from them was lower than the log-likelihood ratio's (QA: 0.939 against 0.958 on 48 PneumoniaMNIST images)."""
    from sklearn.metrics import roc_auc_score

    from diffusion_classifiers.data import LabeledImages
    from diffusion_classifiers.evaluation import evaluate_classifier

    pipe = random_pipeline(num_class_embeds=2, class_names=["benign", "malignant"])
    ratio = torch.tensor([-300.0, -120.0, -2.0, 1.0, 150.0, 400.0], dtype=torch.float64)  # log p(x|mal) - log p(x|ben)
    log_likelihoods = torch.stack([torch.full_like(ratio, -1000.0), -1000.0 + ratio], 1)
    out = pipe.posterior(log_likelihoods, torch.tensor([0.9, 0.1], dtype=torch.float64).log())
    assert out["probs"][:, 1].tolist()[:2] == [0.0, 0.0] and out["probs"][:, 1].tolist()[-2:] == [1.0, 1.0]
    torch.testing.assert_close(out["log_odds"][:, 1], ratio + math.log(0.1 / 0.9), rtol=0, atol=1e-12)
    torch.testing.assert_close(out["log_odds"][:, 0], -out["log_odds"][:, 1], rtol=0, atol=0)
    three = random_pipeline(class_names=["a", "b", "c"]).posterior(
        torch.tensor([[0.0, -500.0, -900.0]], dtype=torch.float64), None
    )  # fmt: skip
    expected = [0.0 - torch.logaddexp(torch.tensor(-500.0), torch.tensor(-900.0)), -500.0, -900.0 - 0.0]
    torch.testing.assert_close(three["log_odds"][0], torch.tensor(expected, dtype=torch.float64), rtol=0, atol=1e-9)

    labels = torch.tensor([0, 1, 0, 1, 0, 1])  # ranked by the ratio, the AUC is 6 / 9; by the tied probs 5 / 9
    scored = pipe.posterior(log_likelihoods, None)
    monkeypatch.setattr(
        ScoreSDEClassifierPipeline, "__call__",
        lambda self, images, **kwargs: ScoreSDEClassifierOutput(**scored, nfe_per_image=torch.ones(len(images))),
    )  # fmt: skip
    data = LabeledImages(torch.zeros(6, 1, 8, 8), labels, ["benign", "malignant"])
    metrics = evaluate_classifier(pipe, data, output_dir=str(tmp_path), positive_class="malignant")
    assert metrics["auc"] == roc_auc_score(labels, ratio) == pytest.approx(6 / 9, abs=1e-12)
    assert roc_auc_score(labels, scored["probs"][:, 1]) == pytest.approx(5 / 9, abs=1e-12)
    assert (tmp_path / "roc_pr.png").stat().st_size > 0


def test_evaluate_counts_the_decisions_another_noise_seed_could_flip(tmp_path, monkeypatch):
    from diffusion_classifiers.data import LabeledImages
    from diffusion_classifiers.evaluation import evaluate_classifier

    pipe = random_pipeline(num_class_embeds=2, class_names=["benign", "malignant"])
    ratio = torch.tensor([-3.0, -0.5, 0.2, 4.0], dtype=torch.float64)
    stderr = torch.tensor([1.0, 1.0, 0.05, float("nan")], dtype=torch.float64)  # beyond, within, beyond, within (NaN)
    scored = pipe.posterior(torch.stack([torch.zeros_like(ratio), ratio], 1), None)
    bars_hidden = []

    def scored_call(self, images, early_stop_confidence=None, priors=None, **kwargs):  # the settings evaluate records
        bars_hidden.append(self.progress_bar_config["disable"])
        nfe = torch.tensor([40, 12, 40, 20])[: len(images)]
        return ScoreSDEClassifierOutput(**scored, nfe_per_image=nfe, log_likelihood_ratio_stderr=stderr)

    monkeypatch.setattr(ScoreSDEClassifierPipeline, "__call__", scored_call)
    data = LabeledImages(torch.zeros(4, 1, 8, 8), torch.tensor([0, 1, 0, 1]), ["benign", "malignant"])
    pipe.set_progress_bar_config(leave=False)
    metrics = evaluate_classifier(pipe, data, output_dir=str(tmp_path), positive_class="malignant")
    # one bar over the images: the pipeline's own (one per call) hidden during the evaluation, its setting kept
    assert bars_hidden == [True] and pipe._progress_bar_config == {"leave": False}
    # decided benign, benign, malignant, malignant: of the two beyond the band the first is right, the third wrong
    expected = {"num_stderr": 2.0, "decisions_within": 2, "fraction_within": 0.5, "accuracy_beyond": 0.5, "median_stderr": 1.0}
    assert metrics["seed_sensitivity"] == expected
    assert json.loads((tmp_path / "metrics.json").read_text())["seed_sensitivity"] == expected
    report = (tmp_path / "report.md").read_text()
    assert "| decisions another noise seed could flip (within 2 standard errors of the threshold) | 2 (50.0%) |" in report
    assert "| accuracy of the other decisions | 50.00% |  |" in report  # an empty interval cell: 3 cells, as each row
    # QA: the network calls a stopping rule saved were not in evaluate's record
    assert metrics["nfe_per_image"] == {"mean": 28.0, "min": 12, "max": 40}
    assert "| network calls per image | 28 (least 12, most 40) |" in report
    # after an early stop the standard error rests on the timesteps the stop kept and reads low: not counted
    early = evaluate_classifier(pipe, data, pipeline_kwargs={"early_stop_confidence": 0.99})
    assert "seed_sensitivity" not in early and early["pipeline_call"]["early_stop_confidence"] == 0.99
    # priors as a float32 array are recorded as a list (json.dumps refused numpy scalars)
    priors = evaluate_classifier(pipe, data, pipeline_kwargs={"priors": np.array([0.25, 0.75], dtype=np.float32)})
    assert priors["pipeline_call"]["priors"] == [0.25, 0.75]


def test_the_ratio_of_a_pruned_run_weighs_the_timesteps_both_classes_got():
    """With pruning, the kept class's mean error covered 20 timesteps and the pruned one's 5: their difference was
    17x the ratio (the ELBO weights of the timesteps only one got). It is now taken over the 5 both classes got,
    which are the exhaustive run's first 5 (the pruned run scores a prefix of the same draws)."""
    pipe = random_pipeline(num_class_embeds=2, class_names=["benign", "malignant"])
    pipe.set_progress_bar_config(disable=True)
    images = torch.rand(4, 1, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1
    exhaustive = denoising_error_scores(
        pipe.unet, pipe.preprocess(images), 2, num_timesteps=20, weighting="elbo",
        seed=content_seeds(pipe.preprocess(images), 0), sde=pipe.sde, progress_bar={"disable": True},
    )  # fmt: skip
    shared = -exhaustive.errors[:, :, :5].double().mean(2)
    pruned = pipe(images, num_timesteps=20, pruning=[(5, 1), (15, 1)])
    # float32 errors of magnitude ~100 summed 5 at a time: round-off near 5 * 100 * 6e-8 = 3e-5
    torch.testing.assert_close(pruned.log_likelihood_ratio, shared[:, 1] - shared[:, 0], rtol=1e-5, atol=1e-4)
    unpruned = pipe(images, num_timesteps=20)
    torch.testing.assert_close(unpruned.log_likelihood_ratio, unpruned.log_likelihoods[:, 1] - unpruned.log_likelihoods[:, 0])


def test_a_zero_prior_is_refused_where_pruning_could_keep_only_such_classes():
    pipe = random_pipeline(num_class_embeds=3, class_names=["a", "b", "c"])
    pipe.set_progress_bar_config(disable=True)
    images = torch.rand(2, 1, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1
    with pytest.raises(ValueError, match=r"priors: classes \['a'\] have prior 0, which pruning and the early stop"):
        pipe(images, num_timesteps=4, pruning=[(2, 1), (2, 1)], priors=[0.0, 0.5, 0.5])
    assert pipe(images, num_timesteps=4, priors=[0.0, 0.5, 0.5]).probs[:, 0].eq(0).all()  # without pruning: fine


def test_priors_under_a_stopping_rule_whose_first_stages_read_too_large_are_warned_about():
    """QA (an exact-score review): with the ELBO weighting at even spacing, a stage's first timesteps give ratios
    several times the whole estimate's (benchmarks/score_sde_bench_elbo_bias.py), and priors count that much less."""
    pipe = random_pipeline(num_class_embeds=3, class_names=["a", "b", "c"])
    pipe.set_progress_bar_config(disable=True)
    images = torch.rand(2, 1, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1
    pruned = dict(num_timesteps=4, pruning=[(2, 1), (2, 1)])
    with pytest.warns(UserWarning, match=r"priors with pruning or the early stop at weighting='elbo', timestep_spac"):
        pipe(images, priors=[0.8, 0.1, 0.1], **pruned)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        pipe(images, priors=[0.8, 0.1, 0.1], timestep_spacing="log_snr", **pruned)
        pipe(images, priors=[1 / 3, 1 / 3, 1 / 3], **pruned)
        pipe(images, priors=[0.8, 0.1, 0.1], num_timesteps=4)  # every timestep: the whole estimate



class AxisAlignedGaussians:
    """Class `c` is `N(mu_c, s^2 I)`: at time t the exact epsilon-predictor is `sigma (x - alpha mu_c) / (alpha^2 s^2
    + sigma^2)`, a model the ELBO scores without training."""

    def __init__(self, means, scale, sde):
        self.means, self.scale, self.sde = means, scale, sde

    def __call__(self, x, t, labels):
        alpha, sigma = self.sde.alpha(t)[:, None], self.sde.sigma(t)[:, None]
        centered = x.flatten(1) - alpha * self.means.to(x)[labels]
        return (sigma * centered / (alpha**2 * self.scale**2 + sigma**2)).view_as(x)


def test_the_early_stop_settles_the_decision_with_the_prior_not_the_bound_alone():
    """QA: with priors [0.9, 0.1] the early stop settled the sign of the bound's ratio, not of ratio + log prior ratio
    (the decision's): 11 of 400 early-stopped decisions differed from the exhaustive ones, 27 wrong against 18."""
    from diffusion_classifiers.likelihood import VPSDE

    means = torch.randn(2, 16, generator=torch.Generator().manual_seed(0)) * 0.25
    model = AxisAlignedGaussians(means, 0.5, VPSDE())
    labels = torch.arange(100) % 2
    images = (means[labels] + 0.5 * torch.randn(100, 16, generator=torch.Generator().manual_seed(3))).view(-1, 1, 4, 4)
    score = dict(num_timesteps=100, weighting="elbo", timestep_spacing="log_snr", progress_bar={"disable": True})
    early_stop = dict(early_stop_confidence=0.99, timesteps_per_check=5)
    log_prior = torch.tensor([0.97, 0.03], dtype=torch.float64).log()
    exhaustive = (denoising_error_scores(model, images, 2, **score).scores + log_prior).argmax(1)
    blind = denoising_error_scores(model, images, 2, **score, **early_stop)
    assert ((blind.scores + log_prior).argmax(1) != exhaustive).sum() == 4  # the stop ignoring the prior: the defect
    early = denoising_error_scores(model, images, 2, **score, **early_stop, log_prior=log_prior)
    assert torch.equal((early.scores + log_prior).argmax(1), exhaustive)
    assert early.nfe_per_image.float().mean() < 2 * 100 / 2  # it still stops early
    uniform = denoising_error_scores(model, images, 2, **score, **early_stop, log_prior=torch.tensor([0.5, 0.5]).log())
    assert torch.equal(uniform.scores, blind.scores) and torch.equal(uniform.nfe_per_image, blind.nfe_per_image)


def test_binary_labels_and_log_odds_agree_after_pruning_with_a_prior():
    """QA: pruning ranked by the bound alone kept class 0 where ratio + log prior ratio, the `log_odds` reported,
    favoured class 1 by 5.7 nats: label '0' with probability 1 against log-odds +5.7. Pruning now ranks by bound + log
    prior, and a binary label after pruning follows the sign of the log-odds."""
    pipe = random_pipeline(num_class_embeds=2, class_names=["a", "b"])
    pipe.set_progress_bar_config(disable=True)
    images = torch.rand(8, 1, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1
    pixels, priors, pruning = pipe.preprocess(images), [0.001, 0.999], [(10, 2), (10, 1)]
    blind = denoising_error_scores(
        pipe.unet, pixels, 2, num_timesteps=20, weighting="elbo", pruning=pruning, seed=content_seeds(pixels, 0),
        sde=pipe.sde, progress_bar={"disable": True},
    )  # fmt: skip
    pruned = pipe(images, num_timesteps=20, pruning=pruning, priors=priors)
    exhaustive = pipe(images, num_timesteps=20, priors=priors)
    positive = pruned.log_odds[:, 1] > 0
    assert not torch.equal(torch.isfinite(blind.scores[:, 1]), positive)  # prior-blind pruning kept the other class
    assert torch.equal(pruned.label_ids, positive.long()) and torch.equal(pruned.probs[:, 1], positive.float())
    assert torch.equal(pruned.label_ids, exhaustive.label_ids)  # the last stage ranks over all 20 timesteps
    # the rule itself: a pruned row follows its log-odds, even where round-off kept the other class; a tie is 1/2
    kept_a = torch.tensor([[0.0, -math.inf], [0.0, -math.inf]], dtype=torch.float64)
    before_pruning = torch.tensor([[-2.0, -1.0], [-1.0, -1.0]], dtype=torch.float64)
    out = pipe.posterior(kept_a, None, before_pruning)
    assert out["labels"][0] == "b" and out["probs"].tolist() == [[0.0, 1.0], [0.5, 0.5]]
    assert out["log_odds"][:, 1].tolist() == [1.0, 0.0]


def test_an_evaluation_with_pruned_classes_says_what_its_auc_and_calibration_are_of(tmp_path):
    """QA (a Score-SDE user): with pruning, evaluate printed AUC 0.789 (0.950 exhaustive, the same decisions) and a log
    loss of 14.4 driven by the clipping of probabilities 0, without a word."""
    from diffusion_classifiers.data import LabeledImages
    from diffusion_classifiers.evaluation import evaluate_classifier

    pipe = random_pipeline(num_class_embeds=3, class_names=["a", "b", "c"])
    torch.manual_seed(1)
    images = LabeledImages(torch.rand(9, 3, 8, 8) * 2 - 1, torch.tensor([0, 1, 2] * 3), ["a", "b", "c"])
    pruned = evaluate_classifier(pipe, images, tmp_path / "pruned", pipeline_kwargs={
        "num_timesteps": 4, "pruning": [(2, 1), (2, 1)]})  # fmt: skip
    assert pruned["eliminated_classes"]["num_images"] == 9 and pruned["auc"] is not None  # this protocol's ranking
    assert "**For 9 images, the classes pruned or stopped early have probability 0 and rank last, tied: the AUC" in (
        tmp_path / "pruned" / "report.md").read_text()
    exhaustive = evaluate_classifier(pipe, images, pipeline_kwargs={"num_timesteps": 4})
    assert "eliminated_classes" not in exhaustive


def test_pruning_as_an_array_runs_and_an_empty_pruning_or_nested_priors_are_refused_by_name():
    """QA (a Score-SDE user): `pruning=np.array([[2, 2], [2, 1]])` was refused with numpy's "truth value of an array
    ... is ambiguous", `pruning=[]` as stages that did not sum to num_timesteps, and nested priors were flattened and
    taken."""
    pipe = random_pipeline(num_class_embeds=3, class_names=["a", "b", "c"])
    images = torch.rand(2, 3, 8, 8) * 2 - 1
    as_list = pipe(images, num_timesteps=4, pruning=[(2, 2), (2, 1)])
    as_array = pipe(images, num_timesteps=4, pruning=np.array([[2, 2], [2, 1]]))
    assert torch.equal(as_array.probs, as_list.probs) and torch.equal(as_array.nfe_per_image, as_list.nfe_per_image)
    with pytest.raises(ValueError, match=r"expected pruning as \(timesteps, classes kept\) pairs, .* or None for none; "
                                         r"got no stage"):  # fmt: skip
        pipe(images, num_timesteps=4, pruning=[])
    with pytest.raises(ValueError, match=r"priors: expected 3 numbers .* got \[\[0.2\], \[0.3\], \[0.5\]\]"):
        pipe(images, num_timesteps=4, priors=[[0.2], [0.3], [0.5]])  # 3 numbers, nested: flattened and taken
