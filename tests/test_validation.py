import numpy as np
import pytest
import torch

from diffusion_classifiers.validation import (
    first_and_more,
    as_feature_matrix,
    as_inverse_regularisations,
    as_labels,
    check_finite_rows,
    check_label_range,
    check_unit_range,
    removed_if_left_empty,
    resolve_num_classes,
)


def test_check_finite_rows_names_the_first_bad_item():
    x = torch.zeros(5, 3, 2)
    x[3, 1, 0], x[4, 0, 0] = float("inf"), float("nan")
    with pytest.raises(ValueError, match="^features row 3 contains NaN or inf$"):
        check_finite_rows(x, "features")
    with pytest.raises(ValueError, match="^batch image 13 contains NaN or inf$"):
        check_finite_rows(x.numpy(), "batch", item="image", start=10)
    with pytest.raises(ValueError, match="^scores row 1 contains NaN or inf$"):
        check_finite_rows(np.array([0.0, np.nan]), "scores")
    check_finite_rows(torch.zeros(0, 4), "empty")  # nothing to check
    check_finite_rows(np.arange(6).reshape(3, 2), "integers")


def test_as_feature_matrix():
    x = as_feature_matrix(np.arange(6, dtype=np.float64).reshape(3, 2), "train_features", 3)
    assert x.dtype == torch.float32 and x.tolist() == [[0, 1], [2, 3], [4, 5]]
    with pytest.raises(ValueError, match=r"expected train_features of shape \[4, D\], one row per label, got \(3, 2\)"):
        as_feature_matrix(x, "train_features", 4)
    with pytest.raises(ValueError, match=r"expected f of shape \[N, D\], one row per label, got \(6,\)"):
        as_feature_matrix(torch.zeros(6), "f")
    with pytest.raises(ValueError, match="f row 1 contains NaN or inf"):
        as_feature_matrix([[0.0], [1e300]], "f")  # finite in float64, inf in float32


def test_label_checks():
    assert as_labels(torch.tensor([1.0, 0.0]), "y").tolist() == [1, 0]
    with pytest.raises(ValueError, match="expected integer labels in y, got dtype float64"):
        as_labels([0.5, 1.0], "y")
    with pytest.raises(ValueError, match=r"y\[2\] = 3 is outside the expected range \[0, 2\]"):
        check_label_range(np.array([0, 1, 3]), "y", 3)
    assert resolve_num_classes(None, None, np.array([0, 4])) == 5
    with pytest.raises(ValueError, match="expected 3 class_names, got 2"):
        resolve_num_classes(3, ["a", "b"])
    with pytest.raises(ValueError, match=r"images: image 1 has values in \[0, 255\]; expected images scaled to \[-1, 1\]"):
        check_unit_range(torch.stack([torch.zeros(2, 2), torch.tensor([[0.0, 255.0], [1.0, 2.0]])]))


@pytest.mark.parametrize(
    "C, expected",
    [
        (2, (2.0,)),
        (np.float32(0.5), (0.5,)),
        ([1, 1.0, 0.1], (1.0, 0.1)),  # repeats dropped, the order kept
        (np.logspace(-1, 1, 3), (0.1, 1.0, 10.0)),
        (torch.tensor([0.5, 2.0]), (0.5, 2.0)),
        (range(1, 3), (1.0, 2.0)),
        (torch.tensor(4.0), (4.0,)),
    ],
)
def test_inverse_regularisations_take_a_number_or_any_1d_sequence(C, expected):
    assert as_inverse_regularisations(C) == expected


@pytest.mark.parametrize(
    "C, shown",
    [(0.0, "0.0"), ([], r"\[\]"), ([1.0, float("nan")], r"\[1.0, nan\]"), ("1", "'1'"), (True, "True"),
     (np.ones((2, 2)), "array"), ({1.0}, r"\{1.0\}"), ([1, [2]], r"\[1, \[2\]\]"), (None, "None")],
)
def test_inverse_regularisations_refuse_anything_else_naming_the_input(C, shown):
    expected = rf"^expected --C as a number or a non-empty sequence of numbers with 0 < C < inf, got --C={shown}"
    with pytest.raises(ValueError, match=expected):
        as_inverse_regularisations(C, "--C")


def test_a_failed_block_removes_the_empty_folders_it_may_have_created_and_no_other(tmp_path):
    (tmp_path / "kept").mkdir()
    for path in (tmp_path / "new" / "a" / "b", tmp_path / "kept" / "c"):  # --output_dir new/a/b leaves no new/a
        with pytest.raises(RuntimeError), removed_if_left_empty(path):
            path.mkdir(parents=True)
            raise RuntimeError("refused")
        assert not (tmp_path / "new").exists() and (tmp_path / "kept").is_dir() and not path.exists()
    with pytest.raises(RuntimeError), removed_if_left_empty(tmp_path / "new" / "d"):
        (tmp_path / "new" / "d").mkdir(parents=True)
        (tmp_path / "new" / "note.txt").write_text("written")  # a folder holding a file stays, with its path
        raise RuntimeError("refused")
    assert (tmp_path / "new" / "note.txt").is_file() and not (tmp_path / "new" / "d").exists()


@pytest.mark.parametrize(
    "texts, separator, expected",
    [
        (["a", "b"], ", ", "a, b"),
        (["a", "b", "c", "d"], ", ", "a, b and 2 more"),
        (["x: bad, truncated", "y: bad", "z: bad"], "; ", "x: bad, truncated; y: bad; and 1 more"),
    ],
)
def test_a_long_list_in_a_message_names_its_first_items_and_counts_the_rest(texts, separator, expected):
    assert first_and_more(texts, 2, separator=separator) == expected
