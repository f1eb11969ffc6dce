"""Model lifecycle like TF Serving's ServerCore: versions on disk -> aspired -> loaded -> served.

Loads happen off the request path (start-up, the file-system poll thread, config reloads); a new
version is published by swapping an immutable ``{version: Servable}`` dict, so a request sees either
the old or the new set. Old versions are unloaded only once an aspired version is AVAILABLE
(availability-preserving), so a version that fails to load leaves the serving one in place.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import tensorflow as tf
from tensorflow_serving.apis import get_model_status_pb2, model_pb2
from tensorflow_serving.config import model_server_config_pb2

from serving.server.configs import ModelServerConfig, validate_model_server_config
from serving.server.errors import ServingError
from serving.server.inference import replay_warmup
from serving.server.servable import Servable

log = logging.getLogger(__name__)

State = get_model_status_pb2.ModelVersionStatus.State
ModelConfig = model_server_config_pb2.ModelConfig
# Called with each freshly loaded servable before warmup (batching attaches its schedulers here).
LoadHook = Callable[[Servable], None]


@dataclass
class VersionStatus:
    """Lifecycle state of one version and the error that ended it, if any."""

    state: int
    error: ServingError | None = None


@dataclass
class _Model:
    config: ModelConfig
    servables: dict[int, Servable] = field(default_factory=dict)  # replaced, never mutated
    statuses: dict[int, VersionStatus] = field(default_factory=dict)
    labels: dict[str, int] = field(default_factory=dict)
    failed: set[int] = field(default_factory=set)  # versions whose load failed; not retried


def versions_on_disk(base_path: str) -> dict[int, str]:
    """{version: directory name} of the integer-named version directories under ``base_path``.

    Like TF Serving's FileSystemStoragePathSource, a name is parsed as an integer, so ``00000123/`` is
    version 123 and is loaded from ``00000123/``. If two names parse to one version, the first in
    sorted order wins. A missing ``base_path`` has no versions.
    """
    try:
        names = sorted(os.listdir(base_path))
    except FileNotFoundError:
        return {}
    found: dict[int, str] = {}
    for name in names:
        if name.isascii() and name.isdigit() and os.path.isdir(os.path.join(base_path, name)):
            found.setdefault(int(name), name)
    return found


def aspired_versions(config: ModelConfig, on_disk: list[int]) -> set[int]:
    """Apply the model's version policy (latest N by default) to the versions found on disk."""
    on_disk = sorted(on_disk)
    policy = config.model_version_policy
    kind = policy.WhichOneof("policy_choice")
    if kind == "all":
        return set(on_disk)
    if kind == "specific":
        return set(on_disk) & set(policy.specific.versions)
    num = policy.latest.num_versions if kind == "latest" and policy.latest.num_versions > 0 else 1
    return set(on_disk[-num:])


