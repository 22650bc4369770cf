"""Generator SFT on Ray Train: plain DDP or DeepSpeed ZeRO-2/3, optional LoRA, resumable.

One recipe for every scale. The driver (:func:`train`) tokenizes the chat records once into
``OUT/data`` (assistant-only labels, truncation counted, optional packing; see
:mod:`training.chat_data`), then runs a Ray Train ``TorchTrainer`` whose workers each execute
:func:`train_loop`. The same loop runs

- on CPUs: fp32, gloo, ``DS_ACCELERATOR=cpu`` (what the tests exercise with 2 workers);
- on GPUs: bf16 (DeepSpeed ``bf16`` or ``torch.autocast`` under DDP), NCCL.

Engines (``SFTConfig.deepspeed``): ``None`` → DDP via ``ray.train.torch.prepare_model``;
``"zero2"``/``"zero3"`` → ``training/zero{2,3}.json`` (or a JSON file of your own) filled with the
batch sizes, precision and offload switches of the config. The optimizer is a torch ``AdamW``
handed to ``deepspeed.initialize``, so DeepSpeed never JIT-builds ``fused_adam`` (≈60 s on CPU).
ZeRO-3 loads the model through ``HfDeepSpeedConfig`` so weights are partitioned while loading.

Checkpoints go through Ray Train (``OUT/ray/<run_name>``) every ``checkpoint_every`` optimizer
steps and at every epoch end; rerunning the same command with the same ``--out`` picks up the
latest one (model, optimizer, scheduler, position in the epoch, loss history). At the end the
weights are gathered on rank 0 (ZeRO-3 consolidation; LoRA merged into the base), saved as a
transformers directory with the tokenizer in a final checkpoint, and copied to ``OUT/model``.
``OUT/metrics.json`` holds per-epoch train/dev loss, the step loss curve, steps/s and the data
funnel (records, truncated, dropped) — written by the driver, since ``Result.metrics`` is not
reliable in this Ray.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # synthrag never downloads weights
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

TRAINING_DIR = Path(__file__).resolve().parent
DS_PRESETS = {"zero2": TRAINING_DIR / "zero2.json", "zero3": TRAINING_DIR / "zero3.json"}


class SFTConfig(BaseModel):
    """Everything a generator SFT run needs; the CLI builds one, so does Python code."""

    model_config = ConfigDict(extra="forbid")

    data: str = Field(description="chat JSONL file, folder of JSONL, or run dir (exports/sft*.jsonl)")
    base: str = Field("embedded", description="local transformers model dir, or 'embedded'")
    out: str
    dev_data: str | None = Field(None, description="separate dev JSONL (else a split of data)")
    dev_fraction: float = Field(0.1, ge=0.0, lt=1.0)
    # engine
    deepspeed: str | None = Field(None, description="zero2 | zero3 | path to a DeepSpeed JSON")
    offload_optimizer: bool = False
    offload_params: bool = Field(False, description="ZeRO-3 only")
    gradient_checkpointing: bool = True
    # LoRA
    lora: bool = False
    lora_r: int = Field(16, gt=0)
    lora_alpha: int = Field(32, gt=0)
    lora_dropout: float = Field(0.05, ge=0.0, lt=1.0)
    lora_targets: list[str] | str = "all-linear"
    # scale
    workers: int = Field(2, ge=1)
    use_gpu: bool | None = Field(None, description="None: use GPUs when the cluster has them")
    cpus_per_worker: int = Field(1, ge=1)
    address: str | None = None
    # optimisation
    epochs: int = Field(1, ge=1)
    max_steps: int | None = Field(None, ge=1, description="cap on optimizer steps")
    batch_size: int = Field(4, ge=1, description="micro-batch per worker")
    grad_accum: int = Field(1, ge=1)
    lr: float | None = Field(None, gt=0, description="default 2e-5, or 2e-4 with LoRA")
    weight_decay: float = Field(0.0, ge=0)
    warmup_ratio: float = Field(0.03, ge=0, lt=1)
    scheduler: str = "linear"
    max_grad_norm: float = Field(1.0, gt=0)
    max_length: int = Field(2048, ge=8)
    packing: bool = False
    seed: int = 0
    # checkpoints
    checkpoint_every: int | None = Field(None, ge=1, description="optimizer steps; also each epoch")
    keep_checkpoints: int = Field(2, ge=1)
    run_name: str = "sft"

    @field_validator("deepspeed")
    @classmethod
    def _ds(cls, v: str | None) -> str | None:
        if v in (None, "", "none", "ddp"):
            return None
        if v in DS_PRESETS or (v.endswith(".json") and Path(v).is_file()):
            return v
        raise ValueError(f"deepspeed must be zero2, zero3 or an existing .json file, not {v!r}")

    @model_validator(mode="after")
    def _defaults(self) -> "SFTConfig":
        if self.lr is None:
            self.lr = 2e-4 if self.lora else 2e-5
        return self

    @property
    def out_dir(self) -> Path:
        return Path(self.out).expanduser().resolve()


# ============================================================================ driver side
def prepare_data(cfg: SFTConfig, base_dir: Path) -> dict:
    """Tokenize records into ``OUT/data/{train,dev}.jsonl``; reuse them when inputs match."""
    from collections import Counter

    from transformers import AutoTokenizer

    from training import chat_data as cd

    data_dir = cfg.out_dir / "data"
    key = {k: getattr(cfg, k) for k in ("data", "dev_data", "dev_fraction", "max_length",
                                         "packing", "seed")}
    key["base"] = str(base_dir)
    key["mtimes"] = [os.path.getmtime(f) for src in filter(None, [cfg.data, cfg.dev_data])
                     for f in cd.sft_files(src)]
    meta_path = data_dir / "meta.json"
    if meta_path.exists():
        meta = json.loads(meta_path.read_text())
        if meta.get("key") == json.loads(json.dumps(key)):
            return meta
    tok = AutoTokenizer.from_pretrained(base_dir)
    invalid: Counter = Counter()
    records = cd.load_records(cfg.data, invalid)
    if cfg.dev_data:
        train_recs, dev_recs = records, cd.load_records(cfg.dev_data, invalid)
    else:
        train_recs, dev_recs = cd.split_dev(records, cfg.dev_fraction, cfg.seed)
    meta: dict[str, Any] = {"key": key, "invalid_records": invalid.get("invalid_record", 0)}
    tmp = data_dir.with_name("data.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for split, recs in (("train", train_recs), ("dev", dev_recs)):
        stats = cd.EncodeStats()
        examples = cd.build_examples(tok, recs, cfg.max_length, stats)
        rows = cd.pack(examples, cfg.max_length) if cfg.packing else examples
        with open(tmp / f"{split}.jsonl", "w") as fh:
            for r in rows:
                fh.write(json.dumps(r) + "\n")
        meta[split] = {**stats.to_json(), "rows": len(rows)}
    if meta["train"]["rows"] == 0:
        raise ValueError(f"no trainable examples in {cfg.data}: {meta['train']}")
    (tmp / "meta.json").write_text(json.dumps(meta, indent=2))
    shutil.rmtree(data_dir, ignore_errors=True)
    tmp.rename(data_dir)
    return meta


def _resolve_base(base: str) -> Path:
    from actors.models import EMBEDDED, embedded_llm_dir, resolve_model

    return embedded_llm_dir() if base == EMBEDDED else resolve_model(base, "llm")


def train(cfg: SFTConfig) -> dict:
    """Run (or resume) SFT; returns the metrics also written to ``OUT/metrics.json``."""
    import ray
    from ray.train import CheckpointConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from cluster.runtime import connect

    out = cfg.out_dir
    out.mkdir(parents=True, exist_ok=True)
    done = out / "metrics.json"
    if done.exists() and (out / "model").is_dir():
        prev = json.loads(done.read_text())
        if prev.get("config") == cfg.model_dump():
            print(f"[synthrag] sft: {out} is up to date (same config, model exported), skipped")
            return prev
    base_dir = _resolve_base(cfg.base)
    t0 = time.perf_counter()
    data_meta = prepare_data(cfg, base_dir)
    print(f"[synthrag] sft data: train {data_meta['train']}, dev {data_meta['dev']}")
    connect(cfg.address)
    use_gpu = cfg.use_gpu if cfg.use_gpu is not None else ray.cluster_resources().get("GPU", 0) >= 1
    loop_config = {"cfg": cfg.model_dump(), "base_dir": str(base_dir),
                   "data_dir": str(out / "data"), "use_gpu": use_gpu}
    trainer = TorchTrainer(
        train_loop,
        train_loop_config=loop_config,
        torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
        scaling_config=ScalingConfig(num_workers=cfg.workers, use_gpu=use_gpu,
                                     resources_per_worker={"CPU": cfg.cpus_per_worker}),
        run_config=RunConfig(name=cfg.run_name, storage_path=str(out / "ray"),
                             checkpoint_config=CheckpointConfig(num_to_keep=cfg.keep_checkpoints)),
    )
    result = trainer.fit()
    if result.error:
        raise result.error
    if result.checkpoint is None:
        raise RuntimeError("training finished without a checkpoint")
    with result.checkpoint.as_directory() as ckpt:
        state = json.loads((Path(ckpt) / "state.json").read_text())
        if not state.get("final"):
            raise RuntimeError(f"last checkpoint {ckpt} is not a final export")
        tmp = out / "model.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(Path(ckpt) / "model", tmp)
    shutil.rmtree(out / "model", ignore_errors=True)
    tmp.rename(out / "model")
    metrics = {
        "engine": cfg.deepspeed or "ddp", "lora": cfg.lora, "workers": cfg.workers,
        "device": "gpu" if use_gpu else "cpu", "base": str(base_dir),
        "data": {k: data_meta[k] for k in ("train", "dev", "invalid_records")},
        **{k: state[k] for k in ("epochs", "steps", "global_step", "total_steps", "sessions")},
        "model_dir": str(out / "model"), "driver_seconds": round(time.perf_counter() - t0, 2),
        "config": cfg.model_dump(),
    }
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    return metrics


# ============================================================================ worker side
def deepspeed_config(cfg: SFTConfig, *, use_gpu: bool, world: int) -> dict:
    """The preset (or user) DeepSpeed JSON with batch sizes, precision and offload filled in."""
    src = DS_PRESETS.get(cfg.deepspeed, cfg.deepspeed)
    d = json.loads(Path(src).read_text())
    d["train_micro_batch_size_per_gpu"] = cfg.batch_size
    d["gradient_accumulation_steps"] = cfg.grad_accum
    d["train_batch_size"] = cfg.batch_size * cfg.grad_accum * world
    d["gradient_clipping"] = cfg.max_grad_norm
    d["bf16"] = {"enabled": bool(use_gpu)}
    d.pop("fp16", None)
    d.pop("optimizer", None)  # the torch optimizer is passed to deepspeed.initialize
    d.pop("scheduler", None)
    zo = d.setdefault("zero_optimization", {})
    if cfg.offload_optimizer:
        zo["offload_optimizer"] = {"device": "cpu", "pin_memory": bool(use_gpu)}
    else:
        zo.pop("offload_optimizer", None)
    if cfg.offload_params and zo.get("stage") == 3:
        zo["offload_param"] = {"device": "cpu", "pin_memory": bool(use_gpu)}
    else:
        zo.pop("offload_param", None)
    return d


def _read_rows(path: Path) -> list[dict]:
    if not path.exists():
        return []
    with open(path) as fh:
        return [json.loads(line) for line in fh if line.strip()]


def _tied_aliases(model) -> set[str]:
    every = {n for n, _ in model.named_parameters(remove_duplicate=False)}
    return every - {n for n, _ in model.named_parameters()}


class _Session:
    """Per-worker training state: model/engine, optimizer, data, checkpoint I/O."""

    def __init__(self, config: dict):
        import ray.train
        import ray.train.torch
        import torch

        self.cfg = cfg = SFTConfig(**config["cfg"])
        self.use_gpu = config["use_gpu"]
        self.base_dir = Path(config["base_dir"])
        data_dir = Path(config["data_dir"])
        ctx = ray.train.get_context()
        self.rank, self.world = ctx.get_world_rank(), ctx.get_world_size()
        if not self.use_gpu:
            os.environ["DS_ACCELERATOR"] = "cpu"
            torch.set_num_threads(cfg.cpus_per_worker)
        self.device = ray.train.torch.get_device()
        torch.manual_seed(cfg.seed)
        self.train_rows = _read_rows(data_dir / "train.jsonl")
        self.dev_rows = _read_rows(data_dir / "dev.jsonl")
        self.ds = cfg.deepspeed is not None
        # DeepSpeed bf16 keeps fp32 master weights itself; DDP keeps fp32 weights + autocast.
        self.dtype = torch.bfloat16 if self.use_gpu and self.ds else torch.float32
        self._build_model()
        self.micro_per_epoch = math.ceil(len(self.train_rows) / (self.world * cfg.batch_size))
        self.steps_per_epoch = math.ceil(self.micro_per_epoch / cfg.grad_accum)
        total = self.steps_per_epoch * cfg.epochs
        self.total_steps = min(total, cfg.max_steps) if cfg.max_steps else total
        self._build_optimizer()

    # ------------------------------------------------------------------ setup
    def _lora_config(self):
        from peft import LoraConfig

        c = self.cfg
        return LoraConfig(r=c.lora_r, lora_alpha=c.lora_alpha, lora_dropout=c.lora_dropout,
                          target_modules=c.lora_targets, task_type="CAUSAL_LM")

    def _load_base(self, dtype):
        from transformers import AutoModelForCausalLM

        return AutoModelForCausalLM.from_pretrained(self.base_dir, dtype=dtype)

    def _build_model(self) -> None:
        cfg = self.cfg
        if self.ds:
            import deepspeed

            # Wrap the process group Ray Train set up, so DeepSpeed sees the real world size.
            deepspeed.init_distributed(dist_backend="nccl" if self.use_gpu else "gloo")
            self.ds_config = deepspeed_config(cfg, use_gpu=self.use_gpu, world=self.world)
            if self.ds_config["zero_optimization"].get("stage") == 3:
                from transformers.integrations import HfDeepSpeedConfig

                # Kept alive: from_pretrained then loads straight into ZeRO-3 partitions.
                self._hf_ds = HfDeepSpeedConfig(self.ds_config)
        model = self._load_base(self.dtype)
        model.config.use_cache = False
        if cfg.gradient_checkpointing:
            kwargs = {"use_reentrant": False}
            if hasattr(model, "activation_checkpointing_enable"):  # the transformers 5 name
                model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
            else:
                model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
        if cfg.lora:
            from peft import get_peft_model

            model = get_peft_model(model, self._lora_config())
        self.model = model

    def _build_optimizer(self) -> None:
        import torch
        from transformers import get_scheduler

        cfg = self.cfg
        params = [p for p in self.model.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay,
                                fused=bool(self.use_gpu) and not self.ds)
        sched = get_scheduler(cfg.scheduler, opt,
                              num_warmup_steps=int(cfg.warmup_ratio * self.total_steps),
                              num_training_steps=self.total_steps)
        if self.ds:
            import deepspeed

            self.engine, self.opt, _, self.sched = deepspeed.initialize(
                model=self.model, optimizer=opt, lr_scheduler=sched, config=self.ds_config,
                dist_init_required=False)
            self.net = self.engine
        else:
            import ray.train.torch

            self.net = ray.train.torch.prepare_model(self.model)
            self.opt, self.sched = opt, sched

    def unwrapped(self):
        if self.ds:
            return self.engine.module
        return getattr(self.net, "module", self.net)

    # ------------------------------------------------------------------ data
    def loader(self, rows: list[dict], *, epoch: int, shuffle: bool):
        from torch.utils.data import DataLoader
        from torch.utils.data.distributed import DistributedSampler

        from training.chat_data import Collator

        pad = self.tokenizer_pad_id()
        sampler = DistributedSampler(rows, num_replicas=self.world, rank=self.rank,
                                     shuffle=shuffle, seed=self.cfg.seed, drop_last=False)
        sampler.set_epoch(epoch)
        return DataLoader(rows, batch_size=self.cfg.batch_size, sampler=sampler,
                          collate_fn=Collator(pad))

    def tokenizer_pad_id(self) -> int:
        if not hasattr(self, "_pad"):
            from transformers import AutoTokenizer

            tok = AutoTokenizer.from_pretrained(self.base_dir)
            self._pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        return self._pad

    # ------------------------------------------------------------------ compute
    def forward(self, batch):
        import torch

        batch = {k: v.to(self.device) for k, v in batch.items()}
        ntok = int((batch["labels"][:, 1:] != -100).sum())
        if self.use_gpu and not self.ds:
            with torch.autocast("cuda", dtype=torch.bfloat16):
                loss = self.net(**batch).loss
        else:
            loss = self.net(**batch).loss
        return loss, ntok

    def all_sum(self, *values: float) -> list[float]:
        import torch
        import torch.distributed as dist

        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        if dist.is_available() and dist.is_initialized() and self.world > 1:
            dist.all_reduce(t)
        return t.tolist()

    def dev_loss(self) -> float | None:
        import torch

        if not self.dev_rows:
            return None
        self.net.eval()
        s = n = 0.0
        with torch.no_grad():
            for batch in self.loader(self.dev_rows, epoch=0, shuffle=False):
                loss, ntok = self.forward(batch)
                s += float(loss) * ntok
                n += ntok
        self.net.train()
        s, n = self.all_sum(s, n)
        return s / max(n, 1.0)

    # ------------------------------------------------------------------ checkpoints
    def save(self, state: dict, metrics: dict) -> None:
        import ray.train
        import torch

        with tempfile.TemporaryDirectory() as tmp:
            if self.ds:
                self.engine.save_checkpoint(tmp, tag="ds")
            elif self.rank == 0:
                model = self.unwrapped()
                sd = model.state_dict()
                if self.cfg.lora:
                    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
                    sd = {k: v for k, v in sd.items() if k in trainable}
                torch.save({"model": sd, "optimizer": self.opt.state_dict(),
                            "scheduler": self.sched.state_dict()}, Path(tmp) / "train_state.pt")
            if self.rank == 0:
                (Path(tmp) / "state.json").write_text(json.dumps(state, indent=2))
            upload = self.ds or self.rank == 0
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp)
                             if upload else None)

    def load(self, ckpt_dir: Path) -> None:
        import torch

        if self.ds:
            path, _ = self.engine.load_checkpoint(str(ckpt_dir), tag="ds")
            if path is None:
                raise RuntimeError(f"DeepSpeed could not load the checkpoint in {ckpt_dir}")
            return
        blob = torch.load(ckpt_dir / "train_state.pt", map_location=self.device, weights_only=False)
        missing, unexpected = self.unwrapped().load_state_dict(blob["model"], strict=not self.cfg.lora)
        if unexpected:
            raise RuntimeError(f"unexpected keys in checkpoint: {unexpected[:5]}")
        self.opt.load_state_dict(blob["optimizer"])
        self.sched.load_state_dict(blob["scheduler"])

    def export(self, state: dict) -> None:
        """Gather the weights on rank 0, merge LoRA, save a transformers dir; final report."""
        import ray.train
        from transformers import AutoTokenizer

        if self.ds and self.ds_config["zero_optimization"].get("stage") == 3:
            sd = self.engine._zero3_consolidated_16bit_state_dict()  # collective; None off rank 0
        else:
            sd = self.unwrapped().state_dict() if self.rank == 0 else None
        with tempfile.TemporaryDirectory() as tmp:
            if self.rank == 0:
                if hasattr(self, "_hf_ds"):
                    from transformers.integrations.deepspeed import (
                        unset_hf_deepspeed_config,
                    )

                    unset_hf_deepspeed_config()  # the fresh copy must not be partitioned
                fresh = self._load_base(self.dtype)
                if self.cfg.lora:
                    from peft import get_peft_model

                    fresh = get_peft_model(fresh, self._lora_config())
                sd = {k: v.to("cpu") for k, v in sd.items()}
                missing, unexpected = fresh.load_state_dict(sd, strict=False)
                bad = set(missing) - _tied_aliases(fresh)
                if bad or unexpected:
                    raise RuntimeError(f"export: missing {sorted(bad)[:5]}, unexpected "
                                       f"{sorted(unexpected)[:5]}")
                if self.cfg.lora:
                    fresh = fresh.merge_and_unload()
                fresh.config.use_cache = True
                fresh.save_pretrained(Path(tmp) / "model")
                AutoTokenizer.from_pretrained(self.base_dir).save_pretrained(Path(tmp) / "model")
                (Path(tmp) / "state.json").write_text(json.dumps({**state, "final": True}, indent=2))
            ray.train.report({"final": 1}, checkpoint=ray.train.Checkpoint.from_directory(tmp)
                             if self.rank == 0 else None)


def train_loop(config: dict) -> None:
    """The Ray Train worker function (one per rank)."""
    import ray.train

    s = _Session(config)
    cfg = s.cfg
    state: dict[str, Any] = {"epoch": 0, "micro_in_epoch": 0, "global_step": 0,
                             "total_steps": s.total_steps, "epochs": [], "steps": [],
                             "sessions": []}
    ckpt = ray.train.get_checkpoint()
    if ckpt is not None:
        with ckpt.as_directory() as d:
            prev = json.loads((Path(d) / "state.json").read_text())
            if prev.get("final"):
                return  # already trained and exported; the driver copies the export again
            s.load(Path(d))
        state.update(prev)
    resumed_from = state["global_step"]
    if s.rank == 0:
        where = f"resuming at step {resumed_from}" if ckpt is not None else "starting"
        print(f"[synthrag] sft {where}: {s.total_steps} steps, {s.world} workers, "
              f"engine={cfg.deepspeed or 'ddp'}, lora={cfg.lora}, device={s.device}")
    s.net.train()
    t_train, t0 = 0.0, time.perf_counter()
    step_s = step_n = 0.0
    epoch_s = epoch_n = 0.0
    done = state["global_step"] >= s.total_steps
    for epoch in range(state["epoch"], cfg.epochs):
        if done:
            break
        skip = state["micro_in_epoch"] if epoch == state["epoch"] else 0
        if skip == 0:
            epoch_s = epoch_n = 0.0
        else:
            epoch_s, epoch_n = state.get("epoch_partial", (0.0, 0.0))
        for i, batch in enumerate(s.loader(s.train_rows, epoch=epoch, shuffle=True)):
            if i < skip:
                continue
            boundary = (i + 1) % cfg.grad_accum == 0 or i + 1 == s.micro_per_epoch
            if s.ds:
                s.engine.set_gradient_accumulation_boundary(boundary)
                loss, ntok = s.forward(batch)
                s.engine.backward(loss)  # DeepSpeed divides by gradient_accumulation_steps
                s.engine.step()
            else:
                import torch

                loss, ntok = s.forward(batch)
                if boundary or s.world == 1:
                    (loss / cfg.grad_accum).backward()
                else:
                    with s.net.no_sync():
                        (loss / cfg.grad_accum).backward()
                if boundary:
                    torch.nn.utils.clip_grad_norm_(s.model.parameters(), cfg.max_grad_norm)
                    s.opt.step()
                    s.sched.step()
                    s.opt.zero_grad(set_to_none=True)
            step_s += float(loss) * ntok
            step_n += ntok
            if not boundary:
                continue
            state["global_step"] += 1
            state["micro_in_epoch"] = i + 1
            ls, ln = s.all_sum(step_s, step_n)
            epoch_s += ls
            epoch_n += ln
            step_s = step_n = 0.0
            state["steps"].append({"step": state["global_step"], "epoch": epoch,
                                   "loss": round(ls / max(ln, 1.0), 5)})
            done = state["global_step"] >= s.total_steps
            last_in_epoch = i + 1 == s.micro_per_epoch
            periodic = cfg.checkpoint_every and state["global_step"] % cfg.checkpoint_every == 0
            if done or last_in_epoch or periodic:
                t_train += time.perf_counter() - t0
                state["epoch_partial"] = (epoch_s, epoch_n)
                if done or last_in_epoch:
                    rec = {"epoch": epoch, "train_loss": round(epoch_s / max(epoch_n, 1.0), 5),
                           "dev_loss": s.dev_loss(), "global_step": state["global_step"]}
                    if rec["dev_loss"] is not None:
                        rec["dev_loss"] = round(rec["dev_loss"], 5)
                    state["epochs"].append(rec)
                    state["epoch"], state["micro_in_epoch"] = epoch + 1, 0
                    state["epoch_partial"] = (0.0, 0.0)
                    if s.rank == 0:
                        print(f"[synthrag] sft epoch {epoch}: {rec}")
                session = {"resumed_from": resumed_from, "steps": state["global_step"] - resumed_from,
                           "train_seconds": round(t_train, 3)}
                session["steps_per_s"] = round(session["steps"] / max(t_train, 1e-9), 4)
                state["sessions"] = [x for x in state["sessions"]
                                     if x["resumed_from"] != resumed_from] + [session]
                s.save(state, {"global_step": state["global_step"],
                               "loss": state["steps"][-1]["loss"]})
                t0 = time.perf_counter()
            if done:
                break
    s.export(state)
