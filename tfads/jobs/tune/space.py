"""The search space of a sweep: YAML specs over dotted experiment-config keys, validated on load.

A spec is a mapping with exactly one of ``choice: [values]``, ``int: [low, high]`` or
``float: [low, high]``, plus optional ``step``, ``log: true`` (log-uniform sampling), ``when:
{<parent>: [values]}`` (active only while a ``choice`` parent takes one of those values) and
``otherwise: <value>`` (the config value while inactive; without it the base experiment's value
stays). Flags are specs that are not config keys, only parents of conditional keys.
"""

from __future__ import annotations

import copy
import dataclasses
import typing
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from tfads.core.configtools import ConfigError, from_dict
from tfads.core.experiment import ExperimentConfig

if TYPE_CHECKING:
    import keras_tuner

KINDS = ("choice", "int", "float")
OPTIONS = {"step", "log", "when", "otherwise"}
_KEEP = object()  # `otherwise` not given: an inactive key keeps the base experiment's value


@dataclass(frozen=True)
class Param:
    """One hyperparameter: a config key (or a flag) with its sampling spec and condition."""

    name: str
    kind: Literal["choice", "int", "float"]
    values: tuple[Any, ...] = ()
    low: float = 0.0
    high: float = 0.0
    step: float | None = None
    log: bool = False
    parent: str | None = None
    parent_values: tuple[Any, ...] = ()
    otherwise: Any = _KEEP
    is_flag: bool = False

    def declare(self, hp: keras_tuner.HyperParameters) -> None:
        """Register this parameter in a keras-tuner ``HyperParameters`` (parents first)."""
        cond = {"parent_name": self.parent, "parent_values": list(self.parent_values)} if self.parent else {}
        sampling = "log" if self.log else "linear"
        if self.kind == "choice" and all(isinstance(v, bool) for v in self.values):
            hp.Boolean(self.name, default=self.values[0], **cond)
        elif self.kind == "choice":
            hp.Choice(self.name, list(self.values), **cond)
        elif self.kind == "int":
            hp.Int(self.name, int(self.low), int(self.high), step=int(self.step or 1), sampling=sampling, **cond)
        else:
            hp.Float(self.name, self.low, self.high, step=self.step, sampling=sampling, **cond)

    def cast(self, value: Any) -> Any:
        """A sampled value as a plain Python value of the spec's type (YAML-safe)."""
        if self.kind == "int":
            return int(value)
        if self.kind == "float":
            return round(float(value), 12)  # drops float-step artefacts such as 0.15000000000000002
        return type(self.values[0])(value)


@dataclass(frozen=True)
class SearchSpace:
    """The flags and config keys a sweep samples, in declaration order (parents before children)."""

    params: tuple[Param, ...]

    def hyperparameters(self) -> keras_tuner.HyperParameters:
        """The keras-tuner search space."""
        import keras_tuner

        hp = keras_tuner.HyperParameters()
        for param in self.params:
            param.declare(hp)
        return hp

    def active(self, values: dict[str, Any]) -> dict[str, bool]:
        """Whether each parameter is active for sampled ``values`` (its parent chain matches)."""
        state: dict[str, bool] = {}
        for p in self.params:
            state[p.name] = p.parent is None or (state[p.parent] and values.get(p.parent) in p.parent_values)
        return state

    def apply(self, base: dict[str, Any], values: dict[str, Any]) -> dict[str, Any]:
        """The experiment mapping ``base`` with the sampled ``values`` (and ``otherwise`` values) set."""
        out = copy.deepcopy(base)
        active = self.active(values)
        for p in self.params:
            if p.is_flag:
                continue
            if active[p.name] and p.name in values:
                _set(out, p.name, p.cast(values[p.name]))
            elif not active[p.name] and p.otherwise is not _KEEP:
                _set(out, p.name, p.otherwise)
        return out


def parse_space(space: Any, flags: Any, where: str) -> SearchSpace:
    """Parse and validate the ``flags`` and ``space`` sections of a tune YAML.

    Raises:
      ConfigError: ``<where>: space.<key>: <problem>`` for an unknown config key, a malformed spec,
        a value the config field does not accept, or a condition on an unknown parent.
    """
    params: dict[str, Param] = {}
    for section, entries, is_flag in (("flags", flags, True), ("space", space, False)):
        if not isinstance(entries, dict):
            raise ConfigError(f"{where}: {section}: expected a mapping of key -> spec, got {entries!r}")
        for name, spec in entries.items():
            key = f"{section}.{name}"
            if name in params:
                raise ConfigError(f"{where}: {key}: declared twice")
            field_type = None if is_flag else config_field_type(name, where, key)
            params[name] = _parse_spec(name, spec, field_type, params, where, key, is_flag)
    if not any(not p.is_flag for p in params.values()):
        raise ConfigError(f"{where}: space: no config key to tune")
    return SearchSpace(tuple(params.values()))


