"""Hyperparameter search with Optuna: random (default), grid or TPE, on shared storage.

DL book 11.4.3-11.4.5:
- random search is the default: "as simple to program, more convenient to use, and converges
  much faster" than grid search (Bergstra & Bengio 2012), with positive reals drawn
  log-uniformly, e.g. log10(lr) ~ U(-4, -1) (eq. 11.2-11.3), and no binning;
- grid search for three or fewer hyperparameters (`--sampler grid`, by default over lr x width
  on a log scale);
- model-based search (TPE, Bergstra et al. 2011) is offered but "not yet sufficiently mature or
  reliable" to recommend;
- hopeless trials are stopped early ("one can usually tell early on if some set of
  hyperparameters is completely pathological"): each evaluation's validation sequence accuracy
  is reported to an Optuna pruner (median by default).

Each trial is one `transcribe train --config trial.json` subprocess on one thread; the trial
process reads the metrics.jsonl it appends to, reports every row, and terminates the training
process when the pruner says so. Training needs no callback, a pruned run folder is an ordinary
(unfinished) run, and a crash of one trial cannot take its worker down.

The study lives in a database (default sqlite:///OUT/study.db): `--workers N` processes on one
machine, and any number of machines given the same --storage URL and --study-name, draw trials
from one study (load_if_exists). Results: OUT/results.csv, OUT/results.md and OUT/best.json, a
{"model", "data", "train"} file that `transcribe train --config OUT/best.json` accepts.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import functools
import hashlib
import io
import json
import math
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
import warnings
from dataclasses import dataclass
from pathlib import Path


POLL_SECONDS = 0.5       # how often a trial reads its metrics.jsonl
WATCH_SECONDS = 5.0      # how often the progress of the whole search is read from the study
SQLITE_TIMEOUT = 60      # seconds a worker waits for the SQLite lock (several processes write)
# A worker on another machine that dies (SIGKILL, power) stops its trial's heartbeat; after the
# grace period the next worker to start a trial marks it failed (Optuna's stale-trial check).
# Workers on this machine are checked by pid at once (fail_orphaned_trials).
HEARTBEAT_SECONDS = 60
GRACE_SECONDS = 180


@dataclass(frozen=True)
class Param:
    name: str
    kind: str                    # "float" | "int" | "categorical"
    low: float = 0.0
    high: float = 0.0
    log: bool = False            # log-uniform (11.4.4: positive reals spanning decades)
    step: float | None = None
    choices: tuple = ()
    grid: tuple = ()             # values for --sampler grid
    help: str = ""


# The declared space. Ranges are chosen "conservatively ... to make sure that the optimal value is
# very likely to be in the selected range" (11.4.3).
SPACE: dict[str, Param] = {p.name: p for p in (
    # eq. 11.2-11.3: log10(learning_rate) ~ u(-5, -1); the grid is the chapter's {.1, .01, 1e-3, 1e-4, 1e-5}
    Param("lr", "float", 1e-5, 1e-1, log=True, grid=(1e-1, 1e-2, 1e-3, 1e-4, 1e-5),
          help="peak learning rate, log-uniform (eq. 11.2-11.3)"),
    Param("width", "float", 0.5, 2.0, log=True, grid=(0.5, 1.0, 2.0),
          help="multiplier of every conv width and FC size of the base model (capacity, table 11.1)"),
    Param("dropout", "float", 0.0, 0.5, grid=(0.0, 0.2),
          help="dropout rate after every hidden layer"),
    Param("weight_decay", "float", 1e-6, 1e-2, log=True, grid=(1e-5, 5e-4),
          help="L2 weight decay on weights, log-uniform"),
    # 0.1 steps, because every distinct value builds its own crop cache
    Param("widen", "float", 1.0, 1.6, step=0.1, grid=(1.0, 1.3, 1.6),
          help="crop widening about the number box (Goodfellow et al. 2014 / 11.6: wider crops)"),
    Param("batch_size", "categorical", choices=(32, 64, 128), grid=(32, 64, 128),
          help="images per step"),
)}
DEFAULT_GRID = ("lr", "width")   # grid search: three or fewer hyperparameters (11.4.3)


def suggest(trial, names) -> dict:
    """Draw the named parameters from `trial` (the others keep the base configuration's values)."""
    out = {}
    for name in names:
        p = SPACE[name]
        if p.kind == "float":
            out[name] = trial.suggest_float(name, p.low, p.high, log=p.log, step=p.step)
        elif p.kind == "int":
            out[name] = trial.suggest_int(name, int(p.low), int(p.high), log=p.log)
        else:
            out[name] = trial.suggest_categorical(name, list(p.choices))
    return out


def apply_params(params: dict, model_cfg, data_cfg, train_cfg):
    """(model, data, train) configs with a trial's parameters applied."""
    m, d, t = {}, {}, {}
    if "width" in params:
        scale = lambda xs: tuple(max(1, round(x * params["width"])) for x in xs)  # noqa: E731
        m.update(widths=scale(model_cfg.widths), fc=scale(model_cfg.fc))
    if "dropout" in params:
        m["dropout"] = float(params["dropout"])
    if "widen" in params:
        d["widen"] = round(float(params["widen"]), 3)
    for key in ("lr", "weight_decay", "batch_size"):
        if key in params:
            t[key] = params[key]
    return (dataclasses.replace(model_cfg, **m), dataclasses.replace(data_cfg, **d),
            dataclasses.replace(train_cfg, **t))


def _storage(url: str):
    import optuna
    if url.startswith("sqlite:"):
        with warnings.catch_warnings():  # heartbeats are "experimental" in Optuna, and used here on purpose
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.storages.RDBStorage(url, engine_kwargs={"connect_args": {"timeout": SQLITE_TIMEOUT}},
                                              heartbeat_interval=HEARTBEAT_SECONDS, grace_period=GRACE_SECONDS)
    return url


def make_sampler(kind: str, names, seed: int | None):
    import optuna
    if kind == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if kind == "tpe":
        return optuna.samplers.TPESampler(seed=seed)
    if kind == "grid":
        return optuna.samplers.GridSampler({n: list(SPACE[n].grid) for n in names}, seed=seed)
    raise ValueError(f"unknown sampler {kind!r} (random, grid or tpe)")


def make_pruner(kind: str, startup: int):
    import optuna
    if kind == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=startup, n_warmup_steps=0)
    if kind == "hyperband":
        return optuna.pruners.HyperbandPruner()
    if kind == "none":
        return optuna.pruners.NopPruner()
    raise ValueError(f"unknown pruner {kind!r} (median, hyperband or none)")


