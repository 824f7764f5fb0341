"""
train.py's optimizer step and its policy for non-finite steps (nan_policy). A step whose loss or gradient is not
finite must change neither the weights nor the optimizer's moments, and finding out must not stall a GPU: the flag
stays on the device, the fused AdamW kernel skips its whole update when it is set (Muon's masked updates do the same
on GPUs: optim.py), and float16's GradScaler does so with its own flag for gradients that overflowed. The steps
are counted on the device and reported at train.py's next host sync: 'stop' ends the run with one line and no save
(the last checkpoint stays the last good state), 'skip' logs them and goes on.
"""
import math

import torch

from gpt.errors import UserError


class NonFiniteSteps:

    def __init__(self, optimizer, device, policy, optim):
        self.policy = policy
        # the fused kernels skip on the device; elsewhere (and Muon on a CPU, where a sync costs nothing) the host
        # checks the flag before stepping
        self.on_device = bool(optimizer.defaults.get('fused')) and (optim == 'adamw' or device.startswith('cuda'))
        # not yet reported: how many, the first one's iteration, its loss
        self.count, self.first, self.first_loss = (torch.zeros((), device=device) for _ in range(3))

    def step(self, model, optimizer, scaler, loss_sum, grad_clip, iter_num):
        """Clip the gradients (grad_clip > 0), then step the optimizer unless the step is not finite. Returns the
        device flag of this step."""
        norm = None
        if grad_clip != 0.0:
            scaler.unscale_(optimizer)
            norm = torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        elif not scaler.is_enabled():
            norm = torch.nn.utils.get_total_norm([p.grad for p in model.parameters() if p.grad is not None])
        bad = ~torch.isfinite(loss_sum)
        if not scaler.is_enabled():  # (float16 gradients overflow now and then by design: the scaler's business)
            bad |= ~torch.isfinite(norm.full_tensor() if hasattr(norm, 'full_tensor') else norm)  # (FSDP: a DTensor)
        if scaler.is_enabled():
            scaler.step(optimizer)
        elif self.on_device:
            optimizer.found_inf = bad.float()
            optimizer.step()
            del optimizer.found_inf
        elif not bad.item():  # (the other kernels cannot skip on the device: this one syncs)
            optimizer.step()
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        self.first_loss = torch.where(bad & (self.count == 0), loss_sum.float(), self.first_loss)
        self.first = torch.where(bad & (self.count == 0), float(iter_num), self.first)
        self.count += bad
        return bad

    def state(self):
        """The counters, for the host sync's one tensor (train.py averages it over the processes)."""
        return [self.count, self.first, self.first_loss]

    def report(self, count, first, first_loss, iter_num, out_dir, log, record):
        """At a host sync, with the counters as the host read them: 'stop' raises the one line, 'skip' logs."""
        if count <= 0:
            return
        what = (f"loss is {first_loss}" if not math.isfinite(first_loss)
                else f"the gradient is not finite (loss {first_loss:.4f})")
        if self.policy == 'stop':
            raise UserError(f"{what} at iteration {int(first)}; stopped without saving, so {out_dir}/ckpt.pt still "
                            f"holds the last good state. Lower learning_rate or use dtype=float32/bfloat16, "
                            f"then --init_from=resume")
        # nan_policy='skip': those steps left the weights and optimizer state as they were
        log(f"iter {int(first)}: {what}; skipping this step (nan_policy='skip')" if count == 1 else
            f"iters {int(first)}..{iter_num}: {int(count)} steps skipped, the first as {what} (nan_policy='skip')")
        record(event='skip', iter=int(first), loss=str(first_loss), steps=int(count))
        self.count.zero_()