def config_field_type(name: str, where: str, key: str) -> Any:
    """The type of the experiment-config field at dotted path ``name``; ConfigError if there is none."""
    tp: Any = ExperimentConfig
    path = name.split(".")
    for i, part in enumerate(path):
        if not dataclasses.is_dataclass(tp):
            raise ConfigError(f"{where}: {key}: {'.'.join(path[:i])} is not a section")
        hints = typing.get_type_hints(tp)
        fields = [f.name for f in dataclasses.fields(tp)]
        if part not in fields:
            section = ".".join(path[:i]) or "the experiment"
            raise ConfigError(f"{where}: {key}: unknown config key ({section} has: {', '.join(fields)})")
        tp = hints[part]
    if dataclasses.is_dataclass(tp):
        raise ConfigError(f"{where}: {key}: is a section; tune one of its keys instead")
    return tp


def _parse_spec(
    name: str, spec: Any, field_type: Any, declared: dict[str, Param], where: str, key: str, is_flag: bool
) -> Param:
    if not isinstance(spec, dict):
        raise ConfigError(f"{where}: {key}: expected a spec mapping such as {{choice: [...]}}, got {spec!r}")
    kinds = [k for k in KINDS if k in spec]
    unknown = sorted(set(spec) - set(KINDS) - OPTIONS)
    if unknown:
        raise ConfigError(f"{where}: {key}: unknown spec key {unknown[0]!r} (allowed: {', '.join([*KINDS, *OPTIONS])})")
    if len(kinds) != 1:
        raise ConfigError(f"{where}: {key}: give exactly one of {', '.join(KINDS)}")
    kind = kinds[0]
    if kind == "choice" and {"step", "log"} & set(spec):
        raise ConfigError(f"{where}: {key}: step and log apply to int and float ranges, not to a choice")
    if is_flag and "otherwise" in spec:
        raise ConfigError(f"{where}: {key}: a flag is not a config key, so it has no 'otherwise'")
    fields: dict[str, Any] = {"name": name, "kind": kind, "is_flag": is_flag, "log": spec.get("log", False)}
    if not isinstance(fields["log"], bool):
        raise ConfigError(f"{where}: {key}: log must be true or false, got {fields['log']!r}")
    candidates: list[Any]
    if kind == "choice":
        candidates = _parse_choice(spec["choice"], where, key)
        fields["values"] = tuple(candidates)
    else:
        candidates = _parse_range(kind, spec, fields["log"], where, key)
        fields.update(low=candidates[0], high=candidates[1], step=spec.get("step"))
    if "otherwise" in spec:
        fields["otherwise"] = spec["otherwise"]
        candidates.append(spec["otherwise"])
    if field_type is not None:
        for value in candidates:
            from_dict(field_type, value, where=where, key=key)
    if "when" in spec:
        fields["parent"], fields["parent_values"] = _parse_when(spec["when"], declared, where, key)
    return Param(**fields)


def _parse_choice(values: Any, where: str, key: str) -> list[Any]:
    if not isinstance(values, list) or not values:
        raise ConfigError(f"{where}: {key}: choice needs a non-empty list of values, got {values!r}")
    types = {type(v) for v in values}
    if len(types) != 1 or not types <= {int, float, str, bool}:
        raise ConfigError(
            f"{where}: {key}: choice values must all be int, all float, all str or all bool, got {values!r}"
            " (for null, use a flag parent with `when` and `otherwise: null`)"
        )
    if types == {bool} and sorted(values) != [False, True]:
        raise ConfigError(f"{where}: {key}: a bool choice must be [false, true] (in any order), got {values!r}")
    if len(set(values)) != len(values):
        raise ConfigError(f"{where}: {key}: choice values repeat: {values!r}")
    return list(values)


def _parse_range(kind: str, spec: dict[str, Any], log: bool, where: str, key: str) -> list[Any]:
    bounds = spec[kind]
    number = int if kind == "int" else (int, float)
    if (
        not isinstance(bounds, list)
        or len(bounds) != 2
        or any(isinstance(b, bool) or not isinstance(b, number) for b in bounds)
    ):
        raise ConfigError(f"{where}: {key}: {kind} needs [low, high] as {kind} numbers, got {bounds!r}")
    low, high = bounds
    if low >= high:
        raise ConfigError(f"{where}: {key}: {kind} range needs low < high, got {bounds!r}")
    if log and low <= 0:
        raise ConfigError(f"{where}: {key}: log sampling needs low > 0, got {bounds!r}")
    step = spec.get("step")
    if step is not None and (isinstance(step, bool) or not isinstance(step, number) or step <= 0):
        raise ConfigError(f"{where}: {key}: step must be a positive {kind}, got {step!r}")
    return [low, high] if kind == "int" else [float(low), float(high)]


def _parse_when(when: Any, declared: dict[str, Param], where: str, key: str) -> tuple[str, tuple[Any, ...]]:
    if not isinstance(when, dict) or len(when) != 1:
        raise ConfigError(f"{where}: {key}: when must be one {{parent: [values]}}, got {when!r}")
    ((parent, values),) = when.items()
    if parent not in declared or declared[parent].kind != "choice":
        raise ConfigError(f"{where}: {key}: when: {parent!r} is not a choice flag or key declared above")
    values = values if isinstance(values, list) else [values]
    allowed = declared[parent].values
    bad = [v for v in values if v not in allowed or type(v) is not type(allowed[0])]
    if bad or not values:
        raise ConfigError(f"{where}: {key}: when: {parent} can only be one of {list(allowed)}, got {values!r}")
    return parent, tuple(values)


def _set(data: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    for part in parents:
        data = data[part]
    data[leaf] = value
