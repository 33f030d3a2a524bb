"""How ``benchmarks/readme_commands.py`` runs each command of the README: one :class:`Step` per command, as written
(``tests/benchmarks/test_readme_commands.py`` fails when the README and this plan disagree)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Step:
    kind: str = "run"                      # run | cap | serve | background | skip
    cap_s: float = 0.0                     # cap: Ctrl-C after this long
    until: str = ""                        # cap: ... or a few seconds after this file exists
    reason: str = ""                       # skip: why; otherwise a note on what was changed and why
    subs: dict[str, str] = field(default_factory=dict)   # placeholder -> value, applied to the command
    setup: str = ""                        # name of a function in SETUPS run before the command
    prelude: str = ""                      # Python run before a python block (placeholders)
    cwd: str = "clone"                     # clone | main: reports over sweeps of hours run where those sweeps are
    ray_head: bool = False                 # a local Ray head with token auth on 127.0.0.1:8265 for this command
    url: str = ""                          # serve / background: what must answer 200 (default MLflow's UI)
    stop_servers: bool = False             # after this command, stop the servers started in the background


NO_CLOUD = "no cloud account on this machine; the config is validated offline by tests/cluster/test_cluster.py"
NO_K8S = ("no Docker engine and no Kubernetes cluster on this machine (docker and kubectl are clients only); the "
          "manifests are parsed and checked by tests/cluster/test_cluster.py")

PLAN: dict[str, Step] = {
    # Quickstart
    'pip install torch==2.13.0 -e ".[test]" && python train.py': Step(),
    "python -m pytest -q": Step(kind="skip", reason="the test suite is what .ci/run runs (same command); its time "
                                "is in the CI run of this commit, not repeated here"),
    # Training and evaluation
    "python train.py --config tune_configs/lgg_cpu.yaml --set budget.max_minutes=8 --set compute.threads=1 --output-dir runs/lgg8": Step(
        kind="cap", cap_s=120, reason="an 8-minute run; stopped with Ctrl-C after 120 s"),
    "python train.py --config tune_configs/lgg_cpu.yaml --output-dir runs/lgg": Step(
        kind="cap", cap_s=900, until="runs/lgg/checkpoints/best.pt",
        reason="a 55-minute run; stopped with Ctrl-C once its first best.pt exists (the commands below need it)"),
    "python train.py --config tune_configs/lgg_cpu.yaml --output-dir runs/lgg --resume": Step(
        kind="cap", cap_s=60, reason="continues the run above; stopped with Ctrl-C after 60 s"),
    "python train.py --config tune_configs/heart_cpu.yaml --output-dir runs/heart": Step(
        kind="cap", cap_s=900, until="runs/heart/checkpoints/best.pt",
        reason="a 12-minute run; stopped with Ctrl-C once its first best.pt exists (predict below needs it)"),
    "python train.py --set optim.lr=3e-4 --set pa3c.t_max=5 --set data.synthetic.difficulty=hard --output-dir runs/hard": Step(
        kind="cap", cap_s=60, reason="a 10-minute run; stopped with Ctrl-C after 60 s"),
    "python train.py --set data.format=folder --set data.path=my_data --set data.size=64 --output-dir runs/mine": Step(
        kind="cap", cap_s=60, setup="my_data",
        reason="my_data/ = 40 Kvasir-SEG image/mask pairs (images/ + masks/, JPEG); stopped with Ctrl-C after 60 s"),
    "python train.py --config tune_configs/paper_brain.yaml --set compute.device=cuda --output-dir runs/paper_gpu": Step(
        kind="skip", reason="no GPU on this machine; the one-process GPU path's CPU dry run is "
                            "tests/benchmarks/test_gpu_suite.py, and benchmarks/gpu_suite.py runs it on a lent GPU"),
    "pixeldrl baseline --config tune_configs/lgg_cpu.yaml --output-dir runs/unet": Step(
        kind="cap", cap_s=90, reason="a 55-minute run; stopped with Ctrl-C after 90 s"),
    "pixeldrl evaluate --checkpoint runs/lgg/checkpoints/best.pt --split test --json runs/lgg/test.json": Step(),
    "pixeldrl evaluate --checkpoint runs/lgg/checkpoints/best.pt --split test --postprocess auto --json runs/lgg/test_pp.json": Step(),
    "pixeldrl env-demo": Step(),
    # Use a trained model
    "pixeldrl predict --checkpoint runs/lgg/checkpoints/best.pt scans/ --output-dir masks/ --overlay --gif": Step(
        setup="scans", reason="scans/ = 3 LGG slices as downloaded (TIFF)"),
    "pixeldrl predict --checkpoint runs/heart/checkpoints/best.pt case7.nii.gz --output-dir masks/": Step(
        setup="scans", reason="case7.nii.gz = the first left-atrium volume of ../shared/data/la_heart"),
    "from pathlib import Path\nimport nibabel as nib\nimport numpy as np\nfrom PIL import Image\n"
    "from rl_agents.experiment.predict import segment_array\n"
    'image = np.asarray(Image.open(sorted(Path("scans").glob("*.tif"))[0]))\n'
    'masks, uncertainty = segment_array("runs/lgg/checkpoints/best.pt", image)\n'
    'volume = nib.load("case7.nii.gz").get_fdata()\n'
    'masks, uncertainty = segment_array("runs/heart/checkpoints/best.pt", volume, slice_axis=2)': Step(
        setup="scans", reason="scans/ and case7.nii.gz as for predict above"),
    'pip install -e ".[export]"': Step(),
    "pixeldrl export --checkpoint runs/lgg/checkpoints/best.pt --format onnx": Step(),
    "pixeldrl export --checkpoint runs/lgg/checkpoints/best.pt --format torchscript": Step(),
    "from pathlib import Path\nimport numpy as np\nfrom PIL import Image\nfrom pixelrl_env.prepare import prepare_image\n"
    "from rl_agents.experiment.loaded import load_model\n"
    '_, cfg = load_model("runs/lgg/checkpoints/best.pt")\n'
    'x = np.stack([prepare_image(np.asarray(Image.open(p)), cfg.data) for p in sorted(Path("scans").glob("*.tif"))])\n'
    "import onnxruntime as ort\n"
    'masks, uncertainty = ort.InferenceSession("runs/lgg/checkpoints/best.onnx").run(None, {"images": x})\n'
    "import torch\n"
    'masks, uncertainty = torch.jit.load("runs/lgg/checkpoints/best.ts.pt")(torch.from_numpy(x))': Step(
        setup="scans", reason="scans/ as for predict above"),
    "import mlflow, numpy as np, torch\n"
    'uri = "models:/<model id>"\n'
    "meta = mlflow.models.get_model_info(uri).metadata\n"
    'x = np.random.default_rng(0).random((2, meta["input_channels"], meta["image_size"], meta["image_size"]), np.float32)\n'
    "masks = mlflow.pytorch.load_model(uri)(torch.from_numpy(x))": Step(
        subs={"<model id>": "{model_id}"},
        reason="<model id> = the newest model logged in this clone's MLflow store"),
    "pixeldrl serve --checkpoint runs/lgg/checkpoints/best.pt": Step(
        kind="background", url="http://127.0.0.1:8000/health",
        reason="left running (as in its own terminal) until the two requests below have been answered"),
    'curl -sf --data-binary @"$(ls scans/*.tif | head -1)" -o served_mask.png "http://127.0.0.1:8000/segment?name=slice.tif"':
        Step(setup="scans", reason="scans/ as for predict above"),
    'curl -sf "http://127.0.0.1:8000/health"': Step(stop_servers=True, reason="then the server is stopped with Ctrl-C"),
    # Distributed training on Ray
    "python train.py --set num_workers=2 --set ray.worker_cpus=1 --set ray.learner_cpus=0 --output-dir runs/ray2": Step(
        kind="cap", cap_s=60, reason="a 10-minute run; stopped with Ctrl-C after 60 s"),
    "python train.py --config tune_configs/smoke.yaml --output-dir runs/smoke": Step(),
    "export RAY_AUTH_MODE=token": Step(),
    "python train.py --config tune_configs/smoke.yaml --set engine=rllib_appo --set num_workers=0 --set "
    "optim.batch_size=8 --set budget.epochs=60 --output-dir runs/appo": Step(),
    "ray job submit --address http://127.0.0.1:8265 --working-dir . --runtime-env-json "
    '"{\\"env_vars\\": {\\"MLFLOW_TRACKING_URI\\": \\"sqlite:///$PWD/mlflow.db\\"}}" -- python train.py --config '
    "tune_configs/lgg_cpu.yaml --set num_workers=14 --set ray.learner_gpus=1 --output-dir /shared/runs/lgg": Step(
        ray_head=True,
        subs={"tune_configs/lgg_cpu.yaml": "tune_configs/smoke.yaml", "num_workers=14": "num_workers=2",
              "ray.learner_gpus=1": "ray.learner_gpus=0", "/shared/runs/lgg": "$PWD/runs/job"},
        reason="on a local head (token auth, 127.0.0.1:8265, 2 CPUs): the smoke config with 2 workers, no GPU, "
               "and an output folder that exists here, instead of 14 workers and a GPU learner"),
    # Sweeps and tracking
    "python train.py --tune tune_configs/sweep_asha.yaml": Step(
        kind="cap", cap_s=180, reason="a sweep of hours; stopped with Ctrl-C after 180 s (Tune saves its state)"),
    "python train.py --tune tune_configs/sweep_asha.yaml --resume": Step(
        kind="cap", cap_s=90, reason="resumes the sweep above; stopped with Ctrl-C after 90 s"),
    "python train.py --tune tune_configs/ablation.yaml": Step(kind="cap", cap_s=75,
                                                           reason="stopped with Ctrl-C after 75 s"),
    "python train.py --tune tune_configs/fewshot.yaml": Step(kind="cap", cap_s=75,
                                                           reason="stopped with Ctrl-C after 75 s"),
    "python train.py --tune tune_configs/cv_heart.yaml": Step(kind="cap", cap_s=75,
                                                           reason="stopped with Ctrl-C after 75 s"),
    "pixeldrl cv-report --experiment cv-heart": Step(
        cwd="main", reason="over the full 10-trial sweep in the main checkout's runs/tune (50 minutes of training)"),
    "python train.py --tune tune_configs/ablation_heart.yaml": Step(kind="cap", cap_s=75,
                                                                     reason="stopped with Ctrl-C after 75 s"),
    "pixeldrl ablation-report --experiment ablation-heart": Step(
        cwd="main", reason="over the ablation sweep in the main checkout's runs/tune (hours of training)"),
    "python train.py --tune tune_configs/ablation_heart.yaml --variants no-attention,no-dilation": Step(
        kind="cap", cap_s=75, reason="stopped with Ctrl-C after 75 s"),
    "pixeldrl ablation-report --experiment ablation-heart --merge benchmarks/results/ablation_heart.json": Step(
        cwd="main", reason="over the heart ablation's architecture rows in the main checkout's runs/tune, pooled "
                           "with the earlier report of its other rows (hours of training)"),
    "pixeldrl compare --experiment sweep-asha --metric val/dice": Step(),
    "mlflow ui --backend-store-uri sqlite:///$PWD/mlflow.db": Step(kind="serve"),
    # Clusters
    "ray get-auth-token --generate": Step(kind="skip", reason="writes ~/.ray/auth_token for the cloud cluster below; "
                                          "not needed without one"),
    "ray up cluster/aws.yaml": Step(kind="skip", reason=NO_CLOUD),
    "ray dashboard cluster/aws.yaml &": Step(kind="skip", reason=NO_CLOUD),
    "RAY_AUTH_MODE=token ray job submit --address http://127.0.0.1:8265 --working-dir . --runtime-env-json "
    "'{\"env_vars\": {\"MLFLOW_TRACKING_URI\": \"http://127.0.0.1:5000\", \"PIXELDRL_MLFLOW_AUTH\": \"ray-token\"}}' "
    "-- python train.py --config "
    "tune_configs/paper_brain.yaml --set data.format=parquet --set data.path=s3://BUCKET/lgg --set num_workers=14 "
    "--set ray.learner_gpus=1 --output-dir /home/ray/runs/paper": Step(kind="skip", reason=NO_CLOUD),
    "ray down cluster/aws.yaml": Step(kind="skip", reason=NO_CLOUD),
    "docker build -f cluster/kuberay/Dockerfile -t REGISTRY/pixeldrl-mg:0.1.0 . && docker push "
    "REGISTRY/pixeldrl-mg:0.1.0": Step(kind="skip", reason=NO_K8S),
    "kubectl apply -f cluster/kuberay/raycluster.yaml": Step(kind="skip", reason=NO_K8S),
    "kubectl apply -f cluster/kuberay/rayjob.yaml": Step(kind="skip", reason=NO_K8S),
    "kubectl port-forward svc/pixeldrl-head-svc 8265 5000": Step(kind="skip", reason=NO_K8S),
    "kubectl delete -f cluster/kuberay/rayjob.yaml -f cluster/kuberay/raycluster.yaml": Step(kind="skip",
                                                                                             reason=NO_K8S),
    "export RAY_FAKE_CLUSTER=1 RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 RAY_AUTH_MODE=token "
    "RAY_AUTH_TOKEN=$(openssl rand -hex 16)": Step(),
    "ray start --head --node-ip-address=127.0.0.1 --port=6379 --num-cpus=1 "
    "--autoscaling-config=cluster/fake_multinode.yaml": Step(),
    "ray job submit -- python $PWD/train.py --config $PWD/tune_configs/smoke.yaml --set num_workers=4 --set "
    "ray.worker_cpus=1 --set ray.learner_cpus=1 --set ray.learner_gpus=1": Step(),
    "ray status": Step(),
    "ray stop": Step(),
    # Data
    "pixeldrl prepare-data ../shared/data/lgg_kaggle_3m shards/lgg --format lgg --shard-size 256": Step(),
    "pixeldrl prepare-data ../shared/data/kvasir_seg shards/kvasir --format folder --skip-bad": Step(),
    "pixeldrl prepare-data ../shared/data/lgg_kaggle_3m s3://my-bucket/lgg/v1 --format lgg": Step(
        kind="skip", reason="no object store reachable from this machine (no network, no credentials); the s3:// "
                            "path goes through pyarrow's filesystem layer, tested with a local file:// URI"),
    "pixeldrl data-info --config tune_configs/lgg_cpu.yaml": Step(),
    "pixeldrl data-info --config tune_configs/lgg_cpu.yaml --set data.format=parquet --set data.path=shards/lgg --set data.k_shot=50": Step(),
    # The pixel-agent environment
    "import gymnasium as gym\n"
    "import pixelrl_env\n"
    'env = gym.make("PixelSegBatch-v0", batch_size=32, t_max=10, action_set="paper",\n'
    '               data={"format": "lgg", "path": "../shared/data/lgg_kaggle_3m", "size": 128, "channels": [1]})\n'
    "obs, info = env.reset(seed=0)\n"
    "obs, r, terminated, truncated, info = env.step(env.action_space.sample())\n"
    'info["reward_map"]\n'
    'info["state"]': Step(),
}
