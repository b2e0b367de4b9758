"""The run loop every agent shares: build, train, evaluate, log, checkpoint, resume."""
from __future__ import annotations

import json
import math
import os
import signal
import sys
import time
from collections import deque
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from runtime import checkpoint as ckpt
from runtime.config import Settings, validate
from runtime.errors import TrainingDiverged, UserError
from runtime.evaluation import record_video, run_episodes, summarize
from runtime.loggers import JsonlWriter, make_logger
from runtime.progress import ProgressLine
from runtime.seeding import capture_rng, restore_rng, seed_everything

# Keys a resumed run may change; every other command-line override must match the stored config.
RESUMABLE_KEYS = ("resume", "total_env_steps", "logger", "debug", "eval.", "checkpoint.", "torch_threads", "device",
                  "runs_root", "keep_freed_memory")


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"device {name!r} asked for but no CUDA device is available", choices=["cpu", "auto"],
                        key="device")
    return torch.device(name)


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in d.items():
        full = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(_flatten(value, full + "."))
        else:
            out[full] = value
    return out


def override_key(override: str) -> str:
    """The config key of a command-line override (``+a.b=1`` -> ``a.b``)."""
    return override.split("=", 1)[0].lstrip("+~")


def resumable(key: str) -> bool:
    """True for keys a resumed run may change."""
    return any(key == k or key.startswith(k) for k in RESUMABLE_KEYS)


def check_resume_overrides(stored: dict[str, Any], current: dict[str, Any], overrides: list[str]) -> None:
    """Refuse a resume whose command line changes the stored config (other than budget, logging, eval)."""
    flat_stored, flat_current = _flatten(stored), _flatten(current)
    mismatched = []
    for key in map(override_key, overrides):
        if resumable(key):
            continue
        for full in [k for k in flat_current if k == key or k.startswith(key + ".")]:
            if flat_stored.get(full) != flat_current.get(full):
                mismatched.append(f"{full} (stored {flat_stored.get(full)!r}, given {flat_current.get(full)!r})")
        if key in ("agent", "env") and stored.get(key, {}).get("name") != current.get(key, {}).get("name"):
            mismatched.append(f"{key} (stored {stored.get(key, {}).get('name')!r}, "
                              f"given {current.get(key, {}).get('name')!r})")
    if mismatched:
        raise UserError("the resumed run's config does not match the command line: " + "; ".join(mismatched)
                        + ". Drop those overrides to resume, or start a new run", key="resume")


def claim_run_dir(path: Path) -> Path:
    """``path``, or ``path-2``, ``path-3``, ... if another run holds it, claimed atomically.

    Two runs started in the same second with the same seed get the same timestamped
    folder from Hydra; without a claim they would write one interleaved metrics file.
    """
    candidate, number = path, 1
    while True:
        candidate.mkdir(parents=True, exist_ok=True)
        try:
            (candidate / ".claimed").open("x").close()
            return candidate
        except FileExistsError:
            number += 1
            candidate = path.with_name(f"{path.name}-{number}")


