"""Memory formats in the networks: the one a network runs in, read from its weights
(`model.to(memory_format=...)` sets it), and keeping the tensors and gradients it sees in that format."""

from __future__ import annotations

import torch
from torch import nn


def memory_format_of(module: nn.Module) -> torch.memory_format:
    """torch.channels_last when the first 4-D parameter of `module` (a convolution's weight) is channels_last
    (and not also plain contiguous, as 1x1 kernels are), else torch.contiguous_format."""
    weight = next((p for p in module.parameters() if p.dim() == 4), None)
    if weight is not None and weight.is_contiguous(memory_format=torch.channels_last) and not weight.is_contiguous():
        return torch.channels_last
    return torch.contiguous_format


def cat_channels(tensors: list[torch.Tensor], layout: torch.memory_format) -> torch.Tensor:
    """torch.cat along channels, in `layout`: the next conv then neither converts its input nor, in backward,
    its saved input and its gradient. Each part is put in `layout` first (a cat of mixed layouts comes out
    contiguous): only the parts not in it yet are copied, not the whole."""
    return torch.cat([in_layout(part, layout) for part in tensors], dim=1).contiguous(memory_format=layout)


def in_layout(x: torch.Tensor, layout: torch.memory_format) -> torch.Tensor:
    """x with `layout`'s strides. channels_last means channel stride 1: a single-channel NCHW tensor counts as
    contiguous in both layouts, so `.contiguous(memory_format=channels_last)` would keep its NCHW strides, and
    torch.cat led by it then makes the whole cat NCHW."""
    if layout == torch.channels_last and x.stride(1) != 1:
        return x.clone(memory_format=layout)
    return x.contiguous(memory_format=layout)


class _GradLayout(torch.autograd.Function):
    """Identity whose backward hands the gradient on in `layout` (the warp, the correlation and a cat's
    slicing return theirs contiguous or strided, and elementwise backward ops on mixed layouts are slow)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, layout: torch.memory_format) -> torch.Tensor:
        ctx.layout = layout
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad.contiguous(memory_format=ctx.layout), None


def grads_in(layout: torch.memory_format, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """`tensors` unchanged, their gradients to come in `layout` when that is channels_last."""
    if layout != torch.channels_last or not torch.is_grad_enabled():
        return tensors
    return tuple(_GradLayout.apply(t, layout) if t.requires_grad else t for t in tensors)
