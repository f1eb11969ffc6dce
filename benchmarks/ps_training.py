"""Parameter-server training on one machine: examples/s and peak memory per process, one process vs a loopback
cluster (1 chief + 2 workers + 2 ps), with the schema's hashed tables and with a 1e7-bucket ``user_id`` table.

Generator data (``--days`` x ``--impressions``) built by the Beam job; the default experiment's model (fused table,
embedding 16, LazyAdam) trains ``--periods`` validation periods of ``--steps`` steps of ``--batch`` examples. The big
table is the same data with ``user_id`` hashed into ``--buckets`` buckets (a copy of the manifest). Worker and ps
tasks run `tfads train` itself (they serve until killed); the chief and the single process run ``train()`` in
this module's ``--run`` mode, which times the steps of the last period (from its first step to the end of its
last, before its validation: the earlier periods trace the functions). Peak memory is each process's resident
high-water mark (``VmHWM``: the ``--run`` process reads its own as it ends, a server's is read before it is killed;
not ``ru_maxrss``, which starts from the parent's size when the child is spawned). The last period's checkpoint of
each run is then evaluated in this process on the whole valid split (loss, pCTR AUC): the same steps, one process or
the cluster. A 1e7-row run writes ~8 GB of checkpoints; each run's directory is deleted once evaluated.

    python -m benchmarks.ps_training [--out bench_out/ps_training] [--buckets 10000000] [--steps 40]

On a 2-core machine the cluster's five processes share two cores, so it is slower than one process: the point is
the memory per process (the table's rows and LazyAdam's two moments split over the ps tasks) and that it runs.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Any

from benchmarks.results import add_results_argument, publish

WORKERS, PS = 2, 2


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_data(out: str, days: int, impressions: int, buckets: int) -> dict[str, str]:
    """The generator's logs built into ``out/data``; manifests with the schema's hash bins and with ``user_id``
    hashed into ``buckets``."""
    from tfads.datagen import generate
    from tfads.jobs.dataset import build_dataset

    data = os.path.join(out, "data")
    manifest = os.path.join(data, "manifest.json")
    if not os.path.exists(manifest):
        logs = os.path.join(out, "logs")
        generate(logs, days=days, impressions_per_day=impressions, seed=0, progress=False)
        build_dataset(logs, data)
    with open(manifest) as f:
        record = json.load(f)
    record["features"]["user_id"]["hash_bins"] = buckets
    big = os.path.join(data, f"manifest-user_id-{buckets}.json")  # beside the original: paths stay relative
    with open(big, "w") as f:
        json.dump(record, f)
    return {"schema": manifest, f"user_id {buckets:.0e}": big}


def _config(args: argparse.Namespace) -> str:
    from tfads.core.experiment import load_experiment

    config = load_experiment()
    train = dataclasses.replace(config.train, epochs=args.periods, validations_per_epoch=1, steps_per_epoch=args.steps,
                                validation_steps=2, batch_size=args.batch, early_stopping_patience=100)
    path = os.path.join(args.out, "experiment.yaml")
    import yaml

    with open(path, "w") as f:
        yaml.safe_dump(dataclasses.replace(config, train=train).to_dict(), f, sort_keys=False)
    return path


def peak_mib(pid: int | str = "self") -> float:
    """A process's resident-memory high-water mark (``VmHWM``) in MiB."""
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) / 1024 for line in f if line.startswith("VmHWM:"))


def _run(command: list[str], env: dict[str, str]) -> subprocess.Popen:
    """Start ``command``; its stdout (one JSON line) is piped, its stderr (TensorFlow's chatter) goes to a file."""
    stderr = tempfile.TemporaryFile(mode="w+")
    proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=stderr, text=True)
    proc.stderr_file = stderr  # type: ignore[attr-defined]
    return proc


def _finish(proc: subprocess.Popen, role: str) -> dict[str, Any]:
    out = proc.stdout.read()
    if proc.wait():
        proc.stderr_file.seek(0)
        raise RuntimeError(f"{role} exited {proc.returncode}:\n{proc.stderr_file.read()[-3000:]}")
    return json.loads(out.strip().splitlines()[-1])


def measure(manifest: str, config: str, work: str, cluster: bool) -> list[dict[str, Any]]:
    """Rows ``{process, peak_mib[, examples_per_s]}``: the single process, or every task of the cluster."""
    run_cmd = [sys.executable, "-m", "benchmarks.ps_training", "--run", "--manifest", manifest, "--config", config,
               "--model-dir", work]
    if not cluster:
        env = {k: v for k, v in os.environ.items() if k != "TF_CONFIG"}
        return [{"process": "single", **_finish(_run(run_cmd, env), "single process")}]
    spec = {"chief": [f"127.0.0.1:{_free_port()}"], "worker": [f"127.0.0.1:{_free_port()}" for _ in range(WORKERS)],
            "ps": [f"127.0.0.1:{_free_port()}" for _ in range(PS)]}
    serve_cmd = [sys.executable, "-m", "tfads.cli", "train", "--config", config, "--data", manifest,
                 "--model-dir", work]

    def env(job: str, index: int) -> dict[str, str]:
        return dict(os.environ, TF_CONFIG=json.dumps({"cluster": spec, "task": {"type": job, "index": index}}))

    servers = {(job, i): subprocess.Popen(serve_cmd, env=env(job, i), stdout=subprocess.DEVNULL,
                                          stderr=subprocess.DEVNULL)
               for job, count in (("ps", PS), ("worker", WORKERS)) for i in range(count)}
    try:
        rows = [{"process": "chief", **_finish(_run(run_cmd, env("chief", 0)), "chief")}]
        rows += [{"process": f"{job} {i}", "peak_mib": peak_mib(proc.pid)} for (job, i), proc in servers.items()]
    finally:
        for proc in servers.values():
            proc.kill()
            proc.wait()
    return rows