# ----------------------------------------------------------------------------------------------
# One trial


def trial_folder(out: Path, study_name: str, number: int) -> Path:
    """OUT/trials/<study>/<number>: trial numbers count per study, so two studies sharing one
    --out must not share folders (each would delete the other's trials)."""
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", study_name).strip(".")
    if safe != study_name:  # made safe as a folder name: keep distinct names distinct
        safe = f"{safe or 'study'}-{hashlib.sha1(study_name.encode()).hexdigest()[:8]}"
    return out / "trials" / safe / f"{number:04d}"


def _die_with_parent(parent: int) -> None:
    """In the training subprocess, before it runs: ask Linux to send it SIGTERM when the worker
    that started it dies, however it dies (prctl PR_SET_PDEATHSIG); elsewhere, nothing."""
    if sys.platform.startswith("linux"):
        import ctypes
        import signal
        PR_SET_PDEATHSIG = 1
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        if os.getppid() != parent:  # the worker died before prctl took effect
            os._exit(1)


def fail_orphaned_trials(storage_url: str, study_name: str) -> list[int]:
    """Mark FAIL the trials left RUNNING by a worker on this machine that no longer runs (it
    was killed: nothing in it could mark its trial). Returns their numbers."""
    import optuna
    from transcribe.dataset import process_running
    storage = _storage(storage_url)
    study = optuna.load_study(study_name=study_name, storage=storage)
    host, failed = socket.gethostname(), []
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        worker = t.user_attrs.get("worker") or {}
        if worker.get("host") == host and not process_running(int(worker.get("pid", 0))):
            trial_id = storage.get_trial_id_from_study_id_trial_number(study._study_id, t.number)
            storage.set_trial_state_values(trial_id, optuna.trial.TrialState.FAIL)
            failed.append(t.number)
    return failed


