"""Cutting volumes into the slices a 2D expert sees, and putting its outputs back together (Diff-Ensembler Eq. 4).

Volumes are (B, C, X, Y, Z). An expert's slice axis is a spatial axis (0 = X sagittal, 1 = Y coronal,
2 = Z axial); its slices keep the two other axes in their order: axial (X, Y), coronal (X, Z),
sagittal (Y, Z). Flattened slices are batch-major: slice s of batch element b is row b * S + s.

`ExpertRunner` runs one expert over every slice of its plane in batches of `slice_batch_size`
(one batch may span two batch elements), writing each batch into preallocated output volumes, so the
peak memory is one slice batch's forward plus the outputs, never a copy of every slice's input.

An expert's frame (`positions` below) is a (1 or B, 3 [+ 1], X, Y, Z) volume: the three global coordinates, then,
for experts planned with `mask_channels`, the condition's non-zero mask (`expert_frame`). A runner takes the
channels its expert was planned with; the coordinates can be built from a volume's shape, the mask cannot.
"""
import contextlib

import torch

POSITION_CHANNELS = 3   # public code: the three global coordinates (x, y, z)


def _check_axis(slice_axis: int) -> int:
    if slice_axis not in (0, 1, 2):
        raise ValueError(f"slice_axis must be 0 (sagittal, X), 1 (coronal, Y) or 2 (axial, Z), got {slice_axis!r}.")
    return int(slice_axis)


def slices_of(volume: torch.Tensor, slice_axis: int) -> torch.Tensor:
    """(B, C, X, Y, Z) -> (B * S, C, a, b): every slice along `slice_axis`, in-plane axes in their order."""
    dim = 2 + _check_axis(slice_axis)
    batch, channels = volume.shape[:2]
    moved = volume.movedim(dim, 1)   # (B, S, C, a, b); movedim keeps the other axes' order
    return moved.reshape(batch * volume.shape[dim], channels, *moved.shape[3:])


