"""A trained model served over HTTP with Ray Serve (``pixeldrl serve``): a scan in, its mask (or uncertainty) out.

``POST /segment?name=<file name>[&output=uncertainty]`` with the file as the body: a PNG, JPEG, TIFF or BMP slice
(answered with a PNG, 0/255, at the image's size) or a NIfTI volume, ``.nii`` or ``.nii.gz`` (answered with a
``.nii.gz`` on the scan's grid). ``GET /health`` says what the model takes. Inputs get ``pixeldrl predict``'s checks
(channels and dimensions against the model, every refusal a 4xx with one line saying why; a body over
``max_upload_bytes`` is 413) and its "unlike the training data" flag (header ``X-Unlike-Training``). Single slices
from concurrent requests are batched (``serve.batch``: up to ``max_batch`` slices or ``batch_wait_s``); a volume is
its own batch. Replicas autoscale between ``min_replicas`` and ``max_replicas`` on the requests in flight. The
server binds 127.0.0.1 unless told otherwise; a failure inside a request is a 500 for that request, and the replica
keeps serving.
"""

from __future__ import annotations

import asyncio
import gzip
import io
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from ray import serve

from pixelrl_env.io import DataError, Sample, read_image_bytes
from pixelrl_env.nifti import nifti_from_bytes, slice_axis_index
from pixelrl_env.prepare import prepare_rows, resize_mask
from pixelrl_env.profile import unlike
from rl_agents.experiment.evaluate import predict
from rl_agents.experiment.loaded import load
from rl_agents.experiment.predict import resize_float, segment_checked, volume_like
from rl_agents.experiment.predict_inputs import IMAGE_SUFFIXES, NIFTI_SUFFIXES, check_channels

log = logging.getLogger(__name__)