def run_trial(trial, names, base: dict, out: Path) -> float:
    """Train one configuration in a subprocess; report each evaluation; prune; return the best
    validation sequence accuracy of the run (what early stopping would keep)."""
    from transcribe.runs import read_metrics, save_json
    import optuna
    from transcribe import config as C
    from transcribe.dataset import DataConfig
    from transcribe.model import ModelConfig
    from transcribe.training import TrainConfig
    params = suggest(trial, names)
    run = trial_folder(out, trial.study.study_name, trial.number)
    model_cfg, data_cfg, train_cfg = apply_params(
        params, C.from_dict(ModelConfig, base["model"]), C.from_dict(DataConfig, base["data"]),
        C.from_dict(TrainConfig, base["train"]))
    train_cfg = dataclasses.replace(train_cfg, out=str(run), threads=1, progress=False)
    # A trial number is new in its study, so a folder already there belongs to an earlier study
    # of the same name (e.g. one whose database was deleted): training would resume it. Start clean.
    if run.exists():
        shutil.rmtree(run)
    run.mkdir(parents=True)
    cfg_path = run / "trial.json"
    save_json({"model": model_cfg, "data": data_cfg, "train": train_cfg}, cfg_path)
    trial.set_user_attr("run", str(run))
    trial.set_user_attr("worker", {"pid": os.getpid(), "host": socket.gethostname()})
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    log = open(run / "train.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "transcribe.cli", "train", "--config", str(cfg_path)],
                            stdout=log, stderr=subprocess.STDOUT, env=env,
                            preexec_fn=functools.partial(_die_with_parent, os.getpid()))
    seen, best, pruned = 0, -1.0, False
    try:
        while True:
            done = proc.poll() is not None
            rows = read_metrics(run, partial_ok=True)
            for row in rows[seen:]:
                acc = row.get("val_seq_acc")
                acc = -1.0 if acc is None or not math.isfinite(acc) else float(acc)
                best = max(best, acc)
                trial.report(acc, int(row["step"]))
                if trial.should_prune():
                    pruned = True
                    break
            seen = len(rows)
            if pruned or done:
                break
            time.sleep(POLL_SECONDS)
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        log.close()
    trial.set_user_attr("best_val_seq_acc", best)
    if pruned:
        raise optuna.TrialPruned(f"validation sequence accuracy {best:.3f} below the median at step {row['step']}")
    if proc.returncode != 0:
        tail = (run / "train.log").read_text()[-800:]
        raise RuntimeError(f"{run}: training exited with code {proc.returncode}:\n{tail}")
    if best < 0:
        raise RuntimeError(f"{run}: no finite validation accuracy in metrics.jsonl")
    return best


def _worker(storage_url: str, study_name: str, sampler: str, names, seed, pruner: str, startup: int,
            n_trials: int, base: dict, out: str, timeout: float | None) -> None:
    """One worker process: load the shared study and run its share of trials."""
    import optuna
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    fail_orphaned_trials(storage_url, study_name)
    study = optuna.load_study(study_name=study_name, storage=_storage(storage_url),
                              sampler=make_sampler(sampler, names, seed), pruner=make_pruner(pruner, startup))
    study.optimize(lambda t: run_trial(t, names, base, Path(out)), n_trials=n_trials, timeout=timeout,
                   catch=(RuntimeError,))


def watch(storage_url: str, study_name: str, total: int, stop: threading.Event) -> None:
    """The search's progress, read from the study every WATCH_SECONDS until `stop`: trials finished
    in this invocation of `total`, the running trials' last reported steps, the best so far
    (progress.bar: a bar on a terminal, a plain line every 30 s in a log)."""
    import optuna
    from transcribe.progress import bar
    storage = _storage(storage_url)

    def trials():
        return optuna.load_study(study_name=study_name, storage=storage).get_trials(deepcopy=False)

    before = sum(t.state.is_finished() for t in trials())
    progress = bar(total=total, desc="search", unit="trial")
    while True:
        stopping = stop.wait(WATCH_SECONDS)
        try:
            ts = trials()
        except Exception:  # a busy or briefly unreachable database: progress waits for the next read
            if stopping:
                break
            continue
        done = sum(t.state.is_finished() for t in ts) - before
        running = [f"#{t.number} at step {max(t.intermediate_values, default=0)}" for t in ts
                   if t.state == optuna.trial.TrialState.RUNNING]
        values = [t.value for t in ts if t.state == optuna.trial.TrialState.COMPLETE and t.value is not None]
        best = f"best {max(values):.1%}" if values else ""
        progress.set_postfix_str("; ".join(part for part in (", ".join(running), best) if part))
        progress.update(done - progress.n)  # 0 too: a log still gets its line every 30 s
        if stopping:
            break
    progress.close()


