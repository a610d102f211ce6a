"""parabench.measure.formulas and parabench.measure.layouts: the ZeRO paper's per-rank model states, and the terms each framework's
layout adds to them, held against hand-computed cases and against what the frameworks hold when they run now."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from parabench.measure import layouts
from parabench.measure.formulas import (
    FAMILIES,
    LAYOUT_RULES,
    Setting,
    deviations,
    expected_state,
    findings,
    paper_state,
    predicted_state,
)
from parabench.measure.layouts import ParameterShape

PSI = 1_000_000


def test_the_zero_paper_stages_in_mixed_precision():
    # Rajbhandari et al. (2020), figure 1: with K = 12 bytes of master + Adam state, 2Ψ + 2Ψ + 12Ψ/N (stage 1),
    # 2Ψ + 14Ψ/N (stage 2), 16Ψ/N (stage 3).
    n = 4
    one, two, three = (expected_state(f"deepspeed-zero{s}", "adamw", "bf16", PSI, n,
                                      between_steps=False)["total"] for s in (1, 2, 3))
    assert one == 2 * PSI + 2 * PSI + 12 * PSI // n
    assert two == 2 * PSI + 14 * PSI // n
    assert three == 16 * PSI // n


def test_between_steps_deepspeed_holds_no_gradients():
    assert expected_state("deepspeed-zero2", "adamw", "bf16", PSI, 2)["grads"] == 0
    assert expected_state("deepspeed-zero3", "adamw", "bf16", PSI, 2)["grads"] == 2 * PSI // 2


def test_ddp_in_fp32_holds_everything_and_no_master_and_its_reducer_buckets_beside_the_papers_state():
    assert paper_state("torch-ddp", "adamw", "fp32", PSI, 2) == {
        "params": 4 * PSI, "grads": 4 * PSI, "optimizer": 8 * PSI, "master": 0, "buffers": 0, "total": 16 * PSI}
    assert expected_state("torch-ddp", "adamw", "fp32", PSI, 2) == {
        "params": 4 * PSI, "grads": 4 * PSI, "optimizer": 8 * PSI, "master": 0, "buffers": 4 * PSI, "total": 20 * PSI}
    # the buckets hold the gradients in their dtype: fp32 under autocast, 2 bytes with bf16 weights
    assert expected_state("torch-ddp-amp", "adamw", "bf16", PSI, 2)["buffers"] == 4 * PSI
    assert expected_state("torch-ddp", "adamw", "bf16", PSI, 2, master_weights=True)["buffers"] == 2 * PSI
    assert expected_state("deepspeed-zero2", "adamw", "fp32", PSI, 2)["buffers"] == 0


def test_fp32_zero3_holds_its_partition_copy_beside_the_papers_state():
    # DeepSpeed 0.19.8 copies its fp32 partitions even in fp32: 4Ψ/N beyond the paper's stage 3
    assert paper_state("deepspeed-zero3", "adamw", "fp32", PSI, 2)["master"] == 0
    assert expected_state("deepspeed-zero3", "adamw", "fp32", PSI, 2)["master"] == 4 * PSI // 2
    assert expected_state("deepspeed-zero3", "adamw", "fp32", PSI, 2)["total"] == (4 + 4 + 8 + 4) * PSI // 2
    # ZeRO-1/2 had their copy in the paper already; DDP has none
    assert expected_state("deepspeed-zero2", "adamw", "fp32", PSI, 2)["master"] == 4 * PSI // 2
    assert expected_state("torch-ddp", "adamw", "fp32", PSI, 2)["master"] == 0


def test_no_formula_where_the_state_is_not_k_values_per_parameter_or_the_share_is_not_psi_over_n():
    assert expected_state("torch-ddp", "adafactor", "fp32", PSI, 2) is None
    assert expected_state("torch-tp", "adamw", "fp32", PSI, 2) is None
    assert expected_state("deepspeed-zero2", "adamw", "fp32", PSI, 2, {"offload": True}) is None


@settings(max_examples=50, deadline=None)
@given(strategy=st.sampled_from(sorted(FAMILIES)), n=st.sampled_from([1, 2, 4, 8]),
       precision=st.sampled_from(["fp32", "bf16"]))
def test_sharded_state_times_n_is_constant_and_one_rank_holds_the_whole(strategy, n, precision):
    family = FAMILIES[strategy]
    one = expected_state(strategy, "adamw", precision, PSI * 8, 1)
    many = expected_state(strategy, "adamw", precision, PSI * 8, n)
    assert many["total"] <= one["total"]
    if family.params and family.grads and family.optimizer:
        assert many["total"] * n == one["total"]


def test_deviations_name_the_categories_beyond_one_percent():
    expected = {"params": 100, "grads": 100, "optimizer": 200, "master": 0, "total": 400}
    assert deviations(dict(expected), expected) == {}
    off = deviations({**expected, "optimizer": 230, "master": 50, "total": 480}, expected)
    assert off["optimizer"] == pytest.approx(0.15) and off["master"] == pytest.approx(50 / 400) and "total" in off


def test_autocast_keeps_fp32_weights_and_no_master():
    # Strategy.master_weights False in bf16: the weights stay fp32 (torch-ddp-amp, fairscale OSS, ColossalAI's
    # torch DDP plugin…), so the state is fp32 DDP's
    assert expected_state("torch-ddp-amp", "adamw", "bf16", PSI, 2, master_weights=False) == \
        expected_state("torch-ddp", "adamw", "fp32", PSI, 2)
    assert expected_state("fairscale-oss", "adamw", "bf16", PSI, 2, master_weights=False)["master"] == 0
    assert expected_state("deepspeed-zero3", "adamw", "bf16", PSI, 2, master_weights=True)["master"] == 4 * PSI // 2


def test_the_suites_sgd_keeps_one_momentum_buffer():
    assert expected_state("torch-ddp", "sgd", "fp32", PSI, 2)["optimizer"] == 4 * PSI


# --- the layouts, each against a small case computed by hand ---------------------------------------------------

SIZES = [3, 5, 2, 5]


def test_zero_redundancy_optimizer_sorts_largest_first_and_fills_the_emptiest_rank():
    # sorted (stable): 5 (#1), 5 (#3), 3 (#0), 2 (#2) → ranks 0, 1, 0 (5 vs 5: the first), 1 (8 vs 5)
    assert layouts.zero_redundancy_owners(SIZES, 2) == [0, 0, 1, 1]
    # mlp-digits: the 256 × 256 hidden weight alone on rank 0, everything else on rank 1
    assert layouts.zero_redundancy_owners([16384, 256, 65536, 256, 2560, 10], 2) == [1, 1, 0, 1, 1, 1]


def test_oss_assigns_in_order_to_the_emptiest_rank():
    # 3 → 0; 5 → 1 (3 < 5 … rank 1 is empty); 2 → 0 (3 < 5); 5 → 0 (5 = 5: the first)
    assert layouts.oss_owners(SIZES, 2) == [0, 1, 0, 0]
    assert layouts.oss_owners(SIZES, 4) == [0, 1, 2, 3]


def test_sharded_ddp_keeps_a_bucket_per_destination_and_the_owners_own_gradients_beside_them():
    owners = [0, 1, 0, 0]
    # cap min(2**23, 15) = 15: everything fits (fill 10 for rank 0, 5 for rank 1), both ranks hold both buckets
    assert layouts.sdp_bucket_elements(SIZES, owners, 2, 0, 2**23) == (15, 0)
    assert layouts.sdp_bucket_elements(SIZES, owners, 2, 1, 2**23) == (15, 0)
    # cap 6, smallest first: 2 (rank 0, fill 2), 3 (0, fill 5), 5 (1, fill 5), 5 (0: 5 + 5 ≥ 6, left out)
    assert layouts.sdp_bucket_elements(SIZES, owners, 2, 0, 6) == (10, 5)
    assert layouts.sdp_bucket_elements(SIZES, owners, 2, 1, 6) == (10, 0)
    # no buckets (reduce_buffer_size 0, or one rank): each rank keeps its own parameters' gradients
    assert layouts.sdp_bucket_elements(SIZES, owners, 2, 0, 0) == (0, 10)
    assert layouts.sdp_bucket_elements(SIZES, owners, 2, 1, 0) == (0, 5)
    assert layouts.sdp_bucket_elements(SIZES, [0] * 4, 1, 0, 2**23) == (0, 15)


@pytest.mark.parametrize("shape, n, rank, held", [
    ((1, 17, 64), 2, 0, (1088, 1088)),  # ViT's position embeddings: dim 0 of 1, rank 1 holds padding only
    ((1, 17, 64), 2, 1, (1088, 0)),
    ((5, 3), 2, 0, (9, 9)),             # 3 rows and 2 rows, both padded to 3
    ((5, 3), 2, 1, (9, 6)),
    ((2, 3), 4, 1, (3, 3)),             # torch.chunk gives 2 chunks of 1 row; ranks 2 and 3 hold padding
    ((2, 3), 4, 3, (3, 0)),
    ((8,), 4, 2, (2, 2)),
])
def test_fsdp2_pads_dim_0_to_the_first_chunks_rows(shape, n, rank, held):
    assert layouts.dim0_shard_elements(shape, n, rank) == held


def test_a_flat_buffer_is_padded_to_a_multiple_of_n():
    assert layouts.flat_shard_elements(7, 2) == 4
    assert layouts.flat_shard_elements(8, 2) == 4
    assert layouts.flat_shard_elements(1, 4) == 1


def test_fairscale_fsdp_gradients_keep_each_flushed_bucket_output_shard():
    bucket = 1024 * 1024 // 4 // 2  # 1 MiB of fp32 over 2 ranks: 131,072 elements a shard
    assert layouts.fairscale_bucket_output_elements([100, 200], 2, 4, bucket_cap_mb=1) == bucket
    # the second does not fit beside the first: a flush, then the last flush at the end of backward
    assert layouts.fairscale_bucket_output_elements([100_000, 40_000], 2, 4, bucket_cap_mb=1) == 2 * bucket
    # larger than the bucket: reduced on its own, into a tensor of its size
    assert layouts.fairscale_bucket_output_elements([200_000], 2, 4, bucket_cap_mb=1) == 200_000
    # the adapter's default, 25 MiB of fp32 over 2 ranks: 13,107,200 bytes (measured on every fairscale-fsdp case)
    assert 4 * layouts.fairscale_bucket_output_elements([437_760 // 2], 2, 4) == 13_107_200


def test_gemini_searches_the_chunk_size_with_the_least_unused_space():
    # minimum 10 elements, range 8, interval 4: start 12; 12 leaves 6 unused, 16 leaves 14, 20 leaves 2
    minimum, search = 10 / 2**20, 8 / 2**20
    assert layouts.gemini_chunk_size([6, 3, 5, 4], 2, minimum, search, search_interval=4) == (20, False)
    # a model under the minimum is one chunk kept gathered
    assert layouts.gemini_chunk_size([6, 3], 2, minimum, search, search_interval=4) == (9, True)
    # rounded up to a multiple of N
    assert layouts.gemini_chunk_size([6, 3, 5, 4], 3, minimum, search, search_interval=4) == (21, False)


def test_gemini_chunks_fill_in_order_and_each_rank_holds_its_shard_of_each():
    chunks = layouts.gemini_chunks([6, 3, 5, 4], 20, 2)
    assert chunks == [(20, [(0, 6), (6, 9), (9, 14), (14, 18)])]
    assert layouts.gemini_rank_elements(chunks, 2, 0) == (10, 10)
    assert layouts.gemini_rank_elements(chunks, 2, 1) == (10, 8)  # 2 elements of padding
    # a parameter that does not fit opens a chunk; one larger than the chunk size gets its own, rounded to N
    assert layouts.gemini_chunks([6, 30, 10], 20, 4) == [(20, [(0, 6)]), (32, [(0, 30)]), (20, [(0, 10)])]


@settings(max_examples=50, deadline=None)
@given(sizes=st.lists(st.integers(1, 5000), min_size=1, max_size=30), chunk=st.integers(1, 8000))
def test_gemini_unused_space_is_colossalais_own(sizes, chunk):
    search_utils = pytest.importorskip("colossalai.zero.gemini.chunk.search_utils")
    assert layouts._unused_elements(sizes, chunk) == search_utils._get_unused_byte(sizes, chunk)


LAYOUT = (ParameterShape("embed", (1, 4, 2)), ParameterShape("block.0.w", (4, 3), "block.0"),
          ParameterShape("block.0.b", (3,), "block.0"), ParameterShape("head", (5, 2)))  # Ψ = 8 + 12 + 3 + 10 = 33


def _terms(strategy: str, rank: int, c: int = 4, k: int = 2, master: bool = False, options=None):
    return {name: held for name, (_, held) in
            LAYOUT_RULES[strategy](LAYOUT, Setting(c, k, master, True, 2, rank, options or {})).items()}


def test_each_rule_turns_its_layout_into_bytes_per_category():
    # ZeroRedundancyOptimizer, largest first: 12 → rank 0, 10 → 1, 8 → 1 (10 < 12), 3 → 0 (12 < 18)
    assert _terms("torch-zero", 0) == {"optimizer": 8 * (12 + 3)}
    assert _terms("torch-zero", 1) == {"optimizer": 8 * (10 + 8)}
    # OSS in order: 8 → 0, 12 → 1, 3 → 0, 10 → 0 (11 < 12)
    assert _terms("fairscale-oss", 0) == {"optimizer": 8 * 21}
    # ShardedDDP: buckets of both destinations (cap min(2**23, 33)) on every rank
    assert _terms("fairscale-sdp", 1) == {"optimizer": 8 * 12, "grads": 4 * 33}
    assert _terms("fairscale-sdp", 1, options={"buffer": 0}) == {"optimizer": 8 * 12, "grads": 4 * 12}
    # FSDP2: dim 0 of 1 (embed) padded on rank 1; (4, 3) 2 rows each; (3,) 2 and 1; (5, 2) 3 and 2 rows
    assert _terms("torch-fsdp", 1) == {"params": 4 * (8 + 6 + 2 + 6), "grads": 4 * 22,
                                       "optimizer": 8 * (0 + 6 + 1 + 4)}
    # flat units: block.0 (15 → 8 a rank), the root (embed + head, 18 → 9)
    assert _terms("torch-fsdp1", 0) == {"params": 4 * 17, "grads": 4 * 17, "optimizer": 8 * 17}
    assert _terms("fairscale-fsdp", 0)["grads"] == 13_107_200
    # ZeRO-3: each parameter's partition, ceil(numel / 2): 4 + 6 + 2 + 5; its fp32 copy beside it
    assert _terms("deepspeed-zero3", 0) == {"params": 4 * 17, "grads": 4 * 17, "optimizer": 8 * 17, "master": 4 * 17}


def test_predictions_fall_back_to_psi_when_the_model_is_not_the_recorded_one():
    # vit-digits has Ψ 69,194: a result recorded with another Ψ gets the paper's formula and the terms of Ψ alone
    # (ZeRO-3's copy, DDP's buckets) only
    one = predicted_state("torch-zero", "adamw", "fp32", 1000, 2, workload="vit-digits")
    assert [set(p.terms) for p in one] == [{"buffers"}, {"buffers"}]
    assert predicted_state("deepspeed-zero3", "adamw", "fp32", 1000, 2)[0].terms["master"][1] == 2000


def test_findings_are_what_is_left_beyond_one_percent_after_the_terms():
    [zero, other] = predicted_state("torch-zero", "adamw", "fp32", 85_002, 2, workload="mlp-digits")
    # the paper says 340,008 B of Adam state a rank; the whole-tensor rule 524,288 and 155,728 (measured: those
    # plus a 4-byte step a tensor)
    assert (zero.expected["optimizer"], other.expected["optimizer"]) == (524_288, 155_728)
    measured = [dict(zero.expected, optimizer=524_292), dict(other.expected, optimizer=155_748)]
    assert findings("torch-zero", measured, [zero, other]) == {}
    measured[1] = dict(other.expected, optimizer=340_008)  # as the paper says: off the layout by +118 %
    assert findings("torch-zero", measured, [zero, other])["optimizer"] == pytest.approx(340_008 / 155_728 - 1)


# --- the committed measurements and the ones made now -----------------------------------------------------------

def _newest_measurements():
    """Per case, the newest committed baseline's measurement (every kernel kind): (name, info)."""
    from pathlib import Path

    from parabench.gate.baselines import discover, newest_by_name

    root = Path(__file__).resolve().parents[1] / "baselines"
    for name, entries in sorted(newest_by_name(discover(root)).items()):
        info = entries[0][1]["extra_info"]
        if info.get("state_bytes") and info.get("parameters"):
            yield name, info


