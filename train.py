"""Train an agent: ``python train.py agent=<name> env=<name> [seed=0] [total_env_steps=N] ...``.

See the README for the full command-line contract. Runs land in
``runs/<agent>-<env>/<timestamp>_s<seed>/``.
"""
from __future__ import annotations

from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from runtime.cli import run_hydra, user_errors


@hydra.main(config_path="conf", config_name="config", version_base=None)
@user_errors
def main(cfg: DictConfig) -> None:
    from runtime.trainer import Trainer

    hydra_cfg = HydraConfig.get()
    output_dir = Path(hydra_cfg.runtime.output_dir)
    if cfg.get("resume") and output_dir.is_dir() and not any(output_dir.iterdir()):
        output_dir.rmdir()   # a resumed run writes into its own directory
        for parent in (output_dir.parent, output_dir.parent.parent):
            if parent.is_dir() and not any(parent.iterdir()):
                parent.rmdir()
    trainer = Trainer(cfg, run_dir=hydra_cfg.runtime.output_dir, overrides=list(hydra_cfg.overrides.task))
    summary = trainer.run()
    if summary["status"] == "finished" and "eval/return_mean" in summary:
        print(f"done: {summary['steps']:,} steps, evaluation return {summary['eval/return_mean']:.2f} "
              f"(95% CI {summary['eval/return_ci_low']:.2f} .. {summary['eval/return_ci_high']:.2f}); "
              f"run directory {summary['run_dir']}")
    elif summary["status"] == "interrupted":
        raise SystemExit(130)


if __name__ == "__main__":
    run_hydra(main, "config")
