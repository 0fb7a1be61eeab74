"""The training function of one stage, run in every process (`accelerate launch` or plain).

One loop covers the three stages:

- ``teacher`` / ``student``: one model, its supervised objective (`spec.<stage>.losses`).
- ``distill`` offline: the student learns from `spec.distillation.losses` against a frozen
  teacher (eval mode, no gradients, forward under `torch.inference_mode`; its outputs are cloned
  out of inference mode so that losses may save them for backward).
- ``distill`` online (deep mutual learning): teacher and student learn together, each with its
  own objective (the student's from `distillation.losses` with the teacher as reference, the
  teacher's from `distillation.teacher_losses` with the student as reference), optimizer and
  schedule. `distillation.alternate` switches objectives or models every k steps/epochs.

It reads top to bottom like Accelerate's examples: build, `prepare`, `load_state` (resume),
then per epoch: train with `accumulate`, evaluate (confusion matrices reduced over processes),
`save_state`, log. Only the main process tracks, reports progress and writes files.

A non-finite loss (or non-finite weights before a checkpoint) stops the stage with
`StageDiverged` before anything non-finite is saved. `hooks.should_pause()` (preemption) writes a
checkpoint at the current step and raises `StagePaused`; resuming from it skips the batches of
that epoch already trained on (the order is seeded per epoch), so the run continues exactly.
"""

from __future__ import annotations

import hashlib
import math
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState, GradientState
from accelerate.utils import DataLoaderConfiguration, DistributedDataParallelKwargs, set_seed
from torch import nn

from distillery.data import build_datasets
from distillery.losses import ModelOutput, Objective, build_objective, run_with_taps
from distillery.losses.output import unwrap
from distillery.models import build_model
from distillery.models.checkpoint import load_model_checkpoint, save_model_checkpoint
from distillery.models.complexity import count_parameters
from distillery.models.sync_norm import convert_sync_batchnorm, count_synced
from distillery.spec import (
    DISTILL_KINDS,
    DatasetRef,
    ExperimentSpec,
    ModelSpec,
    TrainSpec,
)
from distillery.tracking import Tracker
from distillery.training import checkpoints as ckpt
from distillery.training.alternation import STUDENT, TEACHER, Phase, phase_at, updates_per_role
from distillery.training.amp import clip_and_step, share_scaler
from distillery.training.class_weights import class_weights_for
from distillery.training.cpu_memory import retain_freed_memory
from distillery.training.evaluation import Evaluation, evaluate
from distillery.training.hooks import NO_HOOKS, StageHooks
from distillery.training.loaders import epoch_seed, train_loader, val_loader
from distillery.training.plan import StagePlan, check_precision, plan_stage
from distillery.training.progress import Progress, ProgressReporter, interactive
from distillery.training.result import (
    RESULT_FILE,
    StageCancelled,
    StageDiverged,
    StagePaused,
    StageResult,
)
from distillery.training.runtime import apply_runtime
from distillery.training.schedules import build_scheduler
from distillery.training.teacher_cache import (
    PrecomputeBar,
    TeacherCache,
    attach_teacher_cache,
    ensure_teacher_cache,
)
from distillery.training.visuals import fixed_batch, log_epoch_media

# ------------------------------------------------------------------------------------- helpers


@dataclass
class Learner:
    """A model being trained with its objective (which owns adapters), optimizer and schedule."""

    role: str
    model: nn.Module
    objective: Objective
    optimizer: Any
    scheduler: Any
    taps: list[str]

    def parameters(self) -> list[nn.Parameter]:
        return [*self.model.parameters(), *self.objective.parameters()]


def make_accelerator(train: TrainSpec, find_unused_parameters: bool) -> Accelerator:
    check_precision(train)
    cuda = torch.cuda.is_available()
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        # One process may run several stages (tests, `distillery run`) with different settings;
        # the accelerate singletons would otherwise keep the first stage's (and a cancelled
        # loop's dataloader references).
        AcceleratorState._reset_state()
        GradientState._reset_state()
    return Accelerator(
        cpu=not cuda,
        mixed_precision=train.mixed_precision,
        gradient_accumulation_steps=train.grad_accum_steps,
        # batches come from pinned memory on CUDA: copy them without blocking the host
        dataloader_config=DataLoaderConfiguration(non_blocking=cuda),
        kwargs_handlers=[
            DistributedDataParallelKwargs(find_unused_parameters=find_unused_parameters)
        ],
    )


