"""Online learning (ODL): incremental updates over new shards with replay, frozen embeddings, a lower
learning rate, a validation gate, exactly-once state and refreshed calibration statistics."""

from tfads.jobs.online.config import OnlineConfig, load_online_config
from tfads.jobs.online.loop import list_shards, pending_shards, run_loop
from tfads.jobs.online.reservoir import Reservoir
from tfads.jobs.online.state import OnlineState, StateStore
from tfads.finetune import embedding_layers
from tfads.jobs.online.updater import OnlineLearner

__all__ = [
    "OnlineConfig",
    "OnlineLearner",
    "OnlineState",
    "Reservoir",
    "StateStore",
    "embedding_layers",
    "list_shards",
    "load_online_config",
    "pending_shards",
    "run_loop",
]