def test_every_committed_measurement_is_within_one_percent_of_its_formula_with_the_computed_terms():
    """The committed baselines' state per rank against the formulas as they stand: beyond 1 % of the paper's
    formula plus the computed terms is a finding (fix the formula or the measurement). A result stored by an older
    version of the measurement is held to the formula less what that version did not count (``measures``)."""
    from parabench.measure.formulas import predicted_for

    checked, found = 0, {}
    for name, info in _newest_measurements():
        predictions = predicted_for(info)
        if predictions is None:
            continue
        checked += 1
        off = findings(info["case"]["strategy"], info["state_bytes"], predictions)
        if off:
            found[name] = {k: round(v, 4) for k, v in off.items()}
    assert checked >= 100, f"only {checked} committed cases have a formula"
    assert not found, found


def test_a_result_stored_before_a_term_was_measured_is_predicted_without_it():
    from parabench.measure.formulas import predicted_for

    info = {"parameters": PSI, "case": {"strategy": "torch-ddp", "optimizer": "adamw", "precision": "fp32",
                                        "world_size": 2}}
    assert predicted_for({**info, "measures": {"state_bytes": 3}})[0].expected["buffers"] == 4 * PSI
    assert predicted_for({**info, "measures": {"state_bytes": 2}})[0].expected["buffers"] == 0
    zero3 = {"parameters": PSI, "case": {"strategy": "deepspeed-zero3", "optimizer": "adamw", "precision": "fp32",
                                         "world_size": 2}}
    assert predicted_for({**zero3, "measures": {"state_bytes": 2}})[0].expected["master"] == 4 * PSI // 2
    assert predicted_for(zero3)[0].expected["master"] == 0  # stored without ``measures``: version 1