def restack(slices: torch.Tensor, slice_axis: int, batch: int) -> torch.Tensor:
    """(B * S, C, a, b) -> (B, C, X, Y, Z): the exact inverse of `slices_of` (in-plane sizes may be any)."""
    dim = 2 + _check_axis(slice_axis)
    if slices.shape[0] % batch:
        raise ValueError(f"{slices.shape[0]} slices cannot be split into a batch of {batch} volumes.")
    stacked = slices.reshape(batch, slices.shape[0] // batch, *slices.shape[1:])
    return stacked.movedim(1, dim).contiguous()


def context_stack(condition: torch.Tensor, slice_axis: int, context_slices: int,
                  slice_indices: torch.Tensor | None = None) -> torch.Tensor:
    """Each condition channel with its `context_slices` neighbours on either side (edge-replicated) as channels.

    Returns (B, C * (2s + 1), ...) with, per condition channel, its slices at offsets -s..+s in slice order
    (channel c * (2s + 1) + s + k holds the slice at offset k). With `slice_indices` only those slices
    along the slice axis are gathered (what a slice batch needs); otherwise all of them.
    """
    dim = 2 + _check_axis(slice_axis)
    size = condition.shape[dim]
    if slice_indices is None:
        slice_indices = torch.arange(size, device=condition.device)
    if context_slices == 0:
        return condition.index_select(dim, slice_indices)
    # MADM 2.5D input: neighbours past the volume border repeat the border slice
    shifted = [condition.index_select(dim, (slice_indices + k).clamp(0, size - 1))
               for k in range(-context_slices, context_slices + 1)]
    stacked = torch.stack(shifted, dim=2)   # (B, C, 2s + 1, ...)
    return stacked.flatten(1, 2)


def position_channels(shape, device=None, dtype=torch.float32, channels: int = POSITION_CHANNELS) -> torch.Tensor:
    """(1, 3, X, Y, Z) global coordinates: channel i runs linearly from -1 (first voxel) to +1 (last) along axis i."""
    if channels != POSITION_CHANNELS:
        raise ValueError(f"position_channels must be 0 or {POSITION_CHANNELS} (x, y, z coordinates), got {channels}.")
    axes = [torch.linspace(-1.0, 1.0, n, device=device, dtype=dtype) if n > 1
            else torch.zeros(1, device=device, dtype=dtype) for n in shape]
    grids = torch.meshgrid(*axes, indexing="ij")
    return torch.stack(grids, dim=0).unsqueeze(0)


def expert_frame(positions: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """The frame the runners take: (1 or B, 3, ...) coordinates, then the (1 or B, 1, ...) mask when given."""
    if mask is None:
        return positions
    if positions.shape[0] != mask.shape[0]:
        positions = positions.expand(mask.shape[0], *positions.shape[1:])
    return torch.cat([positions, mask.to(device=positions.device, dtype=positions.dtype)], dim=1)


def full_precision(x: torch.Tensor) -> torch.Tensor:
    """A half-precision (autocast) output as float32; other dtypes as they are."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def needs_frame(runner) -> bool:
    """Whether a runner's expert takes position or mask channels, i.e. needs an expert frame."""
    return bool(getattr(runner, "position_channels", 0) or getattr(runner, "mask_channels", 0))


def timesteps_for(t, batch: int, device) -> torch.Tensor:
    """A training-step index (int, 0-d or (B,) tensor) as the LongTensor (B,) the networks take."""
    t = torch.as_tensor(t, device=device, dtype=torch.long)
    if t.ndim == 0:
        return t.expand(batch).clone()
    if t.shape != (batch,):
        raise ValueError(f"t must be an int or a tensor of shape ({batch},), got shape {tuple(t.shape)}.")
    return t


class ExpertRunner:
    """Runs a 2D expert over every slice of its plane in slice batches and restacks eps (and features)."""

    def __init__(self, expert, slice_axis: int, slice_batch_size: int, context_slices: int = 0,
                 position_channels: int = 0, *, mask_channels: int = 0, condition_indices=None, grad: bool = False,
                 name: str | None = None):
        """expert(x (n, C_in, a, b), t (n,)) -> (eps (n, 1, a, b), features); condition_indices picks its conditions."""
        if slice_batch_size < 1:
            raise ValueError(f"slice_batch_size must be >= 1, got {slice_batch_size}.")
        if position_channels not in (0, POSITION_CHANNELS):
            raise ValueError(f"position_channels must be 0 or {POSITION_CHANNELS}, got {position_channels}.")
        if mask_channels not in (0, 1):
            raise ValueError(f"mask_channels must be 0 or 1, got {mask_channels}.")
        self.expert = expert
        self.slice_axis = _check_axis(slice_axis)
        self.slice_batch_size = int(slice_batch_size)
        self.context_slices = int(context_slices)
        self.position_channels = int(position_channels)
        self.mask_channels = int(mask_channels)
        self.condition_indices = None if condition_indices is None else list(condition_indices)
        self.grad = grad
        self.name = name
        # a fresh context per expert forward: the plans' precision (devices.autocast_for) or none
        self.autocast = contextlib.nullcontext
        # torch.compile(expert) for the whole-volume passes (paths.compile_networks); adaptation's passes, which
        # need autograd through a LoRA set put into the expert, always run the module itself
        self.compiled = None

    @classmethod
    def from_network(cls, expert, network: dict, slice_axis: int, slice_batch_size: int, **kwargs):
        """A runner whose context slices, position and mask channels are those of the expert's plans network dict."""
        return cls(expert, slice_axis, slice_batch_size, context_slices=network.get("context_slices", 0),
                   position_channels=network.get("position_channels", 0),
                   mask_channels=network.get("mask_channels", 0), **kwargs)

    def __call__(self, y_t: torch.Tensor, condition: torch.Tensor, t, want_features: bool = False,
                 positions: torch.Tensor | None = None):
        """eps (B, 1, X, Y, Z) and, if asked, restacked features per level (B, C_l, in-plane / 2^l, full slice axis).

        `positions` is the expert frame (module docstring): it overrides the coordinates built from y_t's shape
        (`Windowed` passes each window its crop of the whole volume's frame) and brings the mask, which an expert
        planned with a mask channel cannot run without. Runs without autograd unless the runner has grad=True;
        the expert's train/eval mode is the caller's.
        """
        if self.condition_indices is not None:
            condition = condition[:, self.condition_indices]
        with torch.set_grad_enabled(self.grad and torch.is_grad_enabled()):
            return self._run(y_t, condition, t, want_features, self._frame_channels(y_t, positions))

    def run_slices(self, y_t: torch.Tensor, condition: torch.Tensor, t, slice_indices,
                   positions: torch.Tensor | None = None) -> torch.Tensor:
        """The expert's output on the slices `slice_indices` of its plane only: (B, C, ...) with those slices along
        the slice axis, in one forward under the caller's grad mode (test-time adaptation's few slices)."""
        if self.condition_indices is not None:
            condition = condition[:, self.condition_indices]
        frame = self._frame_channels(y_t, positions)
        batch = y_t.shape[0]
        idx = torch.as_tensor(slice_indices, dtype=torch.long)
        t = timesteps_for(t, batch, y_t.device)
        x = torch.cat([self._slice_input(y_t, condition, frame, b, idx) for b in range(batch)])
        with self.autocast():
            output, _ = self.expert(x, t.repeat_interleave(len(idx)))
        output = full_precision(output)
        return restack(output, self.slice_axis, batch)

    def _frame_channels(self, y_t, frame):
        """The frame channels this expert takes (coordinates, mask), or None when it takes none."""
        if not needs_frame(self):
            return None
        if self.mask_channels and (frame is None or frame.shape[1] < POSITION_CHANNELS + 1):
            who = f"Expert {self.name}" if self.name else "This expert"
            raise ValueError(f"{who} was planned with a non-zero mask channel, so it needs the "
                             "case's mask: pass the expert frame (slicing.expert_frame(positions, mask)) as "
                             "`positions`.")
        if frame is None:
            frame = position_channels(y_t.shape[2:], device=y_t.device, dtype=y_t.dtype)
        parts = ([frame[:, :POSITION_CHANNELS]] if self.position_channels else []) + \
            ([frame[:, POSITION_CHANNELS:POSITION_CHANNELS + 1]] if self.mask_channels else [])
        return parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)

    def _run(self, y_t, condition, t, want_features, positions):
        batch, dim = y_t.shape[0], 2 + self.slice_axis
        size = y_t.shape[dim]
        t = timesteps_for(t, batch, y_t.device)
        eps_volume, feature_volumes = None, None
        for start in range(0, batch * size, self.slice_batch_size):
            rows = range(start, min(start + self.slice_batch_size, batch * size))
            pieces = self._pieces(rows, size)
            x = torch.cat([self._slice_input(y_t, condition, positions, b, idx) for b, idx in pieces])
            t_rows = torch.cat([t[b].expand(len(idx)) for b, idx in pieces])
            with self.autocast():
                network = self.expert if self.compiled is None else self.compiled
                eps, features = network(x, t_rows)
            eps = full_precision(eps)       # the sampler's arithmetic stays float32; features keep the planned dtype
            if eps_volume is None:
                eps_volume = eps.new_empty((batch, eps.shape[1], *y_t.shape[2:]))
                if want_features:
                    feature_volumes = [self._feature_volume(f, y_t.shape, batch) for f in features]
            self._write(eps_volume, eps, pieces)
            if want_features:
                for volume, feature in zip(feature_volumes, features):
                    self._write(volume, feature, pieces)
        return eps_volume, feature_volumes

    @staticmethod
    def _pieces(rows: range, size: int):
        """The rows of one slice batch as (batch element, slice indices) pieces, batch-major."""
        pieces = []
        row = rows.start
        while row < rows.stop:
            b, s = divmod(row, size)
            stop = min(rows.stop - row, size - s) + s
            pieces.append((b, torch.arange(s, stop)))
            row += stop - s
        return pieces

    def _slice_input(self, y_t, condition, positions, b, idx):
        """Expert input (n, C_in, a, b) for slices idx of batch element b: [y_t, conditions (+ context), positions]."""
        dim = 2 + self.slice_axis
        idx = idx.to(y_t.device)
        parts = [y_t[b:b + 1].index_select(dim, idx),
                 context_stack(condition[b:b + 1], self.slice_axis, self.context_slices, idx)]
        if positions is not None:
            p = positions[b:b + 1] if positions.shape[0] > 1 else positions
            parts.append(p.to(y_t.dtype).index_select(dim, idx))
        volume = torch.cat(parts, dim=1)    # (1, C_in, ...) with n slices on the slice axis
        return volume[0].movedim(dim - 1, 0)

    def _feature_volume(self, feature, volume_shape, batch):
        """Preallocated (B, C_l, ...) volume for one level: the feature's in-plane size, the full slice axis."""
        shape = list(feature.shape[2:])
        shape.insert(self.slice_axis, volume_shape[2 + self.slice_axis])
        return feature.new_empty((batch, feature.shape[1], *shape))

    def _write(self, volume, rows_output, pieces):
        """Write a slice batch's (n, C, a, b) output into its place in the (B, C, X, Y, Z) volume."""
        dim = 2 + self.slice_axis
        offset = 0
        for b, idx in pieces:
            n = len(idx)
            block = rows_output[offset:offset + n].movedim(0, dim - 1)   # (C, ..., n on the slice axis, ...)
            volume[b].narrow(dim - 1, int(idx[0]), n).copy_(block)
            offset += n