# ----------------------------------------------------------------------------------------------
# Results


def results_rows(study) -> list[dict]:
    rows = []
    for t in study.trials:
        rows.append({"trial": t.number, "state": t.state.name,
                     "val_seq_acc": t.value if t.value is not None else t.user_attrs.get("best_val_seq_acc"),
                     "last_step": max(t.intermediate_values) if t.intermediate_values else None,
                     "seconds": round(t.duration.total_seconds(), 1) if t.duration else None,
                     **{f"param_{k}": v for k, v in sorted(t.params.items())}, "run": t.user_attrs.get("run")})
    return rows


def results_csv(rows: list[dict]) -> str:
    keys = sorted({k for r in rows for k in r}, key=lambda k: (k not in ("trial", "state", "val_seq_acc"), k))
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=keys, lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    return buf.getvalue()


def results_markdown(rows: list[dict], best) -> str:
    params = sorted({k for r in rows for k in r if k.startswith("param_")})
    fmt = lambda v: "-" if v is None else (f"{v:.3g}" if isinstance(v, float) else str(v))  # noqa: E731
    ordered = sorted(rows, key=lambda r: -(r["val_seq_acc"] if r["val_seq_acc"] is not None else -2))
    lines = ["| trial | state | val seq. acc | last step | " + " | ".join(p[6:] for p in params) + " |",
             "|" + "---|" * (4 + len(params))]
    for r in ordered:
        acc = "-" if r["val_seq_acc"] is None or r["val_seq_acc"] < 0 else f"{100 * r['val_seq_acc']:.1f}%"
        lines.append(f"| {r['trial']} | {r['state']} | {acc} | {fmt(r['last_step'])} | "
                     + " | ".join(fmt(r.get(p)) for p in params) + " |")
    head = "# Hyperparameter search\n\n"
    if best is not None:
        head += f"Best: trial {best.number}, validation sequence accuracy {100 * best.value:.1f}%.\n\n"
    return head + "\n".join(lines) + "\n"


