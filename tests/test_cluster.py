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

from diffusion_classifiers import LinearProbeHead, UNetFeatureClassifierPipeline
from diffusion_classifiers.cli import main
from diffusion_classifiers.probing import KMeansGrouping, kmeans_clusters
from diffusion_classifiers.prediction.clustering import CLUSTERS_PER_FIGURE

from .conftest import shared_data
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
    assert [path.name for path in figures] == metrics["files"][3:] and len(figures) == -(-k // CLUSTERS_PER_FIGURE)
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
    with pytest.raises(ValueError, match=r"features: expected \[N, 64\], as fitted, got \[3, 5\]"):
        grouping.assign(np.zeros((3, 5)))
    with pytest.raises(ValueError, match=r"fit it first"):
        KMeansGrouping(3).assign(x)
    with pytest.raises(ValueError, match=r"K=20 is larger than the number of images \(5\)"):
        KMeansGrouping(20).fit(x[:5])


def test_a_rerun_over_an_earlier_one_leaves_no_figure_of_the_earlier_grouping(digits_csv, unet_dir, tmp_path):
    """QA: --overwrite_output_dir with fewer clusters left the earlier run's later figures, another grouping's."""
    out = tmp_path / "out"
    first = cluster(unet_dir, digits_csv, out, "--num_clusters", "20", "--examples_per_cluster", "1")
    assert first["files"][3:] == ["cluster_examples_1.png", "cluster_examples_2.png"]
    again = cluster(unet_dir, digits_csv, out, "--num_clusters", "5", "--examples_per_cluster", "1",
                    "--overwrite_output_dir")  # fmt: skip
    assert sorted(path.name for path in out.glob("cluster_examples_*.png")) == again["files"][3:] == [
        "cluster_examples_1.png"
    ]


def test_no_progress_bar_keeps_bars_out_of_a_clusters_log_as_predicts(
    digits_csv, unet_dir, tmp_path, capfd, monkeypatch
):
    """QA: cluster had no --no_progress_bar (predict has), so a nohup or cron log filled with its bars' redraws."""
    import tqdm.auto

    class Shown(tqdm.auto.tqdm):  # as where TQDM_DISABLE is unset (this suite sets it; tqdm reads it when imported)
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **{"disable": False, **kwargs})

    monkeypatch.setattr(tqdm.auto, "tqdm", Shown)
    cluster(unet_dir, digits_csv, tmp_path / "shown", "--num_clusters", "5", "--examples_per_cluster", "1")
    assert "%|" in capfd.readouterr().err
    cluster(unet_dir, digits_csv, tmp_path / "quiet", "--num_clusters", "5", "--examples_per_cluster", "1",
            "--no_progress_bar")  # fmt: skip
    assert "%|" not in capfd.readouterr().err


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


