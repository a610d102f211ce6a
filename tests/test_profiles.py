"""Profiles as data (``bench/profiles.toml``): what each one runs, and bad files named with their fix."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from parabench.cases.profiles import ProfileError, load_profiles, matches

REPO = Path(__file__).resolve().parents[1]
PROFILES = load_profiles(REPO / "bench" / "profiles.toml")


def test_the_committed_profiles_load_and_nest():
    assert list(PROFILES.profiles) == ["full", "default", "ci", "gpu", "seeds"]
    full, default, ci, seeds = (PROFILES.get(name) for name in ("full", "default", "ci", "seeds"))
    assert not full.exclude and not full.exclude_marks and full.bf16_on_slow_hosts is None and not full.select
    # seeds: one experiment of full's, nothing else; where bf16 is slow, none of its bf16 cases
    assert seeds.select and not seeds.exclude and not seeds.exclude_marks and seeds.bf16_on_slow_hosts == ()
    # default leaves out what full adds; ci leaves out at least what default does.
    assert "full" in default.exclude_marks and set(default.exclude) <= set(ci.exclude)
    assert set(default.exclude_marks) <= set(ci.exclude_marks)
    assert PROFILES.slow_bf16_ratio > 1


def test_exclusions_match_node_ids_and_marks():
    default = PROFILES.get("default")
    assert default.excludes("bench/test_torch_strategies.py::test_train[torch-ddp-adamw-gpt2_text-w4-fp32]", {"full"})
    assert not default.excludes("bench/test_torch_strategies.py::test_train[torch-ddp-adamw-gpt2_text-w2-fp32]",
                                {"torch", "parametrize"})
    seeds = PROFILES.get("seeds")
    assert seeds.excludes("bench/test_torch_strategies.py::test_train[torch-ddp-adamw-gpt2_text-w2-fp32]", {"torch"})
    assert not seeds.excludes("bench/test_plugin_benchmark.py::test_plugin[colossalai-gemini-hybrid-adam-vit_base_"
                              "digits-w2-bf16-b16]", {"colossalai", "full"})


@pytest.mark.parametrize("pattern,nodeid,expected", [
    # Classes inside the case id: [01] is ZeRO-0 or ZeRO-1, not ZeRO-2.
    ("b.py::t[deepspeed-zero[01]-*-ga2*", "b.py::t[deepspeed-zero0-adamw-gpt2_text-w2-fp32-ga2]", True),
    ("b.py::t[deepspeed-zero[01]-*-ga2*", "b.py::t[deepspeed-zero1-adamw-gpt2_text-w2-fp32-ga2]", True),
    ("b.py::t[deepspeed-zero[01]-*-ga2*", "b.py::t[deepspeed-zero2-adamw-gpt2_text-w2-fp32-ga2]", False),
    ("b.py::t[deepspeed-zero[!01]-*", "b.py::t[deepspeed-zero2-adamw-gpt2_text-w2-fp32]", True),
    # The pattern's lone ']' is the node id's closing one: the case id must end there.
    ("b.py::t[*-offload]", "b.py::t[deepspeed-zero1-adamw-gpt2_text-w2-fp32-offload]", True),
    ("b.py::t[*-offload]", "b.py::t[deepspeed-zero3-adamw-gpt2_text-w2-fp32-offload-offload_param]", False),
    ("b.py::t[deepspeed-zero[13]-*-offload]", "b.py::t[deepspeed-zero2-adamw-gpt2_text-w2-fp32-offload]", False),
    # The first '[' is the node id's: the head must match the whole of path::test.
    ("b.py::t[*", "b.py::test_t[x]", False),
    ("b.py::t[*", "b.py::t", False),
    ("*[*", "b.py::t", False),
    # Without '[', the whole node id, its brackets included.
    ("b.py::*", "b.py::t[x]", True),
    ("*vit_digits*", "b.py::t[single-adamw-vit_digits-w1-bf16]", True),
    ("*vit_digits", "b.py::t[single-adamw-vit_digits-w1-bf16]", False),
    # '[[]' is a '[' inside the case id.
    ("b.py::t[a[[]1]]", "b.py::t[a[1]]", True),
])
def test_a_pattern_splits_at_its_first_bracket_and_classes_work_in_the_case_id(pattern, nodeid, expected):
    assert matches(nodeid, pattern) is expected


def test_every_pattern_of_every_profile_matches_a_collected_case():
    """A pattern that matches nothing leaves its cases in the profile it was written to trim."""
    collected = subprocess.run(
        [sys.executable, "-m", "pytest", "bench/", "--collect-only", "-q", "--bench-profile=full",
         "-p", "no:cacheprovider"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert collected.returncode == 0, f"collecting bench/ failed:\n{collected.stdout[-3000:]}{collected.stderr[-3000:]}"
    nodeids = [line.strip() for line in collected.stdout.splitlines() if line.startswith("bench/") and "::" in line]
    assert len(nodeids) > 100, f"collected only {len(nodeids)} node ids:\n{collected.stdout[-3000:]}"
    dead = [f"profile {profile.name}: {key} pattern {pattern!r}"
            for profile in PROFILES.profiles.values()
            for key, patterns in (("exclude", profile.exclude), ("select", profile.select),
                                  ("bf16_on_slow_hosts", profile.bf16_on_slow_hosts))
            for pattern in patterns or ()
            if not any(matches(nodeid, pattern) for nodeid in nodeids)]
    assert not dead, ("patterns in bench/profiles.toml that match no case collected under --bench-profile=full "
                      "(fix them to match the cases they mean, or remove them):\n" + "\n".join(dead))


def test_an_unknown_profile_names_the_known_ones():
    with pytest.raises(ProfileError, match="--bench-profile=fast: no such profile in .*; known: full, default, ci, "
                                           "gpu, seeds"):
        PROFILES.get("fast")


@pytest.mark.parametrize("text,message", [
    ("format = 1\n[profile.a]\nexclude = 'x'\n", r"profile.a.exclude = 'x'; it takes a list of non-empty strings"),
    ("format = 1\n[profile.a]\nexclud = []\n", r"unknown key profile.a.exclud; known here: bf16_on_slow_hosts, "),
    ("format = 1\n[profile.a]\nextends = 'b'\n", r"\[profile.a\] extends = 'b', which is not a profile; known: a"),
    ("format = 1\n[profile.a]\nextends = 'b'\n[profile.b]\nextends = 'a'\n", r"extends itself through a → b"),
    ("format = 2\n[profile.a]\n", r"format 2 is not known; this version reads format = 1"),
    ("format = 1\n", r"no \[profile.NAME\] table"),
    ("format = 1\n[slow_bf16]\nratio = 'four'\n[profile.a]\n", r"\[slow_bf16\] ratio = 'four'; it takes a number above 1"),
    ("format = 1\n[profile.a]\ndescription = 3\n", r"profile.a.description = 3; it takes a string"),
    ("format = 1\n[profile.a]\nselect = ['']\n", r"profile.a.select = \[''\]; it takes a list of non-empty strings"),
    ("format = 1\n[profile.a]\nselect = []\n", r"profile.a.select = \[\]; it would keep no test"),
    ("format = [\n", r"not valid TOML"),
])
def test_a_malformed_profiles_file_names_the_table_the_key_and_what_it_takes(tmp_path, text, message):
    path = tmp_path / "profiles.toml"
    path.write_text(text)
    with pytest.raises(ProfileError, match=message):
        load_profiles(path)


def test_a_profile_inherits_what_it_extends(tmp_path):
    path = tmp_path / "profiles.toml"
    path.write_text("format = 1\n[profile.big]\n[profile.mid]\nextends = 'big'\nexclude = ['*-w4-*']\n"
                    "bf16_on_slow_hosts = ['*adamw*']\n[profile.small]\nextends = 'mid'\nexclude_marks = ['slow']\n")
    small = load_profiles(path).get("small")
    assert small.exclude == ("*-w4-*",) and small.exclude_marks == ("slow",)
    assert small.keeps_on_slow_bf16("x[single-adamw-gpt2_text-w1-bf16]")
    assert not small.keeps_on_slow_bf16("x[single-sgd-gpt2_text-w1-bf16]")
    assert load_profiles(path).get("big").keeps_on_slow_bf16("x[single-sgd-gpt2_text-w1-bf16]")


def test_a_selecting_profile_keeps_only_what_its_patterns_match(tmp_path):
    path = tmp_path / "profiles.toml"
    path.write_text("format = 1\n[profile.all]\n[profile.one]\nselect = ['b.py::*', 'a.py::t[*-w1-*']\n"
                    "exclude = ['*-fp16]']\n[profile.child]\nextends = 'one'\n")
    profiles = load_profiles(path)
    one = profiles.get("one")
    assert not one.excludes("a.py::t[ddp-adamw-gpt2_text-w1-bf16]", set())
    assert one.excludes("a.py::t[ddp-adamw-gpt2_text-w2-bf16]", set())  # not selected
    assert one.excludes("a.py::t[ddp-adamw-gpt2_text-w1-fp16]", set())  # selected, then excluded
    assert not one.excludes("b.py::u", set()) and one.excludes("c.py::u", set())
    assert profiles.get("child").select == one.select and profiles.get("all").select == ()
    assert not profiles.get("all").excludes("c.py::u", set())


def test_the_gpu_profile_is_a_selection_the_others_leave_out():
    gpu, default, full = PROFILES.get("gpu"), PROFILES.get("default"), PROFILES.get("full")
    one_device = "bench/test_one_device.py::test_train[deepspeed-zero3-adamw-gpt2_text-w1-fp16]"
    assert not gpu.excludes(one_device, {"deepspeed"}) and default.excludes(one_device, {"deepspeed"})
    assert not full.excludes(one_device, {"deepspeed"})
    assert gpu.excludes("bench/test_deepspeed.py::test_train[deepspeed-zero3-adamw-gpt2_text-w2-fp32]", {"deepspeed"})
    assert not gpu.excludes("bench/test_scaling.py::test_scaling[torch-fsdp-adamw-gpt2_text-w1-fp32]", {"torch"})
    assert gpu.excludes("bench/test_scaling.py::test_scaling[torch-fsdp-adamw-gpt2_text-w2-fp32]", {"torch"})


def test_a_profile_with_select_keeps_only_what_it_names_less_what_it_excludes(tmp_path):
    path = tmp_path / "profiles.toml"
    path.write_text("format = 1\n[profile.big]\n[profile.one]\nextends = 'big'\nselect = ['b/x.py::t[*', 'b/y.py::*']\n"
                    "exclude = ['*-w4-*']\n[profile.less]\nextends = 'one'\nexclude_marks = ['slow']\n")
    profiles = load_profiles(path)
    one, less = profiles.get("one"), profiles.get("less")
    assert less.select == one.select == ("b/x.py::t[*", "b/y.py::*")  # inherited
    assert not one.excludes("b/x.py::t[a-w2-fp32]", set()) and not one.excludes("b/y.py::u", set())
    assert one.excludes("b/z.py::t[a-w2-fp32]", set())  # not selectd
    assert one.excludes("b/x.py::t[a-w4-fp32]", set())  # selectd, but excluded
    assert less.excludes("b/x.py::t[a-w2-fp32]", {"slow"}) and not less.excludes("b/x.py::t[a-w2-fp32]", set())
    assert not profiles.get("big").excludes("b/z.py::t[a-w2-fp32]", set())


def test_expected_times_come_from_the_newest_stored_run_of_the_same_hardware(tmp_path):
    import json

    from fixtures.budget import expected_seconds

    def stored(name: str, hardware: str, seconds: float) -> None:
        path = tmp_path / "Linux" / name
        path.parent.mkdir(exist_ok=True)
        path.write_text(json.dumps({"benchmarks": [], "parabench": {"hardware": hardware,
                                                                   "test_seconds": {"bench/x.py::t[a]": seconds}}}))

    stored("0001_baseline.json", "AMD EPYC, AVX2 (2 CPUs)", 9.0)
    stored("0002_baseline.json", "AMD EPYC, AVX512 (2 CPUs)", 4.0)
    stored("0003_baseline.json", "AMD EPYC, AVX2 (2 CPUs)", 7.0)
    (tmp_path / "Linux" / "0004_broken.json").write_text("{")
    assert expected_seconds(tmp_path, "AMD EPYC, AVX2 (2 CPUs)") == ({"bench/x.py::t[a]": 7.0}, "0003_baseline.json")
    assert expected_seconds(tmp_path, "AMD EPYC, AVX512 (2 CPUs)")[1] == "0002_baseline.json"
    assert expected_seconds(tmp_path, "Intel Xeon, AVX512 (4 CPUs)") == ({}, None)
