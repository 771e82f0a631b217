import pytest

from core.config import PRESETS, RunSpec, parse_int_list, preset, validate
from core.errors import ConfigError


@pytest.mark.parametrize("name", list(PRESETS))
def test_presets_are_valid(name):
    spec = preset(name)
    assert spec.scales == tuple(sorted(spec.scales))


def test_paper_preset_matches_seed_000():
    s = preset("paper-000")
    assert s.scales == (50, 100, 150, 250, 500, 1000, 2500, 5000, 10000, 25000, 50000)
    assert (s.lora_rank, s.lora_alpha, s.lora_dropout) == (8, 16.0, 0.1)
    assert (s.learning_rate, s.weight_decay, s.epochs, s.batch_size, s.max_length) == (
        5e-5,
        0.01,
        3,
        1,
        512,
    )
    assert s.seeds == (42,) and s.construction == "paper" and s.grad_clip == 0


def test_unsorted_scales_are_sorted():
    assert preset("tiny-test", scales=(16, 4, 8)).scales == (4, 8, 16)


@pytest.mark.parametrize(
    "override, fragment",
    [
        ({"scales": (0, 10)}, "0 is not a positive"),
        ({"scales": (-5,)}, "-5 is not a positive"),
        ({"scales": (10, 10)}, "more than once"),
        ({"scales": (10**9,)}, "larger than the supported maximum"),
        ({"scales": (1.5,)}, "not a whole number"),
        ({"scales": ()}, "at least one"),
        ({"seeds": (1, 1)}, "seed appears more than once"),
        ({"epochs": 0}, "epochs"),
        ({"learning_rate": 0.0}, "learning_rate"),
        ({"learning_rate": float("nan")}, "learning_rate"),
        ({"lora_rank": 0}, "lora_rank"),
        ({"lora_rank": -3}, "lora_rank"),
        ({"lora_dropout": 1.5}, "lora_dropout"),
        ({"method": "prompt-tuning"}, "method: unknown value"),
        ({"probe": "mmlu"}, "probe: unknown value"),
        ({"device": "tpu"}, "device: unknown value"),
        ({"target_modules": "q_proj;rm -rf"}, "target_modules"),
        ({"model": "  "}, "model"),
        ({"method": "adaptq", "frozen_bits": 2}, "no 2-bit"),
        ({"adaptq_selection": "gradient"}, "adaptq_selection: unknown value"),
        ({"adaptq_fraction": 0.0}, "adaptq_fraction"),
        ({"adaptq_fraction": 1.5}, "adaptq_fraction"),
        ({"quant_order": "sideways"}, "quant_order: unknown value"),
        ({"replay": -0.1}, "replay"),
        ({"warmup_ratio": 0.95}, "warmup_ratio"),
        ({"smoke_every": -1}, "smoke_every"),
        ({"backend": "slurm"}, "backend: unknown value"),
        ({"precision": "fp16"}, "precision: unknown value .fp16.; choose one of: fp32, tf32, bf16"),
        ({"ray_gpus_per_unit": 0.0}, "ray_gpus_per_unit"),
        ({"ray_address": "head\n:1"}, "ray_address"),
    ],
)
def test_validation_names_the_problem(override, fragment):
    with pytest.raises(ConfigError, match=fragment.replace("(", r"\(")):
        preset("tiny-test", **override)


def test_all_problems_are_reported_at_once():
    with pytest.raises(ConfigError) as e:
        validate(RunSpec(epochs=0, lora_rank=0))
    assert "epochs" in str(e.value) and "lora_rank" in str(e.value)


def test_unknown_setting_and_preset():
    with pytest.raises(ConfigError, match="unknown setting"):
        RunSpec.from_dict({"rank": 8})
    with pytest.raises(ConfigError, match="unknown preset"):
        preset("nope")


def test_parse_int_list():
    assert parse_int_list("50, 100,1e3", "scales") == (50, 100, 1000)
    for bad in ("", "a,b", "1.5", "1,,2", "inf"):
        with pytest.raises(ConfigError):
            parse_int_list(bad, "scales")


def test_spec_round_trips_through_json():
    import json

    s = preset("quick-cpu")
    assert RunSpec.from_dict(json.loads(s.to_json())) == s


