"""The published figures beside a run's own: the plugin benchmark's table, and the orders by memory compared."""

from __future__ import annotations

import pytest

from parabench.__main__ import main
from parabench.cases.plugin_benchmark import PLUGINS, points
from parabench.report.published import (
    compare_orders,
    differing_pairs,
    kendall_tau,
    load_published,
    memory_bytes,
    order_text,
    places,
)
from parabench.report.runs import ReportError
from tests.test_report import case_benchmark, read_csv, write_run

PUBLISHED_ORDER = ["torch_ddp", "torch_ddp_fp16", "low_level_zero", "gemini", "hybrid_parallel"]


def test_the_committed_figures_load_as_published():
    published = load_published()
    assert [row.plugin for row in published.rows] == PUBLISHED_ORDER * 2
    at8, at32 = published.at(8), published.at(32)
    assert at8["torch_ddp"].memory == "1.75 GB" and at8["torch_ddp"].memory_bytes == pytest.approx(1.75 * 1024**3)
    assert at8["low_level_zero"].memory_bytes == pytest.approx(696.72 * 1024**2)
    assert at32["torch_ddp_fp16"].samples_per_second == pytest.approx(463.2753)
    assert published.ranks == 4 and published.memory_unit_base == 1024
    # every published plugin is one of the benchmark's cases, on both devices
    assert [plugin.name for plugin in PLUGINS] == PUBLISHED_ORDER
    assert {point.plugin for point in points("cpu")} == {point.plugin for point in points("cuda")} == set(at8)


@pytest.mark.parametrize("text,expected", [("1.75 GB", 1.75 * 1024**3), ("331.88 MB", 331.88 * 1024**2),
                                           ("512 B", 512.0), (" 2 KB ", 2048.0)])
def test_memory_sizes_read_in_the_published_units(text, expected):
    assert memory_bytes(text, 1024) == pytest.approx(expected)


@pytest.mark.parametrize("text", ["1.75", "GB", "1,75 GB", "1.75 GiB"])
def test_a_size_without_a_known_unit_is_refused(text):
    with pytest.raises(ValueError, match="is not a memory size"):
        memory_bytes(text, 1024)


def test_ties_share_their_places_and_a_place_a_tie_leaves_open_agrees():
    theirs = {"a": 3.0, "b": 3.0, "c": 2.0, "d": 1.0}
    assert places(theirs) == {"a": (1, 2), "b": (1, 2), "c": (3, 3), "d": (4, 4)}
    assert order_text(theirs) == "a = b > c > d"
    ours = {"a": 5.0, "b": 6.0, "c": 1.0, "d": 2.0}  # a and b either way round; c and d swapped
    agreement = {p.plugin: p.agrees for p in compare_orders(ours, theirs)}
    assert agreement == {"a": True, "b": True, "c": False, "d": False}
    assert differing_pairs(ours, theirs) == ["c > d published, < here"]
    assert kendall_tau(theirs, theirs) == pytest.approx(1.0)
    assert kendall_tau({"a": 1.0, "b": 2.0, "c": 3.0}, {"a": 3.0, "b": 2.0, "c": 1.0}) == pytest.approx(-1.0)
    # only the plugins both measured are ordered: places among those
    assert {p.plugin: p.ours for p in compare_orders({"c": 1.0, "d": 2.0}, theirs)} == {"c": (2, 2), "d": (1, 1)}


def plugin_benchmark(plugin: str, batch: int, high_water: int) -> dict:
    """A stored case of bench/test_plugin_benchmark.py on CPU whose largest rank's high-water is ``high_water``."""
    point = next(p for p in points("cpu") if p.plugin == plugin and p.batch_per_rank == batch)
    bench = case_benchmark(point.case.strategy, 2, point.case.global_batch, "plugin_benchmark",
                           peak=high_water - 400_000, test="test_plugin")
    case = point.case.to_dict()
    bench["extra_info"].update(case=case, plugin_benchmark={"plugin": plugin, "batch_per_rank": batch})
    bench["name"] = f"test_plugin[{case['id']}]"
    return bench


# High-water of the largest rank (bytes): at batch 8 in the published order; at 32 gemini above hybrid_parallel's, as
# published, but low_level_zero below both, and torch_ddp_fp16 not run.
OURS = {8: {"torch_ddp": 9_000_000, "torch_ddp_fp16": 8_000_000, "low_level_zero": 5_000_000,
            "hybrid_parallel": 4_000_000, "gemini": 3_000_000},
        32: {"torch_ddp": 20_000_000, "low_level_zero": 6_000_000, "gemini": 9_000_000, "hybrid_parallel": 7_000_000}}


