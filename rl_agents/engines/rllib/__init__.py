"""PA3C's problem under RLlib's APPO (Ray 2.60, new API stack): the same env, network, data, run lifecycle and
checkpoints as the other engines, trained by RLlib (``engine: rllib_appo``). One file per role, as RLlib lays out its own algorithms:
``env``, ``module``, ``connector``, ``learner``, ``config`` (the APPO config that ties them) and ``engine`` (the
lifecycle's side). RLlib is imported only when a run builds its config (about 3 s): ``engine`` and ``env`` do not
import it.

RLlib is what a Ray user reaches for first, and APPO is its asynchronous actor-learner (A3C left RLlib in 2.9). Its
stock path cannot train a pixel agent: a ``MultiDiscrete([2] * H * W)`` action space becomes one Python distribution
per pixel (about 1 s per 64x64 image) with one joint log-prob per step, so per-pixel credit is lost. Here:

* :class:`~.env.PixelSegRLlibEnv`: one image per episode, the flat ``MultiDiscrete`` space RLlib's catalog accepts, the
  mean of the reward map as the scalar reward RLlib needs, and the map itself in ``info``; ``terminated`` at t_max.
* :class:`~.module.PixelDRLRLModule`: :class:`~rl_agents.algo.model.PixelDRLNet` as a ``TorchRLModule``. Logits shaped
  ``(B, H*W, A)`` read by ``TorchCategorical`` give a per-pixel sample, log-prob and entropy in one tensor op; values
  are per pixel; a frozen copy of the net is APPO's target (old) policy.
* :class:`~.connector.PixelRewardMapToBatch`: a learner connector that puts the reward maps into the train batch, row t getting
  ``infos[t+1]`` (the reward of action t), zeros on the bootstrap row IMPALA's pipeline appends to every episode.
* :class:`~.learner.PixelAPPOTorchLearner`: APPO's loss with V-trace over ``(T, B, N)`` and the clipped surrogate, value and
  entropy terms each a mean over valid timesteps x pixels.

Episodes end ``terminated`` at t_max and train whole (``batch_mode="complete_episodes"``): with 2.60's discount
``gamma * (1 - terminated) * loss_mask``, a bootstrap value at a truncated chunk end cancels (tests/rl_agents/engines/test_rllib_appo.py
checks both). One ``train()`` = one update on ``batch_size`` complete episodes, as one update of our engines.

Not carried over from PA3C (the comparison in ``benchmarks/peer_rllib.py`` states it): the learnable reward-map
kernel (V-trace uses the identity), the learning-rate decay and warm-up, the entropy schedule and ``adv_norm``; a
resumed run restores the weights and the update count, not Adam's moments (RLlib keeps those inside the learner).
"""
