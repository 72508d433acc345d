"""Methods that break the arena's rules, each in one way, for the tests.

In-process tests use the classes (``check_method(Unfrozen())``); shootouts in a subprocess load
this module as a plugin (``conftest.MISBEHAVING``, which registers every one of them) and pick
theirs with ``--methods``. The cluster-like ones (``dies-once``, ``dies-always``, ``hangs``, ``crawls``) count
their attempts in files under ``$UNRULY_DIR``.
"""
import contextlib
import os
import signal
import subprocess
import time
from pathlib import Path

import torch
from safetensors.torch import save_file

from plugins.methods.lora import LoRA
from suite import Method, hookimpl


class Raiser(Method):
    name = "raiser"
    defaults = {"lr": 1e-3}

    def apply(self, model, params):
        raise RuntimeError("this method is broken on purpose")


class NaN(Method):
    """Multiplies the embeddings by a trainable NaN: the loss is NaN from step one."""

    name = "nanner"
    defaults = {"lr": 1e-3}
    starts_from_base = False  # NaN from the start; else the guard fails it before training

    def apply(self, model, params):
        for p in model.parameters():
            p.requires_grad_(False)
        model.nan_scale = torch.nn.Parameter(torch.tensor(float("nan")))
        model.get_input_embeddings().register_forward_hook(lambda m, i, o: o * model.nan_scale)
        return model


class Crasher(Method):
    name = "crasher"
    defaults = {"lr": 1e-3}

    def apply(self, model, params):
        os._exit(3)


class Leaky(Method):
    """Declares the base frozen, then trains all of it."""

    name = "leaky"
    defaults = {"lr": 1e-4}

    def apply(self, model, params):
        for p in model.parameters():
            p.requires_grad_(True)
        return model


class Unfrozen(LoRA):
    """Declares the base frozen, but leaves the embeddings trainable."""

    name = "unfrozen"

    def apply(self, model, params):
        peft_model = super().apply(model, params)
        model.get_input_embeddings().weight.requires_grad_(True)
        return peft_model


class Sneaky(LoRA):
    """Keeps the base frozen on paper, but nudges a base weight in place on every backward."""

    name = "sneaky"

    def apply(self, model, params):
        peft_model = super().apply(model, params)
        norm = model.get_decoder().norm
        lora_b = next(p for n, p in peft_model.named_parameters() if "lora_B" in n)

        def nudge(grad):
            with torch.no_grad():
                norm.weight.add_(1e-3)
            return grad

        lora_b.register_hook(nudge)
        return peft_model


class Hollow(Method):
    """Trains nothing at all."""

    name = "hollow"
    defaults = {"lr": 1e-3}

    def apply(self, model, params):
        for p in model.parameters():
            p.requires_grad_(False)
        return model


class NothingTrains(Hollow):
    name = "nothing-trains"


class Miscount(LoRA):
    """Reports half the parameters it trains."""

    name = "miscount"

    def trainable_count(self, model):
        return super().trainable_count(model) // 2


class DeadWeight(LoRA):
    """Pads its trainable count with a parameter the forward never uses."""

    name = "dead-weight"

    def apply(self, model, params):
        peft_model = super().apply(model, params)
        model.unused = torch.nn.Parameter(torch.zeros(64))
        return peft_model

    def trainable_count(self, model):
        return None


class CacheBlind(Method):
    """Adds a trainable shift to the first position's embedding: right in a full forward pass,
    wrong with the generation cache, where every new token arrives as position 0 of its chunk."""

    name = "cache-blind"
    defaults = {"lr": 1e-2}
    starts_from_base = False

    def apply(self, model, params):
        for p in model.parameters():
            p.requires_grad_(False)
        model.shift = torch.nn.Parameter(torch.randn(model.config.hidden_size))

        def first_position(module, args, out):
            return torch.cat([out[:, :1] + model.shift, out[:, 1:]], dim=1)

        model.get_input_embeddings().register_forward_hook(first_position)
        return model


class Lossy(LoRA):
    """Saves only the A matrices (a name filter that misses lora_B)."""

    name = "lossy"
    defaults = {**LoRA.defaults, "lr": 1e-2}

    def save(self, model, directory, params):
        directory.mkdir(parents=True, exist_ok=True)
        kept = {n: p.detach().contiguous() for n, p in model.named_parameters() if "lora_A" in n}
        save_file(kept, str(directory / "trainable.safetensors"))

    def load(self, base_model, directory, params):
        return Method.load(self, base_model, directory, params)


