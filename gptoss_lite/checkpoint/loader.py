"""Filling the model from a checkpoint: one loading loop over the layouts' name table.

`layouts.name_table` maps each model parameter to the checkpoint tensors it is made of (several
are concatenated along the first axis: HF's q_proj, k_proj and v_proj become the fused qkv the
model uses, which the original layout stores as is). `load_weights` first checks the whole
checkpoint from its description alone (every parameter filled with the shape and kind the config
implies, every checkpoint tensor used), then reads each tensor straight onto its device. The
MXFP4 expert blocks and scales stay uint8. The tensors a CPU reads at every token (everything
in host memory but the embedding) are read into one `HostArena` (`kernels/cpu/host_memory`):
anonymous memory in 2 MiB pages, which the kernel does not take back as it does a file's.
"""

from __future__ import annotations

from collections.abc import Callable, Collection

import torch
from torch import nn

from ..errors import GptossError
from ..kernels.cpu.host_memory import HostArena, arena_bytes, mapping_of
from .layouts import name_table
from .protocol import Checkpoint


def load_weights(
    model: nn.Module,
    checkpoint: Checkpoint,
    device: torch.device | str,
    embedding_device: torch.device | str | None = None,
    host_parameters: Collection[str] = (),
    progress: Callable[[int, int], None] | None = None,
) -> None:
    """Fill every parameter of `model` from `checkpoint`, reading straight onto `device` (the
    embedding onto `embedding_device`, `host_parameters` into host memory); `progress(done,
    total)` is told the parameter bytes filled after each one."""
    table = name_table(model.config.num_layers, checkpoint.layout)
    params = dict(model.named_parameters())
    total, done = sum(p.numel() * p.element_size() for p in params.values()), 0
    if set(table) != set(params):
        raise GptossError(
            f"the {checkpoint.layout} name table and the model disagree on "
            f"{sorted(set(table) ^ set(params))[0]}"
        )
    check_tensors(checkpoint, table, params)
    places = {}
    for param_name in table:
        where = embedding_device if param_name == "embedding" and embedding_device else device
        places[param_name] = torch.device("cpu" if param_name in host_parameters else where)
    # What the CPU reads at every token is read into one arena in 2 MiB pages. The embedding
    # only has rows gathered: it stays mapped, read ahead into the page cache, and only rows
    # used are read.
    streamed = [n for n, w in places.items() if w.type == "cpu" and n != "embedding"]
    arena = HostArena(arena_bytes([(params[n].shape, params[n].dtype) for n in streamed]))
    for param_name, sources in table.items():
        target = params[param_name]
        if param_name in streamed:
            tensor = arena.empty(tuple(target.shape), target.dtype)
            _read_into(checkpoint, sources, tensor)
        else:
            parts = [checkpoint.read(s, places[param_name]) for s in sources]
            tensor = parts[0] if len(parts) == 1 else torch.cat(parts)
            mapped = mapping_of(tensor) if places[param_name].type == "cpu" else None
            if mapped is not None:
                file, offset = mapped
                file.prefetch(offset, tensor.numel() * tensor.element_size())
        _assign(model, param_name, tensor.to(target.dtype))
        done += target.numel() * target.element_size()
        if progress is not None:
            progress(done, total)
    release = getattr(checkpoint, "release", None)
    if not arena.collapse() and release is not None:
        # The page cache still holds what the arena copied, and on a machine the checkpoint
        # nearly fills, that is the memory the 2 MiB pages want (20b geometry on 23 GiB: 8.6 of
        # 12.6 GB collapsed with it cached, all once it was dropped).
        for source in {s for n in streamed for s in table[n]}:
            release(source)
        arena.collapse()


def check_tensors(
    checkpoint: Checkpoint, table: dict[str, tuple[str, ...]], params: dict[str, nn.Parameter]
) -> None:
    """A one-line `GptossError` unless `checkpoint` holds exactly the tensors of `table` with the
    shapes of `params`: decided from the tensors' description, before any is read."""
    where = checkpoint.folder or checkpoint
    for param_name, sources in table.items():
        missing = [s for s in sources if s not in checkpoint.tensors]
        if missing:
            raise GptossError(f"checkpoint {where} is missing tensor {missing[0]}")
        infos = [checkpoint.tensors[s] for s in sources]
        shapes = [tuple(i.shape) for i in infos]
        target = params[param_name]
        if len(shapes) == 1:
            shape = shapes[0]
        elif all(shapes) and len({s[1:] for s in shapes}) == 1:  # concatenated along axis 0
            shape = (sum(s[0] for s in shapes), *shapes[0][1:])
        else:
            shape = None
        if shape != tuple(target.shape):
            raise GptossError(
                f"checkpoint tensor {' + '.join(sources)} in {where} has shape "
                f"{' + '.join(map(str, shapes))}, the config expects {tuple(target.shape)}"
            )
        for source, info in zip(sources, infos, strict=True):
            if (info.dtype == torch.uint8) != (target.dtype == torch.uint8) or not (
                info.dtype == torch.uint8 or info.dtype.is_floating_point
            ):
                raise GptossError(
                    f"checkpoint tensor {source} in {where} is {info.dtype}, "
                    f"expected {target.dtype}"
                )
    used = {s for sources in table.values() for s in sources}
    unused = sorted(set(checkpoint.tensors) - used)
    if unused:
        raise GptossError(
            f"checkpoint tensor {unused[0]} in {where} is not used by the model "
            f"({len(unused)} unused; does config.json match the weights?)"
        )


def _read_into(checkpoint: Checkpoint, sources: tuple[str, ...], out: torch.Tensor) -> None:
    """Fill `out` with the checkpoint tensors `sources` (concatenated along the first axis),
    straight from the file where the checkpoint can and the dtypes agree."""
    row = 0
    for source in sources:
        info = checkpoint.tensors[source]
        part = out[row : row + info.shape[0]] if len(sources) > 1 else out
        row += info.shape[0] if len(sources) > 1 else 0
        read_into = getattr(checkpoint, "read_into", None)
        if read_into is not None and info.dtype == out.dtype:
            read_into(source, part)
        else:
            part.copy_(checkpoint.read(source, "cpu"))


def _assign(model: nn.Module, name: str, tensor: torch.Tensor) -> None:
    module_name, _, attr = name.rpartition(".")
    module = model.get_submodule(module_name) if module_name else model
    setattr(module, attr, nn.Parameter(tensor, requires_grad=False))
