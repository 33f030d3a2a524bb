"""RLlib APPO behind the run lifecycle (``engine: rllib_appo``), and what a sweep reserves for it."""

from __future__ import annotations

import time
from typing import Any

import ray
import torch

from rl_agents.algo.agent import PA3CAgent
from rl_agents.algo.model import count_parameters, forward_flops
from rl_agents.config import TrainConfig
from rl_agents.engines.base import InProcessEngine, evaluate_arrays
from rl_agents.engines.ray_runtime import connect
from rl_agents.engines.rllib.config import build_config

MODULE = "default_policy"  # the RLModule's id in RLlib's single-agent setup


def learner_gpus(cfg: TrainConfig, cluster_gpus: float, torch_sees_cuda: bool) -> float:
    """GPUs per learner: ``learner_gpus``, or (null) 1 where a learner can have one: the cluster has a GPU for a
    remote learner, torch sees one for a learner in this process."""
    if cfg.ray.learner_gpus is not None:
        return cfg.ray.learner_gpus
    return 1 if (cluster_gpus >= 1 if cfg.ray.rllib_learners else torch_sees_cuda) else 0


def rllib_bundles(cfg: TrainConfig, driver_cpus: float, cluster_gpus: float) -> list[dict[str, float]]:
    """A sweep trial's placement group: the trial's driver (with the learner, and its GPU, when it is local), one
    bundle per remote env runner, one per remote learner."""
    gpus = learner_gpus(cfg, cluster_gpus, torch_sees_cuda=cluster_gpus >= 1)
    driver = {"CPU": driver_cpus, **({"GPU": gpus} if gpus and not cfg.ray.rllib_learners else {})}
    learner = {"CPU": cfg.ray.learner_cpus, **({"GPU": gpus} if gpus else {})}
    return [driver, *[{"CPU": cfg.ray.worker_cpus}] * cfg.num_workers, *[learner] * cfg.ray.rllib_learners]


