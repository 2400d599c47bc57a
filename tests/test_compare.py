"""`lrtransfer compare`: several results directories side by side, checked on synthetic
directories whose optima are known exactly (parabolas in log2 LR)."""
import json

import pytest

from conftest import invoke
from lrtransfer.analysis import compare
from lrtransfer.report import compare as compare_report
from lrtransfer import plots
from lrtransfer.results.store import write_table
from test_analysis import GRID, table


def _dir(root, centres, series="adam"):
    root.mkdir(parents=True)
    write_table(table(centres, {32: 1.0, 128: 0.5, 512: 0.25}, GRID, series=series), root / "runs.parquet")
    return root


@pytest.fixture
def two(tmp_path):
    a = _dir(tmp_path / "before", {32: -2, 128: -4, 512: -5})
    b = _dir(tmp_path / "after", {32: -2, 128: -3, 512: -3})
    return a, b


def test_compare_puts_known_optima_and_their_shifts_side_by_side(two):
    scales, verdicts = compare.compare(compare.load(list(two)))
    after = scales[scales["results"] == "after"].set_index("scale")
    assert list(after["opt_log2_lr_fit"]) == pytest.approx([-2, -3, -3])
    assert list(after["shift"]) == pytest.approx([0, 1, 2])      # the change wants larger LRs at width
    before = scales[scales["results"] == "before"]
    assert list(before["shift"]) == pytest.approx([0, 0, 0])
    drift = verdicts.set_index("results")["drift"]
    assert drift["before"] == pytest.approx(-3) and drift["after"] == pytest.approx(-1)
    text = compare_report.markdown(scales, verdicts)
    assert "| adam | width=512 | after | -3.00 [" in text and "| +2.00 |" in text


def test_compare_cli_tables_figure_and_bad_input(two, tmp_path):
    a, b = two
    r = invoke("compare", a, b, "--format", "json", "--out", tmp_path / "c.svg")
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert {v["results"] for v in doc["verdicts"]} == {"before", "after"} and len(doc["scales"]) == 6
    assert (tmp_path / "c.svg").exists()
    r = invoke("compare", a)
    assert r.exit_code == 2 and "at least two" in r.output
    r = invoke("compare", a, tmp_path / "nowhere")
    assert r.exit_code == 2 and "nowhere" in r.output
    r = invoke("compare", a, b, "--out", tmp_path / "c.bmp")
    assert r.exit_code == 2 and not (tmp_path / "c.bmp").exists()


def test_compare_figure_overlays_one_line_per_directory_and_scale(two):
    fig = plots.compare_curves(compare.load(list(two)))
    lines = [ln for ln in fig.axes[0].get_lines() if not ln.get_label().startswith("_")]
    assert sorted(ln.get_label() for ln in lines) == sorted(
        f"{d}: width={w}" for d in ("before", "after") for w in (32, 128, 512))
    assert {ln.get_linestyle() for ln in lines} == {"-", "--"}


def test_same_named_directories_get_longer_labels(tmp_path):
    assert compare.labels([tmp_path / "x" / "res", tmp_path / "y" / "res"]) == ["x/res", "y/res"]


def test_status_of_results_without_a_queue_counts_the_recorded_runs(two):
    a, _ = two
    r = invoke("status", a, "--format", "json")
    assert r.exit_code == 0, r.output
    st = json.loads(r.output)
    assert st["totals"] == {"waiting": 0, "running": 0, "done": 81, "diverged": 0, "failed": 0}
    assert "recorded runs" in st["storage"] and not (a / "queue.journal").exists()
    r = invoke("status", a)
    total = next(line for line in r.stdout.splitlines() if "total" in line)
    assert [int(cell) for cell in total.replace("│", " ").split()[1:]] == [0, 0, 81, 0, 0]
    assert "eta: nothing left" in r.stdout and "waiting" in r.stdout.splitlines()[2]


def test_compare_test_acc_puts_the_maxima_side_by_side(tmp_path):
    from test_analysis import accuracy_table
    a, b = tmp_path / "a", tmp_path / "b"
    for root, shift in ((a, 0), (b, 1)):
        root.mkdir()
        runs = accuracy_table()
        # directory b: every accuracy curve one octave to the right (maxima at 2^-1, 2^-2, 2^-3)
        write_table(runs.assign(lr=runs["lr"] * 2 ** shift), root / "runs.parquet")
    scales, verdicts = compare.compare(compare.load([a, b]), metric="test_acc", n_boot=50)
    got = scales.set_index(["results", "scale"])
    assert list(got.loc["a", "opt_log2_lr_fit"]) == pytest.approx([-2, -3, -4])
    assert list(got.loc["b", "shift"]) == pytest.approx([1, 1, 1])
    assert list(got.loc["b", "best_loss"]) == pytest.approx([0.9, 0.89, 0.88])
    assert "best seed-mean test acc" in compare_report.markdown(scales, verdicts, metric="test_acc")