class Unseeded(LoRA):
    """Initialises B from a generator it seeds from the clock, not from the run's seed."""

    name = "unseeded"
    starts_from_base = False

    def apply(self, model, params):
        peft_model = super().apply(model, params)
        g = torch.Generator()
        g.seed()
        for n, p in peft_model.named_parameters():
            if "lora_B" in n:
                with torch.no_grad():
                    p.copy_(torch.randn(p.shape, generator=g) * 0.1)
        return peft_model


class Liar(LoRA):
    """Claims to start from the base model, but initialises LoRA's B away from zero."""

    name = "liar"

    def peft_config(self, model, params):
        config = super().peft_config(model, params)
        config.init_lora_weights = False
        return config


class Peeker(LoRA):
    """Says its base view is the base model, but leaves the adapter switched on."""

    name = "peeker"

    def base_view(self, model):
        return contextlib.nullcontext(model)


class FakeMerge(LoRA):
    """Declares that it merges, but drops the adapter instead of folding it in."""

    name = "fake-merge"

    def merge(self, model):
        return model.unload()


class Picky(LoRA):
    """Its settings check refuses the very settings its apply() works with."""

    name = "picky"

    def check_params(self, params, model=None):
        raise ValueError("r must be a power of three")


def planning(model) -> bool:
    """Whether ``apply`` was called by the memory prediction (suite.memory.prediction) on a weightless model,
    which is no attempt of the cell."""
    return any(p.is_meta for p in model.parameters())


def attempt(name: str) -> int:
    """Count one more attempt of method ``name``; return how many there were."""
    marker = Path(os.environ["UNRULY_DIR"]) / name
    with open(marker, "a") as f:
        f.write("x")
    return len(marker.read_text())


class DiesOnce(LoRA):
    """Kills the process that runs the cell (the Ray worker) on its first attempt."""

    name = "dies-once"

    def apply(self, model, params):
        if not planning(model) and attempt(self.name) == 1:
            os.kill(os.getppid(), signal.SIGKILL)
            time.sleep(60)
        return super().apply(model, params)


class DiesAlways(LoRA):
    name = "dies-always"

    def apply(self, model, params):
        if planning(model):
            return super().apply(model, params)
        attempt(self.name)
        os.kill(os.getppid(), signal.SIGKILL)
        time.sleep(60)


class Hangs(LoRA):
    """Sleeps (as a long cell would) unless UNRULY_NO_HANG is set; its process id is in
    ``$UNRULY_DIR/hangs.pid`` while it sleeps."""

    name = "hangs"

    def apply(self, model, params):
        if planning(model):
            return super().apply(model, params)
        attempt(self.name)
        pid = Path(os.environ["UNRULY_DIR"]) / f"{self.name}{os.environ.get('RANK', '')}.pid"  # each rank its own
        pid.with_suffix(".tmp").write_text(str(os.getpid()))
        pid.with_suffix(".tmp").replace(pid)  # whole, or not there
        if not os.environ.get("UNRULY_NO_HANG"):
            time.sleep(600)
        return super().apply(model, params)


class Crawls(LoRA):
    """Trains, but slowly (``$UNRULY_STEP_SECONDS`` a step, default 8), with a helper process of
    its own (``sleep``) running beside it: a cell that makes progress and cannot finish in time.
    Its process id is in ``$UNRULY_DIR/crawls.pid``, the helper's in ``crawls-helper.pid``
    (``crawls-1.pid``... for the other ranks of a distributed cell)."""

    name = "crawls"

    def apply(self, model, params):
        if not planning(model):
            helper = subprocess.Popen(["sleep", "600"])
            rank = "" if os.environ.get("RANK", "0") == "0" else f"-{os.environ['RANK']}"
            for name, pid in (("crawls-helper", helper.pid), ("crawls", os.getpid())):
                path = Path(os.environ["UNRULY_DIR"]) / f"{name}{rank}.pid"
                path.with_suffix(".tmp").write_text(str(pid))
                path.with_suffix(".tmp").replace(path)
        return super().apply(model, params)

    def after_step(self, model, step, steps):
        time.sleep(float(os.environ.get("UNRULY_STEP_SECONDS", "8")))


@hookimpl
def register_methods(register):
    for cls in (Raiser, NaN, Crasher, Leaky, Hollow, Liar, Peeker, DiesOnce, DiesAlways, Hangs, Crawls):
        register(cls())


class Ungrouped(LoRA):
    """Gives the optimiser the A matrices only: the B matrices would never train."""

    name = "ungrouped"

    def param_groups(self, model, params):
        return [{"params": [p for n, p in model.named_parameters() if "lora_A" in n]}]


class Meddler(LoRA):
    """Nudges a base weight after every optimiser step."""

    name = "meddler"

    def after_step(self, model, step, steps):
        with torch.no_grad():
            model.get_decoder().norm.weight.add_(1e-3)