def run_one(args: argparse.Namespace) -> None:
    """``--run``: train() in this process (single, or the chief under TF_CONFIG); print the last period's timing."""
    import tfads  # noqa: F401
    import tf_keras as keras

    from tfads.core.experiment import load_experiment
    from tfads.train import train

    class Clock(keras.callbacks.Callback):
        """Seconds from a period's first step to the end of its last (its validation starts after)."""

        def __init__(self) -> None:
            super().__init__()
            self._supports_tf_logs = True  # allowed under parameter servers; the logs are not read
            self.start, self.seconds = 0.0, 0.0

        def on_epoch_begin(self, epoch, logs=None):
            self.start = time.perf_counter()

        def on_test_begin(self, logs=None):
            self.seconds = time.perf_counter() - self.start

    clock = Clock()
    fit = keras.Model.fit

    def timed_fit(model, *a, **kw):  # the benchmark's only hook: train() builds its own callbacks
        kw["callbacks"] = [*kw.get("callbacks", []), clock]
        return fit(model, *a, **kw)

    keras.Model.fit = timed_fit
    config = load_experiment(args.config)
    train(config, args.manifest, args.model_dir, verbose=0)
    steps, batch = config.train.steps_per_epoch, config.train.batch_size
    print(json.dumps({"examples_per_s": steps * batch / clock.seconds, "period_s": clock.seconds,
                      "peak_mib": peak_mib()}))


def evaluate(manifest: str, config: str, work: str) -> dict[str, float]:
    """Loss and pCTR AUC on the whole valid split of the run's last validation checkpoint, in this process."""
    import tfads  # noqa: F401

    from tfads.core.experiment import load_experiment
    from tfads.core.manifest import load_manifest
    from tfads.models import build_model, compile_model
    from tfads.train import valid_dataset

    cfg, data = load_experiment(config), load_manifest(manifest)
    model = build_model(data, cfg.model)
    compile_model(model, cfg.model, cfg.train.learning_rate)
    model.load_weights(os.path.join(work, "checkpoints", f"ckpt-{cfg.train.epochs:02d}")).expect_partial()
    scores = model.evaluate(valid_dataset(cfg.train, data), verbose=0, return_dict=True)
    return {"valid_loss": scores["loss"], "valid_ctr_auc": scores["ctr_auc"]}


def table(results: dict[str, dict[str, dict]]) -> str:
    lines = ["| table | setup | process | peak RSS MiB | examples/s | valid loss | valid pCTR AUC |",
             "|---|---|---|---|---|---|---|"]
    for size, setups in results.items():
        for setup, run in setups.items():
            for row in run["processes"]:
                trained = "examples_per_s" in row  # the process that ran train()
                speed = f"{row['examples_per_s']:,.0f}" if trained else ""
                scores = f"{run['valid_loss']:.4f} | {run['valid_ctr_auc']:.4f}" if trained else " | "
                lines.append(f"| {size} | {setup} | {row['process']} | {row['peak_mib']:,.0f} | {speed} | {scores} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="bench_out/ps_training", help="data and model dirs")
    parser.add_argument("--days", type=int, default=6, help="generator days (3 train days with the default split)")
    parser.add_argument("--impressions", type=int, default=20_000, help="generator impressions per day")
    parser.add_argument("--buckets", type=int, default=10_000_000, help="user_id hash buckets of the big table")
    parser.add_argument("--steps", type=int, default=40, help="steps per validation period")
    parser.add_argument("--periods", type=int, default=2, help="validation periods (the last one is timed)")
    parser.add_argument("--batch", type=int, default=1024)
    parser.add_argument("--run", action="store_true", help=argparse.SUPPRESS)  # internal: one train() here
    parser.add_argument("--manifest", help=argparse.SUPPRESS)
    parser.add_argument("--config", help=argparse.SUPPRESS)
    parser.add_argument("--model-dir", help=argparse.SUPPRESS)
    add_results_argument(parser)
    args = parser.parse_args(argv)
    if args.run:
        run_one(args)
        return 0
    if args.buckets < 1 or args.steps < 1 or args.periods < 2:
        parser.error("--buckets and --steps must be >= 1 and --periods >= 2 (the first period traces)")
    os.makedirs(args.out, exist_ok=True)
    manifests = make_data(args.out, args.days, args.impressions, args.buckets)
    config = _config(args)
    results: dict[str, dict[str, dict]] = {}
    for size, manifest in manifests.items():
        results[size] = {}
        for setup, cluster in (("one process", False), (f"{WORKERS} workers + {PS} ps", True)):
            work = os.path.join(args.out, "runs", f"{size.replace(' ', '_')}-{'ps' if cluster else 'single'}")
            if os.path.exists(work):
                shutil.rmtree(work)
            processes = measure(manifest, config, work, cluster)
            results[size][setup] = {"processes": processes, **evaluate(manifest, config, work)}
            shutil.rmtree(work)
            print(size, setup, results[size][setup], flush=True)
    publish("ps_training", {"settings": vars(args) | {"workers": WORKERS, "ps": PS}, "runs": results},
            table(results), args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