def make_optimizer(train: TrainSpec, params: list[nn.Parameter]) -> torch.optim.Optimizer:
    if train.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=train.lr, weight_decay=train.weight_decay)
    return torch.optim.SGD(
        params, lr=train.lr, momentum=train.momentum, weight_decay=train.weight_decay
    )


def forward_frozen(
    model: nn.Module, images: torch.Tensor, taps: list[str], accelerator: Accelerator
) -> ModelOutput:
    """A reference model's output as constants: eval mode, inference mode, no autograd graph.

    The tensors are cloned outside inference mode: inference tensors cannot be saved for
    backward, and a KD loss saves its target.
    """
    net = unwrap(model)
    if net.training:
        net.eval()
    with torch.inference_mode(), accelerator.autocast():
        out = run_with_taps(net, images, taps)
    return ModelOutput(out.logits.clone(), {k: v.clone() for k, v in out.features.items()})


def sync_objective_grads(objective: Objective, accelerator: Accelerator) -> None:
    """Average the objective's own gradients (1x1 adapters) over processes; the models' are
    averaged by DDP."""
    if accelerator.num_processes <= 1:
        return
    for p in objective.parameters():
        if p.grad is not None:
            p.grad = accelerator.reduce(p.grad, reduction="mean")


def sync_buffers(model: nn.Module, accelerator: Accelerator) -> None:
    """Copy rank 0's buffers (BatchNorm running statistics) to every process.

    DDP broadcasts them at the start of each training forward only, so after the last step each
    process holds its own; evaluation and the exported model must use the same ones.
    """
    if accelerator.num_processes <= 1:
        return
    for buf in unwrap(model).buffers():
        torch.distributed.broadcast(buf.data, src=0)