def test_an_overwrite_stopped_before_its_report_keeps_the_earlier_one_whole(digits_csv, unet_dir, tmp_path, monkeypatch):
    """Review: a run over an earlier one, stopped after clusters.csv, left the earlier metrics.json beside it; then
    (QA, session 60) it left the new clusters.csv alone, the earlier result lost: now the earlier result stays."""
    from diffusion_classifiers import DiffusionClassifierPipeline
    from diffusion_classifiers.prediction import clustering, cluster_files, list_inputs

    pipe, inputs, out = DiffusionClassifierPipeline.from_pretrained(unet_dir), list_inputs(digits_csv), tmp_path / "out"
    cluster_files(pipe, inputs, out, 3, progress_bar=False, selection_images=60)
    earlier = {path.name: path.read_bytes() for path in out.iterdir() if path.is_file()}

    def stopped(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(clustering, "_write_examples", stopped)  # after the new clusters.csv
    with pytest.raises(KeyboardInterrupt):
        cluster_files(pipe, inputs, out, 4, progress_bar=False, selection_images=60, overwrite=True)
    assert {path.name: path.read_bytes() for path in out.iterdir()} == earlier


def test_numpy_numbers_for_k_and_the_seed_give_a_json_report(tmp_path):
    """Review: candidate K as a numpy array failed on "the truth value of an array ... is ambiguous", a numpy K was
    refused as "expected K >= 2, got np.int64(3)", and a numpy seed broke metrics.json after clusters.csv was
    written."""
    from diffusion_classifiers.prediction import cluster_files
    from diffusion_classifiers.prediction.clustering import ClusterRequest

    from .test_rc_dit import tiny_pipeline

    checked = ClusterRequest(np.int64(3), np.array([4, 3])).checked()
    assert [checked.num_clusters, *checked.candidate_num_clusters] == [3, 3, 4]
    assert all(type(k) is int for k in [checked.num_clusters, *checked.candidate_num_clusters])
    metrics = cluster_files(
        tiny_pipeline(), multi_frame_inputs(20, 1), tmp_path / "out", np.int64(3),
        candidate_num_clusters=np.array([3, 4]), seed=np.int64(0), progress_bar=False,
    )  # fmt: skip
    assert json.loads((tmp_path / "out" / "metrics.json").read_text()) == metrics
    assert set(metrics["selection"]["silhouette_by_num_clusters"]) == {"3", "4"}
    assert type(metrics["num_clusters"]) is int and type(metrics["seed"]) is int


def multi_frame_inputs(num_files, num_frames, readable_times=None):
    """Files of `num_frames` digits each, as a multi-frame DICOM reads; unreadable after `readable_times` reads."""
    from diffusion_classifiers.prediction.inputs import PredictionInput

    digits = load_digits().images
    reads = {}

    def read(i):
        reads[i] = reads.get(i, 0) + 1
        if readable_times is not None and reads[i] > readable_times:
            raise OSError(f"file{i}.dcm: gone")
        frames = digits[i * num_frames : (i + 1) * num_frames]
        return [Image.fromarray((frame / 16 * 255).astype(np.uint8)).resize((16, 16)) for frame in frames]

    return [PredictionInput(f"file{i}.dcm", read=lambda i=i: read(i)) for i in range(num_files)]


def test_multi_frame_files_give_a_row_per_frame_and_the_choice_scores_at_most_selection_images(unet_dir, tmp_path):
    """Review: every frame of the sampled files was scored (every candidate's k-means and silhouette): 2,000 sampled
    CT volumes of 200 frames would be 400,000 images, not the --selection_images the choice is said to cost."""
    from diffusion_classifiers import DiffusionClassifierPipeline
    from diffusion_classifiers.prediction import cluster_files

    pipe = DiffusionClassifierPipeline.from_pretrained(unet_dir)
    metrics = cluster_files(pipe, multi_frame_inputs(30, 3), tmp_path / "out", 3, selection_images=20,
                            examples_per_cluster=2, progress_bar=False)  # fmt: skip
    assert metrics["selection"]["num_images"] == 20 and metrics["num_images"] == 90
    rows = read_rows(tmp_path / "out" / "clusters.csv")
    assert [(row["path"], row["frame"]) for row in rows[:4]] == [
        ("file0.dcm", "0"), ("file0.dcm", "1"), ("file0.dcm", "2"), ("file1.dcm", "0")
    ]
    assert metrics["files"][3:] == ["cluster_examples_1.png"]


def test_files_unreadable_by_the_time_every_file_is_read_are_refused_naming_one(unet_dir, tmp_path):
    """Review: files the sample read and that were gone when every file was read failed with a bare KeyError."""
    from diffusion_classifiers import DiffusionClassifierPipeline
    from diffusion_classifiers.prediction import cluster_files

    pipe = DiffusionClassifierPipeline.from_pretrained(unet_dir)
    with pytest.raises(ValueError, match=r"inputs: 0 images of the 8 files could be read \(first unreadable: "
                                         r"file0.dcm: file0.dcm: gone\); expected at least K = 3"):  # fmt: skip
        cluster_files(pipe, multi_frame_inputs(8, 1, readable_times=1), tmp_path / "out", 3, progress_bar=False)
    assert not (tmp_path / "out" / "clusters.csv").exists()


def test_features_of_every_file_are_gathered_in_one_array_that_holds_no_batch(unet_dir):
    """QA: each batch's features were kept as a small array viewing its tensor until the end; these pinned the
    allocator's heap between the decoding's buffers, and a 149,430-file folder grew the process by 1,040 MB (7 KB a
    file; 40,000 files: +436 MB, +38 MB in one array). The rows (more than the files: 3 frames each) are the
    batches' in order, and no batch's tensor outlives the next batch."""
    import weakref

    import torch

    from diffusion_classifiers import DiffusionClassifierPipeline
    from diffusion_classifiers.prediction.clustering import _extracted

    batches, copies, earlier_batches_alive = [], [], []

    def extract(images):
        earlier_batches_alive.append(sum(batch() is not None for batch in batches))
        features = np.random.default_rng(len(copies)).normal(size=(len(images), 4)).astype(np.float32)
        batches.append(weakref.ref(features))  # alive while any view of the tensor sharing its memory is
        copies.append(features.copy())
        return {("block", 10): torch.from_numpy(features)}

    pipe, rows = DiffusionClassifierPipeline.from_pretrained(unet_dir), []
    gathered = _extracted(pipe, multi_frame_inputs(7, 3), 4, extract, [], rows, progress_bar=False)[("block", 10)]
    assert gathered.dtype == np.float32 and len(gathered) == len(rows) == 21 and len(batches) > 1
    np.testing.assert_array_equal(gathered, np.concatenate(copies))
    assert max(earlier_batches_alive) <= 1  # the last batch's, while the next is extracted


def test_kmeans_grouping_assigns_a_large_folder_a_chunk_at_a_time(monkeypatch):
    """Review: assign made two float64 copies of every row at once (GBs for hundreds of thousands of images)."""
    import tracemalloc

    from diffusion_classifiers.probing import protocols

    x = np.random.default_rng(0).normal(size=(100_000, 64)).astype(np.float32)
    grouping = KMeansGrouping(10, "pca_whiten", seed=0).fit(x[:2000])
    tracemalloc.start()
    clusters, distances = grouping.assign(x)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < x.nbytes  # one float64 copy is 2 x x.nbytes
    monkeypatch.setattr(protocols, "ASSIGN_CHUNK_ROWS", 7)
    small_chunks = grouping.assign(x[:100])
    np.testing.assert_array_equal(small_chunks[0], clusters[:100])
    np.testing.assert_allclose(small_chunks[1], distances[:100], rtol=1e-12)
    x[50, 3] = np.nan
    with pytest.raises(ValueError, match=r"features row 50 contains NaN or inf"):
        grouping.assign(x[:100])


def test_ctrl_c_ends_cluster_with_one_line_and_status_130(digits_csv, unet_dir, tmp_path, monkeypatch, capsys):
    """QA: Ctrl-C printed a KeyboardInterrupt traceback, where predict says in one line what is kept."""
    from diffusion_classifiers.prediction import clustering

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(clustering, "cluster_files", interrupted)
    with pytest.raises(SystemExit) as exited:
        cluster(unet_dir, digits_csv, tmp_path / "out", "--num_clusters", "5")
    assert exited.value.code == 130
    assert "cluster: interrupted; " in capsys.readouterr().err and not (tmp_path / "out" / ".run.lock").exists()


def test_a_saved_datasetdicts_split_is_said_and_recorded(unet_dir, tmp_path, capsys):
    """QA: cluster grouped a DatasetDict's test split without a word of it, and metrics.json named no split (predict
    says and records it); `--split val` was refused for the "validation" split that evaluate reads as val."""
    from diffusion_classifiers.data import load_image_classification_data, to_datasets

    to_datasets(load_image_classification_data("digits", image_size=16)).save_to_disk(str(tmp_path / "digits"))
    metrics = cluster(unet_dir, tmp_path / "digits", tmp_path / "out", "--num_clusters", "5", "--split", "val")
    assert f"{tmp_path / 'digits'}: the 'val' split of a saved DatasetDict" in capsys.readouterr().out
    assert metrics["split"] == "val" and metrics["num_inputs"] == 145  # the val split, read as "validation"


def test_inputs_with_columns_clusters_csv_writes_are_refused_before_loading_the_model(
    digits_csv, unet_dir, tmp_path, monkeypatch
):
    """QA: a clusters.csv given back as input (path, frame, cluster, distance) was written with two `cluster`, `frame`
    and `distance` columns, which pandas read as the earlier run's."""
    from diffusion_classifiers.pipelines import DiffusionClassifierPipeline

    again = tmp_path / "again.csv"
    with open(again, "w", newline="") as handle:
        rows = read_rows(digits_csv)
        csv.writer(handle).writerows([["path", "cluster", "distance"]] + [
            [str(digits_csv.parent / row["path"]), i % 4, "0.5"] for i, row in enumerate(rows)
        ])  # fmt: skip
    monkeypatch.setattr(DiffusionClassifierPipeline, "from_pretrained", pytest.fail)
    with pytest.raises(ValueError, match=r"column\(s\) \['cluster', 'distance'\] are named as columns clusters.csv"):
        cluster(unet_dir, again, tmp_path / "out", "--num_clusters", "5")


def test_an_output_dir_inside_the_folder_clustered_is_refused(unet_dir, tmp_path, monkeypatch):
    """QA: a rerun read its own example figure as an image of the pool (601 of 600) and chose another feature."""
    from diffusion_classifiers.pipelines import DiffusionClassifierPipeline

    pool = tmp_path / "pool"
    pool.mkdir()
    for i in range(12):
        Image.fromarray(np.full((16, 16), 20 * i, np.uint8)).save(pool / f"{i}.png")
    monkeypatch.setattr(DiffusionClassifierPipeline, "from_pretrained", pytest.fail)
    with pytest.raises(ValueError, match=r"--output_dir .*_clusters: inside the input folder"):
        cluster(unet_dir, pool, pool / "_clusters", "--num_clusters", "2")
    assert not (pool / "_clusters").exists()


def test_cluster_files_refuses_inputs_inside_its_output_dir(digits_csv, unet_dir, tmp_path):
    from diffusion_classifiers.pipelines import DiffusionClassifierPipeline
    from diffusion_classifiers.prediction import list_inputs
    from diffusion_classifiers.prediction.clustering import cluster_files

    inputs = list_inputs(str(digits_csv.parent / "images"))
    with pytest.raises(ValueError, match=r"images/000.png is inside output_dir .*; expected inputs outside it"):
        cluster_files(DiffusionClassifierPipeline.from_pretrained(unet_dir), inputs, digits_csv.parent, 2)


def test_the_same_files_listed_in_another_order_are_grouped_alike(digits_csv, unet_dir, tmp_path):
    """QA (session 58, a determinism auditor): the same 60 files in a CSV and in the CSV reversed chose another
    feature and K, and grouped them otherwise (ARI 0.41): the sample and the k-means fit follow the paths' order."""
    with open(digits_csv, newline="") as handle:
        header, *listed = list(csv.reader(handle))
    reversed_csv = digits_csv.with_name("reversed.csv")
    with open(reversed_csv, "w", newline="") as handle:
        csv.writer(handle).writerows([header, *listed[::-1]])
    flags = ("--num_clusters", "3", "--candidate_num_clusters", "3", "4", "--selection_images", "40", "--fit_images",
             "50", "--examples_per_cluster", "1")  # fmt: skip
    runs = [cluster(unet_dir, listing, tmp_path / name, *flags) for name, listing in (("a", digits_csv),
                                                                                      ("b", reversed_csv))]  # fmt: skip
    assert runs[0]["selection"] == runs[1]["selection"] and runs[0]["cluster_sizes"] == runs[1]["cluster_sizes"]
    groups = [{row["path"]: row["cluster"] for row in read_rows(tmp_path / name / "clusters.csv")} for name in "ab"]
    assert groups[0] == groups[1]
    assert [row["path"] for row in read_rows(tmp_path / "b" / "clusters.csv")][0] == listed[-1][0]  # input order


def test_a_unet_saved_alone_is_named_as_such_with_how_to_make_it_a_pipeline(digits_csv, tmp_path):
    """QA (session 58): a `unet.save_pretrained` folder was called "a transformers model folder", and cluster's
    message said "predict reads a pipeline folder"."""
    small_unet(16).save_pretrained(tmp_path / "unet_only")
    with pytest.raises(ValueError, match=r"unet_only holds a diffusers UNet2DModel saved alone .*UNetFeature"):
        cluster(tmp_path / "unet_only", digits_csv, tmp_path / "out", "--num_clusters", "3")
    with pytest.raises(FileNotFoundError, match=r"holds a diffusers UNet2DModel saved alone"):
        UNetFeatureClassifierPipeline.from_pretrained(tmp_path / "unet_only")
    # from Python, with a parser of the caller's own (no `command`: second read, an AttributeError came first)
    import argparse

    from diffusion_classifiers.prediction import add_cluster_args, add_predict_args, run_cluster, run_predict

    for add_args, run in ((add_cluster_args, run_cluster), (add_predict_args, run_predict)):
        parser = argparse.ArgumentParser()
        add_args(parser)
        output = ["--output", str(tmp_path / "p.csv")] if run is run_predict else ["--output_dir", str(tmp_path / "o"),
                                                                                   "--num_clusters", "3"]  # fmt: skip
        args = parser.parse_args(["--model_dir", str(tmp_path / "unet_only"), "--input", str(digits_csv), *output])
        with pytest.raises(ValueError, match="saved alone"):
            run(args)


def test_cluster_reads_a_diffusers_ddpm_pipeline_folder(digits_csv, tmp_path):
    """QA (session 58): `probe --unet_dir` read a `DDPMPipeline` folder, `cluster --model_dir` refused it."""
    from diffusers import DDPMPipeline

    DDPMPipeline(unet=small_unet(16), scheduler=DDPMScheduler()).save_pretrained(tmp_path / "ddpm")
    metrics = cluster(tmp_path / "ddpm", digits_csv, tmp_path / "out", "--num_clusters", "3", "--examples_per_cluster",
                      "1")  # fmt: skip
    assert metrics["num_clusters"] == 3 and sum(metrics["cluster_sizes"]) == NUM_IMAGES


def test_a_folders_or_datasets_own_listing_order_is_kept(tmp_path):
    """Second read (session 58): rows of a saved dataset are named "0".."11" ("10" sorts before "2") and a non-UTF-8
    name is escaped: only a CSV's rows, whose order is the user's, are put in the order of their paths."""
    from diffusion_classifiers.prediction.clustering import _by_path
    from diffusion_classifiers.prediction.inputs import PredictionInput

    rows = [PredictionInput(str(i), None) for i in range(12)]
    assert _by_path(rows) == list(range(12))
    listed = [PredictionInput(name, None, listed_in=tmp_path / "list.csv") for name in ("b/1.png", "a/2.png", "a.png")]
    assert _by_path(listed) == [1, 2, 0]  # a/2.png, a.png, b/1.png: as a folder lists them (folder "a" first)
    assert [path.name for path in sorted([tmp_path / "b/1.png", tmp_path / "a/2.png", tmp_path / "a.png"])] == [
        "2.png", "a.png", "1.png"
    ]  # what `sorted` of the folder's paths gives


def test_a_csv_labelling_some_of_its_images_scores_the_clusters_on_those():
    """QA (an ecologist labelling a few dozen images later): a CSV with labels on some rows got no score, silently."""
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

    from diffusion_classifiers.prediction.clustering import _labelled_share, _scored_against_labels

    labels = ["a", None, "b", "a", None, "b", "c", "c"]
    clusters = np.array([0, 1, 1, 0, 2, 1, 2, 2])
    scored = _scored_against_labels(labels, clusters)
    labelled = [row for row, label in enumerate(labels) if label is not None]
    true = [labels[row] for row in labelled]
    assert (scored["num_labelled"], scored["num_rows"], scored["num_classes"]) == (6, 8, 3)
    assert scored["nmi"] == pytest.approx(normalized_mutual_info_score(true, clusters[labelled]))
    assert scored["ari"] == pytest.approx(adjusted_rand_score(true, clusters[labelled]))
    assert scored["accuracy"] == scored["purity"] == 1.0
    assert _labelled_share(scored) == ", the 6 of 8 rows labelled"
    assert _labelled_share(_scored_against_labels(["a", "b"], np.array([0, 1]))) == ""


def test_empty_clusters_are_said():
    """QA: 3 distinct images stored 4 times each, K = 4, read "4 clusters (0-4 images each)", the library silent."""
    from diffusion_classifiers.prediction.clustering import _warn_empty_clusters

    with pytest.warns(UserWarning, match=r"^cluster: 1 of the 4 clusters hold no image \(clusters \[3\]\)"):
        _warn_empty_clusters([4, 4, 4, 0])


def test_new_images_are_assigned_to_an_earlier_runs_clusters(digits_csv, unet_dir, tmp_path):
    """QA (an ecologist): a season clustered, next month's images could not join the same groups (re-clustering a
    grown folder kept 20.7% of the cluster ids). `--assign_to` reads the earlier run's feature, normalisation and
    centres: the earlier run's own files come back in their clusters, at their distances."""
    earlier = cluster(unet_dir, digits_csv, tmp_path / "season", "--num_clusters", "6", "--fit_images", "80")
    assert (tmp_path / "season" / "grouping.safetensors").is_file() and "grouping.safetensors" in earlier["files"]
    month = ["cluster", "--model_dir", str(unet_dir), "--input", str(digits_csv), "--output_dir",
             str(tmp_path / "month")]  # fmt: skip
    main(month + ["--assign_to", str(tmp_path / "season")])
    assigned = json.loads((tmp_path / "month" / "metrics.json").read_text())
    assert assigned["assigned_to"] == str((tmp_path / "season").resolve())
    assert (assigned["feature"], assigned["normalization"], assigned["num_clusters"]) == (
        earlier["feature"], earlier["normalization"], earlier["num_clusters"]
    )
    before, after = read_rows(tmp_path / "season" / "clusters.csv"), read_rows(tmp_path / "month" / "clusters.csv")
    assert [row["cluster"] for row in after] == [row["cluster"] for row in before]
    assert [float(row["distance"]) for row in after] == pytest.approx([float(r["distance"]) for r in before], abs=2e-6)
    assert "with_true_labels" in assigned  # the CSV's labels score the assignment too
    with pytest.raises(ValueError, match=r"--assign_to .*season: takes the earlier run's feature, normalisation and "
                                         r"clusters; expected none of --num_clusters"):  # fmt: skip
        main(month + ["--assign_to", str(tmp_path / "season"), "--num_clusters", "6", "--overwrite_output_dir"])
    with pytest.raises(ValueError, match=r"expected none of --pool, --fit_images, --seed$"):  # review: recorded, unused
        main(month + ["--assign_to", str(tmp_path / "season"), "--pool", "mean", "--fit_images", "5", "--seed", "9"])
    with pytest.raises(ValueError, match=r"output_dir .*season: the earlier run's own folder \(assign_to\); expected"):
        main(month[:-1] + [str(tmp_path / "season"), "--assign_to", str(tmp_path / "season"), "--overwrite_output_dir"])
    with pytest.raises(ValueError, match=r"assign_to .*: expected the output folder of a `cluster` run, holding "
                                         r"grouping.safetensors"):  # fmt: skip
        main(month + ["--assign_to", str(tmp_path), "--overwrite_output_dir"])
    # an assignment written over another cluster run's folder leaves no grouping of that run (review: a later
    # --assign_to it read the clusters of the run replaced)
    cluster(unet_dir, digits_csv, tmp_path / "again", "--num_clusters", "4", "--fit_images", "80")
    main(month[:-1] + [str(tmp_path / "again"), "--assign_to", str(tmp_path / "season"), "--overwrite_output_dir"])
    assert not (tmp_path / "again" / "grouping.safetensors").exists()
    with pytest.raises(ValueError, match=r"holding grouping.safetensors \(it assigned to .*season: give that one\)"):
        main(month + ["--assign_to", str(tmp_path / "again"), "--overwrite_output_dir"])
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "grouping.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match=r"broken/grouping.safetensors: expected a grouping KMeansGrouping.save wrote"):
        main(month + ["--assign_to", str(tmp_path / "broken"), "--overwrite_output_dir"])
    other = tmp_path / "other_unet"
    unet = small_unet(16)
    unet.conv_in.bias.data += 1.0  # another model: other weights
    UNetFeatureClassifierPipeline(unet=unet, scheduler=DDPMScheduler()).save_pretrained(other)
    with pytest.raises(ValueError, match=r"its clusters group the features of a model whose sha256 of what its "
                                         r"features depend on is .*; this model's is"):  # fmt: skip
        main(["cluster", "--model_dir", str(other), "--input", str(digits_csv), "--output_dir", str(tmp_path / "o"),
              "--assign_to", str(tmp_path / "season")])  # fmt: skip
    # QA (another site): a head fitted anew on the same U-Net (probe --unet_dir) groups by the same features; its
    # saved unet/config.json names the folder the U-Net was loaded from
    probed = UNetFeatureClassifierPipeline.from_pretrained(unet_dir)
    probed.register_modules(head=LinearProbeHead(16, 2))
    probed.save_pretrained(tmp_path / "probed")
    config_path = tmp_path / "probed" / "unet" / "config.json"
    config = json.loads(config_path.read_text())
    assert "_name_or_path" not in config  # the folder the U-Net was loaded from: saved no more (QA, Hub publisher)
    config_path.write_text(json.dumps({**config, "_name_or_path": str(unet_dir / "unet")}))  # as earlier versions saved
    main(["cluster", "--model_dir", str(tmp_path / "probed"), "--input", str(digits_csv), "--output_dir",
          str(tmp_path / "probed_month"), "--assign_to", str(tmp_path / "season")])  # fmt: skip
    assigned, season = (json.loads((tmp_path / name / "metrics.json").read_text()) for name in ("probed_month",
                                                                                                 "season"))
    assert assigned["features_sha256"] == season["features_sha256"] != None  # noqa: E711


@pytest.mark.parametrize("normalization", ["standardize", "l2", "pca_whiten", "none"])
def test_a_saved_grouping_assigns_as_the_fitted_one(normalization, tmp_path):
    x = load_digits().data
    grouping = KMeansGrouping(10, normalization, seed=0).fit(x[:400])
    grouping.save(tmp_path / "g.safetensors", {"feature_key": "[\"mid_block\", 25]"})
    loaded, metadata = KMeansGrouping.load(tmp_path / "g.safetensors")
    assert metadata["feature_key"] == "[\"mid_block\", 25]" and metadata["normalization"] == normalization
    (clusters, distances), (again, again_distances) = grouping.assign(x), loaded.assign(x)
    np.testing.assert_array_equal(again, clusters)
    np.testing.assert_allclose(again_distances, distances, rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match=r"save: fit it first"):
        KMeansGrouping(3).save(tmp_path / "unfitted.safetensors")


def test_clusters_csv_names_each_dicom_images_patient_study_and_series(unet_dir, tmp_path):
    """QA (a mammography group): clusters.csv held path, frame, cluster and distance only, so clusters could not be
    summarised per patient or breast without a join; it holds predict's DICOM id columns, a CSV's cell taking the
    place of the header's id as in predict."""
    import pydicom

    cq500 = shared_data("cq500_dicom_sample")
    files = sorted(cq500.glob("*/*.dcm"))[:12]
    with open(tmp_path / "scans.csv", "w", newline="") as handle:
        rows = [[str(file), "", "P9" if i == 0 else ""] for i, file in enumerate(files)]
        csv.writer(handle).writerows([["path", "label", "patient_id"], *rows])
    cluster(unet_dir, tmp_path / "scans.csv", tmp_path / "out", "--num_clusters", "2")
    clustered = read_rows(tmp_path / "out" / "clusters.csv")
    assert list(clustered[0])[:8] == ["path", "frame", "patient_id", "study_uid", "series_uid", "laterality",
                                      "view_position", "sop_instance_uid"]  # fmt: skip
    for row, file in zip(clustered, files):
        header = pydicom.dcmread(file, stop_before_pixels=True)
        assert (row["study_uid"], row["series_uid"]) == (header.StudyInstanceUID, header.SeriesInstanceUID)
        assert row["patient_id"] == ("P9" if file == files[0] else header.PatientID)
