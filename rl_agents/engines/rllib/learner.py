"""APPO's learner with per-pixel credit: V-trace over ``(T, B, N)`` and each loss term a mean over valid steps x
pixels."""

from __future__ import annotations

import torch
from ray.rllib.algorithms.appo.appo import LEARNER_RESULTS_CURR_KL_COEFF_KEY, LEARNER_RESULTS_KL_KEY
from ray.rllib.algorithms.appo.torch.appo_torch_learner import APPOTorchLearner
from ray.rllib.algorithms.impala.torch.vtrace_torch_v2 import vtrace_torch
from ray.rllib.core.columns import Columns
from ray.rllib.core.learner.learner import ENTROPY_KEY, POLICY_LOSS_KEY, VF_LOSS_KEY
from ray.rllib.core.rl_module.apis import TARGET_NETWORK_ACTION_DIST_INPUTS

from rl_agents.engines.rllib.env import REWARD_MAP


class PixelAPPOTorchLearner(APPOTorchLearner):
    """APPO with per-pixel credit: V-trace over ``(T, B, N)``; each loss term a mean over valid steps x pixels."""

    def compute_loss_for_module(self, *, module_id, config, batch, fwd_out):
        module = self.module[module_id].unwrapped()
        loss_mask = batch[Columns.LOSS_MASK].bool()
        T = episode_rows(loss_mask)
        B = loss_mask.shape[0] // T

        def tm(x):  # (B*T, ...) -> (T, B, ...)
            return x.reshape(B, T, *x.shape[1:]).transpose(0, 1)

        dist_cls = module.get_train_action_dist_cls()
        target = dist_cls.from_logits(fwd_out[Columns.ACTION_DIST_INPUTS])
        with torch.no_grad():
            old = dist_cls.from_logits(module.forward_target(batch)[TARGET_NETWORK_ACTION_DIST_INPUTS])
        actions = batch[Columns.ACTIONS].long()  # (rows, N); env runners send int32
        target_logp, old_logp = target.logp(actions), old.logp(actions)
        behaviour_logp = batch[Columns.ACTION_LOGP]
        values = module.compute_values(batch, embeddings=fwd_out.get(Columns.EMBEDDINGS))
        rewards = batch[REWARD_MAP]
        if not (rewards.shape == values.shape == behaviour_logp.shape == actions.shape):
            raise ValueError(f"per-pixel columns disagree: actions {tuple(actions.shape)}, rewards "
                             f"{tuple(rewards.shape)}, values {tuple(values.shape)}, logp "
                             f"{tuple(behaviour_logp.shape)}")
        mask = tm(loss_mask.float())  # (T, B)
        vs, adv = pixel_vtrace(behaviour_logp=tm(behaviour_logp), target_logp=tm(old_logp), rewards=tm(rewards),
                               values=tm(values), terminateds=tm(batch[Columns.TERMINATEDS]), loss_mask=mask,
                               gamma=config.gamma, clip_rho_threshold=config.vtrace_clip_rho_threshold,
                               clip_pg_rho_threshold=config.vtrace_clip_pg_rho_threshold)
        m = mask[..., None]
        denom = mask.sum() * actions.shape[1]
        adv = adv * m

        def masked(x):  # log-ratios zeroed where masked first: exp() could overflow there, and inf * 0 is NaN
            return torch.where(m > 0, x, torch.zeros_like(x))

        is_ratio = torch.clip(torch.exp(masked(tm(behaviour_logp) - tm(old_logp))), 0.0, 2.0)
        ratio = is_ratio * torch.exp(masked(tm(target_logp) - tm(behaviour_logp)))
        surrogate = torch.minimum(adv * ratio, adv * torch.clip(ratio, 1 - config.clip_param, 1 + config.clip_param))
        pi_loss = -(surrogate * m).sum() / denom
        vf_loss = 0.5 * (((tm(values) - vs) ** 2) * m).sum() / denom
        entropy = (tm(target.entropy()) * m).sum() / denom
        ent_coeff = self.entropy_coeff_schedulers_per_module[module_id].get_current_value()
        total = pi_loss + config.vf_loss_coeff * vf_loss - ent_coeff * entropy
        self.metrics.log_dict({POLICY_LOSS_KEY: pi_loss, VF_LOSS_KEY: vf_loss, ENTROPY_KEY: entropy,
                               LEARNER_RESULTS_KL_KEY: torch.zeros(()),
                               LEARNER_RESULTS_CURR_KL_COEFF_KEY: self.curr_kl_coeffs_per_module[module_id],
                               "advantage_mean": adv.sum() / denom, "returns_mean": (vs * m).sum() / denom},
                              key=module_id, window=1)
        return total


def episode_rows(loss_mask: torch.Tensor) -> int:
    """The length T of every episode in a batch of complete, equal-length episodes (t_max steps plus the appended
    bootstrap row, whose ``loss_mask`` is False). Raises when the batch is not laid out that way."""
    m = loss_mask.bool()
    false_at = torch.nonzero(~m).flatten()
    if false_at.numel() == 0:
        raise ValueError("no bootstrap row in the batch (is AddOneTsToEpisodesAndTruncate in the pipeline?)")
    T = int(false_at[0]) + 1
    if m.shape[0] % T or bool(m.view(-1, T)[:, -1].any()) or not bool(m.view(-1, T)[:, :-1].all()):
        raise ValueError(f"a batch of {m.shape[0]} rows is not complete episodes of {T - 1} steps each; use "
                         "batch_mode='complete_episodes' and a fixed t_max")
    return T


def pixel_vtrace(*, behaviour_logp, target_logp, rewards, values, terminateds, loss_mask, gamma,
                 clip_rho_threshold=1.0, clip_pg_rho_threshold=1.0, bootstrap_values=None):
    """Per-pixel V-trace targets and policy-gradient advantages, each ``(T, B, N)``.

    Inputs time-major: log-probs, rewards, values ``(T, B, N)``; ``terminateds``, ``loss_mask`` ``(T, B)``. The
    discount is RLlib 2.60's, ``gamma * (1 - terminated) * loss_mask``, over every pixel; ``bootstrap_values``
    ``(B, N)`` (zeros if None) is the value after the last row; it never matters when each episode ends
    ``terminated`` before its loss-masked bootstrap row.
    """
    disc = (gamma * (1.0 - terminateds.float()) * loss_mask.float())[..., None].expand_as(rewards)
    if bootstrap_values is None:
        bootstrap_values = torch.zeros_like(values[0])
    return vtrace_torch(target_action_log_probs=target_logp, behaviour_action_log_probs=behaviour_logp,
                        discounts=disc, rewards=rewards, values=values, bootstrap_values=bootstrap_values,
                        clip_rho_threshold=clip_rho_threshold, clip_pg_rho_threshold=clip_pg_rho_threshold)
