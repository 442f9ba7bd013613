"""Tests of eofm.eval.robustness against hand-computed values on small examples."""

import json
import math

import pytest

from eofm.eval import robustness

# Severities 4 and 5 of gaussian_noise and 2, 4, 5 of rotate are missing.
CELLS = {"gaussian_noise": {1: 0.8, 2: 0.7, 3: 0.6}, "rotate": {1: 0.85, 3: 0.75}}


def test_summarize_hand_computed():
    out = robustness.summarize(0.9, CELLS)
    # Means per corruption: (0.8 + 0.7 + 0.6) / 3 = 0.7 and (0.85 + 0.75) / 2 = 0.8.
    assert out["per_corruption"] == pytest.approx({"gaussian_noise": 0.7, "rotate": 0.8})
    # Each corruption weighs the same: (0.7 + 0.8) / 2 = 0.75, not the mean of the 5 cells (0.74).
    assert out["mean_corrupted"] == pytest.approx(0.75)
    assert out["abs_drop"] == pytest.approx(0.15)
    assert out["rel_drop"] == pytest.approx(0.15 / 0.9)
    assert out["per_corruption_abs_drop"] == pytest.approx({"gaussian_noise": 0.2, "rotate": 0.1})
    assert out["per_corruption_rel_drop"] == pytest.approx(
        {"gaussian_noise": 0.2 / 0.9, "rotate": 0.1 / 0.9}
    )
    assert out["worst"] == "gaussian_noise"
    assert out["clean"] == 0.9
    assert out["higher_is_better"] is True
    assert out["cells"] == {
        "gaussian_noise": {"1": 0.8, "2": 0.7, "3": 0.6},
        "rotate": {"1": 0.85, "3": 0.75},
    }


def test_summarize_lower_is_better():
    # An error metric: clean RMSE 2.0; haze means 3.0, scale 2.2, translate 1.8 (better than clean).
    cells = {"haze": {1: 2.5, 2: 3.5}, "scale": {5: 2.2}, "translate": {2: 1.8}}
    out = robustness.summarize(2.0, cells, higher_is_better=False)
    assert out["mean_corrupted"] == pytest.approx(7.0 / 3)
    # Drop = mean corrupted - clean, positive because worse.
    assert out["abs_drop"] == pytest.approx(1.0 / 3)
    assert out["rel_drop"] == pytest.approx(1.0 / 6)
    assert out["per_corruption_abs_drop"] == pytest.approx(
        {"haze": 1.0, "scale": 0.2, "translate": -0.2}
    )
    assert out["per_corruption_rel_drop"] == pytest.approx(
        {"haze": 0.5, "scale": 0.1, "translate": -0.1}
    )
    assert out["worst"] == "haze"
    assert out["higher_is_better"] is False


def test_summarize_json_round_trip_and_zero_clean():
    out = robustness.summarize(0.0, {"haze": {1: 0.0, 2: -0.5}}, higher_is_better=True)
    assert out["rel_drop"] is None and out["per_corruption_rel_drop"] == {"haze": None}
    assert out["abs_drop"] == pytest.approx(0.25)
    # Strict JSON (no NaN), and the string severity keys it writes are accepted back.
    loaded = json.loads(json.dumps(robustness.summarize(0.9, CELLS), allow_nan=False))
    assert robustness.summarize(loaded["clean"], loaded["cells"]) == loaded


@pytest.mark.parametrize(
    ("clean", "cells", "match"),
    [
        (0.9, {}, "empty"),
        (0.9, {"haze": {}}, "haze: no severities"),
        (0.9, {"haze": {0: 0.5}}, "haze: severity 0 is outside"),
        (0.9, {"clouds": {1: 0.5, 6: 0.4}}, "clouds: severity 6 is outside"),
        (0.9, {"haze": {2.0: 0.5}}, "haze: severity 2.0 is not an int"),
        (0.9, {"haze": {True: 0.5}}, "haze: severity True is not an int"),
        (0.9, {"haze": {"one": 0.5}}, "haze: severity 'one' is not an int"),
        (0.9, {"haze": {1: 0.5, "1": 0.4}}, "haze: severity 1 given twice"),
        (0.9, {"haze": {1: 0.5}, "gaps": {3: math.nan}}, r"cells\['gaps'\]\[3\]"),
        (0.9, {"haze": {1: math.inf}}, r"cells\['haze'\]\[1\]"),
        (math.nan, {"haze": {1: 0.5}}, "clean"),
        (0.9, {"haze": {1: None}}, r"cells\['haze'\]\[1\] = None is not a number"),
    ],
)
def test_summarize_rejects(clean, cells, match):
    with pytest.raises(ValueError, match=match):
        robustness.summarize(clean, cells)


def test_markdown_table():
    text = robustness.markdown(robustness.summarize(0.9, CELLS), "OA")
    lines = text.splitlines()
    assert lines[:6] == [
        "| corruption | 1 | 2 | 3 | 4 | 5 | mean OA | abs drop | rel drop |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        "| clean |  |  |  |  |  | 0.900 |  |  |",
        "| gaussian_noise | 0.800 | 0.700 | 0.600 |  |  | 0.700 | 0.200 | 22.2% |",
        "| rotate | 0.850 |  | 0.750 |  |  | 0.800 | 0.100 | 11.1% |",
        "| mean corrupted |  |  |  |  |  | 0.750 | 0.150 | 16.7% |",
    ]
    assert "higher is better" in text


def test_markdown_without_relative_drop():
    text = robustness.markdown(robustness.summarize(0.0, {"haze": {5: 0.1}}), "mIoU")
    assert "| haze |  |  |  |  | 0.100 | 0.100 | -0.100 | n/a |" in text
    assert "| mean corrupted |  |  |  |  |  | 0.100 | -0.100 | n/a |" in text
