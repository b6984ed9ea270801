"""The sft stage: supervised fine-tuning on demonstrations with TRL's SFTTrainer."""

from __future__ import annotations

from pathlib import Path

from datasets import Dataset
from trl import SFTTrainer

from rlft.config.defaults import sft_defaults
from rlft.config.schema import Config, ExpertDemos
from rlft.config.trainer_args import build_trainer_config
from rlft.rollout.demos import expert_demos, jsonl_demos, sft_rows
from rlft.runtime.distributed import save_trained
from rlft.runtime.faults import out_of_memory_guard
from rlft.runtime.tracking import Tracker, TrackerCallback, attach_tracking
from rlft.stages.common import (
    checkpoint_dir,
    env_factory,
    load_trainable,
    prepare_run,
    record_sync_command,
    trainer_config_class,
    turn_format_for,
)
from rlft.stages.model_card import write_card
from rlft.stages.sft_selection import (
    ValidatedSFTTrainer,
    check_validation_expert,
    selection_defaults,
    validation_demos,
    write_selection,
)
from rlft.stages.transfer import sft_init


def sft_trainer_args(config: Config):
    """The stage's `trl.SFTConfig` (also built at validation, so TRL's own checks run before a model loads)."""
    return build_trainer_config(
        trainer_config_class("sft"),
        config.sft.trainer,
        str(config.run_dir / "trainer" / "sft"),
        config.seed,
        defaults={**sft_defaults(config), **selection_defaults(config)},
    )


def run_sft(config: Config) -> Path:
    """Supervised fine-tuning on demonstrations with TRL's SFTTrainer; loss on action tokens only.

    Starts from `sft.init_from`: this run's base model, or another run's checkpoint (rlft.stages.transfer).
    """
    check_validation_expert(config)  # sft.eval_every_steps without an expert: before any model loads
    prepare_run(config)
    model, tokenizer = load_trainable(sft_init(config), config)
    fmt = turn_format_for(config, tokenizer)
    tracker = Tracker(config, "sft", config.run_dir)
    demos_cfg = config.sft.demos
    if isinstance(demos_cfg, ExpertDemos):
        demos, stats = expert_demos(
            env_factory(config),
            fmt,
            demos_cfg.episodes,
            demos_cfg.epsilon,
            demos_cfg.seed,
            config.env.train_seeds.start,
            config.env.max_turns,
        )
        tracker.log(stats, step=0)
    else:
        demos = jsonl_demos(demos_cfg.path, fmt)
        tracker.log({"demos/episodes": len(demos)}, step=0)
    # TrackerCallback records the arguments the trainer starts with in runs/<name>/resolved/sft.yaml and wandb.
    trainer_kwargs = dict(
        model=model,
        args=sft_trainer_args(config),
        train_dataset=Dataset.from_list(sft_rows(demos)),
        processing_class=tokenizer,
        callbacks=[TrackerCallback(tracker)],
    )
    if config.sft.eval_every_steps is None:
        trainer = SFTTrainer(**trainer_kwargs)
    else:  # validation during SFT (and keep_best): rlft.stages.sft_selection
        validation, expert_rows = validation_demos(config, fmt)
        trainer = ValidatedSFTTrainer(
            **trainer_kwargs, eval_dataset=expert_rows, rlft_config=config, validation=validation
        )
    attach_tracking(trainer, tracker, config)  # tensorboard (report_to) under the run dir
    with out_of_memory_guard(config, "sft", trainer.args):
        trainer.train()
    path = save_trained(trainer, checkpoint_dir(config, "sft"))  # with keep_best: the best validation step's
    write_selection(trainer, path)
    if trainer.accelerator.is_main_process:
        write_card(config, path)  # README.md, the model card (rlft.stages.model_card)
    record_sync_command(tracker.finish())
    return path
