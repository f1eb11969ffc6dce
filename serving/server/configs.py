"""TF Serving's text-format config files: ModelServerConfig, BatchingParameters, MonitoringConfig.

``tensorflow-serving-api`` ships ``ModelServerConfig`` but not ``BatchingParameters``
(session_bundle_config.proto) or ``MonitoringConfig`` (monitoring_config.proto); those two are
declared here with TF Serving's package, field names and numbers so the same files parse in both.
"""

from __future__ import annotations

from google.protobuf import descriptor_pb2, descriptor_pool, message, message_factory, text_format
from google.protobuf import wrappers_pb2  # noqa: F401  (registers wrappers.proto in the default pool)
from tensorflow_serving.config import model_server_config_pb2

from serving.server.errors import ServingError

ModelServerConfig = model_server_config_pb2.ModelServerConfig
DEFAULT_PROMETHEUS_PATH = "/monitoring/prometheus/metrics"

_T = descriptor_pb2.FieldDescriptorProto


def _field(name: str, number: int, ftype: int, type_name: str = "", repeated: bool = False) -> dict:
    label = _T.LABEL_REPEATED if repeated else _T.LABEL_OPTIONAL
    field = {"name": name, "number": number, "type": ftype, "label": label}
    return field | ({"type_name": type_name} if type_name else {})


def _build_file() -> descriptor_pb2.FileDescriptorProto:
    msg, i64, s = _T.TYPE_MESSAGE, ".google.protobuf.Int64Value", ".google.protobuf.StringValue"
    messages = {
        "BatchingParameters": [
            _field("max_batch_size", 1, msg, i64),
            _field("batch_timeout_micros", 2, msg, i64),
            _field("max_enqueued_batches", 3, msg, i64),
            _field("num_batch_threads", 4, msg, i64),
            _field("thread_pool_name", 5, msg, s),
            _field("allowed_batch_sizes", 6, _T.TYPE_INT64, repeated=True),
            _field("pad_variable_length_inputs", 7, _T.TYPE_BOOL),
        ],
        "PrometheusConfig": [_field("enable", 1, _T.TYPE_BOOL), _field("path", 2, _T.TYPE_STRING)],
        "MonitoringConfig": [
            _field("prometheus_config", 1, msg, ".tensorflow.serving.PrometheusConfig"),
        ],
    }
    fdp = descriptor_pb2.FileDescriptorProto(
        name="tfads/serving/tf_serving_extra_configs.proto",
        package="tensorflow.serving",
        syntax="proto3",
        dependency=["google/protobuf/wrappers.proto"],
    )
    for name, fields in messages.items():
        fdp.message_type.add(name=name, field=[_T(**f) for f in fields])
    return fdp


def _message_classes() -> dict[str, type[message.Message]]:
    pool = descriptor_pool.Default()
    fdp = _build_file()
    try:
        file_desc = pool.FindFileByName(fdp.name)
    except KeyError:
        pool.Add(fdp)
        file_desc = pool.FindFileByName(fdp.name)
    return {n: message_factory.GetMessageClass(d) for n, d in file_desc.message_types_by_name.items()}


_CLASSES = _message_classes()
BatchingParameters = _CLASSES["BatchingParameters"]
MonitoringConfig = _CLASSES["MonitoringConfig"]


def parse_text_proto(text: str, proto_cls: type[message.Message], source: str) -> message.Message:
    """Parse ``text`` as a text-format ``proto_cls``; raise INVALID_ARGUMENT naming ``source``."""
    try:
        return text_format.Parse(text, proto_cls())
    except text_format.ParseError as e:
        raise ServingError.invalid_argument(
            f"Invalid protobuf file: '{source}': Error parsing text-format {proto_cls.DESCRIPTOR.full_name}: {e}"
        ) from e


def read_text_proto(path: str, proto_cls: type[message.Message]) -> message.Message:
    """Read and parse a text-format proto file like tensorflow_model_server's ParseProtoTextFile."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as e:
        raise ServingError.not_found(f"{path}: cannot read config file: {e.strerror}") from e
    return parse_text_proto(text, proto_cls, path)


def single_model_config(model_name: str, model_base_path: str) -> ModelServerConfig:
    """The config tensorflow_model_server builds from --model_name/--model_base_path."""
    config = ModelServerConfig()
    model = config.model_config_list.config.add()
    model.name, model.base_path, model.model_platform = model_name, model_base_path, "tensorflow"
    return config


def validate_model_server_config(config: ModelServerConfig, source: str) -> None:
    """Reject configs tensorflow_model_server would reject (custom configs, duplicate names, ...)."""
    if config.WhichOneof("config") != "model_config_list":
        raise ServingError.invalid_argument(f"{source}: only model_config_list is supported")
    seen: set[str] = set()
    for i, model in enumerate(config.model_config_list.config):
        where = f"{source}: model_config_list.config[{i}]"
        if not model.name:
            raise ServingError.invalid_argument(f"{where}: name is empty")
        if model.name in seen:
            raise ServingError.invalid_argument(f"{where}: Illegal to list model {model.name} multiple times")
        seen.add(model.name)
        if not model.base_path:
            raise ServingError.invalid_argument(f"{where}: base_path is empty for model {model.name}")
        if model.model_platform not in ("", "tensorflow"):
            raise ServingError.invalid_argument(
                f"{where}: model_platform {model.model_platform!r} is not supported (only 'tensorflow')"
            )


def batching_options(params: message.Message) -> dict[str, int]:
    """BatchingParameters with TF Serving's defaults filled in (batching_session.h / shared scheduler)."""

    def get(name: str, default: int) -> int:
        return getattr(params, name).value if params.HasField(name) else default

    options = {
        "max_batch_size": get("max_batch_size", 1000),
        "batch_timeout_micros": get("batch_timeout_micros", 0),
        "max_enqueued_batches": get("max_enqueued_batches", 10),
        "num_batch_threads": get("num_batch_threads", 1),
    }
    for key, value in options.items():
        if value < (0 if key == "batch_timeout_micros" else 1):
            raise ServingError.invalid_argument(f"batching parameters: {key} must be positive, got {value}")
    return options
