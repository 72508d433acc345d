"""Sharded cells (``--shard fsdp`` with ``--gpus-per-cell N``): one cell's parameters, gradients
and optimiser state split over its N processes by PyTorch's FSDP2 (``fully_shard``), each
decoder layer a unit of its own (found by role, :func:`suite.models.architecture.find`) and the
rest of the model the root unit. Every method trains this way unchanged: full fine-tuning, peft's
tuners and LST on a sharded frozen base (how a 70B LoRA is trained). A method that reads its own
trained parameters whole (AdaLoRA, :attr:`suite.Method.shards_trained` False) keeps them whole on
every process, their gradients averaged by the core, while the base is sharded.

A unit's parameters are gathered for its forward and backward and sharded again after; its
gradients are reduce-scattered, so each process holds and updates its shard only. After
training the processes gather the whole state dict (:func:`full_state`) and the main process
goes on with an unsharded model holding it, as an unsharded run would: scoring, the saved
adapter, forgetting and inference are measured the same way.
"""
from __future__ import annotations

import torch


def shard(model: torch.nn.Module, how: str, whole=()) -> torch.nn.Module:
    """Shard ``model`` in place (``how``: ``fsdp``; ``none`` leaves it whole), but for the
    parameters in ``whole``, which every process keeps whole (a method that reads its trained
    parameters whole, :attr:`suite.Method.shards_trained`; :func:`average_whole_gradients`)."""
    if how == "none":
        return model
    from torch.distributed.fsdp import fully_shard

    from ..models.architecture import decoder_layers

    ignored = set(whole) or None
    for layer in decoder_layers(model):
        fully_shard(layer, ignored_params=ignored)
    # the root too: its gathered weights are not held for backward
    fully_shard(model, reshard_after_forward=True, ignored_params=ignored)
    return model


def average_whole_gradients(whole: list[torch.nn.Parameter], world: int) -> None:
    """The gradients of the parameters kept whole, averaged over the ``world`` processes (FSDP
    averages those it shards as it reduce-scatters them), so every process takes the same step:
    one collective for all of them, as DDP buckets its gradients."""
    import torch.distributed as dist

    grads = [p.grad for p in whole if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)  # a sum: gloo has no average
    flat.div_(world)
    for g, part in zip(grads, flat.split([g.numel() for g in grads])):
        g.copy_(part.view_as(g))


def sharded(model: torch.nn.Module) -> bool:
    """Whether FSDP shards ``model``."""
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


def full_state(model: torch.nn.Module) -> dict:
    """The whole model's state dict as plain tensors on the CPU (every process must call it: it
    gathers the shards)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def unsharded(state: dict, build, trainable_dtype: torch.dtype, device) -> torch.nn.Module:
    """The model ``build()`` makes (the base with the method applied, unsharded), holding the
    gathered ``state``, on ``device``."""
    from ..models.precision import upcast_trainable

    model = build()
    upcast_trainable(model, trainable_dtype)
    model.load_state_dict(state)
    return model.to(device)