def test_every_number_setting_has_bounds_and_every_choice_list_is_checked():
    """validate() reads bounds and choices from the field metadata: a number without bounds
    would go unchecked, so each one must have them."""
    from core.config import SETTINGS

    for name, f in SETTINGS.items():
        m = f.metadata
        assert m["help"] and m["label"], name
        if f.type in ("int", "float") and m["choices"] is None:
            assert m["lo"] is not None and m["hi"] is not None, name
            with pytest.raises(ConfigError, match=f"^{name}: .* is outside"):
                preset("tiny-test", **{name: type(m["hi"])(m["hi"] * 2 + 1)})
        if m["choices"] is not None:
            with pytest.raises(ConfigError, match=f"^{name}: unknown value"):
                preset("tiny-test", **{name: "no-such-value"})


def test_switches_must_be_true_or_false():
    with pytest.raises(ConfigError, match="spectral: expected true or false"):
        preset("tiny-test", spectral=1)


def test_probe_choices_are_the_probe_files():
    from core import data
    from core.config import field_choices

    assert field_choices("probe") == tuple(data.list_probes())


_PAPER = dict(
    name="paper-000",
    construction="paper",
    scales=(50, 100, 150, 250, 500, 1000, 2500, 5000, 10000, 25000, 50000),
    seeds=(42,),
    epochs=3,
    learning_rate=5e-5,
    weight_decay=0.01,
    batch_size=1,
    max_length=512,
    lora_rank=8,
    lora_alpha=16.0,
    lora_dropout=0.1,
    target_modules="all-linear",
    probe="paper-8",
    domain_eval_size=50,
    headline_metric="degradation_stmt_pct",  # Martz 2025's per-statement aggregation
)
# The presets as they were Python dicts in core/config.py, before they became data/presets/*.toml
# (quick-cpu with its 2026-12-03 batch size and learning rate).
_EXPECTED_PRESETS = {
    "paper-000": _PAPER,
    "quick-cpu": dict(
        name="quick-cpu",
        model="smollm2-135m",
        scales=(4, 8, 16, 32, 64),
        seeds=(42,),
        epochs=1,
        batch_size=4,  # since 2026-12-03 (issue 23)
        learning_rate=2e-3,
        max_length=48,
        probe="general",  # named 'general-200' until 2026-12-03 (issue 22)
        domain_eval_size=16,
        eval_all_domains=False,
        eval_batch_size=32,
        smoke_max_new_tokens=12,
        spectral=False,
        probe_items=64,
        mc_eval=False,
    ),
    "tiny-test": dict(
        name="tiny-test",
        model="tiny",
        scales=(4, 8, 16),
        seeds=(0,),
        epochs=1,
        learning_rate=5e-3,
        max_length=32,
        probe="paper-8",
        domain_eval_size=8,
        eval_batch_size=8,
        smoke_max_new_tokens=6,
        mc_items=16,
        device="cpu",
    ),
    "adaptq-001": {
        **_PAPER,
        "name": "adaptq-001",
        "method": "adaptq",
        "scales": (50, 100, 150, 250, 500),
        "warmup_ratio": 0.1,
        "grad_clip": 1.0,
        "adaptq_fraction": 0.5,
        "adaptq_selection": "activation",
        "frozen_bits": 4,
    },
    "fast-000": {
        **_PAPER,
        "name": "fast-000 (batch 8, not the Martz 2025 protocol)",
        "batch_size": 8,
        "learning_rate": round(5e-5 * 8**0.5, 8),
    },
}


def test_presets_loaded_from_data_files_keep_their_values():
    assert PRESETS == _EXPECTED_PRESETS
    for name, values in _EXPECTED_PRESETS.items():  # same types too (16.0 stays a float)
        for key, value in values.items():
            assert type(PRESETS[name][key]) is type(value), (name, key)


def test_a_preset_based_on_a_missing_one_is_refused(tmp_path):
    from core.config import load_presets

    (tmp_path / "a.toml").write_text('based_on = "b"\nname = "a"\n')
    with pytest.raises(ConfigError, match="based_on 'b'"):
        load_presets(tmp_path)


