"""The schema and experiment configs load, and mistakes are reported with file and key."""

from pathlib import Path

import pytest

from tfads.core.configtools import ConfigError
from tfads.core.experiment import load_experiment
from tfads.core.schema import DEFAULT_SCHEMA, load_schema

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def test_default_schema_loads():
    schema = load_schema()
    assert schema.key == "trace_id"
    assert set(schema.domain_features) == {"media", "slot", "scenario"}
    assert schema.calibration_fields == ["advertiser_id", "scenario"]
    assert schema.fields["user_id"].feature == "hashed"
    assert "scenario" in schema.vocab_features and "price" not in schema.vocab_features


def test_default_experiment_loads_and_resolves_schema():
    config = load_experiment(CONFIGS / "default.yaml")
    assert config.model.backbone == "dcnv2"
    assert config.model.adasparse.form == "fusion"
    assert Path(config.schema) == DEFAULT_SCHEMA


def _write(tmp_path, text):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    "text, message",
    [
        ("model: {backbon: dnn}\n", "bad.yaml: model.backbon: unknown key"),
        ("model: {embedding_dim: sixteen}\n", "model.embedding_dim: expected an integer"),
        ("model: {backbone: resnet}\n", "model.backbone: expected one of"),
        ("train: {learning_rate: true}\n", "train.learning_rate: expected a number"),
        ("train: {shuffle_block: 0}\n", "train: shuffle_block must be >= 1"),
        ("model: {adasparse: {r_min: 0.5, r_max: 0.2}}\n", "model.adasparse: need 0 <= r_min <= r_max"),
        ("model: {adasparse: {pruner_input: hidden}}\n", "model.adasparse.pruner_input: expected one of"),
        ("model: {matmul_dtype: float16}\n", "model.matmul_dtype: expected one of"),
        ("model: {backbone: ple, moe: {levels: 0}}\n", "model.moe: levels must be >= 1, got 0"),
        ("model: {moe: {specific_experts: 0, shared_experts: 0}}\n", "model.moe: need .* at least one expert"),
        ("model: {moe: {gate_input: scene}}\n", "model.moe.gate_input: expected one of"),
        ("- a list\n", "top level must be a mapping"),
        ("model: {deep_units: [1, x]}\n", "model.deep_units[1]: expected an integer"),
    ],
)
def test_experiment_mistakes_name_file_and_key(tmp_path, text, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        load_experiment(_write(tmp_path, text))


def test_schema_missing_key_and_unknown_field(tmp_path):
    text = DEFAULT_SCHEMA.read_text()
    with pytest.raises(ConfigError, match="timestamp: missing required key"):
        load_schema(_write(tmp_path, text.replace("timestamp: ts\n", "")))
    with pytest.raises(ConfigError, match=r"fields\.age\.typo: unknown key"):
        load_schema(_write(tmp_path, text.replace("age:           {type: int,", "age:           {typo: 1, type: int,")))
    with pytest.raises(ConfigError, match="derived.scenario.concat names unknown fields"):
        load_schema(_write(tmp_path, text.replace("concat: [media, slot]", "concat: [media, slott]")))


def test_missing_file_is_clear(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_schema(tmp_path / "nope.yaml")


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda s: s.pop("conversions"), "no conversions log: add a conversions section, or set labels.conversion"),
        (lambda s: s.update(labels=["click", "conversion"]), "labels: expected a mapping"),
        (lambda s: s.update(domain="city"), "domain 'city' must be a feature marked domain_aware"),
        (lambda s: s.update(user_key="uid"), "user_key 'uid' must be listed under fields"),
        (lambda s: s["cold_start"].update(enabled=True) or s.pop("feed"), "cold_start.enabled needs a feed section"),
        (lambda s: s["cold_start"].update(feed_label="liked"), r"the click field cold_start.feed_label \('liked'\)"),
        (lambda s: s.update(labels={"click": "hour"}), r"label column\(s\) \['hour'\] are also listed under fields"),
        (lambda s: s["derived"]["scenario"].update(concat=["media", "price"]),
         r"derived.scenario.concat joins float field\(s\) \['price'\]"),
        (lambda s: s["derived"].update(hour={"concat": ["media"]}), "derived.hour is also a field"),
        (lambda s: s.pop("clicks"), "input: events needs a key and a clicks section"),
        (lambda s: s.update(input="table"), "input: table reads its labels from columns; remove the clicks, "
                                             "conversions, feed section"),
        (lambda s: s.update(format="csv"), "format: csv: event logs are gzipped JSON lines"),
        (lambda s: s["fields"]["ts"].update(type="string"), "timestamp 'ts' must be an int field"),
    ],
)
def test_schema_role_mistakes_are_named(tmp_path, edit, message):
    import yaml

    schema = yaml.safe_load(DEFAULT_SCHEMA.read_text())
    edit(schema)
    with pytest.raises(ConfigError, match=message):
        load_schema(_write(tmp_path, yaml.safe_dump(schema)))


def test_click_only_schema_needs_no_conversions_feed_or_derived(tmp_path):
    import yaml

    schema = yaml.safe_load(DEFAULT_SCHEMA.read_text())
    for section in ("conversions", "feed", "derived", "cold_start", "domain"):
        schema.pop(section)
    schema["labels"] = {"click": "clicked", "conversion": None}
    loaded = load_schema(_write(tmp_path, yaml.safe_dump(schema)))
    assert loaded.event_logs == ("clicks",) and loaded.labels.columns == ["clicked"]
    assert loaded.derived == {} and loaded.feed is None