# Cheap cases where a computed term is most of the deviation from the paper: DDP's reducer buckets (4Ψ), whole-tensor shards (+54 % on
# mlp-digits' optimizer), ShardedDDP's buckets (4Ψ of gradients), FSDP2's dim-0 padding (vit-digits, +1.7 %),
# fairscale FSDP's bucket (13.1 MB), fp32 ZeRO-3's copy (4Ψ/N); Gemini's chunk padding needs ColossalAI's CPU Adam.
MEASURED_CASES = [("torch-ddp", "adamw", "mlp-digits", "fp32"), ("torch-zero", "adamw", "mlp-digits", "fp32"),
                  ("fairscale-sdp", "adamw", "mlp-digits", "fp32"),
                  ("torch-fsdp", "adamw", "vit-digits", "fp32"), ("fairscale-fsdp", "sgd", "mlp-digits", "fp32"),
                  ("deepspeed-zero3", "adamw", "mlp-digits", "fp32")]
GEMINI_CASE = ("colossalai-gemini", "hybrid-adam", "vit-digits", "bf16")

SESSION = """
    import json, os
    import pytest
    from parabench.cases.case import Case
    from parabench.measure.formulas import deviations, predicted_state

    CASES = [Case(s, o, w, 2, precision=p, warmup_steps=1, steps=2) for s, o, w, p in {cases!r}]

    @pytest.mark.parametrize("case", CASES, ids=str)
    def test_case(case, run_case):
        result = run_case(case)
        info = result.extra_info()
        predictions = predicted_state(case.strategy, case.optimizer, case.precision, info["parameters"],
                                      case.world_size, dict(case.options), workload=case.workload)
        rows = [[case.id, rank, name, measured[name], p.expected[name], p.paper[name]]
                for rank, (measured, p) in enumerate(zip(info["state_bytes"], predictions))
                for name in ("params", "grads", "optimizer", "master", "buffers", "total")]
        with open(os.environ["FORMULA_ROWS"], "a") as out:
            out.writelines(json.dumps(row) + "\\n" for row in rows)
        assert all(p.terms for p in predictions), "no computed term: the model's shapes were not found"
        assert "state_formula_findings" not in info, info["state_formula_findings"]
        for measured, p in zip(info["state_bytes"], predictions):
            assert not deviations(measured, p.expected), (measured, p.expected)
"""