def test_paper_preset_headlines_martz_aggregation_and_the_choices_are_the_measures():
    from core import analysis
    from core.config import field_choices

    assert field_choices("headline_metric") == tuple(analysis.METRICS)
    assert preset("paper-000").headline_metric == "degradation_stmt_pct"
    assert preset("fast-000").headline_metric == "degradation_stmt_pct"  # based on paper-000
    assert preset("tiny-test").headline_metric == "degradation_pct"
    # a run stored before the setting existed reads back with the default
    d = preset("tiny-test").to_dict()
    del d["headline_metric"], d["intruder_k"], d["intruder_eps"]
    assert RunSpec.from_dict(d).headline_metric == "degradation_pct"
    assert RunSpec.from_dict(d).intruder_k == 10 and RunSpec.from_dict(d).intruder_eps == 0.5


def test_headline_measure_is_martz_aggregation_for_the_paper_protocol_only():
    """One rule picks a run's default measure: a headline_metric setting other than the
    token-weighted change wins; a run that trains and probes as paper-000 does (also one stored
    before the setting existed) headlines Martz 2025's per-statement aggregation; others keep
    the token-weighted change."""
    from core.config import follows_paper_protocol, headline_measure

    assert headline_measure(None) == "degradation_pct"
    assert headline_measure(preset("paper-000")) == "degradation_stmt_pct"
    assert headline_measure(preset("fast-000")) == "degradation_stmt_pct"  # its own setting
    assert not follows_paper_protocol(preset("fast-000"))  # batch 8: not the protocol
    assert headline_measure(preset("tiny-test")) == "degradation_pct"
    assert headline_measure(preset("quick-cpu")) == "degradation_pct"
    assert headline_measure(preset("tiny-test", headline_metric="kl_to_base")) == "kl_to_base"
    # a paper-000 run stored before headline_metric existed reads back with the default...
    d = preset("paper-000", domain="financial", scales=(50, 100), seeds=(1, 2)).to_dict()
    del d["headline_metric"]
    old = RunSpec.from_dict(d)
    assert old.headline_metric == "degradation_pct" and follows_paper_protocol(old)
    assert headline_measure(old) == "degradation_stmt_pct"  # ...and still headlines Martz 2025
    # another rank, method or learning rate is another protocol
    for change in ({"lora_rank": 16}, {"method": "full"}, {"learning_rate": 1e-4}):
        assert headline_measure(RunSpec.from_dict({**d, **change})) == "degradation_pct", change


def test_series_differing_in_data_or_rate_pack_together_others_do_not():
    from core.config import pack_conflict, sweep_series

    base = preset("tiny-test")
    assert (
        pack_conflict(sweep_series(base, domains=("legal", "financial"), replays=(0, 0.2))) is None
    )
    assert pack_conflict(sweep_series(base, learning_rates=(1e-3, 2e-3))) is None
    assert pack_conflict(sweep_series(base, ranks=(2, 4))) == "LoRA rank"
    with pytest.raises(ConfigError, match="domain"):
        sweep_series(base, domains=("legal", "legal"))


def test_probe_choices_name_the_general_probe_and_its_former_name_still_loads():
    """The probe once called 'general-200' (213 statements) is 'general': the Launch form and
    the CLI offer the new name, and a spec saying the old one (a stored run, an old spec file such
    as the shipped cross-domain reference's) loads as the new one."""
    import json

    from core import config
    from core.data import DATA_DIR

    assert "general" in config.field_choices("probe")
    assert "general-200" not in config.field_choices("probe")
    assert RunSpec().probe == "general"
    assert "'general' (213 " in config.SETTINGS["probe"].metadata["help"]
    assert RunSpec.from_dict({"probe": "general-200"}).probe == "general"
    assert RunSpec.from_dict(RunSpec(probe="general-200").to_dict()) == RunSpec()
    old = json.loads((DATA_DIR / "reference" / "xdomain_smollm2_cpu.json").read_text())["spec"]
    assert old["probe"] == "general-200"  # stored provenance keeps the name it ran under
    assert RunSpec.from_dict(old).probe == "general"
    with pytest.raises(ConfigError, match="probe"):
        RunSpec.from_dict({"probe": "general-999"})


def test_multiple_choice_help_counts_the_question_file():
    """The multiple-choice help texts name the number of questions the set holds (read from the
    file, as the probe's help counts its statements), not a number typed in."""
    from core import config, data

    n = len(data.load_mc())
    assert f"the {n} own-written" in config.SETTINGS["mc_eval"].metadata["help"]
    assert f"0 = all {n};" in config.SETTINGS["mc_items"].metadata["help"]
