"""`diffusion-classifiers cluster`: a plankton lab groups a folder of unlabeled images by a trained U-Net's (or an
RC-DiT's) features, every choice made without labels, and gets each file's cluster, the choice, and each cluster's
nearest images to name it by eye."""

import csv
import json

import numpy as np
import pytest
from diffusers import DDPMScheduler
from PIL import Image
from sklearn.datasets import load_digits

from diffusion_classifiers import UNetFeatureClassifierPipeline
from diffusion_classifiers.cli import main
from diffusion_classifiers.probing import KMeansGrouping, kmeans_clusters
from diffusion_classifiers.prediction.clustering import CLUSTERS_PER_FIGURE

from .test_readme import small_unet

NUM_IMAGES = 120


def read_rows(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.fixture(scope="module")
def digits_csv(tmp_path_factory):
    """120 digits as 16 px PNGs, listed in a CSV with their labels and a sample column, and one unreadable file."""
    root = tmp_path_factory.mktemp("digits")
    digits = load_digits()
    (root / "images").mkdir()
    rows = []
    for i in range(NUM_IMAGES):
        image = Image.fromarray((digits.images[i] / 16 * 255).astype(np.uint8)).resize((16, 16))
        image.save(root / "images" / f"{i:03d}.png")
        rows.append([f"images/{i:03d}.png", str(digits.target[i]), f"sample{i % 3}"])
    (root / "images" / "broken.png").write_text("not an image")
    rows.insert(7, ["images/broken.png", "1", "sample0"])
    with open(root / "list.csv", "w", newline="") as handle:
        csv.writer(handle).writerows([["path", "label", "sample"], *rows])
    return root / "list.csv"


@pytest.fixture(scope="module")
def unet_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("unet") / "unet"
    UNetFeatureClassifierPipeline(unet=small_unet(16), scheduler=DDPMScheduler()).save_pretrained(folder)
    return folder


def cluster(model_dir, input_path, output_dir, *flags):
    main(["cluster", "--model_dir", str(model_dir), "--input", str(input_path), "--output_dir", str(output_dir),
          "--timesteps", "50", "300", *flags])  # fmt: skip
    return json.loads((output_dir / "metrics.json").read_text())


def test_cluster_groups_every_readable_file_with_choices_made_without_labels(digits_csv, unet_dir, tmp_path):
    metrics = cluster(unet_dir, digits_csv, tmp_path / "out", "--num_clusters", "10", "--candidate_num_clusters", "4",
                      "10", "20", "--examples_per_cluster", "3", "--fit_images", "80")  # fmt: skip
    rows = read_rows(tmp_path / "out" / "clusters.csv")
    listed = [row[0] for row in csv.reader(open(digits_csv))][1:]
    assert [row["path"] for row in rows] == [path for path in listed if "broken" not in path]  # input order
    assert list(rows[0]) == ["path", "frame", "sample", "true_label", "cluster", "distance"]
    assert [row["sample"] for row in rows[:2]] == ["sample0", "sample1"]
    errors = read_rows(tmp_path / "out" / "clusters.errors.csv")
    assert [row["path"] for row in errors] == ["images/broken.png"] and "cannot" in errors[0]["reason"]
    k = metrics["num_clusters"]
    by_k = metrics["selection"]["silhouette_by_num_clusters"]
    assert set(by_k) == {"4", "10", "20"} and k == int(max(by_k, key=by_k.get))  # K chosen by silhouette
    clusters = np.array([int(row["cluster"]) for row in rows])
    assert metrics["cluster_sizes"] == np.bincount(clusters, minlength=k).tolist()
    assert sum(metrics["cluster_sizes"]) == NUM_IMAGES
    assert (metrics["num_inputs"], metrics["num_images"], metrics["num_unreadable"]) == (NUM_IMAGES + 1, NUM_IMAGES, 1)
    assert metrics["fitted_on_images"] == 80 and metrics["feature"] == "/".join(map(str, metrics["selection"]["pair"]))
    assert metrics["normalization"] in ("standardize", "l2", "pca_whiten")
    scored = metrics["with_true_labels"]
    assert scored["num_classes"] == 10 and 0 <= scored["nmi"] <= 1 and 0 < scored["accuracy"] <= 1
    # each cluster's column holds its 3 images nearest the centre; the figures cover every cluster
    figures = sorted((tmp_path / "out").glob("cluster_examples_*.png"))
    assert [path.name for path in figures] == metrics["files"][2:] and len(figures) == -(-k // CLUSTERS_PER_FIGURE)
    assert all(Image.open(path).size[1] > 3 * 16 for path in figures)
    # seeded: the same command groups the files the same way
    again = cluster(unet_dir, digits_csv, tmp_path / "again", "--num_clusters", "10", "--candidate_num_clusters", "4",
                    "10", "20", "--examples_per_cluster", "3", "--fit_images", "80")  # fmt: skip
    assert read_rows(tmp_path / "again" / "clusters.csv") == rows and again["selection"] == metrics["selection"]


def test_cluster_groups_a_folder_without_labels_by_an_rc_dits_representation(digits_csv, tmp_path):
    from .test_rc_dit import tiny_pipeline

    tiny_pipeline().save_pretrained(tmp_path / "rc_dit")
    folder = digits_csv.parent / "images"
    main(["cluster", "--model_dir", str(tmp_path / "rc_dit"), "--input", str(folder), "--output_dir",
          str(tmp_path / "out"), "--num_clusters", "5", "--normalizations", "standardize"])  # fmt: skip
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["feature"] == "representation" and metrics["normalization"] == "standardize"
    assert "with_true_labels" not in metrics and metrics["num_images"] == NUM_IMAGES
    assert list(read_rows(tmp_path / "out" / "clusters.csv")[0]) == ["path", "frame", "cluster", "distance"]


def test_cluster_refuses_bad_requests_before_loading_the_model_or_writing(digits_csv, unet_dir, tmp_path, monkeypatch):
    from diffusion_classifiers.pipelines import DiffusionClassifierPipeline

    out = tmp_path / "out"
    base = ["cluster", "--model_dir", str(unet_dir), "--input", str(digits_csv), "--output_dir", str(out)]
    with monkeypatch.context() as patched:
        patched.setattr(DiffusionClassifierPipeline, "from_pretrained", pytest.fail)
        refused = {
            ("--num_clusters", "1"): r"--num_clusters: expected K >= 2",
            ("--num_clusters", "5", "--candidate_num_clusters", "1", "5"): r"--candidate_num_clusters: expected every",
            ("--num_clusters", "50", "--selection_images", "60"): r"--selection_images 60: expected at least 2 x K = 1",
            ("--num_clusters", "70"): r"121 files, expected at least 2 x K = 140",
            ("--num_clusters", "5", "--fit_images", "3"): r"--fit_images 3: expected at least K = 5",
        }
        for flags, message in refused.items():
            with pytest.raises(ValueError, match=message):
                main(base + list(flags))
            assert not out.exists()  # the folder it would have created is gone again
    from diffusion_classifiers import ScoreSDEClassifierPipeline

    unet = small_unet(16, num_class_embeds=2)
    ScoreSDEClassifierPipeline(unet, DDPMScheduler(), class_names=["a", "b"]).save_pretrained(tmp_path / "score_sde")
    with pytest.raises(ValueError, match=r"a ScoreSDEClassifierPipeline, which has no image features to group by"):
        main(["cluster", "--model_dir", str(tmp_path / "score_sde"), "--input", str(digits_csv), "--output_dir",
              str(out), "--num_clusters", "5"])  # fmt: skip
    out.mkdir()
    (out / "metrics.json").write_text("{}")
    with pytest.raises(ValueError, match=r"holds an earlier report \(metrics.json\)"):
        main(base + ["--num_clusters", "5"])
    assert (out / "metrics.json").read_text() == "{}"


def test_cluster_files_refuses_bad_arguments_before_extracting_any_feature(digits_csv, unet_dir, tmp_path, monkeypatch):
    from diffusion_classifiers import DiffusionClassifierPipeline
    from diffusion_classifiers.prediction import cluster_files, list_inputs

    pipe = DiffusionClassifierPipeline.from_pretrained(unet_dir)
    monkeypatch.setattr(pipe, "extract_features", pytest.fail)
    inputs = list_inputs(digits_csv)
    refused = {
        "num_clusters": (1, r"num_clusters: expected K >= 2"),
        "normalizations": (["l2", "l2"], r"normalizations: expected distinct names"),
        "fit_images": (2, r"fit_images 2: expected at least K = 5"),
        "batch_size": (0, r"batch_size: expected an integer >= 1"),
    }
    for name, (value, message) in refused.items():
        with pytest.raises(ValueError, match=message):
            cluster_files(pipe, inputs, tmp_path / "out", **{"num_clusters": 5, name: value})
    with pytest.raises(ValueError, match=r"normalizations: expected one of .*got 'zca'"):
        cluster_files(pipe, inputs, tmp_path / "out", 5, normalizations=["zca"])
    with pytest.raises(ValueError, match=r"inputs: 3 files, expected at least 2 x K = 10"):
        cluster_files(pipe, inputs[:3], tmp_path / "out", 5)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("normalization", ["standardize", "l2", "pca_whiten", "none"])
def test_kmeans_grouping_fitted_on_every_image_gives_kmeans_clusters(normalization):
    x = load_digits().data[:300]
    grouping = KMeansGrouping(10, normalization, seed=0).fit(x)
    clusters, distances = grouping.assign(x)
    np.testing.assert_array_equal(clusters, kmeans_clusters(x, 10, normalization=normalization))
    expected = grouping.kmeans.transform(grouping.normalizer.transform(x)).min(1)
    np.testing.assert_allclose(distances, expected, rtol=1e-12)


def test_kmeans_grouping_fitted_on_a_sample_groups_other_images_by_the_nearest_centre():
    x = load_digits().data
    grouping = KMeansGrouping(10, "standardize", seed=0).fit(x[:500])
    clusters, distances = grouping.assign(x[500:])
    np.testing.assert_array_equal(clusters, grouping.kmeans.predict(grouping.normalizer.transform(x[500:])))
    assert (distances >= 0).all() and len(clusters) == len(x) - 500
    with pytest.raises(ValueError, match=r"expected features \[N, 64\], as fitted, got \[3, 5\]"):
        grouping.assign(np.zeros((3, 5)))
    with pytest.raises(ValueError, match=r"fit it first"):
        KMeansGrouping(3).assign(x)
    with pytest.raises(ValueError, match=r"K=20 is larger than the number of images \(5\)"):
        KMeansGrouping(20).fit(x[:5])


def test_a_rerun_over_an_earlier_one_leaves_no_figure_of_the_earlier_grouping(digits_csv, unet_dir, tmp_path):
    """QA: --overwrite_output_dir with fewer clusters left the earlier run's later figures, another grouping's."""
    out = tmp_path / "out"
    first = cluster(unet_dir, digits_csv, out, "--num_clusters", "20", "--examples_per_cluster", "1")
    assert first["files"][2:] == ["cluster_examples_1.png", "cluster_examples_2.png"]
    again = cluster(unet_dir, digits_csv, out, "--num_clusters", "5", "--examples_per_cluster", "1",
                    "--overwrite_output_dir")  # fmt: skip
    assert sorted(path.name for path in out.glob("cluster_examples_*.png")) == again["files"][2:] == [
        "cluster_examples_1.png"
    ]


def test_cluster_files_refuses_an_earlier_report_and_records_its_model(digits_csv, unet_dir, tmp_path):
    from diffusion_classifiers import DiffusionClassifierPipeline
    from diffusion_classifiers.hub import model_fingerprint
    from diffusion_classifiers.prediction import cluster_files, list_inputs

    pipe, inputs = DiffusionClassifierPipeline.from_pretrained(unet_dir), list_inputs(digits_csv)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "metrics.json").write_text("{}")
    with pytest.raises(ValueError, match=r"output_dir .* holds an earlier report"):
        cluster_files(pipe, inputs, tmp_path / "out", 5, progress_bar=False)
    metrics = cluster_files(pipe, inputs, tmp_path / "out", 5, progress_bar=False, overwrite=True, selection_images=60)
    assert metrics["model_dir"] == str(unet_dir) and metrics["model_sha256"] == model_fingerprint(unet_dir)


def test_a_sample_of_unreadable_files_is_refused_naming_one_and_its_reason(unet_dir, tmp_path):
    (tmp_path / "bad").mkdir()
    for i in range(12):
        (tmp_path / "bad" / f"{i}.png").write_text("not an image")
    with pytest.raises(ValueError, match=r"0 images of the 12 files sampled .* \(first: 0.png: cannot decode"):
        main(["cluster", "--model_dir", str(unet_dir), "--input", str(tmp_path / "bad"), "--output_dir",
              str(tmp_path / "out"), "--num_clusters", "3"])  # fmt: skip


def test_window_on_inputs_without_dicom_is_warned_about_and_the_windows_read_through_are_recorded(
    digits_csv, unet_dir, tmp_path
):
    with pytest.warns(UserWarning, match=r"--window file: none of the 121 inputs is a DICOM file"):
        metrics = cluster(unet_dir, digits_csv, tmp_path / "out", "--num_clusters", "5", "--window", "file")
    assert metrics["windows"] == ["file"]
    assert cluster(unet_dir, digits_csv, tmp_path / "plain", "--num_clusters", "5")["windows"] == ["file"]