class RequestError(ValueError):
    """A request the server refuses: ``status`` (4xx) and one line saying why."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


@dataclass
class ServeOptions:
    """How ``pixeldrl serve`` runs (its flags)."""

    host: str = "127.0.0.1"
    port: int = 8000
    min_replicas: int = 1
    max_replicas: int = 2
    replica_cpus: float = 1.0
    max_batch: int = 8
    batch_wait_s: float = 0.01
    max_upload_bytes: int = 64 * 2**20
    device: str = "cpu"


def _kind(name: str) -> str:
    lower = name.lower()
    if lower.endswith(NIFTI_SUFFIXES):
        return "nifti"
    if lower.endswith(IMAGE_SUFFIXES):
        return "image"
    raise RequestError(415, f"{name}: unknown kind of file; expected an image ({', '.join(IMAGE_SUFFIXES)}) or a "
                            f"NIfTI volume ({', '.join(NIFTI_SUFFIXES)}), named by ?name=")


def _png(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="PNG")
    return buf.getvalue()


class Segmenter:
    """The model behind the HTTP route, one per replica (:func:`start` deploys it)."""

    def __init__(self, checkpoint: str, options: ServeOptions):
        self.m = load(checkpoint, options.device)
        self.checkpoint, self.options = checkpoint, options
        self.segment_slices.set_max_batch_size(options.max_batch)
        self.segment_slices.set_batch_wait_timeout_s(options.batch_wait_s)

    async def __call__(self, request) -> Any:
        from starlette.responses import JSONResponse, Response

        if request.url.path.rstrip("/") == "/health":
            return JSONResponse(self.health())
        if request.url.path.rstrip("/") != "/segment" or request.method != "POST":
            return JSONResponse({"error": "POST a file to /segment?name=<file name>, or GET /health"}, 404)
        try:
            body, name, output = await self._read(request)
            content, media, headers = await self.answer(body, name, output)
            return Response(content, media_type=media, headers=headers)
        except RequestError as e:
            return JSONResponse({"error": str(e)}, e.status)
        except DataError as e:
            return JSONResponse({"error": str(e)}, 400)
        except Exception as e:  # noqa: BLE001 - one request's failure must not take the replica down
            log.exception("request failed")
            return JSONResponse({"error": f"internal error ({type(e).__name__}); the server keeps running"}, 500)

    async def _read(self, request) -> tuple[bytes, str, str]:
        limit = self.options.max_upload_bytes
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise RequestError(413, f"upload of {int(declared):,} bytes; this server takes up to {limit:,}")
        body = bytearray()
        async for chunk in request.stream():  # counted as it arrives: a missing or false length is no way around
            body += chunk
            if len(body) > limit:
                raise RequestError(413, f"upload over {limit:,} bytes; this server takes up to {limit:,}")
        name = Path(request.query_params.get("name", "")).name
        if not name:
            raise RequestError(400, "name the file: POST /segment?name=scan.png (its suffix says how to read it)")
        output = request.query_params.get("output", "mask")
        if output not in ("mask", "uncertainty"):
            raise RequestError(400, f"output={output!r}; expected mask or uncertainty")
        if not body:
            raise RequestError(400, f"{name}: empty body; send the file's bytes")
        return bytes(body), name, output

    def health(self) -> dict[str, Any]:
        d = self.m.cfg.data
        return {"checkpoint": self.checkpoint, "model": self.m.cfg.model, "input_channels": self.m.in_channels,
                "channels_read": d.channels, "context": d.context, "size": d.size, "t_max": self.m.cfg.pa3c.t_max,
                "profiled": self.m.profile is not None}

    async def answer(self, body: bytes, name: str, output: str) -> tuple[bytes, str, dict[str, str]]:
        if _kind(name) == "nifti":
            return await asyncio.to_thread(self._volume, body, name, output)
        image = read_image_bytes(body, name)
        d = self.m.cfg.data
        check_channels(name, image.shape[-1], self.m.in_channels, d.channels, d.context)
        x = prepare_rows([Sample(image, np.zeros(image.shape[:2], np.uint8), "upload", name)], [0], d)[0]
        mask, unc = await self.segment_slices(x)
        h, w = image.shape[:2]
        out = resize_mask(mask, (h, w)) * 255 if output == "mask" else \
            (resize_float(unc, (h, w)) * 255).round().astype(np.uint8)
        return _png(out.astype(np.uint8)), "image/png", self._headers(int(mask.sum()), unlike(self.m.profile, x[None]))

    def _volume(self, body: bytes, name: str, output: str) -> tuple[bytes, str, dict[str, str]]:
        img, data = nifti_from_bytes(body, name, self.options.max_upload_bytes * 16)
        axis = slice_axis_index(self.m.cfg.data.slice_axis, name)
        masks, unc, report = segment_checked(self.m, data, str(self.m.device), self.options.max_batch,
                                             slice_axis=axis)
        vol = volume_like(img, masks, np.uint8) if output == "mask" else volume_like(img, unc, np.float32)
        return gzip.compress(vol.to_bytes(), compresslevel=4), "application/gzip", \
            self._headers(int(masks.sum()), report)

    @staticmethod
    def _headers(foreground: int, report: dict | None) -> dict[str, str]:
        headers = {"X-Foreground": str(foreground)}
        if report is not None:
            headers["X-Unlike-Training"] = (f"flagged={str(report['flagged']).lower()}; "
                                            f"distance={report['distance']}; threshold={report['threshold']}")
        return headers

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.01)  # set from ServeOptions in __init__
    async def segment_slices(self, xs: list[np.ndarray]) -> list[tuple[np.ndarray, np.ndarray]]:
        """Masks and uncertainty of prepared slices from concurrent requests, one forward pass per shape (a model
        trained at native size gets slices of several sizes)."""
        out: list[Any] = [None] * len(xs)
        for shape in {x.shape for x in xs}:
            idx = [i for i, x in enumerate(xs) if x.shape == shape]
            masks, unc = await asyncio.to_thread(predict, self.m.model, self.m.cfg, np.stack([xs[i] for i in idx]),
                                                 self.m.device)
            for k, i in enumerate(idx):
                out[i] = (masks[k], unc[k])
        return out


def start(checkpoint: str | Path, options: ServeOptions) -> str:
    """Deploy ``checkpoint`` on Ray Serve (connecting to Ray, or starting a local one, as training does); returns the
    base URL. The checkpoint is read once here, so that a bad file is refused before anything starts."""
    from rl_agents.engines.ray_runtime import connect

    checkpoint = str(Path(checkpoint).resolve())
    load(checkpoint)  # refuses a missing, damaged or unsafe file now, in one line, not in every replica
    connect(None)
    serve.start(http_options={"host": options.host, "port": options.port})
    app = serve.deployment(Segmenter).options(
        name="pixeldrl", ray_actor_options={"num_cpus": options.replica_cpus},
        autoscaling_config={"min_replicas": options.min_replicas, "max_replicas": options.max_replicas,
                            "target_ongoing_requests": max(2, options.max_batch // 2)},
        max_ongoing_requests=max(4, 2 * options.max_batch)).bind(checkpoint, options)
    serve.run(app, name="pixeldrl", route_prefix="/", blocking=False)
    return f"http://{options.host}:{options.port}"


def stop() -> None:
    serve.shutdown()