def state_hash(modules: Iterable[nn.Module]) -> str:
    """SHA-256 of the state dicts (parameters and buffers) of `modules`, in order."""
    h = hashlib.sha256()
    for m in modules:
        for name, t in sorted(unwrap(m).state_dict().items()):
            h.update(name.encode())
            h.update(t.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _root_of(ref: DatasetRef, resolve_root: Any) -> Path:
    if ref.root is not None:
        return Path(ref.root)
    if resolve_root is None:
        raise ValueError(f"dataset {ref.dataset_id!r} is a platform dataset: pass resolve_root")
    return Path(resolve_root(ref))


@dataclass
class TrainOutcome:
    """The result, and what this process saw (for the multi-process checks)."""

    result: StageResult
    rank: int = 0
    world_size: int = 1
    state_hash: str = ""
    evaluation: Evaluation | None = None
    #: Norm layers of the exported model synchronised over processes (`train.sync_batchnorm`).
    synced_norms: int = 0


# ---------------------------------------------------------------------------------- training


def train_stage(
    spec: ExperimentSpec,
    stage: str,
    workdir: Path,
    *,
    teacher_path: Path | None = None,
    resume: bool = True,
    hooks: StageHooks = NO_HOOKS,
    tracker_group: str | None = None,
    events_path: Path | None = None,
) -> TrainOutcome:
    """Train `stage` in this process (one of possibly several launched by accelerate)."""
    resolve_root = hooks.resolve_root
    plan = plan_stage(spec, stage)
    train = plan.train
    stage_dir = Path(workdir) / stage
    ckpt_root = stage_dir / "ckpt"
    main_role = TEACHER if stage == "teacher" else STUDENT
    roles = frozenset({STUDENT, TEACHER}) if plan.online else frozenset({main_role})

    # Every objective reaches every parameter (see `step_losses`): DDP needs no unused search.
    accelerator = make_accelerator(train, find_unused_parameters=False)
    rank, world, device = accelerator.process_index, accelerator.num_processes, accelerator.device
    if device.type == "cpu":
        retain_freed_memory()  # no page faults on every step's activations (see cpu_memory)
    runtime = apply_runtime(train, spec.data.num_workers, device)
    runtime |= {"world_size": world, "mixed_precision": train.mixed_precision}
    if accelerator.is_main_process:
        stage_dir.mkdir(parents=True, exist_ok=True)
    set_seed(spec.seed)

    # ---- data ----
    with accelerator.main_process_first():  # the main process generates synthetic data first
        train_set, val_set = build_datasets(spec.data, resolve_root, seed=spec.seed)
    per_step = train.batch_size * world * train.grad_accum_steps
    if len(train_set) < train.batch_size * world:
        raise ValueError(
            f"the training set has {len(train_set)} images, fewer than one batch "
            f"(train.batch_size {train.batch_size} x {world} processes)"
        )
    num_samples = None
    if train.max_steps_per_epoch is not None:
        num_samples = min(len(train_set), train.max_steps_per_epoch * per_step)
    generator = torch.Generator()
    loader = train_loader(
        train_set,
        batch_size=train.batch_size,
        num_workers=spec.data.num_workers,
        generator=generator,
        num_samples=num_samples,
        rank=rank,
        pin_memory=device.type == "cuda",
    )
    val = val_loader(
        val_set,
        batch_size=train.batch_size,
        num_workers=spec.data.num_workers,
        rank=rank,
        world=world,
        pin_memory=device.type == "cuda",
    )

    # ---- models and objectives (same seed on every process: identical initial weights) ----
    model = _initial_model(plan.model, "teacher" if stage == "teacher" else "student")
    sync_norms = world > 1 and train.sync_batchnorm
    if sync_norms:
        model = convert_sync_batchnorm(model, device)
    teacher: nn.Module | None = None
    teacher_spec: ModelSpec | None = None
    if stage == "distill":
        teacher, teacher_spec = _load_teacher(spec, plan, teacher_path)
        if sync_norms and plan.online:  # a frozen teacher stays in eval mode
            teacher = convert_sync_batchnorm(teacher, device)
        teacher.to(device)
    if stage == "distill" and spec.distillation.teacher_cache.enabled:
        assert teacher is not None and not plan.online  # offline only (the spec checks)
        show_bar = hooks.on_progress is None and events_path is None and interactive()
        cache = _teacher_cache(
            spec, teacher, teacher_path, train_set, Path(workdir), hooks, accelerator, show_bar
        )
        runtime["teacher_cache"] = cache.describe()
    all_terms = plan.losses + (plan.teacher_losses if plan.online else [])
    with accelerator.main_process_first():
        weights = class_weights_for(
            all_terms, spec.data, lambda ref: _root_of(ref, resolve_root), Path(workdir)
        )
    # Labels were checked when loaded (DatasetError names the file): no per-step check/sync.
    objective = build_objective(
        plan.losses, model, teacher, class_weights=weights, check_targets=False
    ).to(device)
    teacher_objective = None
    if plan.online:
        assert teacher is not None
        teacher_objective = build_objective(
            plan.teacher_losses, teacher, model, class_weights=weights, check_targets=False
        ).to(device)
    elif teacher is not None:
        teacher.eval().requires_grad_(False)
    #: Offline distillation's teacher: a constant reference, never prepared or updated.
    frozen_teacher = teacher if not plan.online else None
    set_seed(spec.seed, device_specific=True)  # per-process randomness from here on

    # ---- optimizers, schedules, prepare ----
    optimizer = make_optimizer(train, [*model.parameters(), *objective.parameters()])
    loader, model, optimizer = accelerator.prepare(loader, model, optimizer)
    if plan.online:
        assert teacher is not None and teacher_objective is not None
        t_opt = make_optimizer(train, [*teacher.parameters(), *teacher_objective.parameters()])
        teacher, t_opt = accelerator.prepare(teacher, t_opt)
    steps_per_epoch = math.ceil(len(loader) / train.grad_accum_steps)
    # iteration-based (`max_steps`, the last epoch may end early) or epoch-based
    total_steps = train.max_steps or train.epochs * steps_per_epoch
    num_epochs = math.ceil(total_steps / steps_per_epoch)
    updates = updates_per_role(plan.alternate, roles, num_epochs, steps_per_epoch, total_steps)

    def schedule(opt: Any, role: str) -> Any:
        # A prepared scheduler steps `world` times per optimizer step (accelerate's convention);
        # each model's schedule spans the steps that update it.
        return accelerator.prepare(
            build_scheduler(
                opt,
                train.schedule,
                updates[role] * world,
                train.warmup_steps * world,
                train.poly_power,
            )
        )

    student_taps, teacher_taps = list(objective.student_taps), list(objective.teacher_taps)
    if teacher_objective is not None:  # each objective reads the other model too
        student_taps += teacher_objective.teacher_taps
        teacher_taps += teacher_objective.student_taps
    sched = schedule(optimizer, main_role)
    learners = [Learner(main_role, model, objective, optimizer, sched, student_taps)]
    accelerator.register_for_checkpointing(objective)
    if plan.online:
        assert teacher_objective is not None
        t_sched = schedule(t_opt, TEACHER)
        learners.append(Learner(TEACHER, teacher, teacher_objective, t_opt, t_sched, teacher_taps))
        accelerator.register_for_checkpointing(teacher_objective)
    by_role = {lr.role: lr for lr in learners}
    share_scaler((lr_.optimizer for lr_ in learners), accelerator.scaler)  # fp16: one update

    # ---- resume ----
    state = ckpt.TrainerState()
    if accelerator.is_main_process:
        ckpt.remove_incomplete(ckpt_root)
    accelerator.wait_for_everyone()
    last = ckpt.latest_checkpoint(ckpt_root) if resume else None
    if last is not None:
        accelerator.load_state(str(last))
        state = ckpt.TrainerState.load(last)

    # ---- tracking and progress (main process only) ----
    tracker = Tracker(
        spec.tracking,
        stage_dir,
        name=f"{spec.name}-{stage}",
        group=tracker_group or spec.name,
        config={"stage": stage, "runtime": runtime, **spec.model_dump(mode="json")},
        job_type=stage,
        enabled=accelerator.is_main_process,
    )
    reporter = ProgressReporter(
        stage,
        on_progress=hooks.on_progress,
        on_checkpoint=hooks.on_checkpoint,
        events_path=events_path,
        show_bar=hooks.on_progress is None and events_path is None and interactive(),
        enabled=accelerator.is_main_process,
    )

    def save_checkpoint() -> Path:
        """accelerate state, then trainer_state.json (marks it complete); never non-finite."""
        if not all(_finite(lr_) for lr_ in learners):
            raise StageDiverged(stage, state.global_step, float("nan"))
        directory = ckpt.step_dir(ckpt_root, state.global_step)
        accelerator.save_state(str(directory))
        if accelerator.is_main_process:
            state.save(directory)
        accelerator.wait_for_everyone()
        return directory

    media = fixed_batch(val_set) if tracker.wants_images or tracker.wants_feature_maps else None

    evaluation: Evaluation | None = None

    def epoch_summary(losses: _DeviceMeans, micro: int, since: float) -> dict[str, Any]:
        """Mean training losses of the epoch so far, lr, images/s and seconds."""
        elapsed = time.perf_counter() - since
        summary: dict[str, Any] = losses.means()
        summary["lr"] = learners[0].scheduler.get_last_lr()[0]
        summary["images_per_s"] = micro * train.batch_size * world / max(elapsed, 1e-9)
        summary["time_s"] = elapsed
        return summary

    def score(epoch: int, summary: dict[str, Any]) -> dict[str, Any]:
        """Validation (every process scores its shard; results are reduced), recorded in the
        history with the training summary."""
        nonlocal evaluation
        for lr_ in learners:
            sync_buffers(lr_.model, accelerator)
        evaluation = evaluate(model, val, accelerator, plan.model.num_classes)
        val_metrics = evaluation.as_dict()
        if stage == "teacher":
            val_metrics["teacher_entropy"] = evaluation.entropy
        if plan.online:
            t_eval = evaluate(teacher, val, accelerator, plan.model.num_classes)
            val_metrics.update(t_eval.as_dict("teacher_"))
        elif teacher is not None:
            if state.teacher_metrics is None:
                t_eval = evaluate(teacher, val, accelerator, plan.model.num_classes)
                state.teacher_metrics = t_eval.as_dict("teacher_")
            val_metrics.update(state.teacher_metrics)
        state.history.append(
            {"epoch": epoch, "global_step": state.global_step, "train": summary} | val_metrics
        )
        return val_metrics

    def publish(epoch: int, step: int, summary: dict[str, Any], val_metrics: dict) -> None:
        """Log a validation (main process): tracker, media, an `epoch` progress record."""
        flat = _flat_val(val_metrics)
        tracker.log(
            {f"val/{k}": v for k, v in flat.items()}
            | {f"epoch/{k}": v for k, v in summary.items()}
            | {"epoch": epoch},
            step=state.global_step,
        )
        if media is not None:
            log_epoch_media(
                tracker,
                accelerator,
                media,
                by_role[main_role].model,
                state.global_step,
                teacher=teacher if stage == "distill" else None,
            )
        reporter.epoch_end(
            Progress(
                stage,
                epoch,
                num_epochs,
                step,
                steps_per_epoch,
                flat | {"loss": summary.get("loss", float("nan"))},
                kind="epoch",
            )
        )

    try:
        for epoch in range(state.epoch + 1, num_epochs + 1):
            # ---- train one epoch ----
            generator.manual_seed(epoch_seed(spec.seed, epoch))  # order and worker seeds
            loader.set_epoch(epoch)
            if hasattr(train_set, "set_epoch"):
                train_set.set_epoch(epoch)  # augmentation seeds of this epoch
            for lr_ in learners:
                unwrap(lr_.model).train()
            epoch_start = step_start = time.perf_counter()
            step, micro, logged_micro = 0, 0, 0
            since_log, epoch_losses = _DeviceMeans(), _DeviceMeans()
            batches: Iterable[Any] = loader
            if state.epoch_step:  # a mid-epoch checkpoint: skip what was trained on already
                step = state.epoch_step
                batches = accelerator.skip_first_batches(loader, step * train.grad_accum_steps)
            for batch in batches:
                if hooks.stop_requested():
                    raise StageCancelled(stage, epoch, step, ckpt.latest_checkpoint(ckpt_root))
                if micro % train.grad_accum_steps == 0 and hooks.pause_requested():
                    state.epoch_step = step
                    directory = save_checkpoint()
                    reporter.checkpoint(state.global_step, directory)
                    reporter.paused(state.global_step)
                    raise StagePaused(stage, epoch, step, directory)
                images, masks = batch["image"], batch["mask"]
                phase = phase_at(plan.alternate, roles, epoch=epoch, global_step=state.global_step)
                with accelerator.accumulate(*[lr_.model for lr_ in learners]):
                    total, components = step_losses(
                        phase,
                        by_role,
                        frozen_teacher,
                        images,
                        masks,
                        accelerator,
                        teacher_logits=batch.get("teacher_logits"),
                    )
                    accelerator.backward(total)
                    if accelerator.sync_gradients:
                        updated = [lr_ for lr_ in learners if lr_.role in phase.update]
                        for lr_ in updated:
                            sync_objective_grads(lr_.objective, accelerator)
                        clip_and_step(updated, accelerator.scaler, train.grad_clip_norm)
                        for lr_ in updated:
                            lr_.scheduler.step()
                            lr_.optimizer.zero_grad(set_to_none=True)
                micro += 1
                if accelerator.is_main_process:  # device tensors: read only on logging steps
                    since_log.add(components)
                    epoch_losses.add({k: v for k, v in components.items() if "/" not in k})
                if not accelerator.sync_gradients:
                    continue
                # ---- one optimizer step done ----
                step += 1
                state.global_step += 1
                last_step = state.global_step >= total_steps
                logging_step = (
                    state.global_step % train.log_every_steps == 0
                    or step == steps_per_epoch
                    or last_step
                )
                if accelerator.is_main_process and logging_step:
                    now = time.perf_counter()
                    scalars = since_log.means()  # the one device read of these steps
                    # a model's turn (online, alternating models) logs only its own loss
                    for key in ("loss", "teacher_loss"):
                        if key in scalars and not math.isfinite(scalars[key]):
                            reporter.diverged(state.global_step, scalars[key])
                            raise StageDiverged(stage, state.global_step, scalars[key])
                    scalars |= _learning_rates(by_role, main_role)
                    images = (micro - logged_micro) * train.batch_size * world
                    scalars["images_per_s"] = images / (now - step_start)
                    tracker.log(
                        {f"train/{k}": v for k, v in scalars.items()}, step=state.global_step
                    )
                    reporter.step(
                        Progress(stage, epoch, num_epochs, step, steps_per_epoch, scalars)
                    )
                    since_log, logged_micro, step_start = _DeviceMeans(), micro, time.perf_counter()
                if last_step:
                    break
                if (
                    train.eval_every_steps is not None
                    and state.global_step % train.eval_every_steps == 0
                    and step < steps_per_epoch  # an epoch end evaluates when due
                ):
                    summary = epoch_summary(epoch_losses, micro, epoch_start)
                    val_metrics = score(epoch, summary)
                    if accelerator.is_main_process:
                        publish(epoch, step, summary, val_metrics)
                # after this step's evaluation: the checkpoint holds its history, and the
                # stage points at it only once the metrics are recorded
                if (
                    train.save_every_steps is not None
                    and state.global_step % train.save_every_steps == 0
                    and step < steps_per_epoch  # an epoch end saves anyway
                    and not last_step
                ):
                    state.epoch_step = step  # a resume skips the batches trained on
                    directory = save_checkpoint()
                    reporter.checkpoint(state.global_step, directory)
                    if accelerator.is_main_process:
                        ckpt.prune(ckpt_root)
            state.epoch_step = 0

            # ---- evaluate (when due), checkpoint, report ----
            state.epoch = epoch
            due = (
                train.eval_every_steps is None
                or state.global_step >= total_steps
                or state.global_step % train.eval_every_steps == 0
            )
            summary = epoch_summary(epoch_losses, micro, epoch_start)
            val_metrics = score(epoch, summary) if due else None
            directory = save_checkpoint()
            if accelerator.is_main_process:
                # the epoch's metrics are recorded before the stage points at its checkpoint:
                # a kill in between repeats the epoch, whose metrics are then written again
                if val_metrics is not None:
                    publish(epoch, step, summary, val_metrics)
                reporter.checkpoint(state.global_step, directory)
                ckpt.prune(ckpt_root)
    except BaseException as exc:
        reporter.close()
        tracker.finish(exit_code=None if isinstance(exc, StageCancelled) else 1)
        raise

    # ---- export the final model(s) and the result ----
    model_path = stage_dir / "model.pt"
    extra: dict[str, Path] = {}
    final = state.history[-1] if state.history else {}
    metrics = {k: v for k, v in final.items() if k not in ("epoch", "global_step", "train")}
    wandb_run = None
    if tracker.active:
        wandb_run = {"id": tracker.run_id, "url": tracker.url, "dir": str(tracker.run_dir)}
        tracker.summary({f"final/{k}": v for k, v in _flat_val(metrics).items()})
    exported = unwrap(by_role[main_role].model)
    if accelerator.is_main_process:
        save_model_checkpoint(model_path, exported, _resolved(plan.model, exported))
        if plan.online:
            assert teacher_spec is not None
            extra["teacher"] = stage_dir / "teacher.pt"
            trained_teacher = unwrap(by_role[TEACHER].model)
            save_model_checkpoint(
                extra["teacher"], trained_teacher, _resolved(teacher_spec, trained_teacher)
            )
    result = StageResult(
        stage=stage,
        metrics=metrics,
        history=state.history,
        model_path=model_path,
        checkpoint_dir=ckpt.step_dir(ckpt_root, state.global_step),
        wandb_run=wandb_run,
        params=count_parameters(exported),
        extra_models=extra,
        runtime=runtime,
    )
    if accelerator.is_main_process:
        result.save(stage_dir / RESULT_FILE)
    reporter.close()
    tracker.finish()
    accelerator.wait_for_everyone()
    return TrainOutcome(
        result=result,
        rank=rank,
        world_size=world,
        state_hash=state_hash(lr_.model for lr_ in learners),
        evaluation=evaluation,
        synced_norms=count_synced(exported),
    )


# -------------------------------------------------------------------------- step internals


def step_losses(
    phase: Phase,
    learners: dict[str, Learner],
    frozen_teacher: nn.Module | None,
    images: torch.Tensor,
    masks: torch.Tensor,
    accelerator: Accelerator,
    teacher_logits: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Forward every model this step needs and sum the objectives of the updated learners.

    `teacher_logits` (from a teacher cache, cut like the batch's crops) stand in for the
    frozen teacher's forward.

    Returns the total (one backward serves all learners: each objective sees the other model's
    output detached) and the components, keyed ``loss[/<term>]`` for the first learner and
    ``teacher_loss[/<term>]`` for an online teacher.
    """
    # References first: their activations are freed as they go (inference mode), so they never
    # sit in memory beside the activations the trained models keep for backward.
    outputs: dict[str, ModelOutput] = {}
    if frozen_teacher is not None:
        kinds = phase.kinds(STUDENT)
        if teacher_logits is not None:
            outputs[TEACHER] = ModelOutput(teacher_logits.float(), {})
        elif kinds is None or kinds & DISTILL_KINDS:  # a supervised-only block needs no teacher
            taps = learners[STUDENT].objective.teacher_taps
            outputs[TEACHER] = forward_frozen(frozen_teacher, images, taps, accelerator)
    for role, lr_ in learners.items():
        if role not in phase.update:  # online, alternating models: this block's reference
            outputs[role] = forward_frozen(lr_.model, images, lr_.taps, accelerator)
    for role, lr_ in learners.items():
        if role in phase.update:
            net = unwrap(lr_.model)
            if not net.training:
                net.train()
            outputs[role] = run_with_taps(lr_.model, images, lr_.taps)
    total: torch.Tensor | None = None
    components: dict[str, torch.Tensor] = {}
    for i, (role, lr_) in enumerate(learners.items()):
        if role not in phase.update:
            continue
        other = outputs.get(TEACHER if role == STUDENT else STUDENT)
        loss, parts = lr_.objective(outputs[role], masks, other, kinds=phase.kinds(role))
        if accelerator.num_processes > 1:
            # DDP reduces every parameter's gradient on every step; a term that reads only
            # features (feature_mse alone, or an alternating block of them) would leave the
            # decoder without one. This zero reaches every parameter through the logits.
            loss = loss + outputs[role].logits.float().sum() * 0.0
        total = loss if total is None else total + loss
        key = "loss" if i == 0 else "teacher_loss"
        components[key] = parts.pop("total")
        components.update({f"{key}/{k}": v for k, v in parts.items()})
    assert total is not None, "a phase updates at least one model"
    return total, components


def _finite(learner: Learner) -> bool:
    """Every weight and buffer (BatchNorm statistics too) of the learner is finite."""
    tensors = [*learner.parameters(), *unwrap(learner.model).buffers()]
    return all(bool(torch.isfinite(t).all()) for t in tensors if t.is_floating_point())


class _DeviceMeans:
    """Running means of named scalar tensors, kept on the device until `means` reads them all
    at once (one host-device sync); a key may be missing from some updates."""

    def __init__(self) -> None:
        self.sums: dict[str, torch.Tensor] = {}
        self.counts: dict[str, int] = {}

    def add(self, values: dict[str, torch.Tensor]) -> None:
        for k, v in values.items():
            v = v.detach().float()
            self.sums[k] = self.sums[k] + v if k in self.sums else v
            self.counts[k] = self.counts.get(k, 0) + 1

    def means(self) -> dict[str, float]:
        keys = list(self.sums)
        if not keys:
            return {}
        values = torch.stack([self.sums[k] for k in keys]).tolist()
        return {k: v / self.counts[k] for k, v in zip(keys, values, strict=True)}


def _learning_rates(learners: dict[str, Learner], main_role: str) -> dict[str, float]:
    """``lr`` of the exported model's learner, ``teacher_lr`` of an online teacher."""
    rates = {"lr": learners[main_role].scheduler.get_last_lr()[0]}
    if TEACHER in learners and main_role != TEACHER:
        rates["teacher_lr"] = learners[TEACHER].scheduler.get_last_lr()[0]
    return rates


def _flat_val(metrics: dict[str, Any]) -> dict[str, float]:
    """Scalars of the validation metrics; per-class IoU dicts become ``<prefix>iou/<class>``."""
    flat: dict[str, float] = {}
    for k, v in metrics.items():
        if isinstance(v, dict):
            flat.update({f"{k}/{c}": x for c, x in v.items() if x is not None})
        elif isinstance(v, int | float):
            flat[k] = float(v)
    return flat


def _resolved(spec: ModelSpec, model: nn.Module) -> ModelSpec:
    """The model's spec with its built width (never `auto`) and no start checkpoint."""
    width = int(getattr(model, "width", spec.width))
    return spec.model_copy(update={"width": width, "checkpoint": None})


def _initial_model(spec: ModelSpec, role: str) -> nn.Module:
    """A fresh model, or the weights of `spec.checkpoint` (an exported model) to start from."""
    if spec.checkpoint is None:
        return build_model(spec)
    path = Path(spec.checkpoint)
    if not path.is_file():
        raise FileNotFoundError(f"{role}.model.checkpoint {spec.checkpoint}: no such file")
    model, _ = load_model_checkpoint(path)
    return model.train()


def _teacher_cache(
    spec: ExperimentSpec,
    teacher: nn.Module,
    teacher_path: Path | None,
    train_set: Any,
    workdir: Path,
    hooks: StageHooks,
    accelerator: Accelerator,
    show_bar: bool,
) -> TeacherCache:
    """The teacher cache of this distill stage (computed by the main process if it is not
    there yet, read by the others), attached to the training sets."""
    teacher_file = _teacher_file(spec, teacher_path)
    assert teacher_file is not None  # a frozen teacher was loaded from it
    bar = PrecomputeBar() if show_bar and accelerator.is_main_process else None
    with accelerator.main_process_first():  # the main process computes, the others read
        cache = ensure_teacher_cache(
            teacher,
            teacher_file,
            train_set.datasets,
            spec.data.image_size,
            spec.distillation.teacher_cache.stride,
            hooks.teacher_cache_dir or workdir / "teacher_cache",
            device=accelerator.device,
            autocast=accelerator.autocast,
            batch_size=spec.distill_train.batch_size,
            on_image=bar,
        )
    if bar is not None:
        bar.close()
    attach_teacher_cache(train_set.datasets, cache)
    return cache


def _teacher_file(spec: ExperimentSpec, teacher_path: Path | None) -> Path | None:
    """The teacher's exported model: `teacher_path`, else `teacher.model.checkpoint`."""
    return teacher_path or (
        Path(spec.teacher.model.checkpoint) if spec.teacher.model.checkpoint else None
    )


def _load_teacher(
    spec: ExperimentSpec, plan: StagePlan, teacher_path: Path | None
) -> tuple[nn.Module, ModelSpec]:
    """The distillation teacher: the teacher stage's exported model (`teacher_path`), else
    `teacher.model.checkpoint`; online distillation may also start a teacher from scratch."""
    path = _teacher_file(spec, teacher_path)
    if path is None:
        if plan.online:
            return build_model(spec.teacher.model), spec.teacher.model
        raise ValueError(
            "offline distillation needs a trained teacher: pass teacher_path (the teacher "
            "stage's model.pt) or set teacher.model.checkpoint"
        )
    if not Path(path).is_file():
        raise FileNotFoundError(f"teacher checkpoint {path}: no such file")
    model, model_spec = load_model_checkpoint(path)
    return model, model_spec