def test_the_report_sets_the_published_table_beside_the_runs_and_compares_the_orders(tmp_path):
    benchmarks = [plugin_benchmark(plugin, batch, memory) for batch, ours in OURS.items()
                  for plugin, memory in ours.items()]
    run = write_run(tmp_path / "store" / "m" / "0001_seeds.json", benchmarks)
    out = tmp_path / "out"
    assert main(["report", str(run), "--out", str(out)]) == 0
    markdown = (out / "report.md").read_text()
    assert "## The seeds' plugin benchmark beside the published figures" in markdown
    assert "## Strategies on vit-base-digits" not in markdown  # not a second time as a workload comparison

    at8 = {row["plugin"]: row for row in read_csv(out / "plugin_benchmark_b8.csv")}
    assert list(at8) == PUBLISHED_ORDER
    assert at8["gemini"]["published maximum memory per GPU"] == "331.88 MB"
    assert float(at8["gemini"]["published samples/s"]) == pytest.approx(92.5829)
    assert int(at8["gemini"]["high-water, largest rank (MB)"]) == 3_000_000
    assert at8["gemini"]["case"] == "colossalai-gemini-hybrid-adam-vit_base_digits-w2-bf16-b16"
    # published torch_ddp and torch_ddp_fp16 tie (1.75 GB): either of ours in place 1 or 2 agrees
    assert [(at8[p]["place by memory"], at8[p]["published place"], at8[p]["same place"]) for p in PUBLISHED_ORDER] == [
        ("1", "1–2", "yes"), ("2", "1–2", "yes"), ("3", "3", "yes"), ("5", "5", "yes"), ("4", "4", "yes")]
    assert ("order by memory, most first: here torch_ddp > torch_ddp_fp16 > low_level_zero > hybrid_parallel > gemini; "
            "published torch_ddp = torch_ddp_fp16 > low_level_zero > hybrid_parallel > gemini") in markdown
    assert "same place in both orders: 5 of 5 plugins; Kendall's τ-b" in markdown

    at32 = {row["plugin"]: row for row in read_csv(out / "plugin_benchmark_b32.csv")}
    assert at32["torch_ddp_fp16"]["case"] == "" and at32["torch_ddp_fp16"]["same place"] == ""
    # among the four both measured: published torch_ddp > low_level_zero > gemini > hybrid_parallel
    assert {p: (at32[p]["place by memory"], at32[p]["published place"], at32[p]["same place"])
            for p in ("torch_ddp", "low_level_zero", "gemini", "hybrid_parallel")} == {
        "torch_ddp": ("1", "1", "yes"), "low_level_zero": ("4", "2", "no"), "gemini": ("2", "3", "no"),
        "hybrid_parallel": ("3", "4", "no")}
    assert "not in this run: torch_ddp_fp16 (skipped or failed: see the session's output)" in markdown
    assert ("as run here, beside the published configuration: torch_ddp_fp16: bf16 under autocast; low_level_zero: "
            "bf16; gemini: bf16; nothing offloaded") in markdown  # batch 8 (at 32, torch_ddp_fp16 did not run)
    assert "same place in both orders: 1 of 4 plugins (not: low_level_zero, gemini, hybrid_parallel)" in markdown
    assert ("ordered the other way round: low_level_zero > gemini published, < here; "
            "low_level_zero > hybrid_parallel published, < here") in markdown


def test_a_run_without_the_plugin_benchmark_has_no_such_section(tmp_path):
    run = write_run(tmp_path / "store" / "m" / "0001_matrix.json",
                    [case_benchmark(s, 1 if s == "single" else 2) for s in ("single", "torch-ddp")])
    out = tmp_path / "out"
    assert main(["report", str(run), "--out", str(out)]) == 0
    assert "published figures" not in (out / "report.md").read_text()


@pytest.mark.parametrize("edit,says", [
    (lambda text: text.replace('memory = "1.75 GB"', 'memory = "1.75"', 1), "'1.75' is not a memory size"),
    (lambda text: text.replace("memory_unit_base = 1024\n", ""), "no key 'memory_unit_base'"),
    (lambda text: text.replace("format = 1", "format = 2"), "format 2 is not known"),
])
def test_a_malformed_published_file_names_what_is_wrong(tmp_path, edit, says):
    from parabench.report.published import PUBLISHED

    path = tmp_path / "published.toml"
    path.write_text(edit(PUBLISHED.read_text(encoding="utf-8")), encoding="utf-8")
    with pytest.raises(ReportError, match=f"published figures of 'plugin_benchmark' cannot be read.*{says}"):
        load_published(path)