def _run_and_hold_to_the_formulas(tmp_path, cases) -> list[list]:
    from tests.test_end_to_end import outcome, pytest_run, session_dir

    directory = session_dir(tmp_path, SESSION.format(cases=cases))
    rows = tmp_path / "rows.jsonl"
    result = pytest_run("test_session.py", "-q", cwd=directory, timeout=400,
                        env={"FORMULA_ROWS": str(rows)})
    assert result.returncode == 0, outcome(result)
    assert f"{len(cases)} passed" in result.stdout, outcome(result)
    return [json.loads(line) for line in rows.read_text().splitlines()]


def test_what_the_frameworks_hold_now_is_their_formula_with_the_computed_terms(tmp_path):
    """Runs the cases now: each rank's state, every category, within 1 % of the paper's formula plus the terms of
    the framework's layout, where the paper alone is off by up to 54 % (torch-zero) or 15× (fairscale FSDP)."""
    rows = _run_and_hold_to_the_formulas(tmp_path, MEASURED_CASES)
    by_case = {row[0].split("-adamw-")[0].split("-sgd-")[0]: row for row in rows
               if row[2] in ("optimizer", "grads", "master", "buffers") and row[4] != row[5]}
    # the computed terms were the difference: the paper's formula alone is off in each case
    assert set(by_case) == {s for s, *_ in MEASURED_CASES}, sorted(by_case)


def test_what_gemini_holds_now_is_its_chunk_layout(tmp_path):
    from parabench.kernels import KERNELS, built

    kernel = next(k for k in KERNELS["cpu"] if "hybrid-adam" in k.optimizers)
    if not built(kernel):
        pytest.skip("ColossalAI's CPU Adam (HybridAdam, which Gemini takes) is not built: python -m parabench.kernels")
    rows = _run_and_hold_to_the_formulas(tmp_path, [GEMINI_CASE])
    params = [row for row in rows if row[2] == "params"]
    assert params and all(row[3] == row[4] != row[5] for row in params)  # the padded chunks, not Ψ/N