def lock_run_dir(path: Path) -> Any:
    """Hold ``path/.lock`` (an advisory ``flock``) while this process trains in ``path``.

    A second training process on the same run directory (a resume typed while the run
    still trains) is refused before it writes anything, instead of interleaving the
    metrics and overwriting the checkpoints. The lock ends with its process, so a
    killed run can be resumed at once. Returns the open lock file; None where the
    platform or file system has no ``flock`` (then nothing is locked).
    """
    try:
        import fcntl
    except ImportError:
        return None
    handle = open(path / ".lock", "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip()
        handle.close()
        raise UserError(f"{path} is in use by another training process{f' (pid {holder})' if holder else ''}; "
                        "resume it after that process stops (Ctrl-C there saves a checkpoint)", key="resume")
    except OSError:
        handle.close()
        return None
    handle.truncate(0)
    handle.write(str(os.getpid()))
    handle.flush()
    return handle


class Trainer:
    """Builds env and agent from the config, runs ``train_iteration`` until the budget is spent."""

    def __init__(self, cfg: DictConfig, run_dir: str | Path, overrides: list[str] | None = None):
        self.run_dir = Path(run_dir)
        self.overrides = overrides or []
        self.stop_requested = False
        resume_data = None
        if cfg.get("resume"):
            resume_dir = Path(str(cfg.resume)).expanduser()
            resume_data = ckpt.load(resume_dir)
            stored = resume_data["config"]
            current = OmegaConf.to_container(cfg, resolve=True)
            check_resume_overrides(stored, current, self.overrides)
            merged = OmegaConf.create(stored)
            for key in self._given_resumable_keys():   # only what the user changed on the command line
                OmegaConf.update(merged, key, OmegaConf.select(cfg, key), force_add=True)
            merged.resume = str(resume_dir)
            cfg = merged
            self.run_dir = resume_dir if resume_dir.is_dir() else Path(resume_data["path"]).parent.parent
        self.settings: Settings = validate(cfg)
        self.cfg = cfg
        self.resume_data = resume_data

    def _given_resumable_keys(self) -> list[str]:
        """Keys of the command-line overrides a resume may change (budget, logging, eval, checkpoints)."""
        return [key for key in map(override_key, self.overrides) if key != "resume" and resumable(key)]

    # --------------------------------------------------------------------- build
    def build(self) -> None:
        import envs
        from agents import base

        s = self.settings
        s.run.apply_to_process()
        seed_everything(s.run.seed)
        self.device = _device(s.run.device)
        self.env_cfg = OmegaConf.to_container(self.cfg.env, resolve=True)
        self.agent_cls = base.get(s.agent.name, s.agent.module)
        self.env, self.spec = (None, envs.make_spec(self.env_cfg)) if self.agent_cls.offline else \
            envs.make(self.env_cfg, num_envs=s.env.num_envs, seed=s.run.seed, mode="train")
        self.agent = self.agent_cls(s.agent, self.spec, self.device, env=self.env,
                                    total_steps=s.run.total_env_steps, seed=s.run.seed)
        self.unit = "grad_steps" if self.agent_cls.offline else "env_steps"
        self.steps = 0
        self.next_log = s.logger.interval
        self.next_eval = s.eval.interval
        self.next_ckpt = s.checkpoint.interval
        self.eval_count = 0
        self.recent_returns: deque[float] = deque(maxlen=20)
        self.episodes = 0
        self.wandb_id = None
        if self.resume_data is not None:
            self._restore(self.resume_data)

    def _restore(self, data: dict[str, Any]) -> None:
        from envs.snapshot import restore_env_state

        self.agent.load_state_dict(data["agent"])
        p = data["progress"]
        self.steps, self.next_log, self.next_eval = int(p["steps"]), int(p["next_log"]), int(p["next_eval"])
        self.next_ckpt, self.eval_count, self.episodes = int(p["next_ckpt"]), int(p["eval_count"]), int(p["episodes"])
        self.recent_returns.extend(float(r) for r in p["recent_returns"])
        self.wandb_id = p.get("wandb_id")
        restore_rng(data["rng"])
        before, now = data["config"].get("total_env_steps"), self.settings.run.total_env_steps
        if before is not None and int(before) != now:
            print(f"note: total_env_steps is now {now:,} (was {int(before):,}); schedules set as fractions of the run "
                  "(exploration epsilon, learning-rate decay, MuZero's visit temperature) are spread over the new "
                  "total from here on.", file=sys.stderr)
        if self.env is not None and hasattr(self.env, "pop_episodes"):
            if data.get("env") is not None:
                restore_env_state(self.env, data["env"])
            else:
                obs, _ = self.env.reset(seed=self.settings.run.seed + 1_000_003 * (self.steps + 1))
                self.agent.restart_episodes(obs)
                print(f"note: the {self.spec.extras.get('kind')} environment cannot be snapshotted; "
                      "its episodes restart on resume (learning state is exact).", file=sys.stderr)

    # --------------------------------------------------------------- checkpoints
    def checkpoint_payload(self) -> dict[str, Any]:
        from envs.snapshot import capture_env_state

        s = self.settings
        env_state = None
        if self.env is not None and self.spec.extras.get("snapshot"):
            env_state = capture_env_state(self.env)
        return {
            "config": OmegaConf.to_container(self.cfg, resolve=True),
            "agent_name": s.agent.name,
            "agent": self.agent.state_dict(include_replay=s.checkpoint.include_replay),
            "env": env_state,
            "rng": capture_rng(),
            "progress": {"steps": self.steps, "unit": self.unit, "next_log": self.next_log,
                         "next_eval": self.next_eval, "next_ckpt": self.next_ckpt, "eval_count": self.eval_count,
                         "episodes": self.episodes, "recent_returns": list(self.recent_returns),
                         "wandb_id": self.wandb_id},
        }

    def save(self, periodic: bool = False) -> Path | None:
        """Write latest.pt (and a numbered copy when ``periodic``) unless the agent has diverged."""
        if not self.agent.parameters_finite():
            return None
        folder = self.run_dir / "checkpoints"
        payload = self.checkpoint_payload()
        path = ckpt.save(folder / "latest.pt", payload)
        if periodic:   # numbered checkpoints are for evaluation: no replay, no env state
            payload["agent"].pop("replay", None)
            payload["env"] = None
            ckpt.save(folder / f"step_{self.steps:010d}.pt", payload)
            keep = self.settings.checkpoint.keep
            numbered = sorted(folder.glob("step_*.pt"))
            for old in numbered[: max(0, len(numbered) - keep)]:
                old.unlink()
        return path

    # ------------------------------------------------------------------ the loop
    def evaluate(self) -> dict[str, Any]:
        s = self.settings
        seed = s.run.seed * 7919 + 10_000 + self.eval_count
        self.eval_count += 1
        if hasattr(self.agent, "evaluate"):   # agents with their own protocol (two-player games)
            return self.agent.evaluate(episodes=s.eval.episodes, seed=seed)
        returns = run_episodes(self.agent, self.env_cfg, s.eval.episodes, s.eval.num_envs, seed, s.eval.explore)
        stats = summarize(returns, reps=500, seed=seed)
        return {"eval/return_mean": stats["mean"], "eval/return_median": stats["median"],
                "eval/return_iqm": stats["iqm"], "eval/return_std": stats["std"],
                "eval/return_ci_low": stats["mean_ci"][0], "eval/return_ci_high": stats["mean_ci"][1]}

    def _on_sigint(self, signum, frame) -> None:
        if self.stop_requested:
            raise KeyboardInterrupt
        self.stop_requested = True
        print("\ninterrupt: finishing this iteration, then saving a checkpoint (Ctrl-C again to abort now)",
              file=sys.stderr)

    def run(self) -> dict[str, Any]:
        """Train until the budget is spent; returns the final evaluation."""
        lock = None
        try:
            if self.resume_data is not None:   # refused before the (slow) rebuild if the run still trains
                self.run_dir.mkdir(parents=True, exist_ok=True)
                lock = lock_run_dir(self.run_dir)
            self.build()
            if self.resume_data is None:
                self.run_dir = claim_run_dir(self.run_dir)
                lock = lock_run_dir(self.run_dir)
            return self._run()
        finally:
            if lock is not None:
                lock.close()

    def _run(self) -> dict[str, Any]:
        s = self.settings
        config_dict = OmegaConf.to_container(self.cfg, resolve=True)
        (self.run_dir / "config.yaml").write_text(OmegaConf.to_yaml(self.cfg, resolve=True))
        jsonl = JsonlWriter(self.run_dir / "metrics.jsonl",
                            truncate_after_step=self.steps if self.resume_data is not None else None)
        tags = [s.agent.name, s.env.name] + ([s.run.preset] if s.run.preset else [])
        logger = make_logger(s.logger, self.run_dir, config_dict, name=self.run_dir.name,
                             group=f"{s.agent.name}-{s.env.name}", tags=tags, resume_id=self.wandb_id)
        self.wandb_id = getattr(logger, "run_id", None)
        progress = ProgressLine(s.run.total_env_steps, start=self.steps, unit=self.unit.replace("_", " "))
        previous_handler = signal.signal(signal.SIGINT, self._on_sigint)
        start_time, start_steps = time.perf_counter(), self.steps
        last: dict[str, Any] = {}
        final: dict[str, Any] = {}
        status = "finished"
        try:
            while self.steps < s.run.total_env_steps and not self.stop_requested:
                metrics = self.agent.train_iteration()
                self.steps += int(metrics.pop(self.unit, metrics.pop("env_steps", 0)))
                metrics.pop("env_steps", None)
                if self.env is not None and hasattr(self.env, "pop_episodes"):
                    returns, _ = self.env.pop_episodes()
                    self.recent_returns.extend(returns)
                    self.episodes += len(returns)
                self._check_finite(metrics)
                last.update({f"train/{k}": v for k, v in metrics.items() if isinstance(v, (int, float))})
                recent = float(np.mean(self.recent_returns)) if self.recent_returns else float("nan")
                progress.update(self.steps, recent)
                record: dict[str, Any] = {}
                if self.steps >= self.next_log:
                    self.next_log += s.logger.interval * max(1, math.ceil((self.steps - self.next_log + 1)
                                                                          / s.logger.interval))
                    elapsed = time.perf_counter() - start_time
                    record.update(last)
                    record.update({"train/episode_return": recent, "train/episodes": self.episodes,
                                   "time/steps_per_second": (self.steps - start_steps) / max(elapsed, 1e-9)})
                if self.steps >= self.next_eval:   # (the final evaluation below covers the last step)
                    self.next_eval += s.eval.interval * max(1, math.ceil((self.steps - self.next_eval + 1)
                                                                         / s.eval.interval))
                    if self.steps < s.run.total_env_steps:
                        record.update(self.evaluate())
                if record:
                    jsonl.write({self.unit: self.steps, **record})
                    logger.log(record, self.steps)
                if self.steps >= self.next_ckpt:
                    self.next_ckpt += s.checkpoint.interval * max(1, math.ceil((self.steps - self.next_ckpt + 1)
                                                                               / s.checkpoint.interval))
                    self.save(periodic=True)
            if self.stop_requested:
                status = "interrupted"
                path = self.save()
                print(f"\nstopped at {self.steps:,} {self.unit.replace('_', ' ')}; checkpoint {path}.\n"
                      f"resume with: python train.py resume={self.run_dir}", file=sys.stderr)
            else:
                final = self.evaluate()
                jsonl.write({self.unit: self.steps, "final": True, **final})
                logger.log(final, self.steps)
                path = self.save()
                if s.logger.log_videos and hasattr(self.env, "pop_episodes"):
                    video = record_video(self.agent, self.env_cfg, self.run_dir / "videos" / "final.mp4",
                                         seed=s.run.seed + 99)
                    logger.log_video(video, self.steps)
                if path is not None:
                    logger.log_checkpoint(path)
        except TrainingDiverged as err:
            status = "diverged"
            latest = self.run_dir / "checkpoints" / "latest.pt"
            where = (f"The last good checkpoint is {latest} (written before the divergence)" if latest.is_file()
                     else "No checkpoint had been written yet")
            print(f"\nerror: training diverged at {self.steps:,} {self.unit.replace('_', ' ')}: {err}. {where}; "
                  "lower the learning rate or check the rewards' scale.", file=sys.stderr)
            raise
        finally:
            signal.signal(signal.SIGINT, previous_handler)
            progress.close()
            jsonl.close()
            logger.close()
            if self.env is not None and hasattr(self.env, "close"):
                self.env.close()
        if "eval/vs_perfect_games" in final:
            print(f"final evaluation against perfect play: {final['eval/vs_perfect_wins']:.0f} wins, "
                  f"{final['eval/vs_perfect_draws']:.0f} draws, {final['eval/vs_perfect_losses']:.0f} losses "
                  f"in {final['eval/vs_perfect_games']:.0f} games")
        summary = {"status": status, "steps": self.steps, "run_dir": str(self.run_dir), **final}
        (self.run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
        return summary

    def _check_finite(self, metrics: dict[str, Any]) -> None:
        for key, value in metrics.items():
            if isinstance(value, float) and not math.isfinite(value):
                raise TrainingDiverged(f"metric {key} = {value}")
        if self.steps >= self.next_log and not self.agent.parameters_finite():
            raise TrainingDiverged("a network parameter is NaN or infinite")
