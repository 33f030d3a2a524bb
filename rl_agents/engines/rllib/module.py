"""PixelDRLNet as an RLlib ``TorchRLModule``: per-pixel logits, values and a frozen target copy for APPO."""

from __future__ import annotations

import torch
from ray.rllib.core.columns import Columns
from ray.rllib.core.distribution.torch.torch_distribution import TorchCategorical
from ray.rllib.core.learner.utils import make_target_network
from ray.rllib.core.rl_module.apis import TARGET_NETWORK_ACTION_DIST_INPUTS, TargetNetworkAPI, ValueFunctionAPI
from ray.rllib.core.rl_module.torch import TorchRLModule

from rl_agents.algo.agent import build_network
from rl_agents.config import config_from_dict


class PixelDRLRLModule(TorchRLModule, ValueFunctionAPI, TargetNetworkAPI):
    """PixelDRLNet as an RLModule (``model_config["cfg"]``: the run's TrainConfig as a dict).

    ``ACTION_DIST_INPUTS``: logits ``(B, H*W, A)``, so ``TorchCategorical`` samples ``(B, H*W)`` and gives
    per-pixel log-probs and entropies. ``_forward_train`` also returns the values as ``EMBEDDINGS``: one pass
    gives both heads, as in our rollout. The bootstrap row IMPALA appends (``loss_mask`` False) is never read
    by the loss (its discount is 0), so the learner's passes skip it: ``1 / (t_max + 1)`` of their work.
    """

    def setup(self):
        c = self.observation_space.shape[0]
        self.net = build_network(config_from_dict(self.model_config["cfg"]), c)
        self.action_dist_cls = TorchCategorical

    @staticmethod
    def _flat(logits: torch.Tensor) -> torch.Tensor:  # (B, A, H, W) -> (B, H*W, A)
        return logits.flatten(2).transpose(1, 2)

    def _forward(self, batch, **kwargs):
        return {Columns.ACTION_DIST_INPUTS: self._flat(self.net.policy(batch[Columns.OBS]))}

    def _forward_train(self, batch, **kwargs):
        obs, keep = _rows(batch)
        logits, values = self.net(obs)
        return {Columns.ACTION_DIST_INPUTS: _scatter(self._flat(logits), keep),
                Columns.EMBEDDINGS: _scatter(values.flatten(1), keep)}

    def compute_values(self, batch, embeddings=None):
        """Per-pixel values ``(B, H*W)`` (the API says ``(B,)``; the loss is ours and reads them per pixel)."""
        if embeddings is not None:
            return embeddings
        obs, keep = _rows(batch)
        return _scatter(self.net(obs)[1].flatten(1), keep)

    def make_target_networks(self) -> None:
        self._target_net = make_target_network(self.net)

    def get_target_network_pairs(self):
        return [(self.net, self._target_net)]

    def forward_target(self, batch, **kwargs):
        obs, keep = _rows(batch)
        return {TARGET_NETWORK_ACTION_DIST_INPUTS: _scatter(self._flat(self._target_net.policy(obs)), keep)}

    def get_non_inference_attributes(self):
        return ["_target_net"]


def _rows(batch):
    """The observations the loss reads, and which rows they are (None: all): the appended bootstrap rows (loss_mask
    False) are skipped."""
    obs = batch["obs"]
    mask = batch.get("loss_mask")
    if mask is None or bool(mask.all()):
        return obs, None
    keep = mask.bool()
    return obs[keep], keep


def _scatter(x: torch.Tensor, keep) -> torch.Tensor:
    """Rows of ``x`` back at the positions of ``keep``; zeros elsewhere (never read by the loss)."""
    if keep is None:
        return x
    out = x.new_zeros((keep.shape[0],) + tuple(x.shape[1:]))
    out[keep] = x
    return out