def write_results(study, out: Path) -> dict | None:
    """results.csv, results.md and best.json (the best trial's configuration, train.out -> OUT/best)."""
    from transcribe.runs import atomic_write
    import optuna
    rows = results_rows(study)
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    best = max(complete, key=lambda t: t.value) if complete else None
    atomic_write(out / "results.csv", results_csv(rows))
    atomic_write(out / "results.md", results_markdown(rows, best))
    if best is None:
        return None
    cfg = json.loads((Path(best.user_attrs["run"]) / "trial.json").read_text())
    cfg["train"]["out"] = str(out / "best")
    cfg["train"]["threads"] = 0
    atomic_write(out / "best.json", json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    return cfg


# ----------------------------------------------------------------------------------------------
# Command: transcribe search


def add_search_arguments(parser: argparse.ArgumentParser) -> None:
    from transcribe.studies.methodology import add_base_arguments
    add_base_arguments(parser)
    parser.add_argument("--sampler", choices=("random", "grid", "tpe"), default="random",
                        help="random (default; DL book 11.4.4), grid (<= 3 hyperparameters), tpe (model-based)")
    parser.add_argument("--params", nargs="+", choices=list(SPACE), default=None,
                        help="hyperparameters to search (default: all for random/tpe, lr and width for grid); "
                             + "; ".join(f"{p.name}: {p.help}" for p in SPACE.values()))
    parser.add_argument("--trials", type=int, default=20, help="trials this invocation runs (over all its workers)")
    parser.add_argument("--workers", type=int, default=1, help="worker processes on this machine (one thread each)")
    parser.add_argument("--steps", type=int, default=1000, help="training steps per trial")
    parser.add_argument("--evals", type=int, default=5, help="evaluations per trial (each one reported to the pruner)")
    parser.add_argument("--pruner", choices=("median", "hyperband", "none"), default="median",
                        help="stops hopeless trials early: median (below the median of completed trials at "
                             "the same step), hyperband, or none (default: median)")
    parser.add_argument("--startup", type=int, default=3, help="median pruner: trials completed before pruning starts")
    parser.add_argument("--storage", default=None, help="database URL (default sqlite:///OUT/study.db); give every "
                                                        "machine the same URL and --study-name to share a study")
    parser.add_argument("--study-name", default="transcribe", help="study to create or join")
    parser.add_argument("--sampler-seed", type=int, default=None,
                        help="seed of the sampler (worker i uses seed + i; default: none, a fresh draw)")
    parser.add_argument("--timeout", type=float, default=None, help="seconds after which workers start no new trial")


def _run_workers(workers: int, job: tuple, rest: tuple, seeds: list, shares: list, base: dict, out: Path,
                 timeout: float | None) -> None:
    """The trials: in this process (one worker), or in `workers` spawned processes sharing the study."""
    import multiprocessing
    if workers == 1:
        _worker(*job, seeds[0], *rest, shares[0], base, str(out), timeout)
        return
    ctx = multiprocessing.get_context("spawn")  # no forked torch/SQLite state
    procs = [ctx.Process(target=_worker, args=(*job, seeds[i], *rest, shares[i], base, str(out), timeout))
             for i in range(workers)]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    bad = [p.exitcode for p in procs if p.exitcode]
    if bad:
        print(f"warning: {len(bad)} worker(s) exited with codes {bad}", file=sys.stderr)


def run_search(args: argparse.Namespace) -> int:
    import optuna
    from transcribe import config as C
    from transcribe.studies.methodology import base_configs
    model_cfg, data_cfg, train_cfg = base_configs(args)
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    names = tuple(args.params or (DEFAULT_GRID if args.sampler == "grid" else SPACE))
    if "widen" in names and all(str(p).endswith(".h5") for p in data_cfg.train):
        # a cache holds crops already cut at one widening; only format-1 folders can be re-cropped
        if args.params:
            raise SystemExit("search: --params widen needs format-1 folders in --train, not .h5 caches")
        names = tuple(n for n in names if n != "widen")
        print("note: not searching widen: --train gives .h5 caches, whose crops are already cut")
    train_cfg = dataclasses.replace(train_cfg, steps=args.steps, eval_every=max(1, math.ceil(args.steps / args.evals)))
    base = {"model": C.to_dict(model_cfg), "data": C.to_dict(data_cfg), "train": C.to_dict(train_cfg)}
    # relative data paths must still resolve from the trial subprocesses (same cwd) -- and from
    # other machines, which is why they are made absolute here
    base["data"]["train"] = [str(Path(p).resolve()) for p in data_cfg.train]
    base["data"]["cache_dir"] = str(Path(data_cfg.cache_dir).resolve())
    storage_url = args.storage or f"sqlite:///{out / 'study.db'}"
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    # create the study once, before any worker starts (no creation race)
    optuna.create_study(study_name=args.study_name, storage=_storage(storage_url), direction="maximize",
                        load_if_exists=True)
    workers = max(1, min(args.workers, args.trials))
    shares = [args.trials // workers + (i < args.trials % workers) for i in range(workers)]
    seeds = [None if args.sampler_seed is None else args.sampler_seed + i for i in range(workers)]
    print(f"search: {args.sampler} over {', '.join(names)}; {args.trials} trials on {workers} worker(s), "
          f"{args.steps} steps each; study {args.study_name!r} in {storage_url}")
    t0 = time.time()
    job = (storage_url, args.study_name, args.sampler, names)
    rest = (args.pruner, args.startup)
    stop = threading.Event()
    watcher = threading.Thread(target=watch, args=(storage_url, args.study_name, args.trials, stop), daemon=True)
    watcher.start()
    try:
        _run_workers(workers, job, rest, seeds, shares, base, out, args.timeout)
    finally:
        stop.set()
        watcher.join()
    orphans = fail_orphaned_trials(storage_url, args.study_name)
    if orphans:
        print(f"marked failed: trial(s) {orphans}, left running by worker(s) that were killed", file=sys.stderr)
    study = optuna.load_study(study_name=args.study_name, storage=_storage(storage_url))
    best_cfg = write_results(study, out)
    print((out / "results.md").read_text())
    counts = {s: sum(t.state.name == s for t in study.trials) for s in ("COMPLETE", "PRUNED", "FAIL")}
    print(f"{len(study.trials)} trials in the study ({counts}); this invocation took {time.time() - t0:.0f} s")
    if best_cfg is None:
        print("no trial completed; no best.json written", file=sys.stderr)
        return 1
    print(f"wrote {out / 'results.csv'}, {out / 'results.md'}, {out / 'best.json'}\n"
          f"train it: transcribe train --config {out / 'best.json'} --steps N")
    return 0