class RLlibAPPOEngine(InProcessEngine):
    """RLlib APPO behind the run lifecycle. One step = one ``algo.train()`` = one update.

    ``self.agent`` mirrors the learner's weights (copied when read: evaluation, checkpoints), so checkpoints are
    PA3C agent states: ``pixeldrl evaluate``, ``predict`` and ``export`` take them like any other.
    """

    name = "rllib_appo"

    def __init__(self, cfg: TrainConfig, quiet: bool = False, crash_once_file: str | None = None):
        self.cfg, self.quiet, self.crash_once_file = cfg, quiet, crash_once_file
        self.pixel_agent_steps = 0
        self.started = False
        self.algo = None
        self._mirrored = -1
        self.env_runner_restarts = 0

    def setup(self, resume=None) -> dict[str, Any]:
        cfg = self.cfg
        self.train_set, self.val_set = self._prepare()
        in_channels, size = self.train_set.images.shape[1], self.train_set.images.shape[-1]
        self.agent = PA3CAgent(cfg, in_channels, len(self.train_set), self.device, optimizer=False)
        if resume is not None:
            self.agent.load_state_dict(resume.agent, weights_only=True)
            self.agent.update = resume.update
            self.pixel_agent_steps = int(resume.run.get("pixel_agent_steps", 0))
        cpus = cfg.num_workers * cfg.ray.worker_cpus + cfg.ray.rllib_learners * cfg.ray.learner_cpus + 1
        self.started = connect(cfg.ray.address, cpus)
        # RLlib's import takes seconds: only a run of this engine pays it

        self.algo = build_config(cfg, self.crash_once_file, learner_gpus=self._learner_gpus()).build_algo()
        if resume is not None:
            self._load_weights(self.agent.model.state_dict())
        self._mirrored = self.agent.update
        n_params = count_parameters(self.agent.model)
        self.flops = forward_flops(self.agent.model.cpu(), in_channels, size)
        self.agent.model.to(self.device)
        where = f"{cfg.num_workers} remote env runner(s)" if cfg.num_workers else "sampling in this process"
        where += f", {cfg.ray.rllib_learners} remote learner(s)" if cfg.ray.rllib_learners else ", learner in this process"
        return {"n_train": len(self.train_set), "n_val": len(self.val_set), "params": n_params,
                "gflop_per_image_step": self.flops / 1e9,
                "banner": f"data: {len(self.train_set)} train / {len(self.val_set)} val slices; model {cfg.network.preset}: "
                          f"{n_params:,} parameters; RLlib APPO ({where}); "
                          f"{self.agent.total_updates} updates planned"}

    def _learner_gpus(self) -> float:
        return learner_gpus(self.cfg, ray.cluster_resources().get("GPU", 0), torch.cuda.is_available())

    def learner_weights(self) -> dict[str, torch.Tensor]:
        """The learner's network weights, through the learner group's public state API: the same call reads a
        learner in this process or a remote one (``num_learners > 0``), where RLlib hands back numpy arrays."""
        state = self.algo.learner_group.get_weights([MODULE])[MODULE]
        return {k[len("net."):]: torch.as_tensor(v) for k, v in state.items() if k.startswith("net.")}

    def _load_weights(self, state: dict[str, torch.Tensor]) -> None:
        """Put weights into the learner's net and its target, then send them to the env runners."""
        both = {f"{prefix}.{k}": v for prefix in ("net", "_target_net") for k, v in state.items()}
        self.algo.learner_group.set_weights({MODULE: both})
        self.algo.env_runner_group.sync_weights(from_worker_or_learner_group=self.algo.learner_group,
                                                inference_only=True)

    def _mirror(self) -> None:
        if self._mirrored != self.agent.update:
            self.agent.model.load_state_dict(self.learner_weights())  # copies: the mirror never aliases the learner
            self._mirrored = self.agent.update

    def step(self) -> dict[str, float]:
        t0 = time.perf_counter()
        res = self.algo.train()
        learner = (res.get("learners") or {}).get(MODULE, {})
        if not learner:  # no sample reached the learner (runners restarting): no update this time
            return {}
        self.agent.update += 1
        h, w = self.train_set.images.shape[-2:]
        self.pixel_agent_steps += self.cfg.optim.batch_size * self.cfg.pa3c.t_max * h * w
        self.env_runner_restarts = int((res.get("fault_tolerance") or {}).get("num_remote_worker_restarts", 0))
        # the env's scalar reward is the mean of the reward map: times H*W, the summed per-pixel return as PA3C's
        ret = float((res.get("env_runners") or {}).get("episode_return_mean", float("nan"))) * h * w
        return {"train/return": ret, "losses/policy": float(learner.get("policy_loss", float("nan"))),
                "losses/value": float(learner.get("vf_loss", float("nan"))),
                "losses/entropy": float(learner.get("entropy", float("nan"))),
                "charts/advantage_mean": float(learner.get("advantage_mean", float("nan"))),
                "charts/returns_mean": float(learner.get("returns_mean", float("nan"))),
                "perf/step_s": time.perf_counter() - t0}

    def _evaluate(self, max_images: int | None) -> dict[str, float]:
        self._mirror()
        return evaluate_arrays(self.agent.model, self.val_set, self.cfg, self.device, max_images)

    def agent_state(self) -> dict[str, Any]:
        self._mirror()
        return self.agent.state_dict()

    def start_eval(self, max_images: int | None):
        self._mirror()
        return super().start_eval(max_images)

    def rng_state(self) -> dict[str, Any]:
        return {}  # RLlib seeds its runners from (seed, runner index); a resumed run does not replay the stream

    def perf(self, wall: float) -> dict[str, float]:
        return {"perf/pixel_agent_steps_per_s": self.pixel_agent_steps / max(wall, 1e-9),
                "perf/updates_per_s": self.agent.update / max(wall, 1e-9),
                "workers/restarts": self.env_runner_restarts}

    def close(self) -> None:
        if self.algo is not None:
            self.algo.stop()
            self.algo = None
        if self.started:
            ray.shutdown()
            self.started = False
