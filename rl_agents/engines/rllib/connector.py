"""The learner connector that puts each step's per-pixel reward map into the train batch."""

from __future__ import annotations

import numpy as np
from ray.rllib.connectors.connector_v2 import ConnectorV2

from rl_agents.engines.rllib.env import REWARD_MAP


class PixelRewardMapToBatch(ConnectorV2):
    """Column ``reward_map`` ``(rows, H*W) float32`` of the train batch, aligned with ``actions``: row t of an
    episode gets ``infos[t+1]`` (the reward of action t); the bootstrap row IMPALA's pipeline appended before
    this connector runs gets zeros (it is loss-masked)."""

    def __call__(self, *, rl_module, batch, episodes, explore=None, shared_data=None, **kwargs):
        extended = bool((shared_data or {}).get("_added_loss_mask_for_valid_episode_ts"))
        for ep in self.single_agent_episode_iterator(episodes, agents_that_stepped_only=False):
            n = len(ep)
            real = n - 1 if extended else n
            maps = [np.asarray(i[REWARD_MAP], dtype=np.float32) for i in ep.get_infos(slice(1, real + 1))]
            if len(maps) != real:
                raise ValueError(f"expected {real} infos with {REWARD_MAP!r}, got {len(maps)}")
            if extended:
                maps.append(np.zeros_like(maps[-1]))
            self.add_n_batch_items(batch, REWARD_MAP, items_to_add=np.stack(maps), num_items=n,
                                   single_agent_episode=ep)
        return batch