class ModelManager:
    """Owns every configured model's versions and resolves ModelSpecs to loaded servables."""

    def __init__(
        self,
        config: ModelServerConfig,
        *,
        file_system_poll_wait_seconds: float = 1.0,
        allow_version_labels_for_unavailable_models: bool = False,
        on_load: LoadHook | None = None,
        on_unload: LoadHook | None = None,
        on_load_attempt: Callable[[str, bool], None] | None = None,
        on_change: Callable[[], None] | None = None,
        session_config: tf.compat.v1.ConfigProto | None = None,
    ) -> None:
        validate_model_server_config(config, "model config")
        self._config = config
        self._poll_wait = file_system_poll_wait_seconds
        self._allow_unavailable_labels = allow_version_labels_for_unavailable_models
        self._on_load, self._on_unload, self._on_load_attempt = on_load, on_unload, on_load_attempt
        self._on_change = on_change
        self._session_config = session_config
        self._models: dict[str, _Model] = {}  # replaced, never mutated
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # --- lifecycle -----------------------------------------------------------------------------
    def start(self) -> None:
        """Load the configured models (blocking, like tensorflow_model_server), then start polling."""
        self.reload_config(self._config)
        if self._poll_wait > 0:
            self._thread = threading.Thread(target=self._poll_loop, name="fs-poll", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        """Stop polling and unload every version."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        with self._lock:
            for model in self._models.values():
                self._unload(model, set(model.servables))
            self._models = {}

    def _poll_loop(self) -> None:
        while not self._stop.wait(self._poll_wait):
            try:
                self.poll()
            except Exception:  # noqa: BLE001 - keep polling; the serving versions stay in place
                log.exception("File system poll failed")

    def poll(self) -> None:
        """One file-system poll: load new aspired versions, unload ones no longer aspired."""
        with self._lock:
            for model in self._models.values():
                if self._stop.is_set():
                    return
                self._sync_model(model)
            self._changed()

    def _changed(self) -> None:
        if self._on_change is not None:
            self._on_change()

    def reload_config(self, config: ModelServerConfig) -> None:
        """Replace the whole model list (HandleReloadConfigRequest); waits for the new models to load."""
        validate_model_server_config(config, "model config")
        with self._lock:
            old = self._models
            models = {}
            for model_config in config.model_config_list.config:
                model = old.get(model_config.name)
                if model is None or model.config.base_path != model_config.base_path:
                    model = _Model(model_config)
                model.config = model_config
                models[model_config.name] = model
            for name, model in old.items():
                if models.get(name) is not model:
                    self._unload(model, set(model.servables))
            self._models = models
            self._config = config
            try:
                for model in models.values():
                    self._sync_model(model)
                for model in models.values():
                    self._apply_labels(model)
            finally:
                self._changed()

    def _apply_labels(self, model: _Model) -> None:
        labels = dict(model.config.version_labels)
        for version in labels.values():
            if version not in model.servables and not self._allow_unavailable_labels:
                raise ServingError.failed_precondition(
                    f"Request to assign label to version {version} of model {model.config.name}, "
                    "which is not currently available for inference"
                )
        model.labels = labels

    def _sync_model(self, model: _Model) -> None:
        name, base_path = model.config.name, model.config.base_path
        on_disk = versions_on_disk(base_path)
        aspired = aspired_versions(model.config, list(on_disk))
        for version in sorted(aspired - set(model.servables) - model.failed):
            servable = self._load(model, version, os.path.join(base_path, on_disk[version]))
            if servable is not None:
                model.servables = {**model.servables, version: servable}
                model.statuses[version] = VersionStatus(State.AVAILABLE)
                log.info("Successfully loaded servable version {name: %s version: %d}", name, version)
        if not aspired or aspired & set(model.servables):
            self._unload(model, set(model.servables) - aspired)

    def _load(self, model: _Model, version: int, path: str) -> Servable | None:
        name = model.config.name
        model.statuses[version] = VersionStatus(State.LOADING)
        servable = None
        try:
            servable = Servable.load(name, version, path, self._session_config)
            if self._on_load is not None:
                self._on_load(servable)
            start = time.perf_counter()
            count = replay_warmup(servable)
            if count:
                log.info(
                    "Finished reading warmup data for model %s version %d: %d records in %.3f s",
                    name,
                    version,
                    count,
                    time.perf_counter() - start,
                )
        except ServingError as e:
            log.error("Loading servable: {name: %s version: %d} failed: %s", name, version, e.message)
            if servable is not None and self._on_unload is not None:
                self._on_unload(servable)
            model.statuses[version] = VersionStatus(State.END, e)
            model.failed.add(version)
            servable = None
        if self._on_load_attempt is not None:
            self._on_load_attempt(path, servable is not None)
        return servable

    def _unload(self, model: _Model, versions: set[int]) -> None:
        for version in sorted(versions):
            model.statuses[version] = VersionStatus(State.UNLOADING)
            servable = model.servables[version]
            model.servables = {v: s for v, s in model.servables.items() if v != version}
            if self._on_unload is not None:
                self._on_unload(servable)
            model.statuses[version] = VersionStatus(State.END)
            log.info("Unloaded servable version {name: %s version: %d}", model.config.name, version)

    # --- request path --------------------------------------------------------------------------
    def config(self) -> ModelServerConfig:
        """The model server config currently applied."""
        return self._config

    def ready(self) -> bool:
        """True when every configured model has at least one AVAILABLE version."""
        models = self._models
        return bool(models) and all(m.servables for m in models.values())

    def _version_for_label(self, model: _Model | None, label: str) -> int:
        if model is None or label not in model.labels:
            raise ServingError.invalid_argument(f"Unrecognized servable version label: {label}")
        return model.labels[label]

    def resolve(self, spec: model_pb2.ModelSpec) -> Servable:
        """The servable a ModelSpec asks for: a version, a label, or the latest loaded version."""
        model = self._models.get(spec.name)
        if spec.HasField("version"):
            version = spec.version.value
        elif spec.version_label:
            version = self._version_for_label(model, spec.version_label)
        else:
            if model is None or not model.servables:
                raise ServingError.not_found(f"Servable not found for request: Latest({spec.name})")
            servables = model.servables
            return servables[max(servables)]
        servable = model.servables.get(version) if model is not None else None
        if servable is None:
            raise ServingError.not_found(f"Servable not found for request: Specific({spec.name}, {version})")
        return servable

    def model_status(self, spec: model_pb2.ModelSpec) -> get_model_status_pb2.GetModelStatusResponse:
        """GetModelStatus: all versions' states, or one version's (by number or label)."""
        if not spec.name:
            raise ServingError.invalid_argument("Missing model name in request.")
        model = self._models.get(spec.name)
        statuses = dict(model.statuses) if model is not None else {}
        if not statuses:
            raise ServingError.not_found(f"Could not find any versions of model {spec.name}")
        if spec.HasField("version") or spec.version_label:
            version = (
                spec.version.value if spec.HasField("version") else self._version_for_label(model, spec.version_label)
            )
            if version not in statuses:
                raise ServingError.not_found(f"Could not find version {version} of model {spec.name}")
            statuses = {version: statuses[version]}
        response = get_model_status_pb2.GetModelStatusResponse()
        for version in sorted(statuses, reverse=True):
            status = statuses[version]
            entry = response.model_version_status.add(version=version, state=status.state)
            entry.status.SetInParent()
            if status.error is not None:
                entry.status.error_code = status.error.code.value[0]
                entry.status.error_message = status.error.message
        return response
